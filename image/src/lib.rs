//! The stasis image format, version 1: what a checkpoint looks like on disk.
//!
//! An image is a directory holding two files:
//!
//! - `stasis.img`, the manifest: a fixed header (magic, format version,
//!   feature bits), a table of sections, a BLAKE3 checksum over both, and the
//!   sections, each with its own BLAKE3 checksum. Metadata records are
//!   protobuf ([`records`]); the chunk table is fixed-width binary
//!   ([`chunk`]).
//! - `chunks.pack`, the memory: content-addressed chunks, each its own zstd
//!   frame, stored once however often they are referenced, and not at all
//!   when a parent image already holds them.
//!
//! An image is untrusted input: [`Image::open`] checks every checksum and
//! validates every size, count and address before anything is used, and
//! [`Image::verify`] checks every chunk. [`ImageWriter`] makes an image
//! appear atomically. The full specification is `docs/image-format.md`.
//!
//! This crate does no system calls beyond file I/O (`forbid(unsafe_code)`).
#![forbid(unsafe_code)]

pub mod chunk;
mod delta;
pub mod error;
pub mod format;
mod inspect;
mod lz4;
mod reader;
pub mod records;
pub mod validate;
mod writer;

pub use chunk::{ChunkEntry, ChunkId, ChunkTable, FrameChecks};
pub use error::{ReadError, WriteError};
pub use format::SectionKind;
pub use inspect::{
    ChunkSummary, DumpSummary, FdSummary, Inspection, MemorySummary, ParentSummary, ProcessSummary, RegionSummary,
    SectionSummary, VmaSummary,
};
pub use reader::{looks_like_image, Image, Manifest, VerifyReport, MAX_PARENT_DEPTH};
pub use writer::{set_dump_stats, Chunker, Compression, ImageWriter, Prepared, WriteOptions, WriteStats, WriteSummary};

/// File name of the manifest inside an image directory.
pub const MANIFEST_NAME: &str = "stasis.img";
/// File name of the chunk pack inside an image directory.
pub const PACK_NAME: &str = "chunks.pack";
/// Memory is described in whole pages of this size.
pub const PAGE_SIZE: u64 = 4096;

/// The chunk windows of `[start, start + len)`: cut at every multiple of
/// `chunk_size` in absolute address, as `(start, len)` pairs.
pub(crate) fn chunk_windows(start: u64, len: u64, chunk_size: u32) -> impl Iterator<Item = (u64, u64)> {
    let cs = u64::from(chunk_size);
    let end = start + len;
    let mut at = start;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = ((at / cs) + 1).saturating_mul(cs).min(end);
        let w = (at, next - at);
        at = next;
        Some(w)
    })
}

/// How many windows [`chunk_windows`] yields, without iterating.
pub(crate) fn chunk_window_count(start: u64, len: u64, chunk_size: u32) -> u64 {
    if len == 0 {
        return 0;
    }
    let cs = u64::from(chunk_size);
    (start + len - 1) / cs - start / cs + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_cut_at_absolute_multiples() {
        let w: Vec<_> = chunk_windows(0x3000, 0x12000, 0x10000).collect();
        assert_eq!(w, vec![(0x3000, 0xd000), (0x10000, 0x5000)]);
        assert_eq!(chunk_window_count(0x3000, 0x12000, 0x10000), 2);
        let w: Vec<_> = chunk_windows(0x10000, 0x20000, 0x10000).collect();
        assert_eq!(w, vec![(0x10000, 0x10000), (0x20000, 0x10000)]);
        assert_eq!(chunk_window_count(0x10000, 0x20000, 0x10000), 2);
        assert_eq!(chunk_window_count(0x1000, 0x1000, 0x10000), 1);
    }
}
