//! Live snapshot: the tree's private memory is copied while it runs, so the
//! freeze only has to copy what was written since (pre-copy).
//!
//! Each process gets a userfaultfd of its own address space, made in it by
//! injection ([`Userfaultfd::in_process`]) with `UFFD_FEATURE_WP_ASYNC`:
//! its private mappings are registered and write-protected, the kernel
//! resolves each first write to a page by itself (the process never
//! waits), and PAGEMAP_SCAN reports those pages as `PAGE_IS_WRITTEN`. The
//! pages are then read (through /proc/PID/mem, which takes no pins) and
//! stored as chunks ahead of their regions ([`ImageWriter::store_chunks`]).
//!
//! Then rounds: the pages written since are found and protected again in
//! one PAGEMAP_SCAN (`PM_SCAN_WP_MATCHING`), read, and stored too, page by
//! page, while fewer are written each round. At the freeze,
//! [`super::memory::store`] reads only the pages written since the last
//! round (and any never copied); once the tree runs again (or before it is
//! killed) [`assemble`] puts each window together from the chunks copied
//! ahead and those pages. A window untouched since the first copy is
//! taken as it was stored. Whatever cannot be tracked (a process that
//! cannot be stopped for the injection, a mapping that refuses
//! registration, one mapped after) shows as written and is read in the
//! freeze; shared memory is always read then.
//!
//! Dropping a [`PreCopy`] unregisters everything; a killed agent's
//! descriptors close and do the same, so no process is left protected.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use stasis_image::{ChunkId, ImageWriter};
use stasis_sys::inject::find_syscall_site;
use stasis_sys::pagemap::{Categories, Pagemap, ScanRequest, PM_SCAN_WP_MATCHING};
use stasis_sys::pidfd::PidFd;
use stasis_sys::ptrace::Seized;
use stasis_sys::uffd::{self, Userfaultfd};
use stasis_sys::Pid;

use super::memory::{self, MemoryError, Pages, Planned};
use crate::proc;

/// How long a process may take to stop for the injection that makes its
/// userfaultfd; one that does not is copied in the freeze instead.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// Rounds of copying what was written, at most, after the first copy.
const MAX_ROUNDS: usize = 10;
/// No further round once less than this was written during the last one.
const SMALL_ENOUGH: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// Memory of one process copied while it ran, and the userfaultfd that
/// tells which of it was written since.
#[derive(Debug)]
pub struct Copied {
    uffd: Userfaultfd,
    registered: Vec<std::ops::Range<u64>>,
    /// Every chunk stored ahead; the maps below refer to them by index.
    chunks: Vec<ChunkId>,
    /// Windows (by start) stored in the first copy and untouched by the
    /// rounds: (length, chunk).
    exact: BTreeMap<u64, (u64, u32)>,
    /// Where the latest copy of each page is: (chunk, page within it).
    pages: HashMap<u64, (u32, u32)>,
    /// The pages copied, as `[start, end)` pairs in address order.
    covered: Vec<u64>,
    /// Pages written and protected again whose copy failed (unmapped
    /// meanwhile): the freeze reads them.
    lost: Vec<u64>,
}

impl Copied {
    /// What the freeze must read of the run `[start, end)`, whose pages are
    /// `written` (pairs in address order) since the last round: those, the
    /// pages never copied, and those whose copy was lost.
    pub fn to_read(&self, start: u64, end: u64, written: &[u64]) -> Vec<std::ops::Range<u64>> {
        let mut clean = Vec::new();
        for c in memory::within(start..end, &self.covered) {
            for w in memory::without(c, written) {
                clean.extend(memory::without(w, &self.lost).into_iter().flat_map(|r| [r.start, r.end]));
            }
        }
        memory::without(start..end, &clean)
    }

    /// The pages of the registered mappings written since they were last
    /// protected, as `[start, end)` pairs in address order (present pages
    /// of a mapping made there since, not registered, count as written).
    pub fn written(&self, pid: Pid) -> Result<Vec<u64>, MemoryError> {
        Ok(written_since(pid, self, false)?.into_iter().flat_map(|(s, e)| [s, e]).collect())
    }

    /// Whether `[start, end)` lies in a registered mapping.
    pub fn tracks(&self, start: u64, end: u64) -> bool {
        self.registered.iter().any(|r| r.start <= start && end <= r.end)
    }

