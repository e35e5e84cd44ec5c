//! Unix domain sockets: stream, datagram and seqpacket; socketpairs,
//! sockets bound to a path or an abstract name, listening sockets,
//! connections within the tree, and datagram sockets connected to a named
//! socket outside it (such as /dev/log).
//!
//! Dump: NETLINK_SOCK_DIAG's unix_diag, asked about one inode, gives the
//! type, state, name, peer (by inode) and shutdown state. The data queued
//! for reading is read from the agent's pidfd_getfd copy with MSG_PEEK,
//! stepping through the queue with SO_PEEK_OFF (set back afterwards), so
//! nothing is consumed and message boundaries are kept. Each socket is
//! recorded once, in the tree's table; fds name it by id.
//!
//! Restore makes every socket of the tree in the agent before any process's
//! fds ([`make_all`]): two sockets connected to each other become a
//! socketpair; the others are made alone and bound (a stale socket file at
//! the path, which no socket is bound to any more, is replaced) and set
//! listening; queued data is sent again, by the peer or from a helper
//! socket; datagram sockets are then connected by name, and shutdowns
//! applied last.
//!
//! File descriptors passed with a queued message (SCM_RIGHTS) and not yet
//! received: a peek installs copies of them in the agent, which dumps them
//! like any fd (or names the process fd sharing their open file
//! description), into the socket's `passed`; restore makes them with the
//! process fds and sends them again with their message. A stream's queue is
//! cut after each segment that carried fds, where a peek stops; where the
//! segment began a peek cannot tell (it walks the queue on to the next fds
//! whatever its size), so the bytes since the previous cut are sent with the
//! fds: a reader taking those bytes in a separate, shorter read gets the fds
//! with it, earlier than it would have.
//!
//! Connections waiting to be accepted on a listener of the tree, from
//! sockets of the tree, are found in the listener's accept queue
//! (UDIAG_SHOW_ICONS) and connect again in queue order once it is made
//! ([`find_waiting`]).
//!
//! Refused at dump, naming the fd: a stream or seqpacket socket connected to a process outside
//! the tree (or waiting to be accepted by one), one waiting to be accepted that has sent bytes
//! already, a connection waiting on a listener of the tree whose connecting socket has closed
//! (it may hold bytes, which cannot be read), a socket bound to a relative path whose file is
//! not in the working directory (one that is is bound again there, from a thread with a working
//! directory of its own). Not kept:
//! connections from outside the tree waiting to be accepted (a warning says how many), the
//! credentials and sender addresses attached to queued messages, and the name of a socket
//! accepted from a named listener (after restore it is unnamed, as a socketpair's ends are).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use stasis_image::records::UnixSocket;
use stasis_sys::nix::errno::Errno;
use stasis_sys::nix::libc;
use stasis_sys::nix::sys::socket::{
    self, getsockopt, setsockopt, sockopt, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
};
use stasis_sys::sock::{int_option, set_int_option};
use stasis_sys::Pid;

use super::Seen;

/// TCP_LISTEN and TCP_ESTABLISHED, which unix_diag reports as the state.
const STATE_LISTEN: u8 = 10;
const STATE_ESTABLISHED: u8 = 1;
/// sk_shutdown bits.
const RCV_SHUTDOWN: u32 = 1;
const SEND_SHUTDOWN: u32 = 2;

/// What unix_diag tells about one socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diag {
    pub ty: u8,
    pub state: u8,
    pub ino: u32,
    pub name: Vec<u8>,
    /// Inode of the socket it is connected to; 0: none (or closed).
    pub peer: u32,
    /// Bound to a path: the inode of the socket file the bind made.
    pub file_ino: Option<u32>,
    /// Listening: connections waiting to be accepted; otherwise bytes
    /// queued for reading (datagram: the first datagram's length).
    pub rqueue: u32,
    /// Listening: the backlog.
    pub wqueue: u32,
    pub shutdown: u8,
    /// Listening (when asked for): the connecting sockets of the
    /// connections waiting to be accepted, oldest first; 0 for one whose
    /// connecting socket has closed.
    pub icons: Vec<u32>,
}

/// unix_diag_req asking for one socket by inode (struct nlmsghdr + struct
/// unix_diag_req): its name and file, peer, receive queue length and
/// shutdown state.
fn diag_request(ino: u32) -> Vec<u8> {
    const UDIAG_SHOW_PEER: u32 = 0x04;
    const UDIAG_SHOW_VFS: u32 = 0x02;
    const UDIAG_SHOW_RQLEN: u32 = 0x10;
    unix_diag_request(0, u32::MAX, ino, UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN)
}

const UDIAG_SHOW_NAME: u32 = 0x01;

/// A unix_diag_req (after its nlmsghdr) with netlink `flags` added to
/// NLM_F_REQUEST, for sockets in `states` (a bit per state), inode `ino`
/// (0 in a dump: all), showing `show`.
fn unix_diag_request(flags: i32, states: u32, ino: u32, show: u32) -> Vec<u8> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    let mut req = Vec::with_capacity(16 + 24);
    req.extend_from_slice(&(16u32 + 24).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | flags) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.push(libc::AF_UNIX as u8);
    req.push(0); // protocol
    req.extend_from_slice(&0u16.to_ne_bytes()); // pad
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&ino.to_ne_bytes());
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    req
}

/// Parse the reply to [`diag_request`]: one unix_diag_msg and its
/// attributes, or an error.
pub fn parse_diag_reply(buf: &[u8]) -> Result<Diag, Errno> {
    let malformed = Errno::EBADMSG;
    let len = u32_at(buf, 0).ok_or(malformed)? as usize;
    let ty = buf.get(4..6).map(|s| u16::from_ne_bytes(s.try_into().unwrap())).ok_or(malformed)?;
    let msg = buf.get(16..len).ok_or(malformed)?;
    if i32::from(ty) == libc::NLMSG_ERROR {
        let errno = u32_at(msg, 0).ok_or(malformed)? as i32;
        return Err(Errno::from_raw(-errno));
    }
    parse_diag_msg(msg)
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4).map(|s| u32::from_ne_bytes(s.try_into().unwrap()))
}

/// One unix_diag_msg (after its nlmsghdr) and its attributes.
fn parse_diag_msg(msg: &[u8]) -> Result<Diag, Errno> {
    const UNIX_DIAG_NAME: u16 = 0;
    const UNIX_DIAG_VFS: u16 = 1;
    const UNIX_DIAG_PEER: u16 = 2;
    const UNIX_DIAG_ICONS: u16 = 3;
    const UNIX_DIAG_RQLEN: u16 = 4;
    const UNIX_DIAG_SHUTDOWN: u16 = 6;
    let malformed = Errno::EBADMSG;
    if msg.len() < 16 {
        return Err(malformed);
    }
    let mut d = Diag { ty: msg[1], state: msg[2], ino: u32_at(msg, 4).unwrap(), ..Diag::default() };
    let mut at = 16;
    while at + 4 <= msg.len() {
        let alen = usize::from(u16::from_ne_bytes(msg[at..at + 2].try_into().unwrap()));
        let atype = u16::from_ne_bytes(msg[at + 2..at + 4].try_into().unwrap()) & 0x3fff;
        let payload = msg.get(at + 4..at + alen).ok_or(malformed)?;
        match atype {
            UNIX_DIAG_NAME => d.name = payload.to_vec(),
            UNIX_DIAG_VFS => d.file_ino = Some(u32_at(payload, 0).ok_or(malformed)?),
            UNIX_DIAG_PEER => d.peer = u32_at(payload, 0).ok_or(malformed)?,
            UNIX_DIAG_ICONS => d.icons = payload.chunks_exact(4).map(|c| u32_at(c, 0).unwrap()).collect(),
            UNIX_DIAG_RQLEN => {
                d.rqueue = u32_at(payload, 0).ok_or(malformed)?;
                d.wqueue = u32_at(payload, 4).ok_or(malformed)?;
            }
            UNIX_DIAG_SHUTDOWN => d.shutdown = *payload.first().ok_or(malformed)?,
            _ => {}
        }
        at += alen.max(4).div_ceil(4) * 4;
    }
    Ok(d)
}

