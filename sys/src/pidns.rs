//! A new PID namespace for a restored tree, under a small init.
//!
//! When the pids of an image are taken on this host, the tree is restored
//! into a new PID namespace (pid_namespaces(7)), where every pid is free.
//! The first process of a namespace is its init (pid 1): it adopts the
//! namespace's orphans, and when it ends the kernel kills everything else in
//! the namespace. [`PidNamespace::create`] makes that init, a child of the
//! agent created with `clone3(CLONE_NEWPID)`, which then:
//!
//! 1. while the tree is built, takes orders on a pipe: each is a pid, and
//!    the init makes a child at that pid in its namespace (`clone3` with a
//!    one-level `set_tid`), which only pauses until the agent seizes it and
//!    turns it into a restored process. The roots of the tree are therefore
//!    the init's children from the start, and see 1 as their parent (a root
//!    forked by a helper that leads its session, [`PidNamespace::set_root`],
//!    becomes the init's child when the helper exits);
//! 2. once told the tree runs, reaps every process that ends in the
//!    namespace, passes every signal sent to it to the root, and exits with
//!    the root's status when no process is left.
//!
//! If the agent dies or gives up before saying the tree runs, the init reads
//! end-of-file and exits, and with it every half-built process of the
//! namespace: nothing is left behind.
//!
//! The init is a copy of the agent made by clone3 without exec, so, like any
//! child of a multi-threaded process, it makes only async-signal-safe calls
//! (see [`crate::child`]). It keeps no fd of the agent but one the caller
//! names ([`PidNamespace::create`]'s `keep`), which the processes it makes
//! inherit at the same number: a restore passes a pidfd of the agent there,
//! through which each process fetches its fds (a process in the namespace
//! cannot open a pidfd of the agent by pid: the agent is not in it).
//!
//! The init also gets a mount namespace of its own, a copy of the agent's
//! with every mount made a slave, where it mounts a proc of the new PID
//! namespace on /proc: the tree's `/proc/N` is then its own process N. Asked
//! to ([`PidNamespace::create`]'s `devpts`), it mounts a devpts instance of
//! its own on /dev/pts too (its ptmx bound on /dev/ptmx), where every
//! pseudo-terminal index is free: the agent makes the tree's terminal pairs
//! there, through `/proc/INIT/root/dev/pts/ptmx`.

use std::fs;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::child::{exit_now, last_errno, Child};

