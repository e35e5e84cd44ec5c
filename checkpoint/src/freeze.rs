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

/// A process tree whose threads are all stopped under ptrace. Dropping it
/// lets them run on (detach), and restores the cgroup's freezer state.
#[derive(Debug)]
pub struct Frozen {
    /// Parents before children; the first is the root of the dump.
    processes: Vec<FrozenProcess>,
    /// Children that had exited and await their (stopped) parent's wait.
    zombies: Vec<Pid>,
    /// When the first thread stopped.
    since: Instant,
    /// A cgroup that was frozen before the dump, to freeze again before the
    /// threads are let go, and the journal entry that stands for it.
    refreeze: Option<(CgroupFreezer, journal::Recorded)>,
}

/// One stopped process of a [`Frozen`] tree.
#[derive(Debug)]
pub struct FrozenProcess {
    pid: Pid,
    /// The main thread first.
    threads: Vec<Seized>,
    /// It was stopped by a signal (SIGSTOP, SIGTSTP: a shell's stopped
    /// job) before it was seized.
    stopped: bool,
}

/// Whether a process is stopped by job control (state T).
fn job_stopped(pid: Pid) -> bool {
    proc::stat(pid).is_ok_and(|s| s.state == 'T')
}

impl FrozenProcess {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Stopped by a signal before the dump (it comes back stopped).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The job-control signal that stopped it, when not SIGSTOP: a seized
    /// stopped thread reports its group stop with that signal.
    pub fn stop_signal(&self) -> Option<i32> {
        use stasis_sys::nix::sys::signal::Signal;
        use stasis_sys::ptrace::{Stop, PTRACE_EVENT_STOP};
        let main = self.threads.iter().find(|t| t.pid() == self.pid)?;
        match main.stop()? {
            Stop::Event {
                event: PTRACE_EVENT_STOP,
                signal: s @ (Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU),
            } if self.stopped => Some(s as i32),
            _ => None,
        }
    }

    pub fn threads(&mut self) -> &mut [Seized] {
        &mut self.threads
    }
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
    /// The root of the dump.
    pub fn pid(&self) -> Pid {
        self.processes[0].pid
    }

    pub fn processes(&mut self) -> &mut [FrozenProcess] {
        &mut self.processes
    }

    pub fn zombies(&self) -> &[Pid] {
        &self.zombies
    }

    pub fn since(&self) -> Instant {
        self.since
    }

