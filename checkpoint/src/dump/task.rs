//! The state of a stopped process and its threads: registers and signal
//! state through ptrace, attributes through /proc, and what only the task
//! itself can report through injected system calls.

use std::fs;

use stasis_image::records::{
    AltStack, Creds, Itimer, KernelLayout, MmFields, Process, Rlimit, Rseq, SeccompFilter, SigAction, SigInfo, Thread,
};
use stasis_sys::inject::{find_syscall_site, Injection};
use stasis_sys::nix::libc;
use stasis_sys::ptrace::Seized;
use stasis_sys::Pid;

use super::DumpError;
use crate::freeze::FrozenProcess;
use crate::proc::{self, Mapping, Stat};

/// The process record without memory and fds.
pub(super) fn process(frozen: &mut FrozenProcess, stat: &Stat) -> Result<Process, DumpError> {
    let pid = frozen.pid();
    let proc_err = |what: &str| {
        let what = what.to_owned();
        move |source| DumpError::Proc { pid, what, source }
    };
    let status = proc::parse_status(&proc::read(pid, "status").map_err(proc_err("status"))?);
    let (cgroup_ns, cgroup_ns_roots) = crate::cgroups::namespace(pid.as_raw())
        .map_err(|what| DumpError::Unsupported { pid, problems: vec![what] })?
        .unwrap_or_default();
    let link = |name: &str| fs::read_link(proc::path(pid, name)).map(|p| p.to_string_lossy().into_owned());
    let exe_path = link("exe").map_err(proc_err("exe"))?;
    // What the link names (its path, " (deleted)" when removed), by inode.
    let file_ref = |name: &str, path: &str| {
        fs::metadata(proc::path(pid, name)).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            stasis_image::records::FileRef {
                path: path.strip_suffix(" (deleted)").unwrap_or(path).to_owned(),
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                mode: m.mode(),
                deleted: path.ends_with(" (deleted)"),
                contents_mm: 0,
                content_hash: Vec::new(),
                uid: m.uid(),
                gid: m.gid(),
                link_target: String::new(),
            }
        })
    };
    let exe = file_ref("exe", &exe_path);
    // A time namespace of its own (dump's pre-flight refused one made for
    // its children only): its clock offsets, to make it again.
    let (time_ns, time_offsets) = {
        use std::os::unix::fs::MetadataExt;
        let ino = |p: std::path::PathBuf| fs::metadata(p).map(|m| m.ino()).unwrap_or(0);
        match ino(proc::path(pid, "ns/time")) {
            0 => (0, String::new()),
            own if own == ino("/proc/self/ns/time".into()) => (0, String::new()),
            other => (other, proc::read(pid, "timens_offsets").map_err(proc_err("timens_offsets"))?),
        }
    };
    let cwd = link("cwd").map_err(proc_err("cwd"))?;
    let removed_cwd = file_ref("cwd", &cwd).filter(|f| f.deleted);
    let auxv = fs::read(proc::path(pid, "auxv")).map_err(proc_err("auxv"))?;
    let personality =
        u32::from_str_radix(proc::read(pid, "personality").map_err(proc_err("personality"))?.trim(), 16).unwrap_or(0);
    let rlimits = proc::parse_limits(&proc::read(pid, "limits").map_err(proc_err("limits"))?)
        .into_iter()
        .map(|(resource, soft, hard)| Rlimit { resource, soft, hard })
        .collect();

    let main = frozen.threads()[0].pid();
    debug_assert_eq!(main, pid);
    let cgroups = crate::cgroups::parse(&proc::read(pid, "cgroup").map_err(proc_err("cgroup"))?);
    let mut threads = Vec::new();
    for seized in frozen.threads().iter_mut() {
        let mut t = thread(pid, seized)?;
        if t.tid != pid.as_raw() {
            // Where a thread's cgroups differ from its process's.
            let own = proc::read(pid, &format!("task/{}/cgroup", t.tid)).map_err(proc_err("a thread's cgroup"))?;
            t.cgroups = crate::cgroups::parse(&own).into_iter().filter(|c| !cgroups.contains(c)).collect();
        }
        threads.push(t);
    }
    let shared_pending = frozen.threads()[0]
        .peek_siginfo(true)
        .map_err(|e| DumpError::Thread { tid: pid, what: crate::chain(&e) })?
        .into_iter()
        .map(|s| SigInfo { raw: s.0.to_vec() })
        .collect();
    let mut posix_timers = super::timers::parse(&proc::read(pid, "timers").map_err(proc_err("timers"))?)
        .map_err(|e| proc_err("timers")(std::io::Error::other(e)))?;
    let injected = injected(pid, &mut frozen.threads()[0], &mut posix_timers)?;

    Ok(Process {
        pid: pid.as_raw(),
        ppid: stat.ppid,
        pgid: stat.pgrp,
        sid: stat.session,
        mm: 0,
        threads,
        vmas: Vec::new(),
        fds: Vec::new(),
        sigactions: injected.sigactions,
        shared_pending,
        mm_fields: Some(MmFields {
            start_code: stat.start_code,
            end_code: stat.end_code,
            start_data: stat.start_data,
            end_data: stat.end_data,
            start_brk: stat.start_brk,
            brk: injected.brk,
            start_stack: stat.start_stack,
            arg_start: stat.arg_start,
            arg_end: stat.arg_end,
            env_start: stat.env_start,
            env_end: stat.env_end,
            auxv: proc::parse_auxv(&auxv),
        }),
        creds: Some(creds(&status)),
        cwd,
        root: link("root").map_err(proc_err("root"))?,
        exe,
        umask: status.umask,
        rlimits,
        personality,
        no_new_privs: status.no_new_privs,
        pdeathsig: injected.pdeathsig,
        dumpable: injected.dumpable,
        itimers: injected.itimers,
        child_subreaper: injected.child_subreaper,
        thp_disable: !status.thp_enabled,
        exit_signal: stat.exit_signal,
        posix_timers,
        cgroups,
        oom_score_adj: Some(
            proc::read(pid, "oom_score_adj")
                .map_err(proc_err("oom_score_adj"))?
                .trim()
                .parse()
                .map_err(|_| proc_err("oom_score_adj")(std::io::Error::other("not a number")))?,
        ),
        stopped: frozen.stopped(),
        stop_signal: frozen.stop_signal().unwrap_or(0),
        loginuid: proc::read(pid, "loginuid").ok().and_then(|s| s.trim().parse().ok()),
        membarrier: injected.membarrier,
        from_parent: Vec::new(),
        files_of_parent: false,
        cgroup_ns,
        cgroup_ns_roots,
        removed_cwd,
        time_ns,
        time_offsets,
    })
}

