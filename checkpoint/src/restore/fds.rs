//! Re-creating a process's file descriptors in the agent: each object is
//! opened or built here, with its position and status flags set on the open
//! file description, and then handed to the puppet (see `mod.rs`), which
//! receives a reference to the same description.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use stasis_image::records::{fd::Kind, FileRef, Pipe};
use stasis_sys::nix::fcntl::{fcntl, FcntlArg, OFlag};
use stasis_sys::nix::unistd::{lseek, pipe2, Whence};
use stasis_sys::nix::{self, libc};

/// What the puppet's fd `fd` will be.
#[derive(Debug)]
pub enum Planned {
    /// A new reference to this description.
    Object { fd: i32, object: OwnedFd, cloexec: bool },
    /// A dup of the puppet's fd `of`, which comes earlier.
    Dup { fd: i32, of: i32, cloexec: bool },
    /// An epoll instance, made inside the puppet once every other fd is in.
    Epoll { fd: i32, cloexec: bool, targets: Vec<stasis_image::records::EpollTarget> },
    /// A signalfd, made inside the puppet (its mask may hold real-time
    /// signals, which nix's signal sets cannot name).
    Signalfd { fd: i32, cloexec: bool, flags: i32, mask: u64 },
    /// A pidfd of a process of the restored tree (itself included), made
    /// inside the puppet once every process exists.
    Pidfd { fd: i32, cloexec: bool, flags: i32, pid: i32 },
    /// The open file description of fd `of` of process `pid`, restored
    /// before this one: fetched from it once it is built.
    Shared { fd: i32, pid: i32, of: i32, cloexec: bool },
    /// A file of the /proc directory of the tree's process `pid`, opened
    /// once every process exists ([`Planned::open_proc_entry`]).
    ProcEntry { fd: i32, cloexec: bool, flags: i32, pid: i32, path: String },
}

impl Planned {
    pub fn fd(&self) -> i32 {
        match self {
            Planned::Object { fd, .. }
            | Planned::Dup { fd, .. }
            | Planned::Epoll { fd, .. }
            | Planned::Signalfd { fd, .. }
            | Planned::Pidfd { fd, .. }
            | Planned::Shared { fd, .. }
            | Planned::ProcEntry { fd, .. } => *fd,
        }
    }

    /// A [`Planned::ProcEntry`] opened, now that its process exists as
    /// `host_pid`, into an object; any other unchanged.
    pub fn open_proc_entry(self, host_pid: impl Fn(i32) -> Option<i32>) -> Result<Planned, FdError> {
        let Planned::ProcEntry { fd, cloexec, flags, pid, path } = self else { return Ok(self) };
        let now = host_pid(pid)
            .ok_or_else(|| FdError::Other { fd, what: format!("process {pid} of /proc/{pid}/{path} was not made") })?;
        let object = open_proc(fd, now, &path, flags)?;
        Ok(Planned::Object { fd, object, cloexec })
    }
}

/// `/proc/PID/path` opened with `flags`, at its start (the position is
/// set once the whole tree is built: `seek_proc_entries` in `mod.rs`).
fn open_proc(fd: i32, pid: i32, path: &str, flags: i32) -> Result<OwnedFd, FdError> {
    let full = match path {
        "" => format!("/proc/{pid}"),
        path => format!("/proc/{pid}/{path}"),
    };
    Ok(open(fd, &full, flags)?.into())
}

/// Why an fd could not be re-created.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("fd {fd}: {path} changed since the dump ({what}); pass --allow-changed-files to restore anyway")]
    Changed { fd: i32, path: String, what: String },
    #[error("fd {fd}: cannot open {path}: {source}")]
    Open { fd: i32, path: String, source: std::io::Error },
    #[error("fd {fd}: {what}")]
    Other { fd: i32, what: String },
}

/// Status flags that open(2) must not see again (they act at open time).
const OPEN_ONLY: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY;

