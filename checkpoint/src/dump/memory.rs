//! The memory of a process: which mappings it has, and which of their pages
//! the image must hold.
//!
//! Only pages that hold something a fresh mapping would not are stored:
//! present or swapped pages of anonymous mappings (private and shared), and
//! the private copies (COW) of private file mappings. Clean file pages are
//! referenced by the file; never-touched pages and the shared zero page are
//! left out, so restore leaves them unpopulated too. PAGEMAP_SCAN
//! (Documentation/admin-guide/mm/pagemap.rst) returns these pages as ranges,
//! one ioctl per mapping.

use stasis_image::records::{madvise, FileRef, Vma, VmaKind};
use stasis_image::{Chunker, ImageWriter, Prepared};
use stasis_sys::pagemap::{Categories, PageRegion, Pagemap, ScanRequest};
use stasis_sys::process_vm::RemoteAddr;
use stasis_sys::procmem::ProcMem;
use stasis_sys::Pid;

use super::precopy::{Copied, Pending};
use crate::proc::Mapping;

pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;
pub const MAP_SHARED: u32 = 0x01;
pub const MAP_PRIVATE: u32 = 0x02;
pub const MAP_GROWSDOWN: u32 = 0x0100;
/// Memory the kernel may drop (zero) under pressure (Linux 6.11; glibc
/// keeps getrandom's state there): a mapping type of its own.
pub const MAP_DROPPABLE: u32 = 0x08;

/// Which pages of a mapping go into the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    /// None: the kernel or a file provides them.
    None,
    /// Every present or swapped page (anonymous memory).
    All,
    /// Only pages that are no longer the file's (private file mappings).
    Anonymous,
}

/// A mapping as it will be recorded, and which of its pages to store.
#[derive(Clone, Debug)]
pub struct Planned {
    pub vma: Vma,
    pub pages: Pages,
}

/// Whether a mapping shows a shared memory object, stored once for every
/// process that maps it, and which kind.
pub fn shmem_object(m: &Mapping) -> Option<Object> {
    if let Some(rest) = m.name.strip_prefix("/memfd:") {
        return Some(Object::Memfd(rest.strip_suffix(" (deleted)").unwrap_or(rest).to_owned()));
    }
    if m.shared && m.name.starts_with("/SYSV") {
        return Some(Object::Sysv);
    }
    // Mapped privately too, through /proc/PID/map_files: a private copy
    // of a page is the mapping's, the rest are the object's.
    let anon = m.name == "/dev/zero (deleted)" || m.name.starts_with("[anon_shmem:");
    anon.then_some(Object::Anonymous)
}

/// The kinds of shared memory object a mapping can be of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// MAP_SHARED anonymous memory.
    Anonymous,
    /// A memfd, by name.
    Memfd(String),
    /// A System V shared memory segment (its id is the inode number).
    Sysv,
}

