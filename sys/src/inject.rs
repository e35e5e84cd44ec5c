//! Running system calls inside a ptrace-stopped thread, without injecting
//! any code: the tracee executes one `syscall` instruction that already
//! exists in its address space, with registers we chose, under
//! `PTRACE_SYSCALL`.
//!
//! # Mechanism
//!
//! An [`Injection`] starts from a thread stopped by `PTRACE_INTERRUPT`, that
//! is in a `PTRACE_EVENT_STOP` inside `get_signal()`. On x86_64 the thread
//! got there from `exit_to_user_mode_loop()` (kernel/entry/common.c), which
//! calls `arch_do_signal_or_restart()` (arch/x86/kernel/signal.c) when
//! `TIF_SIGPENDING` is set. That function first calls `get_signal()` and,
//! when it returns without a signal to handle, applies the syscall-restart
//! rule: if `orig_ax != -1` (the thread came from a syscall) and `ax` is
//! `-ERESTARTSYS`/`-ERESTARTNOINTR`/`-ERESTARTNOHAND`, it sets `ax =
//! orig_ax` and `ip -= 2`; for `-ERESTART_RESTARTBLOCK` it sets `ax =
//! __NR_restart_syscall` and `ip -= 2`. So a thread interrupted inside a
//! blocking `read()` sits in the stop with `ax = -ERESTARTSYS`, `orig_ax =
//! 0` and `ip` just after its `syscall` instruction, and the rewrite happens
//! only after the stop.
//!
//! Each injected syscall:
//! 1. sets `rip` = a *syscall site* (the address of bytes `0f 05`), `rax` =
//!    the number, `rdi, rsi, rdx, r10, r8, r9` = the arguments, and
//!    `orig_rax = -1` ("not in a syscall"), so that on leaving the stop the
//!    restart rule above cannot touch our `rip`/`rax` whatever they hold
//!    (with `rax` = a syscall number it would not fire anyway; the -1 makes
//!    that independent of `rax`);
//! 2. resumes with `PTRACE_SYSCALL`: the thread returns to user mode at the
//!    site, executes `syscall`, and reports a syscall-enter stop
//!    (`SIGTRAP | 0x80`, hence `PTRACE_O_TRACESYSGOOD` is required); we check
//!    that it entered our syscall at our site;
//! 3. resumes with `PTRACE_SYSCALL` again: the syscall runs and the thread
//!    reports a syscall-exit stop, where `rax` is the result (-errno on
//!    failure). The next injection starts from this stop; `orig_rax = -1`
//!    again keeps the exit path (which may pass through
//!    `arch_do_signal_or_restart()` too) from rewinding anything.
//!
//! [`Injection::finish`] puts the thread back *exactly* where it was: it
//! sets `PTRACE_INTERRUPT` while the thread sits in the syscall-exit stop
//! and resumes it with `PTRACE_CONT`; the thread leaves the syscall path,
//! finds `TIF_SIGPENDING`, enters `get_signal()`, which handles the pending
//! `JOBCTL_TRAP_STOP` before it dequeues any signal (kernel/signal.c), and
//! stops in `PTRACE_EVENT_STOP` again. There the original registers are
//! written back. When the caller later resumes or detaches, the kernel's own
//! restart rule runs on the original registers: an interrupted `read()` is
//! re-executed, an interrupted `nanosleep()` continues through
//! `restart_syscall()` with the `restart_block` its first run left behind
//! (none of the syscalls injected here touch `restart_block`). Writing
//! `rip -= 2; rax = orig_rax` ourselves instead would get
//! `-ERESTART_RESTARTBLOCK` wrong and would restart `-ERESTARTNOHAND` calls
//! that a signal handler should have interrupted.
//!
//! # Signals
//!
//! While an injection runs, the thread's signal mask is "everything"
//! (`PTRACE_SETSIGMASK`), so signals sent to it meanwhile stay queued and
//! are delivered normally after the injection, under the original mask,
//! which [`Injection::finish`] writes back. SIGKILL ends the thread (an
//! error naming it); a SIGSTOP is intercepted and sent again at the end;
//! any other signal can only be a fault caused by the injection (a bad
//! site), and is reported as an error. Note that `PTRACE_GETSIGMASK`
//! reports the mask saved by ppoll/pselect/sigsuspend and `SETSIGMASK`
//! clears `TIF_RESTORE_SIGMASK`: the mask those calls install temporarily
//! is not kept, which is harmless because they restart and install it again.
//! Injected `rt_sigprocmask` calls see the "everything" mask and their
//! changes are undone by `finish`; use [`Seized::set_sigmask`] afterwards.
//!
//! A thread in a frozen cgroup v2 re-freezes in `get_signal()`
//! (`do_freezer_trap`) as soon as it is resumed: thaw the cgroup after
//! seizing and interrupting, before injecting.

use std::io;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::ptrace as nix_ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::process_vm::{self, RemoteAddr};
use crate::ptrace::{self, Seized, Stop, PTRACE_EVENT_STOP};
use crate::regs::{self, GpRegs, SyscallStop};

mod batch;

pub use batch::{Answer, Arg, BatchArea, Call, Ran};

/// How long each wait for a stop of the tracee may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `syscall` instruction.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
/// Its length: `rip` after the syscall is the site plus this.
const SYSCALL_INSN_LEN: u64 = SYSCALL_INSN.len() as u64;
/// How many unrelated stops (group stops, intercepted SIGSTOPs) one step
/// tolerates before giving up.
const MAX_STRAY_STOPS: usize = 16;
/// Size of the scratch page the convenience wrappers use.
const SCRATCH_PAGE: usize = 4096;

/// Flags of a thread created by [`Injection::clone_thread`]: those of
/// glibc's `pthread_create` minus the TLS and tid bookkeeping (set later
/// from the image), plus `CLONE_PTRACE` so that the new thread is traced
/// by us and stops before running user code even without
/// `PTRACE_O_TRACECLONE` (kernel/fork.c `copy_process` →
/// `ptrace_init_task`).
const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_PTRACE) as u64;