/// Every listening unix socket of the network namespace of `pid`, with its
/// name and the connections waiting in its accept queue (`icons`).
fn listeners(pid: Pid) -> Result<Vec<Diag>, String> {
    const UDIAG_SHOW_ICONS: u32 = 0x08;
    let req = unix_diag_request(libc::NLM_F_DUMP, 1 << STATE_LISTEN, 0, UDIAG_SHOW_NAME | UDIAG_SHOW_ICONS);
    let mut found = Vec::new();
    super::socket::diag_dump(pid, &req, "unix_diag", |body| {
        found.push(parse_diag_msg(body).map_err(|e| e.to_string())?);
        Ok(())
    })?;
    Ok(found)
}

/// unix_diag about the socket with inode `ino`, in the network namespace
/// of `pid`.
pub fn diag(pid: Pid, ino: u64) -> Result<Diag, String> {
    let sock = super::socket::diag_socket(pid)?;
    let ino32 = u32::try_from(ino).map_err(|_| format!("socket inode {ino} does not fit unix_diag"))?;
    socket::send(sock.as_raw_fd(), &diag_request(ino32), MsgFlags::empty())
        .map_err(|e| format!("unix_diag request: {e}"))?;
    let mut buf = vec![0u8; 8192];
    let n = socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| format!("unix_diag reply: {e}"))?;
    parse_diag_reply(&buf[..n]).map_err(|e| match e {
        Errno::ENOENT => format!("unix_diag does not know socket {ino}"),
        e => format!("unix_diag: {e}"),
    })
}

/// File descriptors passed with a queued message (SCM_RIGHTS): the
/// agent's copies, taken by peeking, to be dumped like any fd.
#[derive(Debug)]
pub struct InFlight {
    /// Index of the message in the socket's `queue`.
    pub message: u32,
    pub fds: Vec<OwnedFd>,
}

/// Dump the unix socket behind `copy` (the agent's copy of fd `seen.fd`).
/// Its peer, if outside the tree, is looked at later ([`resolve_peers`]).
/// Fds passed with its queued messages come back as they are, for the
/// caller to dump and put in `passed`.
pub fn dump(pid: Pid, seen: &Seen, copy: &OwnedFd) -> Result<(UnixSocket, Vec<InFlight>), String> {
    let d = diag(pid, seen.ino)?;
    let err = |what: &'static str| move |e: Errno| format!("{what}: {e}");
    let mut u = UnixSocket {
        id: seen.ino,
        ty: i32::from(d.ty),
        listening: d.state == STATE_LISTEN,
        connected: d.state == STATE_ESTABLISHED || d.peer != 0,
        peer: u64::from(d.peer),
        shutdown: u32::from(d.shutdown),
        passcred: getsockopt(copy, sockopt::PassCred).map_err(err("SO_PASSCRED"))?,
        peek_off: int_option(copy, libc::SOL_SOCKET, libc::SO_PEEK_OFF).map_err(err("SO_PEEK_OFF"))?,
        ..UnixSocket::default()
    };
    u.options = super::sockopt::dump(copy, libc::AF_UNIX, u.ty, 0)?;
    let locks = stasis_sys::sock::buf_lock(copy).unwrap_or(0);
    if locks & stasis_sys::sock::RCVBUF_LOCK != 0 {
        u.rcvbuf = getsockopt(copy, sockopt::RcvBuf).map_err(err("SO_RCVBUF"))? as u32;
    }
    if locks & stasis_sys::sock::SNDBUF_LOCK != 0 {
        u.sndbuf = getsockopt(copy, sockopt::SndBuf).map_err(err("SO_SNDBUF"))? as u32;
    }
    // An accepted socket carries its listener's name, but is not bound to
    // it: only a socket not connected, or a datagram one, owns its name
    // (and has a file to take mode and owner from).
    let owns_name = u.listening || !u.connected || u.ty == libc::SOCK_DGRAM;
    let name = trim_name(d.name);
    if !name.is_empty() {
        if name[0] != 0 && owns_name {
            let mut file = std::path::PathBuf::from(OsStr::from_bytes(&name));
            // Bound to a relative path: in the directory its file is in,
            // which the kernel tells (SIOCUNIXFILE), removed or not.
            let found = match name[0] != b'/' {
                true => socket_file(copy, &name),
                false => None,
            };
            let resolved = found.is_some();
            if let Some((dir, unlinked, meta)) = found {
                file = Path::new(&dir).join(OsStr::from_bytes(&name));
                u.dir = dir;
                u.unlinked = unlinked;
                if !unlinked {
                    (u.mode, u.uid, u.gid) = (meta.mode() & 0o7777, meta.uid(), meta.gid());
                }
            } else if name[0] != b'/' {
                // Else it must be the working directory (the only one
                // known otherwise).
                let cwd = std::fs::read_link(crate::proc::path(pid, "cwd")).map_err(|e| format!("cwd: {e}"))?;
                let there = crate::proc::path(pid, "cwd").join(OsStr::from_bytes(&name));
                let is_socket = std::fs::symlink_metadata(&there).is_ok_and(|m| m.file_type().is_socket());
                let cwd = cwd.to_string_lossy().into_owned();
                if !is_socket || cwd.ends_with(" (deleted)") {
                    return Err(format!(
                        "a unix socket bound to the relative path {:?}, whose file is not in the working directory \
                         {cwd} (not supported)",
                        String::from_utf8_lossy(&name)
                    ));
                }
                file = Path::new(&cwd).join(OsStr::from_bytes(&name));
                u.dir = cwd;
            }
            // Its own file, unless that was removed after the bind (and
            // another file may be there now).
            let own = |meta: &std::fs::Metadata| d.file_ino.is_none_or(|ino| meta.ino() == u64::from(ino));
            match std::fs::symlink_metadata(&file) {
                _ if resolved => {}
                Ok(meta) if meta.file_type().is_socket() && own(&meta) => {
                    (u.mode, u.uid, u.gid) = (meta.mode() & 0o7777, meta.uid(), meta.gid());
                }
                Ok(_) if u.dir.is_empty() && d.file_ino.is_some() => u.unlinked = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && u.dir.is_empty() => u.unlinked = true,
                _ => {}
            }
        }
        u.name = name;
    }
    if u.listening {
        // Its waiting connections are found with the whole tree's
        // sockets ([`resolve_peers`]).
        u.backlog = d.wqueue;
        Ok((u, Vec::new()))
    } else {
        // Past its queue, a socket shut for reading (or whose peer closed)
        // reads end of file rather than EAGAIN.
        let at_eof = u.shutdown & RCV_SHUTDOWN != 0 || (u.connected && u.peer == 0);
        let (queue, in_flight) =
            read_queue(copy, u.ty, d.rqueue, at_eof).map_err(|e| format!("{}: {e}", u.describe()))?;
        u.queue = queue;
        Ok((u, in_flight))
    }
}

