//! Delta frames: a chunk stored as the pages it changed from a chunk of
//! the parent chain (its *base*), for incremental images of memory
//! written here and there (a process that rewrote 1% of its pages, spread
//! out, touches a sixth of its 64 KiB chunks; a changed chunk stored whole
//! made the second image 16% of the first's size, stored as its changed
//! pages a fraction of that).
//!
//! Layout (incompatible feature bit [`crate::format::INCOMPAT_DELTA_CHUNKS`]):
//!
//! ```text
//! +0   4   magic "SDLT"
//! +4   32  the base's chunk id: a chunk of the same length, held by the
//!          parent chain of the image holding this frame (never that image
//!          itself: bases lead up the chain, so a reader's walk ends)
//! +36  n   a bitmap of the chunk's pages (bit k of byte k / 8: page k),
//!          n = pages / 8 rounded up, bits past the last page clear
//! +36+n    the pages whose bit is set, in order, 4096 bytes each
//! ```
//!
//! The chunk is its base with those pages replaced; its id is still the
//! BLAKE3 of the whole, checked like any chunk's.

use crate::chunk::ChunkId;

/// What a delta frame starts with.
pub(crate) const MAGIC: [u8; 4] = *b"SDLT";

const PAGE: usize = 4096;
const HEADER: usize = 4 + 32;

/// The delta frame of `data` against `base` (of the same length, a
/// multiple of pages), when it is shorter than `than` bytes.
pub(crate) fn encode(data: &[u8], base_id: &ChunkId, base: &[u8], than: usize) -> Option<Vec<u8>> {
    if data.len() != base.len() || data.len() % PAGE != 0 {
        return None;
    }
    let pages = data.len() / PAGE;
    let changed: Vec<usize> =
        (0..pages).filter(|&k| data[k * PAGE..(k + 1) * PAGE] != base[k * PAGE..(k + 1) * PAGE]).collect();
    let len = HEADER + pages.div_ceil(8) + changed.len() * PAGE;
    if len >= than {
        return None;
    }
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&base_id.0);
    let mut bitmap = vec![0u8; pages.div_ceil(8)];
    for &k in &changed {
        bitmap[k / 8] |= 1 << (k % 8);
    }
    frame.extend_from_slice(&bitmap);
    for &k in &changed {
        frame.extend_from_slice(&data[k * PAGE..(k + 1) * PAGE]);
    }
    Some(frame)
}

/// The base chunk a delta `frame` names.
pub(crate) fn base_of(frame: &[u8]) -> Result<ChunkId, String> {
    match frame.get(4..HEADER) {
        Some(id) if frame.starts_with(&MAGIC) => Ok(ChunkId(id.try_into().expect("32 bytes"))),
        _ => Err("is not a delta frame".into()),
    }
}

/// Apply delta `frame` to `out`, which holds its base (`len` bytes).
pub(crate) fn apply(frame: &[u8], len: usize, out: &mut [u8]) -> Result<(), String> {
    if out.len() != len || len % PAGE != 0 {
        return Err(format!("its base holds {} bytes, not {len}", out.len()));
    }
    let pages = len / PAGE;
    let bitmap = frame.get(HEADER..HEADER + pages.div_ceil(8)).ok_or("its delta frame is cut short")?;
    let changed: Vec<usize> = (0..pages).filter(|&k| bitmap[k / 8] & (1 << (k % 8)) != 0).collect();
    let stray = (pages..bitmap.len() * 8).any(|k| bitmap[k / 8] & (1 << (k % 8)) != 0);
    let body = &frame[HEADER + bitmap.len()..];
    if stray || body.len() != changed.len() * PAGE {
        return Err(format!("its delta frame holds {} bytes of pages for {} pages marked", body.len(), changed.len()));
    }
    for (i, &k) in changed.iter().enumerate() {
        out[k * PAGE..(k + 1) * PAGE].copy_from_slice(&body[i * PAGE..(i + 1) * PAGE]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_round_trip_and_damage_is_refused() {
        let base: Vec<u8> = (0..16 * PAGE).map(|i| (i * 7 % 251) as u8).collect();
        let mut data = base.clone();
        data[3 * PAGE + 5] ^= 1;
        data[15 * PAGE] ^= 2;
        let id = ChunkId::of(&base);
        let frame = encode(&data, &id, &base, data.len()).expect("two pages changed");
        assert_eq!(frame.len(), HEADER + 2 + 2 * PAGE);
        assert_eq!(base_of(&frame).unwrap(), id);
        let mut out = base.clone();
        apply(&frame, data.len(), &mut out).unwrap();
        assert_eq!(out, data);
        // No gain, no frame.
        assert!(encode(&data, &id, &base, HEADER + 2 + 2 * PAGE).is_none());
        // Cut short, a stray bit, a base of another length: refused.
        assert!(apply(&frame[..frame.len() - 1], data.len(), &mut base.clone()).is_err());
        let mut stray = frame.clone();
        stray[HEADER + 1] |= 0x01;
        assert!(apply(&stray, data.len(), &mut base.clone()).is_err());
        assert!(apply(&frame, data.len(), &mut base[..8 * PAGE].to_vec()).is_err());
        // 9 pages: a bit past the last page is refused too.
        let (b9, mut d9) = (base[..9 * PAGE].to_vec(), base[..9 * PAGE].to_vec());
        d9[0] ^= 1;
        let mut f9 = encode(&d9, &id, &b9, d9.len()).unwrap();
        f9[HEADER + 1] |= 0x02;
        assert!(apply(&f9, d9.len(), &mut b9.clone()).is_err());
    }
}