/// Errors of syscall injection. Each names the thread.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /proc/PID/maps could not be read.
    #[error("cannot read /proc/{pid}/maps")]
    Maps {
        /// The process.
        pid: Pid,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// The process has no `[vdso]` mapping.
    #[error("process {pid} has no [vdso] mapping")]
    NoVdso {
        /// The process.
        pid: Pid,
    },
    /// The vdso holds no `syscall` instruction.
    #[error("the vdso of process {pid} holds no syscall instruction")]
    NoSyscallSite {
        /// The process.
        pid: Pid,
    },
    /// The thread is not in the `PTRACE_EVENT_STOP` an injection starts
    /// from.
    #[error("thread {tid} is not stopped by PTRACE_INTERRUPT (stop: {stop:?})")]
    NotInterrupted {
        /// The thread.
        tid: Pid,
        /// Its stop, `None` while it runs.
        stop: Option<Stop>,
    },
    /// Reading or writing the thread's registers or signal state failed.
    #[error(transparent)]
    Regs(#[from] regs::Error),
    /// A ptrace request or wait failed.
    #[error(transparent)]
    Ptrace(ptrace::Error),
    /// The thread ended during the injection.
    #[error("thread {tid} ended during syscall injection: {status:?}")]
    Died {
        /// The thread.
        tid: Pid,
        /// How it ended.
        status: WaitStatus,
    },
    /// The thread did not enter the injected syscall at the site.
    #[error(
        "thread {tid} entered syscall {entered} at {rip:#x} instead of syscall {nr} at {site} + 2: not a syscall site?"
    )]
    WrongSite {
        /// The thread.
        tid: Pid,
        /// The site used.
        site: RemoteAddr,
        /// The syscall injected.
        nr: i64,
        /// The syscall the thread entered.
        entered: i64,
        /// Where it entered it.
        rip: u64,
    },
    /// The thread reported a stop that has no place in the injection.
    #[error("thread {tid} reported {stop:?} during injected syscall {nr}")]
    UnexpectedStop {
        /// The thread.
        tid: Pid,
        /// The syscall injected.
        nr: i64,
        /// The stop.
        stop: Stop,
    },
    /// The thread received a signal (a fault: all others are blocked)
    /// while running an injected syscall. The signal was suppressed.
    #[error("thread {tid} received {signal} while running injected syscall {nr}")]
    Signal {
        /// The thread.
        tid: Pid,
        /// The syscall injected.
        nr: i64,
        /// The signal.
        signal: Signal,
    },
    /// An injected syscall returned an error.
    #[error("injected syscall {nr} failed in thread {tid}")]
    Failed {
        /// The thread.
        tid: Pid,
        /// The syscall.
        nr: i64,
        /// The error it returned.
        #[source]
        errno: Errno,
    },
    /// An earlier error left the injection in a state it cannot inject
    /// from; only [`Injection::finish`] is possible.
    #[error("syscall injection into thread {tid} is in an unusable state after an earlier error")]
    Unusable {
        /// The thread.
        tid: Pid,
    },
    /// Copying to or from tracee memory failed.
    #[error(transparent)]
    Memory(#[from] process_vm::Error),
    /// An access outside a scratch mapping.
    #[error("{len} bytes at offset {offset} exceed the {size}-byte scratch mapping at {addr}")]
    ScratchBounds {
        /// The mapping.
        addr: RemoteAddr,
        /// Its size.
        size: usize,
        /// The offset asked for.
        offset: usize,
        /// The length asked for.
        len: usize,
    },
    /// clone3 created a thread at a tid other than the requested one.
    #[error("clone3 in thread {tid} was asked for tid {requested} but created {created}")]
    WrongTid {
        /// The injecting thread.
        tid: Pid,
        /// The tid asked for.
        requested: Pid,
        /// The tid created.
        created: Pid,
    },
    /// The new thread did not report the stop the kernel owes it.
    #[error("new thread {tid} reported {stop:?} instead of its initial PTRACE_EVENT_STOP")]
    NewThreadStop {
        /// The new thread.
        tid: Pid,
        /// What it reported.
        stop: Stop,
    },
    /// A signal intercepted during the injection could not be sent again.
    #[error("cannot send thread {tid} the {signal} intercepted during injection")]
    Resignal {
        /// The thread.
        tid: Pid,
        /// The signal.
        signal: Signal,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// The code of a batch could not be written into the thread's memory.
    #[error("cannot write the code of a batch of system calls into thread {tid} (/proc/{tid}/mem)")]
    WriteCode {
        /// The thread.
        tid: Pid,
        /// The write error.
        #[source]
        source: io::Error,
    },
    /// An operation failed and so did putting the thread back.
    #[error("{error}; putting thread {tid} back failed too: {rollback}")]
    Rollback {
        /// The thread.
        tid: Pid,
        /// The first error.
        error: Box<Error>,
        /// The error of the rollback.
        rollback: Box<Error>,
    },
}

/// Finds a `syscall` instruction in the `[vdso]` of process `pid`: the
/// vdso's fallback paths (`clock_gettime` and friends) contain several.
///
/// Any two bytes `0f 05` serve, even inside a longer instruction: the
/// CPU decodes from `rip`.
pub fn find_syscall_site(pid: Pid) -> Result<RemoteAddr, Error> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|source| Error::Maps { pid, source })?;
    let Some((start, end)) = vdso_range(&maps) else {
        // A process that unmapped its [vdso]: any `syscall` in its code.
        return executable_site(pid, &maps).ok_or(Error::NoVdso { pid });
    };
    let mut vdso = vec![0u8; (end - start) as usize];
    process_vm::read_exact(pid, RemoteAddr(start), &mut vdso)?;
    vdso.windows(SYSCALL_INSN.len())
        .position(|w| w == SYSCALL_INSN)
        .map(|off| RemoteAddr(start + off as u64))
        .ok_or(Error::NoSyscallSite { pid })
}

/// The first `syscall` instruction bytes in an executable mapping of the
/// process (the first 16 MiB of each is looked at).
fn executable_site(pid: Pid, maps: &str) -> Option<RemoteAddr> {
    for line in maps.lines() {
        let mut words = line.split_whitespace();
        let (range, perms) = (words.next()?, words.next()?);
        if !perms.contains('x') {
            continue;
        }
        let (start, end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        let len = (end - start).min(16 << 20) as usize;
        let mut code = vec![0u8; len];
        if process_vm::read_exact(pid, RemoteAddr(start), &mut code).is_err() {
            continue;
        }
        if let Some(off) = code.windows(SYSCALL_INSN.len()).position(|w| w == SYSCALL_INSN) {
            return Some(RemoteAddr(start + off as u64));
        }
    }
    None
}

/// The `[vdso]` range of a /proc/PID/maps text.
fn vdso_range(maps: &str) -> Option<(u64, u64)> {
    let line = maps.lines().find(|l| l.split_whitespace().nth(5) == Some("[vdso]"))?;
    let (start, end) = line.split_whitespace().next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    (end > start).then_some((start, end))
}

/// Where the thread is, as far as the injection is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `PTRACE_EVENT_STOP` inside `get_signal()`.
    EventStop,
    /// Signal-delivery-stop inside `get_signal()`; the signal was taken.
    SignalStop,
    /// Syscall-enter stop.
    Entry,
    /// Syscall-exit stop.
    Exit,
    /// Any other stop (`PTRACE_EVENT_CLONE` inside a syscall, ...).
    OtherEvent,
    /// Resumed, no stop seen yet.
    Running,
}

/// A batch of syscalls injected into one stopped thread. Created by
/// [`Seized::begin_injection`]; [`Injection::finish`] (or, best effort,
/// drop) puts the thread back in its original stop with its original
/// registers and signal mask.
#[derive(Debug)]
pub struct Injection<'a> {
    seized: &'a mut Seized,
    site: RemoteAddr,
    saved: GpRegs,
    saved_sigmask: u64,
    phase: Phase,
    timeout: Duration,
    /// The page the convenience wrappers use, unmapped by `finish`.
    scratch: Option<RemoteScratch>,
    /// A SIGSTOP intercepted during the injection, sent again at the end.
    held_sigstop: bool,
    /// A SIGTRAP sent to the thread while a batch ran, sent again at the
    /// end.
    held_sigtrap: bool,
    /// Whether a SIGTRAP is pending, as the caller read it since the thread
    /// stopped: spares the next batch reading it ([`Injection::batch`]).
    trap_pending: Option<bool>,
    /// `PTRACE_GETEVENTMSG` of the last fork/clone event (the new tid).
    last_event_msg: Option<u64>,
    done: bool,
}

