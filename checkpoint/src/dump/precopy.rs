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
//! one PAGEMAP_SCAN (`PM_SCAN_WP_MATCHING`) and copied raw, without
//! compressing them, into a [`Mirror`] of the process's memory (a file
//! of its own, unlinked, beside the image), while fewer are written each
//! round. Raw copies keep up with a process that writes much: compressing
//! runs at a few hundred MB/s a core, reading and writing pages at
//! several GB/s. At the freeze, [`super::memory::store`] reads only the
//! pages written since the last round (and any never copied) into the
//! mirror too; once the tree runs again (or before it is killed)
//! [`assemble`] puts each window together from the chunks of the first
//! copy and the mirror, and compresses what changed. A window untouched
//! since the first copy is taken as it was stored. Whatever cannot be
//! tracked (a process that
//! cannot be stopped for the injection, a mapping that refuses
//! registration, one mapped after) shows as written and is read in the
//! freeze; shared memory and the private copies of file mappings are
//! always read then.
//!
//! Dropping a [`PreCopy`] unregisters everything; a killed agent's
//! descriptors close and do the same, so no process is left protected.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stasis_image::records::VmaKind;
use stasis_image::{ChunkId, ImageWriter};
use stasis_sys::inject::find_syscall_site;
use stasis_sys::mman::{SparseBuffer, SparseReader};
use stasis_sys::pagemap::{Categories, Pagemap, ScanRequest, PM_SCAN_WP_MATCHING};
use stasis_sys::pidfd::PidFd;
use stasis_sys::process_vm::RemoteAddr;
use stasis_sys::procmem::ProcMem;
use stasis_sys::ptrace::Seized;
use stasis_sys::uffd::{self, Userfaultfd};
use stasis_sys::Pid;

use super::memory::{self, MemoryError, Pages, Planned};
use super::tracking::Kept;
use crate::proc;

/// How long a process may take to stop for the injection that makes its
/// userfaultfd; one that does not is copied in the freeze instead.
/// A part of the mirror this small is read through /proc/PID/mem at once:
/// one call, and no pin (see [`memory::runs_by_sharing`]), where asking
/// pagemap first which pages the process maps alone would be a second.
/// Most of what is written between the last copy and the freeze comes in
/// such small parts, scattered.
const SMALL_PART: usize = 64 << 10;
const STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// Rounds of copying what was written, at most, after the first copy.
const MAX_ROUNDS: usize = 10;
/// No further round once less than this was written during the last one.
const SMALL_ENOUGH: u64 = 1 << 20;
/// Windows [`assemble`] puts together at a time, at most.
const PREFETCHED: usize = 256;
/// Rounds just before the freeze, at most ([`PreCopy::last_rounds`]).
const LAST_ROUNDS: usize = 4;
/// No further round after this many that found no less written than the
/// least found before.
const STALLED: usize = 2;
/// With a freeze to fit ([`run`]'s `max_freeze`): rounds at most, and
/// rounds without less written before giving up.
const MAX_ROUNDS_TO_FIT: usize = 30;
const STALLED_TO_FIT: usize = 4;

/// The latest raw copy of the pages of a process's registered mappings, in
/// the agent's memory: the mappings laid end to end, in address order, in
/// one sparse buffer (only the pages copied take memory).
#[derive(Debug)]
pub struct Mirror {
    buf: SparseBuffer,
    /// Each registered mapping and the offset of its first page.
    bases: Vec<(Range<u64>, u64)>,
    /// Memory all mirrors may still take (shared by the tree's).
    room: Arc<AtomicU64>,
}

impl Mirror {
    fn new(ranges: &[Range<u64>], room: Arc<AtomicU64>) -> Result<Mirror, stasis_sys::mman::Error> {
        let mut bases = Vec::with_capacity(ranges.len());
        let mut len = 0;
        for r in ranges {
            bases.push((r.clone(), len));
            len += r.end - r.start;
        }
        Ok(Mirror { buf: SparseBuffer::new(len as usize)?, bases, room })
    }

    /// Take `bytes` of the room left for mirrors; false (taking nothing)
    /// when there is not that much.
    pub fn claim(&self, bytes: u64) -> bool {
        self.room.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(bytes)).is_ok()
    }

    /// Copy the pages of `pid` at `pieces` (in address order, inside the
    /// registered mappings) into the mirror, on a few threads; returns the
    /// pieces copied and those that could not be read (unmapped meanwhile),
    /// as `[start, end)` pairs in address order.
    pub fn fill(&self, pid: Pid, pieces: &[(u64, u64)]) -> (Vec<u64>, Vec<u64>) {
        let files = || (ProcMem::open(pid, false).ok(), Pagemap::open(pid).ok());
        let copy = |files: &mut (Option<ProcMem>, Option<Pagemap>), i: usize| {
            let (at, end) = pieces[i];
            files.0.as_ref().zip(files.1.as_ref()).is_some_and(|(mem, pagemap)| {
                parts(&self.bases, at, end - at).is_ok_and(|parts| {
                    parts.iter().all(|&(a, off, n)| self.fill_part(pid, mem, pagemap, a, off, n).is_ok())
                })
            })
        };
        let (mut got, mut failed) = (Vec::new(), Vec::new());
        let copied = crate::workers::map(pieces.len(), crate::cores().clamp(1, 4), files, copy);
        for (&(at, end), ok) in pieces.iter().zip(copied) {
            if ok { &mut got } else { &mut failed }.extend([at, end]);
        }
        (memory::union(&got, &[]), memory::union(&failed, &[]))
    }

    /// Copy `n` bytes of `pid` at `addr` into the mirror at `off`, as
    /// [`memory::runs_by_sharing`] says.
    fn fill_part(&self, pid: Pid, mem: &ProcMem, pagemap: &Pagemap, addr: u64, off: usize, n: usize) -> Result<(), ()> {
        if n <= SMALL_PART {
            return mem.read_into(RemoteAddr(addr), &self.buf, off, n).map_err(drop);
        }
        for (from, len, alone) in memory::runs_by_sharing(pagemap, addr, n).map_err(drop)? {
            let done = if alone { self.buf.fill_from_process(pid, addr + from as u64, off + from, len) } else { 0 };
            if done < len {
                let at = RemoteAddr(addr + (from + done) as u64);
                mem.read_into(at, &self.buf, off + from + done, len - done).map_err(drop)?;
            }
        }
        Ok(())
    }

    /// Reads from any number of threads at once, while nothing is copied
    /// into it.
    fn reader(&mut self) -> MirrorReader<'_> {
        MirrorReader { buf: self.buf.reader(), bases: &self.bases }
    }
}

