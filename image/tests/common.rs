//! Shared by the image tests: deterministic memory contents.

#![allow(dead_code)]

use std::path::Path;

use stasis_image::{ImageWriter, WriteOptions, WriteSummary};

/// Bytes that compress poorly and differ per `seed`: a xorshift stream.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The regions of the standard test image: random data, zeros, a repeated
/// pattern, and a second address space that repeats the first's data.
pub fn sample_regions() -> Vec<(u32, u64, Vec<u8>)> {
    vec![
        (1, 0x40_0000, noise(1, 96 * 1024)),
        (1, 0x7f00_0000_0000, vec![0; 128 * 1024]),
        (1, 0x7f00_0010_0000, b"stasis!\n".repeat(8 * 1024)),
        (2, 0x40_0000, noise(1, 96 * 1024)),
    ]
}

pub fn write(dir: &Path, regions: &[(u32, u64, Vec<u8>)], opts: WriteOptions) -> WriteSummary {
    let mut w = ImageWriter::create(dir, opts).expect("create image");
    for (mm, start, data) in regions {
        w.add_memory(*mm, *start, data).expect("add memory");
    }
    w.finish().expect("finish image")
}

pub fn small_chunks() -> WriteOptions {
    WriteOptions { chunk_size: 16 * 1024, ..WriteOptions::default() }
}
