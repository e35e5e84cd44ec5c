//! The container: header, section table and checksummed sections of the
//! manifest file (`stasis.img`). See `docs/image-format.md` for the layout.
//!
//! Everything here is checked before anything is decoded: magic, version,
//! feature bits, section count and bounds, then the BLAKE3 checksum of the
//! header and table, then each section's own checksum. A manifest is read
//! whole into memory, and only after its length was checked against
//! [`MAX_MANIFEST_LEN`], so a hostile length field cannot make us allocate.

use std::fmt;
use std::path::Path;

use crate::error::ReadError;

/// First bytes of every manifest.
pub const MAGIC: [u8; 8] = *b"STASISIM";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Incompatible feature bit: the image holds a process tree (more than one
/// process, zombies, fds or memory shared between processes). A reader that
/// restored only the first process would silently lose the rest.
pub const INCOMPAT_TREE: u32 = 1;
/// Incompatible feature bit: the image holds unix sockets (a table of its
/// own, and fds that name it) or established TCP connections (with a
/// network lock to remove). A reader that did not know them would see fds
/// without a kind.
pub const INCOMPAT_SOCKETS: u32 = 2;
/// Incompatible feature bit: the image's pids are those of the tree's own
/// PID namespace; restored elsewhere than in a new PID namespace, the tree
/// would get the wrong pids.
pub const INCOMPAT_PID_NAMESPACE: u32 = 4;
/// Incompatible feature bit: the image holds pseudo-terminal pairs of the
/// tree's own (fds of kinds an older reader does not know).
pub const INCOMPAT_PTYS: u32 = 8;
/// Incompatible feature bit: some chunks are stored raw, their bytes as
/// they are (a stored length equal to the raw length), not as zstd frames.
/// A reader that did not know it would take them for damaged frames.
pub const INCOMPAT_RAW_CHUNKS: u32 = 0x10;
/// Incompatible feature bit: some chunks are stored as LZ4 frames
/// (`lz4.rs`), the others as zstd frames or raw; a reader tells the frames
/// apart by their magic numbers.
pub const INCOMPAT_LZ4_CHUNKS: u32 = 0x20;
/// Incompatible feature bit: some chunks are stored as delta frames
/// (`delta.rs`): the pages they changed from a chunk of the parent chain.
pub const INCOMPAT_DELTA_CHUNKS: u32 = 0x40;
/// Incompatible feature bits this reader understands. A reader refuses an
/// image that sets any other incompatible bit.
pub const KNOWN_INCOMPAT: u32 = INCOMPAT_TREE
    | INCOMPAT_SOCKETS
    | INCOMPAT_PID_NAMESPACE
    | INCOMPAT_PTYS
    | INCOMPAT_RAW_CHUNKS
    | INCOMPAT_LZ4_CHUNKS
    | INCOMPAT_DELTA_CHUNKS;
/// Upper bound on the manifest file: far above any real image's metadata
/// (the chunk table of a 1 TiB image at 64 KiB chunks is 768 MiB... of which
/// a real process never comes close), and what bounds our allocation.
pub const MAX_MANIFEST_LEN: u64 = 1 << 30;
/// Upper bound on the number of sections.
pub const MAX_SECTIONS: u32 = 64;

const FIXED_HEADER_LEN: usize = 32;
const ENTRY_LEN: usize = 56;
const CHECKSUM_LEN: usize = 32;

/// Section flag: a reader that does not know this section's kind must refuse
/// the image rather than ignore the section.
pub const SECTION_REQUIRED: u32 = 1;

/// What a section holds. Kinds are never renumbered; unknown kinds are kept
/// as their number so an older reader can name them in an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SectionKind {
    /// [`crate::records::ImageInfo`], protobuf.
    Info,
    /// The chunk table: fixed 48-byte entries sorted by chunk id.
    Chunks,
    /// [`crate::records::MemoryIndex`], protobuf.
    Memory,
    /// [`crate::records::ProcessTree`], protobuf.
    Processes,
    /// Frame checks: the XXH3-64 (little-endian, 8 bytes) of each chunk's
    /// frame as its writer wrote it to the pack, one per entry of the chunk
    /// table and in its order. Optional: a reader without it checks chunks
    /// only by decompressing and hashing them.
    FrameChecks,
    /// A kind this version does not know.
    Unknown(u32),
}

impl SectionKind {
    pub fn code(self) -> u32 {
        match self {
            SectionKind::Info => 1,
            SectionKind::Chunks => 2,
            SectionKind::Memory => 3,
            SectionKind::Processes => 4,
            SectionKind::FrameChecks => 5,
            SectionKind::Unknown(c) => c,
        }
    }

    pub fn from_code(code: u32) -> Self {
        match code {
            1 => SectionKind::Info,
            2 => SectionKind::Chunks,
            3 => SectionKind::Memory,
            4 => SectionKind::Processes,
            5 => SectionKind::FrameChecks,
            c => SectionKind::Unknown(c),
        }
    }
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SectionKind::Info => f.write_str("info"),
            SectionKind::Chunks => f.write_str("chunks"),
            SectionKind::Memory => f.write_str("memory"),
            SectionKind::Processes => f.write_str("processes"),
            SectionKind::FrameChecks => f.write_str("frame checks"),
            SectionKind::Unknown(c) => write!(f, "#{c}"),
        }
    }
}

/// The fixed part of the header, as decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub incompat: u32,
    pub compat: u32,
}

/// One row of the section table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionEntry {
    pub kind: SectionKind,
    pub flags: u32,
    pub offset: u64,
    pub len: u64,
    pub checksum: [u8; 32],
}

