//! What this kernel and host offer stasis, found by exercising each facility
//! rather than by comparing version numbers or reading a kernel config: a
//! kernel can be new enough and still lack a feature (soft-dirty and
//! device-mapper are build options), or old and carry a backport, and
//! seccomp, LSMs or a missing capability can take away what the kernel has.
//!
//! [`probe`] runs the probes one after another, each bounded in time and
//! cleaning up after itself (children killed and reaped, probe cgroups
//! removed, descriptors closed); a probe that fails reports the facility
//! `Missing` with what it saw, it never panics. The result backs
//! `stasis check`, and later operations consult it to refuse early and
//! clearly instead of failing half-way.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use stasis_sys::child::{self, Child, ChildAction};
use stasis_sys::mman::{page_size, AnonMapping};
use stasis_sys::pagemap::{self, Categories, Pagemap, ScanRequest};
use stasis_sys::process_vm::{self, RemoteAddr};
use stasis_sys::ptrace::{self, Options, Seized, Stop, PTRACE_EVENT_STOP};
use stasis_sys::{btrfs, clone3, dm, ns, pidfd, prctl, procmem, rlimit, tcp, uffd, Errno, Pid, Signal, WaitStatus};

use crate::freezer::{self, CgroupFreezer, Kind};

/// Bound on every wait inside a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `uname(2)` says about the running kernel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelInfo {
    /// e.g. "6.18.44-fc-v445".
    pub release: String,
    /// The build string, e.g. "#1 SMP PREEMPT_DYNAMIC ...".
    pub version: String,
    /// e.g. "x86_64".
    pub machine: String,
}

/// Whether dump and restore can work at all without a facility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// Dump and restore cannot work without it.
    Required,
    /// Some feature is disabled or degraded without it.
    Optional,
}

/// The outcome of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Exercised and worked as expected.
    Available,
    /// Tried and failed, or absent from the kernel.
    Missing,
    /// Does not apply on this host (e.g. no cgroup v1 freezer mounted).
    NotApplicable,
}

/// One facility stasis relies on, and what the probe found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Facility {
    /// Stable kebab-case key, e.g. "clone3-set-tid".
    pub id: &'static str,
    /// Human name.
    pub name: &'static str,
    /// Required for dump and restore, or optional.
    pub needed_for: Need,
    /// What the probe found.
    pub status: Status,
    /// What the probe saw: the evidence, or the errno.
    pub detail: String,
    /// One sentence: what is disabled without it.
    pub without: &'static str,
}

/// Everything [`probe`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostReport {
    /// The running kernel.
    pub kernel: KernelInfo,
    /// Kernel-provided special mappings seen in /proc/self/maps (`[vdso]`,
    /// `[vvar]`, `[vvar_vclock]`, `[vsyscall]`): restore must recreate the
    /// image's set, which only the same kernel build guarantees.
    pub vdso_mappings: Vec<String>,
    /// Capabilities (e.g. "CAP_SYS_RESOURCE") missing from this process's
    /// effective or bounding set.
    pub capabilities_missing: Vec<String>,
    /// Every facility, in probe order.
    pub facilities: Vec<Facility>,
}

impl HostReport {
    /// The required facilities that are not available.
    pub fn missing_required(&self) -> impl Iterator<Item = &Facility> {
        self.facilities.iter().filter(|f| f.needed_for == Need::Required && f.status != Status::Available)
    }

    /// The facility with key `id`.
    pub fn facility(&self, id: &str) -> Option<&Facility> {
        self.facilities.iter().find(|f| f.id == id)
    }

    /// Whether everything dump and restore need is present.
    pub fn ready(&self) -> bool {
        self.missing_required().next().is_none()
    }
}

impl fmt::Display for HostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {} {} ({})", self.kernel.release, self.kernel.machine, self.kernel.version)?;
        writeln!(f, "special mappings: {}", self.vdso_mappings.join(" "))?;
        let caps =
            if self.capabilities_missing.is_empty() { "none".to_string() } else { self.capabilities_missing.join(" ") };
        writeln!(f, "capabilities missing: {caps}")?;
        for fac in &self.facilities {
            let status = match fac.status {
                Status::Available => "yes",
                Status::Missing => "NO",
                Status::NotApplicable => "n/a",
            };
            let need = match fac.needed_for {
                Need::Required => "required",
                Need::Optional => "optional",
            };
            writeln!(f, "{status:>3}  {:<34} {need:<8}  {}", fac.name, fac.detail)?;
            if fac.status != Status::Available {
                writeln!(f, "     without it: {}", fac.without)?;
            }
        }
        Ok(())
    }
}

/// The static description of a facility; the probe adds status and detail.
struct Spec {
    id: &'static str,
    name: &'static str,
    needed_for: Need,
    without: &'static str,
    run: fn() -> Outcome,
}

