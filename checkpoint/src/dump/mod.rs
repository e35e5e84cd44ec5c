//! `dump`: capture a running process tree into an image.
//!
//! The tree is the target process and all its descendants (or every
//! process of a cgroup, and theirs), zombies included.
//!
//! 1. Pre-flight: read /proc only, and list every object stasis cannot
//!    handle (fd kinds, mapping kinds, a tracer, seccomp, links between
//!    processes it cannot re-create) in one error, with the tree untouched.
//! 2. Pre-copy (a live snapshot, when asked): write-protect the tree's
//!    private memory through userfaultfd and copy it while the tree runs;
//!    see [`precopy`].
//! 3. Freeze: stop every thread of every process under ptrace (through the
//!    cgroup freezer when asked); see [`crate::freeze`].
//! 4. Collect, process by process: threads' registers and signal state,
//!    attributes, fds (from pidfd_getfd copies; an open file description
//!    shared between processes is recorded once, by kcmp), and the pages of
//!    its memory (those written since the pre-copy, or all).
//! 5. Write the image, then open it and read every frame back, checking
//!    it against the checksum taken as it was written (its contents were
//!    hashed as they were read from the process).
//! 6. Kill the tree, or with `leave_running` let it go unchanged. On every
//!    error path the threads are detached and run on as they were.

pub(crate) mod memory;
mod pidmap;
pub mod precopy;
mod task;
mod tcp_hold;
mod timers;
pub mod tracking;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stasis_image::records::{self, DumpStats, Fd, Phase, ProcessTree};
use stasis_image::{Image, ImageWriter, WriteOptions, WriteStats};
use stasis_sys::pidfd::PidFd;
use stasis_sys::{kcmp, Pid, Signal};

pub use memory::{MemoryError, Pages, Planned};

use crate::fd::{self, Seen};
use crate::freeze::{self, FreezeError, Frozen, Target};
use crate::proc::{self, Stat};
use tcp_hold::TcpHold;

/// What to dump and how.
#[derive(Clone, Debug)]
pub struct DumpOptions {
    /// A process and its descendants, or every process of a cgroup.
    pub target: Target,
    /// The image directory (created; must not hold an image yet).
    pub images: PathBuf,
    /// Let the process run on after the dump instead of killing it.
    pub leave_running: bool,
    /// Freeze through this cgroup's freezer (v1 or v2) instead of ptrace
    /// alone. The target must be in it.
    pub cgroup: Option<PathBuf>,
    pub write: WriteOptions,
    /// Set from outside (e.g. on SIGINT) to stop the dump at the next phase
    /// boundary; the process is then let go unchanged.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Told the bytes of memory stored so far, and the total.
    pub progress: Option<crate::ProgressFn>,
    /// Called once the tree is frozen, before anything of it is read: a
    /// coherent snapshot takes its volume snapshot here. An error lets the
    /// tree go unchanged.
    pub while_frozen: Option<WhileFrozen>,
    /// Copy the tree's private memory while it runs, before the freeze,
    /// which then copies only what was written since ([`precopy`]). On a
    /// kernel that cannot track writes, everything is copied frozen.
    pub pre_copy: bool,
    /// Leave out the connections waiting in a TCP listener's accept queue
    /// (their clients see a reset after the restore) instead of refusing
    /// the dump, as `criu --skip-in-flight`.
    pub skip_in_flight: bool,
    /// With `pre_copy`: copy ahead until what the freeze has to copy should
    /// take no longer than this, and refuse the dump (the tree running on)
    /// when the tree writes faster than that can be reached.
    pub max_freeze: Option<Duration>,
    /// With `pre_copy` and `leave_running`: keep tracking the tree's writes
    /// after the dump (the freeze protects the pages written again), for
    /// [`dump_keeping`] to return, so that the next dump reads only what
    /// is written from here on ([`tracking`]).
    pub keep_tracking: bool,
}

/// What a coherent snapshot does while the tree is frozen.
#[derive(Clone)]
pub struct WhileFrozen(pub Arc<dyn Fn() -> Result<records::VolumeSnapshot, String> + Send + Sync>);

impl std::fmt::Debug for WhileFrozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WhileFrozen")
    }
}

/// What a successful dump did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DumpReport {
    /// The root of the tree (the first root, for a cgroup).
    pub pid: i32,
    pub images: PathBuf,
    /// Live processes, and zombies, in the image.
    pub processes: usize,
    pub zombies: usize,
    /// Threads of all processes.
    pub threads: usize,
    pub killed: bool,
    pub frozen_us: u64,
    pub total_us: u64,
    pub phases: Vec<(String, u64)>,
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub write: WriteStats,
    /// What the live snapshot copied while the tree ran, when it did.
    pub pre_copy: Option<PreCopyReport>,
    /// Whether the write tracking was kept, and by whom (set by whoever
    /// hands it over: [`tracking::hand_over`]).
    pub tracking: Option<tracking::KeptReport>,
}

/// What the copy of memory ahead of the freeze did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PreCopyReport {
    /// Bytes read while the tree ran.
    pub bytes_read: u64,
    /// Bytes of the image taken from what was copied ahead (not read in
    /// the freeze).
    pub bytes_used: u64,
    /// Rounds of copying what was written, after the first copy.
    pub rounds: usize,
    /// Why something was not tracked (copied in the freeze instead), or
    /// why nothing was: one line each.
    pub untracked: Vec<String>,
    /// Bytes written since the last round, copied in the freeze, and how
    /// long that was expected to take (microseconds).
    pub left_for_freeze: u64,
    pub predicted_freeze_us: Option<u64>,
    /// Processes whose writes were tracked since the parent image (kept
    /// by the dump that wrote it): only what they wrote since was read.
    pub resumed: usize,
}

/// Why a dump failed. The process is left running, unchanged, in every case
/// but [`DumpError::Kill`].
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("no process {0}")]
    NoProcess(Pid),
    #[error(
        "process {pid} was not dumped (it runs on): it writes its memory faster than stasis copies it ahead; after \
         {rounds} rounds, the {:.1} MiB written since the last would take {} to copy frozen, more than \
         --max-freeze {}",
        *left as f64 / (1u64 << 20) as f64,
        predicted.map_or("an unknown time".to_owned(), |p| format!("{:.3} ms", p.as_secs_f64() * 1e3)),
        format!("{:.3} ms", max.as_secs_f64() * 1e3)
    )]
    FreezeTooLong { pid: Pid, rounds: usize, left: u64, predicted: Option<Duration>, max: Duration },
    #[error("process {pid} cannot be dumped: {reason}")]
    Refused { pid: Pid, reason: String },
    #[error("process {pid} holds what stasis cannot dump yet: {}", .problems.join("; "))]
    Unsupported { pid: Pid, problems: Vec<String> },
    #[error("cannot stop process {pid}")]
    Freeze { pid: Pid, source: FreezeError },
    #[error("cannot read {what} of process {pid}")]
    Proc { pid: Pid, what: String, source: std::io::Error },
    #[error("cannot capture thread {tid}: {what}")]
    Thread { tid: Pid, what: String },
    #[error("cannot capture fd {fd} of process {pid}: {what}")]
    Fd { pid: Pid, fd: i32, what: String },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("cannot write the image")]
    Write(#[from] stasis_image::WriteError),
    #[error("the image written to {dir} does not verify")]
    Verify { dir: PathBuf, source: stasis_image::ReadError },
    #[error("the image is complete, but process {pid} could not be killed: {what}")]
    Kill { pid: Pid, what: String },
    #[error("the volume snapshot failed ({what}); process {pid} was let go unchanged")]
    Volume { pid: Pid, what: String },
    #[error("cancelled; process {0} was let go unchanged")]
    Cancelled(Pid),
    #[error("process {pid} changed {what}; no image was kept, and it runs on: dump it again")]
    Raced { pid: Pid, what: String },
}

/// Times of the phases of one dump.
struct Clock {
    start: Instant,
    last: Instant,
    phases: Vec<(String, u64)>,
}

impl Clock {
    fn new() -> Self {
        let now = Instant::now();
        Clock { start: now, last: now, phases: Vec::new() }
    }

    fn phase(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.push((name.to_owned(), (now - self.last).as_micros() as u64));
        self.last = now;
    }
}

/// Dump a process tree; see the module docs for the steps.
pub fn dump(opts: &DumpOptions) -> Result<DumpReport, DumpError> {
    dump_keeping(opts).map(|(report, _)| report)
}

