//! inotify with the raw watch descriptors, which restore must reproduce
//! number for number (an application keys its watches by them).

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// inotify_init1(flags).
pub fn init(flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: inotify_init1 takes a flags word and touches no memory.
    let fd = unsafe { libc::inotify_init1(flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// inotify_add_watch: the watch descriptor.
pub fn add_watch(fd: BorrowedFd<'_>, path: &CStr, mask: u32) -> Result<i32, Errno> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
    if wd < 0 {
        return Err(Errno::last());
    }
    Ok(wd)
}

/// inotify_rm_watch.
pub fn rm_watch(fd: BorrowedFd<'_>, wd: i32) -> Result<(), Errno> {
    // SAFETY: integers only.
    if unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}
