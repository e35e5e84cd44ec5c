//! Stopping every thread of a process and holding it with ptrace.
//!
//! Without a cgroup, each thread is seized and interrupted in turn, and the
//! thread list is read again until a pass finds no new thread: a stopped
//! thread cannot create another, so the loop ends once all are caught.
//!
//! With a cgroup, the cgroup freezer first stops the whole group at once (no
//! fork can race with us), every thread is seized and interrupted, and the
//! cgroup is thawed: the interrupt is pending, so each task goes from the
//! freezer straight into a ptrace stop without running user code
//! (cgroup v1 tasks only act on the interrupt once thawed; v2 tasks leave the
//! freezer trap for it at once: kernel/signal.c `do_freezer_trap`). The
//! cgroup must be thawed while stasis works: a task resumed for an injected
//! system call would otherwise go straight back into the freezer. A cgroup
//! that was frozen before the dump is frozen again before its tasks are let
//! go, so the dump leaves it as it found it. Every freeze is recorded in the
//! [`crate::journal`] first, which restores the cgroup's state if stasis is
//! killed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stasis_sys::ptrace::{Options, Seized};
use stasis_sys::{nix, Errno, Pid};

use crate::freezer::{self, CgroupFreezer};
use crate::{journal, proc};

/// How long one thread may take to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A process whose threads are all stopped under ptrace. Dropping it lets
/// them run on (detach), and restores the cgroup's freezer state.
#[derive(Debug)]
pub struct Frozen {
    pid: Pid,
    /// The main thread first.
    threads: Vec<Seized>,
    /// When the first thread stopped.
    since: Instant,
    /// A cgroup that was frozen before the dump, to freeze again before the
    /// threads are let go, and the journal entry that stands for it.
    refreeze: Option<(CgroupFreezer, journal::Recorded)>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // Before the threads detach (the fields drop after this).
        if let Some((freezer, _entry)) = self.refreeze.take() {
            if let Err(e) = freezer.freeze(STOP_TIMEOUT) {
                tracing::error!("cannot freeze {} again: {e}", freezer.dir().display());
            }
        }
    }
}

impl Frozen {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn threads(&mut self) -> &mut [Seized] {
        &mut self.threads
    }

    pub fn since(&self) -> Instant {
        self.since
    }