/// Whether the file at `f.path` is still the one the image recorded.
/// `moved`: (device at dump, device now) of volumes rolled back since, whose
/// files keep their inodes on a new device.
pub fn check_unchanged(f: &FileRef, meta: &fs::Metadata, moved: &[(u64, u64)]) -> Result<(), String> {
    let dev = moved.iter().find(|(was, _)| *was == f.dev).map_or(f.dev, |(_, now)| *now);
    if meta.dev() != dev || meta.ino() != f.ino {
        return Err(format!(
            "it is another file now (device {} inode {}, was {} {})",
            meta.dev(),
            meta.ino(),
            f.dev,
            f.ino
        ));
    }
    if meta.size() != f.size {
        return Err(format!("size {} bytes, was {}", meta.size(), f.size));
    }
    let mtime = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    if mtime != f.mtime_ns && meta.is_file() {
        return Err("modified since".into());
    }
    Ok(())
}

/// A file open for appending only (O_WRONLY|O_APPEND, a log) that is the
/// same file and only grew since the dump: every write goes to its end
/// whatever happened, so the growth is no change worth refusing (a restore
/// puts the fd at the new end). Its new size, when so.
pub fn appended_only(f: &FileRef, flags: i32, meta: &fs::Metadata, moved: &[(u64, u64)]) -> Option<u64> {
    let appending = flags & libc::O_ACCMODE == libc::O_WRONLY && flags & libc::O_APPEND != 0;
    let dev = moved.iter().find(|(was, _)| *was == f.dev).map_or(f.dev, |(_, now)| *now);
    (appending && meta.is_file() && meta.dev() == dev && meta.ino() == f.ino && meta.size() >= f.size)
        .then_some(meta.size())
}

/// Re-creates the fds of a tree's processes, one process after the
/// other: a pipe is made once for the whole tree, whichever process holds
/// its ends.
pub struct Planner<'a> {
    pipes: &'a [Pipe],
    allow_changed: bool,
    /// The pids of the tree (processes and zombies).
    tree: HashSet<i32>,
    /// One pipe per id, made on first use: (read end, write end).
    made: HashMap<u64, (OwnedFd, OwnedFd)>,
    /// FIFOs whose data is in already.
    filled: HashSet<u64>,
    /// The shared memory objects, made already (memfds among them).
    shmem: &'a HashMap<u64, OwnedFd>,
    /// Deleted files, made already, by their contents' address space.
    deleted: &'a HashMap<u32, OwnedFd>,
    /// The tree's unix sockets, made already, taken by the fd naming each.
    unix: HashMap<u64, OwnedFd>,
    /// TCP connections made in repair mode, with their SO_REUSEADDR: they
    /// leave it when the tree is let go.
    pub repaired: Vec<crate::fd::tcp::Repaired>,
    /// Devices whose files moved to another (a rolled-back volume).
    pub moved_devices: Vec<(u64, u64)>,
    /// External pipes and terminals, and the agent's fd standing for each
    /// (`--inherit-fd`).
    pub inherit: HashMap<super::Inherited, i32>,
    /// Terminals become the agent's own (`--shell-job`).
    pub shell_job: bool,
    /// FIFOs that were unlinked, made again, by pipe id: the holder.
    unlinked_fifos: HashMap<u64, OwnedFd>,
    /// The tree's pseudo-terminal pairs, made already.
    pub ptys: Option<&'a HashMap<u32, super::pty::Made>>,
    /// Masters of new pairs whose slaves stand for hung-up ones, by the
    /// dumped slave's device number: closed in `finish`, hanging them up.
    pub hung_up: HashMap<u64, OwnedFd>,
    /// Removed directories made again (deleted::removed_directories): an
    /// fd on one opens that one.
    pub removed_dirs: Option<&'a super::deleted::Directories>,
    /// Local addresses more than one inet socket of the tree is bound to
    /// ([`crate::fd::socket::shared_addresses`]).
    pub shared_addresses: HashSet<(bool, std::net::SocketAddr)>,
    /// Sockets bound with SO_REUSEPORT for a shared address that did not
    /// have it: turned off once every fd is made ([`Planner::finish`]).
    reuseport_off: Vec<OwnedFd>,
    /// Pipe ends (pipe id, read end) whose own description a process was given.
    pipe_ends_given: HashSet<(u64, bool)>,
    /// Memfds whose own description (memfd_create's) a process was given.
    memfds_given: HashSet<u64>,
    /// Children standing in for processes that had exited, by the pidfs
    /// inode of their pidfds (0: unknown, one child for all).
    stand_ins: HashMap<u64, Option<stasis_sys::child::Child>>,
}