/// Lay out a manifest: header, table, header checksum, then the sections in
/// the order given.
pub fn encode(header: &Header, sections: &[(SectionKind, u32, Vec<u8>)]) -> Vec<u8> {
    let count = sections.len();
    let table_end = FIXED_HEADER_LEN + count * ENTRY_LEN;
    let data_start = table_end + CHECKSUM_LEN;
    let total = data_start + sections.iter().map(|s| s.2.len()).sum::<usize>();

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&header.version.to_le_bytes());
    out.extend_from_slice(&header.incompat.to_le_bytes());
    out.extend_from_slice(&header.compat.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&(total as u64).to_le_bytes());
    let mut offset = data_start as u64;
    for (kind, flags, data) in sections {
        out.extend_from_slice(&kind.code().to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(blake3::hash(data).as_bytes());
        offset += data.len() as u64;
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    for (_, _, data) in sections {
        out.extend_from_slice(data);
    }
    debug_assert_eq!(out.len(), total);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Check a whole manifest and return its header and section table. Section
/// checksums are checked here too, so a caller may decode any section that
/// this returns.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<(Header, Vec<SectionEntry>), ReadError> {
    let bad = |what: String| ReadError::Header { path: path.to_owned(), what };
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(ReadError::BadMagic { path: path.to_owned() });
    }
    if bytes.len() < FIXED_HEADER_LEN {
        return Err(bad(format!("file is {} bytes, shorter than a header", bytes.len())));
    }
    let header = Header { version: u32_at(bytes, 8), incompat: u32_at(bytes, 12), compat: u32_at(bytes, 16) };
    let count = u32_at(bytes, 20);
    let total = u64_at(bytes, 24);
    if header.version != FORMAT_VERSION {
        return Err(ReadError::Version { path: path.to_owned(), found: header.version, supported: FORMAT_VERSION });
    }
    if total != bytes.len() as u64 {
        return Err(bad(format!("header says {total} bytes but the file has {} (truncated or extended)", bytes.len())));
    }
    if count == 0 || count > MAX_SECTIONS {
        return Err(bad(format!("section count {count} is not between 1 and {MAX_SECTIONS}")));
    }
    let table_end = FIXED_HEADER_LEN + count as usize * ENTRY_LEN;
    let data_start = table_end + CHECKSUM_LEN;
    if bytes.len() < data_start {
        return Err(bad("section table runs past the end of the file".into()));
    }
    if blake3::hash(&bytes[..table_end]).as_bytes() != &bytes[table_end..data_start] {
        return Err(ReadError::HeaderChecksum { path: path.to_owned() });
    }
    // Past the checksum, every field is as written; the checks below guard
    // against a writer bug or a forged checksum, not against bit rot.
    if header.incompat & !KNOWN_INCOMPAT != 0 {
        return Err(ReadError::Features { path: path.to_owned(), bits: header.incompat & !KNOWN_INCOMPAT });
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut expected_offset = data_start as u64;
    for i in 0..count as usize {
        let at = FIXED_HEADER_LEN + i * ENTRY_LEN;
        let entry = SectionEntry {
            kind: SectionKind::from_code(u32_at(bytes, at)),
            flags: u32_at(bytes, at + 4),
            offset: u64_at(bytes, at + 8),
            len: u64_at(bytes, at + 16),
            checksum: bytes[at + 24..at + 56].try_into().expect("32 bytes"),
        };
        // Sections are contiguous and in table order: no gaps to hide data in,
        // no overlaps, nothing past the end.
        let end = entry.offset.checked_add(entry.len);
        if entry.offset != expected_offset || end.is_none_or(|e| e > total) {
            return Err(bad(format!("section {} lies outside the file or out of order", entry.kind)));
        }
        if entries.iter().any(|e: &SectionEntry| e.kind == entry.kind) {
            return Err(bad(format!("section {} appears twice", entry.kind)));
        }
        expected_offset = end.expect("checked above");
        entries.push(entry);
    }
    if expected_offset != total {
        return Err(bad("bytes after the last section".into()));
    }
    for e in &entries {
        let data = &bytes[e.offset as usize..(e.offset + e.len) as usize];
        if blake3::hash(data).as_bytes() != &e.checksum {
            return Err(ReadError::SectionChecksum { path: path.to_owned(), kind: e.kind });
        }
    }
    Ok((header, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let header = Header { version: FORMAT_VERSION, incompat: 0, compat: 0 };
        encode(
            &header,
            &[(SectionKind::Info, SECTION_REQUIRED, b"hello".to_vec()), (SectionKind::Unknown(77), 0, vec![9; 10])],
        )
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let (h, s) = decode(Path::new("x"), &bytes).unwrap();
        assert_eq!(h.version, FORMAT_VERSION);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].kind, SectionKind::Info);
        assert_eq!(&bytes[s[0].offset as usize..][..5], b"hello");
        assert_eq!(s[1].kind, SectionKind::Unknown(77));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(Path::new("x"), &b).is_err(), "flip at {i} not caught");
        }
    }

    #[test]
    fn every_truncation_is_caught() {
        let bytes = sample();
        for n in 0..bytes.len() {
            assert!(decode(Path::new("x"), &bytes[..n]).is_err(), "truncation to {n} not caught");
        }
    }

    #[test]
    fn unknown_incompat_feature_is_refused() {
        let header = Header { version: FORMAT_VERSION, incompat: 1 << 7, compat: 0 };
        let bytes = encode(&header, &[(SectionKind::Info, 0, vec![])]);
        assert!(matches!(decode(Path::new("x"), &bytes), Err(ReadError::Features { bits: 128, .. })));
    }
}