/// What a probe function returns.
type Outcome = (Status, String);

fn available(detail: impl Into<String>) -> Outcome {
    (Status::Available, detail.into())
}

fn missing(detail: impl fmt::Display) -> Outcome {
    (Status::Missing, detail.to_string())
}

/// Formats an error with its chain of sources, so the errno is visible.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

const SPECS: &[Spec] = &[
    Spec {
        id: "ptrace",
        name: "ptrace seize/interrupt",
        needed_for: Need::Required,
        without: "tasks cannot be stopped, inspected or driven, so neither dump nor restore can run.",
        run: probe_ptrace,
    },
    Spec {
        id: "clone3-set-tid",
        name: "clone3 with set_tid",
        needed_for: Need::Required,
        without: "restore cannot recreate tasks at their original pids.",
        run: probe_clone3,
    },
    Spec {
        id: "pidfd-open",
        name: "pidfd_open / pidfd_send_signal",
        needed_for: Need::Required,
        without: "targets cannot be held by a handle immune to pid reuse, so stasis refuses to act on them.",
        run: probe_pidfd_open,
    },
    Spec {
        id: "pidfd-getfd",
        name: "pidfd_getfd",
        needed_for: Need::Required,
        without: "a target's file descriptors cannot be copied into the agent, so pipes, sockets and other fds cannot be dumped.",
        run: probe_pidfd_getfd,
    },
    Spec {
        id: "process-vm-readv",
        name: "process_vm_readv",
        needed_for: Need::Required,
        without: "memory cannot be copied out of a target in bulk, so dump cannot run.",
        run: probe_process_vm_readv,
    },
    Spec {
        id: "proc-pid-mem-write",
        name: "/proc/PID/mem write",
        needed_for: Need::Required,
        without: "restore cannot fill a puppet's pages, read-only ones included.",
        run: probe_proc_mem_write,
    },
    Spec {
        id: "pr-set-mm-map",
        name: "prctl PR_SET_MM_MAP",
        needed_for: Need::Required,
        without: "restored tasks cannot get back their brk, argv/env bounds and auxv, so restore cannot run.",
        run: probe_pr_set_mm_map,
    },
    Spec {
        id: "pagemap-scan",
        name: "PAGEMAP_SCAN ioctl",
        needed_for: Need::Optional,
        without: "present pages are found by reading /proc/PID/pagemap entry by entry, and written pages cannot be found, so pre-copy is disabled.",
        run: probe_pagemap_scan,
    },
    Spec {
        id: "uffd-wp-async",
        name: "userfaultfd WP_ASYNC",
        needed_for: Need::Optional,
        without: "pre-copy dirty tracking is disabled: a tree stays frozen while all of its memory is copied.",
        run: probe_uffd_wp_async,
    },
    Spec {
        id: "soft-dirty",
        name: "soft-dirty page tracking",
        needed_for: Need::Optional,
        without: "CRIU-style soft-dirty pre-dump is unavailable; stasis tracks dirty pages with userfaultfd WP_ASYNC instead.",
        run: probe_soft_dirty,
    },
    Spec {
        id: "cgroup-v2-freeze",
        name: "cgroup v2 freeze",
        needed_for: Need::Optional,
        without: "a tree in a cgroup v2 group is frozen task by task with ptrace, which is slower and must chase forks.",
        run: probe_cgroup_v2,
    },
    Spec {
        id: "cgroup-v1-freezer",
        name: "cgroup v1 freezer",
        needed_for: Need::Optional,
        without: "a tree in a cgroup v1 freezer group is frozen task by task with ptrace, which is slower and must chase forks.",
        run: probe_cgroup_v1,
    },
    Spec {
        id: "btrfs",
        name: "btrfs",
        needed_for: Need::Optional,
        without: "btrfs volumes cannot be snapshotted or rolled back.",
        run: probe_btrfs,
    },
    Spec {
        id: "device-mapper",
        name: "device-mapper (LVM)",
        needed_for: Need::Optional,
        without: "LVM volumes cannot be snapshotted or rolled back.",
        run: probe_device_mapper,
    },
    Spec {
        id: "tcp-repair",
        name: "TCP_REPAIR",
        needed_for: Need::Optional,
        without: "established TCP connections cannot be dumped or restored, so a tree holding one is refused.",
        run: probe_tcp_repair,
    },
    Spec {
        id: "time-namespace",
        name: "time namespace",
        needed_for: Need::Optional,
        without: "restored tasks see CLOCK_MONOTONIC and CLOCK_BOOTTIME jump to this host's values.",
        run: probe_time_namespace,
    },
    Spec {
        id: "cap-sys-resource",
        name: "CAP_SYS_RESOURCE",
        needed_for: Need::Optional,
        without: "restoring a hard rlimit above its current value and prlimit on processes of other users are not possible; rlimits are read from /proc/PID/limits instead.",
        run: probe_cap_sys_resource,
    },
];

