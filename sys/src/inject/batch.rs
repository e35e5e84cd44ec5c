//! Many independent system calls injected in one run of the thread.
//!
//! [`Injection::syscall`] costs two ptrace stops, four register transfers
//! and a wait per call: about 80 µs. Reading a process's 62 signal
//! handlers that way was most of a freeze's collect phase. A batch instead
//! copies a short loop into the tracee, with a table of calls, and lets it
//! run them all (`PTRACE_CONT`, no syscall stops) until its final `int3`:
//! one stop for the whole batch, plus the three injected calls that map,
//! protect and unmap its pages.
//!
//! # The loop
//!
//! Each table entry is eight words: the number, six arguments, and the
//! slot the result is stored in. `r12` walks the table, `r13` is its end;
//! the loop touches no other memory and no stack:
//!
//! ```text
//! loop: mov rax, [r12]          ; number
//!       mov rdi, [r12+8]        ; arguments
//!       mov rsi, [r12+16]
//!       mov rdx, [r12+24]
//!       mov r10, [r12+32]
//!       mov r8,  [r12+40]
//!       mov r9,  [r12+48]
//!       syscall
//!       mov [r12+56], rax       ; result
//!       add r12, 64
//!       cmp r12, r13
//!       jb  loop
//!       int3
//! ```
//!
//! # Where it runs
//!
//! One mapping, mapped read + execute (which a memory-deny-write-execute
//! process may map too): the first page holds the loop, written through
//! /proc/TID/mem (which writes through page protections, as debuggers set
//! breakpoints); the rest is made read + write for the table and the
//! buffers the calls fill. It is unmapped before the batch returns, or,
//! made as a [`BatchArea`], serves the batches of every thread of the
//! process until it is unmapped.
//!
//! # The int3
//!
//! `int3` raises SIGTRAP with `force_sig()` (arch/x86/kernel/traps.c
//! `do_int3_user`), and the tracer sees its signal-delivery-stop, where the
//! signal is suppressed. While the loop runs every signal but SIGTRAP is
//! blocked: a forced signal that is blocked or ignored first has its
//! handler reset to SIG_DFL (kernel/signal.c `force_sig_info_to_task`).
//! The loop therefore asks for SIGTRAP's disposition first, and a SIGTRAP
//! the process ignores is set ignored again afterwards. A SIGTRAP pending
//! before the batch would be dequeued by the loop instead of ours: then the
//! calls are injected one by one (as when mapping or writing the loop
//! fails). One that arrives while the loop runs is told from ours by its
//! `si_code` and address, suppressed, and sent again by `finish`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use nix::sys::signal::Signal;

use super::{Error, Injection, Phase, SCRATCH_PAGE};
use crate::process_vm::{self, RemoteAddr};
use crate::ptrace::{Stop, PTRACE_EVENT_STOP};

/// The loop above, assembled.
const LOOP: [u8; 51] = [
    0x49, 0x8b, 0x04, 0x24, // mov rax, [r12]
    0x49, 0x8b, 0x7c, 0x24, 0x08, // mov rdi, [r12+8]
    0x49, 0x8b, 0x74, 0x24, 0x10, // mov rsi, [r12+16]
    0x49, 0x8b, 0x54, 0x24, 0x18, // mov rdx, [r12+24]
    0x4d, 0x8b, 0x54, 0x24, 0x20, // mov r10, [r12+32]
    0x4d, 0x8b, 0x44, 0x24, 0x28, // mov r8, [r12+40]
    0x4d, 0x8b, 0x4c, 0x24, 0x30, // mov r9, [r12+48]
    0x0f, 0x05, // syscall
    0x49, 0x89, 0x44, 0x24, 0x38, // mov [r12+56], rax
    0x49, 0x83, 0xc4, 0x40, // add r12, 64
    0x4d, 0x39, 0xec, // cmp r12, r13
    0x72, 0xce, // jb loop
    0xcc, // int3
];
/// Bytes of one table entry.
const ENTRY: usize = 64;
/// `si_code` of a signal the kernel raised (SI_KERNEL).
const SI_KERNEL: i32 = 0x80;
/// SIGTRAP's bit in a signal mask.
const SIGTRAP_BIT: u64 = 1 << (libc::SIGTRAP - 1);
/// SIG_IGN.
const SIG_IGN: u64 = 1;

