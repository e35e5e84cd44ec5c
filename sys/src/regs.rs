//! Register and signal state of a ptrace-stopped thread (x86_64).
//!
//! Everything here needs the tracee in a ptrace stop (kernel/ptrace.c
//! `ptrace_check_attach`); the requests are answered by the kernel from the
//! thread's saved user state, so nothing runs in the tracee.
//!
//! - General-purpose registers: `PTRACE_GETREGS`/`PTRACE_SETREGS` with
//!   `struct user_regs_struct` (arch/x86/include/asm/user_64.h). [`GpRegs`]
//!   turns it into 27 little-endian u64 in kernel field order, the form an
//!   image stores.
//! - Extended state (x87, SSE, AVX, AVX-512, PKRU, ...): `PTRACE_GETREGSET`
//!   with `NT_X86_XSTATE`, the XSAVE layout in the "user ABI" format
//!   (arch/x86/kernel/fpu/regset.c `xstateregs_get`,
//!   arch/x86/kernel/fpu/xstate.c `__copy_xstate_to_uabi_buf`). The first
//!   u64 of the legacy area's software-reserved bytes (offset 464,
//!   `USER_XSTATE_XCR0_WORD` in arch/x86/include/asm/user.h) is the user
//!   feature mask (XCR0) of the producing host: restore compares it with its
//!   own and refuses an image that needs features this CPU lacks. (Signal
//!   frames put a `struct _fpx_sw_bytes` with a magic number there instead;
//!   ptrace buffers do not.)
//! - Signal mask: `PTRACE_GETSIGMASK`/`PTRACE_SETSIGMASK`. GETSIGMASK reports
//!   `saved_sigmask` while the thread sits in ppoll/pselect/sigsuspend with a
//!   temporary mask (`TIF_RESTORE_SIGMASK`), and SETSIGMASK clears that flag:
//!   the pair round-trips the mask the program itself asked for.
//! - Queued signals: `PTRACE_PEEKSIGINFO` lists the per-thread or the shared
//!   queue without dequeuing anything (kernel/ptrace.c `ptrace_peek_siginfo`).
//! - rseq registration: `PTRACE_GET_RSEQ_CONFIGURATION` (Linux 5.13).

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::unistd::Pid;

use crate::ptrace::{Options, Seized};

/// `NT_X86_XSTATE` from `<linux/elf.h>`.
pub const NT_X86_XSTATE: u32 = 0x202;
/// `PTRACE_PEEKSIGINFO_SHARED`: peek the process-wide queue.
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
/// Size of the kernel's `sigset_t` on x86_64 (not glibc's 128 bytes).
const KERNEL_SIGSET_SIZE: usize = 8;

/// XSAVE feature bits (Intel SDM vol. 1, 13.1).
pub mod xfeature {
    /// x87 FPU state.
    pub const X87: u64 = 1 << 0;
    /// SSE (XMM registers, MXCSR).
    pub const SSE: u64 = 1 << 1;
    /// AVX (upper halves of YMM registers).
    pub const AVX: u64 = 1 << 2;
    /// AVX-512 opmask registers k0-k7.
    pub const AVX512_OPMASK: u64 = 1 << 5;
    /// AVX-512 upper halves of ZMM0-15.
    pub const AVX512_ZMM_HI256: u64 = 1 << 6;
    /// AVX-512 ZMM16-31.
    pub const AVX512_HI16_ZMM: u64 = 1 << 7;
    /// All three AVX-512 components.
    pub const AVX512: u64 = AVX512_OPMASK | AVX512_ZMM_HI256 | AVX512_HI16_ZMM;
    /// Protection keys (PKRU).
    pub const PKRU: u64 = 1 << 9;
}