/// The parts of `[at, at + len)` in a mirror of mappings at `bases`, as
/// (address, offset, length); fails for any part outside them.
fn parts(bases: &[(Range<u64>, u64)], at: u64, len: u64) -> Result<Vec<(u64, usize, usize)>, String> {
    let mut out = Vec::new();
    let mut a = at;
    while a < at + len {
        let i = bases.partition_point(|(r, _)| r.end <= a);
        let Some((r, base)) = bases.get(i).filter(|(r, _)| r.start <= a) else {
            return Err(format!("{a:#x} is in no mapping copied ahead"));
        };
        let n = r.end.min(at + len) - a;
        out.push((a, (base + (a - r.start)) as usize, n as usize));
        a += n;
    }
    Ok(out)
}

/// Reads of a [`Mirror`] ([`Mirror::reader`]).
#[derive(Clone, Copy)]
struct MirrorReader<'a> {
    buf: SparseReader<'a>,
    bases: &'a [(Range<u64>, u64)],
}

impl MirrorReader<'_> {
    /// The memory stored for `at`, into `buf`.
    fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), String> {
        for (a, off, n) in parts(self.bases, at, buf.len() as u64)? {
            let i = (a - at) as usize;
            self.buf.read(off, &mut buf[i..i + n]);
        }
        Ok(())
    }
}

/// Memory of one process copied while it ran, and the userfaultfd that
/// tells which of it was written since.
#[derive(Debug)]
pub struct Copied {
    uffd: Userfaultfd,
    registered: Vec<Range<u64>>,
    /// The windows stored as chunks in the first copy (or the parent
    /// image's, for a tracking kept since it was written).
    first: FirstCopy,
    /// The rounds' copies (and the freeze's, see [`Pending`]).
    pub mirror: Mirror,
    /// The pages whose latest copy is in the mirror, as `[start, end)`
    /// pairs in address order.
    mirrored: Vec<u64>,
    /// The pages copied, as `[start, end)` pairs in address order.
    covered: Vec<u64>,
    /// Pages written and protected again whose copy failed (unmapped
    /// meanwhile): the freeze reads them.
    lost: Vec<u64>,
    /// Pages that held nothing when the tracking started (or went on) and
    /// have not been written since, as `[start, end)` pairs in address
    /// order ([`unpopulated`]): neither copied nor stored.
    unpopulated: Vec<u64>,
    /// Whether the freeze protects the pages written again, for the
    /// tracking to be kept after the dump ([`super::tracking`]).
    keep: bool,
    /// Set once the freeze's scan protected them again.
    rearmed: AtomicBool,
}

impl Copied {
    /// What the freeze must read of the run `[start, end)`, whose pages are
    /// `written` (pairs in address order) since the last round: those, the
    /// pages never copied, and those whose copy was lost.
    pub fn to_read(&self, start: u64, end: u64, written: &[u64]) -> Vec<Range<u64>> {
        let mut clean = Vec::new();
        for c in memory::within(start..end, &self.covered) {
            for w in memory::without(c, written) {
                clean.extend(memory::without(w, &self.lost).into_iter().flat_map(|r| [r.start, r.end]));
            }
        }
        memory::without(start..end, &clean)
    }

    /// With the tracking to be kept, protect again the pages written
    /// since the last round, as the freeze found them (the freeze calls
    /// this, once it has scanned which: that scan's own written pages
    /// include those of a mapping made since in a registered range, not
    /// registered, whose pages all count as written; one with
    /// `PM_SCAN_WP_MATCHING` skips such mappings).
    pub fn rearm(&self, pid: Pid) {
        if self.keep {
            let again = written_since(pid, self, true);
            if let Err(e) = &again {
                tracing::info!("the write tracking of process {pid} is not kept: {e}");
            }
            self.rearmed.store(again.is_ok(), Ordering::Relaxed);
        }
    }

    /// The pages that hold nothing, given the pages `written` (pairs in
    /// address order) since the last round: those unpopulated when the
    /// tracking started and not written since, as pairs in address order.
    /// Such a page still shows as swapped (its write-protect marker is a
    /// swap entry) but is left out of what is stored: a write to it shows
    /// as written, and a read maps the zero page, which is never stored.
    pub fn untouched(&self, written: &[u64]) -> Vec<u64> {
        memory::subtract(&self.unpopulated, written)
    }

    /// Bytes of `runs` (pairs in address order) not yet in the mirror.
    pub fn new_to_mirror(&self, runs: &[u64]) -> u64 {
        memory::size(&memory::union(&self.mirrored, runs)) - memory::size(&self.mirrored)
    }

    /// Record `got` (pairs in address order) as copied into the mirror,
    /// taking the room the new pages need.
    fn add_mirrored(&mut self, got: &[u64]) {
        let new = self.new_to_mirror(got);
        if !self.mirror.claim(new) {
            // Copied already: the room only bounds what is copied next.
            self.mirror.room.store(0, Ordering::Relaxed);
        }
        self.mirrored = memory::union(&self.mirrored, got);
    }