/// Decide how each mapping is recorded. `Err` names a mapping stasis
/// cannot restore, as a sentence for the pre-flight list.
pub fn plan(m: &Mapping) -> Result<Planned, String> {
    let prot = (u32::from(m.read) * PROT_READ) | (u32::from(m.write) * PROT_WRITE) | (u32::from(m.exec) * PROT_EXEC);
    let mut flags = if m.shared { MAP_SHARED } else { MAP_PRIVATE };
    if m.has_flag("gd") {
        flags |= MAP_GROWSDOWN;
    }
    let what = || format!("mapping {:#x}-{:#x} {}", m.start, m.end, m.name);
    let special = m.name.starts_with('[') && m.name.ends_with(']');
    if !special && (m.has_flag("io") || m.has_flag("pf")) {
        return Err(format!("{} maps device memory", what()));
    }
    // Missing pages of it are filled by whoever handles its faults: the
    // image would lack them.
    if m.has_flag("um") || m.has_flag("ui") {
        return Err(format!("{} is registered with a userfaultfd that fills its missing pages", what()));
    }
    let (kind, pages, file) = match m.name.as_str() {
        "[vdso]" => (VmaKind::Vdso, Pages::None, None),
        "[vvar]" => (VmaKind::Vvar, Pages::None, None),
        "[vvar_vclock]" => (VmaKind::VvarVclock, Pages::None, None),
        "[vsyscall]" => (VmaKind::Vsyscall, Pages::None, None),
        "[heap]" => (VmaKind::Heap, Pages::All, None),
        "[stack]" => (VmaKind::Stack, Pages::All, None),
        "" => (VmaKind::Anonymous, Pages::All, None),
        // Shared memory objects: their pages are stored with the object.
        _ if m.shared && shmem_object(m) == Some(Object::Anonymous) => (VmaKind::Anonymous, Pages::None, None),
        _ if shmem_object(m) == Some(Object::Anonymous) => (VmaKind::Shmem, Pages::Anonymous, None),
        _ if shmem_object(m) == Some(Object::Sysv) => (VmaKind::Shmem, Pages::None, None),
        name if name.starts_with("[anon:") || name.starts_with("[anon_shmem:") => {
            (VmaKind::Anonymous, Pages::All, None)
        }
        name if name.starts_with("/SYSV") => {
            return Err(format!("{} is System V shared memory mapped privately", what()))
        }
        name if name.starts_with("/memfd:") => {
            (VmaKind::Shmem, if m.shared { Pages::None } else { Pages::Anonymous }, None)
        }
        // Its pages (header and completed events) are stored; restore makes
        // a ring of the same size and puts them back.
        name if name.starts_with("/[aio]") => (VmaKind::AioRing, Pages::All, None),
        // A socket's memory: a packet socket's rings, mapped again from
        // the restored socket (which fd, and whether it is one, the dump
        // finds with the fds: [`super::packet_ring_problem`]).
        name if name.starts_with("socket:[") => (VmaKind::PacketRing, Pages::None, None),
        name if name.starts_with('/') => {
            // A deleted file's contents are stored with the image (by
            // the dumper, once per file) and it is made again at restore.
            let (path, deleted) = match m.deleted() {
                true => (name.strip_suffix(" (deleted)").unwrap_or(name), true),
                false => (name, false),
            };
            let file = FileRef { path: path.to_owned(), dev: m.dev, ino: m.inode, deleted, ..FileRef::default() };
            let pages = if m.shared { Pages::None } else { Pages::Anonymous };
            (VmaKind::File, pages, Some(file))
        }
        name => return Err(format!("{} is a kind of mapping stasis does not know ({name})", what())),
    };
    let advice = [
        ("dc", madvise::DONTFORK),
        ("wf", madvise::WIPEONFORK),
        ("hg", madvise::HUGEPAGE),
        ("nh", madvise::NOHUGEPAGE),
        ("dd", madvise::DONTDUMP),
        ("mg", madvise::MERGEABLE),
        ("lo", madvise::LOCKED),
        ("lf", madvise::LOCKONFAULT),
        ("sr", madvise::SEQUENTIAL),
        ("rr", madvise::RANDOM),
        ("ac", madvise::ACCOUNT),
        ("nr", madvise::NORESERVE),
    ]
    .iter()
    .filter(|(f, _)| m.has_flag(f))
    .fold(0, |acc, (_, bit)| acc | bit);
    // Droppable memory comes back droppable, and dropped: its contents are
    // what the kernel may take at any time (as CRIU does).
    let (flags, pages) = match kind == VmaKind::Anonymous && m.has_flag("dp") {
        true => (MAP_DROPPABLE | (flags & MAP_GROWSDOWN), Pages::None),
        false => (flags, pages),
    };
    Ok(Planned {
        vma: Vma {
            start: m.start,
            end: m.end,
            prot,
            flags,
            offset: m.offset,
            kind: kind as i32,
            file,
            madvise: advice,
            has_pages: pages != Pages::None,
            shmem: 0,
            guards: Vec::new(),
            from_parent: false,
            may_write: m.shared && m.has_flag("mw") && !m.write,
            ring_fd: 0,
        },
        pages,
    })
}

/// Counts for the dump's statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryStats {
    pub pages_scanned: u64,
    pub pages_written: u64,
}

/// Largest piece read and handed to the writer at once: bounds the agent's
/// memory use. Pieces are made of whole windows of the writer, so they cut
/// chunks where a single read would.
pub(crate) const PIECE: u64 = 8 << 20;
const PAGE: u64 = 4096;

/// Reports progress of a long phase: bytes done of bytes in all.
pub type Progress<'a> = &'a dyn Fn(u64, u64);

/// Store the pages `plans` call for into address space `mm` of `writer`,
/// but those of the `from_parent` runs ([`shared_with_parent`]). All
/// mappings are scanned first, so `progress` knows the total. Of runs
/// `copied` ahead while the process ran ([`super::precopy`]), only the
/// pages that changed since are read, into the [`Pending`] returned, which
/// [`super::precopy::assemble`] completes (the tree need not be stopped
/// for that).
pub fn store(
    pid: Pid,
    plans: &[Planned],
    from_parent: &[u64],
    mm: u32,
    writer: &mut ImageWriter,
    progress: Progress<'_>,
    copied: Option<&Copied>,
) -> Result<(MemoryStats, Option<Pending>), MemoryError> {
    let pagemap = Pagemap::open(pid).map_err(|e| MemoryError::Scan { pid, start: 0, what: crate::chain(&e) })?;
    let pages_scanned = plans.iter().map(|p| (p.vma.end - p.vma.start) / PAGE).sum();
    let mut stats = MemoryStats { pages_scanned, ..MemoryStats::default() };
    let Found { mut runs, written } = runs(pid, &pagemap, plans, from_parent, copied.is_some())?;
    let mut pending = None;
    if let Some(c) = copied {
        c.rearm(pid);
        let untouched = c.untouched(&written);
        let mut p = Pending { pid, mm, runs: Vec::new(), fresh: Vec::new(), raw: Vec::new() };
        let mut reads = Vec::new();
        let mut direct = Vec::new();
        for (start, end) in runs {
            if !c.tracks(start, end) {
                direct.push((start, end));
                continue;
            }
            for r in without(start..end, &untouched) {
                p.runs.push((r.start, r.end));
                reads.extend(c.to_read(r.start, r.end, &written).into_iter().map(|r| (r.start, r.end)));
            }
        }
        let flat: Vec<u64> = reads.iter().flat_map(|&(s, e)| [s, e]).collect();
        tracing::debug!("process {pid}: {} bytes written since the last copy ahead", size(&flat));
        if c.mirror.claim(c.new_to_mirror(&flat)) {
            // Into the mirror, raw: compressing waits for the tree to run.
            let (got, failed) = c.mirror.fill(pid, &pieces_of(&reads));
            if let Some(&start) = failed.first() {
                return Err(MemoryError::Read { pid, start, what: "it could not be read into the copy ahead".into() });
            }
            p.fresh = got;
        } else {
            // No memory left to hold it: read and stored whole here.
            direct.append(&mut p.runs);
            direct.sort_unstable();
        }
        stats.pages_written += p.runs.iter().map(|(s, e)| (e - s) / PAGE).sum::<u64>();
        runs = direct;
        pending = Some(p);
    }

    let mut pieces: Vec<(u64, u64)> = Vec::new();
    for (start, end) in runs {
        for (at, len) in writer.windows(start, end - start).collect::<Vec<_>>() {
            add_to_pieces(&mut pieces, at, at + len);
        }
    }
    let total: u64 = pieces.iter().map(|(s, e)| e - s).sum();
    // With a copy ahead, the tree may run again once everything is read:
    // what is not copied ahead is read as it is and compressed after, when
    // it is not much (else it is kept compressed, not in stasis's memory).
    if let Some(p) = pending.as_mut().filter(|_| total <= RAW_FOR_LATER) {
        read_pieces(pid, &pieces, None, |at, read| {
            p.raw.push((at, std::mem::take(&mut read?.buf)));
            Ok(())
        })?;
        p.raw.sort_unstable_by_key(|(at, _)| *at);
        stats.pages_written += total / PAGE;
        progress(total, total);
        return Ok((stats, pending.filter(|p| !p.runs.is_empty() || !p.raw.is_empty())));
    }
    let mut done = 0;
    let chunker = writer.chunker_for(pid.as_raw());
    read_pieces(pid, &pieces, Some(&chunker), |at, read| {
        let Piece { buf, prepared } = read?;
        writer.add_prepared(mm, at, buf, prepared.take().expect("asked for")).map_err(MemoryError::Write)?;
        stats.pages_written += buf.len() as u64 / PAGE;
        done += buf.len() as u64;
        progress(done, total);
        Ok(())
    })?;
    Ok((stats, pending.filter(|p| !p.runs.is_empty())))
}

