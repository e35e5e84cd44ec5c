//! `restore`: bring a process back from an image, at its original pid and
//! thread ids, driven entirely from outside ("puppet" restore).
//!
//! 1. Open and verify the image; check this kernel has the image's vdso
//!    layout and this CPU its register state; re-create every fd object in
//!    the agent (refusing files that changed since the dump); wait until the
//!    pid and thread ids are free, or, when a live process holds one, go
//!    into a new PID namespace where they all are ([`PidNamespaceMode`]).
//! 2. Create the puppet: a child of the agent at the original pid
//!    (clone3 with set_tid), which pauses and is seized; in a new PID
//!    namespace, a child of its init ([`stasis_sys::pidns`]) at that pid.
//! 3. Through injected system calls ([`stasis_sys::inject`]): map a
//!    trampoline (`syscall`) and a scratch page in a gap free in both the
//!    puppet's and the image's layout, close every inherited fd, unmap all
//!    the agent's memory, move the vdso and vvar to the image's addresses,
//!    map every recorded mapping, and write the stored pages through
//!    /proc/PID/mem. Then the mm fields (PR_SET_MM_MAP), fds (fetched with
//!    pidfd_getfd through a pidfd of the agent the puppet inherited), cwd,
//!    umask, rlimits, signal handlers, itimers, process attributes, threads
//!    (clone3 with set_tid, each stopped before running), per-thread state,
//!    and pending signals.
//! 4. Unmap the trampoline, set every thread's registers (with the
//!    syscall-restart fix-ups of [`resume`]) and signal mask, and detach:
//!    the process runs on, and is no longer the agent's concern.
//!
//! On any failure the puppet is killed before anything of it can run:
//! nothing is ever left half-restored.

mod deleted;
mod fds;
mod layout;
pub mod lazy;
mod pty;
mod resume;
mod shmem;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stasis_image::records::{fd, Process, ProcessTree, VmaKind};
use stasis_image::{Image, ReadError};
use stasis_sys::child::{Child, ChildAction};
use stasis_sys::inject::{find_syscall_site, Injection};
use stasis_sys::nix::libc;
use stasis_sys::pidns::PidNamespace;
use stasis_sys::process_vm::RemoteAddr;
use stasis_sys::procmem::ProcMem;
use stasis_sys::ptrace::{Options, Seized};
use stasis_sys::regs::{GpRegs, XState};
use stasis_sys::{clone3, Pid, Signal};

pub use fds::FdError;

use crate::proc;
use layout::Current;

/// What to restore and how.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub images: PathBuf,
    /// Restore even when a file the process had open changed since.
    pub allow_changed_files: bool,
    /// How long to wait for the original pid to become free.
    pub pid_timeout: Duration,
    pub cancel: Option<Arc<AtomicBool>>,
    /// Told the bytes of memory written so far, and the total.
    pub progress: Option<crate::ProgressFn>,
    /// When to restore into a new PID namespace.
    pub pid_namespace: PidNamespaceMode,
    /// (device at dump, device now) of a volume rolled back to the image's
    /// snapshot: its files keep their inodes on a new device.
    pub moved_devices: Vec<(u64, u64)>,
    /// Fds of the agent's that stand for the outside ends of external
    /// pipes and for terminals (`--inherit-fd`).
    pub inherit: Vec<InheritFd>,
    /// Give the tree's terminals the restoring stasis's own terminal
    /// (`--shell-job`).
    pub shell_job: bool,
}

/// An fd of the agent's handed to the restored tree in place of an object
/// the tree shared with the outside, as CRIU's `--inherit-fd`: a pipe
/// whose other end was outside the tree, or a terminal. The tree's fds on
/// that object become this fd's open file description (with the status
/// flags they had), so the tree goes on writing to (or reading from)
/// whatever the caller passed, a logger's pipe for instance. Bytes queued
/// in an old pipe are not carried over into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InheritFd {
    /// The fd, open in the agent.
    pub fd: i32,
    /// What it stands for.
    pub what: Inherited,
}

/// The object of the image an [`InheritFd`] stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Inherited {
    /// A pipe, by its id in the image (its inode at dump time).
    Pipe(u64),
    /// A terminal, by its device number.
    Tty(u64),
}

impl std::fmt::Display for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inherited::Pipe(id) => write!(f, "pipe:[{id}]"),
            Inherited::Tty(rdev) => write!(f, "tty:[{}:{}]", crate::fd::dev_major(*rdev), crate::fd::dev_minor(*rdev)),
        }
    }
}

impl std::str::FromStr for InheritFd {
    type Err = String;

    /// `fd[N]:pipe:[INODE]` or `fd[N]:tty:[MAJOR:MINOR]`, the object as
    /// `stasis inspect` shows it.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not fd[N]:pipe:[INODE] or fd[N]:tty:[MAJOR:MINOR] (the object as `stasis inspect` shows it)"
            )
        };
        let (fd, key) = s.strip_prefix("fd[").and_then(|r| r.split_once("]:")).ok_or_else(bad)?;
        let fd = fd.parse::<i32>().ok().filter(|fd| *fd >= 0).ok_or_else(bad)?;
        let what = if let Some(pipe) = key.strip_prefix("pipe:[").and_then(|r| r.strip_suffix(']')) {
            Inherited::Pipe(pipe.parse().map_err(|_| bad())?)
        } else if let Some(tty) = key.strip_prefix("tty:[").and_then(|r| r.strip_suffix(']')) {
            let (major, minor) = tty.split_once(':').ok_or_else(bad)?;
            let (major, minor): (u64, u64) = (major.parse().map_err(|_| bad())?, minor.parse().map_err(|_| bad())?);
            Inherited::Tty(proc::makedev(major, minor))
        } else {
            return Err(bad());
        };
        Ok(InheritFd { fd, what })
    }
}

impl std::fmt::Display for InheritFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fd[{}]:{}", self.fd, self.what)
    }
}

/// Every fd of the tree, with its process: the processes' own and those in
/// flight (pid 0).
fn all_fds(tree: &ProcessTree) -> impl Iterator<Item = (i32, &stasis_image::records::Fd)> {
    let own = tree.processes.iter().flat_map(|p| p.fds.iter().map(move |f| (p.pid, f)));
    own.chain(tree.unix_sockets.iter().flat_map(|s| &s.passed).flat_map(|m| &m.fds).map(|f| (0, f)))
}