    fn add_chunk(&mut self, start: u64, len: u64, id: ChunkId) -> u32 {
        let k = self.chunks.len() as u32;
        self.chunks.push(id);
        for (i, page) in (start..start + len).step_by(PAGE as usize).enumerate() {
            self.pages.insert(page, (k, i as u32));
        }
        k
    }
}

impl Drop for Copied {
    fn drop(&mut self) {
        // Unregistering takes the write protection off the pages too, so
        // the process does not fault once more on each (closing the
        // descriptor alone leaves the bits).
        for r in &self.registered {
            let _ = self.uffd.unregister(r.clone());
        }
    }
}

/// The memory of a tree copied ahead, by process (as stasis sees its pid).
#[derive(Debug, Default)]
pub struct PreCopy {
    by_pid: HashMap<Pid, Copied>,
    /// Bytes read while the tree ran.
    pub bytes_read: u64,
    /// Rounds of copying what was written, after the first copy.
    pub rounds: usize,
    /// Why processes or mappings could not be tracked, one line each.
    pub untracked: Vec<String>,
}

impl PreCopy {
    /// What was copied ahead of process `pid`.
    pub fn of(&self, pid: Pid) -> Option<&Copied> {
        self.by_pid.get(&pid)
    }

    /// Stop tracking writes: every process's mappings are unregistered
    /// (what was copied stays, for [`assemble`]).
    pub fn stop_tracking(&mut self) {
        for c in self.by_pid.values_mut() {
            for r in std::mem::take(&mut c.registered) {
                let _ = c.uffd.unregister(r);
            }
        }
    }
}

/// Why this kernel cannot track writes for a live snapshot, if it cannot.
pub fn unavailable() -> Option<String> {
    match uffd::supported_features() {
        Ok(f) if f & uffd::FEATURE_WP_ASYNC != 0 => None,
        Ok(_) => Some("this kernel lacks userfaultfd WP_ASYNC (Linux 6.7)".into()),
        Err(e) => Some(format!("no userfaultfd: {}", crate::chain(&e))),
    }
}

/// Track and copy the private memory of `pids` into `writer` while they
/// run, then copy what they wrote, in rounds while that shrinks. Only
/// failing to write the image is an error: a process that cannot be
/// tracked is noted and copied in the freeze.
pub fn run(pids: &[Pid], writer: &mut ImageWriter) -> Result<PreCopy, MemoryError> {
    let mut pre = PreCopy::default();
    for &pid in pids {
        let (uffd, plans) = match track(pid) {
            Ok(t) => t,
            Err(why) => {
                pre.untracked.push(format!("process {pid}: {why}"));
                continue;
            }
        };
        let mut copied = Copied {
            uffd,
            registered: Vec::new(),
            chunks: Vec::new(),
            exact: BTreeMap::new(),
            pages: HashMap::new(),
            covered: Vec::new(),
            lost: Vec::new(),
        };
        let mut tracked = Vec::new();
        for plan in plans {
            let range = plan.vma.start..plan.vma.end;
            let protect = match copied.uffd.register(range.clone(), uffd::REGISTER_MODE_WP) {
                Ok(_) => {
                    copied.registered.push(range.clone());
                    copied.uffd.write_protect(range, true)
                }
                Err(e) => Err(e),
            };
            match protect {
                Ok(()) => tracked.push(plan),
                Err(e) => pre.untracked.push(format!("process {pid}: {}", crate::chain(&e))),
            }
        }
        // A process that exits meanwhile is the freeze's to report.
        let runs = match Pagemap::open(pid) {
            Ok(pagemap) => memory::runs(pid, &pagemap, &tracked, &[]),
            Err(e) => Err(MemoryError::Scan { pid, start: 0, what: crate::chain(&e) }),
        };
        match runs {
            Ok(runs) => {
                pre.bytes_read += copy(pid, &runs, writer, &mut copied, true)?;
                pre.by_pid.insert(pid, copied);
            }
            Err(e) => pre.untracked.push(format!("process {pid}: {e}")),
        }
    }
    let mut last = pre.bytes_read;
    while pre.rounds < MAX_ROUNDS {
        let mut written = 0;
        let mut gone = Vec::new();
        for (&pid, c) in &pre.by_pid {
            match written_since(pid, c, false) {
                Ok(runs) => written += runs.iter().map(|(s, e)| e - s).sum::<u64>(),
                Err(e) => gone.push((pid, e)),
            }
        }
        for (pid, e) in gone {
            pre.by_pid.remove(&pid);
            pre.untracked.push(format!("process {pid}: {e}"));
        }
        // Done when little was written, or when copying does not outrun
        // the writing.
        if written < SMALL_ENOUGH || written > last / 4 * 3 {
            break;
        }
        pre.rounds += 1;
        last = 0;
        let mut failed = Vec::new();
        for (&pid, c) in pre.by_pid.iter_mut() {
            match written_since(pid, c, true) {
                Ok(runs) => last += copy(pid, &runs, writer, c, false)?,
                Err(e) => failed.push((pid, e)),
            }
        }
        // A scan that failed part way (the process exiting) may have
        // protected pages again without reporting them: nothing copied of
        // that process can be trusted, the freeze reads it whole.
        for (pid, e) in failed {
            pre.by_pid.remove(&pid);
            pre.untracked.push(format!("process {pid}: {e}"));
        }
        pre.bytes_read += last;
    }
    Ok(pre)
}