/// What the kernel answers to each of `requests`, in order, asked on all
/// cores. It walks every page table entry of a range it is asked about,
/// ~14 ns each (3.6 ms for a GiB, in the freeze), so a request larger than
/// [`SCAN_PART`] is asked in parts, whose answers are joined again where a
/// region runs on from one part into the next. Requests for ranges that
/// follow one another, asked alike (the mappings of one library, a
/// thread's stack and its guard page), are asked as one, and the answer
/// cut again where they meet: each ioctl costs some microseconds of its
/// own, and a process has hundreds of mappings. An error names where the
/// failing ask starts.
pub(crate) fn scan_all(
    pagemap: &Pagemap,
    requests: &[ScanRequest],
) -> Result<Vec<Vec<PageRegion>>, (u64, stasis_sys::pagemap::Error)> {
    // (the requests asked together, the ask)
    let mut asks: Vec<(std::ops::Range<usize>, ScanRequest)> = Vec::new();
    for (i, req) in requests.iter().enumerate() {
        let alike =
            |a: &ScanRequest| ScanRequest { range: 0..0, ..a.clone() } == ScanRequest { range: 0..0, ..req.clone() };
        match asks.last_mut() {
            Some((members, ask)) if ask.range.end == req.range.start && alike(ask) => {
                ask.range.end = req.range.end;
                members.end = i + 1;
            }
            _ => asks.push((i..i + 1, req.clone())),
        }
    }
    // (ask, part of it)
    let mut jobs: Vec<(usize, ScanRequest)> = Vec::new();
    for (i, (_, req)) in asks.iter().enumerate() {
        let mut at = req.range.start;
        while at < req.range.end {
            let end = if req.range.end - at > SCAN_PART * 3 / 2 { at + SCAN_PART } else { req.range.end };
            jobs.push((i, ScanRequest { range: at..end, ..req.clone() }));
            at = end;
        }
    }
    let scan = |req: &ScanRequest| pagemap.scan(req).map_err(|e| (req.range.start, e));
    let threads = crate::cores().min(jobs.len().div_ceil(4));
    let found = crate::workers::map(jobs.len(), threads, || (), |_, j| scan(&jobs[j].1));
    let mut joined: Vec<Vec<PageRegion>> = vec![Vec::new(); asks.len()];
    for ((i, _), regions) in jobs.iter().zip(found) {
        let answer = &mut joined[*i];
        for r in regions? {
            match answer.last_mut() {
                Some(last) if last.end == r.start && last.categories == r.categories => last.end = r.end,
                _ => answer.push(r),
            }
        }
    }
    let mut answers: Vec<Vec<PageRegion>> = vec![Vec::new(); requests.len()];
    for ((members, _), regions) in asks.iter().zip(joined) {
        let mut next = 0;
        for k in members.clone() {
            let range = &requests[k].range;
            while next < regions.len() && regions[next].end <= range.start {
                next += 1;
            }
            // A region reaching into the next request is seen again there.
            for r in regions[next..].iter().take_while(|r| r.start < range.end) {
                let (start, end) = (r.start.max(range.start), r.end.min(range.end));
                answers[k].push(PageRegion { start, end, categories: r.categories });
            }
        }
    }
    Ok(answers)
}

