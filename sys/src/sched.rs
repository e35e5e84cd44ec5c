//! A thread's scheduling attributes, read from outside it: policy and
//! real-time priority (sched_getscheduler(2), sched_getparam(2)), I/O
//! priority (ioprio_get(2)) and the CPUs it may run on
//! (sched_getaffinity(2)). A restore sets them from inside the thread.

use nix::errno::Errno;
use nix::unistd::Pid;

/// `IOPRIO_WHO_PROCESS` (include/uapi/linux/ioprio.h): one thread by id.
pub const IOPRIO_WHO_PROCESS: i32 = 1;

/// The policy of thread `tid` (with `SCHED_RESET_ON_FORK` when set) and
/// its real-time priority (0 for the normal policies).
pub fn policy(tid: Pid) -> Result<(i32, i32), Errno> {
    // SAFETY: sched_getscheduler takes a thread id only.
    let policy = unsafe { libc::sched_getscheduler(tid.as_raw()) };
    if policy < 0 {
        return Err(Errno::last());
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: param is a valid sched_param for the kernel to fill in.
    if unsafe { libc::sched_getparam(tid.as_raw(), &mut param) } < 0 {
        return Err(Errno::last());
    }
    Ok((policy, param.sched_priority))
}

/// The I/O priority of thread `tid`, as ioprio_get returns it (class in
/// bits 13-15, level below).
pub fn ioprio(tid: Pid) -> Result<i32, Errno> {
    // SAFETY: ioprio_get takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid.as_raw()) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(r as i32)
}

/// The CPUs thread `tid` may run on, by number.
pub fn affinity(tid: Pid) -> Result<Vec<u32>, Errno> {
    let set = nix::sched::sched_getaffinity(tid)?;
    Ok((0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).map(|c| c as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_threads_attributes() {
        let me = Pid::this();
        let (policy, prio) = policy(me).unwrap();
        assert_eq!((policy & !libc::SCHED_RESET_ON_FORK, prio), (libc::SCHED_OTHER, 0));
        ioprio(me).unwrap();
        let cpus = affinity(me).unwrap();
        assert!(!cpus.is_empty());
    }
}