/// One argument of a [`Call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// Passed as is.
    Value(u64),
    /// The address of a zeroed buffer of this many bytes in the tracee,
    /// which the call may fill; its contents come back in [`Answer::out`].
    Out(usize),
}

/// One system call of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// Its number.
    pub nr: i64,
    /// Its six arguments.
    pub args: [Arg; 6],
}

impl Call {
    /// Call `nr` with `args`.
    pub fn new(nr: i64, args: [Arg; 6]) -> Self {
        Call { nr, args }
    }

    /// Call `nr` with plain values but for argument `at`, a buffer of `len`
    /// bytes: the common "get" call (`getitimer(which, &out)`).
    pub fn out(nr: i64, values: [u64; 6], at: usize, len: usize) -> Self {
        let mut args = values.map(Arg::Value);
        args[at] = Arg::Out(len);
        Call { nr, args }
    }

    fn out_len(&self) -> usize {
        self.args.iter().map(|a| if let Arg::Out(len) = a { len.next_multiple_of(8) } else { 0 }).sum()
    }
}

/// What one call of a batch returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The raw result: -errno on failure.
    pub ret: i64,
    /// The buffers of its [`Arg::Out`] arguments, in argument order.
    pub out: Vec<Vec<u8>>,
}

impl Answer {
    /// Buffer `out` read as little-endian 64-bit words (the kernel's
    /// structs of longs and pointers: sigaction, stack_t, itimerval, ...).
    pub fn words(&self, out: usize) -> Vec<u64> {
        self.out[out].chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes"))).collect()
    }

    /// The result, with -errno turned into [`Error::Failed`] naming the
    /// call.
    pub fn ok(&self, tid: nix::unistd::Pid, nr: i64) -> Result<u64, Error> {
        if (-4095..0).contains(&self.ret) {
            return Err(Error::Failed { tid, nr, errno: nix::errno::Errno::from_raw(-self.ret as i32) });
        }
        Ok(self.ret as u64)
    }
}

/// How a batch was run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// In one run of the loop.
    AtOnce,
    /// One injected call after another: the loop could not be used, for
    /// the reason given.
    OneByOne(String),
}

/// Why the loop cannot be used for this thread now; the calls are then
/// injected one by one.
#[derive(Debug)]
enum Unavailable {
    /// A SIGTRAP is pending: the loop would take it for its own.
    TrapPending,
    /// The mapping, or writing the loop into it, failed.
    Setup(Error),
}

/// Pages mapped in a tracee for batches: the loop, then room for the
/// tables and buffers of batches of up to [`BatchArea::room`] bytes. Made
/// by [`Injection::batch_area`] in one thread, usable by every thread of the
/// process (they share its memory), so that each thread's batch costs no
/// mapping of its own. Unmapping needs an injection: [`BatchArea::unmap`].
#[derive(Debug)]
pub struct BatchArea {
    base: u64,
    len: usize,
    page: usize,
}

impl BatchArea {
    /// The bytes of table and buffers a batch run in it may take.
    pub fn room(&self) -> usize {
        self.len - self.page
    }

    /// Unmaps it by injecting munmap(2) through `injection`.
    pub fn unmap(self, injection: &mut Injection<'_>) -> Result<(), Error> {
        injection.syscall_ok(libc::SYS_munmap, [self.base, self.len as u64, 0, 0, 0, 0]).map(drop)
    }
}

/// The calls of a batch with the query of SIGTRAP's disposition first
/// (see the module's documentation), and the bytes their table and
/// buffers take.
fn with_trap_query(calls: &[Call]) -> (Vec<Call>, usize) {
    let trap = Call::out(libc::SYS_rt_sigaction, [libc::SIGTRAP as u64, 0, 0, 8, 0, 0], 2, 32);
    let all: Vec<Call> = std::iter::once(trap).chain(calls.iter().copied()).collect();
    let len = all.len() * ENTRY + all.iter().map(Call::out_len).sum::<usize>();
    (all, len)
}