/// [`dump`], returning the write tracking kept with
/// [`DumpOptions::keep_tracking`] (for each process the freeze could
/// protect again), to hand to a holder ([`tracking::hand_over`]).
/// Dropping it ends the tracking.
pub fn dump_keeping(opts: &DumpOptions) -> Result<(DumpReport, Vec<tracking::Kept>), DumpError> {
    let mut clock = Clock::new();
    let cancelled = || opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));

    // The image directory is checked before the process is touched.
    if holds_image(&opts.images) {
        return Err(DumpError::Write(stasis_image::WriteError::AlreadyExists { path: opts.images.clone() }));
    }
    let listed = preflight(&opts.target)?;
    let pid = listed.root;
    if opts.cgroup.is_none() {
        for p in &listed.pids {
            if let Some(cg) = freeze::frozen_cgroup_of(*p) {
                return Err(DumpError::Refused {
                    pid: *p,
                    reason: format!(
                        "it is in frozen cgroup {0}; pass --cgroup {0} to dump it (it stays frozen)",
                        cg.display()
                    ),
                });
            }
        }
    }
    clock.phase("preflight");
    if cancelled() {
        return Err(DumpError::Cancelled(pid));
    }

    // The image is started before the freeze: a live snapshot stores the
    // memory it copies while the tree runs.
    // A tree to be killed must be on disk before it is: its pack goes to
    // disk while it is written, so the last sync is short. One let run on
    // may replace most of what it copies ahead: left to the page cache.
    let write = WriteOptions { flush_early: !opts.leave_running, ..opts.write.clone() };
    let mut writer = ImageWriter::create(&opts.images, write)?;
    let mut pre_copy_report = None;
    let mut pre_copy = None;
    // Tracking is kept only for a tree left running.
    let keep = opts.keep_tracking && opts.leave_running;
    if opts.pre_copy {
        match precopy::unavailable() {
            Some(why) if opts.max_freeze.is_some() => {
                return Err(DumpError::Refused {
                    pid,
                    reason: format!(
                        "--max-freeze needs a live snapshot, and memory cannot be copied ahead here: {why}"
                    ),
                });
            }
            Some(why) => {
                tracing::warn!("memory is copied with the tree frozen: {why}");
                pre_copy_report = Some(PreCopyReport { untracked: vec![why], ..PreCopyReport::default() });
            }
            None => {
                // The tracking the last dump of these processes kept, if
                // any, goes on here (and ends with this dump unless kept).
                let kept = tracking::take_back(&listed.pids);
                let p = precopy::run(&listed.pids, &mut writer, opts.max_freeze, kept, keep)?;
                for why in &p.untracked {
                    tracing::info!("copied in the freeze instead: {why}");
                }
                clock.phase("pre-copy");
                if let Some(max) = opts.max_freeze {
                    if p.predicted_freeze.is_none_or(|d| d > max) {
                        let (rounds, left, predicted) = (p.rounds, p.left, p.predicted_freeze);
                        // Dropped: every mapping unregistered.
                        drop(p);
                        return Err(DumpError::FreezeTooLong { pid, rounds, left, predicted, max });
                    }
                }
                pre_copy = Some(p);
            }
        }
        if cancelled() {
            return Err(DumpError::Cancelled(pid));
        }
    }

    // A live snapshot reads each process's smaps now, while it runs (the
    // kernel walks every page of it for the sizes: ~18 ms a GiB), and in
    // the freeze only its maps ([`Layouts`]).
    let early = Layouts::read_early(opts.leave_running && pre_copy.is_some(), &listed.pids);
    if !early.by_pid.is_empty() {
        clock.phase("mappings");
        // What the tree wrote while its smaps were read (a writer of 1 GiB
        // at 1% every 10 ms: 10-20 MB) is copied now, not frozen.
        if pre_copy.as_mut().is_some_and(|p| p.last_rounds()) {
            clock.phase("last rounds");
        }
    }
    let mut frozen = freeze::freeze(&opts.target, opts.cgroup.as_deref()).map_err(|source| match source {
        FreezeError::NoProcess(p) => DumpError::NoProcess(p),
        source => DumpError::Freeze { pid, source },
    })?;
    let pid = frozen.pid();
    clock.phase("freeze");

    // From here until release or kill, `frozen` detaches on drop: every `?`
    // lets the tree go unchanged.
    let volume = match &opts.while_frozen {
        Some(hook) => {
            let started = Instant::now();
            let mut v = (hook.0)().map_err(|what| DumpError::Volume { pid, what })?;
            v.snapshot_us = started.elapsed().as_micros() as u64;
            clock.phase("volume snapshot");
            Some(v)
        }
        None => None,
    };
    let Collected { mut tree, mut plans, contents, objects, tcp, ptys, early_flags } =
        collect(&mut frozen, opts.skip_in_flight, &early)?;
    let mut ptys = Some(ptys);
    tree.volume = volume;
    clock.phase("collect");
    if cancelled() {
        return Err(DumpError::Cancelled(pid));
    }

    let mut mem_stats = memory::MemoryStats::default();
    let mut stored_before = 0;
    let mut pending = Vec::new();
    // The pids stasis sees (the tree's may be those of its own namespace).
    let outer: Vec<Pid> = frozen.processes().iter().map(|p| p.pid()).collect();
    // Pages a child still shares with its parent are its parent's to store.
    for i in 0..tree.processes.len() {
        // Parents come before their children.
        let Some(j) = tree.processes[..i].iter().position(|q| q.pid == tree.processes[i].ppid) else { continue };
        let (head, tail) = plans.split_at_mut(i);
        let (parent_plans, mine) = (&head[j], &mut tail[0]);
        let shared = memory::shared_with_parent(outer[i], mine, outer[j], parent_plans)?;
        let p = &mut tree.processes[i];
        for (v, plan) in p.vmas.iter_mut().zip(mine.iter()) {
            v.from_parent = plan.vma.from_parent;
        }
        p.from_parent = shared;
    }
    for ((p, plans), &pid) in tree.processes.iter().zip(&plans).zip(&outer) {
        let progress = |done, total| {
            if let Some(f) = &opts.progress {
                (f.0)(stored_before + done, stored_before + total);
            }
        };
        let copied = pre_copy.as_ref().and_then(|c| c.of(pid));
        let (stats, rest) = memory::store(pid, plans, &p.from_parent, p.mm, &mut writer, &progress, copied)?;
        pending.extend(rest);
        stored_before += stats.pages_written * 4096;
        mem_stats.pages_scanned += stats.pages_scanned;
        mem_stats.pages_written += stats.pages_written;
    }
    for (id, size, mm, file, sysv) in objects {
        let stored = match sysv {
            Some(shmid) => memory::store_sysv(shmid, id, mm, &mut writer)?,
            None => memory::store_object(&file, id, size, mm, &mut writer)?,
        };
        mem_stats.pages_scanned += size.div_ceil(4096);
        mem_stats.pages_written += stored / 4096;
    }
    for (mm, data) in contents {
        writer.add_memory(mm, 0, &data)?;
    }
    clock.phase("memory");
    if cancelled() {
        return Err(DumpError::Cancelled(pid));
    }

    // With --leave-running the tree is let go as soon as everything of it
    // is captured: writing the image out and verifying it need not keep it
    // stopped. Killing waits for the verified image.
    let killed = !opts.leave_running;
    let mut frozen = Some(frozen);
    let mut frozen_for = None;
    let mut tcp = Some(tcp);
    if !killed {
        let f = frozen.take().expect("still held");
        frozen_for = Some(f.since().elapsed());
        // Connections leave repair mode before their processes run; the
        // terminals' queued bytes go back in.
        tcp.take().expect("still held").let_go().map_err(|what| DumpError::Fd { pid, fd: -1, what })?;
        for p in ptys.take().into_iter().flatten() {
            p.put_back().map_err(|what| DumpError::Fd { pid, fd: -1, what })?;
        }
        f.release().map_err(|source| DumpError::Freeze { pid, source })?;
        clock.phase("release");
        early.check(&early_flags)?;
    }
    // Everything is read: the write protection comes off, once the tree
    // runs again (it takes a walk of every page table entry it set, and
    // meanwhile a first write to a page only costs the writer a fault the
    // kernel resolves by itself).
    if let Some(p) = pre_copy.as_mut().filter(|_| !keep) {
        p.stop_tracking();
    }
    let mut kept_tracking = Vec::new();
    // The memory copied ahead and the pages read in the freeze are put
    // together, with the tree running again unless it is to be killed.
    if let Some(mut pre) = pre_copy.take() {
        let mut used = 0;
        for p in &pending {
            let raw: Vec<(u64, &[u8])> = p.raw.iter().map(|(at, buf)| (*at, buf.as_slice())).collect();
            if !raw.is_empty() {
                writer.add_memory_runs(p.mm, &raw)?;
            }
            if !p.runs.is_empty() {
                let copied = pre.of_mut(p.pid).expect("pending memory is of a process copied ahead");
                used += precopy::assemble(p, copied, &mut writer)?;
            }
        }
        pre_copy_report = Some(PreCopyReport {
            bytes_read: pre.bytes_read,
            bytes_used: used,
            rounds: pre.rounds,
            untracked: pre.untracked.clone(),
            left_for_freeze: pre.left,
            predicted_freeze_us: pre.predicted_freeze.map(|d| d.as_micros() as u64),
            resumed: pre.resumed,
        });
        if keep {
            kept_tracking = pre.keep();
        }
        clock.phase("assemble");
    }
    let held_so_far = frozen.as_ref().map_or(Duration::ZERO, |f| f.since().elapsed());
    tree.stats = Some(DumpStats {
        // For a killed tree, until the image is written; set again once
        // the tree is killed (below).
        frozen_us: frozen_for.unwrap_or(held_so_far).as_micros() as u64,
        total_us: clock.start.elapsed().as_micros() as u64,
        phases: clock.phases.iter().map(|(n, us)| Phase { name: n.clone(), us: *us }).collect(),
        pages_scanned: mem_stats.pages_scanned,
        pages_written: mem_stats.pages_written,
        pages_skipped: mem_stats.pages_scanned - mem_stats.pages_written,
        bytes_logical: writer.stats().logical_bytes,
        bytes_stored: writer.stats().stored_bytes,
    });
    let threads = tree.processes.iter().map(|p| p.threads.len()).sum();
    let (processes, zombies) = (tree.processes.len(), tree.zombies.len());
    let mut stats = tree.stats.clone().expect("set above");
    let mm_of: HashMap<Pid, u32> = outer.iter().zip(&tree.processes).map(|(&pid, p)| (pid, p.mm)).collect();
    let chunk_size = writer.chunk_size();
    writer.set_processes(tree);
    let summary = writer.finish()?;
    // Less than before where chunks copied ahead were left out.
    stats.bytes_stored = summary.stats.stored_bytes;
    clock.phase("write");

    // Kill only what is safely on disk: read it back and check every frame
    // is what was written (its contents were hashed as they were read).
    if let Err(source) = Image::open(&opts.images).and_then(|i| i.verify_written(&summary.checks)) {
        // Not an image anyone should use: take it away.
        let _ = std::fs::remove_file(opts.images.join(stasis_image::MANIFEST_NAME));
        let _ = std::fs::remove_file(opts.images.join(stasis_image::PACK_NAME));
        return Err(DumpError::Verify { dir: opts.images.clone(), source });
    }
    clock.phase("verify");

    if let Some(mut f) = frozen.take() {
        // Every process, then the threads let go: a stopped process dies
        // at once, and none of them runs another instruction.
        for p in f.processes().iter() {
            let kill =
                || -> Result<(), stasis_sys::pidfd::Error> { PidFd::open(p.pid())?.send_signal(Signal::SIGKILL) };
            kill().map_err(|e| DumpError::Kill { pid: p.pid(), what: crate::chain(&e) })?;
        }
        frozen_for = Some(f.since().elapsed());
        // Detaching from threads that are dying may fail; they are gone.
        let _ = f.release();
        // The connections' sockets went away in repair mode, silently; the
        // lock holds their peers off until restore.
        if let Some(t) = tcp.take() {
            t.keep();
        }
        ptys.take().into_iter().flatten().for_each(fd::pty::Captured::killed);
        clock.phase("kill");
    }
    let frozen_for = frozen_for.unwrap_or_default();
    let total_us = clock.start.elapsed().as_micros() as u64;
    if killed {
        // One frozen time everywhere: from the first task stopped to the
        // last killed. (On failure the image keeps the time to its write.)
        stats.frozen_us = frozen_for.as_micros() as u64;
        stats.total_us = total_us;
        stats.phases = clock.phases.iter().map(|(n, us)| Phase { name: n.clone(), us: *us }).collect();
        if let Err(e) = stasis_image::set_dump_stats(&opts.images, stats) {
            tracing::warn!("the image holds the frozen time up to its write, not to the kill: {}", crate::chain(&e));
        }
    }

    let kept = kept_tracking
        .into_iter()
        .filter_map(|(pid, uffd, ranges)| {
            tracking::Kept::now(pid, *mm_of.get(&pid)?, (summary.manifest_hash, chunk_size), uffd, ranges)
        })
        .collect();
    let report = DumpReport {
        pid: pid.as_raw(),
        images: opts.images.clone(),
        processes,
        zombies,
        threads,
        killed,
        frozen_us: frozen_for.as_micros() as u64,
        total_us,
        phases: clock.phases,
        pages_scanned: mem_stats.pages_scanned,
        pages_written: mem_stats.pages_written,
        write: summary.stats,
        pre_copy: pre_copy_report,
        tracking: None,
    };
    Ok((report, kept))
}

