//! Terminals outside the tree. A process started from a shell holds the
//! shell's terminal, which belongs to a session outside the image: it is
//! recorded by identity (path, device number, the session it controls) and
//! never reopened by name on a restore's own account; `restore --shell-job`
//! gives the tree the restoring stasis's terminal instead (as `criu
//! --shell-job`), `--inherit-fd` any fd.

use std::os::unix::fs::MetadataExt;

use stasis_image::records::{fd::Kind, Tty};

use super::Seen;

/// The device numbers of the terminals on our own stdin, stdout and stderr.
pub fn own_terminals() -> Vec<u64> {
    (0..3).filter_map(|fd| std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()).map(|m| m.rdev()).collect()
}

pub fn dump(pid: stasis_sys::Pid, seen: &Seen) -> Kind {
    // The session it controls, if it is the holder's controlling terminal.
    let session = crate::proc::stat(pid)
        .ok()
        .filter(|s| s.tty_nr != 0 && s.tty_nr as u32 as u64 == seen.rdev)
        .map_or(0, |s| s.session);
    Kind::Tty(Tty {
        path: seen.target.clone(),
        rdev: seen.rdev,
        dumper_terminal: own_terminals().contains(&seen.rdev),
        session,
    })
}