impl Injection<'_> {
    /// Runs `calls` in the thread, in order, and returns what each
    /// returned. The calls must not depend on the signal mask (every
    /// signal but SIGTRAP is blocked while they run) and must not block.
    /// A failing call does not stop the others.
    pub fn batch(&mut self, calls: &[Call]) -> Result<(Vec<Answer>, Ran), Error> {
        self.batch_in(None, calls)
    }

    /// [`Injection::batch`] in `area` when given (and the calls fit),
    /// else in pages mapped for it and unmapped after.
    pub fn batch_in(&mut self, area: Option<&BatchArea>, calls: &[Call]) -> Result<(Vec<Answer>, Ran), Error> {
        if calls.is_empty() {
            return Ok((Vec::new(), Ran::AtOnce));
        }
        match self.batch_at_once(area, calls) {
            Ok(answers) => Ok((answers, Ran::AtOnce)),
            Err(Ok(unavailable)) => {
                let why = match unavailable {
                    Unavailable::TrapPending => "a SIGTRAP is pending".to_owned(),
                    Unavailable::Setup(e) => e.to_string(),
                };
                Ok((self.batch_one_by_one(calls)?, Ran::OneByOne(why)))
            }
            Err(Err(error)) => Err(error),
        }
    }

    /// Tells the next batch whether a SIGTRAP is pending for the thread or
    /// its process, as the caller read it (SigPnd, ShdPnd of its /proc
    /// status) since the thread stopped, which spares the batch reading
    /// it again. One sent since is told apart all the same (see the
    /// module's documentation).
    pub fn set_trap_pending(&mut self, pending: bool) {
        self.trap_pending = Some(pending);
    }

    /// Maps pages for batches of up to `room` bytes of table and buffers
    /// (see [`BatchArea`]); fails where the loop cannot be put in the
    /// process (then [`Injection::batch`] injects calls one by one).
    pub fn batch_area(&mut self, room: usize) -> Result<BatchArea, Error> {
        let tid = self.tid();
        let page = crate::mman::page_size();
        let len = page + room.max(1).div_ceil(page) * page;
        let prot = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let base = self.syscall_ok(libc::SYS_mmap, [0, len as u64, prot, flags, u64::MAX, 0])?;
        let area = BatchArea { base, len, page };
        let written = OpenOptions::new()
            .write(true)
            .open(format!("/proc/{tid}/mem"))
            .and_then(|mem| mem.write_all_at(&LOOP, base))
            .map_err(|source| Error::WriteCode { tid, source });
        let data = (base + page as u64, (len - page) as u64);
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        match written.and_then(|()| self.syscall_ok(libc::SYS_mprotect, [data.0, data.1, rw, 0, 0, 0])) {
            Ok(_) => Ok(area),
            Err(error) => match area.unmap(self) {
                Ok(()) => Err(error),
                Err(rollback) => Err(Error::Rollback { tid, error: Box::new(error), rollback: Box::new(rollback) }),
            },
        }
    }

    /// The calls through the scratch page, one injection each.
    fn batch_one_by_one(&mut self, calls: &[Call]) -> Result<Vec<Answer>, Error> {
        let mut answers = Vec::with_capacity(calls.len());
        for call in calls {
            let base = self.scratch()?.addr().0;
            let mut values = [0u64; 6];
            let mut outs = Vec::new();
            let mut offset = 0;
            for (value, arg) in values.iter_mut().zip(call.args) {
                *value = match arg {
                    Arg::Value(v) => v,
                    Arg::Out(len) => {
                        self.scratch()?.write(offset, &vec![0; len])?;
                        outs.push((offset, len));
                        let at = base + offset as u64;
                        offset += len.next_multiple_of(8);
                        at
                    }
                };
            }
            if offset > SCRATCH_PAGE {
                return Err(Error::ScratchBounds {
                    addr: RemoteAddr(base),
                    size: SCRATCH_PAGE,
                    offset: 0,
                    len: offset,
                });
            }
            let ret = self.syscall(call.nr, values)?;
            let mut out = Vec::with_capacity(outs.len());
            for (offset, len) in outs {
                let mut buf = vec![0; len];
                self.scratch()?.read(offset, &mut buf)?;
                out.push(buf);
            }
            answers.push(Answer { ret, out });
        }
        Ok(answers)
    }

    /// The calls in one run of the loop, in `area` or in one mapped for
    /// them. `Err(Ok(_))`: the loop cannot be used (nothing was run);
    /// `Err(Err(_))`: the injection failed.
    fn batch_at_once(
        &mut self,
        area: Option<&BatchArea>,
        calls: &[Call],
    ) -> Result<Vec<Answer>, Result<Unavailable, Error>> {
        if self.trap_pending.take().unwrap_or_else(|| trap_pending(self.tid())) {
            return Err(Ok(Unavailable::TrapPending));
        }
        let (all, len) = with_trap_query(calls);
        if let Some(area) = area.filter(|a| a.room() >= len) {
            return self.run_in(area, &all).map_err(Err);
        }
        let area = self.batch_area(len).map_err(|e| match e {
            // The thread is as before: the calls can go one by one.
            Error::Failed { .. } | Error::WriteCode { .. } => Ok(Unavailable::Setup(e)),
            e => Err(e),
        })?;
        let answers = self.run_in(&area, &all);
        let unmapped = area.unmap(self);
        match (answers, unmapped) {
            (Ok(answers), Ok(())) => Ok(answers),
            (Err(error), _) | (Ok(_), Err(error)) => Err(Err(error)),
        }
    }

    /// Writes the table of `all` (the SIGTRAP query first) into `area`,
    /// runs the loop, and reads the answers back (but the query's).
    fn run_in(&mut self, area: &BatchArea, all: &[Call]) -> Result<Vec<Answer>, Error> {
        let tid = self.tid();
        let data = area.base + area.page as u64;
        // The table, then the buffers, zeroed.
        let mut table = Vec::with_capacity(all.len() * ENTRY);
        let mut outs = Vec::with_capacity(all.len());
        let mut next = data + (all.len() * ENTRY) as u64;
        for call in all {
            table.extend_from_slice(&call.nr.to_le_bytes());
            let mut mine = Vec::new();
            for arg in call.args {
                let value = match arg {
                    Arg::Value(v) => v,
                    Arg::Out(len) => {
                        mine.push((next, len));
                        let at = next;
                        next += len.next_multiple_of(8) as u64;
                        at
                    }
                };
                table.extend_from_slice(&value.to_le_bytes());
            }
            table.extend_from_slice(&[0; 8]);
            outs.push(mine);
        }
        let table_end = data + table.len() as u64;
        table.resize((next - data) as usize, 0);
        process_vm::write_exact(tid, RemoteAddr(data), &table)?;

        self.run_to_trap(area.base, data, table_end)?;

        let mut raw = vec![0u8; (next - data) as usize];
        process_vm::read_exact(tid, RemoteAddr(data), &mut raw)?;
        let mut answers: Vec<Answer> = outs
            .into_iter()
            .enumerate()
            .map(|(i, mine)| {
                let at = i * ENTRY + 56;
                let ret = i64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
                let out = mine
                    .into_iter()
                    .map(|(addr, len)| {
                        let from = (addr - data) as usize;
                        raw[from..from + len].to_vec()
                    })
                    .collect();
                Answer { ret, out }
            })
            .collect();
        let trap = answers.remove(0);
        // The int3 reset an ignored SIGTRAP to SIG_DFL: ignore it again.
        if trap.ret == 0 && trap.words(0)[0] == SIG_IGN {
            let scratch = self.scratch()?.addr().0;
            self.scratch()?.write(0, &trap.out[0])?;
            self.syscall_ok(libc::SYS_rt_sigaction, [libc::SIGTRAP as u64, scratch, 0, 8, 0, 0])?;
        }
        Ok(answers)
    }

    /// Runs the loop at `code` over the table `[table, end)` until its int3.
    fn run_to_trap(&mut self, code: u64, table: u64, end: u64) -> Result<(), Error> {
        let tid = self.tid();
        let mut regs = self.saved;
        let r = &mut regs.0;
        r.rip = code;
        r.orig_rax = u64::MAX;
        r.r12 = table;
        r.r13 = end;
        self.seized.set_regs(&regs)?;
        self.seized.set_sigmask(!SIGTRAP_BIT)?;
        let trap_at = code + LOOP.len() as u64;
        let mut stray = 0;
        self.seized.resume().map_err(|e| self.ptrace_err(e))?;
        self.phase = Phase::Running;
        loop {
            let stop = self.wait()?;
            match stop {
                Stop::Signal(Signal::SIGTRAP) => {
                    let info = self.seized.get_siginfo()?;
                    let at = self.seized.get_regs()?.0.rip;
                    let _ = self.seized.take_pending_signal();
                    if info.code() == SI_KERNEL && at == trap_at {
                        break;
                    }
                    // Sent by someone while the loop ran.
                    self.held_sigtrap = true;
                }
                Stop::Signal(_) => {
                    if let Some(signal) = self.take_signal() {
                        return Err(Error::Signal { tid, nr: -1, signal });
                    }
                }
                // A group stop (a SIGSTOP to another thread).
                Stop::Event { event: PTRACE_EVENT_STOP, .. } => {}
                stop => return Err(Error::UnexpectedStop { tid, nr: -1, stop }),
            }
            stray += 1;
            if stray > super::MAX_STRAY_STOPS {
                return Err(Error::UnexpectedStop { tid, nr: -1, stop });
            }
            self.seized.resume().map_err(|e| self.ptrace_err(e))?;
            self.phase = Phase::Running;
        }
        // In the delivery-stop of our SIGTRAP, suppressed: the next
        // injected call starts from here, under the full mask again.
        self.phase = Phase::SignalStop;
        self.seized.set_sigmask(!0)?;
        Ok(())
    }
}