/// Probes every facility, one after another.
pub fn probe() -> HostReport {
    let facilities = SPECS
        .iter()
        .map(|spec| {
            let started = Instant::now();
            let (status, detail) = (spec.run)();
            tracing::debug!(
                id = spec.id,
                ?status,
                elapsed = ?started.elapsed(),
                "{detail}"
            );
            Facility {
                id: spec.id,
                name: spec.name,
                needed_for: spec.needed_for,
                status,
                detail,
                without: spec.without,
            }
        })
        .collect();
    HostReport {
        kernel: kernel_info(),
        vdso_mappings: vdso_mappings(),
        capabilities_missing: capabilities_missing(),
        facilities,
    }
}

fn kernel_info() -> KernelInfo {
    match stasis_sys::nix::sys::utsname::uname() {
        Ok(u) => KernelInfo {
            release: u.release().to_string_lossy().into_owned(),
            version: u.version().to_string_lossy().into_owned(),
            machine: u.machine().to_string_lossy().into_owned(),
        },
        Err(errno) => {
            KernelInfo { release: format!("unknown ({errno})"), version: String::new(), machine: String::new() }
        }
    }
}

/// Names of the kernel's special mappings in /proc/self/maps.
fn vdso_mappings() -> Vec<String> {
    let maps = fs::read_to_string("/proc/self/maps").unwrap_or_default();
    special_mappings(&maps)
}

fn special_mappings(maps: &str) -> Vec<String> {
    let mut names: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|n| n.starts_with("[v"))
        .map(str::to_string)
        .collect();
    names.dedup();
    names
}

/// Capability names by number (include/uapi/linux/capability.h).
const CAP_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// CAP_SYS_RESOURCE's number.
const CAP_SYS_RESOURCE: usize = 24;

/// The effective and bounding sets from /proc/self/status.
fn cap_sets() -> Option<(u64, u64)> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some((field("CapEff:")?, field("CapBnd:")?))
}

fn capabilities_missing() -> Vec<String> {
    let Some((eff, bnd)) = cap_sets() else {
        return vec!["unknown (cannot read /proc/self/status)".to_string()];
    };
    let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(CAP_NAMES.len() - 1);
    (0..=last_cap)
        .filter(|&bit| bit < 64 && (eff & bnd) & (1 << bit) == 0)
        .map(|bit| CAP_NAMES.get(bit).map_or_else(|| format!("CAP_{bit}"), |n| n.to_string()))
        .collect()
}

// ---- process facilities -------------------------------------------------

fn pause_child() -> Result<Child, String> {
    child::spawn(ChildAction::Pause).map_err(|e| chain(&e))
}

fn probe_ptrace() -> Outcome {
    let child = match pause_child() {
        Ok(c) => c,
        Err(e) => return missing(e),
    };
    let pid = child.pid();
    // EXITKILL: should the agent die mid-probe, the kernel kills the child.
    let mut seized = match Seized::seize(pid, Options::PTRACE_O_EXITKILL) {
        Ok(s) => s,
        Err(e) => return missing(chain(&e)),
    };
    let stop = match seized.interrupt(PROBE_TIMEOUT) {
        Ok(stop) => stop,
        Err(e) => return missing(chain(&e)),
    };
    if !matches!(stop, Stop::Event { event: PTRACE_EVENT_STOP, .. }) {
        return missing(format!("PTRACE_INTERRUPT of {pid} gave {stop:?}, not PTRACE_EVENT_STOP"));
    }
    let state = ptrace::task_state(pid).map_or('?', |s| s);
    if let Err(e) = seized.detach() {
        return missing(chain(&e));
    }
    if state != 't' {
        return missing(format!("seized {pid} stopped but /proc shows state {state}, not t"));
    }
    available(format!("seized child {pid}, PTRACE_INTERRUPT put it in PTRACE_EVENT_STOP (state t), detached"))
}

/// A pid near `ns_last_pid` that no process holds now.
fn free_pid(attempt: i32) -> Option<Pid> {
    let read = |path: &str| -> Option<i32> { fs::read_to_string(path).ok()?.trim().parse().ok() };
    let last = read("/proc/sys/kernel/ns_last_pid")?;
    let max = read("/proc/sys/kernel/pid_max")?;
    // Far enough ahead that ordinary forks will not get there first.
    (0..2000)
        .map(|d| (last + 200 + attempt * 37 + d) % max)
        .find(|&p| p > 300 && !Path::new(&format!("/proc/{p}")).exists())
        .map(Pid::from_raw)
}

