//! Writing an image.
//!
//! The pack (`chunks.pack`) is written first and synced; the manifest
//! (`stasis.img`) is written to a temporary name, synced, and renamed into
//! place last, then the directory is synced. Until that rename there is no
//! manifest, and without a manifest nothing takes the directory for an image:
//! a crash or a full disk part-way leaves at worst a stray pack, which the
//! writer's drop removes on the error paths it sees.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::chunk::{ChunkEntry, ChunkId, ChunkTable, FrameChecks};
use crate::error::WriteError;
use crate::format::{self, Header, SectionKind, FORMAT_VERSION, SECTION_REQUIRED};
use crate::reader::Image;
use crate::records::{fd, ImageInfo, MemoryIndex, MemoryRegion, ParentRef, ProcessTree};
use crate::{chunk_windows, MANIFEST_NAME, PACK_NAME, PAGE_SIZE};

/// How a chunk is stored in the pack.
enum Frame {
    /// Its frame (LZ4 or zstd, by [`WriteOptions::compression`]), shorter
    /// than its bytes.
    Packed(Vec<u8>),
    /// Its bytes as they are: memory that does not shrink (random or
    /// already compressed data), stored without a pass of compression over
    /// all of it.
    Raw,
}

/// A chunk's id, and how to store it unless it is already stored, with
/// the check of what goes into the pack for it ([`FrameChecks::of`], taken
/// where it was compressed: on a reader thread of a dump, not the
/// writer's).
type Hashed = (ChunkId, Option<(Frame, u64)>);

/// How chunks are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// LZ4 frames: about twice as fast as zstd level 1 to write and three
    /// times to read, for frames about twice as large. The default: a
    /// killed tree stays frozen until its image is written.
    Lz4,
    /// zstd frames at this level (1 favours speed; up to 19).
    Zstd { level: i32 },
}

/// Bytes of a chunk compression is tried on first, in four slices spread
/// over it: when they do not shrink by 3%, the chunk is stored raw.
const PROBE: usize = 4096;

/// Whether `data` looks like memory that does not shrink, from [`PROBE`]
/// bytes of it (chunks smaller than four probes are compressed whole).
fn incompressible(compress: &mut dyn FnMut(&[u8]) -> std::io::Result<Vec<u8>>, data: &[u8]) -> std::io::Result<bool> {
    if data.len() < 4 * PROBE {
        return Ok(false);
    }
    let slice = PROBE / 4;
    let mut probe = Vec::with_capacity(PROBE);
    for k in 0..4 {
        let at = k * (data.len() / 4);
        probe.extend_from_slice(&data[at..at + slice]);
    }
    let frame = compress(&probe)?;
    Ok(frame.len() * 100 >= probe.len() * 97)
}

thread_local! {
    /// A zstd context per thread, with its level: making one per chunk
    /// costs about as much as compressing memory that does not compress.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Hash and compress `slices` in order, as [`hash_and_compress_one`] does,
/// but without the sample that tells memory which does not shrink for a
/// chunk that follows one which shrank well: memory comes in runs of one
/// kind, and the sample is a sixteenth more compression work on every
/// chunk of a compressible run.
fn hash_and_compress_run<'a>(
    slices: impl Iterator<Item = (u64, &'a [u8])>,
    compression: Compression,
    known: &dyn Fn(&ChunkId) -> bool,
    delta: Option<&Delta<'_>>,
) -> Result<Vec<Hashed>, WriteError> {
    let mut shrank = false;
    slices
        .map(|(at, data)| {
            let hashed = hash_and_compress_one(data, compression, known, !shrank, delta.map(|d| (d, at)))?;
            if let (_, Some((frame, _))) = &hashed {
                shrank = matches!(frame, Frame::Packed(f) if f.len() * 10 <= data.len() * 9);
            }
            Ok(hashed)
        })
        .collect()
}

/// Chunks of the parent chain read lately by a writer, to be read again:
/// a live snapshot's windows are put together from the parent's chunks
/// ([`ImageWriter::read_chunks`]) which are then the bases of their delta
/// frames. Reading one decompresses it and checks it; this saves the
/// second time.
type Recent = Mutex<HashMap<ChunkId, Arc<Vec<u8>>>>;

/// The delta frame ([`crate::delta`]) of the window at an address, of the
/// bytes given, when one is shorter than the length given.
type Delta<'a> = dyn Fn(u64, &[u8], usize) -> Option<Vec<u8>> + Sync + 'a;

/// The delta frame of `data`, the window at `at`, on the chunk `parent`
/// stored for that window (`bases`), when it is shorter than `than`.
fn delta_on_parent(
    parent: Option<&Image>,
    bases: Option<&HashMap<u64, ChunkId>>,
    recent: Option<&Recent>,
    at: u64,
    data: &[u8],
    than: usize,
) -> Option<Vec<u8>> {
    let id = bases?.get(&at)?;
    let base = match recent.and_then(|r| r.lock().expect("not poisoned").get(id).cloned()) {
        Some(base) => base,
        None => Arc::new(parent?.read_chunk(id).ok()?),
    };
    crate::delta::encode(data, id, &base, than)
}

/// Hash `data` and, unless `known`, compress it (or not: [`Frame::Raw`]),
/// first a sample of it when `probe` ([`incompressible`]); stored as its
/// `delta` frame (of the window at the address given), when shorter.
fn hash_and_compress_one(
    data: &[u8],
    compression: Compression,
    known: &dyn Fn(&ChunkId) -> bool,
    probe: bool,
    delta: Option<(&Delta<'_>, u64)>,
) -> Result<Hashed, WriteError> {
    let id = ChunkId::of(data);
    if known(&id) {
        return Ok((id, None));
    }
    let err = |source| WriteError::Compress { id, source };
    // A window changed in part since the parent: its delta frame first.
    // One of a quarter of the window or less is kept without compressing
    // the whole (which would be that short only for memory that shrinks
    // four times over, where the changed pages shrink as well).
    let mut delta = delta.and_then(|(d, at)| d(at, data, data.len()));
    if let Some(frame) = delta.take_if(|f| f.len() * 4 <= data.len()) {
        let check = FrameChecks::of(&frame);
        return Ok((id, Some((Frame::Packed(frame), check))));
    }
    // A frame is always shorter than its chunk: a stored length equal to
    // the raw one means raw.
    let frame = |frame: Vec<u8>| if frame.len() < data.len() { Frame::Packed(frame) } else { Frame::Raw };
    let stored = match compression {
        Compression::Lz4 => match probe && incompressible(&mut |d| Ok(crate::lz4::compress(d)), data).map_err(err)? {
            true => Frame::Raw,
            false => frame(crate::lz4::compress(data)),
        },
        Compression::Zstd { level } => COMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.as_ref().is_none_or(|(l, _)| *l != level) {
                *cell = Some((level, zstd::bulk::Compressor::new(level).map_err(err)?));
            }
            let (_, zstd) = cell.as_mut().expect("made above");
            match probe && incompressible(&mut |d| zstd.compress(d), data).map_err(err)? {
                true => Ok(Frame::Raw),
                false => Ok(frame(zstd.compress(data).map_err(err)?)),
            }
        })?,
    };
    let than = match &stored {
        Frame::Packed(f) => f.len(),
        Frame::Raw => data.len(),
    };
    let stored = match delta {
        Some(frame) if frame.len() < than => Frame::Packed(frame),
        _ => stored,
    };
    let check = FrameChecks::of(match &stored {
        Frame::Packed(f) => f,
        Frame::Raw => data,
    });
    Ok((id, Some((stored, check))))
}

