//! Namespaces a restore creates: currently the time namespace
//! (time_namespaces(7), Linux 5.6, CONFIG_TIME_NS), which lets a restored
//! tree keep reading CLOCK_MONOTONIC and CLOCK_BOOTTIME values continuous
//! with those it saw before the dump, on any host.
//!
//! `unshare(CLONE_NEWTIME)` only switches the namespace of the caller's
//! future children (`/proc/self/ns/time_for_children`), and the offsets in
//! `/proc/self/timens_offsets` may only be written before the first process
//! enters it. Doing that in the agent would put every later child of the
//! agent in the new namespace, so [`try_time_namespace_in_child`] does it in a
//! forked child that exits.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::WaitStatus;

use crate::child::{self, last_errno};

/// Errors of namespace probes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// unshare(2) failed (EINVAL: no CONFIG_TIME_NS; EPERM: no CAP_SYS_ADMIN).
    #[error("unshare(CLONE_NEWTIME) failed")]
    Unshare(#[source] Errno),
    /// Writing the clock offsets failed.
    #[error("cannot write /proc/self/timens_offsets")]
    Offsets(#[source] Errno),
    /// The probe child could not be run or ended abnormally.
    #[error("time namespace probe child failed: {0}")]
    Child(String),
}

// Exit codes of the child: errno values stay below 256 - 2 * 64.
const STEP_OFFSETS: i32 = 128;

/// In a forked child: unshare a new time namespace and set a one-second
/// CLOCK_MONOTONIC offset in it, as a restore does before starting the tree.
pub fn try_time_namespace_in_child(timeout: Duration) -> Result<(), Error> {
    let child_body = || {
        // SAFETY: unshare takes a flags word by value.
        if unsafe { libc::unshare(libc::CLONE_NEWTIME) } != 0 {
            return last_errno();
        }
        const PATH: &[u8] = b"/proc/self/timens_offsets\0";
        const LINE: &[u8] = b"monotonic 1 0\n";
        // SAFETY: PATH is a NUL-terminated static string.
        let fd = unsafe { libc::open(PATH.as_ptr().cast(), libc::O_WRONLY) };
        if fd < 0 {
            return STEP_OFFSETS + last_errno().min(127);
        }
        // SAFETY: fd is the descriptor just opened; LINE is static.
        let n = unsafe { libc::write(fd, LINE.as_ptr().cast(), LINE.len()) };
        let err = last_errno();
        // SAFETY: fd is ours and closed once.
        unsafe { libc::close(fd) };
        if n == LINE.len() as isize {
            0
        } else {
            STEP_OFFSETS + err.min(127)
        }
    };
    // SAFETY: child_body makes only raw syscalls (unshare, open, write,
    // close) on static data and reads errno: all async-signal-safe.
    let status = unsafe { child::run_in_child(child_body, timeout) }.map_err(|e| Error::Child(e.to_string()))?;
    match status {
        WaitStatus::Exited(_, 0) => Ok(()),
        WaitStatus::Exited(_, code) if code >= STEP_OFFSETS => {
            Err(Error::Offsets(Errno::from_raw(code - STEP_OFFSETS)))
        }
        WaitStatus::Exited(_, code) => Err(Error::Unshare(Errno::from_raw(code))),
        other => Err(Error::Child(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_namespace_with_offsets() {
        try_time_namespace_in_child(Duration::from_secs(5)).expect("time namespace (CONFIG_TIME_NS) not usable");
    }

    #[test]
    fn the_agent_stays_in_its_time_namespace() {
        let before = std::fs::read_link("/proc/self/ns/time_for_children").unwrap();
        try_time_namespace_in_child(Duration::from_secs(5)).unwrap();
        let after = std::fs::read_link("/proc/self/ns/time_for_children").unwrap();
        assert_eq!(before, after);
    }
}
