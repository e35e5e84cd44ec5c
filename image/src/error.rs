//! Errors of reading, writing and verifying images.

use std::io;
use std::path::PathBuf;

use crate::ChunkId;
use crate::SectionKind;

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot create image directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{path} already holds an image; choose another directory or remove it first")]
    AlreadyExists { path: PathBuf },
    #[error("cannot write {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("memory region at {start:#x} with length {len:#x} is not page-aligned")]
    Unaligned { start: u64, len: u64 },
    #[error("memory region at {start:#x} overlaps an earlier region of address space {mm}")]
    Overlap { mm: u32, start: u64 },
    #[error("chunk size {0} is not a multiple of 4096 between 4 KiB and 4 MiB")]
    ChunkSize(u32),
    #[error("cannot compress chunk {id}")]
    Compress { id: ChunkId, source: io::Error },
    #[error("memory region at {start:#x} with length {len:#x} is not one chunk window, or chunk {id} is not stored")]
    NotAWindow { start: u64, len: u64, id: ChunkId },
    #[error("cannot use {path} as parent image")]
    Parent { path: PathBuf, source: Box<ReadError> },
    #[error("chunk {id} is not stored in this image or its parents")]
    ChunkMissing { id: ChunkId },
}

/// Why an image could not be opened or read. Every variant names the place
/// (file, section or chunk) that is wrong, so that `stasis verify` can report
/// the first bad one.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path} is not a stasis image: {what} is missing")]
    Missing { path: PathBuf, what: &'static str },
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a stasis image (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("{path}: image format version {found} is not supported (this stasis reads version {supported})")]
    Version { path: PathBuf, found: u32, supported: u32 },
    #[error("{path}: image uses features {bits:#x} that this stasis does not know; a newer stasis is needed")]
    Features { path: PathBuf, bits: u32 },
    #[error("{path}: header is malformed: {what}")]
    Header { path: PathBuf, what: String },
    #[error("{path}: header checksum mismatch (header or section table corrupted)")]
    HeaderChecksum { path: PathBuf },
    #[error("{path}: section {kind} checksum mismatch (corrupted)")]
    SectionChecksum { path: PathBuf, kind: SectionKind },
    #[error("{path}: section {kind} is malformed: {what}")]
    Section { path: PathBuf, kind: SectionKind, what: String },
    #[error("{path}: section {kind} is required by this image but unknown to this stasis; a newer stasis is needed")]
    UnknownRequiredSection { path: PathBuf, kind: SectionKind },
    #[error("{path}: chunk {id} is corrupt: {what}")]
    Chunk { path: PathBuf, id: ChunkId, what: String },
    #[error("chunk {id} is referenced but neither this image nor any parent holds it")]
    ChunkMissing { id: ChunkId },
    #[error("{path}: parent image {parent} is not the image this one was made against")]
    ParentMismatch { path: PathBuf, parent: PathBuf },
    #[error("{path}: parent chain is longer than {max} images (or loops)")]
    ParentChain { path: PathBuf, max: usize },
    #[error("{path}: cannot open parent image {parent}")]
    Parent { path: PathBuf, parent: PathBuf, source: Box<ReadError> },
}
