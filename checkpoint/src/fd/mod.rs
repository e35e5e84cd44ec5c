//! File descriptors, one module per kind behind one table (as CRIU's
//! `files-reg.c`, `pipes.c`, ...): adding a kind is one file and one arm of
//! [`Kind`].
//!
//! Classifying needs only /proc (`readlink` and `stat` of /proc/PID/fd/N; for
//! sockets also its `system.sockprotoname` and /proc/PID/net/*), so
//! the pre-flight check can list every unsupported fd without stopping or
//! touching the target. Dumping works on the agent's own copy of the fd,
//! taken with pidfd_getfd(2), which reads pipe buffers and deleted files'
//! contents without running code in the target.

pub mod device;
pub mod epoll;
pub mod event;
pub mod fanotify;
pub mod file;
pub mod inotify;
pub mod netlink;
pub mod packet;
pub mod pipe;
pub mod pty;
pub mod socket;
pub mod sockopt;
pub mod tcp;
pub mod tty;
pub mod unix;

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use stasis_image::records::{self, fd::Kind as RecordKind, FileLock, LockKind};
use stasis_sys::nix::libc;
use stasis_sys::Pid;

use crate::proc;

/// The kinds of fd stasis can dump and restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file or a directory, deleted or not.
    File,
    /// An anonymous pipe.
    Pipe,
    /// A named pipe opened by path.
    Fifo,
    /// A memory character device: /dev/null, /dev/zero, /dev/full,
    /// /dev/random, /dev/urandom.
    Device,
    /// A terminal (a pseudo-terminal slave among them).
    Tty,
    /// The master of a pseudo-terminal pair: dumped into the tree's table
    /// of pairs.
    PtyMaster,
    /// An epoll instance.
    Epoll,
    /// An eventfd.
    Eventfd,
    /// A timerfd.
    Timerfd,
    /// A signalfd.
    Signalfd,
    /// A pidfd.
    Pidfd,
    /// An inotify instance.
    Inotify,
    /// A fanotify group.
    Fanotify,
    /// A file or directory of a process's /proc directory.
    ProcEntry,
    /// A namespace (nsfs: an open /proc/PID/ns/NAME).
    Namespace,
    /// A netlink socket.
    Netlink,
    /// A packet socket.
    Packet,
    /// A memfd: dumped with the tree's shared memory objects.
    Memfd,
    /// A listening TCP socket, IPv4 or IPv6.
    TcpListen,
    /// A TCP socket neither listening nor connected yet.
    TcpUnconnected,
    /// A TCP connection, IPv4 or IPv6: established or closing (FIN_WAIT1,
    /// FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING).
    TcpEstablished,
    /// A UDP socket, IPv4 or IPv6.
    Udp,
    /// A unix socket: dumped into the tree's table of them.
    Unix,
}

/// One fd of the target as pre-flight saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub fd: i32,
    /// The /proc/PID/fd/N link target.
    pub target: String,
    pub kind: Result<Kind, String>,
    pub info: proc::FdInfo,
    pub rdev: u64,
    pub ino: u64,
}

/// Every fd of `pid`, classified. An fd that closes while we look is left out.
pub fn scan(pid: Pid) -> std::io::Result<Vec<Seen>> {
    let mut out = Vec::new();
    let mut sockets: Option<socket::Tables> = None;
    for entry in fs::read_dir(proc::path(pid, "fd"))? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        out.extend(see(pid, fd, &mut sockets));
    }
    out.sort_by_key(|s| s.fd);
    Ok(out)
}

/// One fd of stasis itself, classified (as [`scan`] would).
pub fn see_own(fd: &OwnedFd) -> Option<Seen> {
    use std::os::fd::AsRawFd;
    see(Pid::this(), fd.as_raw_fd(), &mut None)
}

fn see(pid: Pid, fd: i32, sockets: &mut Option<socket::Tables>) -> Option<Seen> {
    let link = proc::path(pid, &format!("fd/{fd}"));
    let (Ok(target), Ok(meta), Ok(info)) =
        (fs::read_link(&link), fs::metadata(&link), fs::read_to_string(proc::path(pid, &format!("fdinfo/{fd}"))))
    else {
        return None;
    };
    let target = target.to_string_lossy().into_owned();
    let kind = if target.starts_with("socket:") && meta.file_type().is_socket() {
        let tables = sockets.get_or_insert_with(|| socket::Tables::read(pid));
        tables.classify(socket::protocol_name(&link).as_deref(), meta.ino())
    } else {
        special_filesystem(&link).unwrap_or_else(|| classify(&target, &meta))
    };
    Some(Seen { fd, target, kind, info: proc::parse_fdinfo(&info), rdev: meta.rdev(), ino: meta.ino() })
}