/// The mappings of `pid` whose pages a dump stores, and a userfaultfd of
/// its address space made by stopping it for a moment.
fn track(pid: Pid) -> Result<(Userfaultfd, Vec<Planned>), String> {
    // A process of a frozen cgroup cannot stop for ptrace (nor be let go).
    if let Some(cg) = crate::freeze::frozen_cgroup_of(pid) {
        return Err(format!("it is in frozen cgroup {}", cg.display()));
    }
    let maps = proc::parse_smaps(&proc::read(pid, "maps").map_err(|e| format!("reading its mappings: {e}"))?)?;
    let mut plans: Vec<Planned> =
        maps.iter().filter_map(|m| memory::plan(m).ok()).filter(|p| p.pages != Pages::None).collect();
    memory::find_guards(pid, &mut plans).map_err(|e| e.to_string())?;
    let pidfd = PidFd::open(pid).map_err(|e| crate::chain(&e))?;
    let mut seized = Seized::seize(pid, crate::freeze::seize_options()).map_err(|e| crate::chain(&e))?;
    seized.interrupt(STOP_TIMEOUT).map_err(|e| crate::chain(&e))?;
    let site = find_syscall_site(pid).map_err(|e| crate::chain(&e))?;
    let mut inj = seized.begin_injection(site).map_err(|e| crate::chain(&e))?;
    let made = Userfaultfd::in_process(&mut inj, &pidfd, uffd::FEATURE_WP_ASYNC);
    inj.finish().map_err(|e| crate::chain(&e))?;
    seized.detach().map_err(|e| crate::chain(&e))?;
    Ok((made.map_err(|e| crate::chain(&e))?, plans))
}

/// The runs of pages of `pid` written since they were last protected;
/// `protect` protects them again in the same scan.
fn written_since(pid: Pid, c: &Copied, protect: bool) -> Result<Vec<(u64, u64)>, MemoryError> {
    let pagemap = Pagemap::open(pid).map_err(|e| MemoryError::Scan { pid, start: 0, what: crate::chain(&e) })?;
    let mut runs = Vec::new();
    for r in &c.registered {
        let req = ScanRequest {
            range: r.clone(),
            flags: if protect { PM_SCAN_WP_MATCHING } else { 0 },
            required: Categories::WRITTEN,
            any_of: Categories::NONE,
            inverted: Categories::NONE,
            report: Categories::WRITTEN,
        };
        let found =
            pagemap.scan(&req).map_err(|e| MemoryError::Scan { pid, start: r.start, what: crate::chain(&e) })?;
        runs.extend(found.iter().map(|f| (f.start, f.end)));
    }
    Ok(runs)
}