/// Hashes and compresses memory on any thread, as the writer it came from
/// ([`ImageWriter::chunker`]) would, for it to store after
/// ([`ImageWriter::add_prepared`]): a dump's reader threads do this work
/// while the writer writes.
#[derive(Clone, Debug)]
pub struct Chunker {
    compression: Compression,
    chunk_size: u32,
    parent: Option<Arc<Image>>,
    /// The parent's chunk of each of its windows in the address space the
    /// memory is of ([`ImageWriter::chunker_for`]): the base a changed
    /// window is stored as a delta of.
    bases: Option<Arc<HashMap<u64, ChunkId>>>,
}

/// The parent image's chunks by address space and window start, and its
/// processes' address spaces by pid: where a changed window finds the
/// base of its delta frame.
#[derive(Debug, Default)]
struct Bases {
    by_mm: HashMap<u32, Arc<HashMap<u64, ChunkId>>>,
    mm_of: HashMap<i32, u32>,
}

impl Bases {
    /// Those of `image`. Its numbers stand for what they stood for then
    /// (a process's pid; an address space's number, which a dump of the
    /// same tree gives alike): a base of other memory only makes a delta
    /// frame too long to be used.
    fn of(image: &Image) -> Bases {
        let mut by_mm: HashMap<u32, HashMap<u64, ChunkId>> = HashMap::new();
        for r in image.memory() {
            by_mm.entry(r.mm).or_default().extend(image.region_chunks(r).map(|(at, _, id)| (at, id)));
        }
        let by_mm = by_mm.into_iter().map(|(mm, w)| (mm, Arc::new(w))).collect();
        let mm_of = image.processes().map(|t| t.processes.iter().map(|p| (p.pid, p.mm)).collect()).unwrap_or_default();
        Bases { by_mm, mm_of }
    }
}

/// Memory cut into windows, each hashed and compressed by a [`Chunker`]
/// (not compressed when the parent chain holds it).
pub struct Prepared {
    start: u64,
    len: u64,
    chunk_size: u32,
    hashed: Vec<Hashed>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("start", &self.start).field("len", &self.len).finish_non_exhaustive()
    }
}

impl Chunker {
    /// The windows of `data` at `start` hashed and compressed.
    pub fn prepare(&self, start: u64, data: &[u8]) -> Result<Prepared, WriteError> {
        let known = |id: &ChunkId| self.parent.as_ref().is_some_and(|p| p.find_chunk(id).is_some());
        let windows = chunk_windows(start, data.len() as u64, self.chunk_size)
            .map(|(s, l)| (s, &data[(s - start) as usize..(s - start + l) as usize]));
        let delta = |at, data: &[u8], than| {
            delta_on_parent(self.parent.as_deref(), self.bases.as_deref(), None, at, data, than)
        };
        let delta = self.bases.as_ref().map(|_| &delta as &Delta<'_>);
        let hashed = hash_and_compress_run(windows, self.compression, &known, delta)?;
        Ok(Prepared { start, len: data.len() as u64, chunk_size: self.chunk_size, hashed })
    }
}

/// How to write an image.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Chunk size in bytes: a multiple of 4096, from 4 KiB to 4 MiB.
    pub chunk_size: u32,
    /// How chunks are compressed.
    pub compression: Compression,
    /// Reference chunks this image already holds instead of storing them.
    pub parent: Option<PathBuf>,
    /// Worker threads for hashing and compression; 0 means one per CPU.
    pub threads: usize,
    /// Have the pack written to disk while it grows (fdatasync from a
    /// thread of its own every [`FLUSH_EVERY`] bytes, which then reads back
    /// and checks the frames it synced), so that `finish`'s sync, and
    /// [`Image::verify_written`] after it, have little left to do. Worth
    /// it when the pack is kept as it is written; a pack whose chunks are
    /// mostly replaced later (a live snapshot's first copy) is better left
    /// in the page cache.
    pub flush_early: bool,
}

/// Bytes appended to the pack between early flushes.
pub const FLUSH_EVERY: u64 = 64 << 20;

/// Bytes appended to the pack between the starts of their writeback
/// (`flush_early`): the device then writes while the dump copies, not
/// only at each flush. 1 GiB random kill-mode `--no-pre-copy` dump, 2 CPUs
/// (4 runs each, alternating): 849-918 ms -> 690-747 ms, the wait for the
/// last flushes after the copy 153-285 -> 47-77 ms; 2 and 32 MiB measured
/// alike.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// The largest write to the pack, and its buffer's size: the kernel
/// caches a write in page-cache folios as large as the write (up to 2
/// MiB), and in a VM whose free memory goes back to the host (free page
/// reporting) a fresh large folio copied several times slower than small
/// ones, so slowly that it made most of a dump's time: 1 GiB live
/// snapshot, assemble phase 5.4-9.1 s with 1 MiB writes, 1.2-2.1 s
/// (mostly) with 64 KiB ones; kill-mode dump memory phase 2.5-3.1 s ->
/// 1.1-1.3 s (perf: copy_folio_from_iter_atomic 35% -> 3% of the time).
/// 64-256 KiB measured alike; a chunk's size by default. O_DIRECT appends
/// (staged in aligned 1 MiB buffers that a thread of their own wrote)
/// measured slower on the same host: a kill-mode `--no-pre-copy` dump of
/// 1 GiB random took 1.7-2.7 s with them, 0.9-1.9 s with these writes
/// (5 runs each, alternating, 2026-12-08), its system time no lower.
const WRITE_MAX: usize = 64 << 10;

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            chunk_size: 64 * 1024,
            compression: Compression::Lz4,
            parent: None,
            threads: 0,
            flush_early: false,
        }
    }
}