impl Seized {
    /// Starts injecting syscalls through the `syscall` instruction at `site`
    /// (see [`find_syscall_site`]). The thread must be in the
    /// `PTRACE_EVENT_STOP` of [`Seized::interrupt`] and must have been seized
    /// with `PTRACE_O_TRACESYSGOOD`. Saves its registers and signal mask and
    /// blocks all signals until [`Injection::finish`].
    pub fn begin_injection(&mut self, site: RemoteAddr) -> Result<Injection<'_>, Error> {
        let tid = self.pid();
        match self.stop() {
            Some(Stop::Event { event: PTRACE_EVENT_STOP, .. }) => {}
            stop => return Err(Error::NotInterrupted { tid, stop }),
        }
        let saved = self.get_regs()?;
        let saved_sigmask = self.get_sigmask()?;
        self.set_sigmask(!0)?;
        Ok(Injection {
            seized: self,
            site,
            saved,
            saved_sigmask,
            phase: Phase::EventStop,
            timeout: DEFAULT_TIMEOUT,
            scratch: None,
            held_sigstop: false,
            held_sigtrap: false,
            trap_pending: None,
            last_event_msg: None,
            done: false,
        })
    }
}

/// Injects one syscall into `seized` (see [`Seized::begin_injection`]) and
/// puts the thread back. Returns the raw result: -errno on failure.
pub fn inject_syscall(seized: &mut Seized, site: RemoteAddr, nr: i64, args: [u64; 6]) -> Result<i64, Error> {
    let tid = seized.pid();
    let mut injection = seized.begin_injection(site)?;
    let result = injection.syscall(nr, args);
    let finished = injection.finish();
    match (result, finished) {
        (Ok(ret), Ok(())) => Ok(ret),
        (Err(error), Ok(())) | (Ok(_), Err(error)) => Err(error),
        (Err(error), Err(rollback)) => {
            Err(Error::Rollback { tid, error: Box::new(error), rollback: Box::new(rollback) })
        }
    }
}