/// Read `runs` of `pid` (write-protected before) and store them as chunks
/// of `copied`, one per window; returns the bytes read. In the `first`
/// copy, a piece that cannot be read (unmapped meanwhile) is left to the
/// freeze as never copied; later, as lost.
fn copy(
    pid: Pid,
    runs: &[(u64, u64)],
    writer: &mut ImageWriter,
    copied: &mut Copied,
    first: bool,
) -> Result<u64, MemoryError> {
    let mut pieces = Vec::new();
    for &(start, end) in runs {
        for (at, len) in writer.windows(start, end - start).collect::<Vec<_>>() {
            memory::add_to_pieces(&mut pieces, at, at + len);
        }
    }
    let mut bytes = 0;
    let (mut got, mut failed) = (Vec::new(), Vec::new());
    memory::read_pieces(pid, &pieces, |at, read| {
        let Ok(buf) = read else {
            let end = pieces.iter().find(|p| p.0 == at).map_or(at, |p| p.1);
            failed.extend([at, end]);
            return Ok(());
        };
        let windows: Vec<(u64, u64)> = writer.windows(at, buf.len() as u64).collect();
        let slices: Vec<&[u8]> = windows.iter().map(|&(s, l)| &buf[(s - at) as usize..(s - at + l) as usize]).collect();
        let ids = writer.store_chunks(&slices).map_err(MemoryError::Write)?;
        for ((s, l), id) in windows.into_iter().zip(ids) {
            let k = copied.add_chunk(s, l, id);
            if first {
                copied.exact.insert(s, (l, k));
            } else {
                // The window is no longer as first stored.
                let window = s - s % u64::from(writer.chunk_size());
                let stale: Vec<u64> = copied.exact.range(window..s + l).map(|(&k, _)| k).collect();
                for k in stale {
                    copied.exact.remove(&k);
                }
            }
        }
        got.extend([at, at + buf.len() as u64]);
        bytes += buf.len() as u64;
        Ok(())
    })?;
    let got = memory::union(&got, &[]);
    copied.covered = memory::union(&copied.covered, &got);
    // A page written and protected again but not copied must be read in
    // the freeze (a first copy that fails leaves it uncovered instead).
    if !first {
        copied.lost = memory::subtract(&memory::union(&copied.lost, &failed), &got);
    }
    Ok(bytes)
}

/// Memory of a process read in the freeze for runs that were copied
/// ahead: only the pages that must be (written since, or never copied).
#[derive(Debug)]
pub struct Pending {
    pub pid: Pid,
    pub mm: u32,
    /// The runs to put together, in address order.
    pub runs: Vec<(u64, u64)>,
    /// Pages read in the freeze, by start.
    pub fresh: BTreeMap<u64, Vec<u8>>,
}

impl Pending {
    /// The page at `addr` as read in the freeze, if it was.
    fn fresh_page(&self, addr: u64) -> Option<&[u8]> {
        let (&start, data) = self.fresh.range(..=addr).next_back()?;
        let off = (addr - start) as usize;
        (off < data.len()).then(|| &data[off..off + PAGE as usize])
    }

    fn fresh_overlaps(&self, start: u64, end: u64) -> bool {
        let before = self.fresh.range(..start).next_back().is_some_and(|(&s, d)| s + d.len() as u64 > start);
        before || self.fresh.range(start..end).next().is_some()
    }
}

/// Put the memory of `pending` into the image: each window from the
/// chunk stored in the first copy when nothing of it changed since, else
/// page by page from the latest copies and the pages read in the freeze.
/// Returns the bytes taken from what was copied ahead.
pub fn assemble(pending: &Pending, copied: &Copied, writer: &mut ImageWriter) -> Result<u64, MemoryError> {
    let pid = pending.pid;
    let mut used = 0;
    let mut cache: HashMap<u32, Vec<u8>> = HashMap::new();
    for &(start, end) in &pending.runs {
        for (at, len) in writer.windows(start, end - start).collect::<Vec<_>>() {
            let exact = copied.exact.get(&at).filter(|(l, _)| *l == len);
            if let Some(&(_, k)) = exact.filter(|_| !pending.fresh_overlaps(at, at + len)) {
                writer.add_stored_memory(pending.mm, at, len, copied.chunks[k as usize]).map_err(MemoryError::Write)?;
                used += len;
                continue;
            }
            cache.clear();
            let mut buf = vec![0u8; len as usize];
            for (i, page) in (at..at + len).step_by(PAGE as usize).enumerate() {
                let dst = &mut buf[i * PAGE as usize..(i + 1) * PAGE as usize];
                if let Some(data) = pending.fresh_page(page) {
                    dst.copy_from_slice(data);
                    continue;
                }
                let &(k, n) = copied.pages.get(&page).ok_or_else(|| MemoryError::Read {
                    pid,
                    start: page,
                    what: "the page was neither copied ahead nor read in the freeze".into(),
                })?;
                let chunk = match cache.entry(k) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(writer.read_chunk(&copied.chunks[k as usize]).map_err(MemoryError::Write)?)
                    }
                };
                let off = n as usize * PAGE as usize;
                dst.copy_from_slice(&chunk[off..off + PAGE as usize]);
                used += PAGE;
            }
            writer.add_memory(pending.mm, at, &buf).map_err(MemoryError::Write)?;
        }
    }
    Ok(used)
}