/// What [`runs`] found.
pub(crate) struct Found {
    /// The runs (start, end) of pages to store, in address order; a run
    /// ends where its mapping does.
    pub runs: Vec<(u64, u64)>,
    /// Of their pages, those written since they were last write-protected
    /// (through a live snapshot's userfaultfd; a mapping not registered
    /// counts as written whole), as `[start, end)` pairs in address order,
    /// when asked for.
    pub written: Vec<u64>,
}

/// The runs of pages `plans` call for that `pagemap` shows, but those of
/// the `from_parent` runs, and with `written`, which of them were written
/// since they were last write-protected: one walk of the page tables for
/// both, in the freeze of a live snapshot.
pub(crate) fn runs(
    pid: Pid,
    pagemap: &Pagemap,
    plans: &[Planned],
    from_parent: &[u64],
    written: bool,
) -> Result<Found, MemoryError> {
    // The plans asked about, and what of them.
    let (asked, requests): (Vec<usize>, Vec<ScanRequest>) = plans
        .iter()
        .enumerate()
        .filter(|(_, plan)| plan.vma.kind != VmaKind::AioRing as i32)
        .filter_map(|(i, plan)| Some((i, scan_request(plan)?)))
        .map(|(i, mut req)| {
            if written {
                req.report = req.report | Categories::WRITTEN;
            }
            (i, req)
        })
        .unzip();
    let answers =
        scan_all(pagemap, &requests).map_err(|(start, e)| MemoryError::Scan { pid, start, what: crate::chain(&e) })?;
    let mut answers = asked.into_iter().zip(answers).peekable();
    let mut found = Found { runs: Vec::new(), written: Vec::new() };
    for (i, plan) in plans.iter().enumerate() {
        let v = &plan.vma;
        // An AIO ring, whole: its pages are the kernel's, mapped into the
        // process only once it touches them (libaio reads the ring in
        // io_getevents), but its header and events are there from the start.
        if v.kind == VmaKind::AioRing as i32 {
            found.runs.push((v.start, v.end));
            continue;
        }
        let Some((_, regions)) = answers.next_if(|(j, _)| *j == i) else { continue };
        // The runs of one mapping as one where they touch (a region ends
        // where the categories reported change).
        let first = found.runs.len();
        for region in regions {
            // Guard regions show as swapped (their markers are swap
            // entries), but have nothing to read; pages still the
            // parent's come with it.
            for r in without(region.start..region.end, &v.guards).into_iter().flat_map(|r| without(r, from_parent)) {
                if region.categories.contains(Categories::WRITTEN) {
                    match found.written.len() {
                        n if n >= 2 && found.written[n - 1] == r.start => found.written[n - 1] = r.end,
                        _ => found.written.extend([r.start, r.end]),
                    }
                }
                let joins = found.runs.len() > first;
                match found.runs.last_mut() {
                    Some(last) if joins && last.1 == r.start => last.1 = r.end,
                    _ => found.runs.push((r.start, r.end)),
                }
            }
        }
    }
    Ok(found)
}

/// The largest part of a range [`scan_all`] asks the kernel about at once.
const SCAN_PART: u64 = 64 << 20;

/// The most memory not copied ahead that a live snapshot reads frozen
/// without compressing it, to compress once the tree runs again (~1.5 MB
/// for a python: 5 ms of the freeze).
const RAW_FOR_LATER: u64 = 64 << 20;

/// What of `range` is inside the `[start, end)` pairs of `ranges` (in
/// address order).
pub(crate) fn within(range: std::ops::Range<u64>, ranges: &[u64]) -> Vec<std::ops::Range<u64>> {
    let outside: Vec<u64> = without(range.clone(), ranges).into_iter().flat_map(|r| [r.start, r.end]).collect();
    without(range, &outside)
}

/// The union of two sets of `[start, end)` pairs (in any order), as pairs
/// in address order, touching ones joined.
pub(crate) fn union(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut pairs: Vec<(u64, u64)> = a.chunks_exact(2).chain(b.chunks_exact(2)).map(|p| (p[0], p[1])).collect();
    pairs.sort_unstable();
    let mut out: Vec<u64> = Vec::with_capacity(pairs.len() * 2);
    for (s, e) in pairs {
        match out.len() {
            n if n >= 2 && out[n - 1] >= s => out[n - 1] = out[n - 1].max(e),
            _ => out.extend([s, e]),
        }
    }
    out
}

/// `a` without `b`, both sets of `[start, end)` pairs in address order.
pub(crate) fn subtract(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.chunks_exact(2).flat_map(|p| without(p[0]..p[1], b)).flat_map(|r| [r.start, r.end]).collect()
}

/// Add `[start, end)` to `pieces`: onto the last piece when it ends there
/// and the piece stays within one [`PIECE`]-aligned block.
pub(crate) fn add_to_pieces(pieces: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    match pieces.last_mut() {
        Some(last) if last.1 == start && last.0 / PIECE == (end - 1) / PIECE => last.1 = end,
        _ => pieces.push((start, end)),
    }
}

/// The bytes of a set of `[start, end)` pairs.
pub(crate) fn size(pairs: &[u64]) -> u64 {
    pairs.chunks_exact(2).map(|p| p[1] - p[0]).sum()
}

