//! Helpers for restores into a new PID namespace: taking pids so that a
//! restore finds them busy, looking at processes from inside their
//! namespace, and ending a namespace's init.

use std::time::{Duration, Instant};

use stasis_sys::child::{Child, ChildAction};
use stasis_sys::nix::sys::signal::kill;
use stasis_sys::{Pid, Signal};

/// Processes that hold pids, so that a restore finds them taken: paused
/// children of the test, killed and reaped when dropped.
pub struct Squatters(#[allow(dead_code)] Vec<Child>);

/// Take every pid of `pids` with a paused child, waiting for each to be
/// free (a killed process keeps its pid until it is reaped).
pub fn squat(pids: &[i32]) -> Squatters {
    let held = pids
        .iter()
        .map(|&pid| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match stasis_sys::clone3::spawn_with_tid(&[Pid::from_raw(pid)], ChildAction::Pause) {
                    Ok(child) => break child,
                    Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => panic!("cannot take pid {pid}: {e:?}"),
                }
            }
        })
        .collect();
    Squatters(held)
}

/// A namespace's init, killed when dropped: that ends every process of the
/// namespace, so a failed test leaves nothing behind.
pub struct NamespaceInit(pub i32);

impl NamespaceInit {
    /// Whether the init still runs: pid 1 of its namespace (a pid reused
    /// by another process is not killed by the drop).
    pub fn alive(&self) -> bool {
        ns_ids(self.0).0 == 1
    }

    /// Wait until the init has exited, as it does once the last process of
    /// its namespace is gone; false on timeout.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.alive() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for NamespaceInit {
    fn drop(&mut self) {
        if self.alive() {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

/// The last value of a `/proc/HOST/status` line (`NSpid:`, `NSpgid:`,
/// `NSsid:`): the id inside the process's own PID namespace; -1 if gone.
fn status_last(host: i32, key: &str) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{host}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().last()?.parse().ok())
        .unwrap_or(-1)
}

/// Pid, process group and session of the process at `host` (this host's
/// pid), as its own PID namespace sees them (0 for one led from outside).
pub fn ns_ids(host: i32) -> (i32, i32, i32) {
    (status_last(host, "NSpid:"), status_last(host, "NSpgid:"), status_last(host, "NSsid:"))
}