/// Each inherited fd names an external pipe or a terminal of the image
/// once, and is open in the agent (for the direction the tree used a pipe
/// in).
fn check_inherited(tree: &ProcessTree, inherit: &[InheritFd]) -> Result<(), RestoreError> {
    use stasis_image::records::PipeEnds;
    let bad = |i: &InheritFd, what: String| RestoreError::Incompatible(format!("--inherit-fd {i}: {what}"));
    let mut named = HashSet::new();
    for i in inherit {
        if !named.insert(i.what) {
            return Err(bad(i, format!("{} is named twice", i.what)));
        }
        let given = stasis_sys::fdtable::dup_own(i.fd)
            .map_err(|e| bad(i, format!("fd {} is not open in stasis ({e})", i.fd)))?;
        let flags = stasis_sys::nix::fcntl::fcntl(&given, stasis_sys::nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| bad(i, format!("F_GETFL of fd {}: {e}", i.fd)))?;
        let mode = flags & libc::O_ACCMODE;
        let id = match i.what {
            Inherited::Pipe(id) => id,
            Inherited::Tty(rdev) => {
                if !all_fds(tree).any(|(_, f)| matches!(&f.kind, Some(fd::Kind::Tty(t)) if t.rdev == rdev)) {
                    return Err(bad(
                        i,
                        format!("the image has no terminal {} (its terminals: {})", i.what, terminals(tree)),
                    ));
                }
                continue;
            }
        };
        let Some(pipe) = tree.pipes.iter().find(|p| p.id == id) else {
            let external: Vec<String> =
                tree.pipes.iter().filter(|p| p.external()).map(|p| format!("pipe:[{}]", p.id)).collect();
            let has = match external.is_empty() {
                true => "none".to_owned(),
                false => external.join(", "),
            };
            return Err(bad(i, format!("the image has no pipe:[{id}] (its external pipes: {has})")));
        };
        match pipe.ends() {
            PipeEnds::Both => {
                return Err(bad(
                    i,
                    format!(
                    "both ends of pipe:[{id}] were in the tree; only a pipe with an end outside it can be inherited"
                ),
                ))
            }
            PipeEnds::ReadOnly if mode == libc::O_WRONLY => {
                return Err(bad(i, format!("the tree read from pipe:[{id}] but fd {} is open write-only", i.fd)))
            }
            PipeEnds::WriteOnly if mode == libc::O_RDONLY => {
                return Err(bad(i, format!("the tree wrote to pipe:[{id}] but fd {} is open read-only", i.fd)))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The image's terminals, as --inherit-fd names them.
fn terminals(tree: &ProcessTree) -> String {
    let mut all: Vec<String> = all_fds(tree)
        .filter_map(|(_, f)| match &f.kind {
            Some(fd::Kind::Tty(t)) => Some(format!("{} {}", t.path, Inherited::Tty(t.rdev))),
            _ => None,
        })
        .collect();
    all.sort();
    all.dedup();
    if all.is_empty() {
        return "none".into();
    }
    all.join(", ")
}

/// What a restore of `tree` would find gone or could not make again,
/// checked by a dump before it writes anything (and so before it kills the
/// tree): a root directory removed, a file, FIFO, device node or mapped
/// file not at its path any more (or another one there, or its directory
/// gone), a pending SIGTRAP, an fd's signal owner outside the tree, a
/// pseudo-terminal controlling a session led from outside. Each names the
/// process and the object; empty when all is there.
pub fn restorable_problems(tree: &ProcessTree) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut problems = Vec::new();
    for p in &tree.processes {
        // A debugger's breakpoint or single step, which cannot be made
        // again faithfully.
        let mut pending = p.threads.iter().flat_map(|t| &t.pending).chain(&p.shared_pending);
        if pending.any(|s| s.raw.get(..4) == Some(&libc::SIGTRAP.to_le_bytes()[..])) {
            problems.push(format!("process {}: a SIGTRAP is pending (not supported)", p.pid));
        }
        // An fd's signals go to a process or group of the tree, made again.
        for f in &p.fds {
            let Some(o) = &f.owner else { continue };
            let ours = match o.kind {
                2 => tree.processes.iter().any(|q| q.pgid == o.pid),
                _ => tree.processes.iter().any(|q| q.threads.iter().any(|t| t.tid == o.pid)),
            };
            if !ours {
                problems.push(format!(
                    "process {}: fd {} sends its signals (F_SETOWN) to {} {}, outside the tree (not supported)",
                    p.pid,
                    f.fd,
                    if o.kind == 2 { "process group" } else { "process" },
                    o.pid
                ));
            }
        }
    }
    // The session a pair controls takes it again through its leader.
    for t in tree.ptys.iter().filter(|t| t.session != 0) {
        if !tree.processes.iter().any(|p| p.pid == t.session && p.sid == t.session) {
            problems.push(format!(
                "pseudo-terminal /dev/pts/{} is the controlling terminal of session {}, whose leader is not in the \
                 tree (not supported yet)",
                t.index, t.session
            ));
        }
    }
    let same = |path: &str, dev: u64, ino: u64| std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == (dev, ino));
    // An fd on a symbolic link itself: the link.
    let same_link = |path: &str, dev: u64, ino: u64| {
        std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == (dev, ino))
    };
    for p in &tree.processes {
        // A removed working directory is made again for the restore, then
        // removed (in the nearest directory still there when its own was
        // removed too).
        match p.cwd.strip_suffix(" (deleted)") {
            // The /proc directory of a process that has exited: a helper's
            // stands for it.
            Some(gone) if deleted::dead_proc_dir(gone).is_some() => {}
            Some(gone) if deleted::in_kernel_filesystem(gone) => problems.push(format!(
                "process {}: its working directory {gone} was removed in a filesystem where it cannot be made again \
                 (not supported)",
                p.pid
            )),
            Some(_) => {}
            None if !std::fs::metadata(&p.cwd).is_ok_and(|m| m.is_dir()) => {
                problems.push(format!("process {}: its working directory {} is not there any more", p.pid, p.cwd))
            }
            None => {}
        }
        if p.root.ends_with(" (deleted)") || !std::fs::metadata(&p.root).is_ok_and(|m| m.is_dir()) {
            problems.push(format!("process {}: its root directory {} was removed (not supported yet)", p.pid, p.root));
        }
        for v in p.vmas.iter().filter(|v| v.kind == VmaKind::File as i32) {
            let Some(f) = v.file.as_ref().filter(|f| !f.deleted) else { continue };
            if !same(&f.path, f.dev, f.ino) {
                problems.push(format!("process {}: mapped file {} is not at its path any more", p.pid, f.path));
            }
        }
    }
    for (pid, f) in all_fds(tree) {
        let at = if pid == 0 { "an fd in flight".to_owned() } else { format!("process {pid}: fd {}", f.fd) };
        match &f.kind {
            Some(fd::Kind::File(file))
                if !file.deleted
                    && !match file.mode & libc::S_IFMT {
                        libc::S_IFLNK => same_link(&file.path, file.dev, file.ino),
                        _ => same(&file.path, file.dev, file.ino),
                    } =>
            {
                problems.push(format!("{at}: {} is not at its path any more (renamed or removed)", file.path))
            }
            // One unlinked while open is made again (deleted.rs).
            Some(fd::Kind::Fifo(fifo)) => {
                let Some(file) = fifo.file.as_ref().filter(|f| !f.deleted) else { continue };
                if !std::fs::metadata(&file.path).is_ok_and(|m| m.file_type().is_fifo()) {
                    problems.push(format!("{at}: the FIFO {} is not there any more", file.path));
                }
            }
            Some(fd::Kind::Device(d))
                if !d.deleted && !std::fs::metadata(&d.path).is_ok_and(|m| m.rdev() == d.rdev) =>
            {
                problems.push(format!("{at}: the device node {} is not at its path any more", d.path))
            }
            _ => {}
        }
    }
    problems
}

/// Everything the restore finds again by name must be what was dumped,
/// checked before anything is made: a FIFO still a FIFO (the same one,
/// unless `allow_changed`), a device node still the same device, a unix
/// socket's name free (or held by a socket file nothing answers on any
/// more). Each mismatch names the fd and the object.
fn check_named_objects(tree: &ProcessTree, allow_changed: bool, moved: &[(u64, u64)]) -> Result<(), RestoreError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let whose = |pid: i32, fd: i32| match pid {
        0 => "an fd in flight".to_owned(),
        _ => format!("fd {fd} of process {pid}"),
    };
    let refuse = |who: String, what: String| RestoreError::Incompatible(format!("{who} {what}"));
    for (pid, f) in all_fds(tree) {
        match &f.kind {
            Some(fd::Kind::Fifo(fifo)) => {
                let Some(file) = fifo.file.as_ref().filter(|f| !f.deleted) else { continue };
                let meta = std::fs::symlink_metadata(&file.path).map_err(|e| {
                    refuse(whose(pid, f.fd), format!("is the FIFO {}, which is not there now: {e}", file.path))
                })?;
                if !meta.file_type().is_fifo() {
                    return Err(refuse(
                        whose(pid, f.fd),
                        format!("is the FIFO {}, which is no FIFO now (a {:?})", file.path, meta.file_type()),
                    ));
                }
                let dev = moved.iter().find(|(was, _)| *was == file.dev).map_or(file.dev, |(_, now)| *now);
                if !allow_changed && (meta.dev(), meta.ino()) != (dev, file.ino) {
                    return Err(refuse(
                        whose(pid, f.fd),
                        format!(
                            "is the FIFO {}, which is another FIFO now (inode {}, was {}); pass \
                             --allow-changed-files to restore anyway",
                            file.path,
                            meta.ino(),
                            file.ino
                        ),
                    ));
                }
            }
            Some(fd::Kind::Device(d)) if !d.deleted => {
                let meta = std::fs::metadata(&d.path).map_err(|e| {
                    refuse(whose(pid, f.fd), format!("is the device {}, which is not there now: {e}", d.path))
                })?;
                if !meta.file_type().is_char_device() || meta.rdev() != d.rdev {
                    let dev = |r: u64| format!("{}:{}", crate::fd::dev_major(r), crate::fd::dev_minor(r));
                    return Err(refuse(
                        whose(pid, f.fd),
                        format!(
                            "is the device {} ({}), which is {} now",
                            d.path,
                            dev(d.rdev),
                            match meta.file_type().is_char_device() {
                                true => format!("device {}", dev(meta.rdev())),
                                false => "no character device".into(),
                            }
                        ),
                    ));
                }
            }
            Some(fd::Kind::Unix(id)) => {
                let Some(s) = tree.unix_sockets.iter().find(|s| s.id == *id) else { continue };
                if let Some(what) = crate::fd::unix::name_taken(s) {
                    return Err(refuse(
                        whose(pid, f.fd),
                        format!(
                            "is the {}, whose name {what} holds now (another process's, or the original left \
                             running); stop it or remove the file",
                            s.describe()
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A terminal is never reopened by its name on the restore's own account:
/// another session may have that /dev/pts/N now. Each one the tree held
/// comes from `--shell-job` (the restoring stasis's own terminal) or from
/// an `--inherit-fd`; any other is refused here, before anything is made,
/// naming it. A fixed terminal (a virtual console, a serial line, the
/// system console) is the exception: it is opened again by its path, which
/// must still be that device.
fn check_terminals(tree: &ProcessTree, opts: &RestoreOptions) -> Result<(), RestoreError> {
    let handed: HashSet<u64> = opts
        .inherit
        .iter()
        .filter_map(|i| match i.what {
            Inherited::Tty(rdev) => Some(rdev),
            Inherited::Pipe(_) => None,
        })
        .collect();
    for (pid, f) in all_fds(tree) {
        let Some(fd::Kind::Tty(t)) = &f.kind else { continue };
        if handed.contains(&t.rdev) || t.hung_up {
            continue;
        }
        if crate::fd::tty::opened_by_path(t.rdev) {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            let there = match std::fs::metadata(&t.path) {
                Ok(m) if m.file_type().is_char_device() && m.rdev() == t.rdev => continue,
                Ok(m) if m.file_type().is_char_device() => {
                    format!("has device {}:{} now", crate::fd::dev_major(m.rdev()), crate::fd::dev_minor(m.rdev()))
                }
                Ok(_) => "is not a device node now".to_owned(),
                Err(e) => format!("cannot be read ({e})"),
            };
            let whose = if pid == 0 { "an fd in flight".to_owned() } else { format!("fd {} of process {pid}", f.fd) };
            return Err(RestoreError::Incompatible(format!(
                "{whose} is the terminal {} ({}), opened again by its path, which {there}; put the node back or \
                 hand in an fd on that terminal with --inherit-fd 'fd[N]:{}'",
                t.path,
                Inherited::Tty(t.rdev),
                Inherited::Tty(t.rdev)
            )));
        }
        if opts.shell_job {
            if fds::own_terminal().is_none() {
                return Err(RestoreError::Incompatible(
                    "--shell-job: this stasis has no terminal on its stdin, stdout or stderr to give the tree".into(),
                ));
            }
            continue;
        }
        let whose = if pid == 0 { "an fd in flight".to_owned() } else { format!("fd {} of process {pid}", f.fd) };
        let session = match t.session {
            0 => String::new(),
            s => format!(", the controlling terminal of session {s}"),
        };
        return Err(RestoreError::Incompatible(format!(
            "{whose} is the terminal {} ({}{session}), which is outside the image; a restore does not reopen a \
             terminal by its name, as another session may have it now. Give the tree this stasis's terminal with \
             --shell-job, or hand in an fd with --inherit-fd 'fd[N]:{}'",
            t.path,
            Inherited::Tty(t.rdev),
            Inherited::Tty(t.rdev)
        )));
    }
    Ok(())
}

/// When a restore puts the tree into a new PID namespace, where every
/// process has its original pid whatever this host's processes hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PidNamespaceMode {
    /// Only when a pid of the image is held by a live process (a process
    /// being reaped is waited for), with a warning naming it.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never: a taken pid is an error.
    Never,
}

/// The PID namespace a tree was restored into.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NamespaceReport {
    /// The namespace's init (stasis's), in this host's pids.
    pub init: i32,
    /// The root of the tree inside the namespace: its original pid.
    pub pid_inside: i32,
    /// Why the namespace was made.
    pub reason: String,
}

/// What a successful restore did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreReport {
    /// The first process of the image (the root of its tree), in this
    /// host's pids: its original pid, unless it went into a new namespace.
    pub pid: i32,
    /// Set when the tree was restored into a new PID namespace.
    pub namespace: Option<NamespaceReport>,
    pub processes: usize,
    pub zombies: usize,
    /// Threads of all processes.
    pub threads: usize,
    pub total_us: u64,
    pub phases: Vec<(String, u64)>,
    pub pages_written: u64,
}

/// Why a restore failed. Nothing it created is left running.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot use image {dir}")]
    Image { dir: PathBuf, source: ReadError },
    #[error("image {0} holds no processes")]
    NoProcesses(PathBuf),
    #[error("cannot restore this image: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Incompatible(String),
    #[error("pid {pid} is taken by a running process ({comm}); stop it, or restore into a new PID namespace")]
    PidTaken { pid: i32, comm: String },
    #[error(
        "process group or session {id} is still in use here (process {pid}, {comm}, is in it), and the tree needs \
         that id for a group or session whose leader had exited; stop it, or restore into a new PID namespace"
    )]
    GroupTaken { id: i32, pid: i32, comm: String },
    #[error(transparent)]
    Fd(#[from] FdError),
    #[error("cannot create the process at pid {pid}: {what}")]
    Create { pid: i32, what: String },
    #[error("restoring {step} failed: {what}")]
    Step { step: String, what: String },
    #[error("cancelled; nothing was left behind")]
    Cancelled,
}

fn step(name: &str) -> impl Fn(String) -> RestoreError + '_ {
    move |what| RestoreError::Step { step: name.to_owned(), what }
}

/// Restore the image; see the module docs for the steps.
pub fn restore(opts: &RestoreOptions) -> Result<RestoreReport, RestoreError> {
    restore_maybe_lazy(opts, false).map(|(report, _)| report)
}

/// Restore the image, the tree running before its private anonymous
/// memory is back ([`lazy`]): the pages load in the background and as the
/// tree touches them, until [`lazy::Loading::wait`] returns. The caller
/// must keep running until then; the pages not loaded yet are lost with
/// it.
pub fn restore_lazy(opts: &RestoreOptions) -> Result<(RestoreReport, lazy::Loading), RestoreError> {
    restore_maybe_lazy(opts, true).map(|(report, loading)| (report, loading.expect("asked for")))
}

fn restore_maybe_lazy(
    opts: &RestoreOptions,
    lazy: bool,
) -> Result<(RestoreReport, Option<lazy::Loading>), RestoreError> {
    let start = Instant::now();
    let mut last = start;
    let mut phases = Vec::new();
    let mut phase = |name: &str| {
        let now = Instant::now();
        phases.push((name.to_owned(), (now - last).as_micros() as u64));
        last = now;
    };
    let cancelled = || opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));
    let image_err = |source| RestoreError::Image { dir: opts.images.clone(), source };

    let image = Arc::new(Image::open(&opts.images).map_err(image_err)?);
    // A lazy restore reads a chunk when it loads it (and checks its hash
    // then): reading all first would delay the tree by as long as an
    // eager restore's memory takes. An eager one checks every frame reads
    // back as written before it starts anything, and then writes chunks
    // without hashing them again.
    match lazy {
        true => image.verify_references().map_err(image_err)?,
        false => image.verify_frames().map_err(image_err)?,
    };
    let tree = image.processes().ok_or_else(|| RestoreError::NoProcesses(opts.images.clone()))?;
    if tree.processes.is_empty() {
        return Err(RestoreError::NoProcesses(opts.images.clone()));
    }
    check_kernel(tree)?;
    check_inherited(tree, &opts.inherit)?;
    check_terminals(tree, opts)?;
    check_named_objects(tree, opts.allow_changed_files, &opts.moved_devices)?;
    for p in &tree.processes {
        check_mapped_files(p, opts.allow_changed_files, &opts.moved_devices)?;
    }
    phase("check");

    let namespace = match opts.pid_namespace {
        // Its pids are those of the namespace it lived in.
        PidNamespaceMode::Never if tree.pid_namespace => {
            return Err(RestoreError::Unsupported(
                "the tree lived in a PID namespace of its own and the image holds that namespace's pids: it is \
                 restored into a new PID namespace (drop --no-pid-namespace)"
                    .into(),
            ))
        }
        _ if tree.pid_namespace => Some("the tree was dumped from a PID namespace of its own".to_owned()),
        PidNamespaceMode::Always => Some("--pid-namespace was given".to_owned()),
        PidNamespaceMode::Never => {
            wait_free(tree, opts.pid_timeout, false)?;
            None
        }
        PidNamespaceMode::Auto => match wait_free(tree, opts.pid_timeout, true) {
            Ok(()) => None,
            Err(e @ (RestoreError::PidTaken { .. } | RestoreError::GroupTaken { .. })) => {
                let reason = match e {
                    RestoreError::PidTaken { pid, comm } => format!("pid {pid} is taken by a running process ({comm})"),
                    RestoreError::GroupTaken { id, pid, .. } => {
                        format!("process group or session {id} is in use (by process {pid})")
                    }
                    _ => unreachable!("matched above"),
                };
                tracing::warn!(
                    "{reason}: restoring into a new PID namespace, where every process has its original pid"
                );
                Some(reason)
            }
            Err(e) => return Err(e),
        },
    };
    // A pseudo-terminal index another session holds here: the tree's pairs
    // go into a devpts of their own, which a new PID namespace's mount
    // namespace gets.
    let taken_pty = tree.ptys.iter().map(|p| p.index).find(|n| std::path::Path::new(&format!("/dev/pts/{n}")).exists());
    let namespace = match (namespace, taken_pty) {
        (namespace, None) | (namespace @ Some(_), _) => namespace,
        (None, Some(n)) if opts.pid_namespace == PidNamespaceMode::Never => {
            return Err(RestoreError::Unsupported(format!(
                "/dev/pts/{n} is taken here by a terminal of another session; the tree can have its terminal pairs \
                 back only in a devpts of its own, which comes with a new PID namespace (drop --no-pid-namespace)"
            )))
        }
        (None, Some(n)) => {
            let reason = format!("/dev/pts/{n} is taken by a terminal of another session");
            tracing::warn!(
                "{reason}: restoring into a new PID namespace with a devpts of its own, where every terminal pair \
                 has its index"
            );
            Some(reason)
        }
    };
    if namespace.is_some() {
        if let Some(p) = tree.processes.iter().find(|p| p.pid == 1) {
            return Err(RestoreError::Unsupported(format!(
                "process {} has pid 1, which in a new PID namespace is its init",
                p.pid
            )));
        }
    }

    // Every puppet inherits this at one fd number, and fetches its fds
    // from the agent through it.
    let agent = stasis_sys::pidfd::PidFd::open(Pid::this()).map_err(|e| step("pidfd")(crate::chain(&e)))?;
    let agent: std::os::fd::OwnedFd = agent.into();
    // A tree with terminal pairs of its own gets a devpts of its own in a
    // new namespace.
    let mut pidns = match &namespace {
        Some(_) => Some(
            PidNamespace::create(std::os::fd::AsFd::as_fd(&agent), !tree.ptys.is_empty())
                .map_err(|e| step("PID namespace")(crate::chain(&e)))?,
        ),
        None => None,
    };
    let ptmx =
        pidns.as_ref().filter(|_| !tree.ptys.is_empty()).map(|ns| format!("/proc/{}/root/dev/pts/ptmx", ns.init_pid()));
    let members: HashSet<i32> =
        tree.processes.iter().map(|p| p.pid).chain(tree.zombies.iter().map(|z| z.pid)).collect();
    let objects = shmem::create(&image, &tree.shmem)?;
    let deleted = deleted::make_all(&image, tree)?;
    let cwds = deleted::removed_directories(tree)?;
    let ptys = pty::make_all(&tree.ptys, ptmx.as_deref())?;
    let segments = shmem::Segments::made(&tree.shmem, &objects);
    let netlock = RestoreLock::take(tree).map_err(step("network lock"))?;
    let (unix, pending) = crate::fd::unix::make_all(&tree.unix_sockets).map_err(step("unix sockets"))?;
    // Sockets passed with queued messages, a reference of their own (the
    // planner hands each socket to the process holding it).
    let mut passed_unix = HashMap::new();
    for f in crate::fd::unix::passed(&tree.unix_sockets).flat_map(|(_, _, fds)| fds) {
        if let (Some(fd::Kind::Unix(id)), false) = (&f.kind, f.shared_with.is_some()) {
            if let Some(sock) = unix.get(id) {
                passed_unix.insert(*id, sock.try_clone().map_err(|e| step("unix sockets")(format!("dup: {e}")))?);
            }
        }
    }
    let mut planner = fds::Planner::new(&tree.pipes, opts.allow_changed_files, members, &objects, &deleted, unix);
    planner.moved_devices = opts.moved_devices.clone();
    planner.inherit = opts.inherit.iter().map(|i| (i.what, i.fd)).collect();
    planner.shell_job = opts.shell_job;
    planner.ptys = Some(&ptys);
    planner.removed_dirs = Some(&cwds);
    planner.shared_addresses = crate::fd::socket::shared_addresses(tree.processes.iter().flat_map(|p| &p.fds));
    let mut planned = Vec::with_capacity(tree.processes.len());
    for p in &tree.processes {
        planned.push(planner.plan(&p.fds).map_err(|e| in_process(tree, p.pid, e.into()))?);
    }
    planner.finish().map_err(step("file descriptors"))?;
    let passed = pass_fds(&mut planner, tree, &planned, &passed_unix).map_err(step("unix sockets"))?;
    pending.finish(&tree.unix_sockets, &passed).map_err(step("unix sockets"))?;
    drop((passed, passed_unix));
    let repaired = std::mem::take(&mut planner.repaired);
    drop(planner);
    pty::lock(&tree.ptys, &ptys)?;
    phase("fds");
    if cancelled() {
        return Err(RestoreError::Cancelled);
    }

    let agent_fd = std::os::fd::AsRawFd::as_raw_fd(&agent);
    let lazy = match lazy {
        true => Some(std::cell::RefCell::new(lazy::Lazy::new(image.clone()).map_err(step("lazy memory"))?)),
        false => None,
    };
    let memory = MemoryRecipe {
        image: &image,
        objects: &objects,
        deleted: &deleted,
        agent_fd,
        lazy: lazy.as_ref(),
        verified: lazy.is_none(),
    };
    let (mut puppets, zombies) = create_tree(tree, pidns.as_mut(), &memory)?;
    phase("create");
    let zombie_pids: Vec<Pid> = zombies.iter().map(|z| z.pid).collect();
    // Each process's pid in /proc (the host's, in a PID namespace of its
    // own), by the pid it had.
    let host_pids: HashMap<i32, i32> = (puppets.iter().map(|q| (q.ns_pid, q.pid.as_raw())))
        .chain(tree.zombies.iter().zip(&zombie_pids).map(|(z, pid)| (z.pid, pid.as_raw())))
        .collect();
    for (zombie, z) in zombies.into_iter().zip(&tree.zombies) {
        zombie.exit_as(z)?;
    }
    for (pid, z) in zombie_pids.into_iter().zip(&tree.zombies) {
        wait_zombie(pid, z.pid)?;
    }
    let progress = |done, total| {
        if let Some(f) = &opts.progress {
            (f.0)(done, total);
        }
    };
    let mut pages = 0;
    // Processes sharing one fd table (a parent and the children it forked
    // with CLONE_FILES): the first builds it, the others find it built.
    let mut table: Vec<usize> = (0..tree.processes.len()).collect();
    for (i, p) in tree.processes.iter().enumerate() {
        if let Some(parent) = tree.processes[..i].iter().position(|q| q.pid == p.ppid).filter(|_| p.files_of_parent) {
            table[i] = table[parent];
        }
    }
    for (i, (p, planned)) in tree.processes.iter().zip(planned).enumerate() {
        let planned = fetch_shared(planned, &puppets[..i]).map_err(|e| in_process(tree, p.pid, e))?;
        let planned = planned
            .into_iter()
            .map(|f| f.open_proc_entry(|pid| host_pids.get(&pid).copied()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| in_process(tree, p.pid, e.into()))?;
        let reap = tree.zombies.iter().any(|z| z.ppid == p.pid);
        let shared_table = match table[i] {
            t if t == i => None,
            t => Some(puppets[t].agent_left.ok_or_else(|| {
                in_process(tree, p.pid, step("fds")("its parent's fd table has no pidfd of the agent left".into()))
            })?),
        };
        let keep_agent = table[i + 1..].contains(&table[i]);
        let recipe = Recipe {
            memory,
            process: p,
            fds: planned,
            ptys: (&tree.ptys, &ptys),
            cwds: &cwds,
            reap,
            shared_table,
            keep_agent,
        };
        pages += puppets[i].build(recipe, &mut phase, &progress).map_err(|e| in_process(tree, p.pid, e))?;
        if cancelled() {
            return Err(RestoreError::Cancelled);
        }
    }
    shmem::seal(&tree.shmem, &objects)?;
    for (puppet, p) in puppets.iter().zip(&tree.processes) {
        seek_proc_entries(puppet.pid, p).map_err(|e| in_process(tree, p.pid, e))?;
    }
    // Every process ready before any runs: then all go at once.
    for (puppet, p) in puppets.iter_mut().zip(&tree.processes) {
        puppet.set_final_state(p).map_err(|e| in_process(tree, p.pid, e))?;
    }
    // Connections: the peers' packets let through, then each socket leaves
    // repair mode with a window probe, so both sides resume at once.
    netlock.release().map_err(step("network unlock"))?;
    for conn in &repaired {
        conn.let_go().map_err(step("TCP connections"))?;
    }
    drop(repaired);
    let root = puppets[0].pid.as_raw();
    let pids: Vec<i32> = puppets.iter().map(|p| p.pid.as_raw()).collect();
    let mut threads = 0;
    for puppet in puppets {
        threads += puppet.release()?;
    }
    let namespace = match (pidns, namespace) {
        (Some(ns), Some(reason)) => {
            let init = ns.release().map_err(|e| step("PID namespace")(crate::chain(&e)))?;
            Some(NamespaceReport { init: init.as_raw(), pid_inside: tree.processes[0].pid, reason })
        }
        _ => None,
    };
    segments.keep();
    phase("resume");
    let report = RestoreReport {
        pid: root,
        namespace,
        processes: tree.processes.len(),
        zombies: tree.zombies.len(),
        threads,
        total_us: start.elapsed().as_micros() as u64,
        phases,
        pages_written: pages,
    };
    record(&opts.images, &report);
    Ok((report, lazy.map(|l| l.into_inner().start(pids))))
}

/// Make the fds passed with queued unix messages, by (socket id, message
/// index): a socket of the table by its own reference, the description a
/// process fd holds too, or an object of its own made by the planner (so a
/// pipe end is of the pipe the processes hold).
fn pass_fds(
    planner: &mut fds::Planner<'_>,
    tree: &ProcessTree,
    planned: &[Vec<fds::Planned>],
    unix: &HashMap<u64, std::os::fd::OwnedFd>,
) -> Result<HashMap<(u64, u32), Vec<std::os::fd::OwnedFd>>, String> {
    let mut out = HashMap::new();
    for (id, message, records) in crate::fd::unix::passed(&tree.unix_sockets) {
        let mut fds = Vec::with_capacity(records.len());
        for r in records {
            let what = |e: String| format!("socket {id}: fd {} passed with message {}: {e}", r.fd + 1, message + 1);
            let object = if let Some(s) = &r.shared_with {
                planned_object(tree, planned, s.pid, s.fd, 0).map_err(what)?
            } else if let Some(first) = &r.in_flight_as {
                // The description passed before, in this message or another.
                let made = match (first.socket, first.message) == (id, message) {
                    true => fds.get(first.index as usize),
                    false => out
                        .get(&(first.socket, first.message))
                        .and_then(|v: &Vec<std::os::fd::OwnedFd>| v.get(first.index as usize)),
                };
                let made = made.ok_or_else(|| {
                    what(format!(
                        "it is fd {} passed with message {} of socket {}, which was not made before it",
                        first.index + 1,
                        first.message + 1,
                        first.socket
                    ))
                })?;
                made.try_clone().map_err(|e| what(format!("dup: {e}")))?
            } else if let Some(fd::Kind::Unix(u)) = &r.kind {
                let sock = unix.get(u).ok_or_else(|| what(format!("unix socket {u} was not made")))?;
                sock.try_clone().map_err(|e| what(format!("dup: {e}")))?
            } else if let Some(fd::Kind::Epoll(e)) = &r.kind {
                epoll_in_flight(&e.targets, |h| planned_object(tree, planned, h.pid, h.fd, 0)).map_err(what)?
            } else {
                match planner.plan(std::slice::from_ref(r)).map_err(|e| what(e.to_string()))?.pop() {
                    Some(fds::Planned::Object { object, .. }) => object,
                    _ => return Err(what("not an object stasis can make on its own".into())),
                }
            };
            fds.push(object);
        }
        out.insert((id, message), fds);
    }
    Ok(out)
}

/// An epoll instance passed in flight, made in the agent: each file is
/// taken from the fd of a process of the tree that holds it (`file`) and
/// registered under the number it had, as it was.
fn epoll_in_flight(
    targets: &[stasis_image::records::EpollTarget],
    file: impl Fn(&stasis_image::records::FdRef) -> Result<std::os::fd::OwnedFd, String>,
) -> Result<std::os::fd::OwnedFd, String> {
    use stasis_sys::nix::sys::epoll::{Epoll, EpollCreateFlags};
    use std::os::fd::AsFd;
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| format!("epoll_create1: {e}"))?;
    let files = targets
        .iter()
        .map(|t| file(t.holder.as_ref().ok_or_else(|| format!("its registration of fd {} names no holder", t.fd))?))
        .collect::<Result<Vec<_>, _>>()?;
    let regs: Vec<stasis_sys::epoll::Registration<'_>> = targets
        .iter()
        .zip(&files)
        .map(|(t, f)| stasis_sys::epoll::Registration { fd: t.fd, file: f.as_fd(), events: t.events, data: t.data })
        .collect();
    stasis_sys::epoll::add_at_numbers(ep.0.as_fd(), &regs)
        .map_err(|(i, e)| format!("registering fd {} in an epoll made for it: {e}", targets[i].fd))?;
    Ok(ep.0)
}

/// A new reference to the description planned for fd `fd` of process `pid`.
fn planned_object(
    tree: &ProcessTree,
    planned: &[Vec<fds::Planned>],
    pid: i32,
    fd: i32,
    depth: u32,
) -> Result<std::os::fd::OwnedFd, String> {
    let i = tree.processes.iter().position(|p| p.pid == pid).ok_or_else(|| format!("no process {pid}"))?;
    match planned[i].iter().find(|p| p.fd() == fd) {
        _ if depth > 16 => Err(format!("fd {fd} of process {pid}: a loop of shared fds")),
        Some(fds::Planned::Object { object, .. }) => object.try_clone().map_err(|e| format!("dup: {e}")),
        Some(fds::Planned::Dup { of, .. }) => planned_object(tree, planned, pid, *of, depth + 1),
        Some(fds::Planned::Shared { pid: holder, of, .. }) => planned_object(tree, planned, *holder, *of, depth + 1),
        Some(_) => {
            Err(format!("it is fd {fd} of process {pid}, which is made inside that process and cannot be passed"))
        }
        None => Err(format!("process {pid} has no fd {fd}")),
    }
}

/// The network lock over the image's TCP connections while they are
/// rebuilt: taken again (it is there already after a dump that killed the
/// tree, not after one that let it run on), so neither the peers' packets
/// nor those of one restored end to another not yet made meet a closed
/// port and reset the connection. Removed once the tree is ready; a failed
/// restore leaves it as it found it.
struct RestoreLock {
    name: Option<String>,
    existed: bool,
}