/// `runs` (in address order) cut into pieces to read, at multiples of
/// [`PIECE`].
pub(crate) fn pieces_of(runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut pieces = Vec::new();
    for &(start, end) in runs {
        let mut at = start;
        while at < end {
            let piece_end = ((at / PIECE + 1) * PIECE).min(end);
            add_to_pieces(&mut pieces, at, piece_end);
            at = piece_end;
        }
    }
    pieces
}

/// A piece of memory read, and with a chunker, hashed and compressed.
pub(crate) struct Piece {
    pub buf: Vec<u8>,
    pub prepared: Option<Prepared>,
}

/// Read `pieces` of `pid` on worker threads (each with its own
/// /proc/PID/mem), with `chunker` hash and compress each there too (so the
/// image's writer only writes), and hand each to `sink` as it arrives, in
/// no particular order. The channel's bound keeps at most a few pieces in
/// flight; an error from `sink` stops the reading. The pieces' buffers
/// are used again once the sink is done with them (a fresh one takes new
/// pages, which the kernel zeroes, and then we do).
pub(crate) fn read_pieces(
    pid: Pid,
    pieces: &[(u64, u64)],
    chunker: Option<&Chunker>,
    mut sink: impl FnMut(u64, Result<&mut Piece, MemoryError>) -> Result<(), MemoryError>,
) -> Result<(), MemoryError> {
    let pool: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
    let read = |files: &mut ReaderFiles, i: usize| {
        let (at, end) = pieces[i];
        let buf = pool.lock().expect("not poisoned").pop().unwrap_or_default();
        read_piece(pid, at, end, files, buf).and_then(|buf| {
            let prepared = chunker.map(|c| c.prepare(at, &buf)).transpose().map_err(MemoryError::Write)?;
            Ok(Piece { buf, prepared })
        })
    };
    let readers = crate::cores().clamp(1, 4);
    crate::workers::each(pieces.len(), readers, ReaderFiles::default, read, |i, read| match read {
        Ok(mut piece) => {
            sink(pieces[i].0, Ok(&mut piece))?;
            pool.lock().expect("not poisoned").push(piece.buf);
            Ok(())
        }
        Err(e) => sink(pieces[i].0, Err(e)),
    })
}

/// What PAGEMAP_SCAN is asked for the pages of `plan` to store; `None`
/// when none are.
fn scan_request(plan: &Planned) -> Option<ScanRequest> {
    let v = &plan.vma;
    match plan.pages {
        Pages::None => None,
        // Present or swapped, and not the shared zero page.
        Pages::All => Some(ScanRequest {
            range: v.start..v.end,
            flags: 0,
            required: Categories::PFNZERO,
            any_of: Categories::PRESENT | Categories::SWAPPED,
            inverted: Categories::PFNZERO,
            report: Categories::PRESENT,
        }),
        // Additionally not a page of the file.
        Pages::Anonymous => Some(ScanRequest {
            range: v.start..v.end,
            flags: 0,
            required: Categories::PFNZERO | Categories::FILE,
            any_of: Categories::PRESENT | Categories::SWAPPED,
            inverted: Categories::PFNZERO | Categories::FILE,
            report: Categories::PRESENT,
        }),
    }
}

/// The pages of `pid` it still shares copy-on-write with its parent
/// (`parent`, whose mappings are `parent_plans`): pages to store that are
/// the same physical page as the parent's at the same address, in a
/// private mapping the parent has the same (not DONTFORK or WIPEONFORK,
/// no guard regions, which a fork would not copy as they are). Returned as
/// start and end address of each run, in order; their mappings are marked
/// [`Vma::from_parent`]. Needs the page frame numbers of /proc/PID/pagemap
/// (CAP_SYS_ADMIN): without them nothing is found shared.
pub fn shared_with_parent(
    pid: Pid,
    plans: &mut [Planned],
    parent: Pid,
    parent_plans: &[Planned],
) -> Result<Vec<u64>, MemoryError> {
    let scan_err = |pid: Pid, start: u64| {
        move |e: stasis_sys::pagemap::Error| MemoryError::Scan { pid, start, what: crate::chain(&e) }
    };
    let mine = Pagemap::open(pid).map_err(scan_err(pid, 0))?;
    let theirs = Pagemap::open(parent).map_err(scan_err(parent, 0))?;
    let mut shared = Vec::new();
    for plan in plans.iter_mut() {
        let v = &plan.vma;
        let inheritable = v.flags & MAP_PRIVATE != 0
            && v.shmem == 0
            && v.guards.is_empty()
            && v.madvise & (madvise::DONTFORK | madvise::WIPEONFORK) == 0
            && matches!(
                VmaKind::try_from(v.kind),
                Ok(VmaKind::Anonymous | VmaKind::Heap | VmaKind::Stack | VmaKind::File)
            );
        // The parent's mapping at the same address (plans are in address
        // order), the same in every other way.
        let theirs_too = parent_plans
            .binary_search_by_key(&v.start, |p| p.vma.start)
            .is_ok_and(|i| Vma { has_pages: v.has_pages, ..parent_plans[i].vma.clone() } == *v);
        if !inheritable || !theirs_too {
            continue;
        }
        let Some(req) = scan_request(plan) else { continue };
        let regions = mine.scan(&req).map_err(scan_err(pid, v.start))?;
        let mut found = false;
        for r in regions {
            let (a, b) = (
                mine.entries(r.start..r.end).map_err(scan_err(pid, r.start))?,
                theirs.entries(r.start..r.end).map_err(scan_err(parent, r.start))?,
            );
            let mut at = r.start;
            for (x, y) in a.iter().zip(&b) {
                let same_page = x.pfn().is_some_and(|f| f != 0 && y.pfn() == Some(f));
                if same_page {
                    found = true;
                    match shared.last_mut() {
                        Some(end) if *end == at => *end = at + PAGE,
                        _ => shared.extend([at, at + PAGE]),
                    }
                }
                at += PAGE;
            }
        }
        plan.vma.from_parent = found;
    }
    Ok(shared)
}

