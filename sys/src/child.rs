//! Throwaway child processes that are always killed and reaped.
//!
//! The agent forks children for two reasons: as targets for probes and tests
//! (something to seize, freeze or read memory from), and to try an operation
//! that could damage the caller if it succeeded halfway (`PR_SET_MM_MAP`,
//! `unshare(CLONE_NEWTIME)`).
//!
//! The agent is multi-threaded, so after `fork(2)` the child holds a copy of
//! every lock some other thread may have held at that instant. POSIX
//! (signal-safety(7)) therefore allows the child only async-signal-safe calls
//! until it execs or exits. That is why a child's behaviour is chosen from the
//! closed set [`ChildAction`] rather than from an arbitrary closure, and why
//! the crate-internal `run_in_child` is an `unsafe fn`.
//!
//! PID 1 on the machines stasis runs on reaps orphans lazily (more than a
//! second late), so a leaked zombie would keep its PID busy; [`Child`] reaps on
//! drop.

use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How long [`Child`]'s drop waits for a killed child before giving up on it.
/// A child that is frozen by a cgroup v1 freezer ignores SIGKILL until thawed,
/// and a drop must never hang the agent.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of child creation and reaping.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `fork(2)` (or `clone3(2)`) failed.
    #[error("cannot fork a child")]
    Fork(#[source] Errno),
    /// `waitpid(2)` on the child failed.
    #[error("cannot wait for child {pid}")]
    Wait {
        /// The child.
        pid: Pid,
        /// What waitpid returned.
        #[source]
        errno: Errno,
    },
    /// The child did not exit within the allotted time.
    #[error("child {pid} did not exit within {timeout:?}")]
    Timeout {
        /// The child.
        pid: Pid,
        /// How long we waited.
        timeout: Duration,
    },
}

/// What a forked child does. Every variant uses only async-signal-safe calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildAction {
    /// `_exit(code)` at once.
    Exit(u8),
    /// Sleep in `pause(2)` until killed: a quiet target.
    Pause,
    /// Spin on the CPU until killed: a target whose scheduler state is
    /// `R` while it runs, so that a freeze is visible in `/proc/PID/stat`.
    Spin,
    /// Stop itself with SIGSTOP, then pause: a target that waits to be seized.
    StopSelf,
}

impl ChildAction {
    /// Runs in the child after fork/clone3; never returns.
    pub(crate) fn run(self) -> ! {
        match self {
            ChildAction::Exit(code) => exit_now(i32::from(code)),
            ChildAction::Pause => loop {
                // SAFETY: pause(2) takes no arguments and only blocks the
                // calling thread until a signal arrives; it is
                // async-signal-safe.
                unsafe { libc::pause() };
            },
            ChildAction::Spin => loop {
                std::hint::spin_loop();
            },
            ChildAction::StopSelf => {
                // A process-directed kill rather than raise(3): after a raw
                // clone3 the thread descriptor libc keeps still describes
                // the parent's thread.
                // std::process::id is getpid(2), async-signal-safe.
                let me = std::process::id() as libc::pid_t;
                // SAFETY: kill(2) takes no memory arguments and is
                // async-signal-safe.
                unsafe { libc::kill(me, libc::SIGSTOP) };
                ChildAction::Pause.run()
            }
        }
    }
}

/// Terminates the calling process without running atexit handlers or
/// destructors, which would touch state copied from other threads.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) ends the process at once; it is async-signal-safe and
    // needs no valid program state.
    unsafe { libc::_exit(code) }
}

/// The errno of the last failed libc call in this thread, read without
/// allocating (usable in a forked child).
pub(crate) fn last_errno() -> i32 {
    Errno::last_raw()
}

/// A child process of the agent, killed with SIGKILL and reaped on drop.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    reaped: bool,
}

/// Forks a child that runs `action`.
pub fn spawn(action: ChildAction) -> Result<Child, Error> {
    // SAFETY: the child branch runs `ChildAction::run`, which makes only
    // async-signal-safe calls and never returns, as signal-safety(7) demands
    // of the child of a multi-threaded process.
    let pid = unsafe { run_in_child_raw(move || action.run()) }?;
    Ok(Child::from_pid(pid))
}