fn probe_clone3() -> Outcome {
    let mut last_error = String::from("no free pid found");
    for attempt in 0..5 {
        let Some(pid) = free_pid(attempt) else {
            break;
        };
        match clone3::spawn_with_tid(&[pid], ChildAction::Exit(0)) {
            Ok(mut child) => {
                return match child.wait_timeout(PROBE_TIMEOUT) {
                    Ok(WaitStatus::Exited(p, 0)) if p == pid => available(format!("clone3 created pid {pid} as asked")),
                    Ok(other) => missing(format!("child at pid {pid} ended with {other:?}")),
                    Err(e) => missing(chain(&e)),
                };
            }
            // Someone took the pid between our look and clone3: try another.
            Err(e @ clone3::Error::Clone3 { errno: Errno::EEXIST, .. }) => last_error = chain(&e),
            Err(e) => return missing(chain(&e)),
        }
    }
    missing(last_error)
}

fn probe_pidfd_open() -> Outcome {
    let mut child = match pause_child() {
        Ok(c) => c,
        Err(e) => return missing(e),
    };
    let pid = child.pid();
    let pidfd = match pidfd::PidFd::open(pid) {
        Ok(p) => p,
        Err(e) => return missing(chain(&e)),
    };
    // The kernel names the pid a pidfd refers to in its fdinfo.
    let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_fd().as_raw_fd())).unwrap_or_default();
    let named = fdinfo.lines().find_map(|l| l.strip_prefix("Pid:")).map(str::trim).and_then(|v| v.parse::<i32>().ok());
    if named != Some(pid.as_raw()) {
        return missing(format!("pidfd fdinfo names pid {named:?}, expected {pid}"));
    }
    if let Err(e) = pidfd.send_signal(Signal::SIGKILL) {
        return missing(chain(&e));
    }
    match child.wait_timeout(PROBE_TIMEOUT) {
        Ok(WaitStatus::Signaled(_, Signal::SIGKILL, _)) => {
            available(format!("pidfd for child {pid} names it in fdinfo; pidfd_send_signal(SIGKILL) killed it"))
        }
        Ok(other) => missing(format!("after pidfd_send_signal(SIGKILL) child {pid}: {other:?}")),
        Err(e) => missing(chain(&e)),
    }
}

fn probe_pidfd_getfd() -> Outcome {
    let (mut ours, theirs) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => return missing(format!("socketpair: {e}")),
    };
    let target_fd = theirs.as_raw_fd();
    let child = match pause_child() {
        Ok(c) => c,
        Err(e) => return missing(e),
    };
    // Only the child keeps `theirs` now; a copy can only come from it.
    drop(theirs);
    let pid = child.pid();
    let copy = match pidfd::PidFd::open(pid).and_then(|p| p.get_fd(target_fd)) {
        Ok(fd) => fd,
        Err(e) => return missing(chain(&e)),
    };
    let mut copy = UnixStream::from(copy);
    let roundtrip = ours.write_all(b"stasis").and_then(|()| {
        copy.set_read_timeout(Some(PROBE_TIMEOUT))?;
        let mut buf = [0u8; 6];
        copy.read_exact(&mut buf)?;
        Ok(buf)
    });
    match roundtrip {
        Ok(buf) if &buf == b"stasis" => {
            available(format!("copied fd {target_fd} of child {pid}; bytes sent to its peer arrived through the copy"))
        }
        Ok(buf) => missing(format!("copy of fd {target_fd} read {buf:?}")),
        Err(e) => missing(format!("reading through the copy of fd {target_fd}: {e}")),
    }
}

const PATTERN: [u8; 16] = *b"stasis-probe-mem";

fn probe_process_vm_readv() -> Outcome {
    let ours: Vec<u8> = PATTERN.iter().copied().cycle().take(2 * page_size()).collect();
    let addr = RemoteAddr(ours.as_ptr() as u64);
    let child = match pause_child() {
        Ok(c) => c,
        Err(e) => return missing(e),
    };
    let mut seen = vec![0u8; ours.len()];
    match process_vm::read_exact(child.pid(), addr, &mut seen) {
        Ok(()) if seen == ours => {
            available(format!("read {} bytes at {addr} of child {}, as written before fork", seen.len(), child.pid()))
        }
        Ok(()) => missing(format!("bytes read from child {} differ", child.pid())),
        Err(e) => missing(chain(&e)),
    }
}

/// Lives in a read-only segment of the agent's executable: restore must be
/// able to fill pages the puppet may not write itself.
static READ_ONLY: [u8; 16] = *b"stasis-read-only";

/// The permissions ("r--p", ...) of the mapping holding `addr` in
/// /proc/self/maps.
fn own_mapping_perms(addr: u64) -> Option<String> {
    let maps = fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let range = u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?;
        range.contains(&addr).then(|| fields.next().map(str::to_string))?
    })
}