/// The tree as pre-flight saw it.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The root (the first root, for a cgroup).
    pub root: Pid,
    /// Every live process, parents before children.
    pub pids: Vec<Pid>,
    pub zombies: Vec<Pid>,
}

/// Look at the tree without stopping it, and refuse it, listing every
/// problem, when it holds something stasis cannot restore.
pub fn preflight(target: &Target) -> Result<Listed, DumpError> {
    let roots = match target {
        Target::Tree(pid) => vec![*pid],
        Target::Cgroup(dir) => {
            freeze::cgroup_roots(dir).map_err(|source| DumpError::Freeze { pid: Pid::from_raw(0), source })?
        }
    };
    let root = roots[0];
    let mut pids = Vec::new();
    let mut zombies = Vec::new();
    let mut stats = Vec::new();
    let mut queue: std::collections::VecDeque<Pid> = roots.iter().copied().collect();
    while let Some(pid) = queue.pop_front() {
        if pids.contains(&pid) || zombies.contains(&pid) {
            continue;
        }
        let stat = match proc::stat(pid) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && roots.contains(&pid) => {
                return Err(DumpError::NoProcess(pid))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(DumpError::Proc { pid, what: "stat".into(), source }),
        };
        let refuse = |reason: String| Err(DumpError::Refused { pid, reason });
        if stat.flags & proc::PF_KTHREAD != 0 {
            return refuse("it is a kernel thread".into());
        }
        if stat.state == 'Z' || stat.state == 'X' {
            if roots.contains(&pid) {
                return refuse("it has exited (zombie)".into());
            }
            zombies.push(pid);
            stats.push((pid, stat));
            continue;
        }
        if is_self_or_ancestor(pid) {
            return refuse("it is stasis itself or one of its ancestors".into());
        }
        queue.extend(proc::children(pid).unwrap_or_default());
        pids.push(pid);
        stats.push((pid, stat));
    }

    let mut problems = Vec::new();
    let mut seen = Vec::new();
    let tree = pids.len() + zombies.len() > 1;
    for &pid in &pids {
        let proc_err = |what: &str| {
            let what = what.to_owned();
            move |source: std::io::Error| DumpError::Proc { pid, what, source }
        };
        let at = |p: String| if tree { format!("process {pid}: {p}") } else { p };
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let status = match proc::read(pid, "status") {
            Err(e) if gone(&e) && pid != root => continue,
            r => proc::parse_status(&r.map_err(proc_err("status"))?),
        };
        if status.tracer_pid != 0 {
            problems.push(at(format!("it is being traced by process {}", status.tracer_pid)));
        }
        problems.extend(pid_namespace_problem(root, pid).map(at));
        let ns = |name: &str| std::fs::read_link(proc::path(pid, &format!("ns/{name}"))).ok();
        let own = |name: &str| std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        // A child made in the parent's cgroup namespace would be in it
        // again: one that left it for stasis's cannot be made.
        let parent = stats.iter().find(|(p, _)| *p == pid).map(|(_, s)| Pid::from_raw(s.ppid));
        if let Some(parent) = parent.filter(|p| pids.contains(p)) {
            let parents = std::fs::read_link(proc::path(parent, "ns/cgroup")).ok();
            if ns("cgroup") == own("cgroup") && parents != own("cgroup") {
                problems.push(at(format!(
                    "it is in stasis's cgroup namespace, and its parent {parent} in another (not supported yet)"
                )));
            }
        }
        // A time namespace of its own is made again with its offsets; one
        // made for its children alone (no child in it yet, or children in
        // another namespace than their parent) cannot be told from outside.
        if ns("time_for_children") != ns("time") {
            problems.push(at("it made a time namespace for its children (not supported yet)".into()));
        }
        // A child back in stasis's own time namespace, its parent in
        // another: the restore has no process of that namespace to enter.
        if let Some(parent) = parent.filter(|p| pids.contains(p)) {
            let parents = std::fs::read_link(proc::path(parent, "ns/time")).ok();
            if ns("time") == own("time") && parents != own("time") {
                problems.push(at(format!(
                    "it is in stasis's time namespace, and its parent {parent} in another (not supported yet)"
                )));
            }
        }
        let m = match proc::read(pid, "smaps") {
            Err(e) if gone(&e) && pid != root => continue,
            r => proc::parse_smaps(&r.map_err(proc_err("smaps"))?).map_err(|e| DumpError::Proc {
                pid,
                what: "smaps".into(),
                source: std::io::Error::other(e),
            })?,
        };
        // Said once for all such mappings: the usual cause is one.
        let (filled, m): (Vec<_>, Vec<_>) = m.iter().partition(|m| m.has_flag("um") || m.has_flag("ui"));
        if let Some(first) = filled.first() {
            problems.push(at(format!(
                "{} of its mappings (the first {:#x}-{:#x} {}) are registered with a userfaultfd that fills their \
                 missing pages: a process still loading its memory after `stasis restore --lazy` (dump it once that \
                 restore has ended), or one with a fault handler of its own",
                filled.len(),
                first.start,
                first.end,
                first.name
            )));
        }
        problems.extend(m.iter().filter_map(|m| memory::plan(m).err()).map(at));
        let fds = match fd::scan(pid) {
            Err(e) if gone(&e) && pid != root => continue,
            r => r.map_err(proc_err("fds"))?,
        };
        seen.push((pid, fds));
    }
    problems.extend(fd_problems(&seen));
    problems.extend(link_problems(&stats, &Leaderless::find(&stats)));
    problems.extend(shared_vm_problems(&pids, &stats)?);
    if !problems.is_empty() {
        return Err(DumpError::Unsupported { pid: root, problems });
    }
    Ok(Listed { root, pids, zombies })
}