/// Where the file of a unix socket bound to the relative `name` is: its
/// directory, whether it was removed, and its mode and owner; from the
/// kernel (SIOCUNIXFILE on the agent's copy `sock`). None when the kernel
/// does not tell (before Linux 4.11) or its path does not end in `name`.
fn socket_file(sock: &OwnedFd, name: &[u8]) -> Option<(String, bool, std::fs::Metadata)> {
    let file = stasis_sys::sock::unix_socket_file(sock).ok()?;
    let meta = std::fs::File::from(file.try_clone().ok()?).metadata().ok()?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    let link = std::os::unix::ffi::OsStringExt::into_vec(link.into_os_string());
    let (path, unlinked) = match link.strip_suffix(b" (deleted)") {
        Some(p) => (p, true),
        None => (&link[..], false),
    };
    let dir = path.strip_suffix(name)?.strip_suffix(b"/")?;
    let dir = if dir.is_empty() { b"/" } else { dir };
    Some((String::from_utf8(dir.to_vec()).ok()?, unlinked, meta))
}

/// A path may have been bound with its terminating NUL counted: drop it
/// (an abstract name is taken as it is).
fn trim_name(mut name: Vec<u8>) -> Vec<u8> {
    if name.first().is_some_and(|&b| b != 0) {
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        name.truncate(end);
    }
    name
}

/// Every message (or the byte stream) queued for reading on `sock`, read
/// without consuming it, with copies of the fds passed along; SO_PEEK_OFF
/// is set back afterwards.
fn read_queue(sock: &OwnedFd, ty: i32, rqueue: u32, at_eof: bool) -> Result<(Vec<Vec<u8>>, Vec<InFlight>), String> {
    let old = int_option(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF).map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
    let result = peek_all(sock, ty, rqueue, at_eof);
    set_int_option(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old).map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
    result
}

fn set_peek_off(sock: &OwnedFd, off: usize) -> Result<(), String> {
    let off = i32::try_from(off).map_err(|_| format!("queue offset {off} is too large"))?;
    set_int_option(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off).map_err(|e| format!("SO_PEEK_OFF: {e}"))
}

/// `rqueue`: the bytes queued (a datagram socket: the first message's);
/// `at_eof`: reading past the queue gives end of file (an empty read),
/// not EAGAIN.
fn peek_all(sock: &OwnedFd, ty: i32, rqueue: u32, at_eof: bool) -> Result<(Vec<Vec<u8>>, Vec<InFlight>), String> {
    let stream = ty == libc::SOCK_STREAM;
    // Nothing to read (and recv on a seqpacket socket not connected yet
    // fails with ENOTCONN); a datagram socket's count is of one message.
    if ty != libc::SOCK_DGRAM && rqueue == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut off: usize = 0;
    set_peek_off(sock, 0)?;
    let mut buf = vec![0u8; if stream { (rqueue as usize).clamp(4096, 8 << 20) } else { 256 << 10 }];
    let mut bytes = Vec::new();
    let mut messages = Vec::new();
    let mut in_flight = Vec::new();
    let mut last_empty = false;
    loop {
        let Some(p) = peek_one(sock, &mut buf)? else { break };
        let n = p.len;
        if stream {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
            if !p.fds.is_empty() {
                // A stream peek stops after the segment that carried fds;
                // where that segment began it cannot tell (it walks on to
                // the fds whatever its size), so the bytes since the last
                // cut go with it.
                in_flight.push(InFlight { message: messages.len() as u32, fds: p.fds });
                messages.push(std::mem::take(&mut bytes));
            }
            off += n;
            if off >= rqueue as usize {
                break;
            }
        } else if n == 0 && at_eof && ty == libc::SOCK_SEQPACKET && off >= rqueue as usize {
            // End of file, or an empty record: past every byte of the queue
            // (a seqpacket socket's count has them all) it is taken as the
            // end (empty records at the very end of a closed queue are lost).
            break;
        } else if n == 0 && at_eof && last_empty {
            // An empty message is marked peeked and skipped by the next
            // peek; two empty reads in a row are the end of file (an empty
            // datagram just before it is lost).
            messages.pop();
            break;
        } else if p.truncated {
            // The peek moved the offset into the middle of the message: go
            // back to its start and take it whole.
            buf.resize(n, 0);
            set_peek_off(sock, off)?;
        } else {
            if !p.fds.is_empty() {
                in_flight.push(InFlight { message: messages.len() as u32, fds: p.fds });
            }
            messages.push(buf[..n].to_vec());
            off += n;
        }
        last_empty = n == 0;
    }
    if stream && !bytes.is_empty() {
        messages.push(bytes);
    }
    Ok((messages, in_flight))
}

/// One MSG_PEEK: the bytes (or the message's length, when longer than
/// `buf`) and copies of the fds passed with it; `None` when nothing more is
/// queued.
fn peek_one(sock: &OwnedFd, buf: &mut [u8]) -> Result<Option<stasis_sys::sock::Peeked>, String> {
    stasis_sys::sock::peek(sock, buf).map_err(|e| match e {
        Errno::EMSGSIZE => "a queued message passes more file descriptors than can be received at once".into(),
        e => format!("reading its queue: {e}"),
    })
}

/// Once every process is dumped: a socket whose peer is not in the tree
/// keeps the peer's name when it is a datagram socket connected to a named
/// socket; a connection to another process is refused. Errors name the
/// socket's id (inode).
pub fn resolve_peers(pid_of: &dyn Fn(u64) -> Option<Pid>, sockets: &mut [UnixSocket]) -> Result<(), (u64, String)> {
    let ids: std::collections::HashSet<u64> = sockets.iter().map(|s| s.id).collect();
    find_waiting(pid_of, sockets, &ids)?;
    for s in sockets.iter_mut().filter(|s| s.peer != 0 && !ids.contains(&s.peer)) {
        let outside = |what: &str| {
            let holder = holder_of(s.peer).map_or_else(
                || format!("socket {}", s.peer),
                |(pid, fd, comm)| format!("fd {fd} of process {pid} ({comm})"),
            );
            (s.id, format!("{} is connected to {holder}, outside the dump; {what}", s.describe()))
        };
        if s.ty != libc::SOCK_DGRAM {
            return Err(outside("dump that process too (not supported yet otherwise)"));
        }
        let pid = pid_of(s.id).unwrap_or(Pid::this());
        let peer = diag(pid, s.peer).map_err(|e| (s.id, e))?;
        if peer.name.is_empty() {
            return Err(outside("it has no name to connect to again"));
        }
        s.peer_name = trim_name(peer.name);
        s.peer = 0;
    }
    for s in sockets.iter() {
        let partnered = s.peer != 0 && sockets.iter().any(|p| p.id == s.peer && p.peer == s.id);
        // A datagram socket connected to one in the tree that is not
        // connected back connects again by that one's name.
        if s.peer != 0 && !partnered && sockets.iter().any(|p| p.id == s.peer && p.name.is_empty()) {
            return Err((s.id, format!("{}: the socket it is connected to has no name", s.describe())));
        }
        // Queued datagrams go back through the socket's peer (or a stand-in
        // for one that closed) or its name.
        if s.ty != libc::SOCK_STREAM && !s.queue.is_empty() && !partnered && s.name.is_empty() && !peer_closed(s) {
            return Err((s.id, format!("{}: its queued messages cannot be sent to it again", s.describe())));
        }
    }
    Ok(())
}