fn probe_proc_mem_write() -> Outcome {
    let addr = RemoteAddr(READ_ONLY.as_ptr() as u64);
    let perms = own_mapping_perms(addr.0).unwrap_or_else(|| "unknown".to_string());
    let child = match pause_child() {
        Ok(c) => c,
        Err(e) => return missing(e),
    };
    let pid = child.pid();
    let written = b"written-by-agent";
    let mem = match procmem::ProcMem::open(pid, true) {
        Ok(m) => m,
        Err(e) => return missing(chain(&e)),
    };
    if let Err(e) = mem.write_all_at(addr, written) {
        return missing(format!("{} (mapping {perms})", chain(&e)));
    }
    // Read back through another path than the one that wrote.
    let mut back = [0u8; 16];
    if let Err(e) = process_vm::read_exact(pid, addr, &mut back) {
        return missing(chain(&e));
    }
    if &back != written || std::hint::black_box(&READ_ONLY) != b"stasis-read-only" {
        return missing(format!("child {pid} holds {back:?} after the write"));
    }
    available(format!("wrote 16 bytes at {addr} ({perms} mapping) of child {pid}; process_vm_readv reads them back"))
}

fn probe_pr_set_mm_map() -> Outcome {
    let map = match prctl::MmMap::of_self() {
        Ok(m) => m,
        Err(e) => return missing(chain(&e)),
    };
    match map.try_set_in_child(PROBE_TIMEOUT) {
        Ok(()) => available(format!(
            "a forked child set its own layout (brk {:#x}, {} auxv words) with PR_SET_MM_MAP",
            map.brk,
            map.auxv.len()
        )),
        Err(e) => missing(chain(&e)),
    }
}

// ---- memory tracking ----------------------------------------------------

fn pages_of(regions: &[pagemap::PageRegion], base: u64) -> Vec<u64> {
    let page = page_size() as u64;
    regions.iter().flat_map(|r| ((r.start - base) / page)..((r.end - base) / page)).collect()
}

fn scan_for(pm: &Pagemap, map: &AnonMapping, flags: u64, cat: Categories) -> Result<Vec<u64>, String> {
    pm.scan(&ScanRequest {
        range: map.range(),
        flags,
        required: cat,
        any_of: Categories::NONE,
        inverted: Categories::NONE,
        report: cat,
    })
    .map(|regions| pages_of(&regions, map.addr()))
    .map_err(|e| chain(&e))
}

fn probe_pagemap_scan() -> Outcome {
    let mut map = match AnonMapping::new(8) {
        Ok(m) => m,
        Err(e) => return missing(chain(&e)),
    };
    let touched = [1u64, 2, 6];
    for &i in &touched {
        map.touch_page(i as usize, 1);
    }
    let pm = match Pagemap::open(Pid::this()) {
        Ok(p) => p,
        Err(e) => return missing(chain(&e)),
    };
    match scan_for(&pm, &map, 0, Categories::PRESENT) {
        Ok(pages) if pages == touched => {
            available(format!("reported exactly the touched pages {touched:?} of 8 as present"))
        }
        Ok(pages) => missing(format!("reported pages {pages:?} present, touched {touched:?}")),
        Err(e) => missing(e),
    }
}

fn probe_uffd_wp_async() -> Outcome {
    let features = match uffd::supported_features() {
        Ok(f) => f,
        Err(e) => return missing(chain(&e)),
    };
    if features & uffd::FEATURE_WP_ASYNC == 0 {
        return missing(format!("userfaultfd works but lacks UFFD_FEATURE_WP_ASYNC (features {features:#x})"));
    }
    let mut map = match AnonMapping::new(16) {
        Ok(m) => m,
        Err(e) => return missing(chain(&e)),
    };
    let wanted = uffd::FEATURE_WP_ASYNC | (features & uffd::FEATURE_WP_UNPOPULATED);
    let result = (|| -> Result<Vec<u64>, String> {
        let fd = uffd::Userfaultfd::new(wanted).map_err(|e| chain(&e))?;
        // Fault every page in first, so the result does not hinge on
        // WP_UNPOPULATED.
        for i in 0..16 {
            map.touch_page(i, 1);
        }
        fd.register(map.range(), uffd::REGISTER_MODE_WP).map_err(|e| chain(&e))?;
        fd.write_protect(map.range(), true).map_err(|e| chain(&e))?;
        for i in [2, 5, 11] {
            map.touch_page(i, 2);
        }
        let pm = Pagemap::open(Pid::this()).map_err(|e| chain(&e))?;
        // Report and re-protect at once, as a pre-copy round does; the
        // next pass must then see nothing.
        let flags = pagemap::PM_SCAN_WP_MATCHING | pagemap::PM_SCAN_CHECK_WPASYNC;
        let first = scan_for(&pm, &map, flags, Categories::WRITTEN)?;
        let second = scan_for(&pm, &map, 0, Categories::WRITTEN)?;
        if !second.is_empty() {
            return Err(format!("pages {second:?} still written after re-protecting"));
        }
        Ok(first)
    })();
    match result {
        Ok(pages) if pages == [2, 5, 11] => available(
            "wrote pages [2, 5, 11] of 16 write-protected ones; PAGEMAP_SCAN reported exactly those and re-protected them",
        ),
        Ok(pages) => missing(format!(
            "wrote pages [2, 5, 11] of 16 but PAGEMAP_SCAN reported {pages:?} written"
        )),
        Err(e) => missing(e),
    }
}