/// Every fd that cannot be dumped.
fn fd_problems(seen: &[(Pid, Vec<Seen>)]) -> Vec<String> {
    let tree = seen.len() > 1;
    let pids: HashSet<i32> = seen.iter().map(|(p, _)| p.as_raw()).collect();
    let mut problems = Vec::new();
    for (pid, fds) in seen {
        let at = |p: String| if tree { format!("process {pid}: {p}") } else { p };
        for s in fds {
            if let Err(what) = fd::locks(*pid, s.fd, s.info.flags, &s.info.locks) {
                problems.push(at(format!("fd {} ({}) holds {what}", s.fd, s.target)));
            }
            // flock: held by the description, which a live process outside
            // the tree that took it still shares (flock(1) running a job).
            for l in s.info.locks.iter().filter(|l| l.kind == "FLOCK") {
                if l.pid > 0 && !pids.contains(&l.pid) && Path::new(&format!("/proc/{}", l.pid)).exists() {
                    problems.push(at(format!(
                        "fd {} ({}) holds a flock taken by process {} outside the tree, which still shares it \
                         (dump that process too)",
                        s.fd, s.target, l.pid
                    )));
                }
            }
            match &s.kind {
                // Socket kinds carry their own article ("an established TCP ...").
                Err(what) if what.starts_with("a ") || what.starts_with("an ") => {
                    problems.push(at(format!("fd {} is {what} ({})", s.fd, s.target)))
                }
                Err(what) => problems.push(at(format!("fd {} is a {what} ({})", s.fd, s.target))),
                Ok(_) => {}
            }
        }
    }
    problems
}

/// Mark each pipe with the ends the tree holds (its processes' fds and
/// the fds in flight on its sockets). Where only the write end is held,
/// the queued bytes are the outside reader's: they stay in the original
/// pipe for it and are not restored.
fn mark_pipe_ends(pipes: &mut [records::Pipe], processes: &[records::Process], sockets: &[records::UnixSocket]) {
    let passed = sockets.iter().flat_map(|s| &s.passed).flat_map(|m| &m.fds);
    let mut held: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
    for f in processes.iter().flat_map(|p| &p.fds).chain(passed) {
        if let Some(records::fd::Kind::Pipe(id)) = f.kind {
            let ends = held.entry(id).or_default();
            match f.flags as i32 & stasis_sys::nix::libc::O_ACCMODE {
                stasis_sys::nix::libc::O_RDONLY => ends.0 = true,
                stasis_sys::nix::libc::O_WRONLY => ends.1 = true,
                _ => *ends = (true, true),
            }
        }
    }
    for p in pipes {
        let ends = match held.get(&p.id) {
            Some((true, false)) => records::PipeEnds::ReadOnly,
            Some((false, true)) => records::PipeEnds::WriteOnly,
            _ => records::PipeEnds::Both,
        };
        p.set_ends(ends);
        if ends == records::PipeEnds::WriteOnly {
            p.data.clear();
        }
    }
}

/// The pid a process has inside its own PID namespace, when that is not
/// the agent's.
fn nested_pid(pid: Pid) -> Option<i32> {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let theirs = ns(&pid.to_string())?;
    if Some(&theirs) == ns("self").as_ref() {
        return None;
    }
    stasis_sys::pidns::ns_pids(pid).last().copied()
}

/// The PID namespace of a tree below stasis's, by the root's: the
/// namespace whose pids the image will hold ([`pidmap`]).
fn tree_pid_namespace(root: Pid) -> Option<PathBuf> {
    nested_pid(root)?;
    std::fs::read_link(format!("/proc/{root}/ns/pid")).ok()
}

/// A process of a tree below stasis's PID namespace must be in the root's
/// namespace (the image holds the pids of one), and not its init.
fn pid_namespace_problem(root: Pid, pid: Pid) -> Option<String> {
    let ns = |p: Pid| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    if ns(pid) != ns(root) {
        let inside = nested_pid(pid).unwrap_or(0);
        return Some(format!(
            "it runs in a PID namespace of its own below the root's, as pid {inside} there (a tree spanning PID \
             namespaces is not supported yet)"
        ));
    }
    match nested_pid(pid) {
        Some(1) => Some(
            "it is the init (pid 1) of its PID namespace, which cannot be restored as a process of one (not \
             supported yet)"
                .into(),
        ),
        _ => None,
    }
}

/// Processes sharing one address space: a vfork child (or a CLONE_VM one)
/// runs on its parent's memory, which restore would split in two. (The
/// parent waits in vfork, where no ptrace interrupt can stop it: this must
/// be found before the freeze.) Processes sharing one fd table are restored
/// when each shares it with its parent (forked with CLONE_FILES), as a
/// restore forks them; a table shared otherwise (its holder's parent
/// unshared it since) is refused.
fn shared_vm_problems(pids: &[Pid], stats: &[(Pid, Stat)]) -> Result<Vec<String>, DumpError> {
    let kcmp_err =
        |pid: Pid| move |e: stasis_sys::Errno| DumpError::Proc { pid, what: "kcmp".into(), source: e.into() };
    let mut problems = Vec::new();
    for (i, &a) in pids.iter().enumerate() {
        for &b in &pids[i + 1..] {
            match kcmp::same_vm(a, b) {
                Ok(true) => problems.push(format!(
                    "processes {a} and {b} share one address space (vfork or CLONE_VM; not supported yet)"
                )),
                Ok(false) | Err(stasis_sys::Errno::ESRCH) => {}
                Err(e) => return Err(kcmp_err(b)(e)),
            }
            match kcmp::same_files(a, b) {
                Ok(true) if table_holder(a, pids, stats)? != table_holder(b, pids, stats)? => problems.push(format!(
                    "processes {a} and {b} share one fd table, but not as a parent and the children it forked \
                         with CLONE_FILES (not supported yet)"
                )),
                Ok(_) | Err(stasis_sys::Errno::ESRCH) => {}
                Err(e) => return Err(kcmp_err(b)(e)),
            }
        }
    }
    Ok(problems)
}

/// Whether `pid` shares its parent's fd table (CLONE_FILES), its parent
/// being one of `pids` (as `stats` tell).
fn shares_parents_files(pid: Pid, pids: &[Pid], stats: &[(Pid, Stat)]) -> Result<Option<Pid>, DumpError> {
    let Some(parent) = stats.iter().find(|(p, _)| *p == pid).map(|(_, s)| Pid::from_raw(s.ppid)) else {
        return Ok(None);
    };
    if !pids.contains(&parent) {
        return Ok(None);
    }
    match kcmp::same_files(parent, pid) {
        Ok(true) => Ok(Some(parent)),
        Ok(false) | Err(stasis_sys::Errno::ESRCH) => Ok(None),
        Err(e) => Err(DumpError::Proc { pid, what: "kcmp".into(), source: e.into() }),
    }
}

/// The first process of the line of parents sharing `pid`'s fd table.
fn table_holder(pid: Pid, pids: &[Pid], stats: &[(Pid, Stat)]) -> Result<Pid, DumpError> {
    let mut at = pid;
    while let Some(parent) = shares_parents_files(at, pids, stats)? {
        at = parent;
    }
    Ok(at)
}

/// Sessions and process groups whose leader had exited (no process has
/// their id as its pid, or one that does leads no such session or group
/// any more) and that no process outside the tree is in: restore re-creates
/// each through a short-lived process at the leader's pid. The others not
/// led from inside the tree belong to processes outside it (a shell's job
/// whose first process exited still has the shell's other members), and
/// restored processes take the restorer's.
#[derive(Debug, Default)]
struct Leaderless {
    sessions: BTreeSet<i32>,
    groups: BTreeSet<i32>,
}

impl Leaderless {
    fn find(stats: &[(Pid, Stat)]) -> Leaderless {
        let in_tree: BTreeSet<i32> = stats.iter().map(|(p, _)| p.as_raw()).collect();
        let (mut sessions, mut groups) = (BTreeSet::new(), BTreeSet::new());
        for (_, s) in stats {
            if !in_tree.contains(&s.session) {
                sessions.insert(s.session);
            }
            if !in_tree.contains(&s.pgrp) {
                groups.insert(s.pgrp);
            }
        }
        if sessions.is_empty() && groups.is_empty() {
            return Leaderless::default();
        }
        // Whoever outside the tree is in one of them (its leader included)
        // keeps it alive.
        for (_, s) in proc::all().into_iter().filter(|(p, _)| !in_tree.contains(&p.as_raw())) {
            sessions.remove(&s.session);
            groups.remove(&s.pgrp);
        }
        Leaderless { sessions, groups }
    }
}

/// Sessions and process groups restore cannot re-create: every process
/// inherits its session from its parent (or leads one, or is a root in a
/// session whose leader is gone), and joins a group led by a process of the
/// tree in its session, a group whose leader is gone, or the root's.
fn link_problems(stats: &[(Pid, Stat)], leaderless: &Leaderless) -> Vec<String> {
    let by_pid: HashMap<i32, &Stat> = stats.iter().map(|(p, s)| (p.as_raw(), s)).collect();
    let root_of = |mut pid: i32| {
        while let Some(s) = by_pid.get(&pid).filter(|s| by_pid.contains_key(&s.ppid)) {
            pid = s.ppid;
        }
        by_pid[&pid]
    };
    let mut problems = Vec::new();
    for (pid, s) in stats {
        let pid = pid.as_raw();
        if let Some(parent) = by_pid.get(&s.ppid) {
            if s.session != pid && s.session != parent.session {
                problems.push(format!(
                    "process {pid} is in session {} but its parent {} is in session {} (a process that changed \
                     parents across sessions; not supported yet)",
                    s.session, s.ppid, parent.session
                ));
            }
        }
        if s.pgrp != pid {
            let led_here = by_pid.get(&s.pgrp).is_some_and(|l| l.pgrp == s.pgrp && l.session == s.session);
            let root = root_of(pid);
            let roots_group = !by_pid.contains_key(&s.pgrp) && s.pgrp == root.pgrp && s.session == root.session;
            if !led_here && !roots_group && !leaderless.groups.contains(&s.pgrp) {
                problems.push(format!(
                    "process {pid} is in process group {}, led by a process outside the tree (dump that process \
                     too)",
                    s.pgrp
                ));
            }
        }
    }
    problems
}

