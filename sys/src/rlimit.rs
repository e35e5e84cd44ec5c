//! Resource limits a restore has to reinstate (getrlimit(2), prlimit(2)).
//!
//! Raising a hard limit needs CAP_SYS_RESOURCE (kernel/sys.c
//! `do_prlimit`), which root lacks on some hosts (a clear bit 24 in the
//! bounding set). [`try_raise_hard_limit_in_child`] checks that for real: a
//! forked child lowers its RLIMIT_NOFILE hard limit by one and raises it
//! back. In the agent itself that would lose the limit for good.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::WaitStatus;

use crate::child::{self, last_errno};

/// Errors of the rlimit probe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Raising the hard limit back failed (EPERM: no CAP_SYS_RESOURCE).
    #[error("raising the RLIMIT_NOFILE hard limit failed")]
    Raise(#[source] Errno),
    /// Reading or lowering the limit failed, so nothing was learnt.
    #[error("cannot prepare the RLIMIT_NOFILE probe")]
    Prepare(#[source] Errno),
    /// The probe child could not be run or ended abnormally.
    #[error("rlimit probe child failed: {0}")]
    Child(String),
}

const STEP_PREPARE: i32 = 128;

/// In a forked child: lower the RLIMIT_NOFILE hard limit by one, then raise
/// it back.
pub fn try_raise_hard_limit_in_child(timeout: Duration) -> Result<(), Error> {
    let child_body = || {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: lim is a valid rlimit to fill in.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return STEP_PREPARE + last_errno().min(127);
        }
        let max = lim.rlim_max;
        let lowered = libc::rlimit { rlim_cur: lim.rlim_cur.min(max - 1), rlim_max: max - 1 };
        // SAFETY: lowered is a valid rlimit the kernel only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) } != 0 {
            return STEP_PREPARE + last_errno().min(127);
        }
        let raised = libc::rlimit { rlim_cur: lowered.rlim_cur, rlim_max: max };
        // SAFETY: raised is a valid rlimit the kernel only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return last_errno();
        }
        0
    };
    // SAFETY: child_body calls only getrlimit/setrlimit on local structs and
    // reads errno: async-signal-safe.
    let status = unsafe { child::run_in_child(child_body, timeout) }.map_err(|e| Error::Child(e.to_string()))?;
    match status {
        WaitStatus::Exited(_, 0) => Ok(()),
        WaitStatus::Exited(_, code) if code >= STEP_PREPARE => {
            Err(Error::Prepare(Errno::from_raw(code - STEP_PREPARE)))
        }
        WaitStatus::Exited(_, code) => Err(Error::Raise(Errno::from_raw(code))),
        other => Err(Error::Child(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_a_hard_limit_matches_cap_sys_resource() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        // CAP_SYS_RESOURCE is capability 24 (include/uapi/linux/capability.h).
        let has_cap = eff & (1 << 24) != 0;
        let result = try_raise_hard_limit_in_child(Duration::from_secs(5));
        match (has_cap, result) {
            (true, Ok(())) | (false, Err(Error::Raise(Errno::EPERM))) => {}
            (has_cap, result) => panic!("CAP_SYS_RESOURCE {has_cap} but {result:?}"),
        }
    }
}
