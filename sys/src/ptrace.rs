//! `PTRACE_SEIZE` / `PTRACE_INTERRUPT`: taking hold of one thread without
//! sending it a signal.
//!
//! Unlike `PTRACE_ATTACH`, `PTRACE_SEIZE` does not stop the tracee and does
//! not queue a SIGSTOP that the tracee could later observe; `PTRACE_INTERRUPT`
//! then stops it in a `PTRACE_EVENT_STOP` ("group-stop-like") state that works
//! even on a task frozen by a cgroup freezer (ptrace(2), "Attaching and
//! detaching"; kernel/ptrace.c `ptrace_attach`, `ptrace_request`).
//!
//! ptrace is per thread *and per tracer thread*: every ptrace request on a
//! tracee must come from the very thread that seized it. [`Seized`] is
//! therefore `!Send`; a dumper that wants parallelism keeps one tracer
//! thread per group of tracees.
//!
//! A [`Seized`] detaches on drop, interrupting the tracee first if it is
//! running (`PTRACE_DETACH` only works on a stopped tracee), and re-injects a
//! signal whose delivery it intercepted, so the tracee never notices it was
//! traced.

use std::marker::PhantomData;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub use nix::sys::ptrace::Options;

/// How long a drop waits for a running tracee to stop before detaching.
const DROP_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of ptrace operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `PTRACE_SEIZE` failed (EPERM: no CAP_SYS_PTRACE or Yama; ESRCH: gone).
    #[error("cannot seize task {pid}")]
    Seize {
        /// The task.
        pid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_INTERRUPT` failed.
    #[error("cannot interrupt task {pid}")]
    Interrupt {
        /// The task.
        pid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `waitpid(2)` on the tracee failed.
    #[error("cannot wait for task {pid}")]
    Wait {
        /// The task.
        pid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// The tracee did not stop in time.
    #[error("task {pid} did not stop within {timeout:?}")]
    StopTimeout {
        /// The task.
        pid: Pid,
        /// How long we waited.
        timeout: Duration,
    },
    /// The tracee exited or was killed while we waited for it to stop.
    #[error("task {pid} ended while being stopped: {status:?}")]
    Gone {
        /// The task.
        pid: Pid,
        /// How it ended.
        status: WaitStatus,
    },
    /// `PTRACE_CONT` failed.
    #[error("cannot resume task {pid}")]
    Resume {
        /// The task.
        pid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_DETACH` failed.
    #[error("cannot detach from task {pid}")]
    Detach {
        /// The task.
        pid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
}

/// Why a seized tracee is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A `PTRACE_EVENT_*` stop; `PTRACE_EVENT_STOP` (128) after
    /// `PTRACE_INTERRUPT` or a group stop. `signal` is the stop signal for a
    /// group stop, SIGTRAP otherwise.
    Event {
        /// The `PTRACE_EVENT_*` number.
        event: i32,
        /// The signal in the wait status.
        signal: Signal,
    },
    /// A signal-delivery-stop: `signal` was about to be delivered and will be
    /// re-injected on resume or detach.
    Signal(Signal),
    /// A syscall-stop (with `PTRACE_O_TRACESYSGOOD`).
    Syscall,
}

/// `PTRACE_EVENT_STOP` from `<linux/ptrace.h>`.
pub const PTRACE_EVENT_STOP: i32 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Stopped(Stop),
    Gone,
}

/// One thread held with `PTRACE_SEIZE`. Detaches on drop.
///
/// `!Send`: ptrace requests are only accepted from the tracer thread.
#[derive(Debug)]
pub struct Seized {
    pid: Pid,
    state: State,
    /// A signal whose delivery-stop we consumed; handed back on resume/detach.
    pending: Option<Signal>,
    _tracer_thread: PhantomData<*const ()>,
}

impl Seized {
    /// `PTRACE_SEIZE` of thread `tid` with `options`. The tracee keeps running.
    pub fn seize(tid: Pid, options: Options) -> Result<Self, Error> {
        ptrace::seize(tid, options).map_err(|errno| Error::Seize { pid: tid, errno })?;
        Ok(Seized { pid: tid, state: State::Running, pending: None, _tracer_thread: PhantomData })
    }

    /// The tracee's tid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// How the tracee is stopped, or `None` while it runs.
    pub fn stop(&self) -> Option<Stop> {
        match self.state {
            State::Stopped(stop) => Some(stop),
            _ => None,
        }
    }

