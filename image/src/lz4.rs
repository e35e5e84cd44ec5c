//! Chunks as LZ4 frames (the LZ4 frame format, `lz4_Frame_format.md` of
//! the LZ4 project): what a dump stores by default, about twice as fast
//! to write and three times as fast to read as zstd level 1, for a frame
//! about twice as large (memory of text: 30% of its size against 17%).
//!
//! Each chunk is one frame of one independent block, with its content
//! size: magic, FLG, BD, content size, header checksum, the block's size
//! and bytes, end mark. Readers accept exactly that shape (an `lz4` tool
//! reads it too); anything else is a damaged chunk.

use xxhash_rust::xxh32::xxh32;

/// `0x184D2204`, little-endian: what an LZ4 frame starts with.
pub(crate) const MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];

/// FLG: version 01, independent blocks, content size present.
const FLG: u8 = 0b0110_1000;

/// Bytes of a frame around its block: magic, FLG, BD, content size,
/// header checksum, block size, end mark.
const OVERHEAD: usize = 4 + 2 + 8 + 1 + 4 + 4;

/// The BD byte: the smallest maximum block size (64 KiB, 256 KiB, 1 MiB,
/// 4 MiB) that holds `len` bytes.
fn block_descriptor(len: usize) -> Option<u8> {
    (4u8..=7).find(|id| len <= 1 << (8 + 2 * id)).map(|id| id << 4)
}

thread_local! {
    /// Room for a block, kept per thread: a fresh one per chunk is memory
    /// the kernel must find and zero each time.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `data` (at most 4 MiB) as one LZ4 frame.
pub(crate) fn compress(data: &[u8]) -> Vec<u8> {
    let bd = block_descriptor(data.len()).expect("chunks are at most 4 MiB");
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let room = lz4_flex::block::get_maximum_output_size(data.len());
        if scratch.len() < room {
            scratch.resize(room, 0);
        }
        let n = lz4_flex::block::compress_into(data, &mut scratch[..room]).expect("room for the worst case");
        let mut out = Vec::with_capacity(OVERHEAD + n);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[FLG, bd]);
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.push(header_checksum(&out[4..]));
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(&scratch[..n]);
        out.extend_from_slice(&[0; 4]);
        out
    })
}

/// The header checksum: the second byte of the XXH32 of the descriptor.
fn header_checksum(descriptor: &[u8]) -> u8 {
    (xxh32(descriptor, 0) >> 8) as u8
}

/// `frame` decompressed into `out` (its bytes replaced), which must come to
/// exactly `len` bytes; `Err` says what is wrong.
pub(crate) fn decompress_into(frame: &[u8], len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let field = |from: usize, n: usize| frame.get(from..from + n).ok_or("is cut short");
    if field(0, 4)? != MAGIC {
        return Err("is not an LZ4 frame".into());
    }
    let descriptor = field(4, 10)?;
    if descriptor[0] != FLG || Some(descriptor[1]) != block_descriptor(len) {
        return Err(format!(
            "has an LZ4 frame descriptor {:02x} {:02x} not written by stasis",
            descriptor[0], descriptor[1]
        ));
    }
    if field(14, 1)?[0] != header_checksum(descriptor) {
        return Err("has a wrong LZ4 header checksum".into());
    }
    let content = u64::from_le_bytes(descriptor[2..10].try_into().expect("8 bytes"));
    if content != len as u64 {
        return Err(format!("holds {content} bytes, not {len}"));
    }
    let block_len = u32::from_le_bytes(field(15, 4)?.try_into().expect("4 bytes")) as usize;
    if block_len >= 1 << 31 || frame.len() != OVERHEAD + block_len || field(19 + block_len, 4)? != [0; 4] {
        return Err("has an LZ4 block that is not the frame's only one".into());
    }
    // Zeros written only where the buffer grows (one used again for
    // chunk after chunk is overwritten whole, or the frame is refused).
    out.resize(len, 0);
    match lz4_flex::block::decompress_into(&frame[19..19 + block_len], out) {
        Ok(n) if n == len => Ok(()),
        Ok(n) => Err(format!("decompresses to {n} bytes, not {len}")),
        Err(e) => Err(format!("does not decompress: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_refused() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 ^ (i / 4096) as u8).collect();
        let frame = compress(&data);
        assert!(frame.len() < data.len() / 4, "{} bytes", frame.len());
        let mut out = Vec::new();
        decompress_into(&frame, data.len(), &mut out).unwrap();
        assert_eq!(out, data);
        // Another length, a cut, and every flipped byte of the header and end.
        assert!(decompress_into(&frame, data.len() - 4096, &mut out).is_err());
        assert!(decompress_into(&frame[..frame.len() - 1], data.len(), &mut out).is_err());
        for i in (0..19).chain(frame.len() - 4..frame.len()) {
            let mut bad = frame.clone();
            bad[i] ^= 0x01;
            assert!(decompress_into(&bad, data.len(), &mut out).is_err(), "flip of byte {i}");
        }
    }
}