impl<'a> Planner<'a> {
    pub fn new(
        pipes: &'a [Pipe],
        allow_changed: bool,
        tree: HashSet<i32>,
        shmem: &'a HashMap<u64, OwnedFd>,
        deleted: &'a HashMap<u32, OwnedFd>,
        unix: HashMap<u64, OwnedFd>,
    ) -> Self {
        Planner {
            pipes,
            allow_changed,
            tree,
            made: HashMap::new(),
            filled: HashSet::new(),
            shmem,
            deleted,
            unix,
            repaired: Vec::new(),
            moved_devices: Vec::new(),
            inherit: HashMap::new(),
            shell_job: false,
            unlinked_fifos: HashMap::new(),
            ptys: None,
            removed_dirs: None,
            hung_up: HashMap::new(),
            shared_addresses: HashSet::new(),
            reuseport_off: Vec::new(),
            memfds_given: HashSet::new(),
            pipe_ends_given: HashSet::new(),
            stand_ins: HashMap::new(),
        }
    }

    /// Once every fd of the tree is made: SO_REUSEPORT off again where it
    /// was only on for the bind, and the processes pidfds name in place of
    /// ones that had exited gone (exited and reaped).
    pub fn finish(&mut self) -> Result<(), String> {
        // Closing a master hangs up its slaves, which are made by now.
        self.hung_up.clear();
        for sock in self.reuseport_off.drain(..) {
            use nix::sys::socket::{setsockopt, sockopt};
            setsockopt(&sock, sockopt::ReusePort, &false).map_err(|e| format!("SO_REUSEPORT off again: {e}"))?;
        }
        for mut child in self.stand_ins.drain().filter_map(|(_, c)| c) {
            child
                .kill_and_reap(std::time::Duration::from_secs(10))
                .map_err(|e| format!("reaping the stand-in of an exited process: {e}"))?;
        }
        Ok(())
    }