/// Ids and capabilities, as /proc/PID/status (or a thread's) shows them.
fn creds(status: &proc::Status) -> Creds {
    Creds {
        uids: status.uids.clone(),
        gids: status.gids.clone(),
        groups: status.groups.clone(),
        cap_inheritable: status.cap_inh,
        cap_permitted: status.cap_prm,
        cap_effective: status.cap_eff,
        cap_bounding: status.cap_bnd,
        cap_ambient: status.cap_amb,
    }
}

/// One thread's registers, signal state and attributes.
fn thread(pid: Pid, s: &mut Seized) -> Result<Thread, DumpError> {
    let tid = s.pid();
    let err = |what: String| DumpError::Thread { tid, what };
    let regs = s.get_regs().map_err(|e| err(crate::chain(&e)))?;
    let xstate = s.get_xstate().map_err(|e| err(crate::chain(&e)))?;
    let sigmask = s.get_sigmask().map_err(|e| err(crate::chain(&e)))?;
    let pending = s.peek_siginfo(false).map_err(|e| err(crate::chain(&e)))?;
    let rseq = s.rseq_configuration().map_err(|e| err(crate::chain(&e)))?;
    let stat =
        proc::parse_stat(&fs::read_to_string(proc::task_path(pid, tid, "stat")).map_err(|e| err(crate::chain(&e)))?)
            .map_err(err)?;
    // Per thread, but only under /proc/TID (there is no task/TID entry).
    let slack =
        fs::read_to_string(proc::path(tid, "timerslack_ns")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(50_000);
    let (sched_policy, sched_priority) =
        stasis_sys::sched::policy(tid).map_err(|e| err(format!("sched_getscheduler: {e}")))?;
    let ioprio = stasis_sys::sched::ioprio(tid).map_err(|e| err(format!("ioprio_get: {e}")))?;
    let cpus = stasis_sys::sched::affinity(tid).map_err(|e| err(format!("sched_getaffinity: {e}")))?;
    let status = proc::parse_status(
        &fs::read_to_string(proc::task_path(pid, tid, "status")).map_err(|e| err(crate::chain(&e)))?,
    );
    // Under seccomp: the calls injected below, and the process's after every
    // thread is read, must not be refused (or kill it) by its filters.
    if status.seccomp != 0 {
        s.set_options(crate::freeze::seize_options() | stasis_sys::regs::SUSPEND_SECCOMP)
            .map_err(|e| err(crate::chain(&e)))?;
    }
    // Mode 2: filters (1 is strict mode).
    let seccomp = match status.seccomp {
        2 => s.seccomp_filters().map_err(|e| err(crate::chain(&e)))?,
        _ => Vec::new(),
    };
    if seccomp.iter().any(|f| hands_to_listener(&f.program)) {
        return Err(err("a seccomp filter hands calls to a listener (SECCOMP_RET_USER_NOTIF), which a restore \
                        could not connect again (not supported)"
            .into()));
    }
    let site = find_syscall_site(pid).map_err(|e| err(crate::chain(&e)))?;
    let (altstack, clear_child_tid, robust) = {
        let mut inj = s.begin_injection(site).map_err(|e| err(crate::chain(&e)))?;
        let alt = inj.sigaltstack().map_err(|e| err(crate::chain(&e)))?;
        let ctid = inj.get_tid_address().map_err(|e| err(crate::chain(&e)))?;
        let robust = robust_list(&mut inj).map_err(|e| err(crate::chain(&e)))?;
        inj.finish().map_err(|e| err(crate::chain(&e)))?;
        (alt, ctid, robust)
    };
    Ok(Thread {
        tid: tid.as_raw(),
        gpregs: regs.to_bytes().to_vec(),
        xstate: xstate.into_bytes(),
        sigmask,
        pending: pending.into_iter().map(|p| SigInfo { raw: p.0.to_vec() }).collect(),
        altstack: Some(AltStack { sp: altstack.sp, flags: altstack.flags, size: altstack.size }),
        rseq: rseq.map(|r| Rseq {
            abi: r.rseq_abi_pointer,
            len: r.rseq_abi_size,
            signature: r.signature,
            flags: r.flags,
        }),
        robust_list: robust.0,
        robust_list_len: robust.1,
        clear_child_tid,
        comm: stat.comm,
        timer_slack_ns: slack,
        nice: stat.nice,
        cpus,
        sched_policy,
        sched_priority,
        ioprio,
        creds: Some(creds(&status)),
        seccomp: seccomp.into_iter().map(|f| SeccompFilter { program: f.program, log: f.log }).collect(),
        seccomp_strict: status.seccomp == 1,
        cgroups: Vec::new(),
    })
}

/// Whether a seccomp program returns SECCOMP_RET_USER_NOTIF (a `ret #k`
/// instruction with that action), which hands the call to whoever holds
/// the filter's listener fd.
fn hands_to_listener(program: &[u8]) -> bool {
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
    program.chunks_exact(8).any(|i| {
        let code = u16::from_le_bytes([i[0], i[1]]);
        let k = u32::from_le_bytes([i[4], i[5], i[6], i[7]]);
        code == BPF_RET_K && k & 0xffff_0000 == SECCOMP_RET_USER_NOTIF
    })
}

/// `get_robust_list(0, &head, &len)` of the injected thread.
fn robust_list(inj: &mut Injection<'_>) -> Result<(u64, u64), stasis_sys::inject::Error> {
    let at = inj.scratch()?.addr().0;
    inj.syscall_ok(libc::SYS_get_robust_list, [0, at, at + 8, 0, 0, 0])?;
    let mut raw = [0u8; 16];
    inj.scratch()?.read(0, &mut raw)?;
    Ok((u64::from_le_bytes(raw[..8].try_into().expect("8")), u64::from_le_bytes(raw[8..].try_into().expect("8"))))
}

/// Process-wide state only the process itself can report.
struct Injected {
    sigactions: Vec<SigAction>,
    itimers: Vec<Itimer>,
    pdeathsig: i32,
    dumpable: i32,
    child_subreaper: bool,
    brk: u64,
    membarrier: u32,
}

fn injected(
    pid: Pid,
    main: &mut Seized,
    timers: &mut [stasis_image::records::PosixTimer],
) -> Result<Injected, DumpError> {
    let err = |what: String| DumpError::Thread { tid: pid, what };
    let site = find_syscall_site(pid).map_err(|e| err(crate::chain(&e)))?;
    let mut inj = main.begin_injection(site).map_err(|e| err(crate::chain(&e)))?;
    let mut sigactions = Vec::new();
    // Every signal but SIGKILL and SIGSTOP, whose disposition is fixed.
    for sig in (1..=64).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP) {
        let a = inj.sigaction(sig).map_err(|e| err(format!("sigaction({sig}): {e}")))?;
        sigactions.push(SigAction {
            signal: sig,
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        });
    }
    let mut itimers = Vec::new();
    for which in 0..3 {
        let t = inj.getitimer(which).map_err(|e| err(format!("getitimer({which}): {e}")))?;
        itimers.push(Itimer { interval_us: t.interval_us, value_us: t.value_us });
    }
    let pdeathsig = inj.prctl_get_int(libc::PR_GET_PDEATHSIG).map_err(|e| err(crate::chain(&e)))?;
    let dumpable = inj.prctl(libc::PR_GET_DUMPABLE, [0; 4]).map_err(|e| err(crate::chain(&e)))? as i32;
    let child_subreaper = inj.prctl_get_int(libc::PR_GET_CHILD_SUBREAPER).map_err(|e| err(crate::chain(&e)))? != 0;
    let brk = inj.syscall(libc::SYS_brk, [0; 6]).map_err(|e| err(format!("brk(0): {e}")))? as u64;
    for t in timers.iter_mut() {
        // struct itimerspec { it_interval, it_value }, each { sec, nsec }.
        let at = inj.scratch().map_err(|e| err(crate::chain(&e)))?.addr().0;
        inj.syscall_ok(libc::SYS_timer_gettime, [t.id as u64, at, 0, 0, 0, 0])
            .map_err(|e| err(format!("timer_gettime({}): {}", t.id, crate::chain(&e))))?;
        let mut raw = [0u8; 32];
        inj.scratch().map_err(|e| err(crate::chain(&e)))?.read(0, &mut raw).map_err(|e| err(crate::chain(&e)))?;
        let w = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        t.interval_ns = w(0) * 1_000_000_000 + w(1);
        t.value_ns = w(2) * 1_000_000_000 + w(3);
    }
    let membarrier = membarrier(&mut inj).map_err(|e| err(format!("membarrier: {e}")))?;
    inj.finish().map_err(|e| err(crate::chain(&e)))?;
    Ok(Injected { sigactions, itimers, pdeathsig, dumpable, child_subreaper, brk, membarrier })
}