impl Injection<'_> {
    /// The thread.
    pub fn tid(&self) -> Pid {
        self.seized.pid()
    }

    /// The thread as seized (for ptrace requests between the calls).
    pub fn tracee(&self) -> &Seized {
        self.seized
    }

    /// The syscall site in use.
    pub fn site(&self) -> RemoteAddr {
        self.site
    }

    /// The registers the thread had before the injection, which `finish`
    /// restores.
    pub fn saved_regs(&self) -> &GpRegs {
        &self.saved
    }

    /// The signal mask the thread had before the injection.
    pub fn saved_sigmask(&self) -> u64 {
        self.saved_sigmask
    }

    /// Sets how long each wait for a stop may take.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// `PTRACE_GETEVENTMSG` of the last fork/clone event seen during an
    /// injected syscall: the new task's tid.
    pub fn last_event_message(&self) -> Option<u64> {
        self.last_event_msg
    }

    fn ptrace_err(&self, err: ptrace::Error) -> Error {
        match err {
            ptrace::Error::Gone { status, .. } => Error::Died { tid: self.tid(), status },
            other => Error::Ptrace(other),
        }
    }

    fn resume_syscall(&mut self) -> Result<(), Error> {
        self.seized.resume_to_syscall().map_err(|e| self.ptrace_err(e))?;
        self.phase = Phase::Running;
        Ok(())
    }

    /// Waits for the next stop and classifies it.
    fn wait(&mut self) -> Result<Stop, Error> {
        let stop = self.seized.wait_stop(self.timeout).map_err(|e| self.ptrace_err(e))?;
        self.phase = match stop {
            Stop::Event { event: PTRACE_EVENT_STOP, .. } => Phase::EventStop,
            Stop::Event { .. } => Phase::OtherEvent,
            Stop::Signal(_) => Phase::SignalStop,
            Stop::Syscall => match self.seized.syscall_stop()? {
                SyscallStop::Entry { .. } => Phase::Entry,
                SyscallStop::Exit { .. } => Phase::Exit,
                SyscallStop::None | SyscallStop::Seccomp => Phase::OtherEvent,
            },
        };
        Ok(stop)
    }

    /// Takes the signal of a signal-delivery-stop so that it is suppressed,
    /// remembering a SIGSTOP for later. Returns any other signal.
    fn take_signal(&mut self) -> Option<Signal> {
        match self.seized.take_pending_signal() {
            Some(Signal::SIGSTOP) => {
                self.held_sigstop = true;
                None
            }
            other => other,
        }
    }

    /// Runs syscall `nr` with `args` in the thread; returns the raw result
    /// (-errno on failure).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, Error> {
        let tid = self.tid();
        if !matches!(self.phase, Phase::EventStop | Phase::Exit | Phase::SignalStop) {
            return Err(Error::Unusable { tid });
        }
        let mut regs = self.saved;
        let r = &mut regs.0;
        r.rip = self.site.0;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9] = args;
        self.seized.set_regs(&regs)?;

        // To the syscall-enter stop at the site.
        self.resume_syscall()?;
        let mut stray = 0;
        loop {
            let stop = self.wait()?;
            match self.phase {
                Phase::Entry => break,
                Phase::SignalStop => {
                    if let Some(signal) = self.take_signal() {
                        return Err(Error::Signal { tid, nr, signal });
                    }
                }
                // A group stop (a SIGSTOP to another thread) in get_signal.
                Phase::EventStop => {}
                _ => return Err(Error::UnexpectedStop { tid, nr, stop }),
            }
            stray += 1;
            if stray > MAX_STRAY_STOPS {
                return Err(Error::UnexpectedStop { tid, nr, stop });
            }
            self.resume_syscall()?;
        }
        let at = self.seized.get_regs()?.0;
        if at.rip != self.site.0 + SYSCALL_INSN_LEN || at.orig_rax != nr as u64 {
            return Err(Error::WrongSite { tid, site: self.site, nr, entered: at.orig_rax as i64, rip: at.rip });
        }

        // To the syscall-exit stop, through fork/clone events.
        self.resume_syscall()?;
        loop {
            let stop = self.wait()?;
            match (self.phase, stop) {
                (Phase::Exit, _) => break,
                (
                    Phase::OtherEvent,
                    Stop::Event {
                        event: libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK,
                        ..
                    },
                ) => {
                    let msg = nix_ptrace::getevent(tid).map_err(|errno| Error::Failed { tid, nr, errno })?;
                    self.last_event_msg = Some(msg as u64);
                }
                _ => return Err(Error::UnexpectedStop { tid, nr, stop }),
            }
            self.resume_syscall()?;
        }
        Ok(self.seized.get_regs()?.0.rax as i64)
    }

    /// Like [`Injection::syscall`], with a negative result turned into
    /// [`Error::Failed`].
    pub fn syscall_ok(&mut self, nr: i64, args: [u64; 6]) -> Result<u64, Error> {
        let ret = self.syscall(nr, args)?;
        if (-4095..0).contains(&ret) {
            return Err(Error::Failed { tid: self.tid(), nr, errno: Errno::from_raw(-ret as i32) });
        }
        Ok(ret as u64)
    }

    /// Maps `len` bytes (rounded up to pages) of private anonymous
    /// read-write memory in the tracee by injecting mmap(2). The caller
    /// unmaps it with [`RemoteScratch::unmap`].
    pub fn map_scratch(&mut self, len: usize) -> Result<RemoteScratch, Error> {
        let page = crate::mman::page_size();
        let len = len.max(1).div_ceil(page) * page;
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let addr = self.syscall_ok(libc::SYS_mmap, [0, len as u64, prot, flags, u64::MAX, 0])?;
        Ok(RemoteScratch { pid: self.tid(), addr: RemoteAddr(addr), len })
    }

    /// The scratch page of the convenience wrappers, mapped on first use
    /// and unmapped by `finish`.
    pub fn scratch(&mut self) -> Result<&RemoteScratch, Error> {
        if self.scratch.is_none() {
            self.scratch = Some(self.map_scratch(SCRATCH_PAGE)?);
        }
        Ok(self.scratch.as_ref().expect("mapped above"))
    }

    /// Creates a thread in the tracee's thread group at `tid` by injecting
    /// clone3 with `set_tid`, and returns it seized and stopped in its
    /// initial `PTRACE_EVENT_STOP`, before it ran any user code.
    ///
    /// The new thread starts with a copy of this thread's injection
    /// registers (`rip` = site + 2, `rax` = 0, `rsp` = the top of `stack`
    /// if given, else this thread's) and this thread's original signal
    /// mask; set its registers before resuming it. `stack` is
    /// `(lowest address, size)`. Needs CAP_CHECKPOINT_RESTORE in the
    /// tracee; a taken tid is [`Error::Failed`] with EEXIST.
    pub fn clone_thread(&mut self, tid: Pid, stack: Option<(RemoteAddr, u64)>) -> Result<Seized, Error> {
        // exit_signal must be 0 with CLONE_THREAD.
        self.clone_task(THREAD_FLAGS, 0, tid, stack)
    }

    /// Creates a child process of the tracee at `pid` by injecting clone3
    /// with `set_tid` (a fork: a copy of the tracee's memory, fds and signal
    /// handlers), and returns it seized and stopped in its initial
    /// `PTRACE_EVENT_STOP`, before it ran any user code. Its parent gets
    /// `exit_signal` when it exits. Registers and signal mask are as for
    /// [`Injection::clone_thread`].
    pub fn clone_process(&mut self, pid: Pid, exit_signal: i32) -> Result<Seized, Error> {
        self.clone_task(libc::CLONE_PTRACE as u64, exit_signal as u64, pid, None)
    }

    /// [`Injection::clone_process`], the child sharing the tracee's fd
    /// table (CLONE_FILES) instead of getting a copy of it.
    pub fn clone_process_sharing_files(&mut self, pid: Pid, exit_signal: i32) -> Result<Seized, Error> {
        self.clone_task((libc::CLONE_PTRACE | libc::CLONE_FILES) as u64, exit_signal as u64, pid, None)
    }

    fn clone_task(
        &mut self,
        flags: u64,
        exit_signal: u64,
        tid: Pid,
        stack: Option<(RemoteAddr, u64)>,
    ) -> Result<Seized, Error> {
        let me = self.tid();
        let base = self.scratch()?.addr().0;
        let set_tid_offset = 128;
        let (stack_addr, stack_size) = stack.map_or((0, 0), |(addr, size)| (addr.0, size));
        // struct clone_args (include/uapi/linux/sched.h), CLONE_ARGS_SIZE_VER2.
        let args: [u64; 11] = [
            flags,
            0, // pidfd
            0, // child_tid
            0, // parent_tid
            exit_signal,
            stack_addr,
            stack_size,
            0, // tls: set later with the registers (fs_base)
            base + set_tid_offset as u64,
            1, // set_tid_size
            0, // cgroup
        ];
        let bytes: Vec<u8> = args.iter().flat_map(|v| v.to_le_bytes()).collect();
        let scratch = self.scratch()?;
        scratch.write(0, &bytes)?;
        scratch.write(set_tid_offset, &tid.as_raw().to_le_bytes())?;
        self.last_event_msg = None;
        let created = self.syscall_ok(libc::SYS_clone3, [base, bytes.len() as u64, 0, 0, 0, 0])?;
        let created = Pid::from_raw(created as libc::pid_t);
        if created != tid {
            return Err(Error::WrongTid { tid: me, requested: tid, created });
        }
        // clone3 returned the tid in the tracee's PID namespace; the clone
        // event tells it in ours (they differ when the tracee is in a child
        // namespace).
        let created = self.last_event_msg.map_or(created, |msg| Pid::from_raw(msg as libc::pid_t));
        let thread = Seized::adopt_auto_attached(created, self.timeout).map_err(|e| match e {
            ptrace::Error::Gone { status, .. } => Error::Died { tid: created, status },
            other => Error::Ptrace(other),
        })?;
        match thread.stop() {
            Some(Stop::Event { event: PTRACE_EVENT_STOP, .. }) => {}
            Some(stop) => return Err(Error::NewThreadStop { tid: created, stop }),
            None => unreachable!("adopt_auto_attached returns a stopped thread"),
        }
        thread.set_sigmask(self.saved_sigmask)?;
        Ok(thread)
    }

    /// Unmaps the scratch page and puts the thread back in its original
    /// `PTRACE_EVENT_STOP` with its original registers and signal mask.
    pub fn finish(mut self) -> Result<(), Error> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Result<(), Error> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let unmapped = match self.scratch.take() {
            Some(scratch) => scratch.unmap(self),
            None => Ok(()),
        };
        let restored = self.restore();
        match (unmapped, restored) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(error), Ok(())) | (Ok(()), Err(error)) => Err(error),
            (Err(error), Err(rollback)) => {
                Err(Error::Rollback { tid: self.tid(), error: Box::new(error), rollback: Box::new(rollback) })
            }
        }
    }

    /// Steers the thread from wherever the injection left it back into a
    /// `PTRACE_EVENT_STOP` in `get_signal()` and writes the saved state.
    fn restore(&mut self) -> Result<(), Error> {
        let tid = self.tid();
        for _ in 0..MAX_STRAY_STOPS {
            match self.phase {
                Phase::EventStop => {
                    self.seized.set_regs(&self.saved)?;
                    self.seized.set_sigmask(self.saved_sigmask)?;
                    if std::mem::take(&mut self.held_sigstop) {
                        // Queued while the thread is stopped; it will take
                        // its delivery-stop (or group stop) when resumed.
                        nix::sys::signal::kill(tid, Signal::SIGSTOP).map_err(|errno| Error::Resignal {
                            tid,
                            signal: Signal::SIGSTOP,
                            errno,
                        })?;
                    }
                    if std::mem::take(&mut self.held_sigtrap) {
                        resend(tid, Signal::SIGTRAP).map_err(|errno| Error::Resignal {
                            tid,
                            signal: Signal::SIGTRAP,
                            errno,
                        })?;
                    }
                    return Ok(());
                }
                Phase::Running => {
                    // An injected syscall outlived the timeout: interrupt
                    // it; it stops at its syscall-exit (with -EINTR or a
                    // restart code) or in get_signal.
                    self.seized.interrupt(self.timeout).map_err(|e| self.ptrace_err(e))?;
                    self.classify_current()?;
                }
                Phase::Entry => {
                    // Skip the entered syscall: orig_rax = -1 makes the
                    // kernel return -ENOSYS without running it.
                    let mut regs = self.seized.get_regs()?;
                    regs.0.orig_rax = u64::MAX;
                    self.seized.set_regs(&regs)?;
                    self.resume_syscall()?;
                    self.wait()?;
                }
                Phase::OtherEvent => {
                    self.resume_syscall()?;
                    self.wait()?;
                }
                Phase::Exit | Phase::SignalStop => {
                    // A signal taken here is a fault of ours: suppress it.
                    let _ = self.take_signal();
                    self.seized.interrupt_after_resume().map_err(|e| self.ptrace_err(e))?;
                    self.seized.resume().map_err(|e| self.ptrace_err(e))?;
                    self.phase = Phase::Running;
                    self.wait()?;
                }
            }
        }
        Err(Error::Unusable { tid })
    }

    /// Sets `phase` from the stop `Seized` last recorded.
    fn classify_current(&mut self) -> Result<(), Error> {
        self.phase = match self.seized.stop() {
            None => Phase::Running,
            Some(Stop::Event { event: PTRACE_EVENT_STOP, .. }) => Phase::EventStop,
            Some(Stop::Event { .. }) => Phase::OtherEvent,
            Some(Stop::Signal(_)) => Phase::SignalStop,
            Some(Stop::Syscall) => match self.seized.syscall_stop()? {
                SyscallStop::Entry { .. } => Phase::Entry,
                SyscallStop::Exit { .. } => Phase::Exit,
                SyscallStop::None | SyscallStop::Seccomp => Phase::OtherEvent,
            },
        };
        Ok(())
    }
}