/// Whether a SIGTRAP is pending for thread `tid` or its process.
fn trap_pending(tid: nix::unistd::Pid) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    status
        .lines()
        .filter_map(|l| l.strip_prefix("SigPnd:").or_else(|| l.strip_prefix("ShdPnd:")))
        .any(|mask| u64::from_str_radix(mask.trim(), 16).map_or(true, |m| m & SIGTRAP_BIT != 0))
}

#[cfg(test)]
mod tests {
    use nix::unistd::Pid;

    use super::*;
    use crate::inject::find_syscall_site;
    use crate::inject::test_support::{fork_child, raw, wait_blocked_in};
    use crate::ptrace::{Options, Seized};

    fn seize_and_interrupt(pid: Pid) -> Seized {
        let options = Options::PTRACE_O_TRACESYSGOOD | Options::PTRACE_O_EXITKILL;
        let mut seized = Seized::seize(pid, options).expect("PTRACE_SEIZE of our own child");
        seized.interrupt(super::super::DEFAULT_TIMEOUT).expect("PTRACE_INTERRUPT");
        seized
    }

    /// A mask line (SigPnd, SigBlk, SigIgn, ...) of /proc/PID/status.
    fn status_mask(pid: Pid, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or_else(|| panic!("no {field}"));
        u64::from_str_radix(line.trim_start_matches(':').trim(), 16).unwrap()
    }