    /// Whether `[start, end)` lies in a registered mapping.
    pub fn tracks(&self, start: u64, end: u64) -> bool {
        self.registered.iter().any(|r| r.start <= start && end <= r.end)
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
    /// Memory the mirrors may still take: half of what was available
    /// when the copy started.
    room: Arc<AtomicU64>,
    /// Bytes written since the last round when the rounds ended: what the
    /// freeze copies (besides what could not be tracked).
    pub left: u64,
    /// How long copying `left` should take, at the rate the last round
    /// copied (none before a round measured it).
    pub predicted_freeze: Option<Duration>,
    /// Processes whose writes were tracked since the parent image (kept
    /// after the dump that wrote it): only what they wrote since was read.
    pub resumed: usize,
}

impl PreCopy {
    /// One more round: the pages written since the last are found,
    /// protected again and copied raw into the mirrors; returns the bytes
    /// copied. A dump calls it once more just before the freeze, after
    /// whatever else it did while the tree ran (reading its smaps), so the
    /// freeze copies only what was written since this.
    pub fn round(&mut self) -> u64 {
        self.rounds += 1;
        let mut last = 0;
        let mut failed = Vec::new();
        for (&pid, c) in self.by_pid.iter_mut() {
            match written_since(pid, c, true) {
                Ok(runs) => {
                    let flat: Vec<u64> = runs.iter().flat_map(|&(s, e)| [s, e]).collect();
                    c.unpopulated = memory::subtract(&c.unpopulated, &flat);
                    last += copy_raw(pid, &runs, c);
                }
                Err(e) => failed.push((pid, e)),
            }
        }
        // A scan that failed part way (the process exiting) may have
        // protected pages again without reporting them: nothing copied of
        // that process can be trusted, the freeze reads it whole.
        for (pid, e) in failed {
            self.by_pid.remove(&pid);
            self.untracked.push(format!("process {pid}: {e}"));
        }
        self.bytes_read += last;
        last
    }

    /// Rounds once more just before the freeze, when the mirrors have
    /// room for what was written (else the freeze copies it), while each
    /// copies less than the one before and [`SMALL_ENOUGH`] or more, at
    /// most [`LAST_ROUNDS`]: the first copies what was written while the
    /// dump did something else (read the smaps: 15-40 ms), which is as
    /// long as it takes, and each after it what the one before let be
    /// written, so the freeze copies what was written during the
    /// shortest. Whether one ran.
    pub fn last_rounds(&mut self) -> bool {
        let mut before = u64::MAX;
        let mut ran = false;
        for _ in 0..LAST_ROUNDS {
            let mut new = 0;
            for (&pid, c) in &self.by_pid {
                if let Ok(runs) = written_since(pid, c, false) {
                    new += c.new_to_mirror(&runs.into_iter().flat_map(|(s, e)| [s, e]).collect::<Vec<u64>>());
                }
            }
            if new > self.room.load(Ordering::Relaxed) {
                break;
            }
            let copied = self.round();
            ran = true;
            if copied < SMALL_ENOUGH || copied >= before {
                break;
            }
            before = copied;
        }
        ran
    }

    /// What was copied ahead of process `pid`.
    pub fn of(&self, pid: Pid) -> Option<&Copied> {
        self.by_pid.get(&pid)
    }

    /// What was copied ahead of process `pid`, to put together.
    pub fn of_mut(&mut self, pid: Pid) -> Option<&mut Copied> {
        self.by_pid.get_mut(&pid)
    }

