//! The state of a stopped process and its threads: registers and signal
//! state through ptrace, attributes through /proc, and what only the task
//! itself can report through injected system calls.

use std::fs;

use stasis_image::records::{
    AltStack, Creds, Itimer, KernelLayout, MmFields, Process, Rlimit, Rseq, SeccompFilter, SigAction, SigInfo, Thread,
};
use stasis_sys::inject::{find_syscall_site, Arg, BatchArea, Call, Ran};
use stasis_sys::nix::libc;
use stasis_sys::process_vm::RemoteAddr;
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
    // The calls injected into the threads and the process run as batches
    // in one area, made in the main thread's injection and unmapped in the
    // process's (below), or on the way out of an error.
    let site = find_syscall_site(pid).map_err(|e| DumpError::Thread { tid: pid, what: crate::chain(&e) })?;
    let mut area = None;
    let tids: Vec<Pid> = frozen.threads().iter().map(|s| s.pid()).collect();
    let mut collected = || -> Result<_, DumpError> {
        // What /proc and the scheduler tell of each thread is read on a
        // thread of its own, ahead of the ptrace work (which only the
        // tracing thread may do), so the two overlap: a process with 200
        // threads spent ~60 us a thread on these reads, frozen.
        let threads = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(tids.len());
            let tids = &tids;
            let read = move || {
                for &tid in tids {
                    // Stops when the tracing side stopped listening.
                    if tx.send(thread_files(pid, tid)).is_err() {
                        return;
                    }
                }
            };
            // (A thread alone is not worth a thread.)
            match tids.len() {
                1 => read(),
                _ => drop(scope.spawn(read)),
            }
            let mut threads = Vec::new();
            for seized in frozen.threads().iter_mut() {
                let mut files = rx.recv().expect("one for each thread")?;
                let own_cgroup = files.cgroup.take();
                let mut t = thread(pid, seized, site, &mut area, files)?;
                if let Some(own) = own_cgroup {
                    // Where a thread's cgroups differ from its process's.
                    t.cgroups = crate::cgroups::parse(&own).into_iter().filter(|c| !cgroups.contains(c)).collect();
                }
                threads.push(t);
            }
            Ok::<_, DumpError>(threads)
        })?;
        let shared_pending: Vec<SigInfo> = frozen.threads()[0]
            .peek_siginfo(true)
            .map_err(|e| DumpError::Thread { tid: pid, what: crate::chain(&e) })?
            .into_iter()
            .map(|s| SigInfo { raw: s.0.to_vec() })
            .collect();
        let mut posix_timers = super::timers::parse(&proc::read(pid, "timers").map_err(proc_err("timers"))?)
            .map_err(|e| proc_err("timers")(std::io::Error::other(e)))?;
        let injected = injected(pid, &mut frozen.threads()[0], &mut posix_timers, site, &mut area)?;
        Ok((threads, shared_pending, posix_timers, injected))
    };
    let collected = collected();
    if let Some(area) = area.take() {
        // Best effort: the dump fails anyway.
        if let Ok(mut inj) = frozen.threads()[0].begin_injection(site) {
            let _ = area.unmap(&mut inj);
            let _ = inj.finish();
        }
    }
    let (threads, shared_pending, posix_timers, injected) = collected?;

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

/// What a thread's /proc files and the scheduler say of it (all but what
/// ptrace tells), and its cgroups when it is not the main thread.
struct ThreadFiles {
    cgroup: Option<String>,
    stat: Stat,
    status: proc::Status,
    slack: u64,
    sched: (i32, i32),
    ioprio: i32,
    cpus: Vec<u32>,
}