/// Errors of [`PidNamespace`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// pipe2(2) for talking to the init failed.
    #[error("cannot make a pipe to the namespace's init")]
    Pipe(#[source] Errno),
    /// clone3(CLONE_NEWPID) failed (EPERM: no CAP_SYS_ADMIN; EINVAL: no
    /// CONFIG_PID_NS; ENOSPC: too many nested namespaces).
    #[error("cannot create a PID namespace")]
    Create(#[source] Errno),
    /// The init could not make a process at `pid` (EEXIST: taken).
    #[error("cannot create process {pid} in the new PID namespace")]
    Spawn {
        /// The pid asked for, inside the namespace.
        pid: Pid,
        /// The kernel's answer to the init's clone3.
        #[source]
        errno: Errno,
    },
    /// The init did not answer: it died, or the pipe broke.
    #[error("the PID namespace's init (pid {init}) stopped answering")]
    InitGone {
        /// The init's pid in the agent's namespace.
        init: Pid,
        /// What reading or writing the pipe gave.
        #[source]
        errno: Errno,
    },
    /// The init could not mount a devpts of its own on /dev/pts.
    #[error("the PID namespace's init cannot mount a devpts of its own on /dev/pts")]
    Devpts(#[source] Errno),
    /// The process the init made is not among its children in /proc.
    #[error("process {pid} of the new PID namespace is not to be found in /proc/{init}/task/{init}/children")]
    NotFound {
        /// The pid inside the namespace.
        pid: Pid,
        /// The init's pid in the agent's namespace.
        init: Pid,
    },
}

/// The order that ends the init's building phase.
const ORDER_RUN: i32 = 0;

/// A PID namespace with a stasis init, while a tree is restored into it.
/// Dropping it without [`PidNamespace::release`] ends the init (`Child`
/// kills it; so would the end-of-file on its orders), and so every process
/// of the namespace.
#[derive(Debug)]
pub struct PidNamespace {
    init: Child,
    orders: OwnedFd,
    answers: OwnedFd,
}

impl PidNamespace {
    /// Creates the namespace and its init; `keep` stays open in the init
    /// and in every process it spawns, at the same number.
    pub fn create(keep: BorrowedFd<'_>, devpts: bool) -> Result<PidNamespace, Error> {
        let (orders_r, orders_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::Pipe)?;
        let (answers_r, answers_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::Pipe)?;
        let fds =
            InitFds { orders: orders_r.as_raw_fd(), answers: answers_w.as_raw_fd(), keep: keep.as_raw_fd(), devpts };
        // SAFETY: clone_args is a plain struct of u64 fields for which
        // all-zero is the documented "no options" value.
        let mut args: libc::clone_args = unsafe { mem::zeroed() };
        // A mount namespace too, for a /proc of the new PID namespace.
        args.flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64;
        args.exit_signal = libc::SIGCHLD as u64;
        // SAFETY: `args` is a valid clone_args of the size passed. Without
        // CLONE_VM the child runs on a copy-on-write copy of our memory and
        // only runs `init_main`, which makes async-signal-safe calls only
        // and never returns.
        let ret = unsafe {
            libc::syscall(libc::SYS_clone3, &mut args as *mut libc::clone_args, size_of::<libc::clone_args>())
        };
        match ret {
            -1 => Err(Error::Create(Errno::last())),
            0 => init_main(fds),
            pid => {
                let ns = PidNamespace {
                    init: Child::from_pid(Pid::from_raw(pid as libc::pid_t)),
                    orders: orders_w,
                    answers: answers_r,
                };
                drop((orders_r, answers_w));
                // Its mounts are made before it answers anything.
                let mut ready = [0u8; 4];
                if !transfer(ns.answers.as_raw_fd(), &mut ready, false) {
                    return Err(Error::InitGone { init: ns.init.pid(), errno: Errno::last() });
                }
                match i32::from_ne_bytes(ready) {
                    0 => Ok(ns),
                    errno => Err(Error::Devpts(Errno::from_raw(errno))),
                }
            }
        }
    }

    /// The init's pid, in the agent's namespace.
    pub fn init_pid(&self) -> Pid {
        self.init.pid()
    }

    /// Has the init make a process at `pid` inside the namespace that
    /// pauses until killed; returns its pid in the agent's namespace.
    pub fn spawn_paused(&mut self, pid: Pid) -> Result<Pid, Error> {
        let init = self.init_pid();
        let gone = |errno| Error::InitGone { init, errno };
        nix::unistd::write(&self.orders, &pid.as_raw().to_ne_bytes()).map_err(gone)?;
        let mut answer = [0u8; 4];
        let n = nix::unistd::read(&self.answers, &mut answer).map_err(gone)?;
        if n != answer.len() {
            return Err(gone(Errno::EPIPE));
        }
        let made = i32::from_ne_bytes(answer);
        if made < 0 {
            return Err(Error::Spawn { pid, errno: Errno::from_raw(-made) });
        }
        self.host_pid(pid)
    }

    /// Names the process (by its pid inside) whose signals the init
    /// forwards and whose status it exits with: by default the first it
    /// made, which is not the root when that one is a short-lived helper
    /// (one that leads a session whose leader had exited, and forks the
    /// root into it).
    pub fn set_root(&mut self, pid: Pid) -> Result<(), Error> {
        let init = self.init_pid();
        let gone = |errno| Error::InitGone { init, errno };
        nix::unistd::write(&self.orders, &(-pid.as_raw()).to_ne_bytes()).map_err(gone)?;
        let mut answer = [0u8; 4];
        let n = nix::unistd::read(&self.answers, &mut answer).map_err(gone)?;
        if n != answer.len() {
            return Err(gone(Errno::EPIPE));
        }
        Ok(())
    }

    /// The pid, in the agent's namespace, of the init's child that has
    /// `pid` inside the namespace.
    fn host_pid(&self, pid: Pid) -> Result<Pid, Error> {
        let init = self.init_pid();
        // A process made by clone3 is in the list once the call returned,
        // which the init's answer says it did; retry briefly all the same.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let children = fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                if ns_pids(Pid::from_raw(child)).last() == Some(&pid.as_raw()) {
                    return Ok(Pid::from_raw(child));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::NotFound { pid, init });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Tells the init that the tree runs, and lets it go on alone: it no
    /// longer takes orders, and outlives the agent. Returns its pid.
    pub fn release(self) -> Result<Pid, Error> {
        let PidNamespace { init, orders, answers: _ } = self;
        let written = nix::unistd::write(&orders, &ORDER_RUN.to_ne_bytes());
        written.map_err(|errno| Error::InitGone { init: init.pid(), errno })?;
        Ok(init.disown())
    }
}

/// The pids of a process, one per PID namespace level from the agent's
/// (or rather /proc's) down to its own: the `NSpid` line of its status.
/// Empty if the process is gone.
pub fn ns_pids(pid: Pid) -> Vec<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|rest| rest.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// The init's fds, by number.
#[derive(Clone, Copy)]
struct InitFds {
    orders: RawFd,
    answers: RawFd,
    keep: RawFd,
    /// Mount a devpts of its own.
    devpts: bool,
}

/// Closes every fd but those in `keep`.
fn close_all_but(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut from: u32 = 0;
    for &fd in keep.iter() {
        let fd = fd as u32;
        if fd > from {
            // SAFETY: close_range takes three integers by value; the fds it
            // closes belong to this process alone (a copy of the agent's
            // table), and nothing in the init uses them.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}

/// Reads or writes all of `buf`; false on error or end-of-file.
fn transfer(fd: RawFd, buf: &mut [u8; 4], write: bool) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let n = if write {
            // SAFETY: `rest` is valid for reading its length; write(2) is
            // async-signal-safe.
            unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) }
        } else {
            // SAFETY: `rest` is valid for writing its length; read(2) is
            // async-signal-safe.
            unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) }
        };
        if n < 0 && last_errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return false;
        }
        done += n as usize;
    }
    true
}