impl Drop for Injection<'_> {
    fn drop(&mut self) {
        let _ = self.finish_inner();
    }
}

/// `tgkill(tgid, tid, signal)`: `signal` to this thread only.
fn resend(tid: Pid, signal: Signal) -> Result<(), Errno> {
    let tgid = std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Tgid:").and_then(|v| v.trim().parse::<i32>().ok())))
        .ok_or(Errno::ESRCH)?;
    // SAFETY: tgkill takes three integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid.as_raw(), signal as i32) };
    Errno::result(ret).map(drop)
}

/// Anonymous memory mapped inside a tracee by an injected mmap(2), for
/// syscall arguments and results.
///
/// Unmapping needs an injection, so it is explicit
/// ([`RemoteScratch::unmap`]); a scratch mapping dropped without it stays
/// in the tracee.
#[derive(Debug)]
pub struct RemoteScratch {
    pid: Pid,
    addr: RemoteAddr,
    len: usize,
}

impl RemoteScratch {
    /// The start of the mapping in the tracee.
    pub fn addr(&self) -> RemoteAddr {
        self.addr
    }

    /// Its length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, len: usize) -> Result<RemoteAddr, Error> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::ScratchBounds { addr: self.addr, size: self.len, offset, len });
        }
        Ok(RemoteAddr(self.addr.0 + offset as u64))
    }

    /// Writes `data` at `offset` (process_vm_writev).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), Error> {
        let at = self.check(offset, data.len())?;
        Ok(process_vm::write_exact(self.pid, at, data)?)
    }

    /// Reads `buf.len()` bytes at `offset` (process_vm_readv).
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        let at = self.check(offset, buf.len())?;
        Ok(process_vm::read_exact(self.pid, at, buf)?)
    }

    /// Unmaps the memory by injecting munmap(2) through `injection`.
    pub fn unmap(self, injection: &mut Injection<'_>) -> Result<(), Error> {
        injection.syscall_ok(libc::SYS_munmap, [self.addr.0, self.len as u64, 0, 0, 0, 0]).map(drop)
    }
}

/// Children for the tests of this module and of [`crate::regs`]: forked
/// processes that set up one piece of state with raw syscalls and block.
#[cfg(test)]
pub(crate) mod test_support {
    use std::thread;
    use std::time::{Duration, Instant};

    use nix::unistd::Pid;

    use crate::child::{exit_now, Child};

