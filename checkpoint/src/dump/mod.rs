//! `dump`: capture a running process into an image.
//!
//! 1. Pre-flight: read /proc only, and list every object stasis cannot
//!    handle (fd kinds, mapping kinds, a tracer, seccomp, children) in one
//!    error, with the target untouched.
//! 2. Freeze: stop every thread under ptrace (through the cgroup freezer when
//!    asked); see [`crate::freeze`].
//! 3. Collect: threads' registers and signal state, the process's attributes,
//!    its fds (from pidfd_getfd copies), and the pages of its memory.
//! 4. Write the image, then open and verify it from disk.
//! 5. Kill the process, or with `leave_running` let it go unchanged. On
//!    every error path the threads are detached and run on as they were.

mod memory;
mod task;
mod timers;

use std::collections::BTreeMap;
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
use crate::freeze::{self, FreezeError, Frozen};
use crate::proc::{self, Stat};

/// What to dump and how.
#[derive(Clone, Debug)]
pub struct DumpOptions {
    pub pid: Pid,
    /// The image directory (created; must not hold an image yet).
    pub images: PathBuf,
    /// Let the process run on after the dump instead of killing it.
    pub leave_running: bool,
    /// Freeze through this cgroup's freezer (v1 or v2) instead of ptrace
    /// alone. The process must be in it.
    pub cgroup: Option<PathBuf>,
    pub write: WriteOptions,
    /// Set from outside (e.g. on SIGINT) to stop the dump at the next phase
    /// boundary; the process is then let go unchanged.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Told the bytes of memory stored so far, and the total.
    pub progress: Option<crate::ProgressFn>,
}

/// What a successful dump did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DumpReport {
    pub pid: i32,
    pub images: PathBuf,
    pub threads: usize,
    pub killed: bool,
    pub frozen_us: u64,
    pub total_us: u64,
    pub phases: Vec<(String, u64)>,
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub write: WriteStats,
}

/// Why a dump failed. The process is left running, unchanged, in every case
/// but [`DumpError::Kill`].
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("no process {0}")]
    NoProcess(Pid),
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
    #[error("cancelled; process {0} was let go unchanged")]
    Cancelled(Pid),
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