/// Connections not accepted yet. A stream or seqpacket socket that
/// connected to a listener which has not accepted it shows no peer (the
/// other end has no inode until it is accepted), like one whose peer has
/// closed: the listener's accept queue tells them apart. Each listener of
/// the tree gets its waiting connections from the tree in `waiting`, in
/// queue order; a connection from outside the tree is not kept, with a
/// warning. A socket of the tree waiting on a listener outside it is
/// refused, and so is one that has sent bytes on its connection, or that
/// has closed (it may have sent some): they are in the other end, which
/// cannot be read before it is accepted.
fn find_waiting(
    pid_of: &dyn Fn(u64) -> Option<Pid>,
    sockets: &mut [UnixSocket],
    ids: &std::collections::HashSet<u64>,
) -> Result<(), (u64, String)> {
    let unanswered = |s: &UnixSocket| s.ty != libc::SOCK_DGRAM && s.connected && s.peer == 0 && !s.listening;
    let Some(first) = sockets.iter().find(|s| s.listening || unanswered(s)) else { return Ok(()) };
    let pid = pid_of(first.id).unwrap_or(Pid::this());
    let listeners = listeners(pid).map_err(|e| (first.id, format!("finding connections not accepted yet: {e}")))?;
    for l in &listeners {
        let name = UnixSocket::describe_name(&trim_name(l.name.clone()));
        let ours = sockets.iter().position(|s| s.id == u64::from(l.ino));
        let mut waiting = Vec::new();
        for &c in &l.icons {
            let c = u64::from(c);
            if c == 0 && ours.is_some() {
                return Err((
                    u64::from(l.ino),
                    format!(
                        "a connection waiting to be accepted by the listener {name} was closed by the socket that \
                         made it: bytes it sent before may be held by the end not accepted yet, which cannot be \
                         read (not supported)"
                    ),
                ));
            }
            if !ids.contains(&c) {
                continue;
            }
            let s = sockets.iter().find(|s| s.id == c).unwrap();
            if ours.is_none() {
                let holder = holder_of(u64::from(l.ino)).map_or_else(
                    || format!("socket {}", l.ino),
                    |(p, fd, comm)| format!("fd {fd} of process {p} ({comm})"),
                );
                return Err((
                    c,
                    format!(
                        "{} waits to be accepted by the listener {name}, {holder}, outside the dump; dump that process \
                         too (not supported yet otherwise)",
                        s.describe()
                    ),
                ));
            }
            let sent = diag(pid_of(c).unwrap_or(pid), c).map_err(|e| (c, e))?.wqueue;
            if sent > 0 {
                return Err((
                    c,
                    format!(
                        "{} waits to be accepted by the listener {name} with bytes sent on its connection: they are \
                         held by the end not accepted yet, which cannot be read (not supported)",
                        s.describe()
                    ),
                ));
            }
            waiting.push(c);
        }
        if let Some(at) = ours {
            let lost = l.icons.len() - waiting.len();
            if lost > 0 {
                tracing::warn!(
                    "{lost} connection(s) from outside the dump waiting to be accepted on {} are not kept",
                    sockets[at].describe()
                );
            }
            sockets[at].waiting = waiting;
        }
    }
    Ok(())
}

/// Connected to a socket that has closed since: restored as a socketpair
/// whose other end (a stand-in, through which its queue is filled) is
/// closed. A named datagram socket that others connected to shows as
/// connected too (the kernel marks both ends): it is bound again instead.
fn peer_closed(s: &UnixSocket) -> bool {
    s.connected
        && s.peer == 0
        && s.peer_name.is_empty()
        && !s.listening
        && (s.ty != libc::SOCK_DGRAM || s.name.is_empty())
}

/// The process and fd holding socket inode `ino`, for error messages.
fn holder_of(ino: u64) -> Option<(i32, i32, String)> {
    let want = format!("socket:[{ino}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for f in fds.flatten() {
            if std::fs::read_link(f.path()).is_ok_and(|t| t.as_os_str() == want.as_str()) {
                let fd = f.file_name().to_str().and_then(|s| s.parse().ok()).unwrap_or(-1);
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default().trim().to_owned();
                return Some((pid, fd, comm));
            }
        }
    }
    None
}

fn sock_type(ty: i32) -> Result<SockType, String> {
    match ty {
        libc::SOCK_STREAM => Ok(SockType::Stream),
        libc::SOCK_DGRAM => Ok(SockType::Datagram),
        libc::SOCK_SEQPACKET => Ok(SockType::SeqPacket),
        t => Err(format!("unix socket of type {t}")),
    }
}

fn address(name: &[u8]) -> Result<UnixAddr, String> {
    let r = match name.split_first() {
        Some((0, abstract_name)) => UnixAddr::new_abstract(abstract_name),
        _ => UnixAddr::new(Path::new(OsStr::from_bytes(name))),
    };
    r.map_err(|e| format!("address {}: {e}", UnixSocket::describe_name(name)))
}

/// What [`make_all`] leaves for [`Pending::finish`]: the queues of
/// sockets whose messages pass fds, which are sent once every fd of the
/// tree is made; then the shutdowns, which must come after.
#[derive(Debug, Default)]
pub struct Pending {
    /// (index in the table, sending socket, address to send to).
    fills: Vec<(usize, OwnedFd, Option<UnixAddr>)>,
    /// Stand-in peers of connections whose other end had closed, dropped
    /// once their data is sent.
    stand_ins: HashMap<u64, OwnedFd>,
    /// (index in the table, socket) to shut down last.
    shutdowns: Vec<(usize, OwnedFd)>,
    /// Files of sockets whose file had been removed, until the queues are sent.
    hidden: Hidden,
}

/// The files of sockets whose file had been removed after the bind: bound
/// again, each file is moved to a hidden name beside its path at once (the
/// socket's name stays the path it was bound to), where the tree's other
/// sockets connect and send to it; removed once every connection and
/// queue is made, or the restore fails.
/// Directories removed since are made again for them, and removed last.
#[derive(Debug, Default)]
struct Hidden {
    files: Vec<std::path::PathBuf>,
    dirs: Vec<std::path::PathBuf>,
}