/// [`ThreadFiles`] of thread `tid` of process `pid`.
fn thread_files(pid: Pid, tid: Pid) -> Result<ThreadFiles, DumpError> {
    let err = |what: String| DumpError::Thread { tid, what };
    let read = |name: &str| fs::read_to_string(proc::task_path(pid, tid, name)).map_err(|e| err(crate::chain(&e)));
    let stat = proc::parse_stat(&read("stat")?).map_err(err)?;
    // Per thread, but only under /proc/TID (there is no task/TID entry).
    let slack =
        fs::read_to_string(proc::path(tid, "timerslack_ns")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(50_000);
    let sched = stasis_sys::sched::policy(tid).map_err(|e| err(format!("sched_getscheduler: {e}")))?;
    let ioprio = stasis_sys::sched::ioprio(tid).map_err(|e| err(format!("ioprio_get: {e}")))?;
    let cpus = stasis_sys::sched::affinity(tid).map_err(|e| err(format!("sched_getaffinity: {e}")))?;
    let status = proc::parse_status(&read("status")?);
    let cgroup = match tid == pid {
        true => None,
        false => Some(read("cgroup")?),
    };
    Ok(ThreadFiles { cgroup, stat, status, slack, sched, ioprio, cpus })
}

/// One thread's registers, signal state and attributes.
fn thread(
    pid: Pid,
    s: &mut Seized,
    site: RemoteAddr,
    area: &mut Option<BatchArea>,
    files: ThreadFiles,
) -> Result<Thread, DumpError> {
    let tid = s.pid();
    let err = |what: String| DumpError::Thread { tid, what };
    let regs = s.get_regs().map_err(|e| err(crate::chain(&e)))?;
    let xstate = s.get_xstate().map_err(|e| err(crate::chain(&e)))?;
    let sigmask = s.get_sigmask().map_err(|e| err(crate::chain(&e)))?;
    let pending = s.peek_siginfo(false).map_err(|e| err(crate::chain(&e)))?;
    let rseq = s.rseq_configuration().map_err(|e| err(crate::chain(&e)))?;
    let ThreadFiles { stat, status, slack, sched: (sched_policy, sched_priority), ioprio, cpus, .. } = files;
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
    // stack_t { void *ss_sp; int ss_flags; size_t ss_size; }; the
    // clear_child_tid pointer; the robust list's head and length.
    let calls = [
        Call::out(libc::SYS_sigaltstack, [0; 6], 1, 24),
        Call::out(libc::SYS_prctl, [libc::PR_GET_TID_ADDRESS as u64, 0, 0, 0, 0, 0], 1, 8),
        Call::new(
            libc::SYS_get_robust_list,
            [Arg::Value(0), Arg::Out(8), Arg::Out(8), Arg::Value(0), Arg::Value(0), Arg::Value(0)],
        ),
    ];
    let answers = {
        let mut inj = s.begin_injection(site).map_err(|e| err(crate::chain(&e)))?;
        if tid == pid {
            // Where it cannot be made, each batch maps its own pages (or
            // its calls go one by one).
            *area = inj.batch_area(AREA_ROOM).ok();
        }
        inj.set_trap_pending((status.sig_pnd | status.shd_pnd) & 1 << (libc::SIGTRAP - 1) != 0);
        let (answers, _) = inj.batch_in(area.as_ref(), &calls).map_err(|e| err(crate::chain(&e)))?;
        inj.finish().map_err(|e| err(crate::chain(&e)))?;
        answers
    };
    for (answer, call) in answers.iter().zip(&calls) {
        answer.ok(tid, call.nr).map_err(|e| err(crate::chain(&e)))?;
    }
    let alt = answers[0].words(0);
    let altstack = AltStack { sp: alt[0], flags: alt[1] as u32 as i32, size: alt[2] };
    let clear_child_tid = answers[1].words(0)[0];
    let robust = (answers[2].words(0)[0], answers[2].words(1)[0]);
    Ok(Thread {
        tid: tid.as_raw(),
        gpregs: regs.to_bytes().to_vec(),
        xstate: xstate.into_bytes(),
        sigmask,
        pending: pending.into_iter().map(|p| SigInfo { raw: p.0.to_vec() }).collect(),
        altstack: Some(altstack),
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

/// The bytes of tables and buffers the batch area of a process holds: the
/// process's own batch (~80 calls, 7.5 KiB) with room for POSIX timers.
const AREA_ROOM: usize = 16 << 10;

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
    site: RemoteAddr,
    area: &mut Option<BatchArea>,
) -> Result<Injected, DumpError> {
    use stasis_image::records::membarrier as mb;
    let err = |what: String| DumpError::Thread { tid: pid, what };
    let fail = |what: &str, e: stasis_sys::inject::Error| err(format!("{what}: {}", crate::chain(&e)));
    // Every signal but SIGKILL and SIGSTOP, whose disposition is fixed.
    let signals: Vec<i32> = (1..=64).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP).collect();
    let get = |nr: i64, first: u64, len: usize| Call::out(nr, [first, 0, 0, 0, 0, 0], 1, len);
    let mut calls: Vec<Call> =
        signals.iter().map(|&sig| Call::out(libc::SYS_rt_sigaction, [sig as u64, 0, 0, 8, 0, 0], 2, 32)).collect();
    // struct itimerval { it_interval, it_value }, each timeval { sec, usec }.
    calls.extend((0..3).map(|which| get(libc::SYS_getitimer, which, 32)));
    calls.push(get(libc::SYS_prctl, libc::PR_GET_PDEATHSIG as u64, 4));
    calls.push(Call::new(libc::SYS_prctl, [libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0, 0].map(Arg::Value)));
    calls.push(get(libc::SYS_prctl, libc::PR_GET_CHILD_SUBREAPER as u64, 4));
    calls.push(Call::new(libc::SYS_brk, [Arg::Value(0); 6]));
    // struct itimerspec { it_interval, it_value }, each { sec, nsec }.
    calls.extend(timers.iter().map(|t| get(libc::SYS_timer_gettime, t.id as u64, 32)));
    calls.extend(
        MEMBARRIER_QUERIES
            .iter()
            .map(|&(cmd, _)| Call::new(libc::SYS_membarrier, [u64::from(cmd), 0, 0, 0, 0, 0].map(Arg::Value))),
    );

    let mut inj = main.begin_injection(site).map_err(|e| err(crate::chain(&e)))?;
    let (answers, ran) = inj.batch_in(area.as_ref(), &calls).map_err(|e| err(crate::chain(&e)))?;
    if let Some(area) = area.take() {
        area.unmap(&mut inj).map_err(|e| err(crate::chain(&e)))?;
    }
    inj.finish().map_err(|e| err(crate::chain(&e)))?;
    if let Ran::OneByOne(why) = ran {
        tracing::debug!(%pid, why, "process state read one system call at a time");
    }

    let mut answers = answers.iter();
    let mut next = |what: &str, nr: i64| -> Result<&stasis_sys::inject::Answer, DumpError> {
        let answer = answers.next().expect("one answer per call");
        answer.ok(pid, nr).map_err(|e| fail(what, e))?;
        Ok(answer)
    };
    let int = |raw: &[u8]| i32::from_le_bytes(raw[..4].try_into().expect("4 bytes"));
    let mut sigactions = Vec::with_capacity(signals.len());
    for &sig in &signals {
        let a = next(&format!("sigaction({sig})"), libc::SYS_rt_sigaction)?.words(0);
        sigactions.push(SigAction { signal: sig, handler: a[0], flags: a[1], restorer: a[2], mask: a[3] });
    }
    let mut itimers = Vec::with_capacity(3);
    for which in 0..3 {
        let t = next(&format!("getitimer({which})"), libc::SYS_getitimer)?.words(0);
        itimers.push(Itimer { interval_us: t[0] * 1_000_000 + t[1], value_us: t[2] * 1_000_000 + t[3] });
    }
    let pdeathsig = int(&next("PR_GET_PDEATHSIG", libc::SYS_prctl)?.out[0]);
    let dumpable = next("PR_GET_DUMPABLE", libc::SYS_prctl)?.ret as i32;
    let child_subreaper = int(&next("PR_GET_CHILD_SUBREAPER", libc::SYS_prctl)?.out[0]) != 0;
    let brk = next("brk(0)", libc::SYS_brk)?.ret as u64;
    for t in timers.iter_mut() {
        let w = next(&format!("timer_gettime({})", t.id), libc::SYS_timer_gettime)?.words(0);
        t.interval_ns = w[0] * 1_000_000_000 + w[1];
        t.value_ns = w[2] * 1_000_000_000 + w[3];
    }
    // The membarrier answers are read raw: their errors are answers too.
    let mut membarrier = 0;
    for (&(cmd, registers), answer) in MEMBARRIER_QUERIES.iter().zip(answers) {
        if cmd == mb::GET_REGISTRATIONS {
            if answer.ret >= 0 {
                membarrier |= answer.ret as u32 & registers;
            }
        } else if answer.ret == 0 {
            membarrier |= registers;
        }
    }
    Ok(Injected { sigactions, itimers, pdeathsig, dumpable, child_subreaper, brk, membarrier })
}

/// The membarrier(2) calls that tell the registrations of the address
/// space, as the `MEMBARRIER_CMD_REGISTER_*` commands a restore issues
/// again, with the registrations each reveals. A private expedited kind is
/// registered when its barrier does not fail with EPERM (the barrier itself
/// is harmless: every thread is stopped; EINVAL or ENOSYS: not in this
/// kernel); registering the SYNC_CORE or RSEQ kind marks the plain kind
/// registered but not usable, which registering the same commands again
/// repeats. A global expedited registration shows only through
/// `MEMBARRIER_CMD_GET_REGISTRATIONS` (Linux 6.3), whose answer is masked
/// with the registration given here.
const MEMBARRIER_QUERIES: [(u32, u32); 4] = {
    use stasis_image::records::membarrier as mb;
    [
        (mb::GET_REGISTRATIONS, mb::REGISTER_GLOBAL_EXPEDITED),
        (mb::PRIVATE_EXPEDITED, mb::REGISTER_PRIVATE_EXPEDITED),
        (mb::PRIVATE_EXPEDITED_SYNC_CORE, mb::REGISTER_PRIVATE_EXPEDITED_SYNC_CORE),
        (mb::PRIVATE_EXPEDITED_RSEQ, mb::REGISTER_PRIVATE_EXPEDITED_RSEQ),
    ]
};

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