/// Errors of register and signal-state requests. Each names the thread.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `PTRACE_GETREGS` failed (ESRCH: not stopped or gone).
    #[error("cannot read the registers of thread {tid}")]
    GetRegs {
        /// The thread.
        tid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_SETREGS` failed (EIO: an invalid segment or flags value).
    #[error("cannot set the registers of thread {tid}")]
    SetRegs {
        /// The thread.
        tid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_GETREGSET(NT_X86_XSTATE)` failed.
    #[error("cannot read the extended state of thread {tid}")]
    GetXState {
        /// The thread.
        tid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_SETREGSET(NT_X86_XSTATE)` failed (EINVAL: features this CPU
    /// lacks or a malformed header).
    #[error("cannot set the extended state of thread {tid}")]
    SetXState {
        /// The thread.
        tid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_GETSIGMASK` failed.
    #[error("cannot read the signal mask of thread {tid}")]
    GetSigmask {
        /// The thread.
        tid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_SETSIGMASK` failed.
    #[error("cannot set the signal mask of thread {tid}")]
    SetSigmask {
        /// The thread.
        tid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_PEEKSIGINFO` failed.
    #[error("cannot list the queued signals of thread {tid}")]
    PeekSiginfo {
        /// The thread.
        tid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_GETSIGINFO` failed (EINVAL: not in a signal-delivery-stop).
    #[error("cannot read the siginfo of the stop of thread {tid}")]
    GetSiginfo {
        /// The thread.
        tid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_GET_SYSCALL_INFO` failed.
    #[error("cannot read the syscall stop of thread {tid}")]
    SyscallInfo {
        /// The thread.
        tid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_GET_RSEQ_CONFIGURATION` failed (EIO: kernel before 5.13).
    #[error("cannot read the rseq configuration of thread {tid}")]
    RseqConfig {
        /// The thread.
        tid: Pid,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_SECCOMP_GET_FILTER` or `PTRACE_GET_SECCOMP_METADATA` failed
    /// (EINVAL: a kernel without CONFIG_CHECKPOINT_RESTORE).
    #[error("cannot read seccomp filter {index} of thread {tid}")]
    SeccompFilter {
        /// The thread.
        tid: Pid,
        /// The filter, 0 the newest.
        index: u64,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// `PTRACE_SETOPTIONS` failed.
    #[error("cannot set ptrace options {options:?} on thread {tid}")]
    SetOptions {
        /// The thread.
        tid: Pid,
        /// The options asked for.
        options: Options,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
}

/// The general-purpose registers of a thread, as the kernel's
/// `struct user_regs_struct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpRegs(pub libc::user_regs_struct);

impl GpRegs {
    /// Number of u64 fields in `struct user_regs_struct` on x86_64.
    pub const FIELDS: usize = 27;
    /// Size of the serialized form.
    pub const SIZE: usize = Self::FIELDS * 8;

    fn fields(&self) -> [u64; Self::FIELDS] {
        let r = &self.0;
        [
            r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx, r.rsi, r.rdi,
            r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss, r.fs_base, r.gs_base, r.ds, r.es, r.fs, r.gs,
        ]
    }

    /// The 27 registers as little-endian u64 in kernel field order
    /// (r15, r14, ..., orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base,
    /// ds, es, fs, gs).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        for (chunk, value) in out.chunks_exact_mut(8).zip(self.fields()) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// The inverse of [`GpRegs::to_bytes`].
    pub fn from_bytes(bytes: &[u8; Self::SIZE]) -> Self {
        let mut f = [0u64; Self::FIELDS];
        for (value, chunk) in f.iter_mut().zip(bytes.chunks_exact(8)) {
            *value = u64::from_le_bytes(chunk.try_into().expect("chunks_exact(8) yields 8 bytes"));
        }
        GpRegs(libc::user_regs_struct {
            r15: f[0],
            r14: f[1],
            r13: f[2],
            r12: f[3],
            rbp: f[4],
            rbx: f[5],
            r11: f[6],
            r10: f[7],
            r9: f[8],
            r8: f[9],
            rax: f[10],
            rcx: f[11],
            rdx: f[12],
            rsi: f[13],
            rdi: f[14],
            orig_rax: f[15],
            rip: f[16],
            cs: f[17],
            eflags: f[18],
            rsp: f[19],
            ss: f[20],
            fs_base: f[21],
            gs_base: f[22],
            ds: f[23],
            es: f[24],
            fs: f[25],
            gs: f[26],
        })
    }
}

/// Offset of the XCR0 word in the ptrace/core-dump XSAVE buffer: the
/// first u64 of the legacy area's software-reserved bytes 464..511
/// (arch/x86/include/asm/user.h `USER_XSTATE_XCR0_WORD`). Signal frames
/// use these bytes differently (`struct _fpx_sw_bytes` with
/// `FP_XSTATE_MAGIC1`), ptrace and core dumps do not.
const XCR0_OFFSET: usize = 464;
/// Offset of the XSAVE header (`xstate_bv`, `xcomp_bv`).
const XSAVE_HEADER_OFFSET: usize = 512;
/// Legacy area (512) plus XSAVE header (64): the smallest valid buffer.
pub const XSTATE_MIN_SIZE: usize = 576;

/// A thread's XSAVE-format extended state, exactly as many bytes as the
/// kernel wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XState(Vec<u8>);

impl XState {
    /// Wraps bytes from an image.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        XState(bytes)
    }

    /// The raw buffer.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The raw buffer, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    fn u64_at(&self, off: usize) -> Option<u64> {
        Some(u64::from_le_bytes(self.0.get(off..off + 8)?.try_into().ok()?))
    }

    /// The user feature mask (XCR0 as the kernel exposes it to user
    /// space) of the CPU and kernel that produced this buffer, or `None`
    /// for a buffer too short to hold it. Restore compares it with its own
    /// and refuses an image that uses features this CPU lacks.
    pub fn xfeatures(&self) -> Option<u64> {
        self.u64_at(XCR0_OFFSET)
    }

    /// `xstate_bv` of the XSAVE header: which components hold a non-initial
    /// value (a subset of [`XState::xfeatures`]).
    pub fn xstate_bv(&self) -> Option<u64> {
        self.u64_at(XSAVE_HEADER_OFFSET)
    }
}

/// Size of an XSAVE buffer large enough for every feature the CPU supports:
/// CPUID leaf 0xD subleaf 0, ECX (all supported features) and EBX (features
/// enabled in XCR0 now), whichever is larger.
pub fn xstate_buffer_size() -> usize {
    let leaf = std::arch::x86_64::__cpuid_count(0xd, 0);
    let size = leaf.ebx.max(leaf.ecx) as usize;
    // A CPU without XSAVE reports 0; the kernel then still fills the
    // legacy area and header.
    size.max(XSTATE_MIN_SIZE)
}

/// One `siginfo_t` as the kernel stores it (128 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SigInfo(pub [u8; 128]);

impl SigInfo {
    fn i32_at(&self, off: usize) -> i32 {
        i32::from_le_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }

    /// `si_signo`.
    pub fn signo(&self) -> i32 {
        self.i32_at(0)
    }

    /// `si_errno`.
    pub fn errno(&self) -> i32 {
        self.i32_at(4)
    }

    /// `si_code` (SI_USER 0, SI_TKILL -6, SI_QUEUE -1, > 0 from the kernel).
    pub fn code(&self) -> i32 {
        self.i32_at(8)
    }

    /// `si_pid` for signals sent by kill/tgkill/sigqueue (the union of
    /// fields starts at offset 16: it holds pointers, so it is 8-aligned).
    pub fn sender_pid(&self) -> i32 {
        self.i32_at(16)
    }
}

impl std::fmt::Debug for SigInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigInfo")
            .field("signo", &self.signo())
            .field("errno", &self.errno())
            .field("code", &self.code())
            .field("pid", &self.sender_pid())
            .finish_non_exhaustive()
    }
}

/// A thread's rseq registration (`struct ptrace_rseq_configuration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RseqConfig {
    /// Address of the registered `struct rseq` in the tracee.
    pub rseq_abi_pointer: u64,
    /// The size passed to rseq(2) (32 for glibc 2.35+, 20 for the original
    /// ABI).
    pub rseq_abi_size: u32,
    /// The flags passed to rseq(2).
    pub flags: u32,
    /// The abort-handler signature passed to rseq(2).
    pub signature: u32,
}

/// What kind of stop a thread is in, from `PTRACE_GET_SYSCALL_INFO`
/// (include/uapi/linux/ptrace.h `struct ptrace_syscall_info`, Linux 5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallStop {
    /// Not a syscall stop (`PTRACE_SYSCALL_INFO_NONE`).
    None,
    /// A syscall-enter stop for syscall `nr`.
    Entry {
        /// The syscall number.
        nr: u64,
    },
    /// A syscall-exit stop with return value `rval`.
    Exit {
        /// The return value (-errno on error).
        rval: i64,
    },
    /// A `PTRACE_EVENT_SECCOMP` stop.
    Seccomp,
}

