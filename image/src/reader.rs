//! Opening, reading and verifying an image.
//!
//! [`Image::open`] reads the manifest whole (bounded by
//! [`format::MAX_MANIFEST_LEN`]), checks the header and every section
//! checksum, decodes the sections and validates every size, count and
//! address in them, then opens the parent chain the same way. It does not
//! read chunk contents; [`Image::verify`] does, for every chunk of every
//! image in the chain.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::chunk::{ChunkEntry, ChunkId, ChunkTable, FrameChecks};
use crate::error::ReadError;
use crate::format::{self, Header, SectionEntry, SectionKind, MAX_MANIFEST_LEN, SECTION_REQUIRED};
use crate::records::{ImageInfo, MemoryIndex, MemoryRegion, ProcessTree};
use crate::validate::validate_processes;
use crate::{chunk_windows, MANIFEST_NAME, PACK_NAME, PAGE_SIZE};

/// Longest parent chain followed; also what stops a loop of parents.
pub const MAX_PARENT_DEPTH: usize = 64;
/// Highest user-space address on x86_64 with 5-level paging.
const MAX_ADDRESS: u64 = 1 << 57;

/// How a chunk read is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Not at all (its frames were checked a moment before).
    Nothing,
    /// Its frame against the frame check stored for it; its contents
    /// against its id only in an image without frame checks.
    Frames,
    /// Both.
    Contents,
}

/// An opened, structurally valid image.
#[derive(Debug)]
pub struct Image {
    dir: PathBuf,
    manifest: Manifest,
    pack: File,
    parent: Option<Box<Image>>,
}

impl Image {
    /// Open the image in `dir` and its parents.
    pub fn open(dir: &Path) -> Result<Image, ReadError> {
        Self::open_at_depth(dir, 0)
    }