/// What of `range` is outside the `[start, end)` pairs of `holes` (in
/// address order).
pub(crate) fn without(range: std::ops::Range<u64>, holes: &[u64]) -> Vec<std::ops::Range<u64>> {
    let mut out = Vec::new();
    let mut at = range.start;
    // The first hole that ends after the range starts (holes can be many:
    // every run a child shares with its parent).
    let (mut lo, mut hi) = (0, holes.len() / 2);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if holes[2 * mid + 1] <= range.start {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    for h in holes[2 * lo..].chunks_exact(2) {
        if h[0] >= range.end {
            break;
        }
        let (start, end) = (h[0].max(at), h[1].min(range.end));
        if start >= end {
            continue;
        }
        if at < start {
            out.push(at..start);
        }
        at = end;
    }
    if at < range.end {
        out.push(at..range.end);
    }
    out
}

/// Record the guard regions (MADV_GUARD_INSTALL, Linux 6.13) of each
/// mapping: they have no page and no mapping of their own, only a fault
/// for whoever touches them, and PAGEMAP_SCAN reports them (PAGE_IS_GUARD,
/// Linux 6.14). A kernel that does not know the category (EINVAL; ENOTTY
/// without PAGEMAP_SCAN) has none to report.
pub fn find_guards(pid: Pid, plans: &mut [Planned]) -> Result<(), MemoryError> {
    let pagemap = Pagemap::open(pid).map_err(|e| MemoryError::Scan { pid, start: 0, what: crate::chain(&e) })?;
    let requests: Vec<ScanRequest> = plans
        .iter()
        .map(|plan| ScanRequest {
            range: plan.vma.start..plan.vma.end,
            flags: 0,
            required: Categories::GUARD,
            any_of: Categories::NONE,
            inverted: Categories::NONE,
            report: Categories::GUARD,
        })
        .collect();
    match scan_all(&pagemap, &requests) {
        Ok(answers) => {
            for (plan, regions) in plans.iter_mut().zip(answers) {
                plan.vma.guards = regions.iter().flat_map(|r| [r.start, r.end]).collect();
            }
            Ok(())
        }
        Err((
            _,
            stasis_sys::pagemap::Error::Scan { errno: stasis_sys::Errno::EINVAL | stasis_sys::Errno::ENOTTY, .. },
        )) => Ok(()),
        Err((start, e)) => Err(MemoryError::Scan { pid, start, what: crate::chain(&e) }),
    }
}

/// Open files of a reader thread, opened at its first piece.
#[derive(Default)]
struct ReaderFiles {
    mem: Option<ProcMem>,
    pagemap: Option<Pagemap>,
}

/// `[at, at + len)` of `pid` (page-aligned) cut into runs of pages the
/// process maps alone or not (/proc/PID/pagemap bit 56), as (offset from
/// `at`, length, alone). Pages it maps alone may be read with
/// process_vm_readv, one copy; the others go through /proc/PID/mem, which
/// copies each page twice (into a page of the kernel, then out) but takes
/// no pin of it: a pin makes the kernel copy an anonymous page still
/// shared copy-on-write with a parent or child (so that it may be pinned
/// alone), and a dump would leave the tree with those copies.
/// /proc/PID/mem also reads what process_vm_readv refuses (PROT_NONE
/// pages: FOLL_FORCE), so it finishes any run that stops early.
pub(crate) fn runs_by_sharing(
    pagemap: &Pagemap,
    at: u64,
    len: usize,
) -> Result<Vec<(usize, usize, bool)>, stasis_sys::pagemap::Error> {
    let entries = pagemap.entries(at..at + len as u64)?;
    let page = stasis_sys::mman::page_size();
    let mut runs = Vec::new();
    let mut k = 0;
    while k < entries.len() {
        let alone = entries[k].exclusive();
        let n = entries[k..].iter().take_while(|e| e.exclusive() == alone).count();
        runs.push((k * page, (n * page).min(len - k * page), alone));
        k += n;
    }
    Ok(runs)
}

/// Read `[at, end)` of `pid` ([`runs_by_sharing`]).
fn read_piece(pid: Pid, at: u64, end: u64, files: &mut ReaderFiles, mut buf: Vec<u8>) -> Result<Vec<u8>, MemoryError> {
    // Zeros written only where the buffer grows.
    buf.resize((end - at) as usize, 0);
    let err = |what: String| MemoryError::Read { pid, start: at, what };
    let pagemap = match &mut files.pagemap {
        Some(p) => p,
        None => files.pagemap.insert(Pagemap::open(pid).map_err(|e| err(crate::chain(&e)))?),
    };
    for (from, len, alone) in runs_by_sharing(pagemap, at, buf.len()).map_err(|e| err(crate::chain(&e)))? {
        let addr = at + from as u64;
        let slice = &mut buf[from..from + len];
        // Fails (EFAULT) or stops short at a page it may not read.
        let done = if alone { stasis_sys::process_vm::read(pid, RemoteAddr(addr), slice).unwrap_or(0) } else { 0 };
        if done < len {
            let mem = match &mut files.mem {
                Some(m) => m,
                None => files.mem.insert(ProcMem::open(pid, false).map_err(|e| err(crate::chain(&e)))?),
            };
            mem.read_exact_at(RemoteAddr(addr + done as u64), &mut slice[done..]).map_err(|e| err(crate::chain(&e)))?;
        }
    }
    Ok(buf)
}

/// Store the data of a shared memory object of `size` bytes into address
/// space `mm` (offset = address), leaving its holes out (SEEK_DATA and
/// SEEK_HOLE: pages never written are not there). Unlike a process's page
/// tables, the object also holds pages no process has mapped in (written
/// by a process that is gone, or swapped out). Returns the bytes stored.
pub fn store_object(
    file: &std::fs::File,
    id: u64,
    size: u64,
    mm: u32,
    writer: &mut ImageWriter,
) -> Result<u64, MemoryError> {
    use stasis_sys::nix::unistd::{lseek, Whence};
    use std::os::unix::fs::FileExt;
    let err = |what: String| MemoryError::Object { id, what };
    let mut stored = 0;
    let mut at = 0;
    while at < size {
        let data = match lseek(file, at as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(stasis_sys::Errno::ENXIO) => break,
            Err(e) => return Err(err(format!("SEEK_DATA at {at}: {e}"))),
        };
        let hole = lseek(file, data as i64, Whence::SeekHole).map_err(|e| err(format!("SEEK_HOLE at {data}: {e}")))?;
        let (start, end) = (data / PAGE * PAGE, (hole as u64).min(size).next_multiple_of(PAGE));
        let mut piece = start;
        while piece < end {
            let piece_end = (piece + PIECE).min(end);
            // The last page may reach past the end of the object: zeros.
            let mut buf = vec![0; (piece_end - piece) as usize];
            let mut got = 0;
            while got < buf.len() {
                match file.read_at(&mut buf[got..], piece + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(err(format!("reading at {}: {e}", piece + got as u64))),
                }
            }
            writer.add_memory(mm, piece, &buf).map_err(MemoryError::Write)?;
            stored += buf.len() as u64;
            piece = piece_end;
        }
        at = end;
    }
    Ok(stored)
}

/// Store the pages of System V segment `shmid` that are not all zeros,
/// read through an attachment of the agent's (its file cannot be read).
pub fn store_sysv(shmid: i32, id: u64, mm: u32, writer: &mut ImageWriter) -> Result<u64, MemoryError> {
    let err = |what: String| MemoryError::Object { id, what };
    let seg = stasis_sys::sysv::Attached::new(shmid, false)
        .map_err(|e| err(format!("attaching System V segment {shmid}: {e}")))?;
    let data = seg.as_slice();
    let mut stored = 0;
    let mut at = 0;
    while at < data.len() {
        let end = (at + PIECE as usize).min(data.len());
        let piece = &data[at..end];
        if piece.iter().any(|&b| b != 0) {
            // Whole pages: the last one is padded with zeros.
            let mut buf = piece.to_vec();
            buf.resize(buf.len().next_multiple_of(PAGE as usize), 0);
            writer.add_memory(mm, at as u64, &buf).map_err(MemoryError::Write)?;
            stored += buf.len() as u64;
        }
        at = end;
    }
    Ok(stored)
}

/// Why memory could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot store shared memory object {id}: {what}")]
    Object { id: u64, what: String },
    #[error("cannot find the pages of process {pid} at {start:#x}: {what}")]
    Scan { pid: Pid, start: u64, what: String },
    #[error("cannot read memory of process {pid} at {start:#x}: {what}")]
    Read { pid: Pid, start: u64, what: String },
    #[error("cannot put together the memory of process {pid} copied ahead: {what}")]
    Mirror { pid: Pid, what: String },
    #[error(transparent)]
    Write(stasis_image::WriteError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::parse_smaps;

    /// Requests asked together where their ranges meet and they ask
    /// alike: each answer is what the request asked alone gets, regions
    /// cut where the requests meet; a request asked otherwise, or one
    /// past a gap, is asked on its own.
    #[test]
    fn requests_asked_together_answer_as_alone() {
        let mut map = stasis_sys::mman::AnonMapping::new(16).unwrap();
        for i in [0, 1, 2, 3, 4, 5, 9, 10, 15] {
            map.touch_page(i, 1);
        }
        let pagemap = Pagemap::open(stasis_sys::nix::unistd::getpid()).unwrap();
        let p = PAGE;
        let a = map.addr();
        let ask = |range: std::ops::Range<u64>, report| ScanRequest {
            range,
            flags: 0,
            required: Categories::PRESENT,
            any_of: Categories::NONE,
            inverted: Categories::NONE,
            report,
        };
        let requests = [
            ask(a..a + 3 * p, Categories::PRESENT),
            ask(a + 3 * p..a + 10 * p, Categories::PRESENT),
            ask(a + 10 * p..a + 12 * p, Categories::PRESENT | Categories::WRITTEN),
            ask(a + 12 * p..a + 13 * p, Categories::PRESENT),
            ask(a + 14 * p..a + 16 * p, Categories::PRESENT),
        ];
        let together = scan_all(&pagemap, &requests).unwrap();
        let alone: Vec<Vec<PageRegion>> = requests.iter().map(|r| pagemap.scan(r).unwrap()).collect();
        assert_eq!(together, alone);
        let present = |s: u64, e: u64| PageRegion { start: a + s * p, end: a + e * p, categories: Categories::PRESENT };
        assert_eq!(together[0], [present(0, 3)]);
        assert_eq!(together[1], [present(3, 6), present(9, 10)]);
    }

    #[test]
    fn ranges_without_holes() {
        assert_eq!(without(0..10, &[]), vec![0..10]);
        assert_eq!(without(0..10, &[2, 4, 6, 7]), vec![0..2, 4..6, 7..10]);
        assert_eq!(without(2..4, &[2, 4]), vec![]);
        assert_eq!(without(3..10, &[0, 4, 9, 12]), vec![4..9]);
        // Holes wholly before and after the range are passed over.
        assert_eq!(without(20..30, &[0, 2, 4, 6, 22, 24, 28, 40, 50, 60]), vec![20..22, 24..28]);
    }

    #[test]
    fn sets_of_ranges() {
        assert_eq!(within(0..10, &[2, 4, 6, 12]), vec![2..4, 6..10]);
        assert_eq!(within(5..6, &[2, 4]), vec![]);
        assert_eq!(union(&[6, 8, 0, 2], &[2, 3, 10, 12, 7, 9]), vec![0, 3, 6, 9, 10, 12]);
        assert_eq!(subtract(&[0, 10, 20, 30], &[2, 4, 25, 40]), vec![0, 2, 4, 10, 20, 25]);
    }

    #[test]
    fn plans_of_common_mappings() {
        let maps = parse_smaps(
            "00400000-00401000 r-xp 00000000 fe:00 12 /usr/bin/x\n\
             00600000-00601000 rw-s 00000000 fe:00 13 /data/shared\n\
             7f0000000000-7f0000001000 rw-s 00000000 00:01 99 /dev/zero (deleted)\n\
             7f0000100000-7f0000101000 rw-p 00000000 00:00 0 \n\
             VmFlags: rd wr mr mw me ac dc\n\
             7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n\
             VmFlags: rd wr mr mw me gd ac\n\
             7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0 [vdso]\n\
             7f0000200000-7f0000201000 rw-s 00000000 00:01 7 /SYSV00000000 (deleted)\n\
             7f0000300000-7f0000301000 r--p 00000000 00:01 8 /memfd:jit (deleted)\n\
             7f0000400000-7f0000401000 rw-p 00001000 00:01 99 /dev/zero (deleted)\n\
             7f0000500000-7f0000501000 rw-p 00000000 00:00 0 \n\
             VmFlags: rd wr mr mw me wf dp\n\
             7f0000600000-7f0000602000 rw-s 00000000 00:08 2256247 socket:[2256247]\n",
        )
        .unwrap();
        let plans: Vec<_> = maps.iter().map(plan).collect();
        let ok = |i: usize| plans[i].as_ref().unwrap();
        assert_eq!(ok(0).pages, Pages::Anonymous);
        assert_eq!(ok(0).vma.prot, PROT_READ | PROT_EXEC);
        assert_eq!(ok(1).pages, Pages::None);
        assert_eq!(ok(1).vma.flags, MAP_SHARED);
        // Shared anonymous memory: its pages go with the shared object.
        assert_eq!(
            (ok(2).pages, ok(2).vma.kind, ok(2).vma.flags),
            (Pages::None, VmaKind::Anonymous as i32, MAP_SHARED)
        );
        assert_eq!(shmem_object(&maps[2]), Some(Object::Anonymous));
        assert_eq!(shmem_object(&maps[3]), None);
        assert_eq!(ok(3).vma.madvise, madvise::DONTFORK | madvise::ACCOUNT);
        assert_eq!(ok(4).vma.flags, MAP_PRIVATE | MAP_GROWSDOWN);
        assert_eq!((ok(5).pages, ok(5).vma.kind), (Pages::None, VmaKind::Vdso as i32));
        assert_eq!((ok(6).pages, ok(6).vma.kind), (Pages::None, VmaKind::Shmem as i32));
        assert_eq!(shmem_object(&maps[6]), Some(Object::Sysv));
        // A private mapping of a memfd keeps its own copies of pages.
        assert_eq!((ok(7).pages, ok(7).vma.kind), (Pages::Anonymous, VmaKind::Shmem as i32));
        assert_eq!(shmem_object(&maps[7]), Some(Object::Memfd("jit".into())));
        // So does a private mapping of shared anonymous memory.
        assert_eq!((ok(8).pages, ok(8).vma.kind), (Pages::Anonymous, VmaKind::Shmem as i32));
        assert_eq!(shmem_object(&maps[8]), Some(Object::Anonymous));
        // Droppable memory: its own mapping type, its pages left out.
        assert_eq!((ok(9).pages, ok(9).vma.flags), (Pages::None, MAP_DROPPABLE));
        assert_eq!(ok(9).vma.madvise, madvise::WIPEONFORK);
        // A socket's rings: mapped again from the socket, no pages.
        assert_eq!((ok(10).pages, ok(10).vma.kind), (Pages::None, VmaKind::PacketRing as i32));
    }
}
