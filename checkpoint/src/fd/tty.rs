//! Terminals. A process started from a shell holds the shell's terminal;
//! like `criu --shell-job`, an fd on the terminal stasis itself runs on is
//! marked, and restore points it at the terminal of the restoring stasis.

use std::os::unix::fs::MetadataExt;

use stasis_image::records::{fd::Kind, Tty};

use super::Seen;

/// The device numbers of the terminals on our own stdin, stdout and stderr.
pub fn own_terminals() -> Vec<u64> {
    (0..3).filter_map(|fd| std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()).map(|m| m.rdev()).collect()
}

pub fn dump(seen: &Seen) -> Kind {
    Kind::Tty(Tty { path: seen.target.clone(), rdev: seen.rdev, dumper_terminal: own_terminals().contains(&seen.rdev) })
}