/// close(2), async-signal-safe, errors ignored.
fn close(fd: RawFd) {
    // SAFETY: closes an fd of this process's own table that nothing else in
    // it uses.
    unsafe { libc::close(fd) };
}

/// Blocks every signal (`all`) or none.
fn block_signals(all: bool) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data for which all-zero is a valid value.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    if all {
        // SAFETY: writes only `set`.
        unsafe { libc::sigfillset(&mut set) };
    }
    // SAFETY: reads `set` and changes only the calling thread's mask.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    set
}

/// The init: see the module docs. Async-signal-safe calls only: no
/// allocation, no locks, no stdio.
fn init_main(fds: InitFds) -> ! {
    close_all_but(&mut [fds.orders, fds.answers, fds.keep]);
    mount_own_proc();
    let mut ready = if fds.devpts { mount_own_devpts() } else { 0 }.to_ne_bytes();
    if !transfer(fds.answers, &mut ready, true) {
        exit_now(1);
    }
    // SAFETY: chdir takes a NUL-terminated path; the init must not pin the
    // agent's working directory (and its mount).
    unsafe { libc::chdir(c"/".as_ptr()) };
    // Every signal blocked, to be taken with sigwaitinfo: a blocked signal
    // reaches a namespace's init even without a handler.
    let all = block_signals(true);
    let mut root: libc::pid_t = 0;
    loop {
        let mut order = [0u8; 4];
        if !transfer(fds.orders, &mut order, false) {
            // The agent gave up or died: the namespace ends with the init.
            exit_now(1);
        }
        let order = i32::from_ne_bytes(order);
        if order == ORDER_RUN {
            break;
        }
        let made = if order < 0 {
            // Not a process to make: the root, made by another.
            root = -order;
            0
        } else {
            let made = spawn_paused(order, fds);
            if made > 0 && root == 0 {
                root = made;
            }
            made
        };
        if !transfer(fds.answers, &mut made.to_ne_bytes(), true) {
            exit_now(1);
        }
    }
    close(fds.orders);
    close(fds.answers);
    close(fds.keep);
    let mut root_status: i32 = 0;
    loop {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into the int passed.
            let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
            if reaped > 0 {
                if reaped == root {
                    root_status = status;
                }
                continue;
            }
            if reaped < 0 && last_errno() == libc::ECHILD {
                let code = if libc::WIFEXITED(root_status) {
                    libc::WEXITSTATUS(root_status)
                } else {
                    128 + libc::WTERMSIG(root_status)
                };
                exit_now(code);
            }
            break;
        }
        // SAFETY: siginfo_t is plain data for which all-zero is valid.
        let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
        // SAFETY: reads `all`, writes `info`.
        let sig = unsafe { libc::sigwaitinfo(&all, &mut info) };
        if sig > 0 && sig != libc::SIGCHLD && root > 0 {
            // SAFETY: kill takes integers by value.
            unsafe { libc::kill(root, sig) };
        }
    }
}

/// In the init's new mount namespace (a copy of the agent's): make every
/// mount a slave (mounts of the host still show inside, none made inside
/// reaches the host), then mount a proc of the new PID namespace on /proc,
/// so that /proc/N inside is the namespace's process N. Without it the tree
/// keeps seeing the host's /proc; nothing else depends on it.
fn mount_own_proc() {
    let flags = (libc::MS_REC | libc::MS_SLAVE) as libc::c_ulong;
    // SAFETY: mount takes NUL-terminated strings (or null) and integers.
    let slave = unsafe { libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
    if slave != 0 {
        return;
    }
    let flags = (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong;
    // SAFETY: as above.
    unsafe { libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), flags, std::ptr::null()) };
}