/// Size of `struct ptrace_syscall_info` (24-byte head, 64-byte union).
const SYSCALL_INFO_SIZE: usize = 88;

/// Calls ptrace(2) with a pointer argument, returning its value.
///
/// # Safety
///
/// `data` must be valid for whatever `request` reads or writes through it,
/// given `addr` (sizes are passed in `addr` for the requests used here).
unsafe fn ptrace_raw(request: libc::c_uint, tid: Pid, addr: usize, data: *mut libc::c_void) -> Result<i64, Errno> {
    // SAFETY: forwarded from this function's contract: `data` is valid for
    // the access `request` makes through it.
    let ret = unsafe { libc::ptrace(request, tid.as_raw(), addr, data) };
    Errno::result(ret)
}

/// `PTRACE_O_SUSPEND_SECCOMP`: the tracee's seccomp filters do not run while
/// it is traced with it, so they cannot refuse the calls a dump or restore
/// injects. Only a tracer with CAP_SYS_ADMIN under no filter of its own may
/// set it; detaching ends it.
pub const SUSPEND_SECCOMP: Options = Options::from_bits_retain(libc::PTRACE_O_SUSPEND_SECCOMP);

/// One seccomp filter of a thread: its classic BPF program (`struct
/// sock_filter` array, 8 bytes an instruction) and whether it logs
/// (SECCOMP_FILTER_FLAG_LOG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompFilter {
    /// The instructions, as the kernel hands them back.
    pub program: Vec<u8>,
    /// Installed with SECCOMP_FILTER_FLAG_LOG.
    pub log: bool,
}

