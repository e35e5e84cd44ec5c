//! Terminals outside the tree. A process started from a shell holds the
//! shell's terminal, which belongs to a session outside the image: it is
//! recorded by identity (path, device number, the session it controls) and
//! never reopened by name on a restore's own account; `restore --shell-job`
//! gives the tree the restoring stasis's terminal instead (as `criu
//! --shell-job`), `--inherit-fd` any fd.
//!
//! A virtual console (`/dev/ttyN`), a serial line (`/dev/ttySN`) and the
//! system console (`/dev/console`) are different: each device number is
//! one fixed terminal, not one handed to whichever session asks next as a
//! pseudo-terminal is, so a restore opens such a terminal again by its
//! path (checking the node there is still that device), and a session
//! leader whose controlling terminal it was takes it again.
//!
//! A pseudo-terminal slave whose master was closed is hung up, its node
//! gone; it is made again hung up ([`hung_up`]).

use std::os::unix::fs::MetadataExt;

use stasis_image::records::{fd::Kind, Tty};

use super::{dev_major, dev_minor, Seen};

/// The device numbers of the terminals on our own stdin, stdout and stderr.
pub fn own_terminals() -> Vec<u64> {
    (0..3).filter_map(|fd| std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()).map(|m| m.rdev()).collect()
}

/// Whether a terminal is one fixed device, opened again by its path: a
/// virtual console or serial line (major 4) or the system console (5:1).
/// Not `/dev/tty` (5:0), which opens whichever terminal controls the
/// opener, nor a pseudo-terminal.
pub fn opened_by_path(rdev: u64) -> bool {
    matches!((dev_major(rdev), dev_minor(rdev)), (4, _) | (5, 1))
}

/// Whether a terminal is a pseudo-terminal slave whose master was closed:
/// the pair is hung up and devpts removed its node. A restore makes a new
/// pair, opens the slave as often as the tree had it open, and closes the
/// master, which hangs those up again.
pub fn hung_up(rdev: u64, target: &str) -> bool {
    (136..=143).contains(&dev_major(rdev)) && target.ends_with(" (deleted)")
}

pub fn dump(pid: stasis_sys::Pid, seen: &Seen) -> Result<Kind, String> {
    if opened_by_path(seen.rdev) && seen.target.ends_with(" (deleted)") {
        return Err(format!(
            "terminal {}: its node was removed, and a restore opens such a terminal by its path",
            seen.target
        ));
    }
    // The session it controls, if it is the holder's controlling terminal,
    // and that terminal's foreground group.
    let stat = crate::proc::stat(pid).ok().filter(|s| s.tty_nr != 0 && s.tty_nr as u32 as u64 == seen.rdev);
    Ok(Kind::Tty(Tty {
        path: seen.target.clone(),
        rdev: seen.rdev,
        dumper_terminal: own_terminals().contains(&seen.rdev),
        session: stat.as_ref().map_or(0, |s| s.session),
        foreground: stat.as_ref().map_or(0, |s| s.tpgid.max(0)),
        hung_up: hung_up(seen.rdev, &seen.target),
    }))
}

#[cfg(test)]
mod tests {
    use super::opened_by_path;

    #[test]
    fn fixed_terminals_are_told_from_the_others() {
        let dev = |major: u64, minor: u64| (major << 8) | minor;
        assert!(opened_by_path(dev(4, 5)), "virtual console tty5");
        assert!(opened_by_path(dev(4, 64)), "serial line ttyS0");
        assert!(opened_by_path(dev(5, 1)), "system console");
        assert!(!opened_by_path(dev(5, 0)), "/dev/tty");
        assert!(!opened_by_path(dev(136, 3)), "a pseudo-terminal slave");
    }
}