fn is_self_or_ancestor(pid: Pid) -> bool {
    let mut p = std::process::id() as i32;
    while p > 0 {
        if p == pid.as_raw() {
            return true;
        }
        p = proc::read(Pid::from_raw(p), "stat").ok().and_then(|s| proc::parse_stat(&s).ok()).map_or(0, |s| s.ppid);
    }
    false
}

/// Everything but memory contents, gathered while the tree is stopped.
fn collect(frozen: &mut Frozen, skip_in_flight: bool, early: &Layouts) -> Result<Collected, DumpError> {
    // Read again now that it is stopped: it may have changed since pre-flight.
    let mut listed = Vec::new();
    let mut problems = Vec::new();
    let mut shmem = ShmemTable::default();
    let mut early_flags = Vec::new();
    let tree = frozen.processes().len() + frozen.zombies().len() > 1;
    for p in frozen.processes().iter() {
        let pid = p.pid();
        let proc_err = |what: &str| {
            let what = what.to_owned();
            move |source| DumpError::Proc { pid, what, source }
        };
        let at = |p: String| if tree { format!("process {pid}: {p}") } else { p };
        let stat = proc::stat(pid).map_err(proc_err("stat"))?;
        let (maps, reused) = early.now(pid)?;
        if reused {
            early_flags.push((pid, maps.clone()));
        }
        let mut plans = Vec::new();
        for m in &maps {
            match memory::plan(m) {
                // The kernel maps [vsyscall] at a fixed address in every process.
                Ok(p) if p.vma.kind == records::VmaKind::Vsyscall as i32 => {}
                Ok(mut p) => {
                    if let Some(object) = memory::shmem_object(m) {
                        let path = proc::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end));
                        let file = std::fs::File::open(&path).map_err(proc_err("shared memory"))?;
                        p.vma.shmem = shmem.id(pid, file, object).map_err(proc_err("shared memory"))?;
                    }
                    plans.push(p)
                }
                Err(e) => problems.push(at(e)),
            }
        }
        let seen = fd::scan(pid).map_err(proc_err("fds"))?;
        listed.push((pid, stat, maps, plans, seen));
    }
    let mut stats: Vec<(Pid, Stat)> = listed.iter().map(|l| (l.0, l.1.clone())).collect();
    let mut zombies = Vec::new();
    for &z in frozen.zombies() {
        let stat = proc::stat(z).map_err(|source| DumpError::Proc { pid: z, what: "stat".into(), source })?;
        zombies.push(records::Zombie {
            pid: z.as_raw(),
            ppid: stat.ppid,
            pgid: stat.pgrp,
            sid: stat.session,
            wait_status: stat.exit_code,
            comm: stat.comm.clone(),
            exit_signal: stat.exit_signal,
        });
        stats.push((z, stat));
    }
    let seen: Vec<(Pid, Vec<Seen>)> = listed.iter().map(|l| (l.0, l.4.clone())).collect();
    problems.extend(fd_problems(&seen));
    let pids: Vec<Pid> = listed.iter().map(|l| l.0).collect();
    problems.extend(shared_vm_problems(&pids, &stats)?);
    let leaderless = Leaderless::find(&stats);
    problems.extend(link_problems(&stats, &leaderless));
    if !problems.is_empty() {
        return Err(DumpError::Unsupported { pid: frozen.pid(), problems });
    }

    let tcp = TcpHold::take(frozen.pid(), &seen)?;
    let mut fds = FdDumper::default();
    let mut processes = Vec::new();
    let mut all_plans = Vec::new();
    let mut kernel = None;
    let mut ring_problems = Vec::new();
    for (i, (fp, (pid, stat, maps, mut plans, seen))) in frozen.processes().iter_mut().zip(listed).enumerate() {
        let proc_err = |what: &str| {
            let what = what.to_owned();
            move |source| DumpError::Proc { pid, what, source }
        };
        for plan in &mut plans {
            identify_mapped_file(pid, &mut plan.vma, &mut fds).map_err(proc_err("mapped files"))?;
        }
        let mut process = task::process(fp, &stat)?;
        // A deleted executable is one of the deleted files mapped: the exe
        // link is made again from it.
        if let Some(exe) = process.exe.as_mut().filter(|e| e.deleted) {
            let mapped = plans.iter().filter_map(|p| p.vma.file.as_ref());
            if let Some(f) = mapped.filter(|f| f.deleted).find(|f| (f.dev, f.ino) == (exe.dev, exe.ino)) {
                exe.contents_mm = f.contents_mm;
            }
        }
        process.mm = i as u32 + 1;
        memory::find_guards(pid, &mut plans)?;
        process.vmas = plans.iter().map(|p| p.vma.clone()).collect();
        // A table shared with the parent is the parent's to record.
        process.files_of_parent = shares_parents_files(pid, &pids, &stats)?.is_some();
        if !process.files_of_parent {
            process.fds = fds.dump(pid, &seen, &processes, &mut shmem)?;
        }
        if process.vmas.iter().any(|v| v.kind == records::VmaKind::PacketRing as i32) {
            let holder = table_holder(pid, &pids, &stats)?.as_raw();
            let table = match processes.iter().find(|q| q.pid == holder) {
                Some(q) => &q.fds,
                None => &process.fds,
            };
            let mut found = Vec::new();
            for v in process.vmas.iter().filter(|v| v.kind == records::VmaKind::PacketRing as i32) {
                let ino = maps.iter().find(|m| m.start == v.start).map_or(0, |m| m.inode);
                found.push(ring_fd(v, ino, &seen, table).map_err(|e| format!("process {pid}: {e}")));
            }
            let rings = process.vmas.iter_mut().filter(|v| v.kind == records::VmaKind::PacketRing as i32);
            for (v, fd) in rings.zip(found) {
                match fd {
                    Ok(fd) => v.ring_fd = fd,
                    Err(e) => ring_problems.push(e),
                }
            }
        }
        kernel.get_or_insert_with(|| task::kernel_layout(pid, &maps));
        processes.push(process);
        all_plans.push(plans);
    }
    let unix_sockets = fds.unix_sockets()?;
    let indices: BTreeSet<u32> = fds.ptys.keys().copied().collect();
    for (p, (_, stat)) in processes.iter_mut().zip(&stats) {
        fd::pty::slaves_of_the_tree(&mut p.fds, &indices, stat.tty_nr as u32 as u64);
    }
    let ptys: Vec<fd::pty::Captured> = std::mem::take(&mut fds.ptys).into_values().collect();
    let mut pipes: Vec<records::Pipe> = fds.pipes.into_values().collect();
    mark_pipe_ends(&mut pipes, &processes, &unix_sockets);
    let mut tree = ProcessTree {
        processes,
        unix_sockets,
        netlock: tcp.lock.clone().unwrap_or_default(),
        pipes,
        stats: None,
        kernel,
        zombies,
        leaderless_sessions: leaderless.sessions.into_iter().collect(),
        leaderless_groups: leaderless.groups.into_iter().collect(),
        volume: None,
        shmem: shmem.objects.iter().map(|(m, _)| m.clone()).collect(),
        pid_namespace: false,
        ptys: ptys.iter().map(|c| c.record.clone()).collect(),
    };
    // Never an image that cannot come back: a killed tree would be lost.
    let mut gone = ring_problems;
    gone.extend(in_flight_problems(&tree, skip_in_flight));
    gone.extend(crate::restore::restorable_problems(&tree));
    if !gone.is_empty() {
        return Err(DumpError::Unsupported { pid: frozen.pid(), problems: gone });
    }
    if let Some(ns) = tree_pid_namespace(frozen.pid()) {
        let pids: Vec<Pid> = frozen.processes().iter().map(|p| p.pid()).collect();
        let map = pidmap::PidMap::build(ns, &pids, frozen.zombies())?;
        map.translate(&mut tree).map_err(|what| DumpError::Unsupported { pid: frozen.pid(), problems: vec![what] })?;
    }
    let objects =
        shmem.objects.into_iter().map(|(m, file)| (m.id, m.size, m.mm, file, m.sysv.then_some(m.sysv_id))).collect();
    Ok(Collected { tree, plans: all_plans, contents: fds.contents, objects, tcp, ptys, early_flags })
}

/// The fd through which a mapping of socket `ino` (`socket:[ino]`) is
/// made again: one of the process's on that socket, a packet socket whose
/// rings the mapping covers whole (as mmap made it). Else why it cannot be.
fn ring_fd(v: &records::Vma, ino: u64, seen: &[Seen], table: &[Fd]) -> Result<i32, String> {
    let what = format!("mapping {:#x}-{:#x} of socket:[{ino}]", v.start, v.end);
    let fd = seen.iter().find(|s| s.ino == ino && s.target.starts_with("socket:")).map(|s| s.fd).ok_or_else(|| {
        format!("{what}: no fd of the process is on that socket any more, so it cannot be mapped again (not supported)")
    })?;
    let Some(records::fd::Kind::Packet(s)) = table.iter().find(|f| f.fd == fd).and_then(|f| f.kind.as_ref()) else {
        return Err(format!("{what} (fd {fd}): only the rings of a packet socket are mapped again (not supported)"));
    };
    let len = [&s.rx_ring, &s.tx_ring].iter().filter_map(|r| r.as_ref()).map(|r| r.mapped_len()).sum::<u64>();
    if v.offset != 0 || v.end - v.start != len {
        return Err(format!(
            "{what} (fd {fd}): it maps part of the socket's rings ({len} bytes; offset {:#x}), which mmap cannot \
             make again (not supported)",
            v.offset
        ));
    }
    Ok(fd)
}