/// The membarrier(2) registrations of the address space, as the
/// `MEMBARRIER_CMD_REGISTER_*` commands a restore issues again. A private
/// expedited kind is registered when its barrier does not fail with EPERM
/// (the barrier itself is harmless: every thread is stopped); registering
/// the SYNC_CORE or RSEQ kind marks the plain kind registered but not
/// usable, which registering the same commands again repeats. A global
/// expedited registration shows only through
/// `MEMBARRIER_CMD_GET_REGISTRATIONS` (Linux 6.3).
fn membarrier(inj: &mut Injection<'_>) -> Result<u32, stasis_sys::inject::Error> {
    use stasis_image::records::membarrier as mb;
    let mut registered = 0;
    let all = inj.syscall(libc::SYS_membarrier, [mb::GET_REGISTRATIONS.into(), 0, 0, 0, 0, 0])?;
    if all >= 0 && all as u32 & mb::REGISTER_GLOBAL_EXPEDITED != 0 {
        registered |= mb::REGISTER_GLOBAL_EXPEDITED;
    }
    for (barrier, register) in [
        (mb::PRIVATE_EXPEDITED, mb::REGISTER_PRIVATE_EXPEDITED),
        (mb::PRIVATE_EXPEDITED_SYNC_CORE, mb::REGISTER_PRIVATE_EXPEDITED_SYNC_CORE),
        (mb::PRIVATE_EXPEDITED_RSEQ, mb::REGISTER_PRIVATE_EXPEDITED_RSEQ),
    ] {
        // 0: registered; EPERM: not; EINVAL or ENOSYS: not in this kernel.
        if inj.syscall(libc::SYS_membarrier, [barrier.into(), 0, 0, 0, 0, 0])? == 0 {
            registered |= register;
        }
    }
    Ok(registered)
}