impl Hidden {
    /// Make the directories of `path` that are missing, to be removed again.
    fn make_dirs(&mut self, path: &Path) -> Result<(), String> {
        let missing: Vec<&Path> = path.ancestors().skip(1).take_while(|d| !d.exists()).collect();
        for d in missing.into_iter().rev() {
            std::fs::create_dir(d).map_err(|e| format!("making the removed directory {} again: {e}", d.display()))?;
            self.dirs.push(d.to_owned());
        }
        Ok(())
    }
}

impl Drop for Hidden {
    fn drop(&mut self) {
        for p in &self.files {
            let _ = std::fs::remove_file(p);
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Where the file of `s` is hidden while the restore needs it, if its file
/// had been removed.
fn hidden_path(s: &UnixSocket) -> Option<std::path::PathBuf> {
    let path = s.name.first().is_some_and(|&b| b != 0) && s.unlinked;
    path.then(|| {
        Path::new(&s.dir).join(OsStr::from_bytes(&s.name)).with_file_name(format!(
            ".stasis-{}-{}",
            std::process::id(),
            s.id
        ))
    })
}

/// The address the tree's sockets (and the restore's helpers, whatever
/// their working directory) reach `s` at once it is made: a relative name
/// by its full path.
fn reach(s: &UnixSocket) -> Result<UnixAddr, String> {
    let path = match hidden_path(s) {
        Some(p) => p,
        None if !s.dir.is_empty() && s.name.first().is_some_and(|&b| b != 0) => {
            Path::new(&s.dir).join(OsStr::from_bytes(&s.name))
        }
        None => return address(&s.name),
    };
    UnixAddr::new(&path).map_err(|e| format!("{}: {e}", path.display()))
}

impl Pending {
    /// Send the queues left pending, with `passed` (by socket id and
    /// message index) as their SCM_RIGHTS; then shut down what was.
    pub fn finish(self, sockets: &[UnixSocket], passed: &HashMap<(u64, u32), Vec<OwnedFd>>) -> Result<(), String> {
        for (i, from, to) in &self.fills {
            let s = &sockets[*i];
            let fds: HashMap<u32, Vec<i32>> = s
                .passed
                .iter()
                .map(|m| {
                    let fds = passed.get(&(s.id, m.message)).map(|v| v.iter().map(AsRawFd::as_raw_fd).collect());
                    (m.message, fds.unwrap_or_default())
                })
                .collect();
            fill(from, to.as_ref(), s, &fds).map_err(|e| format!("{}: queued data: {e}", s.describe()))?;
        }
        drop(self.stand_ins);
        drop(self.hidden);
        for (i, sock) in &self.shutdowns {
            shut_down(sock, &sockets[*i])?;
        }
        Ok(())
    }
}

/// Every fd passed with a queued message of the table, for the caller to
/// make: (socket id, message index, the records).
pub fn passed(sockets: &[UnixSocket]) -> impl Iterator<Item = (u64, u32, &[stasis_image::records::Fd])> {
    sockets.iter().flat_map(|s| s.passed.iter().map(move |m| (s.id, m.message, m.fds.as_slice())))
}

/// Make every unix socket of the tree, connected, bound, listening, with
/// their queued data and options; by id. See the module docs.
pub fn make_all(sockets: &[UnixSocket]) -> Result<(HashMap<u64, OwnedFd>, Pending), String> {
    let mut hidden = Hidden::default();
    let by_id: HashMap<u64, &UnixSocket> = sockets.iter().map(|s| (s.id, s)).collect();
    let mut made: HashMap<u64, OwnedFd> = HashMap::new();
    // The other end of each socketpair, to send queued data through: the
    // peer's id, or none for the stand-in end of a connection whose peer
    // had closed (dropped once the data is in, which shuts this end down).
    let mut partner: HashMap<u64, Option<u64>> = HashMap::new();
    let mut stand_ins: HashMap<u64, OwnedFd> = HashMap::new();
    // Connections accepted from a listener of the tree: (accepted end,
    // connecting end, listener), made once the listener is.
    let mut accepted: Vec<(u64, u64, u64)> = Vec::new();
    // Connections not accepted yet, connected once their listener is.
    let waiting: std::collections::HashSet<u64> = sockets.iter().flat_map(|l| l.waiting.iter().copied()).collect();
    for s in sockets {
        if made.contains_key(&s.id) || accepted.iter().any(|a| a.0 == s.id || a.1 == s.id) {
            continue;
        }
        let ctx = |e: String| format!("{}: {e}", s.describe());
        let ty = sock_type(s.ty)?;
        let pair_with = by_id.get(&s.peer).filter(|p| p.peer == s.id && s.peer != 0);
        if let Some(p) = pair_with.filter(|_| s.ty != libc::SOCK_DGRAM) {
            // The accepted end carries its listener's name, the other none.
            let ends = match (s.name.is_empty(), p.name.is_empty()) {
                (false, true) => Some((s, *p)),
                (true, false) => Some((*p, s)),
                _ => None,
            };
            let listener =
                ends.and_then(|(acc, _)| sockets.iter().find(|l| l.listening && l.ty == s.ty && l.name == acc.name));
            if let (Some((acc, cli)), Some(l)) = (ends, listener) {
                accepted.push((acc.id, cli.id, l.id));
                continue;
            }
        }
        // Two datagram sockets that are both named and connected to each
        // other keep their names: made alone, connected later.
        let named_dgrams =
            s.ty == libc::SOCK_DGRAM && pair_with.is_some_and(|p| !p.name.is_empty() && !s.name.is_empty());
        if let (Some(p), false) = (pair_with, named_dgrams) {
            let (a, b) = socket::socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC)
                .map_err(|e| ctx(format!("socketpair: {e}")))?;
            partner.insert(s.id, Some(p.id));
            partner.insert(p.id, Some(s.id));
            made.insert(s.id, a);
            made.insert(p.id, b);
            continue;
        }
        if peer_closed(s) && !waiting.contains(&s.id) {
            // A connection whose other end had closed (a datagram socket's
            // too: its next send fails with ECONNREFUSED, as before).
            let (a, b) = socket::socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC)
                .map_err(|e| ctx(format!("socketpair: {e}")))?;
            partner.insert(s.id, None);
            stand_ins.insert(s.id, b);
            made.insert(s.id, a);
            continue;
        }
        let sock = socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| ctx(format!("socket: {e}")))?;
        if !s.name.is_empty() {
            bind(&sock, s, &mut hidden).map_err(ctx)?;
        }
        if s.listening {
            let backlog = socket::Backlog::new(s.backlog.min(i32::MAX as u32) as i32)
                .map_err(|e| ctx(format!("backlog {}: {e}", s.backlog)))?;
            socket::listen(&sock, backlog).map_err(|e| ctx(format!("listen: {e}")))?;
        }
        made.insert(s.id, sock);
    }
    for &(acc, cli, l) in &accepted {
        let s = by_id[&acc];
        let (client, server) =
            connect_through(&made[&l], by_id[&l], s).map_err(|e| format!("{}: {e}", s.describe()))?;
        partner.insert(acc, Some(cli));
        partner.insert(cli, Some(acc));
        made.insert(acc, server);
        made.insert(cli, client);
    }
    // Connections not accepted yet connect again, in their listener's
    // queue order.
    for l in sockets.iter().filter(|l| l.listening) {
        for id in &l.waiting {
            let s = by_id[id];
            connect_to(&made[id], l).map_err(|e| format!("{}: {e}", s.describe()))?;
        }
    }
    // Queued data, before connecting: a connected datagram socket takes
    // messages from its peer only. A queue passing fds waits for them.
    let mut pending = Pending::default();
    for (i, s) in sockets.iter().enumerate().filter(|(_, s)| !s.queue.is_empty()) {
        let ctx = |e: String| format!("{}: queued data: {e}", s.describe());
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| ctx(format!("dup: {e}")));
        let (from, to) = match partner.get(&s.id) {
            Some(Some(p)) => (dup(&made[p])?, None),
            Some(None) => (dup(&stand_ins[&s.id])?, None),
            None => {
                let helper = socket::socket(AddressFamily::Unix, sock_type(s.ty)?, SockFlag::SOCK_CLOEXEC, None)
                    .map_err(|e| ctx(format!("socket: {e}")))?;
                (helper, Some(reach(s)?))
            }
        };
        if s.passed.is_empty() {
            fill(&from, to.as_ref(), s, &HashMap::new()).map_err(ctx)?;
        } else {
            pending.fills.push((i, from, to));
        }
    }
    if pending.fills.is_empty() {
        drop(stand_ins);
    } else {
        pending.stand_ins = stand_ins;
    }
    for s in sockets {
        let ctx = |e: String| format!("{}: {e}", s.describe());
        let sock = &made[&s.id];
        let to = if s.peer != 0 && !partner.contains_key(&s.id) {
            Some((reach(by_id[&s.peer])?, &by_id[&s.peer].name))
        } else if !s.peer_name.is_empty() {
            Some((address(&s.peer_name)?, &s.peer_name))
        } else {
            None
        };
        if let Some((addr, name)) = to {
            socket::connect(sock.as_raw_fd(), &addr)
                .map_err(|e| ctx(format!("connect to {}: {e}", UnixSocket::describe_name(name))))?;
        }
        set_options(sock, s).map_err(ctx)?;
    }
    for (i, s) in sockets.iter().enumerate().filter(|(_, s)| s.shutdown != 0 && partner.get(&s.id) != Some(&None)) {
        if pending.fills.is_empty() {
            shut_down(&made[&s.id], s)?;
        } else {
            let sock = made[&s.id].try_clone().map_err(|e| format!("{}: dup: {e}", s.describe()))?;
            pending.shutdowns.push((i, sock));
        }
    }
    pending.hidden = hidden;
    Ok((made, pending))
}