impl RestoreLock {
    fn take(tree: &ProcessTree) -> Result<RestoreLock, String> {
        let conns: Vec<_> = tree
            .processes
            .iter()
            .flat_map(|p| &p.fds)
            .filter_map(|f| match &f.kind {
                Some(fd::Kind::Tcp(c)) => crate::fd::tcp::lock_conn(c),
                _ => None,
            })
            .collect();
        if conns.is_empty() {
            return Ok(RestoreLock { name: None, existed: false });
        }
        let name = if tree.netlock.is_empty() {
            crate::fd::tcp::lock_name(tree.processes[0].pid)
        } else {
            tree.netlock.clone()
        };
        let existed = crate::netlock::is_locked(&name)?;
        crate::netlock::lock(&name, &conns)?;
        Ok(RestoreLock { name: Some(name), existed })
    }

    fn release(mut self) -> Result<(), String> {
        match self.name.take() {
            Some(name) => crate::netlock::unlock(&name),
            None => Ok(()),
        }
    }
}

impl Drop for RestoreLock {
    fn drop(&mut self) {
        if let (Some(name), false) = (&self.name, self.existed) {
            let _ = crate::netlock::unlock(name);
        }
    }
}

/// Name the process an error is about, when the image holds several.
fn in_process(tree: &ProcessTree, pid: i32, e: RestoreError) -> RestoreError {
    if tree.processes.len() + tree.zombies.len() == 1 {
        return e;
    }
    match e {
        RestoreError::Step { step, what } => RestoreError::Step { step: format!("process {pid}: {step}"), what },
        RestoreError::Fd(f) => RestoreError::Step { step: format!("process {pid}"), what: f.to_string() },
        other => other,
    }
}

/// Create every process of the tree as a puppet, parents first: a root as
/// the agent's child, every other by its parent (an injected clone3 with
/// its pid), so that parent links are the image's. A session leader calls
/// setsid before its children are made (they inherit the session); process
/// groups are joined once everyone exists, leaders first. Returns the
/// puppets of `tree.processes` and of `tree.zombies`, in their order.
/// In a new PID namespace, the roots are children of its init.
///
/// A session or group whose leader had exited at dump time is made again
/// by a helper at the leader's pid: a session's is made first, calls
/// setsid and forks the roots in that session; a group's is forked by a
/// process of its session and calls setpgid. Each exits once the members
/// are in (a group or session outlives its leader), and is reaped at once.
fn create_tree(
    tree: &ProcessTree,
    mut pidns: Option<&mut PidNamespace>,
    memory: &MemoryRecipe<'_>,
) -> Result<(Vec<Puppet>, Vec<Puppet>), RestoreError> {
    // Into the image's cgroups before any memory is built (it is charged
    // where it is made) and before the threads exist (they follow).
    let cgroups = crate::cgroups::Host::here();
    let is_root = |p: &Process| !tree.processes.iter().any(|q| q.pid == p.ppid);
    let mut session_helpers: Vec<Puppet> = Vec::new();
    for &sid in &tree.leaderless_sessions {
        if tree.processes.iter().any(|p| p.sid == sid && is_root(p)) {
            let mut helper = Puppet::create(sid, pidns.as_deref_mut())?;
            helper.simple_call(&format!("session {sid}"), libc::SYS_setsid, [0; 6])?;
            session_helpers.push(helper);
        }
    }
    // Helpers that made a time namespace, each forking the roots in it;
    // and which namespace (by its inode at the dump) each helper made.
    let mut time_helpers: Vec<Puppet> = Vec::new();
    let mut made_time: HashMap<i32, u64> = HashMap::new();
    let mut made_pids: HashSet<i32> = HashSet::new();
    let mut puppets: Vec<Puppet> = Vec::with_capacity(tree.processes.len());
    for p in &tree.processes {
        let mut puppet = match puppets.iter_mut().find(|q| q.ns_pid == p.ppid) {
            Some(parent) => {
                // Pages still shared with the parent: forked once the
                // parent's memory is back, so they are shared again.
                if p.vmas.iter().any(|v| v.from_parent) && parent.memory_built.is_none() {
                    let q = tree.processes.iter().find(|q| q.pid == p.ppid).expect("found by pid above");
                    // All of it in before the fork, which copies it.
                    let eager = MemoryRecipe { lazy: None, ..*memory };
                    parent.build_memory(&eager, q, &mut |_| {}, &|_, _| {}).map_err(|e| in_process(tree, q.pid, e))?;
                }
                // In another time namespace than its parent (which made it
                // for this child, then went back to its own): the parent
                // enters it, or makes it, for the fork only.
                let parent_ns = tree.processes.iter().find(|q| q.pid == p.ppid).map_or(0, |q| q.time_ns);
                if p.time_ns == parent_ns {
                    parent.fork_sharing(p.pid, p.exit_signal, p.files_of_parent)?
                } else {
                    // A process already made in that namespace, if any.
                    let made_by = tree
                        .processes
                        .iter()
                        .find(|q| q.time_ns == p.time_ns && made_pids.contains(&q.pid))
                        .map(|q| q.pid);
                    // The parent's own namespace, held by an nsfs fd of its
                    // own (PIDFD_GET_TIME_NAMESPACE, Linux 6.11) to go back to.
                    const PIDFD_GET_TIME_NAMESPACE: u64 = 0xff07;
                    let what = "time namespace";
                    let me = parent.ns_pid as u64;
                    let pidfd = parent.simple_call(what, libc::SYS_pidfd_open, [me, 0, 0, 0, 0, 0])?;
                    let own = parent.simple_call(what, libc::SYS_ioctl, [pidfd, PIDFD_GET_TIME_NAMESPACE, 0, 0, 0, 0]);
                    parent.simple_call(what, libc::SYS_close, [pidfd, 0, 0, 0, 0, 0])?;
                    let own = own?;
                    match made_by {
                        // Made for a sibling already: the parent enters it.
                        Some(q) => {
                            let fd = parent.simple_call(what, libc::SYS_pidfd_open, [q as u64, 0, 0, 0, 0, 0])?;
                            let joined =
                                parent.simple_call(what, libc::SYS_setns, [fd, libc::CLONE_NEWTIME as u64, 0, 0, 0, 0]);
                            parent.simple_call(what, libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                            joined?;
                        }
                        None => time_namespace(parent, p, &mut made_time).map_err(|e| in_process(tree, p.pid, e))?,
                    }
                    let child = parent.fork_sharing(p.pid, p.exit_signal, p.files_of_parent)?;
                    made_time.remove(&parent.pid.as_raw());
                    let back = parent.simple_call(what, libc::SYS_setns, [own, libc::CLONE_NEWTIME as u64, 0, 0, 0, 0]);
                    parent.simple_call(what, libc::SYS_close, [own, 0, 0, 0, 0, 0])?;
                    back?;
                    child
                }
            }
            // A root in a time namespace of its own: forked by a helper (its
            // session's, or one of its own) that made the namespace.
            None if p.time_ns != 0 => {
                let helper = match session_helpers.iter().position(|h| h.ns_pid == p.sid) {
                    Some(i) => &mut session_helpers[i],
                    None => {
                        match time_helpers.iter().position(|h| made_time.get(&h.pid.as_raw()) == Some(&p.time_ns)) {
                            Some(i) => &mut time_helpers[i],
                            None => {
                                let pid = match pidns.is_some() {
                                    true => free_pid(tree),
                                    false => 0,
                                };
                                time_helpers.push(Puppet::create(pid, pidns.as_deref_mut())?);
                                time_helpers.last_mut().expect("pushed")
                            }
                        }
                    }
                };
                time_namespace(helper, p, &mut made_time).map_err(|e| in_process(tree, p.pid, e))?;
                let puppet = helper.fork(p.pid, p.exit_signal)?;
                if let (Some(ns), true) = (pidns.as_deref_mut(), puppets.is_empty()) {
                    ns.set_root(Pid::from_raw(p.pid)).map_err(|e| step("PID namespace")(crate::chain(&e)))?;
                }
                puppet
            }
            None => match session_helpers.iter_mut().find(|h| h.ns_pid == p.sid) {
                Some(helper) => {
                    let puppet = helper.fork(p.pid, p.exit_signal)?;
                    if let (Some(ns), true) = (pidns.as_deref_mut(), puppets.is_empty()) {
                        ns.set_root(Pid::from_raw(p.pid)).map_err(|e| step("PID namespace")(crate::chain(&e)))?;
                    }
                    puppet
                }
                None => Puppet::create(p.pid, pidns.as_deref_mut())?,
            },
        };
        if p.sid == p.pid {
            puppet.simple_call("session", libc::SYS_setsid, [0; 6])?;
        }
        // A cgroup namespace other than its parent's (which a child made
        // later by this one is in already).
        let parent_ns = tree.processes.iter().find(|q| q.pid == p.ppid).map_or(0, |q| q.cgroup_ns);
        if p.cgroup_ns != 0 && p.cgroup_ns != parent_ns {
            cgroup_namespace(&cgroups, &mut puppet, p).map_err(|e| in_process(tree, p.pid, e))?;
        }
        for warning in cgroups.place(puppet.pid.as_raw(), p.pid, &p.cgroups) {
            tracing::warn!("{warning}");
        }
        made_pids.insert(p.pid);
        puppets.push(puppet);
    }
    let mut zombies = Vec::with_capacity(tree.zombies.len());
    for z in &tree.zombies {
        let parent = puppets.iter_mut().find(|q| q.ns_pid == z.ppid).ok_or_else(|| {
            RestoreError::Unsupported(format!("the parent {} of zombie {} is not in the image", z.ppid, z.pid))
        })?;
        let mut zombie = parent.fork(z.pid, z.exit_signal)?;
        if z.sid == z.pid {
            zombie.simple_call("session", libc::SYS_setsid, [0; 6])?;
        }
        zombies.push(zombie);
    }

    // (pid, pgid, sid) of everyone; a group led by nobody in the tree is
    // the root's, from outside, which every puppet started in (and which
    // shows as 0 inside a new PID namespace).
    let mut ids: Vec<(i32, i32, i32)> = tree
        .processes
        .iter()
        .map(|p| (p.pid, p.pgid, p.sid))
        .chain(tree.zombies.iter().map(|z| (z.pid, z.pgid, z.sid)))
        .collect();
    // The helpers of groups whose leader is gone, each with the index, in
    // `ids`, of the process that forked it (and reaps it).
    let mut group_helpers: Vec<(Puppet, usize)> = Vec::new();
    for &pgid in &tree.leaderless_groups {
        let Some(&(_, _, sid)) = ids.iter().find(|&&(_, g, _)| g == pgid) else { continue };
        if session_helpers.iter().any(|h| h.ns_pid == pgid) {
            continue;
        }
        let Some(by) = ids.iter().position(|&(_, _, s)| s == sid) else { continue };
        let parent = if by < puppets.len() { &mut puppets[by] } else { &mut zombies[by - puppets.len()] };
        let helper = parent.fork(pgid, 0)?;
        group_helpers.push((helper, by));
        ids.push((pgid, pgid, sid));
    }
    let outside_group = if pidns.is_some() { 0 } else { stasis_sys::nix::unistd::getpgrp().as_raw() };
    let helpers = group_helpers.iter_mut().map(|(h, _)| h);
    let mut all: Vec<&mut Puppet> = puppets.iter_mut().chain(zombies.iter_mut()).chain(helpers).collect();
    for (puppet, &(pid, pgid, sid)) in all.iter_mut().zip(&ids) {
        if pgid == pid && sid != pid {
            puppet.simple_call("process group", libc::SYS_setpgid, [0; 6])?;
        }
    }
    let led: Vec<i32> = ids
        .iter()
        .filter(|&&(p, g, _)| p == g)
        .map(|&(p, _, _)| p)
        .chain(tree.leaderless_sessions.iter().copied())
        .collect();
    for (puppet, &(pid, pgid, _)) in all.iter_mut().zip(&ids) {
        if pgid == pid {
            continue;
        }
        let target = if led.contains(&pgid) { pgid } else { outside_group };
        let now = puppet.simple_call("process group", libc::SYS_getpgid, [0; 6])? as i32;
        if now != target {
            if target == 0 {
                return Err(RestoreError::Unsupported(format!(
                    "process {pid} is in a process group outside the tree, which a new PID namespace cannot hold"
                )));
            }
            let what = format!("process group {target}");
            puppet.simple_call(&what, libc::SYS_setpgid, [0, target as u64, 0, 0, 0, 0])?;
        }
    }
    drop(all);
    for (helper, by) in group_helpers {
        let pid = helper.ns_pid;
        helper.leave()?;
        let parent = if by < puppets.len() { &mut puppets[by] } else { &mut zombies[by - puppets.len()] };
        let what = format!("process group {pid}");
        parent.simple_call(&what, libc::SYS_wait4, [pid as u64, 0, libc::__WALL as u64, 0, 0, 0])?;
    }
    for helper in session_helpers.into_iter().chain(time_helpers) {
        helper.leave()?;
    }
    Ok((puppets, zombies))
}

/// A pid no process, group or session of the tree has (nor 1), for a
/// helper in a PID namespace of the tree's own.
fn free_pid(tree: &ProcessTree) -> i32 {
    let used: HashSet<i32> = tree
        .processes
        .iter()
        .flat_map(|p| [p.pid, p.pgid, p.sid])
        .chain(tree.zombies.iter().flat_map(|z| [z.pid, z.pgid, z.sid]))
        .collect();
    (2..).find(|n| !used.contains(n)).expect("a free pid")
}

/// Have `helper` make the time namespace of `p` for its children (unshare
/// CLONE_NEWTIME, then the clock offsets written before anyone is in it),
/// unless it made that one already; one helper makes one namespace.
fn time_namespace(helper: &mut Puppet, p: &Process, made: &mut HashMap<i32, u64>) -> Result<(), RestoreError> {
    match made.get(&helper.pid.as_raw()) {
        Some(&ns) if ns == p.time_ns => return Ok(()),
        Some(_) => {
            return Err(RestoreError::Unsupported(
                "two time namespaces for the roots of one session (not supported yet)".into(),
            ))
        }
        None => {}
    }
    helper.simple_call("time namespace", libc::SYS_unshare, [libc::CLONE_NEWTIME as u64, 0, 0, 0, 0, 0])?;
    let path = format!("/proc/{}/timens_offsets", helper.pid);
    std::fs::write(&path, &p.time_offsets)
        .map_err(|e| step("time namespace")(format!("writing the clock offsets to {path}: {e}")))?;
    made.insert(helper.pid.as_raw(), p.time_ns);
    Ok(())
}

/// Wait until a zombie puppet (`pid` here, `was` in the image) has exited
/// (it runs its exit on its own).
fn wait_zombie(pid: Pid, was: i32) -> Result<(), RestoreError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match proc::stat(pid) {
            Ok(s) if s.state == 'Z' => return Ok(()),
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(s) => return Err(step("zombie")(format!("process {was} did not exit (state {})", s.state))),
            Err(e) => return Err(step("zombie")(format!("process {was} is gone: {e}"))),
        }
    }
}

/// The files of /proc directories that process `p` (built as `pid`) read
/// part way, put back at their positions now that every process is as it
/// was: a /proc file makes its text when it is sought (a seek made before
/// would find the processes still being built) and reads on from that.
fn seek_proc_entries(pid: Pid, p: &Process) -> Result<(), RestoreError> {
    let entries = p.fds.iter().filter(|r| r.pos != 0 && r.same_as.is_none() && r.shared_with.is_none());
    let mut holder = None;
    for r in entries.filter(|r| matches!(r.kind, Some(fd::Kind::ProcEntry(_)))) {
        let what = format!("fd {}", r.fd);
        let holder = match &mut holder {
            Some(h) => h,
            None => holder.insert(stasis_sys::pidfd::PidFd::open(pid).map_err(|e| step(&what)(crate::chain(&e)))?),
        };
        let file = holder.get_fd(r.fd).map_err(|e| step(&what)(crate::chain(&e)))?;
        if let Err(e) = stasis_sys::nix::unistd::lseek(&file, r.pos as i64, stasis_sys::nix::unistd::Whence::SeekSet) {
            tracing::warn!(
                "{what}: a /proc file, cannot be read from position {} again ({e}); it reads from its start",
                r.pos
            );
        }
    }
    Ok(())
}

/// How many seccomp filters, oldest first, all the threads of `p` have
/// alike (0 for a single thread, which sets its whole chain itself).
fn shared_filters(p: &Process) -> usize {
    let Some((first, rest)) = p.threads.split_first().filter(|(_, rest)| !rest.is_empty()) else { return 0 };
    (0..first.seccomp.len()).take_while(|&i| rest.iter().all(|t| t.seccomp.get(i) == first.seccomp.get(i))).count()
}

/// Process `p` in a cgroup namespace of its own rooted where its was: the
/// puppet enters the namespace's root cgroup in each hierarchy and makes
/// the namespace there; it is put in its own cgroups after. A root it
/// cannot enter costs a warning, as a cgroup does ([`crate::cgroups`]):
/// the namespace's root there is then the cgroup the puppet is in.
fn cgroup_namespace(cgroups: &crate::cgroups::Host, puppet: &mut Puppet, p: &Process) -> Result<(), RestoreError> {
    for warning in cgroups.place_exactly(puppet.pid.as_raw(), p.pid, &p.cgroup_ns_roots) {
        tracing::warn!("{warning} (the root of its cgroup namespace)");
    }
    puppet.simple_call("cgroup namespace", libc::SYS_unshare, [libc::CLONE_NEWCGROUP as u64, 0, 0, 0, 0, 0])?;
    Ok(())
}

/// Fds that share a description with a process restored earlier, fetched
/// from it (pidfd_getfd), now that it has them.
fn fetch_shared(planned: Vec<fds::Planned>, built: &[Puppet]) -> Result<Vec<fds::Planned>, RestoreError> {
    planned
        .into_iter()
        .map(|p| match p {
            fds::Planned::Shared { fd, pid, of, cloexec } => {
                let what = format!("fd {fd} (fd {of} of process {pid})");
                let Some(built) = built.iter().find(|b| b.ns_pid == pid) else {
                    return Err(step(&what)("that process is not restored before this one".into()));
                };
                let holder = stasis_sys::pidfd::PidFd::open(built.pid).map_err(|e| step(&what)(crate::chain(&e)))?;
                let object = holder.get_fd(of).map_err(|e| step(&what)(crate::chain(&e)))?;
                Ok(fds::Planned::Object { fd, object, cloexec })
            }
            other => Ok(other),
        })
        .collect()
}

/// Name of the file in an image directory where each restore appends its
/// figures (one JSON object a line). It is not part of the image: the
/// manifest and its checksums never change.
pub const RESTORE_LOG: &str = "restores.jsonl";

/// Append the figures of a restore to the image's restore log; a read-only
/// image directory only costs a warning.
fn record(dir: &std::path::Path, report: &RestoreReport) {
    use std::io::Write;
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let line = serde_json::json!({ "unix_ms": at, "report": report });
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(RESTORE_LOG))
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        tracing::warn!("cannot record the restore in {}: {e}", dir.join(RESTORE_LOG).display());
    }
}

/// The restores recorded for an image, oldest first.
pub fn history(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(RESTORE_LOG))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The vdso must be this kernel's: the process has code addresses in it.
fn check_kernel(tree: &ProcessTree) -> Result<(), RestoreError> {
    let Some(k) = &tree.kernel else { return Ok(()) };
    let maps = proc::parse_smaps(&std::fs::read_to_string("/proc/self/maps").unwrap_or_default()).unwrap_or_default();
    if !k.vdso_hash.is_empty() && proc::vdso_hash(Pid::this(), &maps) != k.vdso_hash {
        let here = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        return Err(RestoreError::Incompatible(format!(
            "the image was made on kernel {} whose vdso differs from this kernel's ({}); restore needs the same kernel",
            k.release,
            here.trim()
        )));
    }
    Ok(())
}