fn probe_soft_dirty() -> Outcome {
    let mut map = match AnonMapping::new(1) {
        Ok(m) => m,
        Err(e) => return missing(chain(&e)),
    };
    map.touch_page(0, 1);
    let me = Pid::this();
    if let Err(e) = pagemap::clear_refs(me, "4") {
        return missing(chain(&e));
    }
    let pm = match Pagemap::open(me) {
        Ok(p) => p,
        Err(e) => return missing(chain(&e)),
    };
    let before = pm.entry(map.addr()).map(|e| e.soft_dirty());
    map.touch_page(0, 2);
    let after = pm.entry(map.addr()).map(|e| (e.present(), e.soft_dirty()));
    match (before, after) {
        (Ok(false), Ok((true, true))) => {
            available("clear_refs 4 cleared pagemap bit 55 and a write set it again")
        }
        (Ok(_), Ok((true, false))) => missing(
            "/proc/self/clear_refs accepted \"4\", but a page written afterwards has pagemap bit 55 clear: the kernel is built without CONFIG_MEM_SOFT_DIRTY",
        ),
        (Ok(true), Ok(_)) => missing("clear_refs 4 did not clear pagemap bit 55"),
        (Ok(_), Ok((false, _))) => missing("the written page is not present in pagemap"),
        (Err(e), _) | (_, Err(e)) => missing(chain(&e)),
    }
}

// ---- cgroup freezers ----------------------------------------------------

/// A probe cgroup holding one spinning child; on drop: thaw (a v1-frozen
/// task ignores SIGKILL), kill and reap the child, then remove the group.
struct ProbeGroup {
    freezer: CgroupFreezer,
    child: Option<Child>,
}

static PROBE_GROUP_SEQ: AtomicU32 = AtomicU32::new(0);

impl ProbeGroup {
    fn create(parent: &Path, kind: Kind) -> Result<Self, String> {
        let name = format!("stasis-probe-{}-{}", std::process::id(), PROBE_GROUP_SEQ.fetch_add(1, Ordering::Relaxed));
        let dir = parent.join(name);
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(ProbeGroup { freezer: CgroupFreezer::new(dir, kind), child: None })
    }

    fn add(&mut self, child: Child) -> Result<Pid, String> {
        let pid = child.pid();
        self.child = Some(child);
        let procs = self.freezer.dir().join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(|e| format!("moving {pid} into {}: {e}", procs.display()))?;
        Ok(pid)
    }
}

