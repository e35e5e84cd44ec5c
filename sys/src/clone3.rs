//! clone3(2) with `set_tid`: creating a process at a chosen pid.
//!
//! Restore recreates every task at its original pid. `struct clone_args`
//! (include/uapi/linux/sched.h, Linux 5.5+) carries `set_tid`, an array of
//! pids, one per pid-namespace level starting with the innermost; the kernel
//! (kernel/pid.c `alloc_pid`) fails with EEXIST if a pid is taken and with
//! EPERM unless the caller has CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in the
//! owning user namespace of every level it names.
//!
//! Without `CLONE_VM` the child is a copy of the caller, like after fork(2),
//! so it obeys the same rule: in a multi-threaded caller it may only make
//! async-signal-safe calls. Its behaviour is therefore a [`ChildAction`].

use std::mem;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::child::{Child, ChildAction};

/// Errors of clone3.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// clone3 failed: EEXIST (a requested pid is taken), EPERM (no
    /// CAP_CHECKPOINT_RESTORE), EINVAL (more pids than namespace levels),
    /// ENOSYS (kernel before 5.3).
    #[error("clone3 with set_tid {set_tid:?} failed")]
    Clone3 {
        /// The pids requested, innermost namespace first.
        set_tid: Vec<Pid>,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// The kernel returned a pid other than the one requested.
    #[error("clone3 was asked for pid {requested} but created {created}")]
    WrongPid {
        /// The pid asked for at the innermost level.
        requested: Pid,
        /// The pid the child got.
        created: Pid,
    },
}

/// Creates a child process at the pids in `set_tid` (innermost pid
/// namespace first; may be empty for "any pid") that runs `action`. The
/// child sends SIGCHLD to the caller when it ends, like a forked child.
pub fn spawn_with_tid(set_tid: &[Pid], action: ChildAction) -> Result<Child, Error> {
    let clone_err = |errno| Error::Clone3 { set_tid: set_tid.to_vec(), errno };
    let tids: Vec<libc::pid_t> = set_tid.iter().map(|p| p.as_raw()).collect();
    // SAFETY: clone_args is a plain struct of u64 fields for which all-zero
    // is the documented "no options" value.
    let mut args: libc::clone_args = unsafe { mem::zeroed() };
    args.exit_signal = libc::SIGCHLD as u64;
    if !tids.is_empty() {
        args.set_tid = tids.as_ptr() as u64;
        args.set_tid_size = tids.len() as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size passed, and `tids`
    // outlives the call. Without CLONE_VM the child gets a copy-on-write copy
    // of our memory and continues on its own copy of this stack, where it
    // only runs `action.run()`: async-signal-safe calls and no return.
    let ret =
        unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut libc::clone_args, size_of::<libc::clone_args>()) };
    match ret {
        -1 => Err(clone_err(Errno::last())),
        0 => action.run(),
        pid => {
            let created = Pid::from_raw(pid as libc::pid_t);
            let child = Child::from_pid(created);
            if let Some(&requested) = set_tid.first() {
                if requested != created {
                    return Err(Error::WrongPid { requested, created });
                }
            }
            Ok(child)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::WaitStatus;
    use std::path::Path;
    use std::time::Duration;

    fn free_pid() -> Pid {
        let last: i32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").unwrap().trim().parse().unwrap();
        let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        (1..1000)
            .map(|d| (last + 500 + d) % max)
            .find(|&p| p > 300 && !Path::new(&format!("/proc/{p}")).exists())
            .map(Pid::from_raw)
            .expect("no free pid near ns_last_pid")
    }

    #[test]
    fn creates_the_child_at_the_requested_pid() {
        let mut last_err = None;
        for _ in 0..5 {
            let pid = free_pid();
            match spawn_with_tid(&[pid], ChildAction::Exit(3)) {
                Ok(mut child) => {
                    assert_eq!(child.pid(), pid);
                    let status = child.wait_timeout(Duration::from_secs(5)).unwrap();
                    assert_eq!(status, WaitStatus::Exited(pid, 3));
                    return;
                }
                // Someone else took the pid between the check and clone3.
                Err(Error::Clone3 { errno: Errno::EEXIST, .. }) => continue,
                Err(err) => last_err = Some(err),
            }
        }
        panic!("clone3 with set_tid failed: {last_err:?}");
    }

    /// The restore path: a task created at its pid that waits, stopped, to
    /// be seized.
    #[test]
    fn a_self_stopped_clone3_child_can_be_seized() {
        use crate::ptrace::{Options, Seized, Stop};
        let child = spawn_with_tid(&[], ChildAction::StopSelf).expect("clone3");
        let mut seized = Seized::seize(child.pid(), Options::PTRACE_O_EXITKILL).expect("seize");
        let stop = seized.interrupt(Duration::from_secs(5)).expect("interrupt");
        assert!(matches!(stop, Stop::Event { .. } | Stop::Signal(_)), "{stop:?}");
    }

    #[test]
    fn a_taken_pid_is_eexist() {
        let me = nix::unistd::getpid();
        let err = spawn_with_tid(&[me], ChildAction::Exit(0)).unwrap_err();
        assert!(matches!(err, Error::Clone3 { errno: Errno::EEXIST, .. }), "{err:?}");
    }
}