/// PTRACE_SECCOMP_GET_FILTER and PTRACE_GET_SECCOMP_METADATA
/// (<linux/ptrace.h>).
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_GET_SECCOMP_METADATA: libc::c_uint = 0x420d;
/// SECCOMP_FILTER_FLAG_LOG (<linux/seccomp.h>).
pub const SECCOMP_FILTER_FLAG_LOG: u64 = 2;

impl Seized {
    /// The seccomp filters of the stopped tracee, oldest first (the order
    /// to install them in again); empty when it has none.
    pub fn seccomp_filters(&self) -> Result<Vec<SeccompFilter>, Error> {
        let tid = self.pid();
        let mut newest_first = Vec::new();
        for index in 0.. {
            let err = |errno| Error::SeccompFilter { tid, index, errno };
            // SAFETY: a null buffer: the kernel only returns the count.
            let count =
                match unsafe { ptrace_raw(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, std::ptr::null_mut()) } {
                    Ok(n) => n as usize,
                    // Past the oldest filter, or no filter mode at all.
                    Err(Errno::ENOENT) if index > 0 => break,
                    Err(Errno::ENOENT | Errno::EMEDIUMTYPE) if index == 0 => break,
                    Err(e) => return Err(err(e)),
                };
            let mut program = vec![0u8; count * 8];
            // SAFETY: `program` holds `count` sock_filter instructions, as
            // many as the kernel said this filter has.
            unsafe { ptrace_raw(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, program.as_mut_ptr().cast()) }
                .map_err(err)?;
            // struct seccomp_metadata { __u64 filter_off; __u64 flags; }
            let mut meta = [index, 0u64];
            // SAFETY: `meta` is a live seccomp_metadata of the size passed.
            unsafe { ptrace_raw(PTRACE_GET_SECCOMP_METADATA, tid, 16, meta.as_mut_ptr().cast()) }.map_err(err)?;
            newest_first.push(SeccompFilter { program, log: meta[1] & SECCOMP_FILTER_FLAG_LOG != 0 });
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    /// `PTRACE_SETOPTIONS`: replaces the tracing options.
    pub fn set_options(&self, options: Options) -> Result<(), Error> {
        ptrace::setoptions(self.pid(), options).map_err(|errno| Error::SetOptions { tid: self.pid(), options, errno })
    }

    /// The general-purpose registers.
    pub fn get_regs(&self) -> Result<GpRegs, Error> {
        ptrace::getregs(self.pid()).map(GpRegs).map_err(|errno| Error::GetRegs { tid: self.pid(), errno })
    }

    /// Sets the general-purpose registers. The kernel refuses (EIO) segment
    /// selectors and flags a user task may not have.
    pub fn set_regs(&self, regs: &GpRegs) -> Result<(), Error> {
        ptrace::setregs(self.pid(), regs.0).map_err(|errno| Error::SetRegs { tid: self.pid(), errno })
    }

    /// The XSAVE-format extended state (`PTRACE_GETREGSET`, `NT_X86_XSTATE`).
    pub fn get_xstate(&self) -> Result<XState, Error> {
        let tid = self.pid();
        let mut buf = vec![0u8; xstate_buffer_size()];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: `iov` describes `buf`, which is live and writable for
        // `iov_len` bytes; the kernel writes at most that many and updates
        // `iov_len` in `iov`, which is itself live and writable.
        unsafe {
            ptrace_raw(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE as usize, (&raw mut iov).cast())
                .map_err(|errno| Error::GetXState { tid, errno })?;
        }
        let len = iov.iov_len.min(buf.len());
        buf.truncate(len);
        Ok(XState(buf))
    }

    /// Sets the extended state (`PTRACE_SETREGSET`, `NT_X86_XSTATE`).
    pub fn set_xstate(&self, xstate: &XState) -> Result<(), Error> {
        let tid = self.pid();
        // The kernel only reads through the iovec, but the API takes a
        // mutable pointer: copy rather than cast away constness.
        let mut buf = xstate.0.clone();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: `iov` describes `buf`, live for `iov_len` bytes, which the
        // kernel only reads; `iov` itself is live.
        unsafe {
            ptrace_raw(libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE as usize, (&raw mut iov).cast())
                .map_err(|errno| Error::SetXState { tid, errno })?;
        }
        Ok(())
    }

    /// The blocked-signal mask (bit `n - 1` for signal `n`).
    pub fn get_sigmask(&self) -> Result<u64, Error> {
        let tid = self.pid();
        let mut mask = 0u64;
        // SAFETY: `mask` is a live, writable 8-byte kernel sigset, the size
        // passed in `addr`.
        unsafe {
            ptrace_raw(libc::PTRACE_GETSIGMASK, tid, KERNEL_SIGSET_SIZE, (&raw mut mask).cast())
                .map_err(|errno| Error::GetSigmask { tid, errno })?;
        }
        Ok(mask)
    }

    /// Sets the blocked-signal mask. SIGKILL and SIGSTOP are silently
    /// dropped by the kernel.
    pub fn set_sigmask(&self, mask: u64) -> Result<(), Error> {
        let tid = self.pid();
        let mut mask = mask;
        // SAFETY: `mask` is a live 8-byte kernel sigset, the size passed in
        // `addr`; the kernel only reads it.
        unsafe {
            ptrace_raw(libc::PTRACE_SETSIGMASK, tid, KERNEL_SIGSET_SIZE, (&raw mut mask).cast())
                .map_err(|errno| Error::SetSigmask { tid, errno })?;
        }
        Ok(())
    }

    /// The queued signals without dequeuing them: the thread's own queue, or
    /// with `shared` the process-wide one.
    pub fn peek_siginfo(&self, shared: bool) -> Result<Vec<SigInfo>, Error> {
        const BATCH: usize = 32;
        let tid = self.pid();
        let mut out = Vec::new();
        let mut batch = [SigInfo([0; 128]); BATCH];
        loop {
            let mut args = libc::ptrace_peeksiginfo_args {
                off: out.len() as u64,
                flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
                nr: BATCH as i32,
            };
            // SAFETY: `args` is a live ptrace_peeksiginfo_args (read by the
            // kernel through `addr`) and `batch` is live and writable for
            // `nr` 128-byte siginfo records (`SigInfo` is a plain byte
            // array, so any bytes are valid).
            let n = unsafe {
                ptrace_raw(libc::PTRACE_PEEKSIGINFO, tid, (&raw mut args) as usize, batch.as_mut_ptr().cast())
            }
            .map_err(|errno| Error::PeekSiginfo { tid, errno })?;
            let n = usize::try_from(n).unwrap_or(0).min(BATCH);
            out.extend_from_slice(&batch[..n]);
            if n < BATCH {
                return Ok(out);
            }
        }
    }

    /// The siginfo of the signal-delivery-stop the thread is in
    /// (`PTRACE_GETSIGINFO`).
    pub fn get_siginfo(&self) -> Result<SigInfo, Error> {
        let tid = self.pid();
        let mut info = SigInfo([0; 128]);
        // SAFETY: `info` is a live, writable 128-byte buffer, the size of
        // the kernel's siginfo_t that PTRACE_GETSIGINFO copies out.
        unsafe {
            ptrace_raw(libc::PTRACE_GETSIGINFO, tid, 0, (&raw mut info.0).cast())
                .map_err(|errno| Error::GetSiginfo { tid, errno })?;
        }
        Ok(info)
    }

    /// Whether the thread is in a syscall-enter or syscall-exit stop.
    ///
    /// Read into a byte buffer: nix 0.30's `syscall_info` passes a zero
    /// buffer size, so the kernel copies nothing into the struct it then
    /// returns as initialised.
    pub fn syscall_stop(&self) -> Result<SyscallStop, Error> {
        let tid = self.pid();
        let mut buf = [0u8; SYSCALL_INFO_SIZE];
        // SAFETY: `buf` is live and writable for the SYSCALL_INFO_SIZE bytes
        // passed in `addr`; the kernel copies at most that many.
        unsafe {
            ptrace_raw(libc::PTRACE_GET_SYSCALL_INFO, tid, buf.len(), buf.as_mut_ptr().cast())
                .map_err(|errno| Error::SyscallInfo { tid, errno })?;
        }
        let u64_at = |off: usize| u64::from_le_bytes(buf[off..off + 8].try_into().expect("8 bytes"));
        Ok(match buf[0] {
            1 => SyscallStop::Entry { nr: u64_at(24) },
            2 => SyscallStop::Exit { rval: u64_at(24) as i64 },
            3 => SyscallStop::Seccomp,
            _ => SyscallStop::None,
        })
    }

    /// The thread's rseq registration, or `None` if it registered none.
    pub fn rseq_configuration(&self) -> Result<Option<RseqConfig>, Error> {
        let tid = self.pid();
        let mut conf =
            libc::ptrace_rseq_configuration { rseq_abi_pointer: 0, rseq_abi_size: 0, signature: 0, flags: 0, pad: 0 };
        // SAFETY: `conf` is a live, writable ptrace_rseq_configuration of
        // the size passed in `addr`; the kernel copies at most that much.
        unsafe {
            ptrace_raw(
                libc::PTRACE_GET_RSEQ_CONFIGURATION,
                tid,
                size_of::<libc::ptrace_rseq_configuration>(),
                (&raw mut conf).cast(),
            )
            .map_err(|errno| Error::RseqConfig { tid, errno })?;
        }
        Ok((conf.rseq_abi_pointer != 0).then_some(RseqConfig {
            rseq_abi_pointer: conf.rseq_abi_pointer,
            rseq_abi_size: conf.rseq_abi_size,
            flags: conf.flags,
            signature: conf.signature,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::{kill, Signal};

    use super::*;
    use crate::child::{spawn, Child, ChildAction};
    use crate::inject::test_support::{fork_child, raw, wait_blocked_in};
    use crate::ptrace::{Stop, PTRACE_EVENT_STOP};

    fn stopped(child: &mut Child) -> Seized {
        wait_blocked_in(child, libc::SYS_pause);
        let mut seized = Seized::seize(child.pid(), Options::PTRACE_O_EXITKILL).expect("PTRACE_SEIZE of our own child");
        let stop = seized.interrupt(Duration::from_secs(5)).expect("PTRACE_INTERRUPT");
        assert!(matches!(stop, Stop::Event { event: PTRACE_EVENT_STOP, .. }), "{stop:?}");
        seized
    }

    #[test]
    fn gp_regs_round_trip() {
        let mut child = spawn(ChildAction::Pause).expect("fork");
        let seized = stopped(&mut child);
        let orig = seized.get_regs().expect("PTRACE_GETREGS");
        assert_eq!(orig.0.orig_rax, libc::SYS_pause as u64, "not stopped inside pause: {orig:?}");
        let mut changed = orig;
        changed.0.r12 = 0x1234_5678_9abc_def0;
        seized.set_regs(&changed).expect("PTRACE_SETREGS");
        assert_eq!(seized.get_regs().unwrap(), changed, "r12 did not stick");
        seized.set_regs(&orig).expect("PTRACE_SETREGS back");

        let bytes = changed.to_bytes();
        assert_eq!(bytes.len(), 216);
        // r12 is the fourth field, rip the seventeenth, gs the last.
        assert_eq!(bytes[24..32], 0x1234_5678_9abc_def0u64.to_le_bytes());
        assert_eq!(bytes[128..136], changed.0.rip.to_le_bytes());
        assert_eq!(bytes[208..216], changed.0.gs.to_le_bytes());
        assert_eq!(GpRegs::from_bytes(&bytes), changed);
    }

    #[test]
    fn xstate_round_trip_and_features() {
        let mut child = spawn(ChildAction::Pause).expect("fork");
        let seized = stopped(&mut child);
        let xstate = seized.get_xstate().expect("PTRACE_GETREGSET NT_X86_XSTATE");
        let len = xstate.as_bytes().len();
        assert!(len >= XSTATE_MIN_SIZE, "xstate of {len} bytes");
        let features = xstate.xfeatures().expect("buffer too short for XCR0");
        // The buffer covers every enabled feature: the kernel sizes it
        // from XCR0 (CPUID 0xD subleaf 0 EBX is that size).
        let cpuid_size = std::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize;
        assert_eq!(len, cpuid_size, "xstate of {len} bytes, CPUID says {cpuid_size} for XCR0 {features:#x}");
        assert_eq!(xstate.xstate_bv().unwrap() & !features, 0, "xstate_bv outside xfeatures");
        let basic = xfeature::X87 | xfeature::SSE | xfeature::AVX;
        assert_eq!(features & basic, basic, "xfeatures {features:#x} lacks x87/SSE/AVX");
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        if cpuinfo.split_whitespace().any(|f| f == "avx512f") {
            assert_eq!(features & xfeature::AVX512, xfeature::AVX512, "xfeatures {features:#x} lacks AVX-512");
        }
        seized.set_xstate(&xstate).expect("PTRACE_SETREGSET of the same buffer");
        assert_eq!(seized.get_xstate().unwrap(), xstate);
        assert_eq!(XState::from_bytes(xstate.clone().into_bytes()), xstate);
    }

    #[test]
    fn sigmask_and_queued_signals_are_read_without_dequeuing() {
        const BLOCKED: u64 = (1 << (libc::SIGUSR1 - 1)) | (1 << (libc::SIGUSR2 - 1));
        let body = || {
            let set: u64 = BLOCKED;
            // SAFETY: `set` is a live 8-byte kernel sigset.
            let ret = unsafe { raw(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK as u64, (&raw const set) as u64, 0, 8) };
            if ret < 0 {
                return 1;
            }
            loop {
                // SAFETY: pause takes no arguments.
                unsafe { raw(libc::SYS_pause, 0, 0, 0, 0) };
            }
        };
        // SAFETY: the body makes raw syscalls only, with a pointer to its
        // own stack.
        let mut child = unsafe { fork_child(body) };
        let pid = child.pid();
        wait_blocked_in(&mut child, libc::SYS_pause);
        kill(pid, Signal::SIGUSR1).expect("kill");
        // SAFETY: tgkill takes no pointers.
        let ret = unsafe { libc::syscall(libc::SYS_tgkill, pid.as_raw(), pid.as_raw(), libc::SIGUSR2) };
        assert_eq!(ret, 0, "tgkill");
        let seized = stopped(&mut child);

        let mask = seized.get_sigmask().expect("PTRACE_GETSIGMASK");
        assert_eq!(mask, BLOCKED);
        for _ in 0..2 {
            let shared = seized.peek_siginfo(true).expect("PTRACE_PEEKSIGINFO shared");
            assert_eq!(shared.len(), 1, "{shared:?}");
            assert_eq!((shared[0].signo(), shared[0].code()), (libc::SIGUSR1, libc::SI_USER));
            assert_eq!(shared[0].sender_pid(), nix::unistd::getpid().as_raw());
            let private = seized.peek_siginfo(false).expect("PTRACE_PEEKSIGINFO");
            assert_eq!(private.len(), 1, "{private:?}");
            assert_eq!((private[0].signo(), private[0].code()), (libc::SIGUSR2, libc::SI_TKILL));
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            let v = status.lines().find_map(|l| l.strip_prefix(name)).expect(name).trim();
            u64::from_str_radix(v, 16).unwrap()
        };
        assert_eq!(field("ShdPnd:"), 1 << (libc::SIGUSR1 - 1), "SIGUSR1 no longer pending");
        assert_eq!(field("SigPnd:"), 1 << (libc::SIGUSR2 - 1), "SIGUSR2 no longer pending");

        seized.set_sigmask(BLOCKED | 1 << (libc::SIGHUP - 1)).expect("PTRACE_SETSIGMASK");
        assert_eq!(seized.get_sigmask().unwrap(), BLOCKED | 1 << (libc::SIGHUP - 1));
        // SIGKILL and SIGSTOP cannot be blocked.
        seized.set_sigmask(!0).unwrap();
        assert_eq!(seized.get_sigmask().unwrap(), !((1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1))));
        seized.set_sigmask(BLOCKED).unwrap();
    }

    #[test]
    fn a_generated_queue_longer_than_one_batch_is_listed_whole() {
        // Real-time signals queue one entry per kill; 40 exceeds one
        // PTRACE_PEEKSIGINFO batch of 32.
        let sig = libc::SIGRTMIN() + 2;
        let body = move || {
            let set: u64 = 1 << (sig - 1);
            // SAFETY: `set` is a live 8-byte kernel sigset.
            let ret = unsafe { raw(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK as u64, (&raw const set) as u64, 0, 8) };
            if ret < 0 {
                return 1;
            }
            loop {
                // SAFETY: pause takes no arguments.
                unsafe { raw(libc::SYS_pause, 0, 0, 0, 0) };
            }
        };
        // SAFETY: the body makes raw syscalls only, with a pointer to its
        // own stack.
        let mut child = unsafe { fork_child(body) };
        let pid = child.pid();
        wait_blocked_in(&mut child, libc::SYS_pause);
        for _ in 0..40 {
            // SAFETY: kill takes no pointers.
            assert_eq!(unsafe { libc::kill(pid.as_raw(), sig) }, 0);
        }
        let seized = stopped(&mut child);
        let queued = seized.peek_siginfo(true).unwrap();
        assert_eq!(queued.len(), 40);
        assert!(queued.iter().all(|s| s.signo() == sig));
    }

    #[test]
    fn rseq_registration_of_a_glibc_child() {
        let mut child = spawn(ChildAction::Pause).expect("fork");
        let seized = stopped(&mut child);
        let rseq = seized
            .rseq_configuration()
            .expect("PTRACE_GET_RSEQ_CONFIGURATION")
            .expect("no rseq registered: glibc 2.35+ registers one per thread unless glibc.pthread.rseq=0");
        // glibc's RSEQ_SIG on x86.
        assert_eq!(rseq.signature, 0x5305_3053);
        assert!(rseq.rseq_abi_size >= 20, "{rseq:?}");
        assert_ne!(rseq.rseq_abi_pointer, 0);
    }
}