/// A frame appended to the pack: its chunk, offset, length and check.
#[derive(Clone, Copy, Debug)]
struct Appended {
    id: ChunkId,
    offset: u64,
    len: u32,
    check: u64,
}

/// The thread that syncs the pack while it is written, and then reads back
/// the frames that sync wrote and checks them (what
/// [`Image::verify_written`] would do after `finish`, done while the
/// writing goes on: a dump waits only for the last frames' check).
#[derive(Debug)]
struct Flusher {
    wake: std::sync::mpsc::Sender<Vec<Appended>>,
    done: std::thread::JoinHandle<std::io::Result<Vec<Appended>>>,
    /// Bytes appended since it was last woken.
    pending: u64,
    /// Where the bytes whose writeback is not started yet begin.
    unstarted: u64,
    /// Frames appended since it was last woken.
    appended: Vec<Appended>,
}

impl Flusher {
    fn start(file: &File) -> std::io::Result<Flusher> {
        let file = file.try_clone()?;
        let (wake, woken) = std::sync::mpsc::channel::<Vec<Appended>>();
        let done = std::thread::spawn(move || {
            let mut read_back = Vec::new();
            while let Ok(mut frames) = woken.recv() {
                // One sync for every wake-up that came meanwhile.
                while let Ok(more) = woken.try_recv() {
                    frames.extend(more);
                }
                file.sync_data()?;
                let spans: Vec<(u64, u32)> = frames.iter().map(|a| (a.offset, a.len)).collect();
                crate::chunk::read_frames_back(
                    &file,
                    &spans,
                    |e| e,
                    |k, frame| match FrameChecks::of(frame) == frames[k].check {
                        true => Ok(()),
                        false => Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("chunk {} reads back other than it was written", frames[k].id),
                        )),
                    },
                )?;
                read_back.extend(frames);
            }
            Ok(read_back)
        });
        Ok(Flusher { wake, done, pending: 0, unstarted: 0, appended: Vec::new() })
    }

    /// `bytes` more were appended to `pack`, which now ends at `end` (its
    /// buffer is written out before the writeback starts and before the
    /// flusher is woken: it reads the file).
    fn wrote(&mut self, pack: &mut BufWriter<File>, bytes: u64, end: u64) -> std::io::Result<()> {
        self.pending += bytes;
        if end - self.unstarted >= WRITEBACK_EVERY {
            pack.flush()?;
            stasis_sys::writeback::start(pack.get_ref().as_fd(), self.unstarted, end - self.unstarted)?;
            self.unstarted = end;
        }
        if self.pending >= FLUSH_EVERY {
            self.pending = 0;
            pack.flush()?;
            // A flusher that stopped on an error reports it at `stop`.
            let _ = self.wake.send(std::mem::take(&mut self.appended));
        }
        Ok(())
    }

    /// Wait for the flusher; the frames it read back and found as written.
    fn stop(self) -> std::io::Result<Vec<Appended>> {
        drop(self.wake);
        self.done.join().unwrap_or_else(|_| Err(std::io::Error::other("the pack's flusher panicked")))
    }
}

/// What writing stored, for the caller's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// Bytes of memory described by the image.
    pub logical_bytes: u64,
    /// Bytes of the frames of `chunks.pack` (compressed frames of new
    /// chunks; the file may be longer, with holes where chunks copied
    /// ahead and replaced were punched out).
    pub stored_bytes: u64,
    /// Chunks stored in this image.
    pub chunks_stored: u64,
    /// Chunk references satisfied by a chunk stored earlier in this image.
    pub chunks_deduplicated: u64,
    /// Chunk references satisfied by the parent chain.
    pub chunks_from_parent: u64,
    /// Bytes of the manifest.
    pub manifest_bytes: u64,
}

/// The result of a finished write.
#[derive(Clone, Debug)]
pub struct WriteSummary {
    pub dir: PathBuf,
    pub manifest_hash: [u8; 32],
    pub stats: WriteStats,
    /// A checksum of every frame as it was written, for
    /// [`Image::verify_written`].
    pub checks: FrameChecks,
}

/// An image being written. Dropping it before [`ImageWriter::finish`]
/// removes what it wrote.
#[derive(Debug)]
pub struct ImageWriter {
    dir: PathBuf,
    opts: WriteOptions,
    pack_path: PathBuf,
    pack: Option<BufWriter<File>>,
    pack_len: u64,
    table: HashMap<ChunkId, ChunkEntry>,
    parent: Option<(Arc<Image>, ParentRef)>,
    regions: Vec<MemoryRegion>,
    /// End of each region per address space, to refuse overlaps.
    spans: BTreeMap<(u32, u64), u64>,
    processes: Option<ProcessTree>,
    stats: WriteStats,
    flusher: Option<Flusher>,
    /// Whether a chunk was stored raw ([`format::INCOMPAT_RAW_CHUNKS`]).
    raw_chunks: bool,
    /// Whether a chunk was stored as an LZ4 frame
    /// ([`format::INCOMPAT_LZ4_CHUNKS`]).
    lz4_chunks: bool,
    /// Whether a chunk was stored as a delta frame
    /// ([`format::INCOMPAT_DELTA_CHUNKS`]).
    delta_chunks: bool,
    /// The parent's chunks by address space and window, for delta frames.
    bases: Bases,
    /// A checksum of each frame as it went into the pack.
    checks: FrameChecks,
    /// Threads hashing and compressing: asked once (finding the CPUs this
    /// process may use reads its cgroup's files).
    threads: usize,
    /// The parent chain's chunks read lately.
    recent: Recent,
}