/// Dump a process; see the module docs for the steps.
pub fn dump(opts: &DumpOptions) -> Result<DumpReport, DumpError> {
    let pid = opts.pid;
    let mut clock = Clock::new();
    let cancelled = || opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));

    // The image directory is checked before the process is touched.
    if holds_image(&opts.images) {
        return Err(DumpError::Write(stasis_image::WriteError::AlreadyExists { path: opts.images.clone() }));
    }
    let stat = preflight(pid)?;
    if opts.cgroup.is_none() {
        if let Some(cg) = freeze::frozen_cgroup_of(pid) {
            return Err(DumpError::Refused {
                pid,
                reason: format!(
                    "it is in frozen cgroup {0}; pass --cgroup {0} to dump it (it stays frozen)",
                    cg.display()
                ),
            });
        }
    }
    clock.phase("preflight");
    if cancelled() {
        return Err(DumpError::Cancelled(pid));
    }

    let mut frozen = freeze::freeze(pid, opts.cgroup.as_deref()).map_err(|source| match source {
        FreezeError::NoProcess(p) => DumpError::NoProcess(p),
        source => DumpError::Freeze { pid, source },
    })?;
    clock.phase("freeze");

    // From here until release or kill, `frozen` detaches on drop: every `?`
    // lets the process go unchanged.
    let Collected { mut tree, plans, contents } = collect(&mut frozen, &stat)?;
    clock.phase("collect");
    if cancelled() {
        return Err(DumpError::Cancelled(pid));
    }

    let mut writer = ImageWriter::create(&opts.images, opts.write.clone())?;
    let mm = tree.processes[0].mm;
    let progress = |done, total| {
        if let Some(p) = &opts.progress {
            (p.0)(done, total);
        }
    };
    let mem_stats = memory::store(pid, &plans, mm, &mut writer, &progress)?;
    for (mm, data) in contents {
        writer.add_memory(mm, 0, &data)?;
    }
    clock.phase("memory");
    if cancelled() {
        return Err(DumpError::Cancelled(pid));
    }

    // With --leave-running the process is let go as soon as everything of
    // it is captured: writing the image out and verifying it need not keep
    // it stopped. Killing waits for the verified image.
    let killed = !opts.leave_running;
    let mut frozen = Some(frozen);
    let mut frozen_for = None;
    if !killed {
        let f = frozen.take().expect("still held");
        frozen_for = Some(f.since().elapsed());
        f.release().map_err(|source| DumpError::Freeze { pid, source })?;
        clock.phase("release");
    }
    let held_so_far = frozen.as_ref().map_or(Duration::ZERO, |f| f.since().elapsed());
    tree.stats = Some(DumpStats {
        // For a killed process: stopped until the image was written.
        frozen_us: frozen_for.unwrap_or(held_so_far).as_micros() as u64,
        total_us: clock.start.elapsed().as_micros() as u64,
        phases: clock.phases.iter().map(|(n, us)| Phase { name: n.clone(), us: *us }).collect(),
        pages_scanned: mem_stats.pages_scanned,
        pages_written: mem_stats.pages_written,
        pages_skipped: mem_stats.pages_scanned - mem_stats.pages_written,
        bytes_logical: writer.stats().logical_bytes,
        bytes_stored: writer.stats().stored_bytes,
    });
    let threads = tree.processes[0].threads.len();
    writer.set_processes(tree);
    let summary = writer.finish()?;
    clock.phase("write");

    // Kill only what is safely on disk: read it back and check every chunk.
    if let Err(source) = Image::open(&opts.images).and_then(|i| i.verify()) {
        // Not an image anyone should use: take it away.
        let _ = std::fs::remove_file(opts.images.join(stasis_image::MANIFEST_NAME));
        let _ = std::fs::remove_file(opts.images.join(stasis_image::PACK_NAME));
        return Err(DumpError::Verify { dir: opts.images.clone(), source });
    }
    clock.phase("verify");

    if let Some(f) = frozen.take() {
        let pidfd = PidFd::open(pid).map_err(|e| DumpError::Kill { pid, what: crate::chain(&e) })?;
        pidfd.send_signal(Signal::SIGKILL).map_err(|e| DumpError::Kill { pid, what: crate::chain(&e) })?;
        frozen_for = Some(f.since().elapsed());
        // Detaching from threads that are dying may fail; they are gone.
        let _ = f.release();
        clock.phase("kill");
    }
    let frozen_for = frozen_for.unwrap_or_default();

    Ok(DumpReport {
        pid: pid.as_raw(),
        images: opts.images.clone(),
        threads,
        killed,
        frozen_us: frozen_for.as_micros() as u64,
        total_us: clock.start.elapsed().as_micros() as u64,
        phases: clock.phases,
        pages_scanned: mem_stats.pages_scanned,
        pages_written: mem_stats.pages_written,
        write: summary.stats,
    })
}

/// Look at the process without stopping it, and refuse it, listing every
/// problem, when it holds something stasis cannot restore.
pub fn preflight(pid: Pid) -> Result<Stat, DumpError> {
    let proc_err = |what: &str| {
        let what = what.to_owned();
        move |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                DumpError::NoProcess(pid)
            } else {
                DumpError::Proc { pid, what, source }
            }
        }
    };
    let stat_text = proc::read(pid, "stat").map_err(proc_err("stat"))?;
    let stat = proc::parse_stat(&stat_text).map_err(|e| DumpError::Proc {
        pid,
        what: "stat".into(),
        source: std::io::Error::other(e),
    })?;
    let refuse = |reason: String| Err(DumpError::Refused { pid, reason });
    if stat.flags & proc::PF_KTHREAD != 0 {
        return refuse("it is a kernel thread".into());
    }
    if stat.state == 'Z' || stat.state == 'X' {
        return refuse("it has exited (zombie)".into());
    }
    if is_self_or_ancestor(pid) {
        return refuse("it is stasis itself or one of its ancestors".into());
    }

    let mut problems = Vec::new();
    let status = proc::parse_status(&proc::read(pid, "status").map_err(proc_err("status"))?);
    if status.tracer_pid != 0 {
        problems.push(format!("it is being traced by process {}", status.tracer_pid));
    }
    if status.seccomp != 0 {
        problems.push("it uses seccomp (not supported yet)".into());
    }
    let children = children_of(pid);
    if !children.is_empty() {
        problems.push(format!("it has child processes {children:?} (dumping process trees is not supported yet)"));
    }
    let maps = proc::parse_smaps(&proc::read(pid, "smaps").map_err(proc_err("smaps"))?)
        .map_err(|e| DumpError::Proc { pid, what: "smaps".into(), source: std::io::Error::other(e) })?;
    problems.extend(maps.iter().filter_map(|m| memory::plan(m).err()));
    let fds = fd::scan(pid).map_err(proc_err("fds"))?;
    problems.extend(fd_problems(&fds));
    if !problems.is_empty() {
        return Err(DumpError::Unsupported { pid, problems });
    }
    Ok(stat)
}

