//! pidfds: stable handles on a process (pidfd_open(2)), copies of its file
//! descriptors (pidfd_getfd(2), Linux 5.6) and race-free signals
//! (pidfd_send_signal(2)).
//!
//! A pidfd names one process for its whole life: unlike a pid it cannot be
//! recycled under us, so every operation the dumper does "on pid P" after the
//! initial discovery goes through one. `pidfd_getfd` is how the dumper reads
//! a target's descriptors without running code in it; it needs
//! `PTRACE_MODE_ATTACH_REALCREDS` over the target (the same as ptrace).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Errors of pidfd operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// pidfd_open(2) failed (ESRCH: no such process).
    #[error("cannot open a pidfd for process {pid}")]
    Open {
        /// The process.
        pid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// pidfd_getfd(2) failed (EBADF: no such fd; EPERM: no ptrace access).
    #[error("cannot copy fd {fd} of process {pid}")]
    GetFd {
        /// The process.
        pid: Pid,
        /// The target's fd number.
        fd: RawFd,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// pidfd_send_signal(2) failed.
    #[error("cannot send {signal} to process {pid}")]
    Signal {
        /// The process.
        pid: Pid,
        /// The signal.
        signal: Signal,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
}

/// An open pidfd, closed on drop.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: Pid,
}

impl From<PidFd> for OwnedFd {
    fn from(p: PidFd) -> OwnedFd {
        p.fd
    }
}

impl PidFd {
    /// pidfd_open(pid, 0). The fd is close-on-exec (always, per the man page).
    pub fn open(pid: Pid) -> Result<Self, Error> {
        // SAFETY: pidfd_open takes a pid and a flags word by value and
        // touches no memory of ours.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        let fd = check_fd(ret).map_err(|errno| Error::Open { pid, errno })?;
        // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PidFd { fd, pid })
    }

    /// The pid this pidfd was opened for.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// pidfd_getfd: a new descriptor in this process referring to the same
    /// open file description as `target_fd` in the target (close-on-exec).
    pub fn get_fd(&self, target_fd: RawFd) -> Result<OwnedFd, Error> {
        // SAFETY: pidfd_getfd takes two ints and a zero flags word by value;
        // self.fd is a live pidfd for the duration of the call.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.fd.as_raw_fd(), target_fd, 0) };
        let fd = check_fd(ret).map_err(|errno| Error::GetFd { pid: self.pid, fd: target_fd, errno })?;
        // SAFETY: pidfd_getfd returned a new descriptor that nothing else
        // owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// pidfd_send_signal(pidfd, signal, NULL, 0): like kill(2), but cannot
    /// hit a process that reused the pid.
    pub fn send_signal(&self, signal: Signal) -> Result<(), Error> {
        // SAFETY: a NULL siginfo is allowed (the kernel then fills in the
        // kill(2)-like defaults); the other arguments are plain integers.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if ret == -1 {
            return Err(Error::Signal { pid: self.pid, signal, errno: Errno::last() });
        }
        Ok(())
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn check_fd(ret: libc::c_long) -> Result<RawFd, Errno> {
    if ret < 0 {
        return Err(Errno::last());
    }
    RawFd::try_from(ret).map_err(|_| Errno::EOVERFLOW)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::{spawn, ChildAction};
    use std::io::{Read, Write};

    #[test]
    fn getfd_copies_a_pipe_end_of_a_child() {
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        let child = spawn(ChildAction::Pause).expect("fork");
        let target_fd = read_end.as_raw_fd();
        drop(read_end);

        let pidfd = PidFd::open(child.pid()).expect("pidfd_open");
        let copy = pidfd.get_fd(target_fd).expect("pidfd_getfd of the child's pipe end");
        let mut writer = std::fs::File::from(write_end);
        writer.write_all(b"stasis").unwrap();
        let mut buf = [0u8; 6];
        std::fs::File::from(copy).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"stasis");
    }

    #[test]
    fn send_signal_kills_the_child() {
        let mut child = spawn(ChildAction::Pause).expect("fork");
        let pidfd = PidFd::open(child.pid()).expect("pidfd_open");
        pidfd.send_signal(Signal::SIGTERM).expect("pidfd_send_signal");
        let status = child.wait_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Signaled(child.pid(), Signal::SIGTERM, false));
    }

    #[test]
    fn open_of_a_missing_pid_is_esrch() {
        // pid_max is at most 2^22, so this pid cannot exist.
        let err = PidFd::open(Pid::from_raw(1 << 30)).unwrap_err();
        assert!(matches!(err, Error::Open { errno: Errno::ESRCH | Errno::EINVAL, .. }));
    }
}