    fn sigactions() -> Vec<Call> {
        (1..=64).map(|sig| Call::out(libc::SYS_rt_sigaction, [sig, 0, 0, 8, 0, 0], 2, 32)).collect()
    }

    /// A child that sets SIGUSR1's handler, ignores SIGTRAP, blocks the
    /// signals of `block` and pauses.
    fn child(block: u64, raise_trap: bool) -> crate::child::Child {
        let body = move || {
            let act: [u64; 4] = [0x1000_1000, (libc::SA_SIGINFO | libc::SA_RESTART) as u64, 0, 1 << 11];
            let ign: [u64; 4] = [SIG_IGN, 0, 0, 0];
            let steps = [
                // SAFETY: `act` and `ign` are live 32-byte struct
                // sigactions, `block` a live 8-byte mask; no old values
                // are asked for.
                unsafe { raw(libc::SYS_rt_sigaction, libc::SIGUSR1 as u64, act.as_ptr() as u64, 0, 8) },
                // SAFETY: as above.
                unsafe { raw(libc::SYS_rt_sigaction, libc::SIGTRAP as u64, ign.as_ptr() as u64, 0, 8) },
                // SAFETY: as above.
                unsafe { raw(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK as u64, &block as *const u64 as u64, 0, 8) },
            ];
            if let Some(i) = steps.iter().position(|&r| r < 0) {
                return 10 + i as i32;
            }
            if raise_trap {
                // SAFETY: no arguments.
                let me = unsafe { raw(libc::SYS_getpid, 0, 0, 0, 0) } as u64;
                // SAFETY: no pointer arguments.
                unsafe { raw(libc::SYS_tgkill, me, me, libc::SIGTRAP as u64, 0) };
            }
            loop {
                // SAFETY: pause takes no arguments.
                unsafe { raw(libc::SYS_pause, 0, 0, 0, 0) };
            }
        };
        // SAFETY: the body makes raw syscalls only, with pointers to its
        // own stack.
        let mut child = unsafe { fork_child(body) };
        wait_blocked_in(&mut child, libc::SYS_pause);
        child
    }