fn shut_down(sock: &OwnedFd, s: &UnixSocket) -> Result<(), String> {
    let how = match (s.shutdown & RCV_SHUTDOWN != 0, s.shutdown & SEND_SHUTDOWN != 0) {
        (true, true) => socket::Shutdown::Both,
        (true, false) => socket::Shutdown::Read,
        _ => socket::Shutdown::Write,
    };
    // A connected socket's shutdown also marks its peer: it may be shut
    // down already, which is fine.
    match socket::shutdown(sock.as_raw_fd(), how) {
        Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(format!("{}: shutdown: {e}", s.describe())),
    }
}

/// A connection accepted from `listener` (made already from `l`, bound to
/// the name of `accepted`): a new socket connects to it and the listener accepts,
/// so the accepted end has the listener's name and the connecting end
/// sees it as its peer's. Connections others made to the new listener in
/// the meantime are closed. Returns (connecting end, accepted end).
fn connect_through(listener: &OwnedFd, l: &UnixSocket, accepted: &UnixSocket) -> Result<(OwnedFd, OwnedFd), String> {
    let ty = sock_type(accepted.ty)?;
    let client = socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
        .map_err(|e| format!("socket: {e}"))?;
    let name = UnixSocket::describe_name(&accepted.name);
    connect_to(&client, l)?;
    let me = std::process::id() as i32;
    loop {
        let server =
            stasis_sys::sock::accept(listener).map_err(|e| format!("accept on the restored listener {name}: {e}"))?;
        if getsockopt(&server, sockopt::PeerCredentials).is_ok_and(|c| c.pid() == me) {
            return Ok((client, server));
        }
        tracing::warn!("a connection to {name} made during restore was closed");
    }
}

/// Bind `sock` to the name of `s`. A socket file left at the path by a
/// socket that no longer exists (the dumped process, killed) is removed
/// first; a live one is an error. The file gets its recorded mode and
/// owner, or, if it had been removed, goes to `hidden`.
fn bind(sock: &OwnedFd, s: &UnixSocket, hidden: &mut Hidden) -> Result<(), String> {
    let addr = address(&s.name)?;
    let shown = UnixSocket::describe_name(&s.name);
    // The file, by its full path (a relative name is in `s.dir`).
    let full = (s.name[0] != 0).then(|| Path::new(&s.dir).join(OsStr::from_bytes(&s.name)));
    let path = full.as_deref();
    let bind_it = || match s.dir.is_empty() {
        true => socket::bind(sock.as_raw_fd(), &addr),
        false => bind_in(&s.dir, sock, &addr),
    };
    // Its file had been removed: where it is hidden once bound.
    let hide_at = path.and(hidden_path(s));
    let hide = |hidden: &mut Hidden| -> Result<(), String> {
        let (Some(p), Some(to)) = (path, hide_at.clone()) else { return Ok(()) };
        std::fs::rename(p, &to).map_err(|e| format!("moving the file of {shown} to {}: {e}", to.display()))?;
        hidden.files.push(to);
        Ok(())
    };
    if let (Some(p), Some(_)) = (path, &hide_at) {
        hidden.make_dirs(p)?;
    }
    match bind_it() {
        Ok(()) => {}
        // Its file was removed and another file took the path since: that
        // one steps aside while the socket is bound and its file hidden.
        Err(Errno::EADDRINUSE) if hide_at.is_some() => {
            let p = path.expect("a path name");
            let aside = p.with_file_name(format!(".stasis-aside-{}-{}", std::process::id(), s.id));
            std::fs::rename(p, &aside).map_err(|e| format!("moving {} aside to bind {shown}: {e}", p.display()))?;
            let bound = bind_it().map_err(|e| format!("cannot bind {shown}: {e}")).and_then(|()| hide(hidden));
            let back = std::fs::rename(&aside, p);
            bound?;
            return back.map_err(|e| format!("moving {} back from {}: {e}", p.display(), aside.display()));
        }
        Err(Errno::EADDRINUSE) if path.is_some_and(|p| is_stale(p, s.ty)) => {
            let p = path.unwrap();
            std::fs::remove_file(p).map_err(|e| format!("removing the stale socket file {shown}: {e}"))?;
            bind_it().map_err(|e| format!("cannot bind {shown}: {e}"))?;
        }
        Err(Errno::EADDRINUSE) => return Err(format!("cannot bind {shown}: address in use")),
        Err(e) => return Err(format!("cannot bind {shown}: {}", e.desc().to_lowercase())),
    }
    if s.unlinked {
        return hide(hidden);
    }
    if let (Some(p), true) = (path, s.mode != 0) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(s.mode))
            .map_err(|e| format!("chmod {shown}: {e}"))?;
        std::os::unix::fs::lchown(p, Some(s.uid), Some(s.gid)).map_err(|e| format!("chown {shown}: {e}"))?;
    }
    Ok(())
}