fn fd_problems(fds: &[Seen]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut pipe_ends: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
    for s in fds {
        match &s.kind {
            // Socket kinds carry their own article ("an established TCP ...").
            Err(what) if what.starts_with("a ") || what.starts_with("an ") => {
                problems.push(format!("fd {} is {what} ({})", s.fd, s.target))
            }
            Err(what) => problems.push(format!("fd {} is a {what} ({})", s.fd, s.target)),
            Ok(fd::Kind::Pipe) => {
                let ends = pipe_ends.entry(s.ino).or_default();
                match s.info.flags & 3 {
                    0 => ends.0 = true,
                    1 => ends.1 = true,
                    _ => *ends = (true, true),
                }
            }
            Ok(_) => {}
        }
    }
    for (ino, (read, write)) in pipe_ends {
        if !(read && write) {
            let held = if read { "read" } else { "write" };
            problems.push(format!(
                "pipe:[{ino}] has only its {held} end in the process; the other end is outside (not supported yet)"
            ));
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

/// Live children of `pid` (zombies awaiting a reaper do not count).
fn children_of(pid: Pid) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| {
            proc::read(Pid::from_raw(p), "stat")
                .ok()
                .and_then(|s| proc::parse_stat(&s).ok())
                .is_some_and(|s| s.ppid == pid.as_raw() && s.state != 'Z' && s.state != 'X')
        })
        .collect()
}

/// Everything but memory contents, gathered while the process is stopped.
fn collect(frozen: &mut Frozen, stat: &Stat) -> Result<Collected, DumpError> {
    let pid = frozen.pid();
    let proc_err = |what: &str| {
        let what = what.to_owned();
        move |source| DumpError::Proc { pid, what, source }
    };

    // Read again now that it is stopped: it may have changed since pre-flight.
    let maps = proc::parse_smaps(&proc::read(pid, "smaps").map_err(proc_err("smaps"))?)
        .map_err(|e| proc_err("smaps")(std::io::Error::other(e)))?;
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    for m in &maps {
        match memory::plan(m) {
            // The kernel maps [vsyscall] at a fixed address in every process.
            Ok(p) if p.vma.kind == records::VmaKind::Vsyscall as i32 => {}
            Ok(p) => plans.push(p),
            Err(e) => problems.push(e),
        }
    }
    let seen = fd::scan(pid).map_err(proc_err("fds"))?;
    problems.extend(fd_problems(&seen));
    if !problems.is_empty() {
        return Err(DumpError::Unsupported { pid, problems });
    }

    for plan in &mut plans {
        identify_mapped_file(pid, &mut plan.vma).map_err(proc_err("mapped files"))?;
    }
    let (fds, pipes, contents) = dump_fds(pid, &seen)?;
    let mut process = task::process(frozen, stat)?;
    process.mm = 1;
    process.vmas = plans.iter().map(|p| p.vma.clone()).collect();
    process.fds = fds;
    let kernel = task::kernel_layout(pid, &maps);
    let tree = ProcessTree { processes: vec![process], pipes, stats: None, kernel: Some(kernel) };
    Ok(Collected { tree, plans, contents })
}

/// What [`collect`] gathered.
struct Collected {
    tree: ProcessTree,
    plans: Vec<Planned>,
    /// Contents of deleted files, padded to whole pages, by address space.
    contents: Vec<(u32, Vec<u8>)>,
}

/// Files up to this size behind shared writable mappings are hashed: writes
/// through such a mapping need not change the file's mtime, so size and
/// mtime alone cannot tell restore that the file moved on.
const HASH_SHARED_FILES_UP_TO: u64 = 64 << 20;

/// Size, mtime (and for shared writable mappings, a hash) of the file behind
/// a mapping, read through /proc/PID/map_files so it is the very file mapped.
fn identify_mapped_file(pid: Pid, vma: &mut records::Vma) -> std::io::Result<()> {
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
    let shared_writable = vma.flags & memory::MAP_SHARED != 0 && vma.prot & memory::PROT_WRITE != 0;
    if shared_writable && meta.size() <= HASH_SHARED_FILES_UP_TO {
        file.content_hash = stasis_image::ChunkId::of(&std::fs::read(&path)?).0.to_vec();
    }
    Ok(())
}

/// Address spaces of deleted files' contents start above the processes'.
const FIRST_CONTENTS_MM: u32 = 1 << 16;

/// Fds, pipes, and deleted files' contents by address space.
type DumpedFds = (Vec<Fd>, Vec<records::Pipe>, Vec<(u32, Vec<u8>)>);

/// Dump every fd from a pidfd_getfd copy.
fn dump_fds(pid: Pid, seen: &[Seen]) -> Result<DumpedFds, DumpError> {
    let pidfd = PidFd::open(pid).map_err(|e| DumpError::Fd { pid, fd: -1, what: crate::chain(&e) })?;
    let mut fds: Vec<Fd> = Vec::new();
    let mut pipes: BTreeMap<u64, records::Pipe> = BTreeMap::new();
    let mut contents = Vec::new();
    for s in seen {
        let fd_err = |what: String| DumpError::Fd { pid, fd: s.fd, what };
        let copy = pidfd.get_fd(s.fd).map_err(|e| fd_err(crate::chain(&e)))?;
        // An fd sharing its open file description with a lower one is
        // recorded as a dup of it. Only fds on the same object can share.
        let mut same_as = None;
        for earlier in seen.iter().take_while(|e| e.fd < s.fd).filter(|e| e.ino == s.ino && e.target == s.target) {
            if kcmp::same_file(pid, earlier.fd, pid, s.fd).map_err(|e| fd_err(format!("kcmp: {e}")))? {
                same_as = Some(earlier.fd);
                break;
            }
        }
        let (mut kind, extra) = if let Some(first) = same_as {
            (
                fds.iter().find(|f| f.fd == first).and_then(|f| f.kind.clone()).expect("dumped before"),
                Default::default(),
            )
        } else {
            fd::dump(pid, s, &copy).map_err(fd_err)?
        };
        if let Some(p) = extra.pipe {
            pipes.entry(p.id).or_insert(p);
        }
        if let (Some(mut data), records::fd::Kind::File(file)) = (extra.contents, &mut kind) {
            file.contents_mm = FIRST_CONTENTS_MM + contents.len() as u32;
            if !data.is_empty() {
                data.resize(data.len().div_ceil(4096) * 4096, 0);
                contents.push((file.contents_mm, data));
            }
        }
        fds.push(Fd {
            fd: s.fd,
            flags: s.info.flags & !fd::FDINFO_CLOEXEC,
            cloexec: s.info.flags & fd::FDINFO_CLOEXEC != 0,
            pos: s.info.pos,
            kind: Some(kind),
            same_as,
        });
    }
    Ok((fds, pipes.into_values().collect(), contents))
}

/// Whether `dir` exists and holds an image (for refusing early).
pub fn holds_image(dir: &Path) -> bool {
    stasis_image::looks_like_image(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_process_is_named() {
        let err = preflight(Pid::from_raw(4_000_000)).unwrap_err();
        assert!(matches!(err, DumpError::NoProcess(_)), "{err}");
    }

    #[test]
    fn stasis_refuses_itself() {
        let err = preflight(Pid::this()).unwrap_err();
        assert!(err.to_string().contains("stasis itself"), "{err}");
    }
}