/// Files that look regular but live on a filesystem whose objects cannot be
/// reopened by the path /proc shows: POSIX message queues (whose path is
/// relative to the mqueue filesystem) and pinned BPF objects, refused; the
/// entries of a process's /proc directory, which are its while it lives
/// and no longer there once it exits. `None` for every other filesystem.
fn special_filesystem(fd_link: &std::path::Path) -> Option<Result<Kind, String>> {
    use stasis_sys::nix::sys::statfs::{statfs, FsType};
    const MQUEUE_MAGIC: i64 = 0x1980_0202;
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let FsType(magic) = statfs(fd_link).ok()?.filesystem_type();
    match magic {
        NSFS_MAGIC => Some(Ok(Kind::Namespace)),
        MQUEUE_MAGIC => Some(Err("POSIX message queue".into())),
        BPF_FS_MAGIC => Some(Err("BPF object".into())),
        PROC_SUPER_MAGIC => {
            let target = fs::read_link(fd_link).ok()?;
            let mut parts = target.components().skip(2);
            let per_process = parts.next().is_some_and(|c| {
                let c = c.as_os_str().to_string_lossy();
                c.chars().all(|ch| ch.is_ascii_digit()) || c == "self" || c == "thread-self"
            });
            per_process.then_some(Ok(Kind::ProcEntry))
        }
        _ => None,
    }
}

/// Which module handles an fd, or a name for what it is when none does.
pub fn classify(target: &str, meta: &fs::Metadata) -> Result<Kind, String> {
    let ft = meta.file_type();
    match target {
        "anon_inode:[eventpoll]" => return Ok(Kind::Epoll),
        "anon_inode:[eventfd]" => return Ok(Kind::Eventfd),
        "anon_inode:[timerfd]" => return Ok(Kind::Timerfd),
        "anon_inode:[signalfd]" => return Ok(Kind::Signalfd),
        "anon_inode:[pidfd]" => return Ok(Kind::Pidfd),
        "anon_inode:inotify" => return Ok(Kind::Inotify),
        "anon_inode:[fanotify]" => return Ok(Kind::Fanotify),
        _ => {}
    }
    if let Some(rest) = target.strip_prefix("anon_inode:") {
        return Err(rest.trim_matches(['[', ']']).to_owned());
    }
    if target.starts_with("socket:") || ft.is_socket() {
        return Err("socket".into());
    }
    if target.starts_with("pipe:") {
        return Ok(Kind::Pipe);
    }
    if target.starts_with("/memfd:") {
        return Ok(Kind::Memfd);
    }
    if ft.is_fifo() {
        return Ok(Kind::Fifo);
    }
    // A symbolic link: an O_PATH|O_NOFOLLOW fd holds the link itself.
    if ft.is_file() || ft.is_dir() || ft.is_symlink() {
        return Ok(Kind::File);
    }
    if ft.is_char_device() {
        let major = dev_major(meta.rdev());
        return match major {
            1 => Ok(Kind::Device),
            // /dev/ptmx (and devpts's ptmx): a master, of a pair of the
            // tree's own.
            5 if dev_minor(meta.rdev()) == 2 => Ok(Kind::PtyMaster),
            // A pseudo-terminal slave whose master was closed is hung up,
            // its node gone: made again so (fd::tty).
            4 | 5 | 136..=143 => Ok(Kind::Tty),
            m => Err(format!("character device {m}:{}", dev_minor(meta.rdev()))),
        };
    }
    if ft.is_block_device() {
        return Err("block device".into());
    }
    Err(format!("unknown object {target}"))
}

/// `major(dev)` as glibc decodes it.
pub fn dev_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

/// `minor(dev)` as glibc decodes it.
pub fn dev_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

/// What dumping one fd produced besides its record.
#[derive(Debug, Default)]
pub struct Extra {
    /// A pipe buffer, to be stored once per pipe.
    pub pipe: Option<records::Pipe>,
    /// Contents of a deleted file, to be stored in the memory index.
    pub contents: Option<Vec<u8>>,
    /// Contents of each deleted file an inotify instance watches, in the
    /// order of its watches.
    pub watched: Vec<Vec<u8>>,
}