    /// The write tracking of every process the freeze protected again
    /// (the others' ends when the [`PreCopy`] is dropped): its
    /// userfaultfd and registered ranges, for [`super::tracking::Kept`].
    pub fn keep(&mut self) -> Vec<(Pid, Userfaultfd, Vec<Range<u64>>)> {
        let mut out = Vec::new();
        for (&pid, c) in self.by_pid.iter_mut() {
            if !c.rearmed.load(Ordering::Relaxed) {
                continue;
            }
            let Ok(uffd) = c.uffd.try_clone() else { continue };
            // Dropping `c` now closes its descriptor and unregisters nothing.
            out.push((pid, uffd, std::mem::take(&mut c.registered)));
        }
        out
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

/// The dump's seize options, with PTRACE_O_SUSPEND_SECCOMP for a process
/// under seccomp (filters or strict mode): the userfaultfd call injected
/// here could be refused by its filters, or kill it.
fn seize_options(pid: Pid) -> stasis_sys::ptrace::Options {
    let filtered = proc::read(pid, "status").is_ok_and(|s| proc::parse_status(&s).seccomp != 0);
    match filtered {
        true => crate::freeze::seize_options() | stasis_sys::regs::SUSPEND_SECCOMP,
        false => crate::freeze::seize_options(),
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
/// tracked is noted and copied in the freeze. With `max_freeze`, the
/// rounds go on (up to [`MAX_ROUNDS_TO_FIT`], while they gain) until
/// copying what was written since the last one fits in it
/// ([`PreCopy::predicted_freeze`]); the caller decides what a miss means.
pub fn run(
    pids: &[Pid],
    writer: &mut ImageWriter,
    max_freeze: Option<Duration>,
    mut kept: Vec<Kept>,
    keep: bool,
) -> Result<PreCopy, MemoryError> {
    let mut pre = PreCopy { room: Arc::new(AtomicU64::new(mem_available() / 2)), ..PreCopy::default() };
    for &pid in pids {
        let held = kept.iter().position(|k| k.pid == pid).map(|i| kept.swap_remove(i));
        let started = match held {
            Some(k) => go_on(pid, k, writer),
            None => track(pid),
        };
        let Started { uffd, plans, sparse, kept: kept_ranges, parent } = match started {
            Ok(s) => s,
            Err(why) => {
                pre.untracked.push(format!("process {pid}: {why}"));
                continue;
            }
        };
        pre.untracked.extend(sparse.into_iter().map(|why| format!("process {pid}: {why}")));
        let mut registered = kept_ranges.clone();
        let mut tracked = Vec::new();
        for plan in plans {
            let range = plan.vma.start..plan.vma.end;
            let inside = kept_ranges.iter().any(|r| r.start <= range.start && range.end <= r.end);
            let overlaps = kept_ranges.iter().any(|r| r.start < range.end && range.start < r.end);
            let protect = match (inside, overlaps) {
                // Tracked since the parent: its written pages are copied
                // in the rounds, the rest is the parent's.
                (true, _) if parent.is_some() => continue,
                // Tracked, but for another image: from nothing.
                (true, _) => uffd.write_protect(range, true),
                (false, true) => {
                    pre.untracked.push(format!(
                        "process {pid}: mapping {:#x}-{:#x} grew over what was tracked before",
                        range.start, range.end
                    ));
                    continue;
                }
                (false, false) => match uffd.register(range.clone(), uffd::REGISTER_MODE_WP) {
                    Ok(_) => {
                        registered.push(range.clone());
                        uffd.write_protect(range, true)
                    }
                    Err(e) => Err(e),
                },
            };
            match protect {
                Ok(()) => tracked.push(plan),
                Err(e) => pre.untracked.push(format!("process {pid}: {}", crate::chain(&e))),
            }
        }
        registered.sort_unstable_by_key(|r| r.start);
        let mirror = match Mirror::new(&registered, pre.room.clone()) {
            Ok(m) => m,
            Err(e) => {
                for r in registered {
                    let _ = uffd.unregister(r);
                }
                pre.untracked.push(format!("process {pid}: {}", crate::chain(&e)));
                continue;
            }
        };
        let (first, covered) = parent.unwrap_or_default();
        if !covered.is_empty() {
            pre.resumed += 1;
        }
        let mut copied = Copied {
            uffd,
            registered,
            first,
            mirror,
            mirrored: Vec::new(),
            covered,
            lost: Vec::new(),
            unpopulated: Vec::new(),
            keep,
            rearmed: AtomicBool::new(false),
        };
        // A process that exits meanwhile is the freeze's to report.
        let pagemap = Pagemap::open(pid).map_err(|e| MemoryError::Scan { pid, start: 0, what: crate::chain(&e) });
        let runs = pagemap.and_then(|pagemap| {
            copied.unpopulated = unpopulated(pid, &pagemap, &copied.registered);
            memory::runs(pid, &pagemap, &tracked, &[], false).map(|found| found.runs)
        });
        match runs {
            Ok(runs) => {
                let runs: Vec<(u64, u64)> = runs
                    .into_iter()
                    .flat_map(|(s, e)| memory::without(s..e, &copied.unpopulated))
                    .map(|r| (r.start, r.end))
                    .collect();
                pre.bytes_read += copy_first(pid, &runs, writer, &mut copied)?;
                pre.by_pid.insert(pid, copied);
            }
            Err(e) => pre.untracked.push(format!("process {pid}: {e}")),
        }
    }
    // The least written during a round so far, and the rounds since it
    // (the first copy compressed as it went; the rounds copy raw, far
    // faster, so the first round is worth it however much was written).
    let (mut least, mut since_least) = (u64::MAX, 0);
    let (max_rounds, stalled) = match max_freeze {
        Some(_) => (MAX_ROUNDS_TO_FIT, STALLED_TO_FIT),
        None => (MAX_ROUNDS, STALLED),
    };
    // Bytes a second the rounds copy (raw), from the last that copied some.
    let mut rate: Option<f64> = None;
    // What the scan before found written: a freeze to fit is judged by the
    // more of the two (a writer not scheduled during one round has not
    // stopped writing).
    let mut before = 0;
    loop {
        let (mut written, mut new) = (0, 0);
        let mut gone = Vec::new();
        for (&pid, c) in &pre.by_pid {
            match written_since(pid, c, false) {
                Ok(runs) => {
                    let runs: Vec<u64> = runs.into_iter().flat_map(|(s, e)| [s, e]).collect();
                    written += memory::size(&runs);
                    new += c.new_to_mirror(&runs);
                }
                Err(e) => gone.push((pid, e)),
            }
        }
        for (pid, e) in gone {
            pre.by_pid.remove(&pid);
            pre.untracked.push(format!("process {pid}: {e}"));
        }
        // Done when little was written, or when the copying has stopped
        // gaining on the writing: two rounds without less to copy (one
        // slow round, the machine busy for a moment, is not enough).
        match written < least {
            true => (least, since_least) = (written, 0),
            false => since_least += 1,
        }
        pre.left = written;
        let judged = match max_freeze {
            Some(_) => written.max(std::mem::replace(&mut before, written)),
            None => written,
        };
        pre.predicted_freeze = match (judged, rate) {
            (0, _) => Some(Duration::ZERO),
            (_, Some(r)) => Some(Duration::from_secs_f64(judged as f64 / r)),
            (_, None) => None,
        };
        let done = match max_freeze {
            Some(max) => pre.predicted_freeze.is_some_and(|p| p <= max),
            None => written < SMALL_ENOUGH,
        };
        if done || since_least >= stalled || pre.rounds >= max_rounds {
            break;
        }
        if new > pre.room.load(Ordering::Relaxed) {
            tracing::info!(
                "no room for more copies ahead ({new} bytes more would be needed): the freeze copies the rest"
            );
            break;
        }
        let started = std::time::Instant::now();
        let last = pre.round();
        if last >= SMALL_ENOUGH / 4 {
            rate = Some(last as f64 / started.elapsed().as_secs_f64().max(1e-6));
        }
        tracing::debug!(
            "pre-copy round {}: {written} bytes written since the last, {last} copied in {:?}",
            pre.rounds,
            started.elapsed()
        );
    }
    Ok(pre)
}

/// MemAvailable of /proc/meminfo, in bytes (0 when it cannot be read).
fn mem_available() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"));
    let kib = line.and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

/// The windows (by start) of a first copy: (length, chunk).
type FirstCopy = BTreeMap<u64, (u64, ChunkId)>;

/// How the tracking of one process starts: its userfaultfd, the mappings
/// to track, and what it goes on with from the last dump.
struct Started {
    uffd: Userfaultfd,
    plans: Vec<Planned>,
    /// Why mappings it might have were not tracked ([`trackable`]).
    sparse: Vec<String>,
    /// The ranges registered before, kept since the last dump.
    kept: Vec<Range<u64>>,
    /// With the parent image the tracking was kept for: the first copy
    /// (its chunks) and the pages it covers (`Copied::first`, `covered`).
    parent: Option<(FirstCopy, Vec<u64>)>,
}

/// The most of a mapping's pages, never touched, that its tracking may
/// mark ([`trackable`]): 16 GiB, for which the kernel makes 32 MiB of page
/// tables.
const MARKED_MAX: u64 = 16 << 30;

/// The mappings of `pid` whose pages a dump stores and can track, and why
/// others were not (a mapping mostly empty, [`MARKED_MAX`]).
fn trackable(pid: Pid) -> Result<(Vec<Planned>, Vec<String>), String> {
    // A process of a frozen cgroup cannot stop for ptrace (nor be let go).
    if let Some(cg) = crate::freeze::frozen_cgroup_of(pid) {
        return Err(format!("it is in frozen cgroup {}", cg.display()));
    }
    let maps = proc::parse_smaps(&proc::read(pid, "maps").map_err(|e| format!("reading its mappings: {e}"))?)?;
    // Only mappings of anonymous memory: write-protecting a file mapping
    // also marks each page it has not touched (the uffd-wp markers a file
    // mapping keeps), which PAGEMAP_SCAN reports as swapped, so the copy
    // would read the whole file into the process (and fail past the end
    // of a shorter one). The private copies a file mapping holds are few;
    // the freeze reads them.
    // Nor mappings nothing may touch (PROT_NONE): address space reserved
    // (a JVM's heap, a V8 or wasm runtime's cage, a thread's guard page),
    // usually with no page at all. Write-protecting puts a marker on every
    // page never touched, and makes the page tables to hold them (the
    // kernel counts an unpopulated page of a tracked mapping as written
    // until it is marked): a 64 GiB reservation took 131 MB of page tables,
    // left in the process after the dump, ~1 s of the copy and 105 ms of
    // the freeze. The freeze reads what such a mapping holds, and a part
    // made accessible meanwhile (mprotect: a mapping of its own) is copied
    // then as a mapping made after the copy started.
    let plans: Vec<Planned> = maps
        .iter()
        .filter_map(|m| memory::plan(m).ok())
        .filter(|p| p.pages == Pages::All && p.vma.kind != VmaKind::AioRing as i32 && p.vma.prot != 0)
        .collect();
    // The same holds for mappings made accessible but mostly never
    // touched, however large: the shadow memory of a sanitizer (terabytes),
    // an arena mapped with MAP_NORESERVE. One whose untouched pages would
    // take more than 32 MiB of page tables to mark is left to the freeze,
    // which reads what it holds, and said so.
    let mut pagemap = None;
    let mut sparse = Vec::new();
    let mut kept = Vec::with_capacity(plans.len());
    for plan in plans {
        let (start, end) = (plan.vma.start, plan.vma.end);
        if end - start > MARKED_MAX {
            let ask = ScanRequest {
                range: start..end,
                flags: 0,
                required: Categories::NONE,
                any_of: Categories::PRESENT | Categories::SWAPPED,
                inverted: Categories::NONE,
                report: Categories::NONE,
            };
            let pagemap = match pagemap {
                Some(ref p) => p,
                None => pagemap.insert(Pagemap::open(pid).map_err(|e| crate::chain(&e))?),
            };
            let found = memory::scan_all(pagemap, &[ask]).map_err(|(_, e)| crate::chain(&e))?;
            let used: u64 = found.iter().flatten().map(|r| r.end - r.start).sum();
            if end - start - used > MARKED_MAX {
                sparse.push(format!(
                    "mapping {start:#x}-{end:#x} ({} GiB, {} MiB of it in use) is copied frozen: marking its pages \
                     never touched would take {} MiB of page tables",
                    (end - start) >> 30,
                    used >> 20,
                    (end - start - used) >> 29
                ));
                continue;
            }
        }
        kept.push(plan);
    }
    let mut plans = kept;
    memory::find_guards(pid, &mut plans).map_err(|e| e.to_string())?;
    Ok((plans, sparse))
}

/// The mappings of `pid` whose pages a dump stores, and a userfaultfd of
/// its address space made by stopping it for a moment.
fn track(pid: Pid) -> Result<Started, String> {
    let (plans, sparse) = trackable(pid)?;
    let pidfd = PidFd::open(pid).map_err(|e| crate::chain(&e))?;
    let mut seized = Seized::seize(pid, seize_options(pid)).map_err(|e| crate::chain(&e))?;
    seized.interrupt(STOP_TIMEOUT).map_err(|e| crate::chain(&e))?;
    let site = find_syscall_site(pid).map_err(|e| crate::chain(&e))?;
    let mut inj = seized.begin_injection(site).map_err(|e| crate::chain(&e))?;
    let made = Userfaultfd::in_process(&mut inj, &pidfd, uffd::FEATURE_WP_ASYNC);
    inj.finish().map_err(|e| crate::chain(&e))?;
    seized.detach().map_err(|e| crate::chain(&e))?;
    Ok(Started { uffd: made.map_err(|e| crate::chain(&e))?, plans, sparse, kept: Vec::new(), parent: None })
}

/// Go on with the tracking `kept` since the last dump of `pid`. When that
/// dump wrote the writer's parent (same chunk size), the parent's chunks
/// wholly inside the ranges tracked since are the first copy: the pages
/// still protected hold what they hold.
fn go_on(pid: Pid, kept: Kept, writer: &ImageWriter) -> Result<Started, String> {
    let (plans, sparse) = trackable(pid)?;
    let (mm, image, chunk_size) = (kept.mm, kept.image, kept.chunk_size);
    let (uffd, ranges) = kept.into_parts();
    let of_parent = writer.parent().filter(|p| *p.manifest_hash() == image && chunk_size == writer.chunk_size());
    let parent = of_parent.map(|p| {
        let mut first = BTreeMap::new();
        let mut covered = Vec::new();
        for region in p.memory().iter().filter(|r| r.mm == mm) {
            for (at, len, id) in p.region_chunks(region) {
                if ranges.iter().any(|r| r.start <= at && at + len <= r.end) {
                    first.insert(at, (len, id));
                    covered.extend([at, at + len]);
                }
            }
        }
        (first, memory::union(&covered, &[]))
    });
    Ok(Started { uffd, plans, sparse, kept: ranges, parent })
}

/// The pages of the `registered` ranges of `pid` that hold nothing (never
/// populated, or dropped), as `[start, end)` pairs in address order:
/// write-protecting them left a marker on each, which PAGEMAP_SCAN shows
/// as swapped and not written, like a page swapped out. They are told
/// apart by their swap entries in /proc/PID/pagemap, read only where the
/// scan finds swapped pages. A thread's stack or a malloc arena is mostly
/// such pages: without this the first copy would read them all (zeros).
/// Any error finds none, and they are read.
fn unpopulated(pid: Pid, pagemap: &Pagemap, registered: &[Range<u64>]) -> Vec<u64> {
    let requests: Vec<ScanRequest> = registered
        .iter()
        .map(|r| ScanRequest {
            range: r.clone(),
            flags: 0,
            required: Categories::SWAPPED | Categories::WRITTEN,
            any_of: Categories::NONE,
            inverted: Categories::WRITTEN,
            report: Categories::SWAPPED,
        })
        .collect();
    let found = memory::scan_all(pagemap, &requests).map_err(|(_, e)| crate::chain(&e)).and_then(|answers| {
        let mut out = Vec::new();
        for region in answers.into_iter().flatten() {
            for r in pagemap.uffd_wp_markers(region.start..region.end).map_err(|e| crate::chain(&e))? {
                out.extend([r.start, r.end]);
            }
        }
        Ok(memory::union(&out, &[]))
    });
    found.unwrap_or_else(|e| {
        tracing::debug!("process {pid}: its unpopulated pages are read as they are: {e}");
        Vec::new()
    })
}

/// The runs of pages of `pid` written since they were last protected;
/// `protect` protects them again in the same scan.
fn written_since(pid: Pid, c: &Copied, protect: bool) -> Result<Vec<(u64, u64)>, MemoryError> {
    let pagemap = Pagemap::open(pid).map_err(|e| MemoryError::Scan { pid, start: 0, what: crate::chain(&e) })?;
    written_in(&pagemap, pid, c.registered.iter().cloned(), protect)
}

/// The runs of pages of `ranges` (of `pid`, through its `pagemap`) written
/// since they were last protected; `protect` protects them again in the
/// same scan.
fn written_in(
    pagemap: &Pagemap,
    pid: Pid,
    ranges: impl Iterator<Item = Range<u64>>,
    protect: bool,
) -> Result<Vec<(u64, u64)>, MemoryError> {
    let requests: Vec<ScanRequest> = ranges
        .map(|range| ScanRequest {
            range,
            flags: if protect { PM_SCAN_WP_MATCHING } else { 0 },
            required: Categories::WRITTEN,
            any_of: Categories::NONE,
            inverted: Categories::NONE,
            report: Categories::WRITTEN,
        })
        .collect();
    let answers = memory::scan_all(pagemap, &requests).map_err(|(start, e)| MemoryError::Scan {
        pid,
        start,
        what: crate::chain(&e),
    })?;
    Ok(answers.into_iter().flatten().map(|f| (f.start, f.end)).collect())
}

/// Read `runs` of `pid` (write-protected before) and store them as chunks
/// of `copied`, one per window; returns the bytes read. A piece that
/// cannot be read (unmapped meanwhile) is left to the freeze as never
/// copied.
fn copy_first(
    pid: Pid,
    runs: &[(u64, u64)],
    writer: &mut ImageWriter,
    copied: &mut Copied,
) -> Result<u64, MemoryError> {
    let mut pieces = Vec::new();
    for &(start, end) in runs {
        for (at, len) in writer.windows(start, end - start).collect::<Vec<_>>() {
            memory::add_to_pieces(&mut pieces, at, at + len);
        }
    }
    let mut bytes = 0;
    let mut got = Vec::new();
    let chunker = writer.chunker_for(pid.as_raw());
    let mut early = EarlyWriteback::new(pid, writer);
    memory::read_pieces(pid, &pieces, Some(&chunker), |at, read| {
        let buf = match read {
            Ok(memory::Piece { buf, prepared: prepared @ Some(_) }) => {
                let prepared = prepared.take().expect("matched");
                let ids = writer.store_prepared(at, buf, prepared).map_err(MemoryError::Write)?;
                let windows: Vec<(u64, u64)> = writer.windows(at, buf.len() as u64).collect();
                for ((s, l), id) in windows.into_iter().zip(ids) {
                    copied.first.insert(s, (l, id));
                    early.stored(s, l, id, writer);
                }
                buf
            }
            // Unmapped meanwhile: left to the freeze.
            Ok(memory::Piece { prepared: None, .. }) | Err(MemoryError::Read { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        got.extend([at, at + buf.len() as u64]);
        bytes += buf.len() as u64;
        Ok(())
    })?;
    early.look(writer);
    copied.covered = memory::union(&copied.covered, &got);
    Ok(bytes)
}

/// Bytes of a first copy between looks at what the process wrote of them
/// since ([`EarlyWriteback`]).
const LOOK_EVERY: u64 = 64 << 20;

/// The chunks of a first copy that the process has not written since are
/// written to disk as the copy goes on (`ImageWriter::start_writeback`),
/// so that the sync which ends the image finds little left: a live
/// snapshot of an idle 1 GiB process took 1166-1197 ms, 540 of them that
/// sync, and takes 777-895 (3 alternating runs). Those it wrote are copied
/// again and replaced, and started early they cost the disk twice (a 1 GiB
/// process writing 1% of its pages every 10 ms: 2.9 -> 3.6 s when all were
/// started): a process that wrote more than a twentieth of the windows of
/// a look (that one: about half) gets no more of them started (2.85-2.9 s
/// as before).
struct EarlyWriteback {
    pid: Pid,
    pagemap: Option<Pagemap>,
    /// The windows stored since the last look: start, length, chunk.
    since: Vec<(u64, u64, ChunkId)>,
    bytes: u64,
    /// Cleared once the process was found writing much, or a look failed.
    on: bool,
}

impl EarlyWriteback {
    /// Off for a writer that starts the writeback of all it appends (a
    /// kill-mode dump's).
    fn new(pid: Pid, writer: &ImageWriter) -> Self {
        let pagemap = Pagemap::open(pid).ok().filter(|_| !writer.flushes_early());
        EarlyWriteback { pid, on: pagemap.is_some(), pagemap, since: Vec::new(), bytes: 0 }
    }

    /// Window `[start, start + len)` was stored as `id`.
    fn stored(&mut self, start: u64, len: u64, id: ChunkId, writer: &mut ImageWriter) {
        if !self.on {
            return;
        }
        self.since.push((start, len, id));
        self.bytes += len;
        if self.bytes >= LOOK_EVERY {
            self.look(writer);
        }
    }

    /// Start the writeback of the windows stored since the last look that
    /// the process has not written since, unless it wrote many.
    fn look(&mut self, writer: &mut ImageWriter) {
        let mut since = std::mem::take(&mut self.since);
        self.bytes = 0;
        // The pieces come in no particular order.
        since.sort_unstable_by_key(|w| w.0);
        let Some(pagemap) = self.pagemap.as_ref().filter(|_| self.on && !since.is_empty()) else {
            return;
        };
        let pairs: Vec<u64> = since.iter().flat_map(|&(start, len, _)| [start, start + len]).collect();
        let ranges = memory::union(&pairs, &[]);
        let written = match written_in(pagemap, self.pid, ranges.chunks_exact(2).map(|p| p[0]..p[1]), false) {
            Ok(written) => written,
            Err(e) => {
                tracing::debug!("process {}: no early writeback ({e})", self.pid);
                self.on = false;
                return;
            }
        };
        let clean = unwritten(&since, &written);
        if (since.len() - clean.len()) * 20 > since.len() {
            tracing::debug!("process {}: writes much of what was copied: no early writeback", self.pid);
            self.on = false;
            return;
        }
        if let Err(e) = writer.start_writeback(&clean) {
            tracing::debug!("process {}: no early writeback: {e}", self.pid);
            self.on = false;
        }
    }
}

/// Read `runs` of `pid` (write-protected again) into the mirror of
/// `copied`; returns the bytes read. A page that cannot be read (unmapped
/// meanwhile) is lost: the freeze reads it.
fn copy_raw(pid: Pid, runs: &[(u64, u64)], copied: &mut Copied) -> u64 {
    let (got, failed) = copied.mirror.fill(pid, &memory::pieces_of(runs));
    copied.add_mirrored(&got);
    copied.covered = memory::union(&copied.covered, &got);
    copied.lost = memory::subtract(&memory::union(&copied.lost, &failed), &got);
    memory::size(&got)
}

/// The runs of a process copied ahead that the freeze found to store:
/// what [`assemble`] puts together once the freeze is over.
#[derive(Debug)]
pub struct Pending {
    pub pid: Pid,
    pub mm: u32,
    /// The runs to put together, in address order.
    pub runs: Vec<(u64, u64)>,
    /// The pages the freeze read into the mirror, as `[start, end)` pairs
    /// in address order.
    pub fresh: Vec<u64>,
    /// Memory not copied ahead (private file mappings' written pages,
    /// mostly) that the freeze read as it was, by address, to be hashed
    /// and compressed once the tree runs again.
    pub raw: Vec<(u64, Vec<u8>)>,
}

/// Put the memory of `pending` into the image: each window from the
/// chunk stored in the first copy when nothing of it changed since, else
/// from the mirror and the first copy's chunks, compressed anew. Returns
/// the bytes taken from what was copied ahead.
pub fn assemble(pending: &Pending, copied: &mut Copied, writer: &mut ImageWriter) -> Result<u64, MemoryError> {
    let pid = pending.pid;
    let in_mirror = memory::union(&copied.mirrored, &pending.fresh);
    let mut used = 0;
    let windows: Vec<(u64, u64)> =
        pending.runs.iter().flat_map(|&(start, end)| writer.windows(start, end - start).collect::<Vec<_>>()).collect();
    let threads = crate::cores().clamp(1, 4);
    let mut next = 0;
    // The windows' bytes, for one group after another: every byte of a
    // window is written over (from the mirror or a chunk) before it is
    // read, so what is left from the last group is never seen, and the
    // memory is zeroed (and faulted in) only once.
    let mut arena: Vec<u8> = Vec::new();
    while next < windows.len() {
        // The windows changed since the first copy, PREFETCHED of them (or
        // PIECE bytes) at a time, each as a part of a run of them that
        // follow one another: put together on all cores, then compressed
        // together on all cores. The others are taken as they were stored.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut jobs: Vec<Job> = Vec::new();
        let mut bytes = 0;
        while next < windows.len() && jobs.len() < PREFETCHED && bytes < memory::PIECE {
            let (at, len) = windows[next];
            next += 1;
            let mirrored = memory::within(at..at + len, &in_mirror);
            let first = copied.first.get(&at).filter(|(l, _)| *l == len);
            if let Some(&(_, id)) = first.filter(|_| mirrored.is_empty()) {
                writer.add_stored_memory(pending.mm, at, len, id).map_err(MemoryError::Write)?;
                used += len;
                continue;
            }
            match runs.last_mut() {
                Some((s, l)) if *s + *l == at => *l += len,
                _ => runs.push((at, len)),
            }
            let fresh: u64 = memory::within(at..at + len, &pending.fresh).iter().map(|r| r.end - r.start).sum();
            used += mirrored.iter().map(|r| r.end - r.start).sum::<u64>() - fresh;
            // The first copy's chunks hold the rest.
            let mut fills = Vec::new();
            let taken: Vec<u64> = mirrored.iter().flat_map(|r| [r.start, r.end]).collect();
            for r in memory::without(at..at + len, &taken) {
                let mut a = r.start;
                while a < r.end {
                    let found = copied.first.range(..=a).next_back().filter(|(&s, &(l, _))| a < s + l);
                    let Some((&s, &(l, id))) = found else {
                        return Err(MemoryError::Read {
                            pid,
                            start: a,
                            what: "the page was neither copied ahead nor read in the freeze".into(),
                        });
                    };
                    let e = (s + l).min(r.end);
                    fills.push((a..e, id, s));
                    used += e - a;
                    a = e;
                }
            }
            jobs.push(Job { at, len, mirrored, fills });
            bytes += len;
        }
        if jobs.is_empty() {
            continue;
        }
        // The chunks, read on all cores when the parent's (for a tracking
        // kept since it was written), here when this image's.
        let ids: Vec<ChunkId> = jobs.iter().flat_map(|j| j.fills.iter().map(|f| f.1)).collect();
        let chunks = writer.read_chunks(&ids).map_err(MemoryError::Write)?;
        // The windows one after another, as the runs they make.
        if arena.len() < bytes as usize {
            arena.resize(bytes as usize, 0);
        }
        let mut slices: Vec<&mut [u8]> = Vec::with_capacity(jobs.len());
        let mut free = &mut arena[..];
        for job in &jobs {
            let (window, after) = std::mem::take(&mut free).split_at_mut(job.len as usize);
            slices.push(window);
            free = after;
        }
        let mirror = copied.mirror.reader();
        put_together(&jobs, slices, mirror, &chunks, threads).map_err(|what| MemoryError::Mirror { pid, what })?;
        let mut at = 0;
        let runs: Vec<(u64, &[u8])> = runs
            .iter()
            .map(|&(start, len)| {
                at += len as usize;
                (start, &arena[at - len as usize..at])
            })
            .collect();
        writer.add_memory_runs(pending.mm, &runs).map_err(MemoryError::Write)?;
    }
    Ok(used)
}

/// A window [`assemble`] puts together: its pages in the mirror, and the
/// others as (addresses, chunk, the chunk's first address).
struct Job {
    at: u64,
    len: u64,
    mirrored: Vec<Range<u64>>,
    fills: Vec<(Range<u64>, ChunkId, u64)>,
}

/// Fill each window's bytes (`slices`, one per job) from the mirror and
/// the chunks, on a few threads.
fn put_together(
    jobs: &[Job],
    mut slices: Vec<&mut [u8]>,
    mirror: MirrorReader<'_>,
    chunks: &HashMap<ChunkId, Arc<Vec<u8>>>,
    threads: usize,
) -> Result<(), String> {
    let fill = |job: &Job, buf: &mut [u8]| -> Result<(), String> {
        for r in &job.mirrored {
            mirror.read(r.start, &mut buf[(r.start - job.at) as usize..(r.end - job.at) as usize])?;
        }
        for (r, id, s) in &job.fills {
            let chunk = chunks.get(id).expect("read above");
            buf[(r.start - job.at) as usize..(r.end - job.at) as usize]
                .copy_from_slice(&chunk[(r.start - s) as usize..(r.end - s) as usize]);
        }
        Ok(())
    };
    let per = jobs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut workers = Vec::new();
        let mut slices = &mut slices[..];
        for part in jobs.chunks(per) {
            let (mine, others) = std::mem::take(&mut slices).split_at_mut(part.len());
            slices = others;
            workers.push(scope.spawn(move || part.iter().zip(mine.iter_mut()).try_for_each(|(j, b)| fill(j, b))));
        }
        workers.into_iter().try_for_each(|w| w.join().expect("assembler panicked"))
    })
}

/// The chunks of `windows` (start, length, chunk; in address order) that
/// no run of `written` (`[start, end)`, in address order) touches.
fn unwritten(windows: &[(u64, u64, ChunkId)], written: &[(u64, u64)]) -> Vec<ChunkId> {
    let mut clean = Vec::with_capacity(windows.len());
    let mut w = written.iter().peekable();
    for &(start, len, id) in windows {
        while w.peek().is_some_and(|r| r.1 <= start) {
            w.next();
        }
        if w.peek().is_none_or(|r| r.0 >= start + len) {
            clean.push(id);
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window is clean unless a written run overlaps it, however the runs
    /// fall: within one, across two, ending where one starts.
    #[test]
    fn windows_no_written_run_touches_are_clean() {
        let id = |k: u8| ChunkId([k; 32]);
        let windows: Vec<(u64, u64, ChunkId)> = (0..6).map(|k| (k * 0x1000, 0x1000, id(k as u8))).collect();
        assert_eq!(unwritten(&windows, &[]), (0..6).map(id).collect::<Vec<_>>());
        // In window 1; across windows 3 and 4; none of them ends where the
        // next window starts.
        let written = [(0x1800, 0x1900), (0x3f00, 0x4100)];
        assert_eq!(unwritten(&windows, &written), [id(0), id(2), id(5)]);
        // Runs ending exactly at a window's start, or starting at its end,
        // leave it clean.
        assert_eq!(unwritten(&windows, &[(0x0, 0x1000), (0x3000, 0x3000 + 1)]), [id(1), id(2), id(4), id(5)]);
        assert!(unwritten(&windows, &[(0, 0x6000)]).is_empty());
    }
}
