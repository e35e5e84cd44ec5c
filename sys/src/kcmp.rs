//! kcmp(2) `KCMP_FILE`: whether two fds (of the same or different
//! processes) refer to the same open file description. Two fds made by
//! dup(2) or inherited over fork share one description, and so share the
//! file offset and status flags; a restore must share it again.

use nix::errno::Errno;
use nix::unistd::Pid;

/// `KCMP_FILE` and `KCMP_VM` from include/uapi/linux/kcmp.h.
const KCMP_FILE: libc::c_long = 0;
const KCMP_VM: libc::c_long = 1;
const KCMP_FILES: libc::c_long = 2;
const KCMP_EPOLL_TFD: libc::c_long = 7;

/// Whether fd `fd` of `pid` is the file that epoll fd `epfd` of `pid`
/// watches as its target `tfd`: the registration `toff` (from 0) of those
/// under that number, in the order the epoll's fdinfo lists them (several
/// files added under one number, closed in between, are several).
pub fn same_epoll_target(pid: Pid, fd: i32, epfd: i32, tfd: i32, toff: u32) -> Result<bool, Errno> {
    epoll_target_is(pid, fd, pid, epfd, tfd, toff)
}

/// Whether fd `fd` of `holder` is the file that epoll fd `epfd` of
/// `owner` watches as its registration `toff` under `tfd` (see
/// [`same_epoll_target`]).
pub fn epoll_target_is(holder: Pid, fd: i32, owner: Pid, epfd: i32, tfd: i32, toff: u32) -> Result<bool, Errno> {
    // struct kcmp_epoll_slot { __u32 efd, tfd, toff; }
    let slot: [u32; 3] = [epfd as u32, tfd as u32, toff];
    // SAFETY: KCMP_EPOLL_TFD reads a struct kcmp_epoll_slot, three u32,
    // from the pointer, which points at three u32.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            holder.as_raw() as libc::c_long,
            owner.as_raw() as libc::c_long,
            KCMP_EPOLL_TFD,
            fd as libc::c_long,
            slot.as_ptr() as libc::c_long,
        )
    };
    match r {
        0 => Ok(true),
        1..=2 => Ok(false),
        _ => Err(Errno::last()),
    }
}

/// kcmp(2) of two objects named by integers only; true when they are one.
fn same(pid1: Pid, pid2: Pid, kind: libc::c_long, idx1: i32, idx2: i32) -> Result<bool, Errno> {
    // SAFETY: for KCMP_FILE, KCMP_VM and KCMP_FILES kcmp takes integers
    // only and dereferences no pointer; an invalid pid or fd yields an
    // errno, never UB.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1.as_raw() as libc::c_long,
            pid2.as_raw() as libc::c_long,
            kind,
            idx1 as libc::c_long,
            idx2 as libc::c_long,
        )
    };
    match r {
        0 => Ok(true),
        1..=2 => Ok(false),
        _ => Err(Errno::last()),
    }
}

/// Whether two processes share one fd table (CLONE_FILES without
/// CLONE_THREAD). Needs ptrace access to both.
pub fn same_files(pid1: Pid, pid2: Pid) -> Result<bool, Errno> {
    same(pid1, pid2, KCMP_FILES, 0, 0)
}

/// Whether two processes share one address space (CLONE_VM without
/// CLONE_THREAD, as vfork does). Needs ptrace access to both.
pub fn same_vm(pid1: Pid, pid2: Pid) -> Result<bool, Errno> {
    same(pid1, pid2, KCMP_VM, 0, 0)
}

/// Whether fd `fd1` of `pid1` and fd `fd2` of `pid2` are one open file
/// description. Needs ptrace access to both processes.
pub fn same_file(pid1: Pid, fd1: i32, pid2: Pid, fd2: i32) -> Result<bool, Errno> {
    same(pid1, pid2, KCMP_FILE, fd1, fd2)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn dup_shares_and_reopen_does_not() {
        let me = Pid::this();
        let a = std::fs::File::open("/proc/self/status").unwrap();
        let b = a.try_clone().unwrap();
        let c = std::fs::File::open("/proc/self/status").unwrap();
        assert!(same_file(me, a.as_raw_fd(), me, b.as_raw_fd()).unwrap());
        assert!(!same_file(me, a.as_raw_fd(), me, c.as_raw_fd()).unwrap());
        assert_eq!(same_file(me, a.as_raw_fd(), me, 9999), Err(Errno::EBADF));
    }

    #[test]
    fn a_forked_child_has_its_own_address_space() {
        let child = crate::child::spawn(crate::child::ChildAction::Pause).unwrap();
        assert!(same_vm(Pid::this(), Pid::this()).unwrap());
        assert!(!same_vm(Pid::this(), child.pid()).unwrap());
    }
}