    /// The calls run in one go answer exactly as when injected one by one,
    /// a failing call does not stop the others, and the thread is left as
    /// it was: registers, mask, mappings, and its ignored SIGTRAP (which
    /// the int3 reset) ignored again.
    #[test]
    fn a_batch_answers_as_calls_one_by_one_and_leaves_the_thread_as_it_was() {
        let mut child = child(0, false);
        let pid = child.pid();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let mut seized = seize_and_interrupt(pid);
        let site = find_syscall_site(pid).unwrap();
        let mut calls = sigactions();
        calls.push(Call::new(libc::SYS_getpid, [Arg::Value(0); 6]));
        calls.push(Call::new(
            libc::SYS_close,
            [Arg::Value(u64::MAX), Arg::Value(0), Arg::Value(0), Arg::Value(0), Arg::Value(0), Arg::Value(0)],
        ));
        calls.push(Call::out(libc::SYS_getitimer, [libc::ITIMER_REAL as u64, 0, 0, 0, 0, 0], 1, 32));
        let mut inj = seized.begin_injection(site).unwrap();
        let saved = *inj.saved_regs();
        let (fast, ran) = inj.batch(&calls).expect("batch");
        assert_eq!(ran, Ran::AtOnce);
        let slow = inj.batch_one_by_one(&calls).expect("one by one");
        assert_eq!(fast, slow);
        let usr1 = &fast[libc::SIGUSR1 as usize - 1];
        assert_eq!(usr1.ret, 0);
        assert_eq!(&usr1.out[0][..8], &0x1000_1000u64.to_le_bytes());
        assert_eq!(fast[64].ret, i64::from(pid.as_raw()));
        assert_eq!(fast[65].ret, -libc::EBADF as i64);
        assert_eq!(fast[66].out[0], vec![0; 32]);
        inj.finish().expect("finish");
        assert_eq!(seized.get_regs().unwrap(), saved);
        assert_eq!(seized.get_sigmask().unwrap(), 0);
        assert_ne!(status_mask(pid, "SigIgn") & SIGTRAP_BIT, 0, "SIGTRAP is no longer ignored");
        assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap(), maps, "a mapping was left");
        seized.detach().unwrap();
        wait_blocked_in(&mut child, libc::SYS_pause);
    }

    /// An area mapped in one injection serves the batches of later ones
    /// (as of every thread of a process), a batch too big for it gets
    /// pages of its own, and nothing is left mapped once it is unmapped.
    #[test]
    fn a_batch_area_serves_later_injections_and_is_unmapped() {
        let mut child = child(0, false);
        let pid = child.pid();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let mut seized = seize_and_interrupt(pid);
        let site = find_syscall_site(pid).unwrap();
        let area = {
            let mut inj = seized.begin_injection(site).unwrap();
            let area = inj.batch_area(1024).expect("batch area");
            inj.finish().unwrap();
            area
        };
        assert_ne!(std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap(), maps, "no area mapped");
        let small = [Call::out(libc::SYS_rt_sigaction, [libc::SIGUSR1 as u64, 0, 0, 8, 0, 0], 2, 32)];
        for _ in 0..2 {
            let mut inj = seized.begin_injection(site).unwrap();
            let (answers, ran) = inj.batch_in(Some(&area), &small).expect("batch in the area");
            assert_eq!(ran, Ran::AtOnce);
            assert_eq!(&answers[0].out[0][..8], &0x1000_1000u64.to_le_bytes());
            let (all, ran) = inj.batch_in(Some(&area), &sigactions()).expect("batch too big for the area");
            assert_eq!(ran, Ran::AtOnce);
            assert_eq!(all[libc::SIGUSR1 as usize - 1], answers[0]);
            inj.finish().unwrap();
        }
        let mut inj = seized.begin_injection(site).unwrap();
        area.unmap(&mut inj).expect("unmap");
        inj.finish().unwrap();
        assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap(), maps, "a mapping was left");
        assert_ne!(status_mask(pid, "SigIgn") & SIGTRAP_BIT, 0, "SIGTRAP is no longer ignored");
        seized.detach().unwrap();
        wait_blocked_in(&mut child, libc::SYS_pause);
    }

    /// With a SIGTRAP pending (blocked by the process), the loop would take
    /// it for its own: the calls go one by one, and the SIGTRAP stays.
    #[test]
    fn a_pending_sigtrap_makes_the_batch_go_one_by_one_and_stays_pending() {
        let mut child = child(SIGTRAP_BIT, true);
        let pid = child.pid();
        assert_ne!(status_mask(pid, "SigPnd") & SIGTRAP_BIT, 0, "the child's SIGTRAP is not pending");
        let mut seized = seize_and_interrupt(pid);
        let site = find_syscall_site(pid).unwrap();
        let mut inj = seized.begin_injection(site).unwrap();
        let (answers, ran) = inj.batch(&sigactions()).expect("batch");
        assert_eq!(ran, Ran::OneByOne("a SIGTRAP is pending".into()));
        assert_eq!(&answers[libc::SIGUSR1 as usize - 1].out[0][..8], &0x1000_1000u64.to_le_bytes());
        // As when the caller says so, having read it.
        inj.set_trap_pending(true);
        let (_, ran) = inj.batch(&sigactions()[..1]).expect("batch");
        assert_eq!(ran, Ran::OneByOne("a SIGTRAP is pending".into()));
        inj.finish().expect("finish");
        let pending: Vec<i32> = seized.peek_siginfo(false).unwrap().iter().map(|s| s.signo()).collect();
        assert_eq!(pending, [libc::SIGTRAP]);
        seized.detach().unwrap();
        wait_blocked_in(&mut child, libc::SYS_pause);
    }

    /// A SIGTRAP sent while the loop runs (here by a call of the batch) is
    /// not taken for the loop's own: the loop goes on, and the signal is
    /// queued again when the injection ends.
    #[test]
    fn a_sigtrap_sent_while_the_batch_runs_is_sent_again_at_the_end() {
        let mut child = child(SIGTRAP_BIT, false);
        let pid = child.pid();
        let mut seized = seize_and_interrupt(pid);
        let site = find_syscall_site(pid).unwrap();
        let me = pid.as_raw() as u64;
        let calls = [
            Call::new(libc::SYS_getpid, [Arg::Value(0); 6]),
            Call::new(libc::SYS_tgkill, [me, me, libc::SIGTRAP as u64, 0, 0, 0].map(Arg::Value)),
            Call::new(libc::SYS_getpid, [Arg::Value(0); 6]),
        ];
        let mut inj = seized.begin_injection(site).unwrap();
        let (answers, ran) = inj.batch(&calls).expect("batch");
        assert_eq!(ran, Ran::AtOnce);
        assert_eq!(answers.iter().map(|a| a.ret).collect::<Vec<_>>(), [me as i64, 0, me as i64]);
        inj.finish().expect("finish");
        assert_eq!(seized.get_sigmask().unwrap(), SIGTRAP_BIT);
        let pending: Vec<i32> = seized.peek_siginfo(false).unwrap().iter().map(|s| s.signo()).collect();
        assert_eq!(pending, [libc::SIGTRAP]);
        seized.detach().unwrap();
        wait_blocked_in(&mut child, libc::SYS_pause);
    }
}