    /// Build every fd of a process record.
    pub fn plan(&mut self, fds: &[stasis_image::records::Fd]) -> Result<Vec<Planned>, FdError> {
        let (pipes, allow_changed) = (self.pipes, self.allow_changed);
        let (made, filled) = (&mut self.made, &mut self.filled);
        let mut out = Vec::with_capacity(fds.len());
        for r in fds {
            let fd = r.fd;
            if let Some(of) = r.same_as {
                out.push(Planned::Dup { fd, of, cloexec: r.cloexec });
                continue;
            }
            if let Some(s) = &r.shared_with {
                out.push(Planned::Shared { fd, pid: s.pid, of: s.fd, cloexec: r.cloexec });
                continue;
            }
            let other = |what: String| FdError::Other { fd, what };
            // O_ASYNC is set once the description is made (see async_on).
            let flags = r.flags as i32 & !OPEN_ONLY & !libc::O_ASYNC;
            let object = match r.kind.as_ref().ok_or_else(|| other("no kind in the image".into()))? {
                Kind::File(f) if f.deleted && f.mode & libc::S_IFMT == libc::S_IFDIR => {
                    match self.removed_dirs.and_then(|d| d.opened(f)) {
                        Some(made) => open(fd, made, flags)?.into(),
                        None => super::deleted::directory(f, flags).map_err(other)?,
                    }
                }
                Kind::File(f) if f.deleted && f.mode & libc::S_IFMT == libc::S_IFLNK => {
                    super::deleted::symlink(f, flags).map_err(other)?
                }
                Kind::File(f) if f.deleted => {
                    let made = self
                        .deleted
                        .get(&f.contents_mm)
                        .ok_or_else(|| other(format!("deleted {} was not made", f.path)))?;
                    let object = reopen_with_flags(made, flags).map_err(other)?;
                    lseek(&object, r.pos as i64, Whence::SeekSet).map_err(|e| other(format!("lseek: {e}")))?;
                    object
                }
                Kind::File(f) => {
                    let file = open(fd, &f.path, flags)?;
                    let meta = file.metadata().map_err(|source| FdError::Open { fd, path: f.path.clone(), source })?;
                    let mut pos = r.pos;
                    if !allow_changed {
                        let changed = check_unchanged(f, &meta, &self.moved_devices);
                        match appended_only(f, flags, &meta, &self.moved_devices) {
                            Some(size) if changed.is_err() => {
                                tracing::warn!(
                                    "fd {fd}: {} grew by {} bytes since the dump; it is open for appending only, so \
                                     the process goes on writing at its new end",
                                    f.path,
                                    size - f.size
                                );
                                pos = size;
                            }
                            _ => changed.map_err(|what| FdError::Changed { fd, path: f.path.clone(), what })?,
                        }
                    }
                    // An O_PATH fd has no offset.
                    if meta.is_file() && flags & libc::O_PATH == 0 {
                        lseek(&file, pos as i64, Whence::SeekSet).map_err(|e| other(format!("lseek: {e}")))?;
                    }
                    file.into()
                }
                Kind::Pipe(id) if self.inherit.contains_key(&super::Inherited::Pipe(*id)) => {
                    let given = self.inherit[&super::Inherited::Pipe(*id)];
                    let object = stasis_sys::fdtable::dup_own(given)
                        .map_err(|e| other(format!("dup of fd {given} (--inherit-fd): {e}")))?;
                    set_status_flags(&object, flags).map_err(other)?;
                    object
                }
                Kind::Pipe(id) => {
                    let pipe =
                        pipes.iter().find(|p| p.id == *id).ok_or_else(|| other(format!("pipe {id} is missing")))?;
                    if !made.contains_key(id) {
                        made.insert(*id, new_pipe(pipe).map_err(other)?);
                    }
                    let (rd, wr) = &made[id];
                    let acc = flags & libc::O_ACCMODE;
                    let end = if acc == libc::O_RDONLY { rd } else { wr };
                    // The first description of each end is pipe2's own (one
                    // opened again has O_LARGEFILE, which no fcntl clears);
                    // a second one (not a dup) is opened through /proc.
                    let own = acc != libc::O_RDWR && self.pipe_ends_given.insert((*id, acc == libc::O_RDONLY));
                    own_or_reopened(end, flags, own).map_err(other)?
                }
                // Unlinked while open: made again once, unlinked, and held.
                Kind::Fifo(fifo) if fifo.file.as_ref().is_some_and(|f| f.deleted) => {
                    let file = fifo.file.as_ref().expect("checked above");
                    let holder = match self.unlinked_fifos.entry(fifo.pipe) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let holder = super::deleted::node(
                                &file.path,
                                nix::sys::stat::SFlag::S_IFIFO,
                                0,
                                file.mode,
                                (file.uid, file.gid),
                                libc::O_RDWR | libc::O_NONBLOCK,
                            )
                            .map_err(other)?;
                            if filled.insert(fifo.pipe) {
                                if let Some(p) = pipes.iter().find(|p| p.id == fifo.pipe) {
                                    fill(&holder, p).map_err(other)?;
                                }
                            }
                            e.insert(holder)
                        }
                    };
                    let object = reopen_with_flags(holder, flags | libc::O_NONBLOCK).map_err(other)?;
                    fcntl(&object, FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags)))
                        .map_err(|e| other(format!("F_SETFL: {e}")))?;
                    object
                }
                Kind::Fifo(fifo) => {
                    let file = fifo.file.as_ref().ok_or_else(|| other("FIFO without a path".into()))?;
                    // Hold the FIFO open read-write while filling it and opening
                    // it as recorded, so no open blocks and the data stays.
                    let holder: OwnedFd = open(fd, &file.path, libc::O_RDWR | libc::O_NONBLOCK)?.into();
                    // A FIFO some process outside the tree still holds open
                    // kept its bytes: they are not put in twice.
                    if filled.insert(fifo.pipe) {
                        let (_, queued) = crate::fd::pipe::peek(&holder).map_err(other)?;
                        if let Some(p) = pipes.iter().find(|p| p.id == fifo.pipe).filter(|_| queued.is_empty()) {
                            fill(&holder, p).map_err(other)?;
                        }
                    }
                    let object = open(fd, &file.path, flags | libc::O_NONBLOCK)?;
                    fcntl(&object, FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags)))
                        .map_err(|e| other(format!("F_SETFL: {e}")))?;
                    object.into()
                }
                Kind::Device(d) if d.deleted => {
                    let kind = nix::sys::stat::SFlag::S_IFCHR;
                    let mode = if d.mode == 0 { 0o600 } else { d.mode };
                    super::deleted::node(&d.path, kind, d.rdev, mode, (d.uid, d.gid), flags).map_err(other)?
                }
                Kind::Device(d) => open(fd, &d.path, flags)?.into(),
                Kind::Epoll(e) => {
                    out.push(Planned::Epoll { fd, cloexec: r.cloexec, targets: e.targets.clone() });
                    continue;
                }
                Kind::Signalfd(sg) => {
                    out.push(Planned::Signalfd {
                        fd,
                        cloexec: r.cloexec,
                        flags: flags & libc::O_NONBLOCK,
                        mask: sg.mask,
                    });
                    continue;
                }
                // Of a process that has exited: one of a child made for the
                // purpose (which process it was is gone), one child for the
                // pidfds of one process; [`Planner::finish`] ends them.
                Kind::Pidfd(pf) if pf.pid == -1 => {
                    use stasis_sys::child::{spawn, ChildAction};
                    let child = match self.stand_ins.entry(pf.dead_ino).or_default() {
                        Some(child) => child,
                        empty => empty.insert(spawn(ChildAction::Pause).map_err(|e| other(format!("fork: {e}")))?),
                    };
                    let pidfd = stasis_sys::pidfd::PidFd::open(child.pid())
                        .map_err(|e| other(format!("pidfd_open: {}", crate::chain(&e))))?;
                    let object: OwnedFd = pidfd.into();
                    set_status_flags(&object, flags).map_err(other)?;
                    object
                }
                Kind::Pidfd(pf) if self.tree.contains(&pf.pid) => {
                    out.push(Planned::Pidfd { fd, cloexec: r.cloexec, flags: flags & libc::O_NONBLOCK, pid: pf.pid });
                    continue;
                }
                Kind::Pidfd(pf) => {
                    let pidfd = stasis_sys::pidfd::PidFd::open(stasis_sys::Pid::from_raw(pf.pid))
                        .map_err(|e| other(format!("a pidfd of process {}, which is not running now: {e}", pf.pid)))?;
                    let object: OwnedFd = pidfd.into();
                    set_status_flags(&object, flags).map_err(other)?;
                    object
                }
                Kind::ProcEntry(e) if self.tree.contains(&e.pid) => {
                    let (pid, path) = (e.pid, e.path.clone());
                    out.push(Planned::ProcEntry { fd, cloexec: r.cloexec, flags, pid, path });
                    continue;
                }
                // Of a process outside the tree: the same process, if it
                // still runs.
                Kind::ProcEntry(e) => {
                    let started = crate::proc::stat(stasis_sys::Pid::from_raw(e.pid)).map(|s| s.start_time);
                    if !allow_changed && started.as_ref().ok() != Some(&e.start_time) {
                        return Err(FdError::Changed {
                            fd,
                            path: format!("/proc/{}/{}", e.pid, e.path),
                            what: format!("process {} outside the tree has exited", e.pid),
                        });
                    }
                    open_proc(fd, e.pid, &e.path, flags)?
                }
                Kind::Inotify(n) => {
                    let object = crate::fd::inotify::restore(n, self.deleted).map_err(other)?;
                    set_status_flags(&object, flags).map_err(other)?;
                    object
                }
                Kind::Fanotify(n) => {
                    let object = crate::fd::fanotify::restore(n).map_err(other)?;
                    set_status_flags(&object, flags).map_err(other)?;
                    object
                }
                Kind::Memfd(id) => {
                    let memfd = self.shmem.get(id).ok_or_else(|| other(format!("memfd {id} was not made")))?;
                    // A description of its own, with its flags and position.
                    // The first one open for reading and writing is the one
                    // memfd_create made, as it most likely was: that one
                    // does not count as a writer, which would keep
                    // execveat() of the memfd from running it (ETXTBSY).
                    let first_rw = flags & libc::O_ACCMODE == libc::O_RDWR && self.memfds_given.insert(*id);
                    let object = own_or_reopened(memfd, flags, first_rw).map_err(other)?;
                    lseek(&object, r.pos as i64, Whence::SeekSet).map_err(|e| other(format!("lseek: {e}")))?;
                    object
                }
                Kind::Eventfd(e) => {
                    use stasis_sys::nix::sys::eventfd::{EfdFlags, EventFd};
                    let mut efd_flags = EfdFlags::EFD_CLOEXEC;
                    if e.semaphore {
                        efd_flags |= EfdFlags::EFD_SEMAPHORE;
                    }
                    // eventfd2 takes a 32-bit start value; a write adds any count.
                    let efd =
                        EventFd::from_value_and_flags(0, efd_flags).map_err(|e| other(format!("eventfd: {e}")))?;
                    if e.count > 0 {
                        efd.write(e.count).map_err(|err| other(format!("eventfd count {}: {err}", e.count)))?;
                    }
                    let object: OwnedFd = efd.into();
                    set_status_flags(&object, flags).map_err(other)?;
                    object
                }
                Kind::Timerfd(t) => timerfd(t, flags).map_err(other)?,
                Kind::Packet(pk) => {
                    let object = crate::fd::packet::make(pk).map_err(other)?;
                    set_status_flags(&object, flags).map_err(other)?;
                    object
                }
                Kind::Netlink(n) => {
                    let object = crate::fd::netlink::make(n).map_err(other)?;
                    set_status_flags(&object, flags).map_err(other)?;
                    object
                }
                Kind::TcpListen(s) | Kind::Udp(s) | Kind::TcpUnconnected(s) => {
                    let tcp = !matches!(r.kind, Some(Kind::Udp(_)));
                    let listen = matches!(r.kind, Some(Kind::TcpListen(_)));
                    let at = s.local.as_ref().and_then(|l| l.to_socket_addr());
                    let shared = at.is_some_and(|a| self.shared_addresses.contains(&(tcp, a)));
                    let object = crate::fd::socket::create(s, tcp, listen, shared).map_err(other)?;
                    set_status_flags(&object, flags).map_err(other)?;
                    if shared && !s.reuseport {
                        self.reuseport_off.push(object.try_clone().map_err(|e| other(format!("dup: {e}")))?);
                    }
                    object
                }
                Kind::Tcp(c) => {
                    let object = crate::fd::tcp::restore(c).map_err(|e| {
                        let shown = c.socket.as_ref().map(|s| s.describe()).unwrap_or_default();
                        other(format!("TCP connection {shown}: {e}"))
                    })?;
                    set_status_flags(&object, flags).map_err(other)?;
                    let copy = object.try_clone().map_err(|e| other(format!("dup: {e}")))?;
                    self.repaired.push(crate::fd::tcp::Repaired::new(copy, c).map_err(other)?);
                    object
                }
                Kind::Unix(id) => {
                    let object = self.unix.remove(id).ok_or_else(|| other(format!("unix socket {id} was not made")))?;
                    set_status_flags(&object, flags).map_err(other)?;
                    object
                }
                Kind::PtyMaster(n) | Kind::PtySlave(n) => {
                    let made = self
                        .ptys
                        .and_then(|m| m.get(n))
                        .ok_or_else(|| other(format!("pseudo-terminal {n} was not made")))?;
                    if matches!(r.kind, Some(Kind::PtyMaster(_))) {
                        // The one description a master has.
                        let object = made.master.try_clone().map_err(|e| other(format!("dup: {e}")))?;
                        set_status_flags(&object, flags).map_err(other)?;
                        object
                    } else {
                        // Not the agent's controlling terminal by the way.
                        reopen_with_flags(&made.slave, flags | libc::O_NOCTTY).map_err(other)?
                    }
                }
                // Hung up: a slave of a new pair whose master is closed
                // once every fd is made (`finish`).
                Kind::Tty(t) if t.hung_up => {
                    let master = match self.hung_up.entry(t.rdev) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => e.insert(
                            super::pty::new_master()
                                .map_err(|e| other(format!("a pair to hang up again for {}: {e}", t.path)))?,
                        ),
                    };
                    stasis_sys::tty::peer(master, flags | libc::O_NOCTTY)
                        .map_err(|e| other(format!("opening the slave of a new pair (TIOCGPTPEER): {e}")))?
                }
                // Never by its name on its own (restore::check_terminals).
                Kind::Tty(t) => match self.inherit.get(&super::Inherited::Tty(t.rdev)) {
                    Some(&given) => {
                        let object = stasis_sys::fdtable::dup_own(given)
                            .map_err(|e| other(format!("dup of fd {given} (--inherit-fd): {e}")))?;
                        set_status_flags(&object, flags).map_err(other)?;
                        object
                    }
                    None if crate::fd::tty::opened_by_path(t.rdev) => {
                        // O_NOCTTY: not the agent's controlling terminal;
                        // the session leader takes it if it was its own.
                        let object = open(fd, &t.path, flags | libc::O_NOCTTY)?;
                        let now = object.metadata().map(|m| m.rdev()).unwrap_or(0);
                        if now != t.rdev {
                            return Err(other(format!("{} is not the terminal it was (device changed)", t.path)));
                        }
                        object.into()
                    }
                    None if self.shell_job => {
                        let own = own_terminal().ok_or_else(|| other("--shell-job: stasis has no terminal".into()))?;
                        open(fd, &own, flags)?.into()
                    }
                    None => return Err(other(format!("terminal {} was neither inherited nor --shell-job", t.path))),
                },
            };
            if r.flags as i32 & libc::O_ASYNC != 0 {
                async_on(&object).map_err(other)?;
            }
            out.push(Planned::Object { fd, object, cloexec: r.cloexec });
        }
        Ok(out)
    }
}

