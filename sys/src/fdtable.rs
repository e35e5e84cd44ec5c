//! Whole-fd-table operations on the calling process.

use nix::errno::Errno;

/// Mark every fd from `first` up close-on-exec (close_range(2) with
/// CLOSE_RANGE_CLOEXEC), so a program started next inherits none of them.
pub fn cloexec_from(first: u32) -> Result<(), Errno> {
    // SAFETY: close_range takes integers only and, with
    // CLOSE_RANGE_CLOEXEC, closes nothing: it only sets FD_CLOEXEC, which
    // cannot invalidate any fd another part of the program holds.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// A close-on-exec duplicate of fd number `fd` of the calling process (one
/// it was handed by its caller, named on the command line).
pub fn dup_own(fd: i32) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC reads the fd table only: it makes a new fd
    // and leaves `fd` (or its absence, EBADF) as it was.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `new` was just made, and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// Let SIGPIPE end the process again (Rust ignores it, so printing into a
/// closed pipe, e.g. `stasis inspect IMAGE | head`, panics instead). Only
/// for commands that do nothing but print: one that holds processes must
/// see EPIPE as an error, not die of it.
pub fn die_on_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_DFL installs no handler code, so nothing runs in signal
    // context; the previous disposition (SIG_IGN) is not needed back.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// fcntl commands libc does not name (include/uapi/asm-generic/fcntl.h).
pub const F_SETSIG: i32 = 10;
pub const F_GETSIG: i32 = 11;
pub const F_SETOWN_EX: i32 = 15;
pub const F_GETOWN_EX: i32 = 16;

/// The owner an fd's open file description sends SIGIO/SIGURG to
/// (F_GETOWN_EX: 0 thread, 1 process, 2 process group; pid 0: none) and the
/// signal it sends instead of SIGIO (F_GETSIG, 0: SIGIO).
pub fn owner(fd: impl std::os::fd::AsFd) -> Result<(i32, i32, i32), Errno> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_fd().as_raw_fd();
    // struct f_owner_ex { int type; pid_t pid; }
    let mut own = [0i32; 2];
    // SAFETY: F_GETOWN_EX writes a struct f_owner_ex, two ints, to the
    // pointer, which points at two ints.
    if unsafe { libc::fcntl(raw, F_GETOWN_EX, own.as_mut_ptr()) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: F_GETSIG takes no argument.
    let sig = unsafe { libc::fcntl(raw, F_GETSIG) };
    if sig < 0 {
        return Err(Errno::last());
    }
    Ok((own[0], own[1], sig))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn marks_fds_close_on_exec() {
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::empty()).unwrap();
        cloexec_from(3).unwrap();
        let flags = nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "fd {} is not close-on-exec", r.as_raw_fd());
    }
}
