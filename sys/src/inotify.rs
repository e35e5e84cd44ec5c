//! inotify with the raw watch descriptors, which restore must reproduce
//! number for number (an application keys its watches by them); fanotify
//! groups and marks with the raw flag words /proc/PID/fdinfo shows.

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

/// fanotify_init(flags, event_f_flags).
pub fn fanotify_init(flags: u32, event_f_flags: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: two flag words; no memory is touched.
    let fd = unsafe { libc::fanotify_init(flags, event_f_flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fanotify_mark(fd, flags, mask, AT_FDCWD, path).
pub fn fanotify_mark(fd: BorrowedFd<'_>, flags: u32, mask: u64, path: &CStr) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let r = unsafe { libc::fanotify_mark(fd.as_raw_fd(), flags, mask, libc::AT_FDCWD, path.as_ptr()) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}