    /// A signal intercepted in a signal-delivery-stop, to be re-delivered.
    pub fn pending_signal(&self) -> Option<Signal> {
        self.pending
    }

    /// `PTRACE_INTERRUPT`, then waits at most `timeout` for the tracee to
    /// report a stop. Returns at once if it is already stopped.
    pub fn interrupt(&mut self, timeout: Duration) -> Result<Stop, Error> {
        if let State::Stopped(stop) = self.state {
            return Ok(stop);
        }
        ptrace::interrupt(self.pid).map_err(|errno| Error::Interrupt { pid: self.pid, errno })?;
        self.wait_stop(timeout)
    }

    /// Waits at most `timeout` for the next stop of the tracee.
    pub fn wait_stop(&mut self, timeout: Duration) -> Result<Stop, Error> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut pause = Duration::from_micros(100);
        loop {
            let status = self.next_status()?;
            let stop = match status {
                WaitStatus::StillAlive => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::StopTimeout { pid: self.pid, timeout });
                    }
                    // An injected system call stops again within
                    // microseconds: yield first, and sleep (which costs far
                    // more than the call itself) only for a slow stop.
                    if now - start < YIELD_FOR {
                        thread::yield_now();
                        continue;
                    }
                    thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                    continue;
                }
                WaitStatus::PtraceEvent(_, signal, event) => Stop::Event { event, signal },
                WaitStatus::PtraceSyscall(_) => Stop::Syscall,
                WaitStatus::Stopped(_, signal) => {
                    self.pending = Some(signal);
                    Stop::Signal(signal)
                }
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    self.state = State::Gone;
                    return Err(Error::Gone { pid: self.pid, status });
                }
                WaitStatus::Continued(_) => continue,
            };
            self.state = State::Stopped(stop);
            return Ok(stop);
        }
    }

    /// The next wait status of the tracee without blocking. An exit of our
    /// own child is only peeked at, not reaped: the reaping belongs to its
    /// owner (a [`crate::child::Child`]), which would otherwise signal a pid
    /// that may have been reused.
    fn next_status(&self) -> Result<WaitStatus, Error> {
        let wait_err = |errno| Error::Wait { pid: self.pid, errno };
        // __WALL: the tracee may be a non-leader thread, which only reports
        // with __WALL (wait(2)).
        let peek = WaitPidFlag::WNOHANG
            | WaitPidFlag::__WALL
            | WaitPidFlag::WEXITED
            | WaitPidFlag::WSTOPPED
            | WaitPidFlag::WNOWAIT;
        let peeked = waitid(Id::Pid(self.pid), peek).map_err(wait_err)?;
        match peeked {
            WaitStatus::StillAlive => return Ok(peeked),
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) if is_our_child(self.pid) => return Ok(peeked),
            _ => {}
        }
        waitpid(self.pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)).map_err(wait_err)
    }

    /// Resumes a stopped tracee (`PTRACE_CONT`), delivering the intercepted
    /// signal if there is one.
    pub fn resume(&mut self) -> Result<(), Error> {
        let sig = self.pending.take();
        ptrace::cont(self.pid, sig).map_err(|errno| Error::Resume { pid: self.pid, errno })?;
        self.state = State::Running;
        Ok(())
    }

    /// Detaches, stopping the tracee first if it runs. The tracee resumes.
    pub fn detach(mut self) -> Result<(), Error> {
        self.detach_inner(DROP_STOP_TIMEOUT)
    }

    fn detach_inner(&mut self, timeout: Duration) -> Result<(), Error> {
        match self.state {
            State::Gone => return Ok(()),
            State::Running => match self.interrupt(timeout) {
                Ok(_) => {}
                // A tracee that died needs no detach.
                Err(Error::Gone { .. }) => return Ok(()),
                Err(err) => return Err(err),
            },
            State::Stopped(_) => {}
        }
        let sig = self.pending.take();
        let result = ptrace::detach(self.pid, sig).map_err(|errno| Error::Detach { pid: self.pid, errno });
        // ESRCH here means the tracee was killed meanwhile: nothing to undo.
        self.state = State::Gone;
        match result {
            Err(Error::Detach { errno: Errno::ESRCH, .. }) => Ok(()),
            other => other,
        }
    }
}

/// How long [`Seized::wait_stop`] polls without sleeping.
const YIELD_FOR: Duration = Duration::from_micros(500);

