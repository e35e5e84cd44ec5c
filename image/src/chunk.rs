//! Content-addressed chunks and the chunk table.
//!
//! A chunk's id is the BLAKE3 hash of its uncompressed bytes; it is stored
//! once per image as its own zstd frame in `chunks.pack` (or as its bytes,
//! when zstd cannot shrink them: `format::INCOMPAT_RAW_CHUNKS`), whatever
//! the number of places that reference it. The id doubles as the chunk's
//! checksum: a chunk is good when its frame decompresses to exactly its
//! recorded length (or its raw bytes are that long) and hashes to its id.
//!
//! The table is fixed-width binary rather than protobuf because it is the one
//! part of the metadata that grows with memory size: 48 bytes per chunk,
//! sorted by id, looked up by binary search without decoding.

use std::collections::HashMap;
use std::fmt;

/// Bytes per table entry: id (32), offset (8), stored length (4), raw length (4).
pub const ENTRY_LEN: usize = 48;

/// The BLAKE3 hash of a chunk's uncompressed contents.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }
}

/// A checksum (64-bit XXH3) of each frame an image's writer appended to
/// the pack, taken as it wrote it: what [`crate::Image::verify_written`]
/// compares the pack with, reading every frame back once without
/// decompressing or hashing its contents (about 20 times less work than
/// [`crate::Image::verify`]). Kept in memory for the writer's caller (and
/// stored with the image: [`crate::SectionKind::FrameChecks`]).
#[derive(Clone, Default)]
pub struct FrameChecks {
    pub(crate) checks: HashMap<ChunkId, u64>,
    /// Frames the writer read back and checked already, each after the
    /// sync that wrote it (`flush_early`), at the offset and length it
    /// read them: [`crate::Image::verify_written`] need not read them again
    /// where the chunk table says the same.
    pub(crate) read_back: HashMap<ChunkId, (u64, u32)>,
}

impl FrameChecks {
    pub(crate) fn of(frame: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64(frame)
    }
}

/// Read the frames at `spans` (offset and stored length of each, in pack
/// order) of `pack` back, adjacent ones in reads of up to 8 MiB, and hand
/// each frame's index in `spans` and bytes to `check`, up to the first
/// error of either (a read's through `io`).
pub(crate) fn read_frames_back<E>(
    pack: &std::fs::File,
    spans: &[(u64, u32)],
    io: impl Fn(std::io::Error) -> E,
    mut check: impl FnMut(usize, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    use std::os::unix::fs::FileExt;
    const RUN: u64 = 8 << 20;
    let mut buf = Vec::new();
    let mut k = 0;
    while k < spans.len() {
        let start = spans[k].0;
        let (mut end, mut at) = (k, start);
        while end < spans.len() && spans[end].0 == at && (end == k || at - start < RUN) {
            at += u64::from(spans[end].1);
            end += 1;
        }
        buf.resize((at - start) as usize, 0);
        pack.read_exact_at(&mut buf, start).map_err(&io)?;
        for (i, &(offset, len)) in spans.iter().enumerate().take(end).skip(k) {
            let from = (offset - start) as usize;
            check(i, &buf[from..from + len as usize])?;
        }
        k = end;
    }
    Ok(())
}

impl fmt::Debug for FrameChecks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FrameChecks({} frames, {} read back)", self.checks.len(), self.read_back.len())
    }
}

impl fmt::Display for ChunkId {
    /// The first 16 hex digits: enough to tell chunks apart in a message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// Where a chunk's frame lies in this image's pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// The decoded chunk table of one image, sorted by id.
#[derive(Clone, Debug, Default)]
pub struct ChunkTable {
    entries: Vec<ChunkEntry>,
}

impl ChunkTable {
    /// Build from entries in any order; ids must be unique.
    pub(crate) fn from_entries(mut entries: Vec<ChunkEntry>) -> Self {
        entries.sort_unstable_by_key(|e| e.id);
        ChunkTable { entries }
    }

    pub fn get(&self, id: &ChunkId) -> Option<&ChunkEntry> {
        self.position(id).map(|i| &self.entries[i])
    }

    /// Where chunk `id` is in [`ChunkTable::entries`].
    pub fn position(&self, id: &ChunkId) -> Option<usize> {
        self.entries.binary_search_by_key(id, |e| e.id).ok()
    }

    pub fn entries(&self) -> &[ChunkEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            out.extend_from_slice(&e.id.0);
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.stored_len.to_le_bytes());
            out.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        out
    }

    /// Decode and validate against the pack length and chunk size; `Err`
    /// says what is wrong.
    pub(crate) fn decode(bytes: &[u8], pack_len: u64, chunk_size: u32) -> Result<Self, String> {
        if bytes.len() % ENTRY_LEN != 0 {
            return Err(format!("length {} is not a multiple of {ENTRY_LEN}", bytes.len()));
        }
        let max_stored = zstd::zstd_safe::compress_bound(chunk_size as usize) as u64;
        let mut entries = Vec::with_capacity(bytes.len() / ENTRY_LEN);
        for raw in bytes.chunks_exact(ENTRY_LEN) {
            let e = ChunkEntry {
                id: ChunkId(raw[..32].try_into().expect("32 bytes")),
                offset: u64::from_le_bytes(raw[32..40].try_into().expect("8 bytes")),
                stored_len: u32::from_le_bytes(raw[40..44].try_into().expect("4 bytes")),
                raw_len: u32::from_le_bytes(raw[44..48].try_into().expect("4 bytes")),
            };
            if let Some(prev) = entries.last().map(|p: &ChunkEntry| p.id) {
                if prev >= e.id {
                    return Err(format!("chunk {} is out of order or repeated", e.id));
                }
            }
            if e.raw_len == 0 || e.raw_len > chunk_size {
                return Err(format!("chunk {} claims {} bytes, chunk size is {chunk_size}", e.id, e.raw_len));
            }
            if u64::from(e.stored_len) > max_stored
                || e.offset.checked_add(e.stored_len.into()).is_none_or(|end| end > pack_len)
            {
                return Err(format!("chunk {} lies outside chunks.pack", e.id));
            }
            entries.push(e);
        }
        Ok(ChunkTable { entries })
    }
}