/// Set O_ASYNC on a description, by fcntl: given to open(2), the flag
/// shows but no signal is ever sent (open does not register the
/// description for signals as fcntl does), and fcntl can then neither
/// clear nor set it.
fn async_on(fd: &OwnedFd) -> Result<(), String> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL).map_err(|e| format!("F_GETFL: {e}"))?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_ASYNC)).map(drop).map_err(|e| format!("F_SETFL O_ASYNC: {e}"))
}

/// Set O_NONBLOCK (and the other settable status flags) on a description.
fn set_status_flags(fd: &OwnedFd, flags: i32) -> Result<(), String> {
    fcntl(fd, FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags))).map(drop).map_err(|e| format!("F_SETFL: {e}"))
}

/// A timerfd on the same clock, firing after the time that was left, then
/// every interval; expirations not read at dump time fire at once.
fn timerfd(t: &stasis_image::records::Timerfd, flags: i32) -> Result<OwnedFd, String> {
    use stasis_sys::nix::sys::time::TimeSpec;
    use stasis_sys::nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use std::time::Duration;
    let clock = match t.clockid {
        libc::CLOCK_REALTIME => ClockId::CLOCK_REALTIME,
        libc::CLOCK_MONOTONIC => ClockId::CLOCK_MONOTONIC,
        libc::CLOCK_BOOTTIME => ClockId::CLOCK_BOOTTIME,
        libc::CLOCK_REALTIME_ALARM => ClockId::CLOCK_REALTIME_ALARM,
        libc::CLOCK_BOOTTIME_ALARM => ClockId::CLOCK_BOOTTIME_ALARM,
        c => return Err(format!("timerfd on clock {c} is not supported")),
    };
    let tfd = TimerFd::new(clock, TimerFlags::TFD_CLOEXEC).map_err(|e| format!("timerfd_create: {e}"))?;
    let value = if t.ticks > 0 { 1 } else { t.value_ns };
    if value > 0 {
        let ts = |ns: u64| TimeSpec::from_duration(Duration::from_nanos(ns));
        let expiration = if t.interval_ns > 0 {
            Expiration::IntervalDelayed(ts(value), ts(t.interval_ns))
        } else {
            Expiration::OneShot(ts(value))
        };
        tfd.set(expiration, TimerSetTimeFlags::empty()).map_err(|e| format!("timerfd_settime: {e}"))?;
    }
    let object: OwnedFd = tfd.into();
    set_status_flags(&object, flags)?;
    Ok(object)
}