impl ImageWriter {
    /// Start an image in `dir`, creating the directory if needed. Refuses a
    /// directory that already holds an image.
    pub fn create(dir: &Path, opts: WriteOptions) -> Result<Self, WriteError> {
        let cs = opts.chunk_size;
        if cs % PAGE_SIZE as u32 != 0 || !(4096..=4 << 20).contains(&cs) {
            return Err(WriteError::ChunkSize(cs));
        }
        fs::create_dir_all(dir).map_err(|source| WriteError::CreateDir { path: dir.to_owned(), source })?;
        if dir.join(MANIFEST_NAME).exists() {
            return Err(WriteError::AlreadyExists { path: dir.to_owned() });
        }
        let parent = match &opts.parent {
            None => None,
            Some(p) => {
                let image = Image::open(p).map_err(|e| WriteError::Parent { path: p.clone(), source: Box::new(e) })?;
                let path = relative_path(dir, p).map_err(|source| WriteError::Io { path: p.clone(), source })?;
                let pref = ParentRef {
                    path: path.to_string_lossy().into_owned(),
                    manifest_hash: image.manifest_hash().to_vec(),
                };
                Some((Arc::new(image), pref))
            }
        };
        let pack_path = dir.join(PACK_NAME);
        // Readable too: chunks stored ahead and never used are left out at
        // the end by copying the others out of it.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&pack_path)
            .map_err(|source| WriteError::Io { path: pack_path.clone(), source })?;
        let bases = parent.as_ref().map_or_else(Bases::default, |(p, _)| Bases::of(p));
        let flusher = match opts.flush_early {
            true => Some(Flusher::start(&file).map_err(|source| WriteError::Io { path: pack_path.clone(), source })?),
            false => None,
        };
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(ImageWriter {
            flusher,
            dir: dir.to_owned(),
            opts,
            pack_path,
            pack: Some(BufWriter::with_capacity(WRITE_MAX, file)),
            pack_len: 0,
            table: HashMap::new(),
            parent,
            regions: Vec::new(),
            spans: BTreeMap::new(),
            processes: None,
            stats: WriteStats::default(),
            raw_chunks: false,
            lz4_chunks: false,
            delta_chunks: false,
            bases,
            checks: FrameChecks::default(),
            threads,
            recent: Mutex::default(),
        })
    }

    /// Record `data` as the contents of `[start, start + data.len())` in
    /// address space `mm`. Both ends must be page-aligned, and the range must
    /// not overlap one added before for the same address space.
    pub fn add_memory(&mut self, mm: u32, start: u64, data: &[u8]) -> Result<(), WriteError> {
        self.add_memory_runs(mm, &[(start, data)])
    }

    /// [`ImageWriter::add_memory`] of several runs of memory at once (in
    /// address order, apart from one another), one region each: the
    /// windows of all are hashed and compressed together, on all cores,
    /// however short each run.
    pub fn add_memory_runs(&mut self, mm: u32, runs: &[(u64, &[u8])]) -> Result<(), WriteError> {
        for &(start, data) in runs {
            let len = data.len() as u64;
            if start % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 || start.checked_add(len).is_none() {
                return Err(WriteError::Unaligned { start, len });
            }
            self.check_free(mm, start, len)?;
        }
        // Each window, and the run it is of.
        let mut windows: Vec<(usize, u64, &[u8])> = Vec::new();
        for (i, &(start, data)) in runs.iter().enumerate() {
            for (s, l) in chunk_windows(start, data.len() as u64, self.opts.chunk_size) {
                windows.push((i, s, &data[(s - start) as usize..(s - start + l) as usize]));
            }
        }
        let mut ids: Vec<Vec<u8>> = runs.iter().map(|(_, d)| Vec::with_capacity(d.len() / 4096 * 32)).collect();
        let threads = self.threads();
        // Batches bound the compressed bytes held in memory at once.
        for batch in windows.chunks(threads * 16) {
            let slices: Vec<(u64, &[u8])> = batch.iter().map(|&(_, s, d)| (s, d)).collect();
            let done = self.hash_and_compress(&slices, threads, Some(mm))?;
            for ((id, frame), &(run, _, slice)) in done.into_iter().zip(batch) {
                self.stats.logical_bytes += slice.len() as u64;
                ids[run].extend_from_slice(&id.0);
                self.store(id, frame, slice)?;
            }
        }
        for (&(start, data), chunk_ids) in runs.iter().zip(ids) {
            let len = data.len() as u64;
            self.spans.insert((mm, start), start + len);
            self.regions.push(MemoryRegion { mm, start, len, chunk_ids });
        }
        Ok(())
    }

    /// Fails unless `[start, start + len)` of `mm` overlaps no region yet.
    fn check_free(&self, mm: u32, start: u64, len: u64) -> Result<(), WriteError> {
        let before = self.spans.range(..=(mm, start)).next_back();
        let after = self.spans.range((mm, start)..).next();
        let overlaps_before = before.is_some_and(|(&(m, _), &end)| m == mm && end > start);
        let overlaps_after = after.is_some_and(|(&(m, s), _)| m == mm && s < start + len);
        match overlaps_before || overlaps_after {
            true => Err(WriteError::Overlap { mm, start }),
            false => Ok(()),
        }
    }

    /// The address windows memory at `[start, start + len)` is cut into,
    /// one chunk each (at multiples of the chunk size).
    pub fn windows(&self, start: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
        chunk_windows(start, len, self.opts.chunk_size)
    }

    /// Store `data`, the contents of one window ([`ImageWriter::windows`]),
    /// as a chunk no region refers to yet, and return its id: memory
    /// copied ahead (a live snapshot's pre-copy), which
    /// [`ImageWriter::add_stored_memory`] puts in a region once it is
    /// known still to be what the process has.
    pub fn store_chunk(&mut self, data: &[u8]) -> Result<ChunkId, WriteError> {
        Ok(self.store_chunks(&[data])?.pop().expect("one window, one chunk"))
    }

