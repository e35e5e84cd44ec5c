//! `PR_SET_MM_MAP`: setting a process's memory-descriptor fields (code,
//! data, brk, stack, argv and environment bounds, auxv) in one validated
//! call (prctl(2), include/uapi/linux/prctl.h `struct prctl_mm_map`,
//! kernel/sys.c `prctl_set_mm_map`; needs CONFIG_CHECKPOINT_RESTORE).
//!
//! Restore calls it inside the puppet so `/proc/PID/stat`, `brk(2)` and
//! `getauxval(3)` see the original values. Unlike the older per-field
//! `PR_SET_MM_*` options it does not need CAP_SYS_RESOURCE (only changing
//! `exe_fd` needs CAP_CHECKPOINT_RESTORE), which matters on hosts whose root
//! lacks CAP_SYS_RESOURCE.
//!
//! [`MmMap::try_set_in_child`] exercises the call for real in a forked copy
//! of the agent, with the agent's own values: the child's memory descriptor
//! is a copy, so nothing of the agent can be damaged, whatever happens.

use std::io;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::child::{self, last_errno};

/// Errors of PR_SET_MM_MAP.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /proc/PID/stat or /proc/PID/auxv could not be read or parsed.
    #[error("cannot read the memory layout of process {pid}")]
    Read {
        /// The process.
        pid: Pid,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// PR_SET_MM_MAP_SIZE failed (EINVAL: no CONFIG_CHECKPOINT_RESTORE).
    #[error("PR_SET_MM_MAP_SIZE failed")]
    MapSize(#[source] Errno),
    /// The kernel's `struct prctl_mm_map` differs from ours.
    #[error("kernel prctl_mm_map is {kernel} bytes, ours {ours}")]
    SizeMismatch {
        /// What the kernel reports.
        kernel: u32,
        /// size_of our struct.
        ours: usize,
    },
    /// PR_SET_MM_MAP failed (EINVAL: values out of order or range; EPERM:
    /// exe_fd without CAP_CHECKPOINT_RESTORE).
    #[error("PR_SET_MM_MAP failed")]
    SetMap(#[source] Errno),
    /// The probe child could not be run or ended abnormally.
    #[error("PR_SET_MM_MAP probe child failed: {0}")]
    Child(String),
}

/// `struct prctl_mm_map` of include/uapi/linux/prctl.h.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

/// The memory-descriptor fields PR_SET_MM_MAP sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmMap {
    /// Start of the text segment.
    pub start_code: u64,
    /// End of the text segment.
    pub end_code: u64,
    /// Start of the data segment.
    pub start_data: u64,
    /// End of the data segment.
    pub end_data: u64,
    /// Start of the heap.
    pub start_brk: u64,
    /// Current program break.
    pub brk: u64,
    /// Start (top) of the main stack.
    pub start_stack: u64,
    /// argv bounds.
    pub arg_start: u64,
    /// argv bounds.
    pub arg_end: u64,
    /// environment bounds.
    pub env_start: u64,
    /// environment bounds.
    pub env_end: u64,
    /// The auxiliary vector as (type, value) words, AT_NULL-terminated.
    pub auxv: Vec<u64>,
}

impl MmMap {
    /// Parses /proc/PID/stat (fields 26-28 and 45-51) and /proc/PID/auxv,
    /// with `brk` supplied by the caller: the kernel shows the current break
    /// nowhere in /proc, only `brk(0)` inside the task returns it.
    pub fn from_proc(pid: Pid, brk: u64) -> Result<Self, Error> {
        let read_err = |source| Error::Read { pid, source };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(read_err)?;
        let auxv = std::fs::read(format!("/proc/{pid}/auxv")).map_err(read_err)?;
        Self::parse(&stat, &auxv, brk).map_err(read_err)
    }

    /// Reads this process's own values, including its current break.
    pub fn of_self() -> Result<Self, Error> {
        // SAFETY: brk(0) never moves the break; it only returns the current
        // one (the raw syscall, unlike sbrk, does not touch libc state).
        let brk = unsafe { libc::syscall(libc::SYS_brk, 0) } as u64;
        Self::from_proc(nix::unistd::getpid(), brk)
    }

    fn parse(stat: &str, auxv: &[u8], brk: u64) -> io::Result<Self> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        // comm (field 2) may hold spaces and parentheses; field 3 follows
        // the last ')'.
        let rest = &stat[stat.rfind(')').ok_or_else(|| bad("no ')' in stat"))? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> io::Result<u64> {
            fields.get(n - 3).ok_or_else(|| bad("stat too short"))?.parse().map_err(|_| bad("stat field not a number"))
        };
        let auxv: Vec<u64> = auxv.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        Ok(MmMap {
            start_code: field(26)?,
            end_code: field(27)?,
            start_stack: field(28)?,
            start_data: field(45)?,
            end_data: field(46)?,
            start_brk: field(47)?,
            brk,
            arg_start: field(48)?,
            arg_end: field(49)?,
            env_start: field(50)?,
            env_end: field(51)?,
            auxv,
        })
    }

    fn raw(&self) -> RawMmMap {
        RawMmMap {
            start_code: self.start_code,
            end_code: self.end_code,
            start_data: self.start_data,
            end_data: self.end_data,
            start_brk: self.start_brk,
            brk: self.brk,
            start_stack: self.start_stack,
            arg_start: self.arg_start,
            arg_end: self.arg_end,
            env_start: self.env_start,
            env_end: self.env_end,
            auxv: self.auxv.as_ptr() as u64,
            auxv_size: (self.auxv.len() * 8) as u32,
            // -1: keep /proc/PID/exe as it is.
            exe_fd: u32::MAX,
        }
    }

    /// Forks a copy of this process that applies these values with
    /// PR_SET_MM_MAP to itself and reports the result. The values must be
    /// this process's own layout (as from [`MmMap::of_self`]) for the call
    /// to be meaningful.
    pub fn try_set_in_child(&self, timeout: Duration) -> Result<(), Error> {
        let kernel = map_size()?;
        if kernel as usize != size_of::<RawMmMap>() {
            return Err(Error::SizeMismatch { kernel, ours: size_of::<RawMmMap>() });
        }
        let raw = self.raw();
        let size = size_of::<RawMmMap>();
        let child_body = move || {
            // SAFETY: &raw is a valid prctl_mm_map of `size` bytes whose auxv
            // pointer refers to the child's copy of self.auxv; the kernel
            // only reads them.
            let ret = unsafe { libc::prctl(libc::PR_SET_MM, libc::PR_SET_MM_MAP, &raw as *const RawMmMap, size, 0) };
            if ret == 0 {
                0
            } else {
                last_errno()
            }
        };
        // SAFETY: child_body only calls prctl(2) with pointers into memory
        // the child inherited, then reads errno: both async-signal-safe.
        let status = unsafe { child::run_in_child(child_body, timeout) }.map_err(|e| Error::Child(e.to_string()))?;
        match status {
            WaitStatus::Exited(_, 0) => Ok(()),
            WaitStatus::Exited(_, errno) => Err(Error::SetMap(Errno::from_raw(errno))),
            other => Err(Error::Child(format!("{other:?}"))),
        }
    }
}

/// PR_SET_MM_MAP_SIZE: the size of `struct prctl_mm_map` this kernel expects.
pub fn map_size() -> Result<u32, Error> {
    let mut size: libc::c_uint = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one unsigned int to the address
    // given, which is our live local `size`.
    let ret = unsafe { libc::prctl(libc::PR_SET_MM, libc::PR_SET_MM_MAP_SIZE, &mut size as *mut libc::c_uint, 0, 0) };
    if ret != 0 {
        return Err(Error::MapSize(Errno::last()));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_comm() {
        // Fields 3..=52 of a real /proc/PID/stat; comm contains ") (".
        let stat = "42 (a) (b) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 100 1000 10 \
                    18446744073709551615 4194304 4198400 140737488347136 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 \
                    6291456 6295552 6299648 140737488349000 140737488349100 140737488349100 140737488350000 0";
        let auxv: Vec<u8> = [6u64, 4096, 0, 0].iter().flat_map(|w| w.to_ne_bytes()).collect();
        let map = MmMap::parse(stat, &auxv, 7000000).unwrap();
        assert_eq!(map.start_code, 4194304);
        assert_eq!(map.end_code, 4198400);
        assert_eq!(map.start_stack, 140737488347136);
        assert_eq!(map.start_data, 6291456);
        assert_eq!(map.start_brk, 6299648);
        assert_eq!(map.env_end, 140737488350000);
        assert_eq!(map.auxv, [6, 4096, 0, 0]);
    }

    #[test]
    fn kernel_struct_size_matches() {
        assert_eq!(map_size().expect("PR_SET_MM_MAP_SIZE (CONFIG_CHECKPOINT_RESTORE)") as usize, size_of::<RawMmMap>());
    }

    #[test]
    fn set_mm_map_with_own_values_succeeds_in_a_child() {
        let map = MmMap::of_self().unwrap();
        assert!(map.start_brk <= map.brk, "{map:?}");
        map.try_set_in_child(Duration::from_secs(5)).expect("PR_SET_MM_MAP with our own layout");
    }

    #[test]
    fn set_mm_map_refuses_disordered_values() {
        let mut map = MmMap::of_self().unwrap();
        map.end_code = map.start_code;
        let err = map.try_set_in_child(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, Error::SetMap(Errno::EINVAL)), "{err:?}");
    }
}