fn open(fd: i32, path: &str, flags: i32) -> Result<fs::File, FdError> {
    let acc = flags & libc::O_ACCMODE;
    OpenOptions::new()
        .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
        .custom_flags(open_flags(flags) & !libc::O_ACCMODE)
        .open(path)
        .map_err(|source| FdError::Open { fd, path: path.to_owned(), source })
}

/// The flags to open a file again with: those of a file made with
/// O_TMPFILE (glibc's tmpfile(3)) still show O_TMPFILE, which includes
/// O_DIRECTORY: opening with it would make another file, or fail with
/// ENOTDIR.
pub(super) fn open_flags(flags: i32) -> i32 {
    const TMPFILE_ONLY: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;
    if flags & TMPFILE_ONLY != 0 {
        flags & !libc::O_TMPFILE
    } else {
        flags
    }
}

/// The terminal the restoring stasis runs on, if any.
pub(super) fn own_terminal() -> Option<String> {
    (0..3).find_map(|fd| {
        let link = fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
        let s = link.to_string_lossy().into_owned();
        (s.starts_with("/dev/pts/") || s.starts_with("/dev/tty")).then_some(s)
    })
}

/// A new pipe with the capacity and contents of `p`.
fn new_pipe(p: &Pipe) -> Result<(OwnedFd, OwnedFd), String> {
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe2: {e}"))?;
    fcntl(&wr, FcntlArg::F_SETPIPE_SZ(p.capacity as i32)).map_err(|e| format!("F_SETPIPE_SZ({}): {e}", p.capacity))?;
    fill(&wr, p)?;
    Ok((rd, wr))
}

fn fill(end: impl AsFd, p: &Pipe) -> Result<(), String> {
    let mut at = 0;
    while at < p.data.len() {
        at += nix::unistd::write(end.as_fd(), &p.data[at..]).map_err(|e| format!("writing pipe data: {e}"))?;
    }
    Ok(())
}

/// A description of the file of `made` (pipe2's or memfd_create's) with
/// `flags`: `made`'s own when `own`, else one opened again through /proc
/// (which is not quite the same: it gains O_LARGEFILE, and a memfd opened
/// for writing counts as a writer).
fn own_or_reopened(made: &OwnedFd, flags: i32, own: bool) -> Result<OwnedFd, String> {
    if !own {
        return reopen_with_flags(made, flags);
    }
    let object = made.try_clone().map_err(|e| format!("dup: {e}"))?;
    set_status_flags(&object, flags)?;
    Ok(object)
}

/// A new open file description of the pipe behind `end`, with `flags`.
fn reopen_with_flags(end: &OwnedFd, flags: i32) -> Result<OwnedFd, String> {
    let path = format!("/proc/self/fd/{}", end.as_raw_fd());
    let f = open(-1, &path, flags).map_err(|e| e.to_string())?;
    Ok(f.into())
}