    /// [`ImageWriter::store_chunk`] of several windows at once, hashed and
    /// compressed on all cores; the ids in the order of `windows`.
    pub fn store_chunks(&mut self, windows: &[&[u8]]) -> Result<Vec<ChunkId>, WriteError> {
        let slices: Vec<(u64, &[u8])> = windows.iter().map(|w| (0, *w)).collect();
        let done = self.hash_and_compress(&slices, self.threads(), None)?;
        let mut ids = Vec::with_capacity(done.len());
        for ((id, frame), data) in done.into_iter().zip(windows) {
            self.store(id, frame, data)?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// Start writing the frames of chunks `ids` of this image to disk
    /// (sync_file_range `SYNC_FILE_RANGE_WRITE`), without waiting: what
    /// `finish` then syncs is less. Chunks stored ahead that a later copy
    /// replaces are punched out at the end: started early, they cost the
    /// disk twice (a live snapshot asks only for those it expects to keep).
    pub fn start_writeback(&mut self, ids: &[ChunkId]) -> Result<(), WriteError> {
        let mut spans: Vec<(u64, u64)> = ids
            .iter()
            .filter_map(|id| self.table.get(id))
            .map(|e| (e.offset, e.offset + u64::from(e.stored_len)))
            .collect();
        spans.sort_unstable();
        let io = |source| WriteError::Io { path: self.pack_path.clone(), source };
        let pack = self.pack.as_mut().expect("pack is open until finish");
        pack.flush().map_err(io)?;
        let mut k = 0;
        while k < spans.len() {
            let (start, mut end) = spans[k];
            k += 1;
            while k < spans.len() && spans[k].0 <= end {
                end = end.max(spans[k].1);
                k += 1;
            }
            stasis_sys::writeback::start(pack.get_ref().as_fd(), start, end - start).map_err(|e| io(e.into()))?;
        }
        Ok(())
    }

    /// Whether this writer syncs its pack as it grows (`flush_early`), and
    /// starts the writeback of all it appends.
    pub fn flushes_early(&self) -> bool {
        self.flusher.is_some()
    }

    /// The parent image, for an incremental image.
    pub fn parent(&self) -> Option<&Image> {
        self.parent.as_ref().map(|(p, _)| &**p)
    }

    /// The chunk size windows are cut at.
    pub fn chunk_size(&self) -> u32 {
        self.opts.chunk_size
    }

    /// The contents of chunk `id`, stored before in this image or in its
    /// parent chain: memory copied ahead is put together again from them.
    pub fn read_chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>, WriteError> {
        use std::os::unix::fs::FileExt;
        let Some(e) = self.table.get(id).copied() else {
            let parent = self.parent.as_ref().ok_or(WriteError::ChunkMissing { id: *id })?;
            return parent
                .0
                .read_chunk(id)
                .map_err(|source| WriteError::Parent { path: parent.0.dir().to_owned(), source: Box::new(source) });
        };
        let io = |source| WriteError::Io { path: self.pack_path.clone(), source };
        let pack = self.pack.as_mut().expect("pack is open until finish");
        pack.flush().map_err(&io)?;
        let mut frame = vec![0; e.stored_len as usize];
        pack.get_ref().read_exact_at(&mut frame, e.offset).map_err(&io)?;
        // This writer stores a frame only when shorter than its chunk.
        if e.stored_len == e.raw_len {
            return Ok(frame);
        }
        let damaged = |what: String| io(std::io::Error::other(format!("chunk {id} {what}")));
        if frame.starts_with(&crate::delta::MAGIC) {
            let base = crate::delta::base_of(&frame).map_err(damaged)?;
            let parent = self.parent.as_ref().ok_or(WriteError::ChunkMissing { id: base })?;
            let mut data = parent
                .0
                .read_chunk(&base)
                .map_err(|source| WriteError::Parent { path: parent.0.dir().to_owned(), source: Box::new(source) })?;
            crate::delta::apply(&frame, e.raw_len as usize, &mut data).map_err(damaged)?;
            return Ok(data);
        }
        let mut data = Vec::new();
        crate::reader::unpack_into(&frame, e.raw_len as usize, &mut data, true).map_err(damaged)?;
        Ok(data)
    }

    fn threads(&self) -> usize {
        self.threads
    }

    /// [`ImageWriter::read_chunk`] of each of `ids`: those of the parent
    /// chain on all cores (checked by their frame checks), kept for the
    /// delta frames of windows of the same addresses, which read them
    /// again, instead of those read before. A live snapshot reads the
    /// chunks a group of windows needs ahead of putting them together.
    pub fn read_chunks(&mut self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, Arc<Vec<u8>>>, WriteError> {
        let mut theirs: Vec<ChunkId> = ids.iter().filter(|id| !self.table.contains_key(id)).copied().collect();
        theirs.sort_unstable_by_key(|id| id.0);
        theirs.dedup();
        let mut recent = HashMap::new();
        if let Some((parent, _)) = self.parent.as_ref().filter(|_| !theirs.is_empty()) {
            let per = theirs.len().div_ceil(self.threads());
            let read: Vec<(ChunkId, Vec<u8>)> = std::thread::scope(|scope| {
                let workers: Vec<_> = theirs
                    .chunks(per)
                    .map(|part| {
                        scope.spawn(move || {
                            // One that cannot be read is read again below,
                            // to say why.
                            let read = part.iter().filter_map(|id| Some((*id, parent.read_chunk_by_frame(id).ok()?)));
                            read.collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers.into_iter().flat_map(|w| w.join().expect("chunk reader panicked")).collect::<Vec<_>>()
            });
            recent.extend(read.into_iter().map(|(id, data)| (id, Arc::new(data))));
        }
        let mut out = HashMap::with_capacity(ids.len());
        for id in ids {
            if !out.contains_key(id) {
                let data = match recent.get(id) {
                    Some(data) => Arc::clone(data),
                    None => Arc::new(self.read_chunk(id)?),
                };
                out.insert(*id, data);
            }
        }
        *self.recent.lock().expect("not poisoned") = recent;
        Ok(out)
    }

    /// Record chunk `id`, stored before ([`ImageWriter::store_chunk`]), as
    /// the contents of `[start, start + len)` in address space `mm`: one
    /// whole window, which must not overlap a region added before.
    pub fn add_stored_memory(&mut self, mm: u32, start: u64, len: u64, id: ChunkId) -> Result<(), WriteError> {
        let one_window = self.windows(start, len).count() == 1 && start % PAGE_SIZE == 0 && len % PAGE_SIZE == 0;
        let stored = self.table.get(&id).is_some_and(|e| u64::from(e.raw_len) == len)
            || self
                .parent
                .as_ref()
                .is_some_and(|(p, _)| p.find_chunk(&id).is_some_and(|(_, e)| u64::from(e.raw_len) == len));
        if !one_window || !stored {
            return Err(WriteError::NotAWindow { start, len, id });
        }
        self.check_free(mm, start, len)?;
        self.stats.logical_bytes += len;
        self.spans.insert((mm, start), start + len);
        self.regions.push(MemoryRegion { mm, start, len, chunk_ids: id.0.to_vec() });
        Ok(())
    }

    /// Hash every slice and compress those not already stored here or in the
    /// parent chain. Runs on `threads` scoped threads for large batches.
    fn hash_and_compress(
        &self,
        slices: &[(u64, &[u8])],
        threads: usize,
        mm: Option<u32>,
    ) -> Result<Vec<Hashed>, WriteError> {
        let compression = self.opts.compression;
        let known = |id: &ChunkId| {
            self.table.contains_key(id) || self.parent.as_ref().is_some_and(|(p, _)| p.find_chunk(id).is_some())
        };
        let bases = mm.and_then(|mm| self.bases.by_mm.get(&mm)).map(|b| &**b);
        let parent = self.parent.as_ref().map(|(p, _)| &**p);
        let recent = Some(&self.recent);
        let delta = |at, data: &[u8], than| delta_on_parent(parent, bases, recent, at, data, than);
        let delta = bases.map(|_| &delta as &Delta<'_>);
        let work = |part: &[(u64, &[u8])]| -> Result<Vec<Hashed>, WriteError> {
            hash_and_compress_run(part.iter().copied(), compression, &known, delta)
        };
        if threads <= 1 || slices.len() < 4 {
            return work(slices);
        }
        let per = slices.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = slices.chunks(per).map(|part| scope.spawn(move || work(part))).collect();
            let mut out = Vec::with_capacity(slices.len());
            for h in handles {
                out.extend(h.join().expect("compression worker panicked")?);
            }
            Ok(out)
        })
    }

    /// A [`Chunker`] for this image: hashing and compressing on other
    /// threads, for [`ImageWriter::add_prepared`] and
    /// [`ImageWriter::store_prepared`].
    pub fn chunker(&self) -> Chunker {
        Chunker {
            compression: self.opts.compression,
            chunk_size: self.opts.chunk_size,
            parent: self.parent.as_ref().map(|(p, _)| p.clone()),
            bases: None,
        }
    }

    /// A [`Chunker`] of memory of process `pid`, which stores a window
    /// that changed since the parent image as the pages it changed from the
    /// parent's chunk of that window of the process of that pid (a delta
    /// frame, when shorter).
    pub fn chunker_for(&self, pid: i32) -> Chunker {
        let mm = self.bases.mm_of.get(&pid);
        Chunker { bases: mm.and_then(|mm| self.bases.by_mm.get(mm)).cloned(), ..self.chunker() }
    }

    /// [`ImageWriter::add_memory`] of `data`, hashed and compressed before
    /// by [`Chunker::prepare`] of the same bytes at `start`.
    pub fn add_prepared(&mut self, mm: u32, start: u64, data: &[u8], prepared: Prepared) -> Result<(), WriteError> {
        let len = data.len() as u64;
        if start % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 || start.checked_add(len).is_none() {
            return Err(WriteError::Unaligned { start, len });
        }
        self.check_free(mm, start, len)?;
        let ids = self.store_prepared(start, data, prepared)?;
        self.stats.logical_bytes += len;
        let mut chunk_ids = Vec::with_capacity(ids.len() * 32);
        for id in ids {
            chunk_ids.extend_from_slice(&id.0);
        }
        self.spans.insert((mm, start), start + len);
        self.regions.push(MemoryRegion { mm, start, len, chunk_ids });
        Ok(())
    }

    /// [`ImageWriter::store_chunks`] of the windows of `data` at `start`,
    /// hashed and compressed before by [`Chunker::prepare`]; their ids in
    /// address order.
    pub fn store_prepared(&mut self, start: u64, data: &[u8], prepared: Prepared) -> Result<Vec<ChunkId>, WriteError> {
        let windows: Vec<(u64, u64)> = self.windows(start, data.len() as u64).collect();
        if (prepared.start, prepared.len, prepared.chunk_size) != (start, data.len() as u64, self.opts.chunk_size)
            || prepared.hashed.len() != windows.len()
        {
            return Err(WriteError::Unaligned { start, len: data.len() as u64 });
        }
        let mut ids = Vec::with_capacity(windows.len());
        // What to append: raw frames next to each other in `data` as one
        // slice of it.
        let mut frames: Vec<&[u8]> = Vec::with_capacity(windows.len());
        let mut raw_run: Option<(usize, usize)> = None;
        for ((id, frame), (s, l)) in prepared.hashed.iter().zip(windows) {
            let (from, to) = ((s - start) as usize, (s - start + l) as usize);
            // One stored here since counts as a duplicate; none: the
            // parent chain's.
            let Some(bytes) = self.admit(*id, frame.as_ref(), &data[from..to]) else {
                ids.push(*id);
                continue;
            };
            ids.push(*id);
            match (frame, &mut raw_run) {
                (Some((Frame::Raw, _)), Some((_, end))) if *end == from => *end = to,
                (Some((Frame::Raw, _)), run) => {
                    frames.extend(run.replace((from, to)).map(|(a, b)| &data[a..b]));
                }
                (_, run) => {
                    frames.extend(run.take().map(|(a, b)| &data[a..b]));
                    frames.push(bytes);
                }
            }
        }
        frames.extend(raw_run.map(|(a, b)| &data[a..b]));
        self.write_frames(&frames)?;
        Ok(ids)
    }

    /// Store chunk `id` of bytes `data` as `frame` says.
    fn store(&mut self, id: ChunkId, frame: Option<(Frame, u64)>, data: &[u8]) -> Result<(), WriteError> {
        match self.admit(id, frame.as_ref(), data) {
            Some(bytes) => self.write_frames(&[bytes]),
            None => Ok(()),
        }
    }

    /// Enter chunk `id` of bytes `data` in the table at the pack's end and
    /// return the bytes to append there for it, or `None` when it is stored
    /// already (here, or with no `frame`, in the parent chain).
    fn admit<'a>(&mut self, id: ChunkId, frame: Option<&'a (Frame, u64)>, data: &'a [u8]) -> Option<&'a [u8]> {
        if self.table.contains_key(&id) {
            self.stats.chunks_deduplicated += 1;
            return None;
        }
        let Some((frame, check)) = frame else {
            self.stats.chunks_from_parent += 1;
            return None;
        };
        let frame = match frame {
            Frame::Packed(f) => {
                self.lz4_chunks |= f.starts_with(&crate::lz4::MAGIC);
                self.delta_chunks |= f.starts_with(&crate::delta::MAGIC);
                f.as_slice()
            }
            Frame::Raw => {
                self.raw_chunks = true;
                data
            }
        };
        let entry =
            ChunkEntry { id, offset: self.pack_len, stored_len: frame.len() as u32, raw_len: data.len() as u32 };
        self.pack_len += frame.len() as u64;
        self.stats.stored_bytes += frame.len() as u64;
        self.stats.chunks_stored += 1;
        self.table.insert(id, entry);
        self.checks.checks.insert(id, *check);
        if let Some(f) = self.flusher.as_mut() {
            f.appended.push(Appended { id, offset: entry.offset, len: entry.stored_len, check: *check });
        }
        Some(frame)
    }

    /// Append `frames`, admitted in this order, to the pack, straight
    /// from their buffers when they are large.
    fn write_frames(&mut self, frames: &[&[u8]]) -> Result<(), WriteError> {
        let io = |source| WriteError::Io { path: self.pack_path.clone(), source };
        let pack = self.pack.as_mut().expect("pack is open until finish");
        // Each in writes of at most WRITE_MAX, for small page-cache
        // folios (a writev of many parts is cached as one large write).
        for part in frames.iter().flat_map(|f| f.chunks(WRITE_MAX)) {
            pack.write_all(part).map_err(io)?;
        }
        if let Some(f) = self.flusher.as_mut() {
            f.wrote(pack, frames.iter().map(|f| f.len() as u64).sum(), self.pack_len).map_err(io)?;
        }
        Ok(())
    }

    /// What has been stored so far.
    pub fn stats(&self) -> &WriteStats {
        &self.stats
    }

    /// Record the process tree (replacing one set before).
    pub fn set_processes(&mut self, tree: ProcessTree) {
        self.processes = Some(tree);
    }

    /// Make the image durable and visible. Until this returns Ok, the
    /// directory holds no image.
    pub fn finish(mut self) -> Result<WriteSummary, WriteError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| WriteError::Io { path, source }
        };
        let pack = self.pack.take().expect("pack is open until finish");
        let mut file =
            pack.into_inner().map_err(|e| WriteError::Io { path: self.pack_path.clone(), source: e.into_error() })?;
        if let Some(f) = self.flusher.take() {
            let read_back = f.stop().map_err(io(&self.pack_path))?;
            self.checks.read_back = read_back.into_iter().map(|a| (a.id, (a.offset, a.len))).collect();
        }
        if let Some(compact) = self.without_unused_chunks(&mut file)? {
            // Its frames at other offsets: read back by no one yet.
            self.checks.read_back.clear();
            file = compact;
        }
        // The dump's figure, set before the unused chunks went.
        if let Some(stats) = self.processes.as_mut().and_then(|t| t.stats.as_mut()) {
            stats.bytes_stored = self.stats.stored_bytes;
        }
        file.sync_all().map_err(io(&self.pack_path))?;
        drop(file);

        let info = ImageInfo {
            image_id: rand::random::<[u8; 16]>().to_vec(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            chunk_size: self.opts.chunk_size,
            parent: self.parent.as_ref().map(|(_, r)| r.clone()),
            pack_len: self.pack_len,
            hostname: fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned(),
            kernel_release: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        };
        let table = ChunkTable::from_entries(self.table.values().copied().collect());
        let memory = MemoryIndex { regions: std::mem::take(&mut self.regions) };
        let is_tree = self.processes.as_ref().is_some_and(|t| {
            t.processes.len() > 1
                || !t.zombies.is_empty()
                || !t.shmem.is_empty()
                || t.processes.iter().flat_map(|p| &p.fds).any(|f| f.shared_with.is_some())
        });
        let has_sockets = self.processes.as_ref().is_some_and(|t| {
            !t.unix_sockets.is_empty()
                || t.processes.iter().flat_map(|p| &p.fds).any(|f| matches!(f.kind, Some(fd::Kind::Tcp(_))))
        });
        let in_pid_namespace = self.processes.as_ref().is_some_and(|t| t.pid_namespace);
        let has_ptys = self.processes.as_ref().is_some_and(|t| !t.ptys.is_empty());
        let incompat = if is_tree { format::INCOMPAT_TREE } else { 0 }
            | if has_sockets { format::INCOMPAT_SOCKETS } else { 0 }
            | if in_pid_namespace { format::INCOMPAT_PID_NAMESPACE } else { 0 }
            | if has_ptys { format::INCOMPAT_PTYS } else { 0 }
            | if self.raw_chunks { format::INCOMPAT_RAW_CHUNKS } else { 0 }
            | if self.lz4_chunks { format::INCOMPAT_LZ4_CHUNKS } else { 0 }
            | if self.delta_chunks { format::INCOMPAT_DELTA_CHUNKS } else { 0 };
        let header = Header { version: FORMAT_VERSION, incompat, compat: 0 };
        let mut sections = vec![
            (SectionKind::Info, SECTION_REQUIRED, info.encode_to_vec()),
            (SectionKind::Chunks, SECTION_REQUIRED, table.encode()),
            (SectionKind::Memory, SECTION_REQUIRED, memory.encode_to_vec()),
        ];
        if let Some(tree) = self.processes.take() {
            sections.push((SectionKind::Processes, SECTION_REQUIRED, tree.encode_to_vec()));
        }
        // Each frame's check, in the table's order (every chunk in the
        // table was admitted, and its check taken, here).
        let checks = table.entries().iter().flat_map(|e| self.checks.checks[&e.id].to_le_bytes()).collect();
        sections.push((SectionKind::FrameChecks, 0, checks));
        let bytes = format::encode(&header, &sections);

        let tmp = self.dir.join(format!(".{MANIFEST_NAME}.tmp"));
        let manifest = self.dir.join(MANIFEST_NAME);
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            fs::rename(&tmp, &manifest).map_err(io(&manifest))?;
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&manifest);
            return Err(e);
        }
        // The image is complete: the drop below must not remove the pack.
        self.pack_len = u64::MAX;
        self.stats.manifest_bytes = bytes.len() as u64;
        Ok(WriteSummary {
            dir: self.dir.clone(),
            manifest_hash: *blake3::hash(&bytes).as_bytes(),
            stats: self.stats.clone(),
            checks: std::mem::take(&mut self.checks),
        })
    }
}

impl ImageWriter {
    /// When chunks stored ahead ([`ImageWriter::store_chunks`]) ended up in
    /// no region (memory changed after it was copied), they leave the
    /// chunk table, and their bytes the pack: when they are fewer bytes
    /// than the chunks kept (a process that wrote little), their ranges of
    /// `pack` are punched out (FALLOC_FL_PUNCH_HOLE: no copy; the pack
    /// keeps its length, the space is freed, and a reader never looks
    /// between frames); otherwise a pack of only the chunks used is copied
    /// from `pack` (copy_file_range, no decompression) and put in its
    /// place. The chunk table and figures follow.
    fn without_unused_chunks(&mut self, pack: &mut File) -> Result<Option<File>, WriteError> {
        let used: std::collections::HashSet<&[u8]> =
            self.regions.iter().flat_map(|r| r.chunk_ids.chunks_exact(32)).collect();
        if self.table.keys().all(|id| used.contains(&id.0[..])) {
            return Ok(None);
        }
        let unused: Vec<ChunkEntry> = self.table.values().filter(|e| !used.contains(&e.id.0[..])).copied().collect();
        let unused_bytes: u64 = unused.iter().map(|e| u64::from(e.stored_len)).sum();
        if unused_bytes < self.stats.stored_bytes - unused_bytes {
            use nix::fcntl::{fallocate, FallocateFlags};
            let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            for e in &unused {
                // A file system that cannot punch keeps the bytes: nothing
                // reads them.
                if fallocate(&*pack, punch, e.offset as i64, i64::from(e.stored_len)).is_err() {
                    break;
                }
            }
            for e in &unused {
                self.table.remove(&e.id);
            }
            self.stats.stored_bytes -= unused_bytes;
            self.stats.chunks_stored -= unused.len() as u64;
            return Ok(None);
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| WriteError::Io { path, source }
        };
        let mut kept: Vec<ChunkEntry> = self.table.values().filter(|e| used.contains(&e.id.0[..])).copied().collect();
        kept.sort_by_key(|e| e.offset);
        let tmp = self.dir.join(format!(".{PACK_NAME}.tmp"));
        let result = (|| {
            use std::io::{Read, Seek, SeekFrom};
            let mut out = File::create(&tmp).map_err(io(&tmp))?;
            let mut at = 0;
            for e in &mut kept {
                pack.seek(SeekFrom::Start(e.offset)).map_err(io(&self.pack_path))?;
                let len = u64::from(e.stored_len);
                let copied = std::io::copy(&mut Read::by_ref(pack).take(len), &mut out).map_err(io(&tmp))?;
                if copied != len {
                    let short = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the pack is shorter");
                    return Err(WriteError::Io { path: self.pack_path.clone(), source: short });
                }
                e.offset = at;
                at += len;
            }
            fs::rename(&tmp, &self.pack_path).map_err(io(&self.pack_path))?;
            Ok((out, at))
        })();
        let (out, len) = result.inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        self.stats.stored_bytes = len;
        self.stats.chunks_stored = kept.len() as u64;
        self.pack_len = len;
        self.table = kept.into_iter().map(|e| (e.id, e)).collect();
        Ok(Some(out))
    }
}

/// Replace the dump figures of the finished image in `dir`: a dump that
/// kills its tree knows how long the tree was stopped only after the kill,
/// which waits for the image to be written and verified. The manifest is
/// written anew beside the old one and renamed over it, so a failure
/// leaves the image as it was; nothing else in it changes. Returns the new
/// manifest's hash.
pub fn set_dump_stats(dir: &Path, stats: crate::records::DumpStats) -> Result<[u8; 32], WriteError> {
    let manifest = dir.join(MANIFEST_NAME);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| WriteError::Io { path, source }
    };
    let bytes = fs::read(&manifest).map_err(io(&manifest))?;
    let bad = |what: String| WriteError::Io { path: manifest.clone(), source: std::io::Error::other(what) };
    let (header, entries) = format::decode(&manifest, &bytes).map_err(|e| bad(e.to_string()))?;
    let mut sections = Vec::with_capacity(entries.len());
    for e in &entries {
        let mut data = bytes[e.offset as usize..(e.offset + e.len) as usize].to_vec();
        if e.kind == SectionKind::Processes {
            let mut tree = ProcessTree::decode(data.as_slice()).map_err(|e| bad(format!("processes: {e}")))?;
            tree.stats = Some(stats.clone());
            data = tree.encode_to_vec();
        }
        sections.push((e.kind, e.flags, data));
    }
    let bytes = format::encode(&header, &sections);
    let tmp = dir.join(format!(".{MANIFEST_NAME}.tmp"));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &manifest).map_err(io(&manifest))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| *blake3::hash(&bytes).as_bytes())
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if self.pack_len != u64::MAX {
            drop(self.pack.take());
            let _ = fs::remove_file(&self.pack_path);
        }
    }
}

/// `target` as seen from `from`: relative when both resolve, so an image and
/// its parent can be moved together.
fn relative_path(from: &Path, target: &Path) -> std::io::Result<PathBuf> {
    let from = fs::canonicalize(from)?;
    let target = fs::canonicalize(target)?;
    let common = from.components().zip(target.components()).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in from.components().skip(common) {
        rel.push(Component::ParentDir);
    }
    for c in target.components().skip(common) {
        rel.push(c);
    }
    if rel.as_os_str().is_empty() {
        rel.push(Component::CurDir);
    }
    Ok(rel)
}