/// TCP listeners with connections waiting to be accepted, which an image
/// cannot hold (a connection not accepted yet is no fd of the tree): each
/// is a problem, as for `criu`, unless they are to be left out
/// (`skip_in_flight`), which is then told.
fn in_flight_problems(tree: &ProcessTree, skip_in_flight: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for p in &tree.processes {
        for f in &p.fds {
            let Some(records::fd::Kind::TcpListen(s)) = &f.kind else { continue };
            let n = s.skipped_connections;
            if n == 0 {
                continue;
            }
            let what = format!(
                "process {}: fd {}: {} has {n} connection(s) waiting to be accepted",
                p.pid,
                f.fd,
                s.describe()
            );
            match skip_in_flight {
                true => tracing::warn!("{what}; left out (--skip-in-flight): their clients see a reset"),
                false => problems.push(format!(
                    "{what}, which an image cannot hold; let it accept them first, or pass --skip-in-flight to leave \
                     them out (their clients then see a reset)"
                )),
            }
        }
    }
    problems
}

/// Address spaces of shared memory objects' pages start here, above those
/// of processes and of deleted files' contents.
const FIRST_SHMEM_MM: u32 = 1 << 24;

/// The shared memory objects of the tree, each once, by device and inode.
#[derive(Default)]
struct ShmemTable {
    ids: BTreeMap<(u64, u64), u64>,
    /// With a file open on each, to read its pages from.
    objects: Vec<(records::Shmem, std::fs::File)>,
}

impl ShmemTable {
    /// The id of the object `file` is open on (found in process `pid`),
    /// new or met before.
    fn id(&mut self, pid: Pid, file: std::fs::File, object: memory::Object) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        if let Some(&id) = self.ids.get(&(meta.dev(), meta.ino())) {
            return Ok(id);
        }
        let id = self.objects.len() as u64 + 1;
        // Its pages are found with SEEK_DATA and SEEK_HOLE, which move the
        // offset: on a description of stasis's own, not on the process's
        // (a memfd's fd is a pidfd_getfd copy sharing the process's offset).
        let file = match object {
            memory::Object::Memfd(_) => {
                use std::os::fd::AsRawFd;
                std::fs::File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?
            }
            _ => file,
        };
        let mut record = records::Shmem { id, size: meta.size(), mm: FIRST_SHMEM_MM + id as u32, ..Default::default() };
        match object {
            memory::Object::Anonymous => {}
            memory::Object::Memfd(name) => {
                use stasis_sys::nix::fcntl::{fcntl, FcntlArg};
                record.seals = fcntl(&file, FcntlArg::F_GET_SEALS).map_err(std::io::Error::from)? as u32;
                (record.memfd, record.name) = (true, name);
                (record.mode, record.uid, record.gid) = (meta.mode() & 0o7777, meta.uid(), meta.gid());
            }
            memory::Object::Sysv => {
                // The segment's id is its file's inode number; its key and
                // owner are only in the IPC namespace's table.
                let ours = std::fs::metadata("/proc/self/ns/ipc")?.ino();
                if std::fs::metadata(proc::path(pid, "ns/ipc"))?.ino() != ours {
                    return Err(std::io::Error::other(
                        "System V shared memory of another IPC namespace (not supported yet)",
                    ));
                }
                let shmid = meta.ino() as i32;
                let info = stasis_sys::sysv::stat(shmid)
                    .map_err(|e| std::io::Error::other(format!("System V segment {shmid}: {e}")))?;
                record.sysv = true;
                (record.sysv_key, record.sysv_id, record.size) = (info.key, shmid, info.size);
                (record.mode, record.uid, record.gid) = (info.mode & 0o777, info.uid, info.gid);
                record.removed = info.mode & stasis_sys::sysv::SHM_DEST != 0;
            }
        }
        self.ids.insert((meta.dev(), meta.ino()), id);
        self.objects.push((record, file));
        Ok(id)
    }
}

/// What [`collect`] gathered.
struct Collected {
    /// Shared memory objects to store: (id, size, address space, file,
    /// System V segment id).
    objects: Vec<(u64, u64, u32, std::fs::File, Option<i32>)>,
    tree: ProcessTree,
    /// The mappings of each process, in the order of `tree.processes`.
    plans: Vec<Vec<Planned>>,
    /// Contents of deleted files, padded to whole pages, by address space.
    contents: Vec<(u32, Vec<u8>)>,
    /// The tree's established TCP connections, locked and in repair mode.
    tcp: TcpHold,
    /// The tree's pseudo-terminal pairs, their queues read out: put back
    /// when the tree runs on.
    ptys: Vec<fd::pty::Captured>,
    /// The mappings whose flags were taken from the smaps read before the
    /// freeze, by process, to check once it runs again ([`Layouts::check`]).
    early_flags: Vec<(Pid, Vec<proc::Mapping>)>,
}

/// The mappings of each process as smaps showed them just before the
/// freeze (a live snapshot let run on). In the freeze a process's maps is
/// read instead, and when every line of it is one of those, its VmFlags
/// (advice, locks: what maps does not show) are taken from there. A
/// mapping whose flags alone changed in between (madvise or mlock of a
/// whole mapping) leaves its line as it was, so once the tree runs again
/// smaps is read once more ([`Layouts::check`]): flags that differ from
/// those taken fail the dump, which is then tried again by whoever asked.
/// Only flags set and cleared again in the moment between the freeze and
/// that read go unseen.
struct Layouts {
    by_pid: HashMap<Pid, Vec<proc::Mapping>>,
}

impl Layouts {
    fn read_early(live: bool, pids: &[Pid]) -> Layouts {
        let read = |p: &Pid| Some((*p, proc::parse_smaps(&proc::read(*p, "smaps").ok()?).ok()?));
        Layouts { by_pid: if live { pids.iter().filter_map(read).collect() } else { HashMap::new() } }
    }

    /// The mappings of frozen process `pid`, and whether their flags are
    /// those read early.
    fn now(&self, pid: Pid) -> Result<(Vec<proc::Mapping>, bool), DumpError> {
        let err = |what: &str| {
            let what = what.to_owned();
            move |source| DumpError::Proc { pid, what, source }
        };
        let parse = |text: String| proc::parse_smaps(&text).map_err(|e| err("maps")(std::io::Error::other(e)));
        if let Some(early) = self.by_pid.get(&pid) {
            let mut maps = parse(proc::read(pid, "maps").map_err(err("maps"))?)?;
            let all = maps.iter_mut().all(|m| match early.iter().find(|e| same_line(e, m)) {
                Some(e) => {
                    m.vm_flags = e.vm_flags.clone();
                    true
                }
                None => false,
            });
            if all {
                return Ok((maps, true));
            }
        }
        Ok((parse(proc::read(pid, "smaps").map_err(err("smaps"))?)?, false))
    }