/// What holds the name `s` is to be bound to now, if anything but a socket
/// file left over by a socket that no longer exists: "a socket in use", "a
/// regular file"...
pub fn name_taken(s: &UnixSocket) -> Option<String> {
    // One whose file was removed takes the name for a moment only (bind).
    if s.name.is_empty() || hidden_path(s).is_some() {
        return None;
    }
    if s.name[0] == 0 {
        // An abstract name: taken if a probe cannot bind it.
        let addr = address(&s.name).ok()?;
        let probe = socket::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).ok()?;
        return match socket::bind(probe.as_raw_fd(), &addr) {
            Err(Errno::EADDRINUSE) => Some("a socket in use".into()),
            _ => None,
        };
    }
    let full = Path::new(&s.dir).join(OsStr::from_bytes(&s.name));
    let path = full.as_path();
    let meta = std::fs::symlink_metadata(path).ok()?;
    let ft = meta.file_type();
    if ft.is_socket() {
        return (!is_stale(path, s.ty)).then(|| "a socket in use".into());
    }
    Some(if ft.is_file() {
        "a regular file".into()
    } else if ft.is_dir() {
        "a directory".into()
    } else {
        "another kind of file".into()
    })
}

/// Bind `sock` to a relative name in `dir`, as the process did: from a
/// thread of its own with a working directory of its own (unshare
/// CLONE_FS), so the name stays relative and the agent's cwd is untouched.
fn bind_in(dir: &str, sock: &OwnedFd, addr: &UnixAddr) -> Result<(), Errno> {
    in_dir(dir, sock, addr, |fd, a| socket::bind(fd, a))
}

/// `op` (bind or connect) on `sock` and `addr`, from a thread whose
/// working directory is `dir`, so a relative name is looked up there.
fn in_dir(
    dir: &str,
    sock: &OwnedFd,
    addr: &UnixAddr,
    op: fn(i32, &UnixAddr) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let fd = sock.as_raw_fd();
    let (dir, addr) = (dir.to_owned(), *addr);
    std::thread::spawn(move || {
        stasis_sys::nix::sched::unshare(stasis_sys::nix::sched::CloneFlags::CLONE_FS)?;
        stasis_sys::nix::unistd::chdir(dir.as_str())?;
        op(fd, &addr)
    })
    .join()
    .unwrap_or(Err(Errno::EINTR))
}

/// Connect `sock` to the restored listener `l` by its name.
fn connect_to(sock: &OwnedFd, l: &UnixSocket) -> Result<(), String> {
    let addr = reach(l)?;
    let r = match l.dir.is_empty() {
        true => socket::connect(sock.as_raw_fd(), &addr),
        false => in_dir(&l.dir, sock, &addr, |fd, a| socket::connect(fd, a)),
    };
    r.map_err(|e| format!("connect to the restored listener {}: {e}", UnixSocket::describe_name(&l.name)))
}

/// Whether the socket file at `path` is left over: nothing answers a
/// connect to it any more.
fn is_stale(path: &Path, ty: i32) -> bool {
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        return false;
    }
    let Ok(ty) = sock_type(ty) else { return false };
    let Ok(probe) = socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
    else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else { return false };
    matches!(socket::connect(probe.as_raw_fd(), &addr), Err(Errno::ECONNREFUSED))
}

/// Send the messages queued on `s` again, from `from` (its peer, or a
/// helper sending to `to`), each with the fds `passed` has for its index.
/// The sender's buffer is made big enough for all of it, then set back.
fn fill(from: &OwnedFd, to: Option<&UnixAddr>, s: &UnixSocket, passed: &HashMap<u32, Vec<i32>>) -> Result<(), String> {
    let total: usize = s.queue.iter().map(|m| m.len() + 1024).sum();
    let room = super::sockopt::Buffers::raise(from, 0, total).map_err(|e| format!("SO_SNDBUFFORCE: {e}"))?;
    for (i, m) in s.queue.iter().enumerate() {
        let mut at = 0;
        let mut fds = passed.get(&(i as u32)).map(Vec::as_slice).unwrap_or_default();
        loop {
            let rights = [socket::ControlMessage::ScmRights(fds)];
            let cmsgs: &[socket::ControlMessage] = if fds.is_empty() { &[] } else { &rights };
            let iov = [std::io::IoSlice::new(&m[at..])];
            let n = socket::sendmsg(from.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_DONTWAIT, to)
                .map_err(|e| format!("sending {} bytes: {e}", m.len() - at))?;
            fds = &[];
            at += n;
            // A message goes whole; a stream may take it in parts.
            if at >= m.len() || s.ty != libc::SOCK_STREAM {
                break;
            }
        }
    }
    room.set_back(from).map_err(|e| format!("setting SO_SNDBUF back: {e}"))
}