    /// Detach from every thread: the process runs on as it was (frozen
    /// again, if its cgroup was frozen before).
    pub fn release(mut self) -> Result<(), FreezeError> {
        let mut first = None;
        if let Some((freezer, entry)) = self.refreeze.take() {
            if let Err(e) = freezer.freeze(STOP_TIMEOUT) {
                first = Some(FreezeError::Cgroup {
                    cgroup: freezer.dir().to_owned(),
                    what: format!("freezing it again: {e}"),
                });
            }
            drop(entry);
        }
        for t in std::mem::take(&mut self.threads) {
            let tid = t.pid();
            if let Err(e) = t.detach() {
                first.get_or_insert(FreezeError::Detach { tid, what: crate::chain(&e) });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Why a process could not be frozen.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("process {0} does not exist")]
    NoProcess(Pid),
    #[error("cannot list the threads of process {pid}")]
    Threads { pid: Pid, source: std::io::Error },
    #[error("cannot seize thread {tid}: {what}")]
    Seize { tid: Pid, what: String },
    #[error("thread {tid} did not stop: {what}")]
    Stop { tid: Pid, what: String },
    #[error("cannot detach from thread {tid}: {what}")]
    Detach { tid: Pid, what: String },
    #[error("cannot use the freezer of cgroup {cgroup}: {what}")]
    Cgroup { cgroup: PathBuf, what: String },
    #[error("process {pid} is not in cgroup {cgroup}")]
    NotInCgroup { pid: Pid, cgroup: PathBuf },
}

/// Options every dump seizes with: TRACESYSGOOD to tell syscall stops from
/// signal stops when injecting. Never EXITKILL: if stasis dies, the target
/// must live on.
pub fn seize_options() -> Options {
    Options::PTRACE_O_TRACESYSGOOD
}

/// Stop every thread of `pid`, through `cgroup`'s freezer when given.
pub fn freeze(pid: Pid, cgroup: Option<&Path>) -> Result<Frozen, FreezeError> {
    if !proc::path(pid, "").exists() {
        return Err(FreezeError::NoProcess(pid));
    }
    match cgroup {
        None => freeze_ptrace(pid),
        Some(dir) => freeze_cgroup(pid, dir),
    }
}

fn seize(tid: Pid) -> Result<Option<Seized>, FreezeError> {
    match Seized::seize(tid, seize_options()) {
        Ok(s) => Ok(Some(s)),
        // The thread exited between listing and seizing.
        Err(stasis_sys::ptrace::Error::Seize { errno: Errno::ESRCH, .. }) => Ok(None),
        Err(e) => Err(FreezeError::Seize { tid, what: crate::chain(&e) }),
    }
}

fn freeze_ptrace(pid: Pid) -> Result<Frozen, FreezeError> {
    let mut threads: Vec<Seized> = Vec::new();
    let mut since = None;
    loop {
        let tids = proc::tids(pid).map_err(|source| FreezeError::Threads { pid, source })?;
        let new: Vec<Pid> = tids.into_iter().filter(|t| !threads.iter().any(|s| s.pid() == *t)).collect();
        if new.is_empty() {
            break;
        }
        for tid in new {
            let Some(mut s) = seize(tid)? else { continue };
            match s.interrupt(STOP_TIMEOUT) {
                Ok(_) => {}
                Err(stasis_sys::ptrace::Error::Gone { .. }) => continue,
                Err(e) => return Err(FreezeError::Stop { tid, what: crate::chain(&e) }),
            }
            since.get_or_insert_with(Instant::now);
            threads.push(s);
        }
    }
    if !threads.iter().any(|t| t.pid() == pid) {
        return Err(FreezeError::NoProcess(pid));
    }
    threads.sort_by_key(|t| (t.pid() != pid, t.pid()));
    Ok(Frozen { pid, threads, since: since.unwrap_or_else(Instant::now), refreeze: None })
}

/// Which freezer a cgroup directory has: v2 (`cgroup.freeze`) or v1
/// (`freezer.state`).
pub fn cgroup_freezer(dir: &Path) -> Result<CgroupFreezer, FreezeError> {
    let err = |what: &str| FreezeError::Cgroup { cgroup: dir.to_owned(), what: what.into() };
    if dir.join("cgroup.freeze").exists() {
        Ok(CgroupFreezer::new(dir, freezer::Kind::V2))
    } else if dir.join("freezer.state").exists() {
        Ok(CgroupFreezer::new(dir, freezer::Kind::V1))
    } else if dir.exists() {
        Err(err("it has neither cgroup.freeze (v2) nor freezer.state (v1)"))
    } else {
        Err(err("no such cgroup directory"))
    }
}

/// The cgroup (v2, or v1 freezer) that holds `pid` frozen, if any. A
/// process in a frozen cgroup can be seized but not made to run injected
/// system calls: the dump must go through that cgroup's freezer.
pub fn frozen_cgroup_of(pid: Pid) -> Option<PathBuf> {
    let mounts = freezer::parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").ok()?);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let candidates = [
        freezer::cgroup2_mount(&mounts).zip(freezer::own_cgroup(&own, None)),
        freezer::freezer_v1_mount(&mounts).zip(freezer::own_cgroup(&own, Some("freezer"))),
    ];
    let found = candidates.into_iter().flatten().find_map(|(mount, rel)| {
        let dir = mount.mount_point.join(rel.strip_prefix("/").unwrap_or(&rel));
        let freezer = cgroup_freezer(&dir).ok()?;
        freezer.is_frozen().ok()?.then_some(dir)
    });
    found
}

fn freeze_cgroup(pid: Pid, dir: &Path) -> Result<Frozen, FreezeError> {
    let cg_err = |what: String| FreezeError::Cgroup { cgroup: dir.to_owned(), what };
    let freezer = cgroup_freezer(dir)?;
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).map_err(|e| cg_err(e.to_string()))?;
    if !procs.lines().any(|l| l.trim() == pid.to_string()) {
        return Err(FreezeError::NotInCgroup { pid, cgroup: dir.to_owned() });
    }
    let was_frozen = freezer.is_frozen().map_err(|e| cg_err(e.to_string()))?;
    let entry = journal::record_freeze(&freezer, was_frozen).map_err(|e| cg_err(format!("journal: {e}")))?;
    freezer.freeze(STOP_TIMEOUT).map_err(|e| cg_err(e.to_string()))?;
    let since = Instant::now();
    // From here the cgroup must be thawed on every path.
    let result = (|| {
        let tids = proc::tids(pid).map_err(|source| FreezeError::Threads { pid, source })?;
        let mut threads = Vec::new();
        for tid in tids {
            let Some(s) = seize(tid)? else { continue };
            match nix::sys::ptrace::interrupt(tid) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(FreezeError::Stop { tid, what: crate::chain(&e) }),
            }
            threads.push(s);
        }
        Ok(threads)
    })();
    // Thawed even if it was frozen before: the tasks stay in their ptrace
    // stops, and are frozen again before they are let go.
    let thawed = freezer.thaw(STOP_TIMEOUT).map_err(|e| cg_err(e.to_string()));
    let threads = result?;
    let mut frozen = Frozen { pid, threads, since, refreeze: None };
    if was_frozen {
        frozen.refreeze = Some((freezer, entry));
    }
    thawed?;
    for s in &mut frozen.threads {
        let tid = s.pid();
        s.wait_stop(STOP_TIMEOUT).map_err(|e| FreezeError::Stop { tid, what: crate::chain(&e) })?;
    }
    frozen.threads.sort_by_key(|t| (t.pid() != pid, t.pid()));
    Ok(frozen)
}