    fn open_at_depth(dir: &Path, depth: usize) -> Result<Image, ReadError> {
        let path = dir.join(MANIFEST_NAME);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ReadError::Io { path, source }
        };
        let file = match File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReadError::Missing { path: dir.to_owned(), what: MANIFEST_NAME });
            }
            other => other.map_err(io(&path))?,
        };
        let len = file.metadata().map_err(io(&path))?.len();
        if len > MAX_MANIFEST_LEN {
            return Err(ReadError::Header {
                path,
                what: format!("{len} bytes is more than a manifest may be ({MAX_MANIFEST_LEN})"),
            });
        }
        let mut bytes = vec![0; len as usize];
        file.read_exact_at(&mut bytes, 0).map_err(io(&path))?;
        let manifest = Manifest::decode(&path, &bytes)?;
        let info = &manifest.info;

        let pack_path = dir.join(PACK_NAME);
        let pack = match File::open(&pack_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReadError::Missing { path: dir.to_owned(), what: PACK_NAME });
            }
            other => other.map_err(io(&pack_path))?,
        };
        let pack_len = pack.metadata().map_err(io(&pack_path))?.len();
        if pack_len != info.pack_len {
            return Err(ReadError::Header {
                path: pack_path,
                what: format!("{pack_len} bytes, the manifest says {} (truncated or replaced)", info.pack_len),
            });
        }

        let parent = match &info.parent {
            None => None,
            Some(p) => {
                if depth + 1 >= MAX_PARENT_DEPTH {
                    return Err(ReadError::ParentChain { path, max: MAX_PARENT_DEPTH });
                }
                // Canonical, so messages name the parent as a user would.
                let parent_dir = dir.join(&p.path);
                let parent_dir = fs::canonicalize(&parent_dir).unwrap_or(parent_dir);
                let parent = Self::open_at_depth(&parent_dir, depth + 1).map_err(|e| match e {
                    chain @ ReadError::ParentChain { .. } => chain,
                    other => {
                        ReadError::Parent { path: path.clone(), parent: parent_dir.clone(), source: Box::new(other) }
                    }
                })?;
                if parent.manifest.hash[..] != p.manifest_hash[..] {
                    return Err(ReadError::ParentMismatch { path, parent: parent_dir });
                }
                Some(Box::new(parent))
            }
        };

        Ok(Image { dir: dir.to_owned(), manifest, pack, parent })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// BLAKE3 of the whole manifest: the image's identity.
    pub fn manifest_hash(&self) -> &[u8; 32] {
        &self.manifest.hash
    }

    pub fn header(&self) -> &Header {
        &self.manifest.header
    }

    pub fn sections(&self) -> &[SectionEntry] {
        &self.manifest.sections
    }

    pub fn info(&self) -> &ImageInfo {
        &self.manifest.info
    }

    pub fn chunks(&self) -> &ChunkTable {
        &self.manifest.chunks
    }

    pub fn memory(&self) -> &[MemoryRegion] {
        &self.manifest.memory.regions
    }

    /// The process tree, for an image of processes.
    pub fn processes(&self) -> Option<&ProcessTree> {
        self.manifest.processes.as_ref()
    }

    pub fn parent(&self) -> Option<&Image> {
        self.parent.as_deref()
    }

    /// The image in this chain that stores chunk `id`, and where.
    pub fn find_chunk(&self, id: &ChunkId) -> Option<(&Image, &ChunkEntry)> {
        let mut image = Some(self);
        while let Some(i) = image {
            if let Some(e) = i.manifest.chunks.get(id) {
                return Some((i, e));
            }
            image = i.parent.as_deref();
        }
        None
    }

    /// The contents of chunk `id`, checked against its id.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, ReadError> {
        let (image, entry) = self.find_chunk(id).ok_or(ReadError::ChunkMissing { id: *id })?;
        image.read_own_chunk(entry)
    }

    /// [`Image::read_chunk`] checked against the frame check stored for it
    /// (XXH3 of the bytes stored) instead of hashing its contents again
    /// (BLAKE3), which only an image without frame checks still does: what
    /// the writer of an image on top of this one reads its chunks with,
    /// the way a restore does after checking the frames.
    pub fn read_chunk_by_frame(&self, id: &ChunkId) -> Result<Vec<u8>, ReadError> {
        let (image, entry) = self.find_chunk(id).ok_or(ReadError::ChunkMissing { id: *id })?;
        let mut data = Vec::new();
        image.read_own_chunk_into(entry, Check::Frames, &mut data)?;
        Ok(data)
    }

    /// [`Image::read_chunk`] into `buf` (its old contents replaced: a
    /// buffer used again takes no new pages, nor zeroing), without hashing
    /// it again: for a reader that has just checked the image's frames
    /// ([`Image::verify_frames`]) or chunks ([`Image::verify`]): a restore
    /// writing every chunk it checked a moment before. Its
    /// length is still checked, and a frame still has to decompress.
    pub fn read_verified_chunk_into(&self, id: &ChunkId, buf: &mut Vec<u8>) -> Result<(), ReadError> {
        let (image, entry) = self.find_chunk(id).ok_or(ReadError::ChunkMissing { id: *id })?;
        image.read_own_chunk_into(entry, Check::Nothing, buf)
    }

    fn read_own_chunk(&self, e: &ChunkEntry) -> Result<Vec<u8>, ReadError> {
        let mut data = Vec::new();
        self.read_own_chunk_into(e, Check::Contents, &mut data)?;
        Ok(data)
    }

    fn read_own_chunk_into(&self, e: &ChunkEntry, how: Check, data: &mut Vec<u8>) -> Result<(), ReadError> {
        // Contents hashed when asked, or when there is no frame check.
        let hash = how == Check::Contents || (how == Check::Frames && self.manifest.frame_checks.is_none());
        let path = self.dir.join(PACK_NAME);
        let io = |source| ReadError::Io { path: path.clone(), source };
        let corrupt = |what: String| ReadError::Chunk { path: path.clone(), id: e.id, what };
        let raw = e.stored_len == e.raw_len && self.manifest.header.incompat & format::INCOMPAT_RAW_CHUNKS != 0;
        // The frame's stored check, where hashing: contents that match
        // their id in a frame that does not match its check would pass
        // `stasis verify` and be refused by a restore (which checks frames).
        let check = |frame: &[u8]| match &self.manifest.frame_checks {
            Some(checks) if how != Check::Nothing => {
                let k = self.manifest.chunks.position(&e.id).expect("entries come from the table");
                match checks[k] == FrameChecks::of(frame) {
                    true => Ok(()),
                    false => Err(corrupt("its stored bytes are not those written (frame check)".into())),
                }
            }
            _ => Ok(()),
        };
        if raw {
            // Zeros written only where the buffer grows.
            data.resize(e.stored_len as usize, 0);
            self.pack.read_exact_at(data, e.offset).map_err(io)?;
            check(data)?;
        } else {
            let mut frame = vec![0; e.stored_len as usize];
            self.pack.read_exact_at(&mut frame, e.offset).map_err(io)?;
            check(&frame)?;
            let incompat = self.manifest.header.incompat;
            if incompat & format::INCOMPAT_DELTA_CHUNKS != 0 && frame.starts_with(&crate::delta::MAGIC) {
                // Its base is up the chain (never here: the walk ends).
                let base = crate::delta::base_of(&frame).map_err(corrupt)?;
                let parent = self.parent.as_deref().ok_or_else(|| corrupt("names a base but has no parent".into()))?;
                let (image, entry) = parent.find_chunk(&base).ok_or(ReadError::ChunkMissing { id: base })?;
                image.read_own_chunk_into(entry, how, data)?;
                crate::delta::apply(&frame, e.raw_len as usize, data).map_err(corrupt)?;
            } else {
                let lz4 = incompat & format::INCOMPAT_LZ4_CHUNKS != 0;
                unpack_into(&frame, e.raw_len as usize, data, lz4).map_err(corrupt)?;
            }
        }
        if hash && ChunkId::of(data) != e.id {
            return Err(corrupt("contents do not match its id".into()));
        }
        Ok(())
    }

    /// The chunks `region` is made of: the address and length of each
    /// window, and its chunk's id, in address order.
    pub fn region_chunks<'r>(&self, region: &'r MemoryRegion) -> impl Iterator<Item = (u64, u64, ChunkId)> + 'r {
        chunk_windows(region.start, region.len, self.manifest.info.chunk_size)
            .zip(region.chunk_ids.chunks_exact(32))
            .map(|((at, len), id)| (at, len, ChunkId(id.try_into().expect("32 bytes"))))
    }

    /// The bytes of one memory region of this image, assembled from chunks.
    pub fn read_region(&self, region: &MemoryRegion) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::with_capacity(region.len as usize);
        for (_, len, id) in self.region_chunks(region) {
            let data = self.read_chunk(&id)?;
            if data.len() as u64 != len {
                return Err(ReadError::Chunk {
                    path: self.dir.join(MANIFEST_NAME),
                    id,
                    what: format!("holds {} bytes where the memory index needs {len}", data.len()),
                });
            }
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// Check every chunk of every image in the chain (decompressed, its
    /// contents against its id, its frame against its stored check), and
    /// that every chunk the memory index references exists with the right
    /// length. Returns the first problem found.
    pub fn verify(&self) -> Result<VerifyReport, ReadError> {
        let mut report = VerifyReport::default();
        let mut image = Some(self);
        while let Some(i) = image {
            i.verify_own_chunks(&mut report)?;
            image = i.parent.as_deref();
        }
        let references = self.verify_references()?;
        report.references_checked = references.references_checked;
        report.images = references.images;
        Ok(report)
    }

    /// Check every frame of every pack in the chain against the check its
    /// writer stored with the image ([`Manifest::frame_checks`]), and every
    /// reference of the chain: each pack read once, on all cores, with no
    /// decompression nor hashing of contents. A frame that reads back as
    /// it was written holds the bytes its writer hashed into its id, so
    /// this is what a restore checks before it starts anything. An image
    /// written without frame checks (by an older stasis) has its chunks
    /// checked as [`Image::verify`] does.
    pub fn verify_frames(&self) -> Result<VerifyReport, ReadError> {
        let mut report = VerifyReport::default();
        let mut image = Some(self);
        while let Some(i) = image {
            match &i.manifest.frame_checks {
                Some(checks) => {
                    let table = &i.manifest.chunks;
                    let stored = |e: &ChunkEntry| table.position(&e.id).map(|k| checks[k]);
                    i.check_all_frames(&stored, "its stored bytes are not those written (frame check)", &|_| false)?;
                    report.chunks_checked += table.len() as u64;
                    report.bytes_checked += table.entries().iter().map(|e| u64::from(e.stored_len)).sum::<u64>();
                }
                None => i.verify_own_chunks(&mut report)?,
            }
            image = i.parent.as_deref();
        }
        let references = self.verify_references()?;
        report.references_checked = references.references_checked;
        report.images = references.images;
        Ok(report)
    }

    /// Every chunk of this image's own pack read back, decompressed and
    /// hashed, on all cores; counted in `report`.
    fn verify_own_chunks(&self, report: &mut VerifyReport) -> Result<(), ReadError> {
        let entries = self.manifest.chunks.entries();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = entries.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let parts: Vec<_> = entries
                .chunks(per)
                .map(|part| {
                    scope.spawn(move || {
                        let mut buf = Vec::new();
                        part.iter().try_for_each(|e| self.read_own_chunk_into(e, Check::Contents, &mut buf))
                    })
                })
                .collect();
            parts.into_iter().try_for_each(|h| h.join().expect("verify worker panicked"))
        })?;
        report.chunks_checked += entries.len() as u64;
        report.bytes_checked += entries.iter().map(|e| u64::from(e.raw_len)).sum::<u64>();
        Ok(())
    }

    /// Check an image just written: every frame of this image's pack
    /// reads back as its writer wrote it (`checks`, from
    /// [`crate::WriteSummary`]), and every reference of the chain resolves
    /// ([`Image::verify_references`]). A frame's contents were hashed as
    /// they were read from memory; this catches what went wrong after
    /// (a write lost or misplaced, a wrong offset in the table) at the cost
    /// of reading the pack once, on all cores. [`Image::verify`] checks
    /// the contents of every chunk of the chain against its id.
    pub fn verify_written(&self, checks: &FrameChecks) -> Result<VerifyReport, ReadError> {
        let written = |e: &ChunkEntry| checks.checks.get(&e.id).copied();
        let read_back = |e: &&ChunkEntry| checks.read_back.get(&e.id) == Some(&(e.offset, e.stored_len));
        self.check_all_frames(&written, "reads back other than it was written", &read_back)?;
        let entries = self.manifest.chunks.entries();
        let mut report = self.verify_references()?;
        report.chunks_checked = entries.len() as u64;
        report.bytes_checked = entries.iter().map(|e| u64::from(e.stored_len)).sum();
        Ok(report)
    }

    /// Every frame of this image's pack but those `skip` says were checked
    /// already read back, on all cores, and its XXH3-64 compared with what
    /// `expected` says it was written as (an error when it names none, or
    /// `differs` when it does not match).
    fn check_all_frames(
        &self,
        expected: &(dyn Fn(&ChunkEntry) -> Option<u64> + Sync),
        differs: &str,
        skip: &dyn Fn(&&ChunkEntry) -> bool,
    ) -> Result<(), ReadError> {
        let path = self.dir.join(PACK_NAME);
        let mut entries: Vec<&ChunkEntry> = self.manifest.chunks.entries().iter().filter(|e| !skip(e)).collect();
        entries.sort_by_key(|e| e.offset);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = entries.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let parts: Vec<_> = entries
                .chunks(per)
                .map(|part| scope.spawn(|| self.check_frames(part, expected, differs, &path)))
                .collect();
            parts.into_iter().try_for_each(|h| h.join().expect("verify worker panicked"))
        })
    }

    /// [`Image::check_all_frames`] of `entries`, in pack order: read in
    /// runs of up to 8 MiB of adjacent frames.
    fn check_frames(
        &self,
        entries: &[&ChunkEntry],
        expected: &(dyn Fn(&ChunkEntry) -> Option<u64> + Sync),
        differs: &str,
        path: &Path,
    ) -> Result<(), ReadError> {
        let spans: Vec<(u64, u32)> = entries.iter().map(|e| (e.offset, e.stored_len)).collect();
        let io = |source| ReadError::Io { path: path.to_owned(), source };
        crate::chunk::read_frames_back(&self.pack, &spans, io, |k, frame| {
            let e = entries[k];
            let what = match expected(e) {
                None => "was not written by this writer",
                Some(c) if c != FrameChecks::of(frame) => differs,
                Some(_) => return Ok(()),
            };
            Err(ReadError::Chunk { path: path.to_owned(), id: e.id, what: what.into() })
        })
    }

    /// The part of [`Image::verify`] that reads no chunk: every chunk the
    /// memory index names is stored (here or in a parent) with the length
    /// its place needs. A chunk's contents are still checked against its
    /// hash whenever it is read.
    pub fn verify_references(&self) -> Result<VerifyReport, ReadError> {
        let mut report = VerifyReport::default();
        let mut image = Some(self);
        while let Some(i) = image {
            for region in &i.manifest.memory.regions {
                for ((_, len), id) in chunk_windows(region.start, region.len, i.manifest.info.chunk_size)
                    .zip(region.chunk_ids.chunks_exact(32))
                {
                    let id = ChunkId(id.try_into().expect("32 bytes"));
                    let (_, e) = i.find_chunk(&id).ok_or(ReadError::ChunkMissing { id })?;
                    if u64::from(e.raw_len) != len {
                        return Err(ReadError::Chunk {
                            path: i.dir.join(MANIFEST_NAME),
                            id,
                            what: format!("holds {} bytes where the memory index needs {len}", e.raw_len),
                        });
                    }
                    report.references_checked += 1;
                }
            }
            report.images += 1;
            image = i.parent.as_deref();
        }
        Ok(report)
    }

    /// A summary of the image for `stasis inspect`.
    pub fn inspect(&self) -> crate::Inspection {
        crate::inspect::inspect(self)
    }

    pub(crate) fn manifest_len(&self) -> u64 {
        self.manifest.len
    }
}