/// The layout of the kernel's special mappings, and the vdso's hash.
pub(super) fn kernel_layout(pid: Pid, maps: &[Mapping]) -> KernelLayout {
    let special: Vec<&Mapping> = maps.iter().filter(|m| m.name.starts_with('[') && m.name.ends_with(']')).collect();
    KernelLayout {
        release: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        vdso_hash: proc::vdso_hash(pid, maps),
        special_mappings: special
            .iter()
            .filter(|m| matches!(m.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
            .map(|m| format!("{} {}", m.name, m.end - m.start))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::hands_to_listener;

    fn insn(code: u16, k: u32) -> Vec<u8> {
        let mut i = code.to_le_bytes().to_vec();
        i.extend_from_slice(&[0, 0]);
        i.extend_from_slice(&k.to_le_bytes());
        i
    }

    #[test]
    fn a_filter_returning_user_notif_is_told() {
        let allow = insn(0x06, 0x7fff_0000);
        let notify = insn(0x06, 0x7fc0_0000);
        // `ld [0]` whose k has the notify bits is no return.
        let load = insn(0x20, 0x7fc0_0000);
        assert!(!hands_to_listener(&[load.clone(), allow.clone()].concat()));
        assert!(hands_to_listener(&[load, notify, allow].concat()));
    }
}