/// In the init's mount namespace: a devpts instance of its own on /dev/pts,
/// its ptmx bound on /dev/ptmx. Returns 0 or the errno.
fn mount_own_devpts() -> i32 {
    let flags = (libc::MS_NOSUID | libc::MS_NOEXEC) as libc::c_ulong;
    // SAFETY: mount takes NUL-terminated strings and integers.
    let r = unsafe {
        libc::mount(
            c"devpts".as_ptr(),
            c"/dev/pts".as_ptr(),
            c"devpts".as_ptr(),
            flags,
            c"newinstance,ptmxmode=0666,mode=0620".as_ptr().cast(),
        )
    };
    if r != 0 {
        return last_errno();
    }
    // SAFETY: as above.
    let r = unsafe {
        libc::mount(c"/dev/pts/ptmx".as_ptr(), c"/dev/ptmx".as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
    };
    if r != 0 {
        return last_errno();
    }
    0
}

/// In the init: a child at `pid` that pauses; returns its pid or -errno.
fn spawn_paused(pid: i32, fds: InitFds) -> i32 {
    let tid: libc::pid_t = pid;
    // SAFETY: as in PidNamespace::create.
    let mut args: libc::clone_args = unsafe { mem::zeroed() };
    args.exit_signal = libc::SIGCHLD as u64;
    args.set_tid = &tid as *const libc::pid_t as u64;
    args.set_tid_size = 1;
    // SAFETY: `args` and `tid` are valid for the call; the child only makes
    // async-signal-safe calls and never returns.
    let ret =
        unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut libc::clone_args, size_of::<libc::clone_args>()) };
    match ret {
        -1 => -last_errno(),
        0 => {
            // Not the init's pipes; signals as a new process has them (the
            // restore sets the mask it needs).
            close(fds.orders);
            close(fds.answers);
            block_signals(false);
            loop {
                // SAFETY: pause(2) only blocks until a signal arrives.
                unsafe { libc::pause() };
            }
        }
        made => made as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn spawns_at_the_asked_pid_and_ends_the_namespace_when_dropped() {
        let keep = fs::File::open("/dev/null").unwrap();
        let mut ns = PidNamespace::create(keep.as_fd(), false).expect("a PID namespace (root, CONFIG_PID_NS)");
        let init = ns.init_pid();
        assert_eq!(ns_pids(init).last(), Some(&1), "the init is pid 1 inside");
        let host = ns.spawn_paused(Pid::from_raw(4242)).unwrap();
        assert_eq!(ns_pids(host).last(), Some(&4242));
        assert_eq!(ns_pids(host).first(), Some(&host.as_raw()));
        let inside = fs::read_to_string(format!("/proc/{host}/root/proc/4242/stat")).unwrap_or_default();
        assert!(inside.starts_with("4242 "), "the namespace's /proc shows {inside:?} as its process 4242");
        let host_proc = fs::read_link("/proc/self").unwrap();
        assert_ne!(host_proc, std::path::PathBuf::from("1"), "the host's /proc was replaced");
        let kept = fs::read_link(format!("/proc/{host}/fd/{}", keep.as_raw_fd())).unwrap();
        assert_eq!(kept, std::path::Path::new("/dev/null"), "the kept fd is inherited at its number");
        let taken = ns.spawn_paused(Pid::from_raw(4242)).unwrap_err();
        assert!(matches!(taken, Error::Spawn { errno: Errno::EEXIST, .. }), "{taken:?}");
        drop(ns);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ns_pids(host).last() == Some(&4242) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ns_pids(host).last() != Some(&4242), "the namespace's process outlived a dropped namespace");
    }

    #[test]
    fn a_released_init_passes_signals_to_the_root_and_exits_with_its_status() {
        let keep = fs::File::open("/dev/null").unwrap();
        let mut ns = PidNamespace::create(keep.as_fd(), false).unwrap();
        let root = ns.spawn_paused(Pid::from_raw(77)).unwrap();
        let init = ns.init_pid();
        let mut init_child = Child::from_pid(init);
        ns.release().unwrap();
        nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = init_child.wait_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(init, 128 + libc::SIGTERM));
        assert!(ns_pids(root).last() != Some(&77));
    }

    #[test]
    fn a_root_named_with_set_root_is_the_one_the_init_serves() {
        let keep = fs::File::open("/dev/null").unwrap();
        let mut ns = PidNamespace::create(keep.as_fd(), false).unwrap();
        let helper = ns.spawn_paused(Pid::from_raw(78)).unwrap();
        let root = ns.spawn_paused(Pid::from_raw(79)).unwrap();
        ns.set_root(Pid::from_raw(79)).unwrap();
        let init = ns.init_pid();
        let mut init_child = Child::from_pid(init);
        ns.release().unwrap();
        nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ns_pids(root).last() == Some(&79) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ns_pids(root).last() != Some(&79), "SIGTERM did not reach the named root");
        assert_eq!(ns_pids(helper).last(), Some(&78), "the first process made got the signal too");
        nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGKILL).unwrap();
        let status = init_child.wait_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(init, 128 + libc::SIGTERM), "the root's status");
    }
}