/// A decoded, validated manifest: everything of an image but its chunks.
#[derive(Debug)]
pub struct Manifest {
    pub header: Header,
    pub sections: Vec<SectionEntry>,
    pub info: ImageInfo,
    pub chunks: ChunkTable,
    pub memory: MemoryIndex,
    pub processes: Option<ProcessTree>,
    /// The XXH3-64 of each chunk's frame as written, in the chunk table's
    /// order ([`SectionKind::FrameChecks`]); `None` for an image written
    /// without them.
    pub frame_checks: Option<Vec<u64>>,
    /// BLAKE3 of the manifest bytes.
    pub hash: [u8; 32],
    pub len: u64,
}

impl Manifest {
    /// Check and decode manifest `bytes`; `path` is only for messages. Never
    /// panics and allocates at most in proportion to `bytes`, whatever they
    /// hold (this is what the fuzz target drives).
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Manifest, ReadError> {
        if bytes.len() as u64 > MAX_MANIFEST_LEN {
            return Err(ReadError::Header { path: path.to_owned(), what: "manifest is too large".into() });
        }
        let (header, sections) = format::decode(path, bytes)?;
        let section = |kind: SectionKind| {
            sections.iter().find(|e| e.kind == kind).map(|e| &bytes[e.offset as usize..(e.offset + e.len) as usize])
        };
        let malformed = |kind, what: String| ReadError::Section { path: path.to_owned(), kind, what };
        for e in &sections {
            if matches!(e.kind, SectionKind::Unknown(_)) && e.flags & SECTION_REQUIRED != 0 {
                return Err(ReadError::UnknownRequiredSection { path: path.to_owned(), kind: e.kind });
            }
        }

        let info_bytes = section(SectionKind::Info).ok_or_else(|| malformed(SectionKind::Info, "missing".into()))?;
        let info = ImageInfo::decode(info_bytes).map_err(|e| malformed(SectionKind::Info, e.to_string()))?;
        let cs = info.chunk_size;
        if cs % PAGE_SIZE as u32 != 0 || !(4096..=4 << 20).contains(&cs) {
            return Err(malformed(SectionKind::Info, format!("chunk size {cs} is invalid")));
        }
        if info.image_id.len() != 16 {
            return Err(malformed(SectionKind::Info, "image id is not 16 bytes".into()));
        }
        if let Some(p) = &info.parent {
            if p.manifest_hash.len() != 32 || p.path.is_empty() || p.path.contains('\0') || p.path.len() > 4096 {
                return Err(malformed(SectionKind::Info, "parent reference is malformed".into()));
            }
        }

        let table_bytes =
            section(SectionKind::Chunks).ok_or_else(|| malformed(SectionKind::Chunks, "missing".into()))?;
        let chunks =
            ChunkTable::decode(table_bytes, info.pack_len, cs).map_err(|what| malformed(SectionKind::Chunks, what))?;

        let memory_bytes =
            section(SectionKind::Memory).ok_or_else(|| malformed(SectionKind::Memory, "missing".into()))?;
        let memory = MemoryIndex::decode(memory_bytes).map_err(|e| malformed(SectionKind::Memory, e.to_string()))?;
        validate_memory(&memory, cs).map_err(|what| malformed(SectionKind::Memory, what))?;

        let processes = match section(SectionKind::Processes) {
            None => None,
            Some(b) => {
                let tree = ProcessTree::decode(b).map_err(|e| malformed(SectionKind::Processes, e.to_string()))?;
                validate_processes(&tree).map_err(|what| malformed(SectionKind::Processes, what))?;
                Some(tree)
            }
        };

        let frame_checks = match section(SectionKind::FrameChecks) {
            None => None,
            Some(b) if b.len() != chunks.len() * 8 => {
                let what = format!("{} bytes for {} chunks (8 bytes each)", b.len(), chunks.len());
                return Err(malformed(SectionKind::FrameChecks, what));
            }
            Some(b) => Some(b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
        };

        Ok(Manifest {
            header,
            sections,
            info,
            chunks,
            memory,
            processes,
            frame_checks,
            hash: *blake3::hash(bytes).as_bytes(),
            len: bytes.len() as u64,
        })
    }
}

/// What [`Image::verify`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Images in the chain, this one included.
    pub images: usize,
    /// Chunks decompressed and hashed.
    pub chunks_checked: u64,
    /// Their uncompressed bytes.
    pub bytes_checked: u64,
    /// Chunk references of the memory indexes resolved.
    pub references_checked: u64,
}