    /// With the tree running again: whether the flags taken from the early
    /// read are those it has now (what the dump made of them, that is).
    fn check(&self, taken: &[(Pid, Vec<proc::Mapping>)]) -> Result<(), DumpError> {
        let made = |m: &proc::Mapping| memory::plan(m).map(|p| (p.vma.flags, p.vma.madvise, p.vma.may_write, p.pages));
        for (pid, maps) in taken {
            // Gone since: nothing to compare with.
            let Ok(text) = proc::read(*pid, "smaps") else { continue };
            let now = proc::parse_smaps(&text).unwrap_or_default();
            for m in maps {
                let Some(n) = now.iter().find(|n| same_line(n, m)) else { continue };
                if made(m) != made(n) {
                    return Err(DumpError::Raced {
                        pid: *pid,
                        what: format!(
                            "the flags of mapping {:#x}-{:#x} {} (madvise, mlock) while it was frozen: it had \
                             [{}] just before and [{}] just after",
                            m.start,
                            m.end,
                            m.name,
                            m.vm_flags.join(" "),
                            n.vm_flags.join(" ")
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether two mappings read at different times show the same line of
/// maps (flags aside).
fn same_line(a: &proc::Mapping, b: &proc::Mapping) -> bool {
    (a.start, a.end, a.read, a.write, a.exec, a.shared, a.offset, a.dev, a.inode)
        == (b.start, b.end, b.read, b.write, b.exec, b.shared, b.offset, b.dev, b.inode)
        && a.name == b.name
}

/// Files up to this size behind shared writable mappings are hashed: writes
/// through such a mapping need not change the file's mtime, so size and
/// mtime alone cannot tell restore that the file moved on.
const HASH_SHARED_FILES_UP_TO: u64 = 64 << 20;

/// Size, mtime (and for shared writable mappings, a hash) of the file behind
/// a mapping, read through /proc/PID/map_files so it is the very file
/// mapped; a deleted file's contents go to `fds`, once per file.
fn identify_mapped_file(pid: Pid, vma: &mut records::Vma, fds: &mut FdDumper) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(file) = vma.file.as_mut() else { return Ok(()) };
    let path = proc::path(pid, &format!("map_files/{:x}-{:x}", vma.start, vma.end));
    let meta = std::fs::metadata(&path)?;
    // As stat(2) reports them, which is what restore compares against
    // (maps shows the inode's device, which differs on btrfs subvolumes).
    file.dev = meta.dev();
    file.ino = meta.ino();
    file.size = meta.size();
    file.mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    file.mode = meta.mode();
    (file.uid, file.gid) = (meta.uid(), meta.gid());
    if file.deleted {
        return fds.deleted_contents(file, || {
            let copy = std::fs::File::open(&path)?;
            fd::file::read_all(&copy.into(), meta.size()).map_err(std::io::Error::other)
        });
    }
    let shared_writable = vma.flags & memory::MAP_SHARED != 0 && vma.prot & memory::PROT_WRITE != 0;
    if shared_writable && meta.size() <= HASH_SHARED_FILES_UP_TO {
        file.content_hash = stasis_image::ChunkId::of(&std::fs::read(&path)?).0.to_vec();
    }
    Ok(())
}

/// Address spaces of deleted files' contents start above the processes'.
const FIRST_CONTENTS_MM: u32 = 1 << 16;

/// Fds of the tree, process after process: pipes and deleted files'
/// contents are gathered for the whole tree, and an open file description
/// met again (by kcmp) is recorded as shared with its first holder.
#[derive(Default)]
struct FdDumper {
    pipes: BTreeMap<u64, records::Pipe>,
    /// Deleted files' contents by address space.
    contents: Vec<(u32, Vec<u8>)>,
    /// The address space of each deleted file met, by device and inode.
    deleted: BTreeMap<(u64, u64), u32>,
    /// The tree's pseudo-terminal pairs, by index, read from a master.
    ptys: BTreeMap<u32, fd::pty::Captured>,
    /// Every fd dumped so far: (pid, what /proc showed).
    earlier: Vec<(Pid, Seen)>,
    /// Unix sockets, each once, with the process and fd it was found at.
    unix: Vec<(Pid, i32, records::UnixSocket)>,
    /// Fds passed with messages queued on those sockets, dumped once every
    /// process is (they may share a description with any process's fd).
    in_flight: Vec<(usize, fd::unix::InFlight)>,
}

impl FdDumper {
    /// The tree's unix sockets, once every process is dumped: peers
    /// outside the tree resolved or refused.
    fn unix_sockets(&mut self) -> Result<Vec<records::UnixSocket>, DumpError> {
        // The copies passed so far, with where they were passed and their
        // records: one description passed twice is passed twice again.
        let mut before: Vec<(records::PassedRef, OwnedFd, Fd)> = Vec::new();
        for (at, flight) in std::mem::take(&mut self.in_flight) {
            let (pid, fd) = (self.unix[at].0, self.unix[at].1);
            let mut fds = Vec::with_capacity(flight.fds.len());
            for (i, copy) in flight.fds.into_iter().enumerate() {
                let here = records::PassedRef { socket: self.unix[at].2.id, message: flight.message, index: i as u32 };
                let me = Pid::this();
                let same = |(_, c, _): &&(records::PassedRef, OwnedFd, Fd)| {
                    use std::os::fd::AsRawFd;
                    kcmp::same_file(me, copy.as_raw_fd(), me, c.as_raw_fd()).unwrap_or(false)
                };
                if let Some((first, _, record)) = before.iter().find(same) {
                    let in_flight_as = record.shared_with.is_none().then(|| first.clone());
                    fds.push(Fd { fd: i as i32, in_flight_as, ..record.clone() });
                    continue;
                }
                let kept = copy.try_clone().map_err(|e| DumpError::Fd { pid, fd, what: format!("dup: {e}") })?;
                let passed = self.dump_passed(i as i32, copy).map_err(|what| DumpError::Fd {
                    pid,
                    fd,
                    what: format!(
                        "{}: file descriptor {} of those passed with queued message {}: {what}",
                        self.unix[at].2.describe(),
                        i + 1,
                        flight.message + 1
                    ),
                })?;
                before.push((here, kept, passed.clone()));
                fds.push(passed);
            }
            self.unix[at].2.passed.push(records::PassedFds { message: flight.message, fds });
        }
        let found: Vec<(Pid, i32, u64)> = self.unix.iter().map(|(p, fd, s)| (*p, *fd, s.id)).collect();
        let mut sockets: Vec<records::UnixSocket> = self.unix.drain(..).map(|(_, _, s)| s).collect();
        let pid_of = |id: u64| found.iter().find(|f| f.2 == id).map(|f| f.0);
        fd::unix::resolve_peers(&pid_of, &mut sockets).map_err(|(id, what)| {
            let (pid, fd, _) = found.iter().find(|f| f.2 == id).copied().expect("a socket we found");
            DumpError::Fd { pid, fd, what }
        })?;
        Ok(sockets)
    }

    /// Dump every fd of `pid` from a pidfd_getfd copy; `done` are the
    /// processes dumped before, whose fds this one may share.
    fn dump(
        &mut self,
        pid: Pid,
        seen: &[Seen],
        done: &[records::Process],
        shmem: &mut ShmemTable,
    ) -> Result<Vec<Fd>, DumpError> {
        let pidfd = PidFd::open(pid).map_err(|e| DumpError::Fd { pid, fd: -1, what: crate::chain(&e) })?;
        let mut fds: Vec<Fd> = Vec::new();
        for s in seen {
            let fd_err = |what: String| DumpError::Fd { pid, fd: s.fd, what };
            // An fd sharing its open file description with a lower one of
            // this process is recorded as a dup of it, one sharing it with
            // an earlier process as shared with that. Only fds on the same
            // object can share.
            let mut same_as = None;
            let mut shared_with = None;
            let same_object = |e: &Seen| e.ino == s.ino && e.target == s.target;
            for earlier in seen.iter().take_while(|e| e.fd < s.fd).filter(|e| same_object(e)) {
                if kcmp::same_file(pid, earlier.fd, pid, s.fd).map_err(|e| fd_err(format!("kcmp: {e}")))? {
                    same_as = Some(earlier.fd);
                    break;
                }
            }
            if same_as.is_none() {
                for (other, earlier) in self.earlier.iter().filter(|(_, e)| same_object(e)) {
                    if kcmp::same_file(*other, earlier.fd, pid, s.fd).map_err(|e| fd_err(format!("kcmp: {e}")))? {
                        shared_with = Some(records::FdRef { pid: other.as_raw(), fd: earlier.fd });
                        break;
                    }
                }
            }
            // The first fd on a description is dumped from a copy of it
            // (one pidfd_getfd: this runs while the tree is frozen); its
            // signal owner and socket filter go with the description.
            let (mut owner, mut signal, mut filter) = (None, 0, Vec::new());
            let copy = match same_as.is_none() && shared_with.is_none() {
                true => {
                    let copy = pidfd.get_fd(s.fd).map_err(|e| fd_err(crate::chain(&e)))?;
                    (owner, signal, filter) = description_settings(s, &copy).map_err(fd_err)?;
                    Some(copy)
                }
                false => None,
            };
            let (mut kind, extra) = if let Some(first) = same_as {
                (
                    fds.iter().find(|f| f.fd == first).and_then(|f| f.kind.clone()).expect("dumped before"),
                    Default::default(),
                )
            } else if let Some(r) = &shared_with {
                let holder = done.iter().find(|p| p.pid == r.pid).expect("dumped before");
                (
                    holder.fds.iter().find(|f| f.fd == r.fd).and_then(|f| f.kind.clone()).expect("dumped before"),
                    Default::default(),
                )
            } else {
                let copy = copy.expect("taken for the first fd on a description");
                match s.kind {
                    Ok(fd::Kind::PtyMaster) => {
                        let index = fd::pty::index(&copy).map_err(fd_err)?;
                        if let std::collections::btree_map::Entry::Vacant(e) = self.ptys.entry(index) {
                            e.insert(
                                fd::pty::capture(&copy)
                                    .map_err(|e| fd_err(format!("pseudo-terminal master of /dev/pts/{index}: {e}")))?,
                            );
                        }
                        (records::fd::Kind::PtyMaster(index), Default::default())
                    }
                    Ok(fd::Kind::Memfd) => {
                        let name = s.target.strip_prefix("/memfd:").unwrap_or(&s.target);
                        let name = name.strip_suffix(" (deleted)").unwrap_or(name).to_owned();
                        let id = shmem
                            .id(pid, copy.into(), memory::Object::Memfd(name))
                            .map_err(|e| fd_err(e.to_string()))?;
                        (records::fd::Kind::Memfd(id), Default::default())
                    }
                    Ok(fd::Kind::Unix) => {
                        let (socket, in_flight) = fd::unix::dump(pid, s, &copy).map_err(fd_err)?;
                        let id = socket.id;
                        self.in_flight.extend(in_flight.into_iter().map(|f| (self.unix.len(), f)));
                        self.unix.push((pid, s.fd, socket));
                        (records::fd::Kind::Unix(id), Default::default())
                    }
                    _ => fd::dump(pid, s, &copy).map_err(fd_err)?,
                }
            };
            self.keep(&mut kind, extra);
            if let records::fd::Kind::Epoll(e) = &mut kind {
                fd::epoll::find_closed(pid, s.fd, &mut e.targets, seen).map_err(fd_err)?;
            }
            fds.push(Fd {
                fd: s.fd,
                flags: s.info.flags & !fd::FDINFO_CLOEXEC,
                cloexec: s.info.flags & fd::FDINFO_CLOEXEC != 0,
                pos: s.info.pos,
                kind: Some(kind),
                same_as,
                shared_with,
                locks: fd::locks(pid, s.fd, s.info.flags, &s.info.locks).map_err(fd_err)?,
                owner,
                signal,
                filter,
                in_flight_as: None,
            });
        }
        self.earlier.extend(seen.iter().map(|s| (pid, s.clone())));
        Ok(fds)
    }

    /// Store what dumping an fd produced besides its record.
    fn keep(&mut self, kind: &mut records::fd::Kind, extra: fd::Extra) {
        if let Some(p) = extra.pipe {
            self.pipes.entry(p.id).or_insert(p);
        }
        match kind {
            records::fd::Kind::File(file) => {
                if let Some(data) = extra.contents {
                    let Ok(()) = self.deleted_contents::<std::convert::Infallible>(file, || Ok(data));
                }
            }
            records::fd::Kind::Inotify(n) => {
                let deleted = n.watches.iter_mut().filter_map(|w| w.deleted.as_mut());
                for (file, data) in deleted.zip(extra.watched) {
                    let Ok(()) = self.deleted_contents::<std::convert::Infallible>(file, || Ok(data));
                }
            }
            _ => {}
        }
    }

    /// Give a deleted file its address space in the memory index, the one
    /// it had when met before (through another fd or a mapping) or a new
    /// one with the contents that `read` gives.
    fn deleted_contents<E>(
        &mut self,
        file: &mut records::FileRef,
        read: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<(), E> {
        if let Some(&mm) = self.deleted.get(&(file.dev, file.ino)) {
            file.contents_mm = mm;
            return Ok(());
        }
        let mut data = read()?;
        file.contents_mm = FIRST_CONTENTS_MM + self.deleted.len() as u32;
        self.deleted.insert((file.dev, file.ino), file.contents_mm);
        if !data.is_empty() {
            data.resize(data.len().div_ceil(4096) * 4096, 0);
            self.contents.push((file.contents_mm, data));
        }
        Ok(())
    }

    /// The fd of a process of the tree holding the open file description
    /// stasis's own fd `seen` is on (kcmp), if one does.
    fn holder_of(&self, seen: &Seen) -> Result<Option<records::FdRef>, String> {
        let me = Pid::this();
        for (other, e) in self.earlier.iter().filter(|(_, e)| e.ino == seen.ino && e.target == seen.target) {
            if kcmp::same_file(me, seen.fd, *other, e.fd).map_err(|e| format!("kcmp: {e}"))? {
                return Ok(Some(records::FdRef { pid: other.as_raw(), fd: e.fd }));
            }
        }
        Ok(None)
    }

    /// The record of fd number `i` passed with a queued message, from the
    /// agent's copy: a unix socket by its id (dumped into the table if no
    /// process holds it), the fd of a process that holds the same open file
    /// description, or the object dumped on its own.
    fn dump_passed(&mut self, i: i32, copy: OwnedFd) -> Result<Fd, String> {
        let seen = fd::see_own(&copy).ok_or("it closed while being looked at")?;
        let kind = seen.kind.clone().map_err(|what| format!("a {what} (not supported)"))?;
        let mut record = Fd {
            fd: i,
            flags: seen.info.flags & !fd::FDINFO_CLOEXEC,
            cloexec: false,
            pos: seen.info.pos,
            kind: None,
            same_as: None,
            shared_with: None,
            locks: Vec::new(),
            owner: None,
            signal: 0,
            filter: Vec::new(),
            in_flight_as: None,
        };
        if !seen.info.locks.is_empty() {
            return Err("it holds a file lock (not supported for an fd in flight)".into());
        }
        match kind {
            // Made in the agent at restore, each registration under its
            // number, from the process's fd that holds its file. One a
            // process holds too would be two instances.
            fd::Kind::Epoll => {
                if let Some(held) = self.holder_of(&seen)? {
                    return Err(format!(
                        "it is an epoll instance process {} holds too (as fd {}), which cannot be passed in flight \
                         (not supported)",
                        held.pid, held.fd
                    ));
                }
                let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", seen.fd))
                    .map_err(|e| format!("fdinfo: {e}"))?;
                let mut targets = fd::epoll::parse(&text)?;
                fd::epoll::find_holders(seen.fd, &mut targets, &self.earlier)?;
                record.kind = Some(records::fd::Kind::Epoll(records::Epoll { targets }));
                return Ok(record);
            }
            fd::Kind::Unix => {
                if !self.unix.iter().any(|u| u.2.id == seen.ino) {
                    let (socket, nested) = fd::unix::dump(Pid::this(), &seen, &copy)?;
                    if !nested.is_empty() {
                        return Err(format!(
                            "{}, held by no process, itself holds passed fds (not supported)",
                            socket.describe()
                        ));
                    }
                    self.unix.push((Pid::this(), seen.fd, socket));
                }
                record.kind = Some(records::fd::Kind::Unix(seen.ino));
                return Ok(record);
            }
            // Made inside the process that holds them, or with state tied
            // to one connection or memory object.
            fd::Kind::Signalfd
            | fd::Kind::Pidfd
            | fd::Kind::Memfd
            | fd::Kind::TcpEstablished
            | fd::Kind::Inotify
            | fd::Kind::Fanotify
            | fd::Kind::ProcEntry => {
                let what = match kind {
                    fd::Kind::Signalfd => "a signalfd",
                    fd::Kind::Pidfd => "a pidfd",
                    fd::Kind::Memfd => "a memfd",
                    fd::Kind::Inotify => "an inotify instance",
                    fd::Kind::Fanotify => "a fanotify group",
                    fd::Kind::ProcEntry => "a file of a process's /proc directory",
                    _ => "an established TCP connection",
                };
                return Err(format!(
                    "it is {what}, which cannot be passed in flight (not supported; files, pipes, FIFOs, devices, \
                     terminals, eventfds, timerfds, epoll instances, unix sockets, TCP listeners and UDP sockets \
                     can)"
                ));
            }
            _ => {}
        }
        if let Some(held) = self.holder_of(&seen)? {
            record.shared_with = Some(held);
            return Ok(record);
        }
        let (mut kind, extra) = fd::dump(Pid::this(), &seen, &copy)?;
        self.keep(&mut kind, extra);
        record.kind = Some(kind);
        Ok(record)
    }
}

/// What an open file description carries besides its object: who gets its
/// signals (F_GETOWN_EX; none for an O_PATH fd), which signal (F_GETSIG),
/// and a socket's classic BPF filter.
fn description_settings(s: &Seen, copy: &OwnedFd) -> Result<(Option<records::FdOwner>, i32, Vec<u64>), String> {
    let socket = matches!(
        s.kind,
        Ok(fd::Kind::TcpListen | fd::Kind::TcpEstablished | fd::Kind::TcpUnconnected | fd::Kind::Udp | fd::Kind::Unix)
    );
    let filter = match socket {
        true => stasis_sys::sock::filter(copy).map_err(|e| match e {
            // The kernel keeps no classic program to hand back.
            stasis_sys::Errno::EACCES => {
                "has an eBPF socket program attached (SO_ATTACH_BPF), which cannot be read back (not supported)"
                    .to_string()
            }
            e => format!("SO_GET_FILTER: {e}"),
        })?,
        false => Vec::new(),
    };
    match stasis_sys::fdtable::owner(copy) {
        Ok((kind, who, sig)) => Ok(((who != 0).then_some(records::FdOwner { kind, pid: who }), sig, filter)),
        Err(stasis_sys::Errno::EBADF) => Ok((None, 0, filter)),
        Err(e) => Err(format!("F_GETOWN_EX: {e}")),
    }
}

/// Whether `dir` exists and holds an image (for refusing early).
pub fn holds_image(dir: &Path) -> bool {
    stasis_image::looks_like_image(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags of a mapping come from the smaps read before the freeze
    /// when its maps line is unchanged; advice given to the whole mapping
    /// in between leaves the line as it was, and the read after the
    /// release fails the dump, naming the mapping.
    #[test]
    fn flags_read_before_the_freeze_are_checked_after_it() {
        use stasis_sys::nix::sys::mman::MmapAdvise;
        let m = stasis_sys::mman::AnonMapping::new(4).unwrap();
        let me = Pid::this();
        let flags_of = |maps: &[proc::Mapping]| maps.iter().find(|x| x.start == m.addr()).unwrap().vm_flags.clone();
        // Another thread of the test binary may map something meanwhile,
        // which makes the freeze read smaps whole: tried a few times.
        for _ in 0..20 {
            m.advise(MmapAdvise::MADV_DOFORK).unwrap();
            let early = Layouts::read_early(true, &[me]);
            let (maps, reused) = early.now(me).unwrap();
            if !reused {
                continue;
            }
            early.check(&[(me, maps.clone())]).expect("nothing changed");
            m.advise(MmapAdvise::MADV_DONTFORK).unwrap();
            let (maps, reused) = early.now(me).unwrap();
            if !reused {
                continue;
            }
            assert!(!flags_of(&maps).iter().any(|f| f == "dc"), "the early flags, without dc");
            let err = early.check(&[(me, maps)]).expect_err("the flags changed").to_string();
            assert!(err.contains(&format!("{:#x}-", m.addr())) && err.contains("dump it again"), "{err}");
            // Without the early read, the freeze reads smaps itself.
            let (maps, reused) = Layouts::read_early(false, &[me]).now(me).unwrap();
            assert!(!reused && flags_of(&maps).iter().any(|f| f == "dc"));
            return;
        }
        panic!("the test process's mappings never stayed still");
    }

    #[test]
    fn missing_process_is_named() {
        let err = preflight(&Target::Tree(Pid::from_raw(4_000_000))).unwrap_err();
        assert!(matches!(err, DumpError::NoProcess(_)), "{err}");
    }

    #[test]
    fn stasis_refuses_itself() {
        let err = preflight(&Target::Tree(Pid::this())).unwrap_err();
        assert!(err.to_string().contains("stasis itself"), "{err}");
    }
}