/// Forks, runs `f` in the child and `_exit`s with its return value; waits at
/// most `timeout` for the child and returns its exit status.
///
/// # Safety
///
/// `f` runs in the child of a possibly multi-threaded process: it must make
/// only async-signal-safe calls (no allocation, no locks, no stdio), see
/// signal-safety(7).
pub(crate) unsafe fn run_in_child<F: FnOnce() -> i32>(f: F, timeout: Duration) -> Result<WaitStatus, Error> {
    // SAFETY: forwarded from this function's contract: `f` is
    // async-signal-safe; exit_now is too.
    let pid = unsafe { run_in_child_raw(move || exit_now(f())) }?;
    let mut child = Child::from_pid(pid);
    child.wait_timeout(timeout)
}

/// # Safety
///
/// `f` must make only async-signal-safe calls; the child exits when it
/// returns.
unsafe fn run_in_child_raw<F: FnOnce()>(f: F) -> Result<Pid, Error> {
    // SAFETY: fork(2) has no memory-safety preconditions of its own; the
    // child runs only `f`, which the caller guarantees is async-signal-safe
    // and diverges, so it never returns into code that assumes the parent's
    // threads exist.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(Error::Fork(Errno::last())),
        0 => {
            f();
            exit_now(127)
        }
        pid => Ok(Pid::from_raw(pid)),
    }
}

impl Child {
    /// Takes ownership of an existing child of this process (created by
    /// `fork`, `clone3`, ...): it will be killed and reaped on drop.
    pub(crate) fn from_pid(pid: Pid) -> Self {
        Child { pid, reaped: false }
    }

    /// The child's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends `sig` to the child.
    pub fn signal(&self, sig: Signal) -> Result<(), Errno> {
        if self.reaped {
            return Err(Errno::ESRCH);
        }
        kill(self.pid, sig)
    }

    /// Reaps the child if it has ended. Stops (ptrace or job control) are not
    /// consumed here: a [`crate::ptrace::Seized`] on the same child owns them.
    pub fn try_wait(&mut self) -> Result<Option<WaitStatus>, Error> {
        if self.reaped {
            return Err(Error::Wait { pid: self.pid, errno: Errno::ECHILD });
        }
        // WEXITED alone reaps only an ended child and leaves ptrace and
        // job-control stops for whoever traces it.
        let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WEXITED;
        let status = waitid(Id::Pid(self.pid), flags).map_err(|errno| Error::Wait { pid: self.pid, errno })?;
        match status {
            WaitStatus::StillAlive => Ok(None),
            status => {
                self.reaped = true;
                Ok(Some(status))
            }
        }
    }

    /// Waits at most `timeout` for the child to end and reaps it.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<WaitStatus, Error> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout { pid: self.pid, timeout });
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Kills the child with SIGKILL and reaps it, waiting at most `timeout`.
    pub fn kill_and_reap(&mut self, timeout: Duration) -> Result<WaitStatus, Error> {
        if self.reaped {
            return Err(Error::Wait { pid: self.pid, errno: Errno::ECHILD });
        }
        // ESRCH cannot happen for an unreaped child (a zombie still accepts
        // kill); any error is reported by the wait below.
        let _ = kill(self.pid, Signal::SIGKILL);
        self.wait_timeout(timeout)
    }
}

impl Child {
    /// Gives up ownership: the process is no longer killed on drop. For a
    /// restored process, which must outlive the agent that made it.
    pub fn disown(mut self) -> Pid {
        self.reaped = true;
        self.pid
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.kill_and_reap(REAP_TIMEOUT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn exit_child_reports_its_code() {
        let mut child = spawn(ChildAction::Exit(7)).expect("fork");
        let status = child.wait_timeout(Duration::from_secs(5)).expect("wait");
        assert_eq!(status, WaitStatus::Exited(child.pid(), 7));
    }

    #[test]
    fn drop_kills_and_reaps_a_pausing_child() {
        let child = spawn(ChildAction::Pause).expect("fork");
        let pid = child.pid();
        drop(child);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "child {pid} still exists after drop");
    }

    #[test]
    fn stop_self_child_stops() {
        let child = spawn(ChildAction::StopSelf).expect("fork");
        let deadline = Instant::now() + Duration::from_secs(5);
        while crate::ptrace::task_state(child.pid()).unwrap() != 'T' {
            assert!(Instant::now() < deadline, "child {} did not stop itself", child.pid());
            thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn run_in_child_returns_the_closure_value() {
        // SAFETY: the closure only returns a constant.
        let status = unsafe { run_in_child(|| 42, Duration::from_secs(5)) }.expect("fork");
        assert!(matches!(status, WaitStatus::Exited(_, 42)), "{status:?}");
    }
}