/// Dump one fd from the agent's copy of it.
pub fn dump(pid: Pid, seen: &Seen, copy: &OwnedFd) -> Result<(RecordKind, Extra), String> {
    match seen.kind.clone()? {
        Kind::File => file::dump(seen, copy),
        Kind::Pipe => {
            pipe::dump(seen, copy).map(|(id, p)| (RecordKind::Pipe(id), Extra { pipe: Some(p), ..Extra::default() }))
        }
        Kind::Fifo => pipe::dump_fifo(seen, copy),
        Kind::Device => Ok((device::dump(pid, seen), Extra::default())),
        Kind::Tty => Ok((tty::dump(pid, seen)?, Extra::default())),
        Kind::Epoll => Ok((epoll::dump(pid, seen)?, Extra::default())),
        Kind::Inotify => inotify::dump(pid, seen),
        Kind::Fanotify => Ok((fanotify::dump(pid, seen)?, Extra::default())),
        Kind::ProcEntry => Ok((proc_entry(&seen.target)?, Extra::default())),
        Kind::Namespace => Ok((namespace(pid, seen)?, Extra::default())),
        Kind::Eventfd | Kind::Timerfd | Kind::Signalfd | Kind::Pidfd => Ok((event::dump(pid, seen)?, Extra::default())),
        Kind::Netlink => Ok((netlink::dump(seen, copy)?, Extra::default())),
        Kind::Packet => Ok((packet::dump(pid, seen, copy)?, Extra::default())),
        Kind::TcpListen | Kind::TcpEstablished | Kind::TcpUnconnected | Kind::Udp => {
            Ok((socket::dump(pid, seen, copy)?, Extra::default()))
        }
        Kind::Memfd => Err("a memfd is dumped with the shared memory objects, not alone".into()),
        Kind::Unix => Err("a unix socket is dumped into the tree's table, not alone".into()),
        Kind::PtyMaster => Err("a pseudo-terminal master is dumped into the tree's table, not alone".into()),
    }
}

/// An fd of a process's /proc directory (`target`: /proc/PID[/path]),
/// with the identity of that process. Refused when it is a thread's
/// (`/proc/TID` or `task/TID` of another thread: threads are made after
/// the fds at restore) or the process has exited.
fn proc_entry(target: &str) -> Result<RecordKind, String> {
    let rest = target.strip_prefix("/proc/").ok_or_else(|| format!("{target} is not under /proc"))?;
    let (number, path) = rest.split_once('/').unwrap_or((rest, ""));
    let pid: i32 = number.parse().map_err(|_| format!("{target} names no process"))?;
    let exited = || format!("{target}, a file of process {pid}, which has exited");
    let status = proc::read(Pid::from_raw(pid), "status").map_err(|_| exited())?;
    let tgid = status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse::<i32>().ok());
    let thread = match path.strip_prefix("task/") {
        Some(t) => t.split('/').next().and_then(|t| t.parse::<i32>().ok()).filter(|&t| t != pid),
        None => None,
    };
    if let Some(tid) = thread.or((tgid != Some(pid)).then_some(pid)) {
        return Err(format!("{target}, a file of thread {tid}'s /proc directory (not supported yet)"));
    }
    let stat = proc::stat(Pid::from_raw(pid)).map_err(|_| exited())?;
    Ok(RecordKind::ProcEntry(records::ProcEntry { pid, path: path.to_owned(), start_time: stat.start_time }))
}

/// An fd on a namespace (`net:[INODE]`), which must be one its process is
/// in (or its children's PID or time namespace): recorded as that process's
/// /proc/PID/ns file, opened there again once the restored process exists,
/// so it is the namespace the restored process is in. Another namespace is
/// refused: nothing at restore could find it again.
fn namespace(pid: Pid, seen: &Seen) -> Result<RecordKind, String> {
    use std::os::unix::fs::MetadataExt;
    let kind = seen.target.split(':').next().unwrap_or_default();
    let in_it = |pid: Pid| {
        let names = [kind.to_owned(), format!("{kind}_for_children")];
        names.into_iter().find(|name| {
            !kind.is_empty() && fs::metadata(proc::path(pid, &format!("ns/{name}"))).is_ok_and(|m| m.ino() == seen.ino)
        })
    };
    let stat = proc::stat(pid).map_err(|e| format!("stat: {e}"))?;
    // Its own, or its parent's (a child that inherited the fd its parent
    // opened on its own namespace before making the child another one).
    let (holder, name) = match in_it(pid) {
        Some(name) => (pid, name),
        None => match in_it(Pid::from_raw(stat.ppid)) {
            Some(name) if stat.ppid > 0 => (Pid::from_raw(stat.ppid), name),
            _ => {
                return Err(format!(
                    "{}, a namespace neither its process nor that one's parent is in (a restore could not find it \
                     again; not supported yet)",
                    seen.target
                ))
            }
        },
    };
    let start_time = match holder == pid {
        true => stat.start_time,
        false => proc::stat(holder).map_err(|e| format!("stat of process {holder}: {e}"))?.start_time,
    };
    Ok(RecordKind::ProcEntry(records::ProcEntry { pid: holder.as_raw(), path: format!("ns/{name}"), start_time }))
}

