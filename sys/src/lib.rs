//! Every `unsafe` line of stasis: thin, safe, owning wrappers over the kernel
//! facilities that `nix` and `libc` do not wrap, or wrap too loosely.
//!
//! One module per kernel facility. Each returns an owning type that releases
//! what it holds on drop (a detached tracee, a closed fd, a reaped child), so
//! that no error path in the crates above can leak a half-seized process.
//! Every `unsafe` block states the invariant that makes it sound.
//!
//! Operations that could harm the agent if they succeeded halfway
//! (`PR_SET_MM_MAP`, `unshare(CLONE_NEWTIME)`, lowering an rlimit) are offered
//! as "try in a forked child" functions; [`child`] explains the rules such a
//! child lives by.

pub mod btrfs;
pub mod child;
pub mod clone3;
pub mod dm;
pub mod epoll;
pub mod fdtable;
pub mod fhandle;
#[cfg(target_arch = "x86_64")]
pub mod inject;
pub mod inotify;
pub mod kcmp;
pub mod mman;
pub mod mountinfo;
pub mod ns;
pub mod pagemap;
pub mod pidfd;
pub mod pidns;
pub mod prctl;
pub mod process_vm;
pub mod procmem;
pub mod ptrace;
#[cfg(target_arch = "x86_64")]
pub mod regs;
pub mod rlimit;
pub mod sched;
pub mod sock;
pub mod sysv;
pub mod tcp;
pub mod tty;
pub mod uffd;
pub mod writeback;

pub use nix::unistd::Pid;

/// The `nix` whose types ([`Pid`], [`Signal`], [`WaitStatus`], [`Errno`])
/// appear in this crate's API, so callers need not pin the same version.
pub use nix;
pub use nix::errno::Errno;
pub use nix::sys::signal::Signal;
pub use nix::sys::wait::WaitStatus;