/// The checks `restore` makes before it changes anything, for a caller
/// that must change something first and would rather not if the restore
/// is bound to fail (`stasis restore --rollback-volume` rolls the volume
/// back first): the image reads and verifies, it was made on a kernel this
/// one can restore, and the files the processes had open or mapped are
/// unchanged, except those on device `volume_dev` (the volume about to be
/// rolled back, whose files are checked by the restore itself after).
pub fn preflight(opts: &RestoreOptions, volume_dev: u64) -> Result<(), RestoreError> {
    let image_err = |source| RestoreError::Image { dir: opts.images.clone(), source };
    let image = Image::open(&opts.images).map_err(image_err)?;
    image.verify_frames().map_err(image_err)?;
    let tree = image.processes().ok_or_else(|| RestoreError::NoProcesses(opts.images.clone()))?;
    check_kernel(tree)?;
    check_inherited(tree, &opts.inherit)?;
    check_terminals(tree, opts)?;
    if opts.allow_changed_files {
        return Ok(());
    }
    for p in &tree.processes {
        let mapped = p.vmas.iter().filter(|v| v.kind == VmaKind::File as i32).filter_map(|v| v.file.as_ref());
        let mapped = mapped.filter(|f| !f.deleted).map(|f| (f, 0));
        let open = p.fds.iter().filter_map(|r| match &r.kind {
            Some(fd::Kind::File(f)) if !f.deleted => Some((f, r.flags as i32)),
            _ => None,
        });
        for (f, flags) in mapped.chain(open).filter(|(f, _)| f.dev != volume_dev) {
            let changed = |what: String| {
                RestoreError::Incompatible(format!(
                    "{} (process {}) changed since the dump ({what}); pass --allow-changed-files to restore anyway",
                    f.path, p.pid
                ))
            };
            // An fd on a symbolic link itself (O_PATH|O_NOFOLLOW): the link.
            let meta = match f.mode & libc::S_IFMT {
                libc::S_IFLNK => std::fs::symlink_metadata(&f.path),
                _ => std::fs::metadata(&f.path),
            };
            let meta = meta.map_err(|e| changed(format!("it is not there: {e}")))?;
            if fds::appended_only(f, flags, &meta, &[]).is_none() {
                fds::check_unchanged(f, &meta, &[]).map_err(changed)?;
            }
        }
    }
    Ok(())
}

/// Files behind mappings must be the same files, unchanged, as at dump
/// time: the process has their pages mapped, not copies.
fn check_mapped_files(p: &Process, allow_changed: bool, moved: &[(u64, u64)]) -> Result<(), RestoreError> {
    let mut checked = HashSet::new();
    for v in p.vmas.iter().filter(|v| v.kind == VmaKind::File as i32) {
        let Some(f) = v.file.as_ref().filter(|f| !f.deleted) else { continue };
        if !checked.insert((&f.path, f.ino)) {
            continue;
        }
        let meta = std::fs::metadata(&f.path)
            .map_err(|e| RestoreError::Incompatible(format!("mapped file {} is not there: {e}", f.path)))?;
        if allow_changed {
            continue;
        }
        let changed = |what: String| {
            RestoreError::Incompatible(format!(
                "mapped file {} changed since the dump ({what}); pass --allow-changed-files to restore anyway",
                f.path
            ))
        };
        fds::check_unchanged(f, &meta, moved).map_err(changed)?;
        if !f.content_hash.is_empty() {
            let now = std::fs::read(&f.path).map_err(|e| changed(format!("cannot read it: {e}")))?;
            if stasis_image::ChunkId::of(&now).0[..] != f.content_hash[..] {
                return Err(changed("its contents differ".into()));
            }
        }
    }
    Ok(())
}

