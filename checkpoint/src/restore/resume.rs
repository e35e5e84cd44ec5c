//! The registers a restored thread resumes with, including the fix-ups for
//! a thread that was stopped inside a system call.
//!
//! A thread interrupted in a blocking system call was stopped with
//! `rax = -ERESTART*` and `orig_rax` = the call's number. A restored thread
//! is let go from a `PTRACE_EVENT_STOP` inside `get_signal()`, exactly where
//! the dumped thread was, so the kernel's own restart logic runs on these
//! registers when it resumes (arch/x86/kernel/signal.c
//! `arch_do_signal_or_restart`): -ERESTARTSYS, -ERESTARTNOINTR and
//! -ERESTARTNOHAND are left to it, which also gets their interplay with a
//! signal delivered at that moment right.
//!
//! `-ERESTART_RESTARTBLOCK` is different: the kernel would call
//! `restart_syscall`, which continues from the task's `restart_block`, and a
//! new task does not have the old one's. So it is done here, and `orig_rax`
//! cleared so the kernel does not add its own: for nanosleep and relative
//! clock_nanosleep the kernel wrote the remaining time to the caller's `rem`
//! buffer when the sleep was interrupted, so the call is re-issued for that
//! remainder (no sleep lost or repeated); an absolute clock_nanosleep is
//! re-issued as it was; without a `rem` buffer the call returns -EINTR, as
//! after a signal; any other call (poll, futex waits with a timeout) is
//! re-issued with its original arguments.

use stasis_sys::nix::libc;

const ERESTART_RESTARTBLOCK: i64 = 516;
const TIMER_ABSTIME: u64 = 1;
/// Length of the `syscall` instruction.
const SYSCALL_LEN: u64 = 2;

/// Apply the fix-up for -ERESTART_RESTARTBLOCK to `r`; leave every other
/// case to the kernel.
pub fn fix_restart(r: &mut libc::user_regs_struct) {
    let nr = r.orig_rax as i64;
    if nr >= 0 && -(r.rax as i64) == ERESTART_RESTARTBLOCK {
        restart_block(r, nr);
        r.orig_rax = u64::MAX;
    }
}

fn restart_block(r: &mut libc::user_regs_struct, nr: i64) {
    let reissue = |r: &mut libc::user_regs_struct| {
        r.rax = nr as u64;
        r.rip -= SYSCALL_LEN;
    };
    match nr {
        libc::SYS_nanosleep => {
            // nanosleep(req = rdi, rem = rsi)
            if r.rsi != 0 {
                r.rdi = r.rsi;
                reissue(r);
            } else {
                r.rax = (-libc::EINTR) as u64;
            }
        }
        libc::SYS_clock_nanosleep => {
            // clock_nanosleep(clock = rdi, flags = rsi, req = rdx, rem = r10)
            if r.rsi & TIMER_ABSTIME != 0 {
                reissue(r);
            } else if r.r10 != 0 {
                r.rdx = r.r10;
                reissue(r);
            } else {
                r.rax = (-libc::EINTR) as u64;
            }
        }
        _ => reissue(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(rax: i64, orig: i64) -> libc::user_regs_struct {
        let mut r: libc::user_regs_struct = zeroed();
        r.rax = rax as u64;
        r.orig_rax = orig as u64;
        r.rip = 0x1002;
        r
    }

    fn zeroed() -> libc::user_regs_struct {
        stasis_sys::regs::GpRegs::from_bytes(&[0; stasis_sys::regs::GpRegs::SIZE]).0
    }

    #[test]
    fn erestartsys_is_left_to_the_kernel() {
        let mut r = regs(-512, libc::SYS_read);
        fix_restart(&mut r);
        assert_eq!((r.rax as i64, r.rip, r.orig_rax), (-512, 0x1002, libc::SYS_read as u64));
    }

    #[test]
    fn nanosleep_sleeps_the_remainder() {
        let mut r = regs(-516, libc::SYS_nanosleep);
        r.rdi = 0xaaa0;
        r.rsi = 0xbbb0;
        fix_restart(&mut r);
        assert_eq!((r.rax, r.rip, r.rdi, r.orig_rax), (libc::SYS_nanosleep as u64, 0x1000, 0xbbb0, u64::MAX));
    }

    #[test]
    fn clock_nanosleep_variants() {
        let mut abs = regs(-516, libc::SYS_clock_nanosleep);
        abs.rsi = 1;
        abs.rdx = 0x10;
        fix_restart(&mut abs);
        assert_eq!((abs.rip, abs.rdx), (0x1000, 0x10));
        let mut rel = regs(-516, libc::SYS_clock_nanosleep);
        rel.rdx = 0x10;
        rel.r10 = 0x20;
        fix_restart(&mut rel);
        assert_eq!((rel.rip, rel.rdx), (0x1000, 0x20));
        let mut none = regs(-516, libc::SYS_clock_nanosleep);
        fix_restart(&mut none);
        assert_eq!((none.rip, none.rax as i64), (0x1002, -(libc::EINTR as i64)));
    }

    #[test]
    fn finished_calls_and_user_code_are_left_alone() {
        let mut done = regs(3, libc::SYS_read);
        fix_restart(&mut done);
        assert_eq!((done.rax, done.rip), (3, 0x1002));
        let mut user = regs(7, -1);
        fix_restart(&mut user);
        assert_eq!((user.rax, user.rip, user.orig_rax), (7, 0x1002, u64::MAX));
    }
}