    /// Detach from every thread: the processes run on as they were (frozen
    /// again, if their cgroup was frozen before).
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
        for p in std::mem::take(&mut self.processes) {
            for t in p.threads {
                let tid = t.pid();
                if let Err(e) = t.detach() {
                    first.get_or_insert(FreezeError::Detach { tid, what: crate::chain(&e) });
                }
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

/// What to freeze: the tree of a process, or every process of a cgroup
/// with their descendants.
#[derive(Clone, Debug)]
pub enum Target {
    Tree(Pid),
    Cgroup(PathBuf),
}

/// Stop every thread of the target's processes, through `cgroup`'s freezer
/// when given.
pub fn freeze(target: &Target, cgroup: Option<&Path>) -> Result<Frozen, FreezeError> {
    let roots = match target {
        Target::Tree(pid) if !proc::path(*pid, "").exists() => return Err(FreezeError::NoProcess(*pid)),
        Target::Tree(pid) => vec![*pid],
        Target::Cgroup(dir) => cgroup_roots(dir)?,
    };
    match cgroup {
        None => freeze_ptrace(&roots),
        Some(dir) => freeze_cgroup(&roots, dir),
    }
}

/// Every process of a cgroup and of the cgroups below it, ascending.
fn cgroup_members(dir: &Path) -> Result<Vec<i32>, FreezeError> {
    let err = |what: String| FreezeError::Cgroup { cgroup: dir.to_owned(), what };
    let mut all = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        let procs =
            std::fs::read_to_string(d.join("cgroup.procs")).map_err(|e| err(format!("{}: {e}", d.display())))?;
        all.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        for e in std::fs::read_dir(&d).map_err(|e| err(e.to_string()))?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
    }
    all.sort_unstable();
    all.dedup();
    Ok(all)
}

/// The processes of a cgroup (and of the cgroups below it) whose parent is
/// not one of them, ascending.
pub fn cgroup_roots(dir: &Path) -> Result<Vec<Pid>, FreezeError> {
    let all = cgroup_members(dir)?;
    let roots: Vec<Pid> = all
        .iter()
        .filter(|&&p| proc::stat(Pid::from_raw(p)).is_ok_and(|s| all.binary_search(&s.ppid).is_err()))
        .map(|&p| Pid::from_raw(p))
        .collect();
    if roots.is_empty() {
        return Err(FreezeError::Cgroup { cgroup: dir.to_owned(), what: "it holds no process".into() });
    }
    Ok(roots)
}

fn seize(tid: Pid) -> Result<Option<Seized>, FreezeError> {
    match Seized::seize(tid, seize_options()) {
        Ok(s) => Ok(Some(s)),
        // The thread exited between listing and seizing.
        Err(stasis_sys::ptrace::Error::Seize { errno: Errno::ESRCH, .. }) => Ok(None),
        Err(e) => Err(FreezeError::Seize { tid, what: crate::chain(&e) }),
    }
}

/// What freezing one process found.
enum Caught {
    Stopped(FrozenProcess),
    Zombie,
    Gone,
}

/// Whether `pid` has exited and waits for its parent (a lone zombie main
/// thread; a main thread that exited before its other threads is not one).
fn is_zombie(pid: Pid) -> bool {
    proc::stat(pid).is_ok_and(|s| s.state == 'Z' || s.state == 'X') && proc::tids(pid).is_ok_and(|t| t.len() <= 1)
}

/// Seize and stop every thread of one process, reading its thread list
/// again until a pass finds no new thread.
fn freeze_process(pid: Pid, since: &mut Option<Instant>) -> Result<Caught, FreezeError> {
    if is_zombie(pid) {
        return Ok(Caught::Zombie);
    }
    let stopped = job_stopped(pid);
    let mut threads: Vec<Seized> = Vec::new();
    loop {
        let tids = match proc::tids(pid) {
            Ok(tids) => tids,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Caught::Gone),
            Err(source) => return Err(FreezeError::Threads { pid, source }),
        };
        let new: Vec<Pid> = tids.into_iter().filter(|t| !threads.iter().any(|s| s.pid() == *t)).collect();
        if new.is_empty() {
            break;
        }
        for tid in new {
            let s = match seize(tid) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                // Exited under our feet: a zombie main thread cannot be seized.
                Err(_) if tid == pid && is_zombie(pid) => return Ok(Caught::Zombie),
                Err(e) => return Err(e),
            };
            let mut s = s;
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
        return Ok(if is_zombie(pid) { Caught::Zombie } else { Caught::Gone });
    }
    threads.sort_by_key(|t| (t.pid() != pid, t.pid()));
    Ok(Caught::Stopped(FrozenProcess { pid, threads, stopped }))
}

/// Add to `frozen` every process below those it holds, stopping each
/// before its children are listed: a stopped process cannot fork, so the
/// walk ends with the whole tree caught.
fn complete(frozen: &mut Frozen, mut queue: std::collections::VecDeque<Pid>) -> Result<(), FreezeError> {
    let mut since = Some(frozen.since);
    let known = |f: &Frozen, pid: Pid| f.processes.iter().any(|p| p.pid == pid) || f.zombies.contains(&pid);
    while let Some(pid) = queue.pop_front() {
        if known(frozen, pid) {
            continue;
        }
        match freeze_process(pid, &mut since)? {
            Caught::Stopped(p) => {
                frozen.processes.push(p);
                queue.extend(children(pid)?);
            }
            Caught::Zombie => frozen.zombies.push(pid),
            Caught::Gone => {}
        }
    }
    Ok(())
}

fn children(pid: Pid) -> Result<Vec<Pid>, FreezeError> {
    proc::children(pid).map_err(|source| FreezeError::Threads { pid, source })
}

fn freeze_ptrace(roots: &[Pid]) -> Result<Frozen, FreezeError> {
    let mut frozen = Frozen { processes: Vec::new(), zombies: Vec::new(), since: Instant::now(), refreeze: None };
    let mut since = None;
    // The roots first, so that they lead the list whatever else is found.
    for &pid in roots {
        match freeze_process(pid, &mut since)? {
            Caught::Stopped(p) => frozen.processes.push(p),
            _ if roots.len() == 1 => return Err(FreezeError::NoProcess(pid)),
            _ => {}
        }
    }
    if frozen.processes.is_empty() {
        return Err(FreezeError::NoProcess(roots[0]));
    }
    frozen.since = since.unwrap_or_else(Instant::now);
    let mut queue = std::collections::VecDeque::new();
    for p in &frozen.processes {
        queue.extend(children(p.pid)?);
    }
    complete(&mut frozen, queue)?;
    Ok(frozen)
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

fn freeze_cgroup(roots: &[Pid], dir: &Path) -> Result<Frozen, FreezeError> {
    let cg_err = |what: String| FreezeError::Cgroup { cgroup: dir.to_owned(), what };
    let freezer = cgroup_freezer(dir)?;
    let members = cgroup_members(dir)?;
    if let Some(&pid) = roots.iter().find(|p| members.binary_search(&p.as_raw()).is_err()) {
        return Err(FreezeError::NotInCgroup { pid, cgroup: dir.to_owned() });
    }
    let was_frozen = freezer.is_frozen().map_err(|e| cg_err(e.to_string()))?;
    let entry = journal::record_freeze(&freezer, was_frozen).map_err(|e| cg_err(format!("journal: {e}")))?;
    freezer.freeze(STOP_TIMEOUT).map_err(|e| cg_err(e.to_string()))?;
    let since = Instant::now();
    // From here the cgroup must be thawed on every path. Nothing in it can
    // fork while it is frozen: the tree is listed once, and every thread is
    // seized and asked to stop.
    let result = (|| {
        let mut processes = Vec::new();
        let mut zombies = Vec::new();
        let mut queue: std::collections::VecDeque<Pid> = roots.iter().copied().collect();
        while let Some(pid) = queue.pop_front() {
            if processes.iter().any(|p: &FrozenProcess| p.pid == pid) || zombies.contains(&pid) {
                continue;
            }
            if is_zombie(pid) {
                zombies.push(pid);
                continue;
            }
            let Ok(tids) = proc::tids(pid) else { continue };
            let stopped = job_stopped(pid);
            let mut threads = Vec::new();
            for tid in tids {
                let Some(s) = seize(tid)? else { continue };
                match nix::sys::ptrace::interrupt(tid) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => return Err(FreezeError::Stop { tid, what: crate::chain(&e) }),
                }
                threads.push(s);
            }
            threads.sort_by_key(|t| (t.pid() != pid, t.pid()));
            queue.extend(children(pid)?);
            processes.push(FrozenProcess { pid, threads, stopped });
        }
        Ok((processes, zombies))
    })();
    // Thawed even if it was frozen before: the tasks stay in their ptrace
    // stops, and are frozen again before they are let go.
    let thawed = freezer.thaw(STOP_TIMEOUT).map_err(|e| cg_err(e.to_string()));
    let (processes, zombies) = result?;
    let mut frozen = Frozen { processes, zombies, since, refreeze: None };
    if was_frozen {
        frozen.refreeze = Some((freezer, entry));
    }
    thawed?;
    for p in &mut frozen.processes {
        for s in &mut p.threads {
            let tid = s.pid();
            s.wait_stop(STOP_TIMEOUT).map_err(|e| FreezeError::Stop { tid, what: crate::chain(&e) })?;
        }
    }
    if frozen.processes.first().is_none_or(|p| !p.threads.iter().any(|t| t.pid() == p.pid)) {
        return Err(FreezeError::NoProcess(roots[0]));
    }
    // Processes outside the cgroup's freezer may have forked meanwhile.
    let queue = frozen.processes.iter().map(|p| p.pid).map(children).collect::<Result<Vec<_>, _>>()?;
    complete(&mut frozen, queue.into_iter().flatten().collect())?;
    Ok(frozen)
}