/// Wait until every pid and thread id of the tree is free. A process that
/// was just killed keeps its pid until its parent reaps it, and PID 1 on
/// some machines reaps orphans a second or two late. With `only_dying`, a
/// pid held by a process that is not dying fails at once.
fn wait_free(tree: &ProcessTree, timeout: Duration, only_dying: bool) -> Result<(), RestoreError> {
    let deadline = Instant::now() + timeout;
    // The helpers that make sessions and groups whose leader is gone take
    // the leaders' pids for a moment: an id still used by a group or
    // session on this host is taken too (clone3 says EEXIST).
    let helpers: Vec<i32> = tree.leaderless_sessions.iter().chain(&tree.leaderless_groups).copied().collect();
    if !helpers.is_empty() {
        loop {
            let user = proc::all().into_iter().find(|(_, s)| helpers.contains(&s.pgrp) || helpers.contains(&s.session));
            let Some((pid, s)) = user else { break };
            if Instant::now() >= deadline || (only_dying && !dying(pid.as_raw(), &s)) {
                let id = if helpers.contains(&s.pgrp) { s.pgrp } else { s.session };
                return Err(RestoreError::GroupTaken { id, pid: pid.as_raw(), comm: s.comm });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let ids = tree
        .processes
        .iter()
        .flat_map(|p| p.threads.iter().map(|t| t.tid))
        .chain(tree.zombies.iter().map(|z| z.pid))
        .chain(helpers);
    for tid in ids {
        let path = format!("/proc/{tid}");
        loop {
            let stat = std::fs::read_to_string(format!("{path}/stat"));
            let Ok(stat) = stat else { break };
            let parsed = proc::parse_stat(&stat).ok();
            if Instant::now() >= deadline || (only_dying && parsed.as_ref().is_some_and(|s| !dying(tid, s))) {
                let comm = parsed.map(|s| s.comm).unwrap_or_default();
                return Err(RestoreError::PidTaken { pid: tid, comm });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// `make` a process at `pid`, again while it fails because the pid is
/// still taken (`taken`: EEXIST) though no process has it any more: a pid
/// whose process was just reaped is freed a moment after its /proc entry
/// goes (tens of milliseconds here, longer under load), which
/// [`wait_free`] cannot see. Up to 10 s.
fn retry_while_freed<T, E>(
    pid: i32,
    mut make: impl FnMut() -> Result<T, E>,
    taken: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match make() {
            Err(e)
                if pid > 0
                    && taken(&e)
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10))
            }
            r => return r,
        }
    }
}

/// Whether the task holding `tid` is on its way out: a zombie, exiting
/// (PF_EXITING), or with a SIGKILL pending that it has not acted on yet.
fn dying(tid: i32, stat: &proc::Stat) -> bool {
    const PF_EXITING: u32 = 0x4;
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    let status = proc::read(Pid::from_raw(tid), "status").map(|t| proc::parse_status(&t));
    matches!(stat.state, 'Z' | 'X')
        || stat.flags & PF_EXITING != 0
        || status.is_ok_and(|s| (s.sig_pnd | s.shd_pnd) & sigkill != 0)
}

/// Size of the trampoline (one page of code) and scratch (the rest).
const TRAMPOLINE_LEN: u64 = 64 * 1024;
const SCRATCH_OFFSET: u64 = 4096;
const PAGE: u64 = 4096;
/// rseq(2) flag.
const RSEQ_FLAG_UNREGISTER: u64 = 1;
/// `sizeof(struct robust_list_head)`, the only length set_robust_list takes.
const ROBUST_LIST_HEAD_LEN: u64 = 24;

/// What building a process's memory needs, the same for every process.
#[derive(Clone, Copy)]
struct MemoryRecipe<'a> {
    image: &'a Image,
    /// The tree's shared memory objects, by id.
    objects: &'a HashMap<u64, std::os::fd::OwnedFd>,
    /// The tree's deleted files, by their contents' address space.
    deleted: &'a HashMap<u32, std::os::fd::OwnedFd>,
    /// The fd number at which the puppet inherited a pidfd of the agent.
    agent_fd: i32,
    /// For a lazy restore: where each process's private anonymous memory
    /// is left to load once the tree runs.
    lazy: Option<&'a std::cell::RefCell<lazy::Lazy>>,
    /// Whether every frame was checked before (not by a lazy restore).
    verified: bool,
}

/// What one puppet is built from.
struct Recipe<'a> {
    memory: MemoryRecipe<'a>,
    process: &'a Process,
    fds: Vec<fds::Planned>,
    /// The tree's pseudo-terminal pairs, as dumped and as made.
    ptys: (&'a [stasis_image::records::Pty], &'a HashMap<u32, pty::Made>),
    /// Working directories removed while in use, made again for the
    /// restore: the path each process enters.
    cwds: &'a deleted::Directories,
    /// The process has zombie children, whose exits queued SIGCHLD that the
    /// process did not get then.
    reap: bool,
    /// Its fd table is its parent's, built already, where the agent's
    /// pidfd was left open at this number: its fds are not touched.
    shared_table: Option<u64>,
    /// Its table is shared with a process built later: the agent's pidfd
    /// is left open in it ([`Puppet::agent_left`]).
    keep_agent: bool,
}

/// The ptrace options puppets are seized with. EXITKILL: if stasis dies
/// half-way, the puppet dies with it (and so do the puppets it forks, which
/// inherit the options). TRACEFORK and TRACECLONE: the event of a process
/// it makes tells that process's pid here (its own, inside a new PID
/// namespace, differs); a fork with exit signal SIGCHLD reports only with
/// the first.
fn puppet_options() -> Options {
    Options::PTRACE_O_TRACESYSGOOD
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_EXITKILL
}

/// A process being built. Dropping it kills it (before its threads are
/// detached), so an error never leaves a half-restored process running.
struct Puppet {
    /// In the agent's PID namespace.
    pid: Pid,
    /// In its own: the image's pid.
    ns_pid: i32,
    /// Declared before `child`: detached after the kill below.
    main: Option<Seized>,
    threads: Vec<Seized>,
    /// The agent's handle on a puppet it created itself (a root of the
    /// tree); the others are children of their parent puppets.
    child: Option<Child>,
    /// Killed when dropped (until released).
    alive: bool,
    /// Base of the trampoline page, then the scratch pages.
    tramp: u64,
    host_xfeatures: u64,
    /// Let go stopped by this signal, as the process was at the dump: the
    /// one that had stopped it (SIGTSTP...) when the process leaves it to
    /// its default action, else SIGSTOP.
    stop: Option<Signal>,
    /// Its memory is built ([`Puppet::build_memory`]): the pages written.
    memory_built: Option<u64>,
    /// Forked from a parent whose memory was built: it has the parent's
    /// mappings, of which it keeps those it had from its parent.
    forked_built: bool,
    /// Built, its fd table shared with children built later: the agent's
    /// pidfd left open in it, at this number, for them (the last one
    /// closes it).
    agent_left: Option<u64>,
}

impl Drop for Puppet {
    fn drop(&mut self) {
        if self.alive {
            let _ = stasis_sys::nix::sys::signal::kill(self.pid, Signal::SIGKILL);
            // Traced threads that die wait for their tracer to reap them, and
            // the process cannot be reaped before its threads are. The
            // agent's own child is reaped by `child`.
            use stasis_sys::nix::sys::wait::{waitpid, WaitPidFlag};
            for t in &self.threads {
                let _ = waitpid(t.pid(), Some(WaitPidFlag::__WALL));
            }
            if self.child.is_none() {
                let _ = waitpid(self.pid, Some(WaitPidFlag::__WALL));
            }
        }
    }
}

impl Puppet {
    /// A root of the tree: a child of the agent at `pid`, or of the init
    /// of `pidns` at `pid` inside it.
    fn create(ns_pid: i32, pidns: Option<&mut PidNamespace>) -> Result<Puppet, RestoreError> {
        let create = |what: String| RestoreError::Create { pid: ns_pid, what };
        // The puppet only pauses: a self-sent SIGSTOP could still be queued
        // when we take it, and would stop the restored process later.
        // ns_pid 0: any pid (a helper's, outside a PID namespace).
        let tids = if ns_pid == 0 { vec![] } else { vec![Pid::from_raw(ns_pid)] };
        let (pid, child) = match pidns {
            Some(ns) => (ns.spawn_paused(Pid::from_raw(ns_pid)).map_err(|e| create(crate::chain(&e)))?, None),
            None => {
                let child = retry_while_freed(
                    ns_pid,
                    || clone3::spawn_with_tid(&tids, ChildAction::Pause),
                    |e| matches!(e, clone3::Error::Clone3 { errno: stasis_sys::nix::errno::Errno::EEXIST, .. }),
                )
                .map_err(|e| create(crate::chain(&e)))?;
                (child.pid(), Some(child))
            }
        };
        let opts = puppet_options();
        let mut puppet = Puppet {
            pid,
            ns_pid,
            main: None,
            threads: Vec::new(),
            child,
            alive: true,
            tramp: 0,
            host_xfeatures: 0,
            stop: None,
            memory_built: None,
            forked_built: false,
            agent_left: None,
        };
        let mut main = Seized::seize(pid, opts).map_err(|e| create(e.to_string()))?;
        match main.interrupt(Duration::from_secs(10)).map_err(|e| create(e.to_string()))? {
            stasis_sys::ptrace::Stop::Event { event: stasis_sys::ptrace::PTRACE_EVENT_STOP, .. } => {}
            other => return Err(create(format!("unexpected stop {other:?}"))),
        }
        puppet.host_xfeatures = main.get_xstate().ok().and_then(|x| x.xfeatures()).unwrap_or(0);
        puppet.main = Some(main);
        Ok(puppet)
    }

    /// A child of this (still unbuilt) puppet at `pid`: a copy of it, made
    /// by an injected clone3, seized from birth.
    fn fork(&mut self, pid: i32, exit_signal: i32) -> Result<Puppet, RestoreError> {
        self.fork_sharing(pid, exit_signal, false)
    }

    /// [`Puppet::fork`], the child sharing this puppet's fd table when
    /// `files` (CLONE_FILES).
    fn fork_sharing(&mut self, pid: i32, exit_signal: i32, files: bool) -> Result<Puppet, RestoreError> {
        let create = |what: String| RestoreError::Create { pid, what };
        let site = find_syscall_site(self.pid).map_err(|e| create(crate::chain(&e)))?;
        let main = self.main.as_mut().expect("seized in create");
        let mut inj = main.begin_injection(site).map_err(|e| create(crate::chain(&e)))?;
        let made = retry_while_freed(
            pid,
            || match files {
                true => inj.clone_process_sharing_files(Pid::from_raw(pid), exit_signal),
                false => inj.clone_process(Pid::from_raw(pid), exit_signal),
            },
            |e| matches!(e, stasis_sys::inject::Error::Failed { errno: stasis_sys::nix::errno::Errno::EEXIST, .. }),
        );
        inj.finish().map_err(|e| create(crate::chain(&e)))?;
        let made = made.map_err(|e| create(crate::chain(&e)))?;
        Ok(Puppet {
            pid: made.pid(),
            ns_pid: pid,
            main: Some(made),
            threads: Vec::new(),
            child: None,
            alive: true,
            tramp: 0,
            host_xfeatures: self.host_xfeatures,
            stop: None,
            memory_built: None,
            forked_built: self.memory_built.is_some(),
            agent_left: None,
        })
    }

    /// One system call without memory arguments, in a puppet not built yet.
    fn simple_call(&mut self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64, RestoreError> {
        let err = |e: stasis_sys::inject::Error| step(what)(format!("process {}: {}", self.pid, crate::chain(&e)));
        let site = find_syscall_site(self.pid).map_err(|e| step(what)(crate::chain(&e)))?;
        let main = self.main.as_mut().expect("seized in create");
        let mut inj = main.begin_injection(site).map_err(err)?;
        let r = inj.syscall_ok(nr, args);
        inj.finish().map_err(err)?;
        r.map_err(err)
    }

    /// Let this unbuilt puppet, a helper, exit with status 0. The agent's
    /// own child is reaped here; a child of a puppet is reaped by it, one
    /// of a namespace's init by the init.
    fn leave(mut self) -> Result<(), RestoreError> {
        let what = format!("helper {}", self.ns_pid);
        let err = |e: String| step(&what)(e);
        let site = find_syscall_site(self.pid).map_err(|e| err(crate::chain(&e)))?;
        let main = self.main.as_mut().expect("seized in create");
        let mut regs = main.get_regs().map_err(|e| err(e.to_string()))?;
        regs.0.rip = site.0;
        regs.0.rax = libc::SYS_exit_group as u64;
        // Not a system call to restart.
        regs.0.orig_rax = u64::MAX;
        regs.0.rdi = 0;
        main.set_regs(&regs).map_err(|e| err(e.to_string()))?;
        let main = self.main.take().expect("seized");
        main.detach().map_err(|e| err(e.to_string()))?;
        self.alive = false;
        if let Some(mut child) = self.child.take() {
            child.wait_timeout(Duration::from_secs(10)).map_err(|e| err(e.to_string()))?;
        }
        Ok(())
    }

    /// Turn this unbuilt puppet into the zombie `z`: named like it, it runs
    /// exit_group with its code, or kills itself with its signal (without a
    /// core dump), once let go. Its parent is a puppet, stopped: the zombie
    /// stays until the restored parent waits for it.
    fn exit_as(mut self, z: &stasis_image::records::Zombie) -> Result<(), RestoreError> {
        let what = format!("zombie {}", z.pid);
        let err = |e: String| step(&what)(e);
        let site = find_syscall_site(self.pid).map_err(|e| err(crate::chain(&e)))?;
        let status = z.wait_status;
        let signal = status & 0x7f;
        let main = self.main.as_mut().expect("seized in create");
        {
            let mut inj = main.begin_injection(site).map_err(|e| err(crate::chain(&e)))?;
            let mut r = (|| -> Result<(), stasis_sys::inject::Error> {
                let scratch = inj.scratch()?.addr().0;
                let mut name = z.comm.as_bytes().to_vec();
                name.push(0);
                inj.scratch()?.write(0, &name)?;
                inj.syscall_ok(libc::SYS_prctl, [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0])?;
                if signal != 0 {
                    // Default action (the puppet has the agent's handlers;
                    // SIGKILL's and SIGSTOP's cannot be changed), and no
                    // core file.
                    inj.scratch()?.write(0, &[0u8; 32])?;
                    if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                        inj.syscall_ok(libc::SYS_rt_sigaction, [signal as u64, scratch, 0, 8, 0, 0])?;
                    }
                    inj.syscall_ok(libc::SYS_prlimit64, [0, libc::RLIMIT_CORE as u64, scratch, 0, 0, 0])?;
                }
                Ok(())
            })();
            let finished = inj.finish();
            r = r.and(finished);
            r.map_err(|e| err(crate::chain(&e)))?;
        }
        let mut regs = main.get_regs().map_err(|e| err(e.to_string()))?;
        let (nr, a0, a1) = if signal != 0 {
            (libc::SYS_kill, self.ns_pid as u64, signal as u64)
        } else {
            (libc::SYS_exit_group, ((status >> 8) & 0xff) as u64, 0)
        };
        regs.0.rip = site.0;
        regs.0.rax = nr as u64;
        // Not a system call to restart.
        regs.0.orig_rax = u64::MAX;
        regs.0.rdi = a0;
        regs.0.rsi = a1;
        main.set_regs(&regs).map_err(|e| err(e.to_string()))?;
        main.set_sigmask(0).map_err(|e| err(e.to_string()))?;
        let main = self.main.take().expect("seized");
        main.detach().map_err(|e| err(e.to_string()))?;
        self.alive = false;
        Ok(())
    }

    /// Step 3's memory: a trampoline, the agent's memory unmapped (but
    /// the mappings the process has from its parent, when it was forked
    /// from its built parent), the vdso moved, every mapping made and the
    /// stored pages written. Run before the process's children are forked
    /// when they share pages with it, else at the start of [`Puppet::build`].
    /// Returns the pages written.
    fn build_memory(
        &mut self,
        m: &MemoryRecipe<'_>,
        p: &Process,
        phase: &mut dyn FnMut(&str),
        progress: &dyn Fn(u64, u64),
    ) -> Result<u64, RestoreError> {
        let MemoryRecipe { image, objects, deleted, agent_fd, lazy, .. } = *m;
        let inherited = self.forked_built;
        let pid = self.pid;
        for t in &p.threads {
            let xf = XState::from_bytes(t.xstate.clone()).xfeatures().unwrap_or(0);
            if xf & !self.host_xfeatures != 0 {
                return Err(RestoreError::Incompatible(format!(
                    "thread {} used CPU register state (xfeatures {xf:#x}) this CPU lacks (it has {:#x})",
                    t.tid, self.host_xfeatures
                )));
            }
        }

        // The trampoline goes where neither the agent's copy nor the image
        // has anything.
        let current = current_maps(pid)?;
        let mut taken: Vec<(u64, u64)> = current.iter().map(|c| (c.start, c.end)).collect();
        taken.extend(p.vmas.iter().map(|v| (v.start, v.end)));
        self.tramp = layout::free_gap(&taken, TRAMPOLINE_LEN, 1 << 32, 1 << 46).ok_or_else(|| RestoreError::Step {
            step: "layout".into(),
            what: "no free gap for the trampoline".into(),
        })?;
        let moves = layout::special_moves(&current, &p.vmas).map_err(RestoreError::Incompatible)?;

        let main = self.main.as_mut().expect("seized in create");
        let rseq = main.rseq_configuration().map_err(|e| step("rseq")(crate::chain(&e)))?;
        let vdso_site = find_syscall_site(pid).map_err(|e| step("injection")(crate::chain(&e)))?;
        // Phase A: through the vdso, map the trampoline.
        {
            let mut inj = main.begin_injection(vdso_site).map_err(|e| step("injection")(crate::chain(&e)))?;
            let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
            let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
            let at = inj
                .syscall_ok(libc::SYS_mmap, [self.tramp, TRAMPOLINE_LEN, prot, flags, u64::MAX, 0])
                .map_err(|e| step("trampoline")(crate::chain(&e)))?;
            if at != self.tramp {
                return Err(step("trampoline")(format!("mapped at {at:#x}, not {:#x}", self.tramp)));
            }
            // syscall; int3
            stasis_sys::process_vm::write_exact(pid, RemoteAddr(self.tramp), &[0x0f, 0x05, 0xcc])
                .map_err(|e| step("trampoline")(crate::chain(&e)))?;
            // The puppet inherited the agent's rseq registration, which the
            // kernel writes to on every return to user space: drop it while
            // the agent's memory is still there.
            if let Some(rs) = rseq.filter(|r| r.rseq_abi_pointer != 0) {
                inj.syscall_ok(
                    libc::SYS_rseq,
                    [
                        rs.rseq_abi_pointer,
                        u64::from(rs.rseq_abi_size),
                        RSEQ_FLAG_UNREGISTER,
                        u64::from(rs.signature),
                        0,
                        0,
                    ],
                )
                .map_err(|e| step("rseq")(crate::chain(&e)))?;
            }
            inj.finish().map_err(|e| step("injection")(crate::chain(&e)))?;
        }
        phase("trampoline");

        let tramp = self.tramp;
        let scratch = tramp + SCRATCH_OFFSET;
        let mut inj = main.begin_injection(RemoteAddr(tramp)).map_err(|e| step("injection")(crate::chain(&e)))?;
        let mut r = Remote { inj: &mut inj, pid, scratch, agent_pidfd: Some(agent_fd as u64) };

        // Nothing of the agent's memory stays, but what the process has from
        // its parent by fork.
        let kept: Vec<u64> =
            p.vmas.iter().filter(|v| v.from_parent && inherited).flat_map(|v| [v.start, v.end]).collect();
        for c in &current {
            let special = matches!(c.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]");
            if special || (c.start >= tramp && c.end <= tramp + TRAMPOLINE_LEN) {
                continue;
            }
            for gone in crate::dump::memory::without(c.start..c.end, &kept) {
                r.call("unmap", libc::SYS_munmap, [gone.start, gone.end - gone.start, 0, 0, 0, 0])?;
            }
        }
        // The special mappings move by one distance; through a free spot
        // first when the two places overlap.
        if let Some(first) = moves.first() {
            let lo = moves.iter().map(|m| m.from.min(m.to)).min().unwrap_or(0);
            let hi = moves.iter().map(|m| m.from.max(m.to) + m.len).max().unwrap_or(0);
            let span = moves.iter().map(|m| m.from + m.len).max().unwrap_or(0) - first.from;
            let mut taken: Vec<(u64, u64)> = p.vmas.iter().map(|v| (v.start, v.end)).collect();
            taken.push((lo, hi));
            taken.push((tramp, tramp + TRAMPOLINE_LEN));
            let temp = layout::free_gap(&taken, span, 1 << 32, 1 << 46)
                .ok_or_else(|| step("vdso")("no free gap to move the vdso through".into()))?;
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            for m in &moves {
                r.call("vdso", libc::SYS_mremap, [m.from, m.len, m.len, flags, temp + (m.from - first.from), 0])?;
            }
            for m in &moves {
                r.call("vdso", libc::SYS_mremap, [temp + (m.from - first.from), m.len, m.len, flags, m.to, 0])?;
            }
        }
        for c in current.iter().filter(|c| matches!(c.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]")) {
            if !moves.iter().any(|m| m.name == c.name) {
                r.call("unmap", libc::SYS_munmap, [c.start, c.end - c.start, 0, 0, 0, 0])?;
            }
        }
        phase("unmap");

        let shmem_records = image.processes().map(|t| t.shmem.as_slice()).unwrap_or_default();
        let mut before: Option<&stasis_image::records::Vma> = None;
        for v in &p.vmas {
            if v.from_parent && inherited {
                r.keep_from_parent(v, &p.from_parent)?;
                before = None;
                continue;
            }
            if before.is_some_and(|b| layout::kept_apart(b, v)) {
                r.map_apart(before.expect("checked"), v)?;
            } else {
                let sysv = shmem_records.iter().find(|m| m.id == v.shmem && m.sysv && v.shmem != 0).map(|m| m.size);
                r.map_vma(v, objects, deleted, sysv)?;
            }
            before = Some(v);
        }
        phase("map");
        let lazy_ranges = match lazy {
            Some(lazy) => r.register_lazy(p, inherited, lazy)?,
            None => Vec::new(),
        };
        let pages = write_memory(image, pid, p.mm, &lazy_ranges, m.verified, progress)?;
        r.guards(p)?;
        r.aio_rings(p)?;
        phase("memory");

        inj.finish().map_err(|e| step("injection")(crate::chain(&e)))?;
        self.memory_built = Some(pages);
        Ok(pages)
    }

    /// Step 3 of the module docs (its memory first, unless built
    /// already). Returns the pages written.
    fn build(
        &mut self,
        recipe: Recipe<'_>,
        phase: &mut dyn FnMut(&str),
        progress: &dyn Fn(u64, u64),
    ) -> Result<u64, RestoreError> {
        let Recipe { memory, process: p, fds: planned, ptys, cwds, reap, shared_table, keep_agent } = recipe;
        // In a table built already, the agent's pidfd is where it was left.
        let memory = MemoryRecipe { agent_fd: shared_table.map_or(memory.agent_fd, |fd| fd as i32), ..memory };
        let (deleted, agent_fd) = (memory.deleted, memory.agent_fd);
        let pid = self.pid;
        let pages = match self.memory_built {
            Some(pages) => pages,
            None => self.build_memory(&memory, p, phase, progress)?,
        };

        let main = self.main.as_mut().expect("seized in create");
        let tramp = self.tramp;
        let scratch = tramp + SCRATCH_OFFSET;
        let mut inj = main.begin_injection(RemoteAddr(tramp)).map_err(|e| step("injection")(crate::chain(&e)))?;
        let mut r = Remote { inj: &mut inj, pid, scratch, agent_pidfd: None };
        if reap {
            // rt_sigtimedwait({SIGCHLD}, NULL, {0, 0}) until none is left.
            let mut raw = (1u64 << (libc::SIGCHLD - 1)).to_le_bytes().to_vec();
            raw.extend_from_slice(&[0u8; 16]);
            r.put(0, &raw)?;
            while r
                .inj
                .syscall(libc::SYS_rt_sigtimedwait, [scratch, 0, scratch + 8, 8, 0, 0])
                .map_err(|e| step("zombies")(crate::chain(&e)))?
                == libc::SIGCHLD as i64
            {}
        }

        // Nothing of the agent's fds stays. Its pidfd only, moved above the
        // fds to install, until they are. A table shared with the parent
        // is the parent's, built already.
        let agent = match shared_table {
            Some(fd) => fd,
            None => {
                let high = planned.iter().map(fds::Planned::fd).max().map_or(0, |fd| fd as u64 + 1);
                let agent =
                    r.call("fds", libc::SYS_fcntl, [agent_fd as u64, libc::F_DUPFD_CLOEXEC as u64, high, 0, 0, 0])?;
                if agent > 0 {
                    r.call("close fds", libc::SYS_close_range, [0, agent - 1, 0, 0, 0, 0])?;
                }
                r.call("close fds", libc::SYS_close_range, [agent + 1, u32::MAX as u64, 0, 0, 0, 0])?;
                agent
            }
        };
        r.agent_pidfd = Some(agent);

        r.mm_fields(p, deleted)?;
        if shared_table.is_none() {
            r.install_fds(planned)?;
        }
        r.packet_rings(p)?;
        if let Some(dir) = cwds.cwd_in_proc(p) {
            // Through the agent's fd: the helper's /proc directory may not
            // be at that path in the process's /proc.
            let what = format!("cwd {}", p.cwd);
            let pidfd = r.agent_pidfd.ok_or_else(|| step(&what)("no pidfd of the agent".into()))?;
            let fd =
                r.call(&what, libc::SYS_pidfd_getfd, [pidfd, std::os::fd::AsRawFd::as_raw_fd(dir) as u64, 0, 0, 0, 0])?;
            let entered = r.call(&what, libc::SYS_fchdir, [fd, 0, 0, 0, 0, 0]);
            r.call(&what, libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
            entered?;
        }
        r.take_locks(p)?;
        r.fd_owners(p)?;
        r.controlling_terminal(p, ptys)?;
        match keep_agent {
            true => self.agent_left = r.agent_pidfd.take(),
            false => {
                if let Some(fd) = r.agent_pidfd.take() {
                    r.call("fds", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                }
            }
        }
        phase("fds");
        r.attributes(p, cwds)?;
        r.signals(p)?;
        // Per task, inherited by the threads made below.
        r.loginuid(p, pid)?;
        phase("attributes");

        // Seccomp filters every thread has, in the main thread before the
        // others are made: they inherit them, one filter for all as before
        // (a later filter set with TSYNC needs that).
        let shared = shared_filters(p);
        r.seccomp(&p.threads[0], &p.threads[0].seccomp[..shared], false)?;
        // Threads, each stopped before it runs; then what is per thread.
        // Kept in self at once, so that a failure kills them with the rest
        // before they are detached.
        // A thread id freed a moment ago may still be taken (EEXIST), as
        // a pid may.
        for t in p.threads.iter().skip(1) {
            let seized = retry_while_freed(
                t.tid,
                || r.inj.clone_thread(Pid::from_raw(t.tid), None),
                |e| matches!(e, stasis_sys::inject::Error::Failed { errno: stasis_sys::nix::errno::Errno::EEXIST, .. }),
            )
            .map_err(|e| step("threads")(crate::chain(&e)))?;
            self.threads.push(seized);
        }
        // Threads in cgroups of their own (the process is in its already).
        if p.threads.iter().any(|t| !t.cgroups.is_empty()) {
            let host = crate::cgroups::Host::here();
            for (seized, t) in self.threads.iter().zip(p.threads.iter().skip(1)) {
                for warning in host.place_thread(seized.pid().as_raw(), t.tid, &t.cgroups) {
                    tracing::warn!("{warning}");
                }
            }
        }
        // Timers may signal one thread: created once every thread exists.
        r.posix_timers(p)?;
        // Credentials are per thread, and each sets its own last: clone3 with
        // set_tid above needed the agent's privileges.
        r.per_thread(&p.threads[0], p)?;
        for (seized, t) in self.threads.iter_mut().zip(p.threads.iter().skip(1)) {
            let mut inj = seized.begin_injection(RemoteAddr(tramp)).map_err(|e| step("threads")(crate::chain(&e)))?;
            let mut tr = Remote { inj: &mut inj, pid, scratch, agent_pidfd: None };
            tr.per_thread(t, p)?;
            inj.finish().map_err(|e| step("threads")(crate::chain(&e)))?;
        }
        // Process-wide pending signals last: every thread blocks all signals
        // until its registers and mask are set, so none is delivered early.
        r.shared_pending(p)?;
        phase("threads");
        inj.finish().map_err(|e| step("injection")(crate::chain(&e)))?;
        // Last, the trampoline itself: the call returns to a stop, and the
        // thread never executes there again.
        let mut inj = main.begin_injection(RemoteAddr(tramp)).map_err(|e| step("injection")(crate::chain(&e)))?;
        inj.syscall_ok(libc::SYS_munmap, [tramp, TRAMPOLINE_LEN, 0, 0, 0, 0])
            .map_err(|e| step("trampoline")(crate::chain(&e)))?;
        inj.finish().map_err(|e| step("injection")(crate::chain(&e)))?;
        Ok(pages)
    }

    /// Step 4, first half: every thread's registers and signal mask.
    fn set_final_state(&mut self, p: &Process) -> Result<(), RestoreError> {
        // A handled or ignored SIGTSTP would not stop it: SIGSTOP then.
        let default = |n: i32| p.sigactions.iter().find(|a| a.signal == n).is_none_or(|a| a.handler == 0);
        self.stop = p.stopped.then(|| match Signal::try_from(p.stop_signal) {
            Ok(s) if p.stop_signal != 0 && default(p.stop_signal) => s,
            _ => Signal::SIGSTOP,
        });
        let main = self.main.as_ref().expect("main thread");
        for (seized, t) in std::iter::once(main).chain(&self.threads).zip(&p.threads) {
            let err = |e: stasis_sys::regs::Error| step("registers")(format!("thread {}: {e}", t.tid));
            let mut raw = [0u8; GpRegs::SIZE];
            raw.copy_from_slice(&t.gpregs);
            let mut regs = GpRegs::from_bytes(&raw);
            resume::fix_restart(&mut regs.0);
            seized.set_regs(&regs).map_err(err)?;
            seized.set_xstate(&XState::from_bytes(t.xstate.clone())).map_err(err)?;
            seized.set_sigmask(t.sigmask).map_err(err)?;
        }
        if let Some(adj) = p.oom_score_adj {
            let path = format!("/proc/{}/oom_score_adj", self.pid);
            let now = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<i32>().ok());
            if now != Some(adj) {
                std::fs::write(&path, adj.to_string()).map_err(|e| {
                    step("oom_score_adj")(format!(
                        "cannot set it to {adj}: {e} (lowering it below stasis's own needs CAP_SYS_RESOURCE)"
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Step 4, second half: let go. Returns the number of threads.
    fn release(mut self) -> Result<usize, RestoreError> {
        let mut all: Vec<Seized> = Vec::new();
        all.push(self.main.take().expect("main thread"));
        all.append(&mut self.threads);
        let n = all.len();
        // The process is on its own now: neither killed nor reaped by us.
        self.alive = false;
        if let Some(child) = self.child.take() {
            child.disown();
        }
        // A stopped process gets its stop signal while still held: pending, it
        // stops the process, all its threads, as they resume, before they
        // run an instruction.
        if let Some(signal) = self.stop {
            stasis_sys::nix::sys::signal::kill(self.pid, signal)
                .map_err(|e| step("resume")(format!("{signal}: {e}")))?;
        }
        for seized in all {
            let tid = seized.pid();
            seized.detach().map_err(|e| step("resume")(format!("thread {tid}: {e}")))?;
        }
        Ok(n)
    }
}

/// The puppet's mappings now.
fn current_maps(pid: Pid) -> Result<Vec<Current>, RestoreError> {
    let text = proc::read(pid, "maps").map_err(|e| step("layout")(crate::chain(&e)))?;
    let maps = proc::parse_smaps(&text).map_err(step("layout"))?;
    Ok(maps.into_iter().map(|m| Current { start: m.start, end: m.end, name: m.name }).collect())
}

/// Write the stored pages of address space `mm` through /proc/PID/mem,
/// which also writes read-only and PROT_NONE pages (FOLL_FORCE).
/// Chunks wholly in `lazy` are left out (loaded later); `verified`: every
/// frame of the image was checked just before ([`Image::verify_frames`]),
/// so chunks are not hashed again.
fn write_memory(
    image: &Image,
    pid: Pid,
    mm: u32,
    lazy: &[std::ops::Range<u64>],
    verified: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<u64, RestoreError> {
    /// Chunks read and written by one worker at a time, and written to
    /// the process in one call when they follow each other.
    const PIECE: usize = 128;
    let mem = ProcMem::open(pid, true).map_err(|e| step("memory")(crate::chain(&e)))?;
    let chunks: Vec<(u64, u64, stasis_image::ChunkId)> = image
        .memory()
        .iter()
        .filter(|r| r.mm == mm)
        .flat_map(|r| image.region_chunks(r))
        .filter(|&(at, len, _)| !lazy.iter().any(|l| l.start <= at && at + len <= l.end))
        .collect();
    let total: u64 = chunks.iter().map(|c| c.1).sum();
    // On all cores: each worker takes the next piece, reads its chunks
    // (decompressed, their hashes checked) and writes them, with buffers
    // of its own used again piece after piece (fresh ones would each take
    // new pages, zeroed by the kernel and again by us).
    let pieces = chunks.len().div_ceil(PIECE);
    let buffers = || vec![Vec::new(); PIECE];
    let write = |buffers: &mut Vec<Vec<u8>>, k: usize| {
        let piece = &chunks[k * PIECE..((k + 1) * PIECE).min(chunks.len())];
        write_piece(image, &mem, piece, lazy, verified, buffers)
    };
    let mut bytes = 0;
    crate::workers::each(pieces, crate::cores(), buffers, write, |_, written| {
        bytes += written?;
        progress(bytes, total);
        Ok::<(), RestoreError>(())
    })?;
    Ok(bytes / PAGE)
}

/// The chunks of `piece` read from `image` and written into `mem`, runs
/// of adjacent windows in one write, but for their bytes in `lazy` (a
/// chunk may span a mapping loaded lazily and one that is not; a write
/// through /proc/PID/mem to a page missing there fails), each chunk read
/// into one of `buffers`; the bytes written.
fn write_piece(
    image: &Image,
    mem: &ProcMem,
    piece: &[(u64, u64, stasis_image::ChunkId)],
    lazy: &[std::ops::Range<u64>],
    verified: bool,
    buffers: &mut [Vec<u8>],
) -> Result<u64, RestoreError> {
    let mut chunks = Vec::with_capacity(piece.len());
    for (&(at, len, id), buf) in piece.iter().zip(buffers.iter_mut()) {
        // Not hashed again when every frame was checked first (not by a
        // lazy restore, which checks only references).
        match verified {
            true => image.read_verified_chunk_into(&id, buf),
            false => image.read_chunk(&id).map(|data| *buf = data),
        }
        .map_err(|e| step("memory")(crate::chain(&e)))?;
        if buf.len() as u64 != len {
            return Err(step("memory")(format!("chunk {id} at {at:#x} holds {} bytes, not {len}", buf.len())));
        }
        chunks.push((at, &buf[..]));
    }
    // Runs of bytes that follow each other, each written in one call from
    // the chunks' own buffers.
    let mut runs: Vec<(u64, Vec<&[u8]>)> = Vec::new();
    let mut bytes = 0;
    for &(at, data) in &chunks {
        let len = data.len() as u64;
        let lazy_part: Vec<u64> =
            lazy.iter().filter(|l| l.start < at + len && at < l.end).flat_map(|l| [l.start, l.end]).collect();
        for eager in crate::dump::memory::without(at..at + len, &lazy_part) {
            let part = &data[(eager.start - at) as usize..(eager.end - at) as usize];
            match runs.last_mut() {
                Some((start, parts)) if *start + parts.iter().map(|p| p.len() as u64).sum::<u64>() == eager.start => {
                    parts.push(part)
                }
                _ => runs.push((eager.start, vec![part])),
            }
            bytes += eager.end - eager.start;
        }
    }
    for (at, parts) in &runs {
        write_run(mem, *at, parts).map_err(|e| step("memory")(format!("at {at:#x}: {e}")))?;
    }
    Ok(bytes)
}

/// Write `parts`, one after another, at `at` of `mem`'s process: with
/// process_vm_writev (one copy) as far as it goes, the rest (pages it may
/// not write, such as those of text, which restore fills after mapping
/// them with their final protections) through /proc/PID/mem (FOLL_FORCE,
/// but each page copied twice). The pages written are the process's own
/// (a page it shares with its parent is not written), so pinning them
/// unshares nothing that a write would not.
fn write_run(mem: &ProcMem, at: u64, parts: &[&[u8]]) -> Result<(), String> {
    let done = stasis_sys::process_vm::write_vectored(mem.pid(), RemoteAddr(at), parts).unwrap_or(0);
    let (mut skip, mut k) = (done, 0);
    while k < parts.len() && skip >= parts[k].len() {
        skip -= parts[k].len();
        k += 1;
    }
    if k == parts.len() {
        return Ok(());
    }
    let rest: Vec<&[u8]> = std::iter::once(&parts[k][skip..]).chain(parts[k + 1..].iter().copied()).collect();
    mem.write_all_vectored_at(RemoteAddr(at + done as u64), &rest).map_err(|e| crate::chain(&e))
}

/// Injected calls into one puppet thread, with the scratch area at hand.
struct Remote<'i, 'a> {
    inj: &'i mut Injection<'a>,
    pid: Pid,
    scratch: u64,
    /// A pidfd of the agent in the puppet, to fetch its fds with; above
    /// every fd to install.
    agent_pidfd: Option<u64>,
}

/// Bytes of scratch: the trampoline region less its code page.
const SCRATCH_LEN: usize = (TRAMPOLINE_LEN - SCRATCH_OFFSET) as usize;

impl Remote<'_, '_> {
    fn call(&mut self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64, RestoreError> {
        self.inj.syscall_ok(nr, args).map_err(|e| step(what)(crate::chain(&e)))
    }

    /// Put `data` at `offset` into the scratch area; returns its address.
    fn put(&mut self, offset: usize, data: &[u8]) -> Result<u64, RestoreError> {
        if offset + data.len() > SCRATCH_LEN {
            return Err(step("scratch")(format!("{} bytes do not fit", data.len())));
        }
        stasis_sys::process_vm::write_exact(self.pid, RemoteAddr(self.scratch + offset as u64), data)
            .map_err(|e| step("scratch")(crate::chain(&e)))?;
        Ok(self.scratch + offset as u64)
    }

    /// A NUL-terminated path in the scratch area.
    fn path(&mut self, offset: usize, path: &str) -> Result<u64, RestoreError> {
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        self.put(offset, &bytes)
    }

    /// Map one recorded mapping; `sysv_size`: the size of the System V
    /// segment it shows, if it is one.
    fn map_vma(
        &mut self,
        v: &stasis_image::records::Vma,
        objects: &HashMap<u64, std::os::fd::OwnedFd>,
        deleted: &HashMap<u32, std::os::fd::OwnedFd>,
        sysv_size: Option<u64>,
    ) -> Result<(), RestoreError> {
        let kind = VmaKind::try_from(v.kind).unwrap_or(VmaKind::Anonymous);
        let len = v.end - v.start;
        let what = format!("mapping {:#x}-{:#x}", v.start, v.end);
        let mut flags = u64::from(v.flags) | libc::MAP_FIXED as u64;
        if v.madvise & stasis_image::records::madvise::NORESERVE != 0 {
            flags |= libc::MAP_NORESERVE as u64;
        }
        // A private mapping charged to the commit limit though read-only
        // now (a program's relro data: written, then mprotect'ed) is made
        // writable, so it is charged again, then made read-only.
        let write = libc::PROT_WRITE as u32;
        let private = v.flags & libc::MAP_PRIVATE as u32 != 0;
        let accounted = private && v.madvise & stasis_image::records::madvise::ACCOUNT != 0 && v.prot & write == 0;
        let prot = u64::from(if accounted { v.prot | write } else { v.prot });
        match kind {
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall => return Ok(()),
            // A whole System V segment is attached with shmat, so the
            // kernel counts the attachment (shm_nattch), as before.
            _ if sysv_size.is_some_and(|size| v.offset == 0 && size.next_multiple_of(4096) == len) => {
                let object = objects
                    .get(&v.shmem)
                    .ok_or_else(|| step(&what)(format!("shared memory object {} was not made", v.shmem)))?;
                let shmid = shmem::sysv_id(object).map_err(|e| step(&what)(format!("fstat: {e}")))? as u64;
                let write = v.prot & libc::PROT_WRITE as u32 != 0;
                let exec = v.prot & libc::PROT_EXEC as u32 != 0;
                let shmflg =
                    libc::SHM_REMAP | if write { 0 } else { libc::SHM_RDONLY } | if exec { libc::SHM_EXEC } else { 0 };
                self.call(&what, libc::SYS_shmat, [shmid, v.start, shmflg as u64, 0, 0, 0])?;
                if v.prot & libc::PROT_READ as u32 == 0 {
                    self.call(&what, libc::SYS_mprotect, [v.start, len, u64::from(v.prot), 0, 0, 0])?;
                }
            }
            _ if v.shmem != 0 => {
                let object = objects
                    .get(&v.shmem)
                    .ok_or_else(|| step(&what)(format!("shared memory object {} was not made", v.shmem)))?;
                self.map_agents(v, u64::from(v.prot), flags, object, &what)
                    .map_err(|e| step(&what)(format!("shared memory object {}: {e}", v.shmem)))?;
            }
            VmaKind::File if v.file.as_ref().is_some_and(|f| f.deleted) => {
                let file = v.file.as_ref().expect("checked above");
                let made = deleted
                    .get(&file.contents_mm)
                    .ok_or_else(|| step(&what)(format!("deleted {} was not made", file.path)))?;
                self.map_agents(v, prot, flags, made, &what)
                    .map_err(|e| step(&what)(format!("deleted {}: {e}", file.path)))?;
            }
            VmaKind::File => {
                let file = v.file.as_ref().ok_or_else(|| step(&what)("file mapping without a file".into()))?;
                let shared_write =
                    v.flags & libc::MAP_SHARED as u32 != 0 && (v.prot & libc::PROT_WRITE as u32 != 0 || v.may_write);
                let mode = if shared_write { libc::O_RDWR } else { libc::O_RDONLY };
                let path = self.path(0, &file.path)?;
                let fd = self.call(&what, libc::SYS_openat, [libc::AT_FDCWD as u64, path, mode as u64, 0, 0, 0])?;
                let mapped = self.inj.syscall_ok(libc::SYS_mmap, [v.start, len, prot, flags, fd, v.offset]);
                self.call(&what, libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                mapped.map_err(|e| step(&what)(format!("{}: {e}", file.path)))?;
            }
            _ => {
                flags |= libc::MAP_ANONYMOUS as u64;
                self.call(&what, libc::SYS_mmap, [v.start, len, prot, flags, u64::MAX, 0])?;
            }
        }
        if accounted && kind != VmaKind::Shmem && v.shmem == 0 {
            if v.file.is_none() {
                // mprotect drops the charge of anonymous memory that never
                // had a page (no anon_vma yet): fault one in and drop it.
                const MADV_POPULATE_WRITE: u64 = 23;
                self.call(&what, libc::SYS_madvise, [v.start, 4096, MADV_POPULATE_WRITE, 0, 0, 0])?;
                self.call(&what, libc::SYS_madvise, [v.start, 4096, libc::MADV_DONTNEED as u64, 0, 0, 0])?;
            }
            self.call(&what, libc::SYS_mprotect, [v.start, len, u64::from(v.prot), 0, 0, 0])?;
        }
        self.advise(v, &what)
    }

    /// Map private anonymous `v` right after `before`, a mapping like it
    /// the kernel would merge it into: the process had them apart, each
    /// with pages of its own (an anon_vma each; merged, /proc/PID/maps
    /// would show one mapping where it showed two). `before` is given its
    /// anon_vma first; `v` is made unlike it (another protection, then a
    /// fork advice neither has) until it has its own, so neither the mmap
    /// nor the kernel's reuse of a neighbour's anon_vma joins them. The
    /// pages faulted in for it are dropped: the image's are written after.
    fn map_apart(
        &mut self,
        before: &stasis_image::records::Vma,
        v: &stasis_image::records::Vma,
    ) -> Result<(), RestoreError> {
        use stasis_image::records::madvise as m;
        const MADV_POPULATE_WRITE: u64 = 23;
        let what = format!("mapping {:#x}-{:#x}", v.start, v.end);
        let len = v.end - v.start;
        let page = 4096;
        // A locked mapping has its pages (so its anon_vma) already.
        if before.madvise & m::LOCKED == 0 {
            let last = before.end - page;
            self.call(&what, libc::SYS_madvise, [last, page, MADV_POPULATE_WRITE, 0, 0, 0])?;
            self.call(&what, libc::SYS_madvise, [last, page, libc::MADV_DONTNEED as u64, 0, 0, 0])?;
        }
        let prot = u64::from(v.prot);
        let flags = u64::from(v.flags) | (libc::MAP_FIXED | libc::MAP_ANONYMOUS) as u64;
        let unlike = prot ^ libc::PROT_EXEC as u64;
        self.call(&what, libc::SYS_mmap, [v.start, len, unlike, flags, u64::MAX, 0])?;
        // A fresh mapping has no fork advice; `before` may have one, not both.
        let (on, off) = if before.madvise & m::WIPEONFORK == 0 {
            (libc::MADV_WIPEONFORK, libc::MADV_KEEPONFORK)
        } else {
            (libc::MADV_DONTFORK, libc::MADV_DOFORK)
        };
        let unlike_fork = before.madvise & (m::WIPEONFORK | m::DONTFORK) != (m::WIPEONFORK | m::DONTFORK);
        if unlike_fork {
            self.call(&what, libc::SYS_madvise, [v.start, len, on as u64, 0, 0, 0])?;
        }
        self.call(&what, libc::SYS_madvise, [v.start, page, MADV_POPULATE_WRITE, 0, 0, 0])?;
        if unlike_fork {
            self.call(&what, libc::SYS_madvise, [v.start, len, off as u64, 0, 0, 0])?;
        }
        self.call(&what, libc::SYS_mprotect, [v.start, len, prot, 0, 0, 0])?;
        self.call(&what, libc::SYS_madvise, [v.start, page, libc::MADV_DONTNEED as u64, 0, 0, 0])?;
        self.advise(v, &what)
    }

    /// Registers the private anonymous mappings of `p` with a userfaultfd
    /// made in it, for `lazy` to load their pages; returns their ranges.
    /// Left out (written now): mappings from the parent, locked ones (mlock
    /// faults all their pages in), ones with guard regions.
    fn register_lazy(
        &mut self,
        p: &Process,
        inherited: bool,
        lazy: &std::cell::RefCell<lazy::Lazy>,
    ) -> Result<Vec<std::ops::Range<u64>>, RestoreError> {
        use stasis_image::records::madvise as m;
        let anonymous = [VmaKind::Anonymous as i32, VmaKind::Heap as i32, VmaKind::Stack as i32];
        let ranges: Vec<std::ops::Range<u64>> = p
            .vmas
            .iter()
            .filter(|v| anonymous.contains(&v.kind) && v.file.is_none() && v.shmem == 0)
            .filter(|v| v.flags & libc::MAP_PRIVATE as u32 != 0 && !(v.from_parent && inherited))
            .filter(|v| v.madvise & m::LOCKED == 0 && v.guards.is_empty())
            .map(|v| v.start..v.end)
            .collect();
        if ranges.is_empty() {
            return Ok(ranges);
        }
        let what = "lazy memory";
        let pidfd = stasis_sys::pidfd::PidFd::open(self.pid).map_err(|e| step(what)(crate::chain(&e)))?;
        let uffd = stasis_sys::uffd::Userfaultfd::in_process_with(self.inj, &pidfd, lazy::FEATURES, 0)
            .map_err(|e| step(what)(crate::chain(&e)))?;
        for r in &ranges {
            uffd.register(r.clone(), stasis_sys::uffd::REGISTER_MODE_MISSING)
                .map_err(|e| step(what)(crate::chain(&e)))?;
        }
        lazy.borrow_mut().add(format!("process {}", p.pid), uffd, p.mm, &ranges);
        Ok(ranges)
    }

    /// A mapping the process has from its parent by fork: the pages it no
    /// longer shared with the parent (its own, written next, or none) are
    /// dropped, and its advice and lock set again (a fork does not copy
    /// mlock).
    fn keep_from_parent(&mut self, v: &stasis_image::records::Vma, shared: &[u64]) -> Result<(), RestoreError> {
        let what = format!("mapping {:#x}-{:#x} (from the parent)", v.start, v.end);
        for own in crate::dump::memory::without(v.start..v.end, shared) {
            self.call(&what, libc::SYS_madvise, [own.start, own.end - own.start, libc::MADV_DONTNEED as u64, 0, 0, 0])?;
        }
        self.advise(v, &what)
    }

    /// The madvise(2) advice and mlock of mapping `v`.
    fn advise(&mut self, v: &stasis_image::records::Vma, what: &str) -> Result<(), RestoreError> {
        let len = v.end - v.start;
        use stasis_image::records::madvise as m;
        for (bit, advice) in [
            (m::DONTFORK, libc::MADV_DONTFORK),
            (m::WIPEONFORK, libc::MADV_WIPEONFORK),
            (m::HUGEPAGE, libc::MADV_HUGEPAGE),
            (m::NOHUGEPAGE, libc::MADV_NOHUGEPAGE),
            (m::DONTDUMP, libc::MADV_DONTDUMP),
            (m::MERGEABLE, libc::MADV_MERGEABLE),
            (m::SEQUENTIAL, libc::MADV_SEQUENTIAL),
            (m::RANDOM, libc::MADV_RANDOM),
        ] {
            if v.madvise & bit != 0 {
                self.call(what, libc::SYS_madvise, [v.start, len, advice as u64, 0, 0, 0])?;
            }
        }
        if v.madvise & m::LOCKED != 0 {
            let onfault = if v.madvise & m::LOCKONFAULT != 0 { libc::MLOCK_ONFAULT as u64 } else { 0 };
            self.call(what, libc::SYS_mlock2, [v.start, len, onfault, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Map `v` from an object the agent holds open, fetched with
    /// pidfd_getfd for the call.
    fn map_agents(
        &mut self,
        v: &stasis_image::records::Vma,
        prot: u64,
        flags: u64,
        object: &std::os::fd::OwnedFd,
        what: &str,
    ) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let pidfd = self.agent_pidfd.ok_or("no pidfd of the agent")?;
        let fd = self
            .inj
            .syscall_ok(libc::SYS_pidfd_getfd, [pidfd, object.as_raw_fd() as u64, 0, 0, 0, 0])
            .map_err(|e| format!("pidfd_getfd: {e}"))?;
        let len = v.end - v.start;
        let mapped = self.inj.syscall_ok(libc::SYS_mmap, [v.start, len, prot, flags, fd, v.offset]);
        self.call(what, libc::SYS_close, [fd, 0, 0, 0, 0, 0]).map_err(|e| e.to_string())?;
        mapped.map(drop).map_err(|e| e.to_string())
    }

    /// brk, code, data, stack, args, env and auxv (PR_SET_MM_MAP), and the
    /// exe link.
    fn mm_fields(&mut self, p: &Process, deleted: &HashMap<u32, std::os::fd::OwnedFd>) -> Result<(), RestoreError> {
        let Some(m) = &p.mm_fields else { return Ok(()) };
        // The puppet's exe link names the stasis binary. When the image's
        // process ran that same file, the link is already right, and the
        // kernel would refuse to change it anyway while the file is mapped
        // (EBUSY, kernel/sys.c `prctl_set_mm_exe_file`).
        let ours = std::fs::metadata("/proc/self/exe").ok();
        let same_exe = |exe: &stasis_image::records::FileRef| {
            use std::os::unix::fs::MetadataExt;
            ours.as_ref().is_some_and(|m| m.dev() == exe.dev && m.ino() == exe.ino)
        };
        let exe_fd = match &p.exe {
            // A deleted executable made again (with its mappings).
            Some(exe) if exe.deleted => match deleted.get(&exe.contents_mm).filter(|_| exe.contents_mm != 0) {
                Some(made) => {
                    use std::os::fd::AsRawFd;
                    let pidfd = self.agent_pidfd.ok_or_else(|| step("exe")("no pidfd of the agent".into()))?;
                    Some(self.call("exe", libc::SYS_pidfd_getfd, [pidfd, made.as_raw_fd() as u64, 0, 0, 0, 0])?)
                }
                None => None,
            },
            Some(exe) if !same_exe(exe) => {
                let path = self.path(1024, &exe.path)?;
                let fd =
                    self.call("exe", libc::SYS_openat, [libc::AT_FDCWD as u64, path, libc::O_RDONLY as u64, 0, 0, 0])?;
                Some(fd)
            }
            _ => None,
        };
        let auxv: Vec<u8> = m.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
        let auxv_at = self.put(512, &auxv)?;
        // struct prctl_mm_map (include/uapi/linux/prctl.h)
        let mut map = Vec::with_capacity(104);
        for v in [
            m.start_code,
            m.end_code,
            m.start_data,
            m.end_data,
            m.start_brk,
            m.brk,
            m.start_stack,
            m.arg_start,
            m.arg_end,
            m.env_start,
            m.env_end,
            auxv_at,
        ] {
            map.extend_from_slice(&v.to_le_bytes());
        }
        map.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
        map.extend_from_slice(&exe_fd.map_or(u32::MAX, |fd| fd as u32).to_le_bytes());
        let at = self.put(0, &map)?;
        let set = self.call(
            "mm fields",
            libc::SYS_prctl,
            [libc::PR_SET_MM as u64, libc::PR_SET_MM_MAP as u64, at, map.len() as u64, 0, 0],
        );
        if let Some(fd) = exe_fd {
            self.call("exe", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
        set.map(drop)
    }

    /// Every fd: each object fetched from the agent with pidfd_getfd and
    /// moved to its number, or dup'd from the fd it shares a description
    /// with.
    fn install_fds(&mut self, planned: Vec<fds::Planned>) -> Result<(), RestoreError> {
        if planned.is_empty() {
            return Ok(());
        }
        let agent = self.agent_pidfd.ok_or_else(|| step("fds")("no pidfd of the agent".into()))?;
        for p in &planned {
            match p {
                fds::Planned::Object { fd, object, cloexec } => {
                    use std::os::fd::AsRawFd;
                    let what = format!("fd {fd}");
                    let got =
                        self.call(&what, libc::SYS_pidfd_getfd, [agent, object.as_raw_fd() as u64, 0, 0, 0, 0])?;
                    let flags = if *cloexec { libc::O_CLOEXEC as u64 } else { 0 };
                    if got == *fd as u64 {
                        let fdflags = if *cloexec { libc::FD_CLOEXEC as u64 } else { 0 };
                        self.call(&what, libc::SYS_fcntl, [got, libc::F_SETFD as u64, fdflags, 0, 0, 0])?;
                    } else {
                        self.call(&what, libc::SYS_dup3, [got, *fd as u64, flags, 0, 0, 0])?;
                        self.call(&what, libc::SYS_close, [got, 0, 0, 0, 0, 0])?;
                    }
                }
                fds::Planned::Dup { fd, of, cloexec } => {
                    let flags = if *cloexec { libc::O_CLOEXEC as u64 } else { 0 };
                    self.call(&format!("fd {fd}"), libc::SYS_dup3, [*of as u64, *fd as u64, flags, 0, 0, 0])?;
                }
                fds::Planned::Signalfd { fd, cloexec, flags, mask } => {
                    let what = format!("signalfd {fd}");
                    let at = self.put(0, &mask.to_le_bytes())?;
                    let mut sfd_flags = *flags as u64;
                    if *cloexec {
                        sfd_flags |= libc::SFD_CLOEXEC as u64;
                    }
                    let made = self.call(&what, libc::SYS_signalfd4, [u64::MAX, at, 8, sfd_flags, 0, 0])?;
                    if made != *fd as u64 {
                        let dflags = if *cloexec { libc::O_CLOEXEC as u64 } else { 0 };
                        self.call(&what, libc::SYS_dup3, [made, *fd as u64, dflags, 0, 0, 0])?;
                        self.call(&what, libc::SYS_close, [made, 0, 0, 0, 0, 0])?;
                    }
                }
                fds::Planned::Pidfd { fd, cloexec, flags, pid } => {
                    let what = format!("pidfd {fd} (of process {pid})");
                    let pid = *pid as u64;
                    let made = self.call(&what, libc::SYS_pidfd_open, [pid, *flags as u64, 0, 0, 0, 0])?;
                    let dflags = if *cloexec { libc::O_CLOEXEC as u64 } else { 0 };
                    if made != *fd as u64 {
                        self.call(&what, libc::SYS_dup3, [made, *fd as u64, dflags, 0, 0, 0])?;
                        self.call(&what, libc::SYS_close, [made, 0, 0, 0, 0, 0])?;
                    } else if !*cloexec {
                        self.call(&what, libc::SYS_fcntl, [made, libc::F_SETFD as u64, 0, 0, 0, 0])?;
                    }
                }
                fds::Planned::Epoll { .. } => {}
                fds::Planned::Shared { .. } | fds::Planned::ProcEntry { .. } => {
                    unreachable!("fetched before the build")
                }
            }
        }
        // Epoll last: its registrations name the fds installed above.
        for p in &planned {
            let fds::Planned::Epoll { fd, cloexec, targets } = p else { continue };
            let what = format!("epoll fd {fd}");
            let flags = if *cloexec { libc::EPOLL_CLOEXEC as u64 } else { 0 };
            let made = self.call(&what, libc::SYS_epoll_create1, [flags, 0, 0, 0, 0, 0])?;
            if made != *fd as u64 {
                let dflags = if *cloexec { libc::O_CLOEXEC as u64 } else { 0 };
                self.call(&what, libc::SYS_dup3, [made, *fd as u64, dflags, 0, 0, 0])?;
                self.call(&what, libc::SYS_close, [made, 0, 0, 0, 0, 0])?;
            }
            for t in targets {
                // struct epoll_event is packed on x86_64: u32 events, u64 data.
                let mut ev = t.events.to_le_bytes().to_vec();
                ev.extend_from_slice(&t.data.to_le_bytes());
                let at = self.put(0, &ev)?;
                let what = format!("{what} watching fd {}", t.fd);
                // A registration under a number closed since: the file is
                // put at that number for the call (what is there now is set
                // aside, at the lowest free number, which is below the fd
                // limit as a number picked high may not be, and put back).
                let mut aside = None;
                if let Some(via) = t.via {
                    let high = self.inj.syscall_ok(libc::SYS_fcntl, [t.fd as u64, libc::F_DUPFD as u64, 0, 0, 0, 0]);
                    if let Ok(saved) = high {
                        let fd_flags =
                            self.call(&what, libc::SYS_fcntl, [t.fd as u64, libc::F_GETFD as u64, 0, 0, 0, 0])?;
                        aside = Some((saved, fd_flags));
                    }
                    self.call(&what, libc::SYS_dup2, [via as u64, t.fd as u64, 0, 0, 0, 0])?;
                }
                let added = self.call(
                    &what,
                    libc::SYS_epoll_ctl,
                    [*fd as u64, libc::EPOLL_CTL_ADD as u64, t.fd as u64, at, 0, 0],
                );
                if t.via.is_some() {
                    match aside {
                        Some((saved, fd_flags)) => {
                            self.call(&what, libc::SYS_dup2, [saved, t.fd as u64, 0, 0, 0, 0])?;
                            self.call(&what, libc::SYS_fcntl, [t.fd as u64, libc::F_SETFD as u64, fd_flags, 0, 0, 0])?;
                            self.call(&what, libc::SYS_close, [saved, 0, 0, 0, 0, 0])?;
                        }
                        None => {
                            self.call(&what, libc::SYS_close, [t.fd as u64, 0, 0, 0, 0, 0])?;
                        }
                    }
                }
                added?;
            }
        }
        Ok(())
    }

    /// The guard regions of each mapping (MADV_GUARD_INSTALL), once its
    /// memory is written.
    fn guards(&mut self, p: &Process) -> Result<(), RestoreError> {
        const MADV_GUARD_INSTALL: u64 = 102;
        for v in &p.vmas {
            for g in v.guards.chunks_exact(2) {
                let what = format!("guard region {:#x}-{:#x}", g[0], g[1]);
                self.call(&what, libc::SYS_madvise, [g[0], g[1] - g[0], MADV_GUARD_INSTALL, 0, 0, 0])?;
            }
        }
        Ok(())
    }

    /// Mappings of packet sockets' rings, over the placeholders laid out
    /// with the rest of the memory: made again from the restored socket
    /// (its rings set up already), now that its fd is in place.
    fn packet_rings(&mut self, p: &Process) -> Result<(), RestoreError> {
        for v in p.vmas.iter().filter(|v| v.kind == VmaKind::PacketRing as i32) {
            let what =
                format!("mapping {:#x}-{:#x} of the rings of the packet socket at fd {}", v.start, v.end, v.ring_fd);
            let flags = u64::from(v.flags) | libc::MAP_FIXED as u64;
            let args = [v.start, v.end - v.start, u64::from(v.prot), flags, v.ring_fd as u64, 0];
            self.call(&what, libc::SYS_mmap, args)?;
            self.advise(v, &what)?;
        }
        Ok(())
    }

    /// AIO rings (io_setup), as CRIU's restorer does: the ring was mapped
    /// as anonymous memory holding its dumped pages; a new ring of the same
    /// size is set up, its kernel-side tail moved to the dumped one by
    /// submitting that many one-byte writes to /dev/null (they complete at
    /// once; the head is moved along so the ring never fills), the dumped
    /// events and head copied in, and the ring moved over the placeholder
    /// with mremap (the kernel follows it: the process's context id is the
    /// ring's address). Requests still in flight at dump time are not
    /// known to the kernel's new ring: their completions never come.
    fn aio_rings(&mut self, p: &Process) -> Result<(), RestoreError> {
        const HEADER: u64 = 32; // struct aio_ring, without the events
        const EVENT: u64 = 32; // struct io_event
        const IOCB_CMD_PWRITE: u16 = 1;
        for v in p.vmas.iter().filter(|v| v.kind == VmaKind::AioRing as i32) {
            let what = format!("AIO ring {:#x}-{:#x}", v.start, v.end);
            let err = |e: String| step(&what)(e);
            let len = v.end - v.start;
            let mut old = vec![0u8; len as usize];
            stasis_sys::process_vm::read_exact(self.pid, RemoteAddr(v.start), &mut old)
                .map_err(|e| err(crate::chain(&e)))?;
            let word = |b: &[u8], i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
            let (nr, head, tail) = (word(&old, 1), word(&old, 2), word(&old, 3));
            let fits = ((len - HEADER) / EVENT) as u32;
            if nr != fits || head >= nr || tail >= nr || nr < 3 {
                return Err(err(format!("the ring's header is not sane (nr {nr}, head {head}, tail {tail})")));
            }
            // What io_setup turns into `nr` events (fs/aio.c ioctx_alloc
            // doubles the request and adds 2).
            let requested = u64::from((fits - 2) / 2);
            let ctx_at = self.put(0, &[0u8; 8])?;
            self.call(&what, libc::SYS_io_setup, [requested, ctx_at, 0, 0, 0, 0])?;
            let mut raw = [0u8; 8];
            stasis_sys::process_vm::read_exact(self.pid, RemoteAddr(ctx_at), &mut raw)
                .map_err(|e| err(crate::chain(&e)))?;
            let ctx = u64::from_le_bytes(raw);
            let mut header = [0u8; HEADER as usize];
            stasis_sys::process_vm::read_exact(self.pid, RemoteAddr(ctx), &mut header)
                .map_err(|e| err(crate::chain(&e)))?;
            if word(&header, 1) != nr {
                return Err(err(format!("io_setup({requested}) made a ring of {} events, not {nr}", word(&header, 1))));
            }
            let set_head = |r: &mut Self, h: u32| {
                stasis_sys::process_vm::write_exact(r.pid, RemoteAddr(ctx + 8), &h.to_le_bytes())
                    .map_err(|e| err(crate::chain(&e)))
            };
            let count = u64::from(if tail >= head { tail } else { nr + tail });
            if count > 0 {
                let null = self.path(0, "/dev/null")?;
                let fd =
                    self.call(&what, libc::SYS_openat, [libc::AT_FDCWD as u64, null, libc::O_WRONLY as u64, 0, 0, 0])?;
                // Scratch: the iocb at 64, its byte at 128, pointers from 256.
                let batch = count.min(u64::from(nr) - 1).min((SCRATCH_LEN as u64 - 256) / 8);
                let mut iocb = [0u8; 64];
                iocb[16..18].copy_from_slice(&IOCB_CMD_PWRITE.to_le_bytes());
                iocb[20..24].copy_from_slice(&(fd as u32).to_le_bytes());
                iocb[24..32].copy_from_slice(&(self.scratch + 128).to_le_bytes());
                iocb[32..40].copy_from_slice(&1u64.to_le_bytes());
                let iocb_at = self.put(64, &iocb)?;
                let pointers: Vec<u8> = (0..batch).flat_map(|_| iocb_at.to_le_bytes()).collect();
                let pointers_at = self.put(256, &pointers)?;
                let mut done = 0;
                let result = (|| {
                    while done < count {
                        let n = (count - done).min(batch);
                        let r = self.call(&what, libc::SYS_io_submit, [ctx, n, pointers_at, 0, 0, 0])?;
                        if r == 0 {
                            return Err(err(format!("io_submit took none of {n} requests")));
                        }
                        done += r;
                        // As if the process had read them (up to its head).
                        set_head(self, (done as u32).min(head))?;
                    }
                    Ok(())
                })();
                self.call(&what, libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                result?;
            }
            stasis_sys::process_vm::write_exact(self.pid, RemoteAddr(ctx + HEADER), &old[HEADER as usize..])
                .map_err(|e| err(crate::chain(&e)))?;
            set_head(self, head)?;
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            let moved = self.call(&what, libc::SYS_mremap, [ctx, len, len, flags, v.start, 0])?;
            if moved != v.start {
                return Err(err(format!("mremap put the ring at {moved:#x}")));
            }
        }
        Ok(())
    }

    /// cwd, root, umask, rlimits, personality and prctl attributes.
    fn attributes(&mut self, p: &Process, cwds: &deleted::Directories) -> Result<(), RestoreError> {
        // One in /proc of an exited process is entered already.
        if cwds.cwd_in_proc(p).is_none() {
            let dir = cwds.cwd(p).unwrap_or(&p.cwd);
            let cwd = self.path(0, dir)?;
            self.call(&format!("cwd {dir}"), libc::SYS_chdir, [cwd, 0, 0, 0, 0, 0])?;
        }
        if p.root != "/" {
            let root = self.path(0, &p.root)?;
            self.call(&format!("root {}", p.root), libc::SYS_chroot, [root, 0, 0, 0, 0, 0])?;
        }
        self.call("umask", libc::SYS_umask, [u64::from(p.umask), 0, 0, 0, 0, 0])?;
        for l in &p.rlimits {
            let mut raw = l.soft.to_le_bytes().to_vec();
            raw.extend_from_slice(&l.hard.to_le_bytes());
            let at = self.put(0, &raw)?;
            let r = self.inj.syscall(libc::SYS_prlimit64, [0, u64::from(l.resource), at, 0, 0, 0]);
            match r {
                Ok(0) => {}
                // Raising a hard limit needs CAP_SYS_RESOURCE: keep the
                // hard limit we have, set the soft one within it.
                Ok(e) if e == -(libc::EPERM as i64) => {
                    tracing::warn!(
                        "cannot raise the hard limit of resource {} to {}; keeping the current one",
                        l.resource,
                        l.hard
                    );
                    let cur = self.put(16, &[0u8; 16])?;
                    self.call("rlimit", libc::SYS_prlimit64, [0, u64::from(l.resource), 0, cur, 0, 0])?;
                    let mut old = [0u8; 16];
                    stasis_sys::process_vm::read_exact(self.pid, RemoteAddr(cur), &mut old)
                        .map_err(|e| step("rlimit")(crate::chain(&e)))?;
                    let hard = u64::from_le_bytes(old[8..].try_into().expect("8 bytes"));
                    let mut raw = l.soft.min(hard).to_le_bytes().to_vec();
                    raw.extend_from_slice(&hard.to_le_bytes());
                    let at = self.put(0, &raw)?;
                    self.call("rlimit", libc::SYS_prlimit64, [0, u64::from(l.resource), at, 0, 0, 0])?;
                }
                Ok(e) => return Err(step("rlimit")(format!("resource {}: errno {}", l.resource, -e))),
                Err(e) => return Err(step("rlimit")(e.to_string())),
            }
        }
        self.call("personality", libc::SYS_personality, [u64::from(p.personality), 0, 0, 0, 0, 0])?;
        let prctl = |opt: i32, arg: u64| (libc::SYS_prctl, [opt as u64, arg, 0, 0, 0, 0]);
        for (what, (nr, args)) in [
            ("pdeathsig", prctl(libc::PR_SET_PDEATHSIG, p.pdeathsig as u64)),
            // 2 (suid_dumpable) is the kernel's to set, not prctl's.
            ("dumpable", prctl(libc::PR_SET_DUMPABLE, u64::from(p.dumpable != 0))),
            ("child subreaper", prctl(libc::PR_SET_CHILD_SUBREAPER, u64::from(p.child_subreaper))),
            ("thp disable", prctl(libc::PR_SET_THP_DISABLE, u64::from(p.thp_disable))),
        ] {
            self.call(what, nr, args)?;
        }
        if p.no_new_privs {
            self.call("no_new_privs", libc::SYS_prctl, [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0])?;
        }
        for register in stasis_image::records::membarrier::REGISTRATIONS.into_iter().filter(|r| p.membarrier & r != 0) {
            let what = format!("membarrier registration {register:#x}");
            self.call(&what, libc::SYS_membarrier, [register.into(), 0, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Groups, gids, uids and capabilities, when they differ from the
    /// agent's. The bounding set is cut first (that needs CAP_SETPCAP, which
    /// the ids may take away), capabilities are kept across the uid change,
    /// then set exactly, and the ambient ones raised.
    fn creds(&mut self, c: Option<&stasis_image::records::Creds>) -> Result<(), RestoreError> {
        let Some(c) = c else { return Ok(()) };
        let ours = proc::parse_status(&std::fs::read_to_string("/proc/self/status").unwrap_or_default());
        let same_ids = c.uids == ours.uids && c.gids == ours.gids && c.groups == ours.groups;
        let same_caps = c.cap_effective == ours.cap_eff
            && c.cap_permitted == ours.cap_prm
            && c.cap_inheritable == ours.cap_inh
            && c.cap_bounding == ours.cap_bnd
            && c.cap_ambient == ours.cap_amb;
        if same_ids && same_caps {
            return Ok(());
        }
        if c.uids.len() != 4 || c.gids.len() != 4 {
            return Err(step("credentials")("malformed ids in the image".into()));
        }
        for cap in 0..64u64 {
            if ours.cap_bnd & (1 << cap) != 0 && c.cap_bounding & (1 << cap) == 0 {
                self.call("bounding set", libc::SYS_prctl, [libc::PR_CAPBSET_DROP as u64, cap, 0, 0, 0, 0])?;
            }
        }
        self.call("keep capabilities", libc::SYS_prctl, [libc::PR_SET_KEEPCAPS as u64, 1, 0, 0, 0, 0])?;
        if !same_ids {
            let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
            let at = self.put(0, &groups)?;
            self.call("groups", libc::SYS_setgroups, [c.groups.len() as u64, at, 0, 0, 0, 0])?;
            self.call("gids", libc::SYS_setresgid, [c.gids[0].into(), c.gids[1].into(), c.gids[2].into(), 0, 0, 0])?;
            // setresgid made the filesystem gid the effective one; still
            // root here, any may be set.
            self.fs_id("filesystem gid", libc::SYS_setfsgid, c.gids[3])?;
            self.call("uids", libc::SYS_setresuid, [c.uids[0].into(), c.uids[1].into(), c.uids[2].into(), 0, 0, 0])?;
            if c.uids[3] != c.uids[1] {
                // One outside the process's uids needs CAP_SETUID, which
                // the uid change took out of the effective set; the
                // permitted set still has it (PR_SET_KEEPCAPS).
                self.capset(ours.cap_prm, ours.cap_prm, ours.cap_inh)?;
                self.fs_id("filesystem uid", libc::SYS_setfsuid, c.uids[3])?;
            }
        }
        self.capset(c.cap_effective, c.cap_permitted, c.cap_inheritable)?;
        self.call("keep capabilities", libc::SYS_prctl, [libc::PR_SET_KEEPCAPS as u64, 0, 0, 0, 0, 0])?;
        for cap in (0..64u64).filter(|cap| c.cap_ambient & (1 << cap) != 0) {
            self.call(
                "ambient capabilities",
                libc::SYS_prctl,
                [libc::PR_CAP_AMBIENT as u64, libc::PR_CAP_AMBIENT_RAISE as u64, cap, 0, 0, 0],
            )?;
        }
        Ok(())
    }

    /// The audit login uid: only a task itself may set its own, through
    /// /proc/self/loginuid (with CAP_AUDIT_CONTROL, which it still has).
    fn loginuid(&mut self, p: &Process, here: Pid) -> Result<(), RestoreError> {
        let Some(want) = p.loginuid else { return Ok(()) };
        let now = proc::read(here, "loginuid").ok().and_then(|s| s.trim().parse::<u32>().ok());
        if now == Some(want) {
            return Ok(());
        }
        let what = format!("loginuid {want}");
        let path = self.path(0, "/proc/self/loginuid")?;
        let fd = self.call(&what, libc::SYS_openat, [libc::AT_FDCWD as u64, path, libc::O_WRONLY as u64, 0, 0, 0])?;
        let text = (want as i64).to_string();
        let at = self.put(512, text.as_bytes())?;
        let written = self.inj.syscall_ok(libc::SYS_write, [fd, at, text.len() as u64, 0, 0, 0]);
        self.call(&what, libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        written.map(drop).map_err(|e| {
            step(&what)(format!(
                "writing /proc/self/loginuid: {e} (it may be immutable here, audit's loginuid_immutable)"
            ))
        })
    }

    /// Who each fd's description sends its signals to, and which signal
    /// (F_SETOWN_EX, F_SETSIG), set by the process on its restored fd once
    /// every process of the tree exists.
    fn fd_owners(&mut self, p: &Process) -> Result<(), RestoreError> {
        use stasis_sys::fdtable::{F_SETOWN_EX, F_SETSIG};
        for r in &p.fds {
            let what = format!("signal owner of fd {}", r.fd);
            if let Some(o) = &r.owner {
                let raw: Vec<u8> = [o.kind, o.pid].iter().flat_map(|v| v.to_le_bytes()).collect();
                let at = self.put(0, &raw)?;
                self.call(&what, libc::SYS_fcntl, [r.fd as u64, F_SETOWN_EX as u64, at, 0, 0, 0])?;
            }
            if r.signal != 0 {
                self.call(&what, libc::SYS_fcntl, [r.fd as u64, F_SETSIG as u64, r.signal as u64, 0, 0, 0])?;
            }
            if !r.filter.is_empty() {
                // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
                let prog: Vec<u8> = r.filter.iter().flat_map(|w| w.to_le_bytes()).collect();
                let prog_at = self.put(1024, &prog)?;
                let mut fprog = (r.filter.len() as u64).to_le_bytes().to_vec();
                fprog.extend_from_slice(&prog_at.to_le_bytes());
                let at = self.put(0, &fprog)?;
                let what = format!("socket filter of fd {}", r.fd);
                let opt = [r.fd as u64, libc::SOL_SOCKET as u64, libc::SO_ATTACH_FILTER as u64, at, 16, 0];
                self.call(&what, libc::SYS_setsockopt, opt)?;
            }
        }
        Ok(())
    }

    /// A session leader whose session had one of the tree's pairs as its
    /// controlling terminal takes it again (TIOCSCTTY on the slave, fetched
    /// from the agent for the call), and gives it its foreground group
    /// (TIOCSPGRP: only a process of the session may, and every group
    /// exists by now; the leader's own is the foreground one until then).
    fn controlling_terminal(
        &mut self,
        p: &Process,
        (records, made): (&[stasis_image::records::Pty], &HashMap<u32, pty::Made>),
    ) -> Result<(), RestoreError> {
        use std::os::fd::AsRawFd;
        if p.sid != p.pid {
            return Ok(());
        }
        let Some(t) = records.iter().find(|t| t.session == p.pid) else { return self.fixed_terminal(p) };
        let what = format!("controlling terminal /dev/pts/{}", t.index);
        let slave = &made.get(&t.index).ok_or_else(|| step(&what)("not made".into()))?.slave;
        let pidfd = self.agent_pidfd.ok_or_else(|| step(&what)("no pidfd of the agent".into()))?;
        let fd = self.call(&what, libc::SYS_pidfd_getfd, [pidfd, slave.as_raw_fd() as u64, 0, 0, 0, 0])?;
        let mut taken = self
            .inj
            .syscall_ok(libc::SYS_ioctl, [fd, libc::TIOCSCTTY, 0, 0, 0, 0])
            .map_err(|e| format!("TIOCSCTTY: {e}"));
        if taken.is_ok() && t.foreground != 0 {
            let at = self.put(0, &t.foreground.to_le_bytes())?;
            taken = self
                .inj
                .syscall_ok(libc::SYS_ioctl, [fd, libc::TIOCSPGRP, at, 0, 0, 0])
                .map_err(|e| format!("TIOCSPGRP to group {}: {e}", t.foreground));
        }
        self.call(&what, libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        taken.map(drop).map_err(step(&what))
    }

    /// A session leader whose controlling terminal was a fixed terminal
    /// (crate::fd::tty::opened_by_path), held on one of its own fds, takes
    /// it again through that fd, and gives it its foreground group. A
    /// terminal another session holds now makes this fail, naming it.
    fn fixed_terminal(&mut self, p: &Process) -> Result<(), RestoreError> {
        let held = p.fds.iter().find_map(|f| match &f.kind {
            Some(fd::Kind::Tty(t)) if t.session == p.pid && crate::fd::tty::opened_by_path(t.rdev) => Some((f.fd, t)),
            _ => None,
        });
        let Some((fd, t)) = held else { return Ok(()) };
        let what = format!("controlling terminal {}", t.path);
        let fd = fd as u64;
        self.inj.syscall_ok(libc::SYS_ioctl, [fd, libc::TIOCSCTTY, 0, 0, 0, 0]).map_err(|e| {
            step(&what)(format!("TIOCSCTTY: {e} (another session has it as its controlling terminal now?)"))
        })?;
        if t.foreground > 0 && t.foreground != p.pgid {
            let at = self.put(0, &t.foreground.to_le_bytes())?;
            self.inj
                .syscall_ok(libc::SYS_ioctl, [fd, libc::TIOCSPGRP, at, 0, 0, 0])
                .map_err(|e| step(&what)(format!("TIOCSPGRP to group {}: {e}", t.foreground)))?;
        }
        Ok(())
    }

    /// The file locks each fd held, taken again by the process (a POSIX
    /// lock's owner) on its restored fd; a flock or OFD lock goes with the
    /// description, so taking it again through a dup or a shared fd is a
    /// no-op. A lock held by someone else now is an error naming the file.
    fn take_locks(&mut self, p: &Process) -> Result<(), RestoreError> {
        use stasis_image::records::LockKind;
        for r in p.fds.iter().filter(|r| !r.locks.is_empty()) {
            let file = match &r.kind {
                Some(fd::Kind::File(f)) => f.path.clone(),
                _ => format!("fd {}", r.fd),
            };
            for l in &r.locks {
                // A lease being broken is the description's, whose break
                // is started again once, through its first fd.
                if l.breaking && (r.same_as.is_some() || r.shared_with.is_some()) {
                    continue;
                }
                let kind = LockKind::try_from(l.kind).unwrap_or(LockKind::Flock);
                let what = format!(
                    "{} {} lock of fd {} on {file}",
                    if l.write { "write" } else { "read" },
                    match kind {
                        LockKind::Flock => "flock",
                        LockKind::Posix => "POSIX",
                        LockKind::Ofd => "OFD",
                        LockKind::Lease => "lease",
                    },
                    r.fd
                );
                let taken = match kind {
                    LockKind::Flock => {
                        let op = if l.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
                        self.inj.syscall_ok(libc::SYS_flock, [r.fd as u64, op as u64, 0, 0, 0, 0])
                    }
                    LockKind::Posix | LockKind::Ofd => {
                        // struct flock { short l_type, l_whence; off_t l_start, l_len; pid_t l_pid; }
                        let typ = if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
                        let len = l.end.map_or(0, |end| end - l.start + 1);
                        let mut raw = Vec::with_capacity(32);
                        raw.extend_from_slice(&typ.to_le_bytes());
                        raw.extend_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
                        raw.extend_from_slice(&[0; 4]);
                        raw.extend_from_slice(&l.start.to_le_bytes());
                        raw.extend_from_slice(&len.to_le_bytes());
                        raw.extend_from_slice(&[0; 8]);
                        let at = self.put(0, &raw)?;
                        let cmd = if kind == LockKind::Ofd { libc::F_OFD_SETLK } else { libc::F_SETLK };
                        self.inj.syscall_ok(libc::SYS_fcntl, [r.fd as u64, cmd as u64, at, 0, 0, 0])
                    }
                    // Taken by the process itself, as the kernel makes the
                    // taker the description's signal owner (set again
                    // from the image after this).
                    LockKind::Lease => {
                        let typ = if l.write { libc::F_WRLCK } else { libc::F_RDLCK };
                        self.inj
                            .syscall_ok(libc::SYS_fcntl, [r.fd as u64, libc::F_SETLEASE as u64, typ as u64, 0, 0, 0])
                    }
                };
                taken.map_err(|e| {
                    step("file locks")(format!("cannot take the {what} again (another process holds it now?): {e}"))
                })?;
                if kind == LockKind::Lease && l.breaking {
                    self.break_lease(r.fd, l.breaking_to_read, &what)?;
                }
            }
        }
        Ok(())
    }

    /// Start the break of the lease just taken on `fd` again, as another
    /// process's open did before the dump: an open of the file by the
    /// agent that conflicts with it, which returns at once (O_NONBLOCK)
    /// with the lease breaking to a read lease (`to_read`: an open for
    /// reading) or to none (for writing). Its signal is not sent: the
    /// process had it before the dump (the fd's owner is none for the
    /// while, and set from the image after).
    fn break_lease(&mut self, fd: i32, to_read: bool, what: &str) -> Result<(), RestoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let what = format!("{what}, being broken");
        self.call(&what, libc::SYS_fcntl, [fd as u64, libc::F_SETOWN as u64, 0, 0, 0, 0])?;
        let path = format!("/proc/{}/fd/{fd}", self.pid);
        let opened = std::fs::OpenOptions::new()
            .read(to_read)
            .write(!to_read)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path);
        match opened {
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(()),
            Ok(_) => Err(step(&what)(format!("an open of {path} did not break it"))),
            Err(e) => Err(step(&what)(format!("breaking it again (an open of {path}): {e}"))),
        }
    }

    /// capset(2): header { _LINUX_CAPABILITY_VERSION_3, pid 0 }, then
    /// { effective, permitted, inheritable } for bits 0-31 and 32-63.
    fn capset(&mut self, effective: u64, permitted: u64, inheritable: u64) -> Result<(), RestoreError> {
        let mut raw = Vec::with_capacity(32);
        raw.extend_from_slice(&0x2008_0522u32.to_le_bytes());
        raw.extend_from_slice(&0i32.to_le_bytes());
        for half in [0, 32] {
            for set in [effective, permitted, inheritable] {
                raw.extend_from_slice(&((set >> half) as u32).to_le_bytes());
            }
        }
        let at = self.put(0, &raw)?;
        self.call("capabilities", libc::SYS_capset, [at, at + 8, 0, 0, 0, 0]).map(drop)
    }

    /// setfsuid(2) or setfsgid(2), which report no error: the id is read
    /// back (an invalid id, -1, changes nothing and returns the current).
    fn fs_id(&mut self, what: &str, nr: libc::c_long, id: u32) -> Result<(), RestoreError> {
        self.call(what, nr, [id.into(), 0, 0, 0, 0, 0])?;
        let now = self.call(what, nr, [u64::from(u32::MAX), 0, 0, 0, 0, 0])?;
        if now as u32 != id {
            return Err(step(what)(format!("it is {now} after setting {id}")));
        }
        Ok(())
    }

    /// Handlers of every signal, and itimers.
    fn signals(&mut self, p: &Process) -> Result<(), RestoreError> {
        for a in &p.sigactions {
            let mut raw = Vec::with_capacity(32);
            for v in [a.handler, a.flags, a.restorer, a.mask] {
                raw.extend_from_slice(&v.to_le_bytes());
            }
            let at = self.put(0, &raw)?;
            self.call(
                &format!("handler of signal {}", a.signal),
                libc::SYS_rt_sigaction,
                [a.signal as u64, at, 0, 8, 0, 0],
            )?;
        }
        for (which, t) in p.itimers.iter().enumerate() {
            let tv = |us: u64| [us / 1_000_000, us % 1_000_000];
            let raw: Vec<u8> =
                tv(t.interval_us).iter().chain(tv(t.value_us).iter()).flat_map(|v| v.to_le_bytes()).collect();
            let at = self.put(0, &raw)?;
            self.call("itimer", libc::SYS_setitimer, [which as u64, at, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// State each thread sets for itself.
    fn per_thread(&mut self, t: &stasis_image::records::Thread, p: &Process) -> Result<(), RestoreError> {
        let what = format!("thread {}", t.tid);
        if let Some(alt) = &t.altstack {
            // stack_t { ss_sp; ss_flags; ss_size }; SS_ONSTACK is a state,
            // not a setting.
            let flags = (alt.flags & !libc::SS_ONSTACK) as u32;
            let mut raw = alt.sp.to_le_bytes().to_vec();
            raw.extend_from_slice(&u64::from(flags).to_le_bytes());
            raw.extend_from_slice(&alt.size.to_le_bytes());
            let at = self.put(0, &raw)?;
            self.call(&what, libc::SYS_sigaltstack, [at, 0, 0, 0, 0, 0])?;
        }
        self.call(&what, libc::SYS_set_robust_list, [t.robust_list, ROBUST_LIST_HEAD_LEN, 0, 0, 0, 0])?;
        self.call(&what, libc::SYS_set_tid_address, [t.clear_child_tid, 0, 0, 0, 0, 0])?;
        if let Some(rs) = &t.rseq {
            if rs.abi != 0 {
                self.call(&what, libc::SYS_rseq, [rs.abi, u64::from(rs.len), 0, u64::from(rs.signature), 0, 0])?;
            }
        }
        let name = self.path(0, &t.comm)?;
        self.call(&what, libc::SYS_prctl, [libc::PR_SET_NAME as u64, name, 0, 0, 0, 0])?;
        self.call(&what, libc::SYS_prctl, [libc::PR_SET_TIMERSLACK as u64, t.timer_slack_ns, 0, 0, 0, 0])?;
        self.scheduling(t)?;
        // The kernel lets only the thread itself queue a signal with the
        // sender information of kill() or tgkill() to a thread. Signals stay
        // blocked until the thread's own mask is set at release.
        for s in &t.pending {
            let at = self.put(0, &s.raw)?;
            self.call(&what, libc::SYS_rt_tgsigqueueinfo, [p.pid as u64, t.tid as u64, signo(&s.raw), at, 0, 0])?;
        }
        self.seccomp(t, &t.seccomp[shared_filters(p)..], t.seccomp_strict)?;
        self.creds(t.creds.as_ref().or(p.creds.as_ref()))
    }

    /// Seccomp `filters` of thread `t`, oldest first, then its strict mode
    /// if `strict`: set while it still has stasis's privileges
    /// (CAP_SYS_ADMIN lets a thread without no_new_privs install a
    /// filter), with seccomp suspended for it until it is let go, so that
    /// the calls injected after (its credentials) are not refused.
    fn seccomp(
        &mut self,
        t: &stasis_image::records::Thread,
        filters: &[stasis_image::records::SeccompFilter],
        strict: bool,
    ) -> Result<(), RestoreError> {
        if t.seccomp.is_empty() && !t.seccomp_strict {
            return Ok(());
        }
        let what = format!("thread {}: seccomp", t.tid);
        self.inj
            .tracee()
            .set_options(puppet_options() | stasis_sys::regs::SUSPEND_SECCOMP)
            .map_err(|e| step(&what)(crate::chain(&e)))?;
        const SET_MODE_STRICT: u64 = 0;
        const SET_MODE_FILTER: u64 = 1;
        for f in filters {
            // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
            // with the program right after it.
            let program = self.scratch + 16;
            let mut raw = ((f.program.len() / 8) as u64).to_le_bytes().to_vec();
            raw.extend_from_slice(&program.to_le_bytes());
            raw.extend_from_slice(&f.program);
            let at = self.put(0, &raw)?;
            let flags = if f.log { stasis_sys::regs::SECCOMP_FILTER_FLAG_LOG } else { 0 };
            self.call(&what, libc::SYS_seccomp, [SET_MODE_FILTER, flags, at, 0, 0, 0])?;
        }
        if strict {
            self.call(&what, libc::SYS_seccomp, [SET_MODE_STRICT, 0, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// The thread's CPUs, scheduling policy, nice value and I/O priority.
    fn scheduling(&mut self, t: &stasis_image::records::Thread) -> Result<(), RestoreError> {
        let what = format!("thread {}", t.tid);
        if !t.cpus.is_empty() {
            let mut mask = vec![0u8; (*t.cpus.iter().max().unwrap_or(&0) as usize / 64 + 1) * 8];
            for &c in &t.cpus {
                mask[c as usize / 8] |= 1 << (c % 8);
            }
            let at = self.put(0, &mask)?;
            self.call(&what, libc::SYS_sched_setaffinity, [0, mask.len() as u64, at, 0, 0, 0]).map_err(|e| {
                step(&what)(format!("it ran on CPUs {:?}, which this machine cannot give it: {e}", t.cpus))
            })?;
        }
        let base = t.sched_policy & !libc::SCHED_RESET_ON_FORK;
        if t.sched_policy != libc::SCHED_OTHER || t.sched_priority != 0 {
            if base == 6 {
                return Err(RestoreError::Unsupported(format!("{what} is SCHED_DEADLINE (not supported yet)")));
            }
            let at = self.put(0, &t.sched_priority.to_le_bytes())?;
            self.call(&what, libc::SYS_sched_setscheduler, [0, t.sched_policy as u64, at, 0, 0, 0])?;
        }
        self.call(&what, libc::SYS_setpriority, [libc::PRIO_PROCESS as u64, 0, t.nice as u64, 0, 0, 0])?;
        if t.ioprio != 0 {
            let who = stasis_sys::sched::IOPRIO_WHO_PROCESS as u64;
            self.call(&what, libc::SYS_ioprio_set, [who, 0, t.ioprio as u64, 0, 0, 0])?;
        }
        Ok(())
    }

    /// POSIX timers at their original ids (PR_TIMER_CREATE_RESTORE_IDS),
    /// armed with the time that was left.
    fn posix_timers(&mut self, p: &Process) -> Result<(), RestoreError> {
        if p.posix_timers.is_empty() {
            return Ok(());
        }
        const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
        self.call("POSIX timers", libc::SYS_prctl, [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0])?;
        for t in &p.posix_timers {
            let what = format!("POSIX timer {}", t.id);
            // struct sigevent: sigev_value, sigev_signo, sigev_notify, then a
            // union whose first int is the thread id; 64 bytes in all.
            let mut sev = [0u8; 64];
            sev[..8].copy_from_slice(&t.value.to_le_bytes());
            sev[8..12].copy_from_slice(&t.signal.to_le_bytes());
            sev[12..16].copy_from_slice(&t.notify.to_le_bytes());
            sev[16..20].copy_from_slice(&t.tid.to_le_bytes());
            let sev_at = self.put(0, &sev)?;
            // The id asked for goes in where the kernel writes the new one.
            let id_at = self.put(64, &t.id.to_le_bytes())?;
            self.call(&what, libc::SYS_timer_create, [t.clockid as u64, sev_at, id_at, 0, 0, 0])?;
            let mut got = [0u8; 4];
            stasis_sys::process_vm::read_exact(self.pid, RemoteAddr(id_at), &mut got)
                .map_err(|e| step(&what)(crate::chain(&e)))?;
            if i32::from_le_bytes(got) != t.id {
                return Err(step(&what)(format!("created as timer {}", i32::from_le_bytes(got))));
            }
            if t.value_ns > 0 {
                let ns = |v: u64| [v / 1_000_000_000, v % 1_000_000_000];
                let its: Vec<u8> =
                    ns(t.interval_ns).iter().chain(ns(t.value_ns).iter()).flat_map(|v| v.to_le_bytes()).collect();
                let its_at = self.put(128, &its)?;
                self.call(&what, libc::SYS_timer_settime, [t.id as u64, 0, its_at, 0, 0, 0])?;
            }
        }
        self.call("POSIX timers", libc::SYS_prctl, [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0])?;
        Ok(())
    }

    /// Queue the process-wide pending signals again, in order, with their
    /// siginfo.
    fn shared_pending(&mut self, p: &Process) -> Result<(), RestoreError> {
        for s in &p.shared_pending {
            let at = self.put(0, &s.raw)?;
            self.call("pending signal", libc::SYS_rt_sigqueueinfo, [p.pid as u64, signo(&s.raw), at, 0, 0, 0])?;
        }
        Ok(())
    }
}

fn signo(raw: &[u8]) -> u64 {
    i32::from_le_bytes(raw[..4].try_into().expect("4 bytes")) as u64
}

/// Which fd kinds a restore re-creates (for messages and docs).
pub fn describe_fd(kind: &fd::Kind) -> &'static str {
    match kind {
        fd::Kind::File(_) => "file",
        fd::Kind::Pipe(_) => "pipe",
        fd::Kind::Fifo(_) => "fifo",
        fd::Kind::Device(_) => "device",
        fd::Kind::Tty(_) => "tty",
        fd::Kind::PtyMaster(_) => "pseudo-terminal master",
        fd::Kind::PtySlave(_) => "pseudo-terminal slave",
        fd::Kind::Epoll(_) => "epoll",
        fd::Kind::Eventfd(_) => "eventfd",
        fd::Kind::Timerfd(_) => "timerfd",
        fd::Kind::Signalfd(_) => "signalfd",
        fd::Kind::Pidfd(_) => "pidfd",
        fd::Kind::Inotify(_) => "inotify",
        fd::Kind::Fanotify(_) => "fanotify",
        fd::Kind::ProcEntry(_) => "proc",
        fd::Kind::Memfd(_) => "memfd",
        fd::Kind::TcpListen(_) => "tcp-listen",
        fd::Kind::TcpUnconnected(_) => "tcp-unconnected",
        fd::Kind::Udp(_) => "udp",
        fd::Kind::Netlink(_) => "netlink",
        fd::Kind::Packet(_) => "packet",
        fd::Kind::Unix(_) => "unix",
        fd::Kind::Tcp(_) => "tcp",
    }
}

#[cfg(test)]
mod inherit_fd_tests {
    use super::{proc, InheritFd, Inherited};

    #[test]
    fn parses_criu_syntax_and_prints_it_back() {
        let i: InheritFd = "fd[3]:pipe:[4242]".parse().unwrap();
        assert_eq!(i, InheritFd { fd: 3, what: Inherited::Pipe(4242) });
        assert_eq!(i.to_string(), "fd[3]:pipe:[4242]");
        let t: InheritFd = "fd[0]:tty:[136:3]".parse().unwrap();
        assert_eq!(t, InheritFd { fd: 0, what: Inherited::Tty(proc::makedev(136, 3)) });
        assert_eq!(t.to_string(), "fd[0]:tty:[136:3]");
    }

    #[test]
    fn refuses_anything_else_saying_what_it_wants() {
        for bad in
            ["3:pipe:[1]", "fd[-1]:pipe:[1]", "fd[3]:socket:[1]", "fd[3]:pipe:[x]", "fd[3]:pipe:[1", "fd[1]:tty:[5]"]
        {
            let e = bad.parse::<InheritFd>().unwrap_err();
            assert!(e.contains("fd[N]:pipe:[INODE] or fd[N]:tty:[MAJOR:MINOR]"), "{bad}: {e}");
        }
    }
}