/// Sizes, alignment, overlap and id counts of a memory index. Uses only
/// arithmetic on the lengths, so a hostile length cannot make us allocate.
fn validate_memory(memory: &MemoryIndex, chunk_size: u32) -> Result<(), String> {
    let mut spans: Vec<(u32, u64, u64)> = Vec::with_capacity(memory.regions.len());
    for r in &memory.regions {
        let end = r.start.checked_add(r.len).filter(|&e| e <= MAX_ADDRESS);
        if r.start % PAGE_SIZE != 0 || r.len % PAGE_SIZE != 0 || r.len == 0 || end.is_none() {
            return Err(format!("region at {:#x} of length {:#x} is not page-aligned or out of range", r.start, r.len));
        }
        let windows = crate::chunk_window_count(r.start, r.len, chunk_size);
        if r.chunk_ids.len() as u64 != windows * 32 {
            return Err(format!(
                "region at {:#x} names {} bytes of chunk ids, needs {}",
                r.start,
                r.chunk_ids.len(),
                windows * 32
            ));
        }
        spans.push((r.mm, r.start, end.expect("checked above")));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[0].0 == w[1].0 && w[0].2 > w[1].1 {
            return Err(format!("regions at {:#x} and {:#x} of address space {} overlap", w[0].1, w[1].1, w[0].0));
        }
    }
    Ok(())
}