impl Drop for Seized {
    fn drop(&mut self) {
        let _ = self.detach_inner(DROP_STOP_TIMEOUT);
    }
}

/// Requests used by syscall injection ([`crate::inject`]), which needs to
/// steer a tracee between syscall-stops and `PTRACE_EVENT_STOP`.
impl Seized {
    /// Takes hold of a thread that the kernel attached to us on its own: a
    /// thread created by a tracee with `CLONE_PTRACE`, or under
    /// `PTRACE_O_TRACECLONE`/`TRACEFORK`, inherits our `PTRACE_SEIZE` and
    /// starts with a pending `PTRACE_EVENT_STOP` (kernel/ptrace.c
    /// `ptrace_init_task`), so it stops before running any user code. Waits
    /// at most `timeout` for that first stop.
    pub fn adopt_auto_attached(tid: Pid, timeout: Duration) -> Result<Self, Error> {
        let mut seized = Seized { pid: tid, state: State::Running, pending: None, _tracer_thread: PhantomData };
        seized.wait_stop(timeout)?;
        Ok(seized)
    }

    /// `PTRACE_SYSCALL`: resumes a stopped tracee until its next
    /// syscall-enter or syscall-exit stop, delivering the intercepted
    /// signal if there is one (see [`Seized::take_pending_signal`]).
    pub fn resume_to_syscall(&mut self) -> Result<(), Error> {
        let sig = self.pending.take();
        ptrace::syscall(self.pid, sig).map_err(|errno| Error::Resume { pid: self.pid, errno })?;
        self.state = State::Running;
        Ok(())
    }

    /// `PTRACE_INTERRUPT` sent to a tracee that is already stopped: it takes
    /// effect once the tracee is resumed, which then stops again in
    /// `PTRACE_EVENT_STOP` inside `get_signal()`, before it can return to
    /// user mode (kernel/signal.c `get_signal` handles `JOBCTL_TRAP_STOP`
    /// before dequeuing any signal).
    pub fn interrupt_after_resume(&self) -> Result<(), Error> {
        ptrace::interrupt(self.pid).map_err(|errno| Error::Interrupt { pid: self.pid, errno })
    }

    /// Forgets the signal intercepted in a signal-delivery-stop, so that the
    /// next resume suppresses it.
    pub fn take_pending_signal(&mut self) -> Option<Signal> {
        self.pending.take()
    }
}

fn is_our_child(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(1)?.parse::<i32>().ok()
        })
        .is_some_and(|ppid| ppid == nix::unistd::getpid().as_raw())
}

/// The scheduler state letter of a task (`/proc/PID/stat` field 3):
/// `t` is a ptrace stop, `T` a job-control stop, `D` a cgroup v1 freeze.
pub fn task_state(pid: Pid) -> std::io::Result<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // comm (field 2) may contain spaces and parentheses: the state follows
    // the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
        .ok_or_else(|| std::io::Error::other(format!("malformed /proc/{pid}/stat")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::{spawn, ChildAction};

    #[test]
    fn seize_interrupt_detach() {
        let child = spawn(ChildAction::Pause).expect("fork");
        let mut seized =
            Seized::seize(child.pid(), Options::PTRACE_O_TRACESYSGOOD).expect("PTRACE_SEIZE of our own child failed");
        assert_eq!(seized.stop(), None);
        let stop = seized.interrupt(Duration::from_secs(5)).expect("PTRACE_INTERRUPT did not stop the child");
        assert!(matches!(stop, Stop::Event { event: PTRACE_EVENT_STOP, .. }), "{stop:?}");
        assert_eq!(task_state(child.pid()).unwrap(), 't');
        seized.detach().expect("detach");
        // After detach the child runs (sleeps in pause) again.
        let deadline = Instant::now() + Duration::from_secs(2);
        // It passes through R on its way back into pause(2).
        while task_state(child.pid()).unwrap() != 'S' && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(task_state(child.pid()).unwrap(), 'S');
    }

    #[test]
    fn drop_detaches_a_running_tracee() {
        let child = spawn(ChildAction::Pause).expect("fork");
        let seized = Seized::seize(child.pid(), Options::empty()).expect("seize");
        drop(seized);
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid())).unwrap();
        let tracer = status.lines().find_map(|l| l.strip_prefix("TracerPid:")).map(str::trim);
        assert_eq!(tracer, Some("0"));
    }
}