/// O_CLOEXEC as /proc/PID/fdinfo reports it in `flags`.
pub const FDINFO_CLOEXEC: u32 = 0o2000000;

/// The locks of fd `fd` of process `pid` (open with `flags`), from its
/// fdinfo `lock:` lines: its description's flock and OFD locks, and the
/// POSIX locks `pid` holds on the file, and its lease. Any lock stasis
/// cannot read is an error naming it.
pub fn locks(pid: Pid, fd: i32, flags: u32, lines: &[proc::LockLine]) -> Result<Vec<FileLock>, String> {
    let mut out = Vec::new();
    for l in lines {
        let kind = match l.kind.as_str() {
            "FLOCK" => LockKind::Flock,
            "OFDLCK" => LockKind::Ofd,
            // One its process holds (another sharing its fd table would
            // show here too).
            "POSIX" if l.pid == pid.as_raw() => LockKind::Posix,
            "POSIX" => continue,
            "LEASE" if l.state == "ACTIVE" => LockKind::Lease,
            "LEASE" if l.state == "BREAKING" => {
                out.push(breaking_lease(pid, fd, flags, l)?);
                continue;
            }
            "LEASE" => return Err(format!("a file lease in state {} (not supported)", l.state)),
            "DELEG" => return Err("an NFS delegation (not supported)".into()),
            other => return Err(format!("a {other} lock (not supported)")),
        };
        out.push(FileLock { kind: kind as i32, write: l.write, start: l.start, end: l.end, ..FileLock::default() });
    }
    Ok(out)
}

/// A lease being broken: fdinfo shows what it is being broken to (READ:
/// a write lease giving way to a reader; UNLCK: any lease to a writer).
/// Broken to none, it was a write lease if the fd is open for writing (a
/// read lease cannot be taken then); else an open for reading, which
/// conflicts with a write lease only, tells (it returns at once with
/// O_NONBLOCK, and does not move a break along).
fn breaking_lease(pid: Pid, fd: i32, flags: u32, l: &proc::LockLine) -> Result<FileLock, String> {
    let to_read = match l.access.as_str() {
        "READ" => true,
        "UNLCK" => false,
        other => return Err(format!("a file lease being broken to {other} (not supported)")),
    };
    let write = to_read || flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 || {
        let path = proc::path(pid, &format!("fd/{fd}"));
        let probe = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(&path);
        match probe {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => true,
            Err(e) => {
                return Err(format!("a file lease being broken, whose kind {} does not tell: {e}", path.display()))
            }
        }
    };
    Ok(FileLock {
        kind: LockKind::Lease as i32,
        write,
        breaking: true,
        breaking_to_read: to_read,
        ..FileLock::default()
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn message_queues_are_named_not_reopened() {
        use stasis_sys::nix::mqueue::{mq_open, mq_unlink, MQ_OFlag, MqAttr};
        use stasis_sys::nix::sys::stat::Mode;
        let name = format!("/stasis-test-{}", std::process::id());
        let attr = MqAttr::new(0, 4, 64, 0);
        let q =
            mq_open(name.as_str(), MQ_OFlag::O_CREAT | MQ_OFlag::O_RDWR, Mode::from_bits_truncate(0o600), Some(&attr))
                .expect("mq_open (the kernel must have POSIX message queues)");
        let _ = mq_unlink(name.as_str());
        let fd = q.as_raw_fd();
        let seen = scan(Pid::this()).unwrap().into_iter().find(|s| s.fd == fd).expect("our queue fd");
        assert_eq!(seen.kind, Err("POSIX message queue".to_string()), "{seen:?}");
    }
}