fn set_options(sock: &OwnedFd, s: &UnixSocket) -> Result<(), String> {
    let set = |what: &str, r: Result<(), Errno>| r.map_err(|e| format!("{what}: {e}"));
    if s.passcred {
        set("SO_PASSCRED", setsockopt(sock, sockopt::PassCred, &true))?;
    }
    if s.peek_off >= 0 {
        set("SO_PEEK_OFF", set_int_option(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, s.peek_off))?;
    }
    // Recorded sizes are the kernel's doubled values.
    if s.rcvbuf > 0 {
        set("SO_RCVBUF", setsockopt(sock, sockopt::RcvBufForce, &(s.rcvbuf as usize / 2)))?;
    }
    if s.sndbuf > 0 {
        set("SO_SNDBUF", setsockopt(sock, sockopt::SndBufForce, &(s.sndbuf as usize / 2)))?;
    }
    super::sockopt::restore(sock, &s.options, &s.describe());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::{scan, Kind};

    fn dump_own(fd: &OwnedFd) -> UnixSocket {
        let seen = scan(Pid::this()).unwrap().into_iter().find(|s| s.fd == fd.as_raw_fd()).expect("our socket");
        assert_eq!(seen.kind, Ok(Kind::Unix), "{seen:?}");
        let (u, in_flight) = dump(Pid::this(), &seen, fd).unwrap();
        assert!(in_flight.is_empty());
        u
    }

    fn recv_all(fd: &OwnedFd, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n + 1];
        let got = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();
        buf.truncate(got);
        buf
    }

    #[test]
    fn diag_reply_fixture() {
        // nlmsghdr, unix_diag_msg (dgram, state 7, ino 4242), NAME "\0ab",
        // VFS (ino 99, dev 3), PEER 77, RQLEN (5, 0), SHUTDOWN 2, ICONS (5, 0).
        let mut msg = vec![1u8, 2, 7, 0];
        msg.extend_from_slice(&4242u32.to_ne_bytes());
        msg.extend_from_slice(&[0xff; 8]);
        let mut attr = |ty: u16, payload: &[u8]| {
            msg.extend_from_slice(&(4 + payload.len() as u16).to_ne_bytes());
            msg.extend_from_slice(&ty.to_ne_bytes());
            msg.extend_from_slice(payload);
            msg.resize(msg.len().div_ceil(4) * 4, 0);
        };
        attr(0, b"\0ab");
        attr(1, &[99u32.to_ne_bytes(), 3u32.to_ne_bytes()].concat());
        attr(2, &77u32.to_ne_bytes());
        attr(4, &[5, 0, 0, 0, 0, 0, 0, 0]);
        attr(6, &[2]);
        attr(3, &[5u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat());
        let mut buf = Vec::new();
        buf.extend_from_slice(&(16 + msg.len() as u32).to_ne_bytes());
        buf.extend_from_slice(&20u16.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf.extend_from_slice(&msg);
        let d = parse_diag_reply(&buf).unwrap();
        let want = Diag {
            ty: 2,
            state: 7,
            ino: 4242,
            name: b"\0ab".to_vec(),
            peer: 77,
            file_ino: Some(99),
            rqueue: 5,
            wqueue: 0,
            shutdown: 2,
            icons: vec![5, 0],
        };
        assert_eq!(d, want);
        assert_eq!(parse_diag_reply(&buf[..20]), Err(Errno::EBADMSG));
    }

    /// Socketpairs with data queued both ways and datagrams of several
    /// sizes (one empty) come back as pairs with the same data, and the
    /// dump consumed nothing.
    #[test]
    fn pairs_round_trip_with_queued_data() {
        let (a, b) = socket::socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let (c, d) = socket::socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::SOCK_CLOEXEC).unwrap();
        setsockopt(&c, sockopt::SndBuf, &(1 << 20)).unwrap();
        socket::send(a.as_raw_fd(), b"hello", MsgFlags::empty()).unwrap();
        socket::send(b.as_raw_fd(), b"world!", MsgFlags::empty()).unwrap();
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        for m in [&b"x"[..], b"", &big[..], b"last"] {
            socket::send(c.as_raw_fd(), m, MsgFlags::empty()).unwrap();
        }
        let mut dumped: Vec<UnixSocket> = [&a, &b, &c, &d].iter().map(|s| dump_own(s)).collect();
        assert_eq!(dumped[0].queue, vec![b"world!".to_vec()]);
        assert_eq!(dumped[1].queue, vec![b"hello".to_vec()]);
        assert_eq!(dumped[3].queue, vec![b"x".to_vec(), vec![], big.clone(), b"last".to_vec()]);
        assert_eq!(dumped[0].peer, dumped[1].id);
        // Nothing was consumed, and the peek offset is off again.
        assert_eq!(recv_all(&b, 100), b"hello");
        assert_eq!(int_option(&b, libc::SOL_SOCKET, libc::SO_PEEK_OFF), Ok(-1));

        resolve_peers(&|_| Some(Pid::this()), &mut dumped).unwrap();
        let (made, _) = make_all(&dumped).unwrap();
        let get = |i: usize| &made[&dumped[i].id];
        assert_eq!(recv_all(get(0), 100), b"world!");
        assert_eq!(recv_all(get(1), 100), b"hello");
        assert_eq!(recv_all(get(3), 10), b"x");
        assert_eq!(recv_all(get(3), 10), b"");
        assert_eq!(recv_all(get(3), 80_000), big);
        assert_eq!(recv_all(get(3), 10), b"last");
        // Still connected to each other.
        socket::send(get(0).as_raw_fd(), b"again", MsgFlags::empty()).unwrap();
        assert_eq!(recv_all(get(1), 100), b"again");
    }

    /// A listener bound to a path whose socket file is left over is bound
    /// again; a datagram socket bound to an abstract name gets its queued
    /// datagrams back and the name; a client connects to the listener.
    #[test]
    fn named_sockets_are_bound_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        let listener = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        socket::bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        socket::listen(&listener, socket::Backlog::new(5).unwrap()).unwrap();
        let name = format!("stasis-unix-test-{}", std::process::id());
        let abs = socket::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).unwrap();
        socket::bind(abs.as_raw_fd(), &UnixAddr::new_abstract(name.as_bytes()).unwrap()).unwrap();
        let sender = socket::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).unwrap();
        let abs_addr = UnixAddr::new_abstract(name.as_bytes()).unwrap();
        socket::sendto(sender.as_raw_fd(), b"queued", &abs_addr, MsgFlags::empty()).unwrap();
        let mut dumped = vec![dump_own(&listener), dump_own(&abs)];
        assert!(dumped[0].listening && dumped[0].backlog == 5, "{:?}", dumped[0]);
        assert_eq!(dumped[1].name, [&[0u8][..], name.as_bytes()].concat());
        // The originals go away, leaving the socket file.
        drop((listener, abs));
        assert!(path.exists());
        resolve_peers(&|_| Some(Pid::this()), &mut dumped).unwrap();
        let (made, _) = make_all(&dumped).unwrap();
        assert_eq!(recv_all(&made[&dumped[1].id], 100), b"queued");
        let client = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        socket::connect(client.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        stasis_sys::sock::accept(&made[&dumped[0].id]).expect("the restored listener accepts");
        // Bound while the made one lives: the name is taken.
        let err = make_all(&dumped[1..]).unwrap_err();
        assert!(err.contains("address in use"), "{err}");
    }

    #[test]
    fn passed_fds_in_flight_come_with_their_segment() {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = socket::socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let send = |data: &[u8], fds: &[i32]| {
            let cmsg = [socket::ControlMessage::ScmRights(fds)];
            let cmsg: &[socket::ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
            socket::sendmsg::<()>(a.as_raw_fd(), &[std::io::IoSlice::new(data)], cmsg, MsgFlags::empty(), None)
                .unwrap();
        };
        send(b"abc", &[]);
        send(b"0123456789", &[file.as_raw_fd(), a.as_raw_fd()]);
        send(b"xyz", &[]);
        send(b"q", &[file.as_raw_fd()]);
        let seen = scan(Pid::this()).unwrap().into_iter().find(|s| s.fd == b.as_raw_fd()).unwrap();
        let (u, in_flight) = dump(Pid::this(), &seen, &b).unwrap();
        let queue: Vec<&[u8]> = u.queue.iter().map(Vec::as_slice).collect();
        // Cut after each segment with fds (where it began, a peek cannot tell).
        assert_eq!(queue, [&b"abc0123456789"[..], b"xyzq"]);
        let shape: Vec<(u32, usize)> = in_flight.iter().map(|f| (f.message, f.fds.len())).collect();
        assert_eq!(shape, [(0, 2), (1, 1)]);
        let ino = |fd: &OwnedFd| std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap().ino();
        assert_eq!(ino(&in_flight[0].fds[0]), file.metadata().unwrap().ino());
        assert_eq!(ino(&in_flight[0].fds[1]), ino(&a));
        // A read stops after each segment that carried fds.
        let mut got = Vec::new();
        while got.len() < 17 {
            let more = recv_all(&b, 17);
            assert!(!more.is_empty(), "the dump consumed the queue: {got:?}");
            got.extend(more);
        }
        assert_eq!(got, b"abc0123456789xyzq");
    }
}