/// Whether `dir` holds a manifest at all (complete or not).
pub fn looks_like_image(dir: &Path) -> bool {
    fs::metadata(dir.join(MANIFEST_NAME)).is_ok()
}

thread_local! {
    /// A decompression context per thread: making one per chunk costs more
    /// than many chunks take to decompress.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `frame` (LZ4 when `lz4` allows it and its magic number says so, else
/// zstd) decompressed into `out`, which must come to `len` bytes; `Err`
/// says what is wrong.
pub(crate) fn unpack_into(frame: &[u8], len: usize, out: &mut Vec<u8>, lz4: bool) -> Result<(), String> {
    if lz4 && frame.starts_with(&crate::lz4::MAGIC) {
        return crate::lz4::decompress_into(frame, len, out);
    }
    // The capacity bounds what a hostile frame can make us allocate.
    out.clear();
    out.reserve(len);
    match decompress_into(frame, out) {
        Ok(n) if n == len => Ok(()),
        Ok(n) => Err(format!("decompresses to {n} bytes, not {len}")),
        Err(e) => Err(format!("does not decompress: {e}")),
    }
}

/// `frame` decompressed into the spare capacity of `out` (no more: the
/// capacity bounds what a hostile frame can make us allocate).
pub(crate) fn decompress_into(frame: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let d = match cell.as_mut() {
            Some(d) => d,
            None => cell.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress_to_buffer(frame, out)
    })
}