    /// Forks a child that runs `body` and `_exit`s with its result.
    ///
    /// # Safety
    ///
    /// `body` runs in the child of a multi-threaded process (the test
    /// harness): it may make only async-signal-safe calls and must not
    /// allocate (signal-safety(7)).
    pub(crate) unsafe fn fork_child<F: FnOnce() -> i32>(body: F) -> Child {
        // SAFETY: the child branch runs only `body`, async-signal-safe by
        // this function's contract, then `_exit`s without returning into
        // code that assumes the parent's threads exist.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => panic!("fork failed: {}", nix::errno::Errno::last()),
            0 => exit_now(body()),
            pid => Child::from_pid(Pid::from_raw(pid)),
        }
    }

    /// Raw syscall for the children; returns the kernel's value
    /// (-errno on failure), not libc's -1/errno.
    ///
    /// # Safety
    ///
    /// The arguments must be valid for syscall `nr`.
    pub(crate) unsafe fn raw(nr: i64, a: u64, b: u64, c: u64, d: u64) -> i64 {
        let ret: i64;
        // SAFETY: forwarded from this function's contract; the asm
        // clobbers only what the syscall ABI says (rcx, r11, rax).
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") nr => ret,
                in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d,
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// Waits until `child` blocks in syscall `nr` (per /proc/PID/syscall),
    /// failing with its exit status if it ends first.
    pub(crate) fn wait_blocked_in(child: &mut Child, nr: i64) {
        let pid = child.pid();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait().expect("waitid") {
                panic!("child {pid} ended during its setup: {status:?}");
            }
            let sys = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            let state = crate::ptrace::task_state(pid).unwrap_or('?');
            if state == 'S' && sys.split_whitespace().next() == Some(&nr.to_string()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "child {pid} never blocked in syscall {nr} (state {state}, syscall {sys:?})"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::Path;
    use std::thread;
    use std::time::Instant;

    use super::test_support::{fork_child, raw, wait_blocked_in};
    use super::*;
    use crate::child::{spawn, Child, ChildAction};
    use crate::ptrace::Options;

    const ERESTARTSYS: i64 = 512;
    const ERESTARTNOHAND: i64 = 514;
    const ERESTART_RESTARTBLOCK: i64 = 516;

    fn seize_and_interrupt(pid: Pid, extra: Options) -> Seized {
        let options = Options::PTRACE_O_TRACESYSGOOD | Options::PTRACE_O_EXITKILL | extra;
        let mut seized = Seized::seize(pid, options).expect("PTRACE_SEIZE of our own child");
        let stop = seized.interrupt(DEFAULT_TIMEOUT).expect("PTRACE_INTERRUPT");
        assert!(matches!(stop, Stop::Event { event: PTRACE_EVENT_STOP, .. }), "not an event stop: {stop:?}");
        seized
    }

    fn maps_has(pid: Pid, addr: RemoteAddr) -> bool {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        maps.lines().any(|l| l.starts_with(&format!("{:x}-", addr.0)))
    }

    /// Injects getpid and a scratch mmap/write/read/munmap, then finishes,
    /// checking the thread is back with exactly its registers.
    fn inject_a_batch(seized: &mut Seized, pid: Pid) -> GpRegs {
        let site = find_syscall_site(pid).expect("syscall site in the vdso");
        let mut inj = seized.begin_injection(site).expect("begin injection");
        let saved = *inj.saved_regs();
        assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).expect("inject getpid"), i64::from(pid.as_raw()));
        let scratch = inj.map_scratch(10_000).expect("remote mmap");
        assert_eq!(scratch.len(), 12_288);
        assert!(maps_has(pid, scratch.addr()), "scratch mapping {} not in /proc/{pid}/maps", scratch.addr());
        let pattern: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        scratch.write(100, &pattern).expect("write scratch");
        let mut back = vec![0u8; pattern.len()];
        scratch.read(100, &mut back).expect("read scratch");
        assert_eq!(back, pattern);
        assert!(matches!(scratch.write(12_000, &[0; 300]), Err(Error::ScratchBounds { .. })));
        let addr = scratch.addr();
        scratch.unmap(&mut inj).expect("remote munmap");
        assert!(!maps_has(pid, addr), "scratch mapping {addr} still mapped after munmap");
        inj.finish().expect("finish injection");
        assert!(matches!(seized.stop(), Some(Stop::Event { event: PTRACE_EVENT_STOP, .. })), "{:?}", seized.stop());
        assert_eq!(seized.get_regs().unwrap(), saved, "registers differ after finish");
        saved
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe().expect("pipe")
    }

    #[test]
    fn vdso_range_parses_maps() {
        let maps = "7ffd1000-7ffd3000 rw-p 00000000 00:00 0                          [stack]\n\
                    7ffd5000-7ffd7000 r-xp 00000000 00:00 0                          [vdso]\n";
        assert_eq!(vdso_range(maps), Some((0x7ffd5000, 0x7ffd7000)));
        assert_eq!(vdso_range("1000-2000 r-xp 00000000 00:00 0 /bin/x\n"), None);
    }

    /// A child blocked in read() on an empty pipe: after a batch of
    /// injections and a plain resume, its read() must still return our byte, not
    /// EINTR and not the raw -ERESTARTSYS.
    #[test]
    fn a_read_interrupted_for_injection_completes() {
        let (rfd, wfd) = pipe();
        let fd = rfd.as_raw_fd();
        let body = move || {
            let mut byte = 0u8;
            // SAFETY: `byte` is a live 1-byte buffer.
            let ret = unsafe { raw(libc::SYS_read, fd as u64, (&raw mut byte) as u64, 1, 0) };
            match (ret, byte) {
                (1, b'x') => 0,
                (1, _) => 5,
                (0, _) => 6,
                (-4, _) => 2,   // EINTR
                (-512, _) => 3, // ERESTARTSYS leaked to user space
                _ => 4,
            }
        };
        // SAFETY: the body makes raw syscalls only, on its own stack.
        let mut child = unsafe { fork_child(body) };
        drop(rfd);
        let pid = child.pid();
        wait_blocked_in(&mut child, libc::SYS_read);
        let mut seized = seize_and_interrupt(pid, Options::empty());
        let saved = inject_a_batch(&mut seized, pid);
        assert_eq!(saved.0.orig_rax, libc::SYS_read as u64, "not interrupted inside read: {saved:?}");
        assert_eq!(saved.0.rax as i64, -ERESTARTSYS, "read was not interrupted with -ERESTARTSYS: {saved:?}");
        // PTRACE_CONT rather than detach: PTRACE_DETACH kicks the tracee
        // with TIF_SIGPENDING (kernel/ptrace.c `__ptrace_unlink`), which
        // would hide a thread left in a syscall-exit stop; PTRACE_CONT
        // does not.
        seized.resume().expect("PTRACE_CONT");
        wait_blocked_in(&mut child, libc::SYS_read);
        nix::unistd::write(&wfd, b"x").expect("write to the pipe");
        let status = child.wait_timeout(DEFAULT_TIMEOUT).expect("child did not exit after its read");
        let meaning = match status {
            WaitStatus::Exited(_, 0) => return,
            WaitStatus::Exited(_, 2) => "read() returned EINTR",
            WaitStatus::Exited(_, 3) => "read() returned -ERESTARTSYS",
            WaitStatus::Exited(_, 5) => "read() returned another byte",
            WaitStatus::Exited(_, 6) => "read() returned EOF",
            _ => "read() failed otherwise or the child crashed",
        };
        panic!("{meaning}: {status:?}");
    }

    /// A child in nanosleep(300 ms): the kernel restarts it through
    /// restart_syscall (-ERESTART_RESTARTBLOCK); it must return 0, and not
    /// before its deadline.
    #[test]
    fn a_nanosleep_interrupted_for_injection_completes() {
        let body = || {
            let mut t0 = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            let mut t1 = t0;
            let req = libc::timespec { tv_sec: 0, tv_nsec: 300_000_000 };
            let now = |t: &mut libc::timespec| {
                // SAFETY: `t` is a live timespec for clock_gettime to fill.
                unsafe {
                    raw(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC as u64, (t as *mut libc::timespec) as u64, 0, 0)
                }
            };
            now(&mut t0);
            // SAFETY: `req` is a live timespec nanosleep reads; no `rem`.
            let ret = unsafe { raw(libc::SYS_nanosleep, (&raw const req) as u64, 0, 0, 0) };
            now(&mut t1);
            let elapsed_ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1_000_000;
            match ret {
                0 if elapsed_ms >= 300 => 0,
                0 => 1,
                -4 => 2,
                -516 => 3,
                _ => 4,
            }
        };
        // SAFETY: the body makes raw syscalls only, on its own stack.
        let mut child = unsafe { fork_child(body) };
        let pid = child.pid();
        wait_blocked_in(&mut child, libc::SYS_nanosleep);
        let mut seized = seize_and_interrupt(pid, Options::empty());
        let saved = inject_a_batch(&mut seized, pid);
        assert_eq!(saved.0.orig_rax, libc::SYS_nanosleep as u64, "not interrupted inside nanosleep: {saved:?}");
        assert_eq!(saved.0.rax as i64, -ERESTART_RESTARTBLOCK, "nanosleep not interrupted with -ERESTART_RESTARTBLOCK");
        seized.detach().expect("detach");
        let status = child.wait_timeout(DEFAULT_TIMEOUT).expect("child did not exit after its sleep");
        let meaning = match status {
            WaitStatus::Exited(_, 0) => return,
            WaitStatus::Exited(_, 1) => "nanosleep() returned 0 before its 300 ms",
            WaitStatus::Exited(_, 2) => "nanosleep() returned EINTR",
            WaitStatus::Exited(_, 3) => "nanosleep() returned -ERESTART_RESTARTBLOCK",
            _ => "nanosleep() failed otherwise or the child crashed",
        };
        panic!("{meaning}: {status:?}");
    }

    /// A one-shot injection on a pausing child, which must go back to
    /// pause(2) (restarted after -ERESTARTNOHAND) afterwards.
    #[test]
    fn inject_syscall_one_shot_and_pause_restarts() {
        let mut child = spawn(ChildAction::Pause).expect("fork");
        let pid = child.pid();
        wait_blocked_in(&mut child, libc::SYS_pause);
        let mut seized = seize_and_interrupt(pid, Options::empty());
        let before = seized.get_regs().unwrap();
        assert_eq!(before.0.rax as i64, -ERESTARTNOHAND);
        let site = find_syscall_site(pid).unwrap();
        let ret = inject_syscall(&mut seized, site, libc::SYS_getppid, [0; 6]).expect("inject getppid");
        assert_eq!(ret, i64::from(nix::unistd::getpid().as_raw()));
        // A failing syscall returns -errno.
        let ret = inject_syscall(&mut seized, site, libc::SYS_close, [9999, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(ret, -i64::from(libc::EBADF));
        assert_eq!(seized.get_regs().unwrap(), before);
        seized.detach().expect("detach");
        wait_blocked_in(&mut child, libc::SYS_pause);
    }

    /// A site that is not a syscall instruction: the fault is reported and
    /// the thread is put back intact.
    #[test]
    fn a_bad_site_is_an_error_and_rolls_back() {
        let mut child = spawn(ChildAction::Pause).expect("fork");
        let pid = child.pid();
        wait_blocked_in(&mut child, libc::SYS_pause);
        let mut seized = seize_and_interrupt(pid, Options::empty());
        let before = seized.get_regs().unwrap();
        let mask = seized.get_sigmask().unwrap();
        let err = inject_syscall(&mut seized, RemoteAddr(0x1000), libc::SYS_getpid, [0; 6]).unwrap_err();
        assert!(matches!(err, Error::Signal { signal: Signal::SIGSEGV, .. }), "{err:?}");
        assert_eq!(seized.get_regs().unwrap(), before);
        assert_eq!(seized.get_sigmask().unwrap(), mask);
        seized.detach().expect("detach");
        wait_blocked_in(&mut child, libc::SYS_pause);
    }

    /// Signals sent during an injection are neither delivered nor lost:
    /// SIGTERM stays queued until the thread runs on; a SIGSTOP that the
    /// injection intercepts is sent again.
    #[test]
    fn signals_sent_during_an_injection_wait_for_its_end() {
        let mut child = spawn(ChildAction::Pause).expect("fork");
        let pid = child.pid();
        wait_blocked_in(&mut child, libc::SYS_pause);
        let mut seized = seize_and_interrupt(pid, Options::empty());
        let site = find_syscall_site(pid).unwrap();
        let mut inj = seized.begin_injection(site).unwrap();
        assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), i64::from(pid.as_raw()));
        nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
        nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
        assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), i64::from(pid.as_raw()));
        assert!(inj.held_sigstop, "SIGSTOP was not intercepted");
        // Dropping without finish() still puts the thread back.
        let saved = *inj.saved_regs();
        drop(inj);
        assert_eq!(seized.get_regs().unwrap(), saved);
        let queued: Vec<i32> = seized.peek_siginfo(true).unwrap().iter().map(|s| s.signo()).collect();
        assert_eq!(queued, [libc::SIGTERM, libc::SIGSTOP], "SIGTERM and the re-sent SIGSTOP should be queued");
        seized.detach().expect("detach");
        // SIGTERM (lower number) is dequeued first and kills the child.
        let status = child.wait_timeout(DEFAULT_TIMEOUT).expect("child did not die of its SIGTERM");
        assert!(matches!(status, WaitStatus::Signaled(_, Signal::SIGTERM, _)), "{status:?}");
    }

    static TID_ADDRESS_TARGET: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

    /// A batch of the calls a dump makes reports what a child set before
    /// stopping.
    #[test]
    fn a_batch_reports_the_childs_settings() {
        const HANDLER: u64 = 0x1000_1000;
        const RESTORER: u64 = 0x1000_2000;
        const FLAGS: u64 = (libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK | SA_RESTORER) as u64;
        // <asm/signal.h>; libc exports it only for some targets.
        const SA_RESTORER: i32 = 0x0400_0000;
        const MASK: u64 = 1 << (libc::SIGUSR2 - 1);
        const ALT_SP: u64 = 0x10_0000_0000;
        const ALT_SIZE: u64 = 0x10000;
        let tid_address = TID_ADDRESS_TARGET.as_ptr() as u64;
        let body = move || {
            let act: [u64; 4] = [HANDLER, FLAGS, RESTORER, MASK];
            let ss: [u64; 3] = [ALT_SP, 0, ALT_SIZE];
            // 7.25 s interval, 100 s to the first expiry.
            let timer: [i64; 4] = [7, 250_000, 100, 0];
            let steps = [
                // SAFETY: `act` is a live 32-byte kernel struct sigaction;
                // no old action is asked for.
                unsafe { raw(libc::SYS_rt_sigaction, libc::SIGUSR1 as u64, act.as_ptr() as u64, 0, 8) },
                // SAFETY: `ss` is a live 24-byte stack_t; the kernel only
                // records ss_sp, it does not touch that memory.
                unsafe { raw(libc::SYS_sigaltstack, ss.as_ptr() as u64, 0, 0, 0) },
                // SAFETY: `timer` is a live 32-byte struct itimerval.
                unsafe { raw(libc::SYS_setitimer, libc::ITIMER_REAL as u64, timer.as_ptr() as u64, 0, 0) },
                // SAFETY: no pointer arguments.
                unsafe { raw(libc::SYS_prctl, libc::PR_SET_PDEATHSIG as u64, libc::SIGWINCH as u64, 0, 0) },
                // SAFETY: no pointer arguments.
                unsafe { raw(libc::SYS_prctl, libc::PR_SET_DUMPABLE as u64, 0, 0, 0) },
                // SAFETY: the kernel only stores the address (and writes 0
                // there at exit, to a static of the right size).
                unsafe { raw(libc::SYS_set_tid_address, tid_address, 0, 0, 0) },
            ];
            if let Some(i) = steps.iter().position(|&r| r < 0) {
                return 10 + i as i32;
            }
            loop {
                // SAFETY: pause takes no arguments.
                unsafe { raw(libc::SYS_pause, 0, 0, 0, 0) };
            }
        };
        // SAFETY: the body makes raw syscalls only, with pointers to its
        // own stack; none of the values it installs is ever used, since
        // nothing signals the child.
        let mut child = unsafe { fork_child(body) };
        let pid = child.pid();
        wait_blocked_in(&mut child, libc::SYS_pause);
        let mut seized = seize_and_interrupt(pid, Options::empty());
        let site = find_syscall_site(pid).unwrap();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let mut inj = seized.begin_injection(site).unwrap();
        let get = |nr: i64, first: i32, len: usize| Call::out(nr, [first as u64, 0, 0, 0, 0, 0], 1, len);
        let calls = [
            Call::out(libc::SYS_rt_sigaction, [libc::SIGUSR1 as u64, 0, 0, 8, 0, 0], 2, 32),
            Call::out(libc::SYS_rt_sigaction, [libc::SIGUSR2 as u64, 0, 0, 8, 0, 0], 2, 32),
            Call::out(libc::SYS_sigaltstack, [0; 6], 1, 24),
            get(libc::SYS_getitimer, libc::ITIMER_REAL, 32),
            get(libc::SYS_getitimer, libc::ITIMER_VIRTUAL, 32),
            get(libc::SYS_prctl, libc::PR_GET_PDEATHSIG, 4),
            Call::new(libc::SYS_prctl, [libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0, 0].map(Arg::Value)),
            get(libc::SYS_prctl, libc::PR_GET_TID_ADDRESS, 8),
        ];
        let (answers, ran) = inj.batch(&calls).expect("batch");
        assert_eq!(ran, Ran::AtOnce);
        for (answer, call) in answers.iter().zip(&calls) {
            answer.ok(pid, call.nr).unwrap_or_else(|e| panic!("syscall {}: {e}", call.nr));
        }
        assert_eq!(answers[0].words(0), [HANDLER, FLAGS, RESTORER, MASK], "SIGUSR1's sigaction");
        assert_eq!(answers[1].words(0)[0], 0, "SIGUSR2 should be SIG_DFL");
        // stack_t: ss_sp, ss_flags (an int, padded), ss_size.
        assert_eq!(answers[2].words(0), [ALT_SP, 0, ALT_SIZE], "sigaltstack");
        // struct itimerval: interval and value, each as seconds and µs.
        let real = answers[3].words(0);
        assert_eq!(real[..2], [7, 250_000], "ITIMER_REAL's interval");
        assert!((90..=100).contains(&real[2]), "ITIMER_REAL's value: {real:?}");
        assert_eq!(answers[4].words(0), [0; 4], "ITIMER_VIRTUAL");
        assert_eq!(answers[5].out[0], libc::SIGWINCH.to_le_bytes(), "PR_GET_PDEATHSIG");
        assert_eq!(answers[6].ret, 0, "PR_GET_DUMPABLE");
        assert_eq!(answers[7].words(0), [tid_address], "PR_GET_TID_ADDRESS");
        inj.finish().expect("finish");
        let after = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert_eq!(after, maps, "the batch left a mapping");
        seized.detach().expect("detach");
        wait_blocked_in(&mut child, libc::SYS_pause);
    }

    fn free_tid() -> Pid {
        let last: i32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").unwrap().trim().parse().unwrap();
        let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        (1..1000)
            .map(|d| (last + 700 + d) % max)
            .find(|&p| p > 300 && !Path::new(&format!("/proc/{p}")).exists())
            .map(Pid::from_raw)
            .expect("no free pid near ns_last_pid")
    }

    /// Reaps a traced thread of a killed process: the tracer must, or the
    /// process's leader never becomes reapable (kernel/exit.c
    /// `exit_notify`, `delay_group_leader`).
    fn reap_thread(tid: Pid) {
        use nix::sys::wait::{waitpid, WaitPidFlag};
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            match waitpid(tid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => return,
                Ok(_) => {}
            }
            assert!(Instant::now() < deadline, "thread {tid} was not reaped");
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn kill_puppet(mut puppet: Child, thread: Pid) {
        puppet.signal(Signal::SIGKILL).unwrap();
        reap_thread(thread);
        let status = puppet.wait_timeout(DEFAULT_TIMEOUT).expect("puppet not reaped");
        assert!(matches!(status, WaitStatus::Signaled(_, Signal::SIGKILL, _)), "{status:?}");
    }

    /// The restore puppet: a self-stopped child driven only by injection
    /// grows a thread at a chosen tid, which arrives stopped.
    #[test]
    fn a_puppet_grows_a_thread_at_a_chosen_tid() {
        let puppet = crate::clone3::spawn_with_tid(&[], ChildAction::StopSelf).expect("clone3");
        let pid = puppet.pid();
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        while ptrace::task_state(pid).unwrap() != 'T' {
            assert!(Instant::now() < deadline, "puppet {pid} did not stop itself");
            thread::sleep(Duration::from_millis(2));
        }
        let mut seized = seize_and_interrupt(pid, Options::PTRACE_O_TRACECLONE);
        let site = find_syscall_site(pid).unwrap();
        let mut inj = seized.begin_injection(site).unwrap();
        assert_eq!(inj.syscall_ok(libc::SYS_getpid, [0; 6]).unwrap(), pid.as_raw() as u64);
        assert_eq!(inj.syscall_ok(libc::SYS_gettid, [0; 6]).unwrap(), pid.as_raw() as u64);
        let stack = inj.map_scratch(64 * 1024).unwrap();
        let (stack_addr, stack_len) = (stack.addr(), stack.len() as u64);

        let mut outcome = None;
        for _ in 0..5 {
            let tid = free_tid();
            match inj.clone_thread(tid, Some((stack_addr, stack_len))) {
                Ok(thread) => {
                    outcome = Some((tid, thread));
                    break;
                }
                // Taken between the check and clone3.
                Err(Error::Failed { errno: Errno::EEXIST, .. }) => continue,
                Err(err) => panic!("clone_thread failed: {err}"),
            }
        }
        let (tid, thread) = outcome.expect("no free tid for clone_thread in 5 tries");
        assert_eq!(inj.last_event_message(), Some(tid.as_raw() as u64), "no PTRACE_EVENT_CLONE with the new tid");
        assert!(Path::new(&format!("/proc/{pid}/task/{tid}")).exists(), "thread {tid} not in /proc/{pid}/task");
        assert_eq!(ptrace::task_state(tid).unwrap(), 't', "thread {tid} is not ptrace-stopped");
        assert!(matches!(thread.stop(), Some(Stop::Event { event: PTRACE_EVENT_STOP, .. })), "{:?}", thread.stop());
        let regs = thread.get_regs().unwrap().0;
        assert_eq!(regs.rip, site.0 + 2, "new thread is not at the syscall site");
        assert_eq!(regs.rax, 0, "clone3 returns 0 in the new thread");
        assert_eq!(regs.rsp, stack_addr.0 + stack_len, "new thread not on its stack");
        assert_eq!(thread.get_sigmask().unwrap(), inj.saved_sigmask());
        // The new thread can be driven too.
        let mut thread = thread;
        let t_site = site;
        assert_eq!(
            inject_syscall(&mut thread, t_site, libc::SYS_gettid, [0; 6]).expect("inject into the new thread"),
            i64::from(tid.as_raw())
        );
        stack.unmap(&mut inj).unwrap();
        inj.finish().expect("finish");
        drop(seized);
        kill_puppet(puppet, tid);
        drop(thread);
    }
}