impl Drop for ProbeGroup {
    fn drop(&mut self) {
        let _ = self.freezer.thaw(PROBE_TIMEOUT);
        drop(self.child.take());
        let dir = self.freezer.dir().to_path_buf();
        // rmdir answers EBUSY until the killed child has left the group.
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while let Err(e) = fs::remove_dir(&dir) {
            if e.kind() == std::io::ErrorKind::NotFound || Instant::now() >= deadline {
                tracing::warn!(dir = %dir.display(), "cannot remove probe cgroup: {e}");
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits until `pid`'s scheduler state satisfies `want`.
fn wait_state(pid: Pid, want: impl Fn(char) -> bool) -> Result<char, char> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        let state = ptrace::task_state(pid).map_or('?', |s| s);
        if want(state) {
            return Ok(state);
        }
        if Instant::now() >= deadline {
            return Err(state);
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn probe_freezer(kind: Kind) -> Outcome {
    let mounts = freezer::parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let (mount, own) = match kind {
        Kind::V2 => (freezer::cgroup2_mount(&mounts), None),
        Kind::V1 => (freezer::freezer_v1_mount(&mounts), Some("freezer")),
    };
    let Some(mount) = mount else {
        return (
            Status::NotApplicable,
            match kind {
                Kind::V2 => "no cgroup2 hierarchy is mounted".to_string(),
                Kind::V1 => "no cgroup v1 hierarchy with the freezer controller is mounted".to_string(),
            },
        );
    };
    // Create the probe group under our own group, where we are allowed to
    // delegate; fall back to the hierarchy root.
    let own_path = fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| freezer::own_cgroup(&text, own))
        .map(|p| mount.mount_point.join(p.strip_prefix("/").unwrap_or(&p)))
        .filter(|p| p.is_dir());
    let parent = own_path.unwrap_or_else(|| mount.mount_point.clone());
    let mut group = match ProbeGroup::create(&parent, kind) {
        Ok(g) => g,
        Err(e) => return missing(e),
    };
    let result = (|| -> Result<String, String> {
        // A spinning child is `R`; frozen it cannot be, so the state proves
        // the freeze independently of the kernel's own report.
        let child = child::spawn(ChildAction::Spin).map_err(|e| chain(&e))?;
        let pid = group.add(child)?;
        wait_state(pid, |s| s == 'R').map_err(|s| format!("spinning child {pid} is in state {s}, not R"))?;
        group.freezer.freeze(PROBE_TIMEOUT).map_err(|e| chain(&e))?;
        let frozen =
            wait_state(pid, |s| s != 'R').map_err(|_| format!("group reports frozen but child {pid} still runs"))?;
        group.freezer.thaw(PROBE_TIMEOUT).map_err(|e| chain(&e))?;
        wait_state(pid, |s| s == 'R').map_err(|s| format!("child {pid} stays in state {s} after thawing"))?;
        Ok(format!("froze a spinning child {pid} in {} (state {frozen}) and thawed it", group.freezer.dir().display()))
    })();
    drop(group);
    match result {
        Ok(detail) => available(detail),
        Err(e) => missing(e),
    }
}

fn probe_cgroup_v2() -> Outcome {
    probe_freezer(Kind::V2)
}

fn probe_cgroup_v1() -> Outcome {
    probe_freezer(Kind::V1)
}

// ---- volumes --------------------------------------------------------------

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
}

fn probe_btrfs() -> Outcome {
    if !btrfs::in_proc_filesystems() {
        return missing("btrfs is not in /proc/filesystems");
    }
    let tools: Vec<&str> = ["mkfs.btrfs", "btrfs"].into_iter().filter(|t| !on_path(t)).collect();
    let tools = if tools.is_empty() {
        "mkfs.btrfs and btrfs are on PATH".to_string()
    } else {
        format!("note: {} not on PATH (install btrfs-progs)", tools.join(", "))
    };
    match btrfs::supported_features() {
        Ok(f) => available(format!(
            "in /proc/filesystems; {} answers GET_SUPPORTED_FEATURES (incompat {:#x}); {tools}",
            btrfs::CONTROL,
            f.supported.incompat
        )),
        Err(e) => missing(format!("in /proc/filesystems, but {}; {tools}", chain(&e))),
    }
}

fn probe_device_mapper() -> Outcome {
    match dm::version() {
        Ok(v) => available(format!("DM_VERSION answered {}.{}.{}", v[0], v[1], v[2])),
        Err(dm::Error::Open(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            let support = dm::kernel_support();
            if support.misc_device || support.block_major {
                missing(format!(
                    "{} is missing although the kernel registered device-mapper ({support:?}); create it with `dmsetup mknodes`",
                    dm::CONTROL
                ))
            } else {
                missing(format!(
                    "{} is missing and neither /proc/misc nor /proc/devices lists device-mapper: the kernel has no CONFIG_BLK_DEV_DM and dm-mod is not loaded",
                    dm::CONTROL
                ))
            }
        }
        Err(e) => missing(chain(&e)),
    }
}

// ---- the rest -------------------------------------------------------------

fn probe_tcp_repair() -> Outcome {
    let result = (|| -> Result<(), tcp::Error> {
        let sock = tcp::new_socket()?;
        let repair = tcp::RepairMode::enter(sock.as_fd())?;
        let on = tcp::in_repair(&sock)?;
        repair.leave()?;
        let off = tcp::in_repair(&sock)?;
        if on && !off {
            Ok(())
        } else {
            Err(tcp::Error::Get(Errno::EINVAL))
        }
    })();
    match result {
        Ok(()) => available("a fresh TCP socket entered and left repair mode"),
        Err(e) => missing(chain(&e)),
    }
}

fn probe_time_namespace() -> Outcome {
    match ns::try_time_namespace_in_child(PROBE_TIMEOUT) {
        Ok(()) => available("a forked child unshared CLONE_NEWTIME and set a CLOCK_MONOTONIC offset"),
        Err(e) => missing(chain(&e)),
    }
}

fn probe_cap_sys_resource() -> Outcome {
    let in_sets = cap_sets().map(|(eff, bnd)| (eff & bnd) & (1 << CAP_SYS_RESOURCE) != 0);
    match (in_sets, rlimit::try_raise_hard_limit_in_child(PROBE_TIMEOUT)) {
        (Some(true), Ok(())) => available("a forked child lowered and raised back its RLIMIT_NOFILE hard limit"),
        (Some(false), Err(e @ rlimit::Error::Raise(Errno::EPERM))) => {
            missing(format!("not in the effective/bounding set; in a forked child, {}", chain(&e)))
        }
        (sets, Ok(())) => {
            missing(format!("raising a hard limit worked, but /proc/self/status shows CAP_SYS_RESOURCE {sets:?}"))
        }
        (sets, Err(e)) => missing(format!("{} (capability in sets: {sets:?})", chain(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// Probes fork children and create cgroups: run them one at a time so
    /// the leftover check sees only its own probe's effects.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status_of(report: &HostReport, id: &str) -> Status {
        report.facility(id).unwrap_or_else(|| panic!("no facility {id}")).status
    }

    #[test]
    fn probe_reports_this_machine() {
        let _serial = serial();
        let report = probe();
        println!("{report:#?}");
        println!("{report}");
        for (id, want) in [
            ("soft-dirty", Status::Missing),
            ("device-mapper", Status::Missing),
            ("pagemap-scan", Status::Available),
            ("uffd-wp-async", Status::Available),
            ("cap-sys-resource", Status::Missing),
            ("cgroup-v2-freeze", Status::Available),
            ("cgroup-v1-freezer", Status::Available),
            ("btrfs", Status::Available),
            ("tcp-repair", Status::Available),
            ("time-namespace", Status::Available),
        ] {
            let f = report.facility(id).unwrap();
            assert_eq!(f.status, want, "{id}: {}", f.detail);
        }
        let missing: Vec<String> = report.missing_required().map(|f| format!("{}: {}", f.id, f.detail)).collect();
        assert!(missing.is_empty(), "required facilities missing: {missing:#?}");
        assert!(report.ready());
        assert!(report.capabilities_missing.contains(&"CAP_SYS_RESOURCE".to_string()));
        for name in ["[vdso]", "[vvar]"] {
            assert!(report.vdso_mappings.iter().any(|m| m == name), "{:?}", report.vdso_mappings);
        }
        assert!(
            report.facility("soft-dirty").unwrap().detail.contains("bit 55"),
            "soft-dirty must be reported absent for the right reason"
        );
    }

    fn our_children() -> Vec<i32> {
        let me = std::process::id().to_string();
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PPid:")).map(|v| v.trim() == me))
                    .unwrap_or(false)
            })
            .collect()
    }

    fn probe_groups() -> Vec<PathBuf> {
        let mounts = freezer::parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap());
        let mut found = Vec::new();
        for m in mounts.iter().filter(|m| m.fstype.starts_with("cgroup")) {
            let mut stack = vec![m.mount_point.clone()];
            while let Some(dir) = stack.pop() {
                for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        // Only ours: other test processes probe at the same time.
                        let ours = format!("stasis-probe-{}-", std::process::id());
                        if entry.file_name().to_string_lossy().starts_with(&ours) {
                            found.push(path.clone());
                        }
                        stack.push(path);
                    }
                }
            }
        }
        found
    }

    #[test]
    fn probe_leaves_nothing_behind() {
        let _serial = serial();
        let children_before = our_children();
        let groups_before = probe_groups();
        let report = probe();
        assert!(report.facilities.len() >= 17);
        assert_eq!(our_children(), children_before, "probe left children behind");
        assert_eq!(probe_groups(), groups_before, "probe left cgroups behind");
        assert!(groups_before.is_empty(), "stale probe cgroups: {groups_before:?}");
    }

    #[test]
    fn every_facility_has_a_reason_and_unique_id() {
        let mut ids: Vec<&str> = SPECS.iter().map(|s| s.id).collect();
        for spec in SPECS {
            assert!(spec.without.ends_with('.'), "{}", spec.id);
            assert!(spec.id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{}", spec.id);
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), SPECS.len());
    }

    #[test]
    fn special_mappings_from_recorded_maps() {
        let maps = "\
5614daa75000-5614daa96000 rw-p 00000000 00:00 0                          [heap]
7f97e226e000-7f97e2272000 r--p 00000000 00:00 0                          [vvar]
7f97e2272000-7f97e2274000 r--p 00000000 00:00 0                          [vvar_vclock]
7f97e2274000-7f97e2276000 r-xp 00000000 00:00 0                          [vdso]
7ffe6cb35000-7ffe6cb56000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";
        assert_eq!(special_mappings(maps), ["[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"]);
    }

    #[test]
    fn report_serializes_with_kebab_case_states() {
        let report = HostReport {
            kernel: kernel_info(),
            vdso_mappings: vec![],
            capabilities_missing: vec![],
            facilities: vec![Facility {
                id: "x",
                name: "x",
                needed_for: Need::Optional,
                status: Status::NotApplicable,
                detail: String::new(),
                without: "",
            }],
        };
        assert_eq!(status_of(&report, "x"), Status::NotApplicable);
        assert!(report.ready());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["facilities"][0]["status"], "not-applicable");
        assert_eq!(json["facilities"][0]["needed_for"], "optional");
    }
}
