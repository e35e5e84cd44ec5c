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
//! +36  1   how the pages are stored: 0 as they are, 1 as one LZ4 frame
//!          of them all (the shape of `lz4.rs`), used when shorter
//! +37  n   a bitmap of the chunk's pages (bit k of byte k / 8: page k),
//!          n = pages / 8 rounded up, bits past the last page clear
//! +37+n    the pages whose bit is set, in order, 4096 bytes each (or
//!          their LZ4 frame)
//! ```
//!
//! The chunk is its base with those pages replaced; its id is still the
//! BLAKE3 of the whole, checked like any chunk's.

use crate::chunk::ChunkId;

/// What a delta frame starts with.
pub(crate) const MAGIC: [u8; 4] = *b"SDLT";

const PAGE: usize = 4096;
const HEADER: usize = 4 + 32 + 1;
/// The encoding byte: pages as they are, or one LZ4 frame of them.
const RAW: u8 = 0;
const LZ4: u8 = 1;

/// The delta frame of `data` against `base` (of the same length, a
/// multiple of pages), when it is shorter than `than` bytes.
pub(crate) fn encode(data: &[u8], base_id: &ChunkId, base: &[u8], than: usize) -> Option<Vec<u8>> {
    if data.len() != base.len() || data.len() % PAGE != 0 {
        return None;
    }
    let pages = data.len() / PAGE;
    let changed: Vec<usize> =
        (0..pages).filter(|&k| data[k * PAGE..(k + 1) * PAGE] != base[k * PAGE..(k + 1) * PAGE]).collect();
    // Not worth it, compressed or not, when the pages alone are too long
    // (a chunk written all over, the common case of a busy process).
    if changed.is_empty() || HEADER + pages.div_ceil(8) + changed.len() * PAGE / 8 >= than {
        return None;
    }
    let mut body = Vec::with_capacity(changed.len() * PAGE);
    for &k in &changed {
        body.extend_from_slice(&data[k * PAGE..(k + 1) * PAGE]);
    }
    let packed = crate::lz4::compress(&body);
    let (encoding, body) = if packed.len() < body.len() { (LZ4, packed) } else { (RAW, body) };
    let len = HEADER + pages.div_ceil(8) + body.len();
    if len >= than {
        return None;
    }
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&base_id.0);
    frame.push(encoding);
    let mut bitmap = vec![0u8; pages.div_ceil(8)];
    for &k in &changed {
        bitmap[k / 8] |= 1 << (k % 8);
    }
    frame.extend_from_slice(&bitmap);
    frame.extend_from_slice(&body);
    Some(frame)
}

/// The base chunk a delta `frame` names.
pub(crate) fn base_of(frame: &[u8]) -> Result<ChunkId, String> {
    match frame.get(4..36) {
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
    if stray || changed.is_empty() {
        return Err("its delta frame marks no page, or pages past the chunk".into());
    }
    let stored = &frame[HEADER + bitmap.len()..];
    let mut unpacked = Vec::new();
    let body = match frame[HEADER - 1] {
        RAW => stored,
        LZ4 => {
            crate::lz4::decompress_into(stored, changed.len() * PAGE, &mut unpacked)?;
            &unpacked[..]
        }
        other => return Err(format!("its delta frame stores pages in unknown encoding {other}")),
    };
    if body.len() != changed.len() * PAGE {
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

    /// 16 pages of a pattern, or of noise (which LZ4 cannot shrink).
    fn pages(noise: bool) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..16 * PAGE)
            .map(|i| match noise {
                true => {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
                false => (i * 7 % 251) as u8,
            })
            .collect()
    }

    #[test]
    fn deltas_round_trip_and_damage_is_refused() {
        for noise in [false, true] {
            let base = pages(noise);
            let mut data = base.clone();
            data[3 * PAGE + 5] ^= 1;
            data[15 * PAGE] ^= 2;
            let id = ChunkId::of(&base);
            let frame = encode(&data, &id, &base, data.len()).expect("two pages changed");
            // Noise as it is, the pattern as an LZ4 frame of the two pages.
            let (encoding, raw_len) = (frame[HEADER - 1], HEADER + 2 + 2 * PAGE);
            match noise {
                true => assert_eq!((encoding, frame.len()), (RAW, raw_len)),
                false => assert!(encoding == LZ4 && frame.len() < raw_len / 4, "{} bytes", frame.len()),
            }
            assert_eq!(base_of(&frame).unwrap(), id);
            let mut out = base.clone();
            apply(&frame, data.len(), &mut out).unwrap();
            assert_eq!(out, data);
            // No gain, no frame.
            assert!(encode(&data, &id, &base, frame.len()).is_none());
            // Cut short, a page marked more, a base of another length, an
            // unknown encoding: refused.
            assert!(apply(&frame[..frame.len() - 1], data.len(), &mut base.clone()).is_err());
            let mut more = frame.clone();
            more[HEADER + 1] |= 0x01;
            assert!(apply(&more, data.len(), &mut base.clone()).is_err());
            assert!(apply(&frame, data.len(), &mut base[..8 * PAGE].to_vec()).is_err());
            let mut unknown = frame.clone();
            unknown[HEADER - 1] = 7;
            assert!(apply(&unknown, data.len(), &mut base.clone()).is_err());
        }
        // 9 pages: a bit past the last page is refused too.
        let base = pages(true);
        let (b9, mut d9) = (base[..9 * PAGE].to_vec(), base[..9 * PAGE].to_vec());
        d9[0] ^= 1;
        let mut f9 = encode(&d9, &ChunkId::of(&b9), &b9, d9.len()).unwrap();
        f9[HEADER + 1] |= 0x02;
        assert!(apply(&f9, d9.len(), &mut b9.clone()).is_err());
    }
}
