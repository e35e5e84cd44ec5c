//! Sockets: listening TCP sockets and UDP sockets, IPv4 and IPv6 (unix
//! sockets are in `unix.rs`).
//!
//! Pre-flight tells sockets apart from /proc only: the protocol from the
//! socket inode's `system.sockprotoname` attribute, and the state from the
//! target's own network namespace's tables, /proc/PID/net/{tcp,tcp6,udp,
//! udp6,unix}, matched by inode. Every other socket is refused by name.
//!
//! The dump reads the socket through the agent's pidfd_getfd copy
//! (getsockname, getpeername, getsockopt) and the listen backlog from
//! NETLINK_SOCK_DIAG (`idiag_wqueue` of a listening socket is
//! sk_max_ack_backlog). Restore makes a new socket in the agent, sets the
//! options, binds, and listens or connects.
//!
//! Not kept: connections waiting in a listener's accept queue (refused,
//! or left out with `--skip-in-flight`), datagrams queued on a UDP socket,
//! multicast memberships and options other than those in [`InetSocket`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use stasis_image::records::{fd::Kind as RecordKind, InetAddr, InetSocket};
use stasis_sys::nix::errno::Errno;
use stasis_sys::nix::libc;
use stasis_sys::nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use stasis_sys::nix::sys::socket::{
    self, getpeername, getsockname, getsockopt, setsockopt, sockopt, AddressFamily, SockFlag, SockProtocol, SockType,
    SockaddrLike, SockaddrStorage,
};
use stasis_sys::Pid;

use super::{Kind, Seen};
use crate::proc;

/// TCP_LISTEN in /proc/net/tcp's `st` column and in inet_diag.
const TCP_LISTEN: u8 = 0x0a;
/// TCP_CLOSE: made (perhaps bound), or closed.
const TCP_CLOSE: u8 = 0x07;
/// TCP_SYN_SENT: connect(2) in progress, no answer yet.
const TCP_SYN_SENT: u8 = 0x02;

/// One row of /proc/PID/net/{tcp,tcp6,udp,udp6}: the socket's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InetRow {
    pub state: u8,
}

/// Parse /proc/net/tcp, tcp6, udp or udp6 into inode -> row.
/// Columns: `sl local_address rem_address st tx_queue:rx_queue tr:tm->when
/// retrnsmt uid timeout inode ...`.
pub fn parse_inet_table(text: &str) -> HashMap<u64, InetRow> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let state = u8::from_str_radix(cols.get(3)?, 16).ok()?;
            let inode = cols.get(9)?.parse().ok()?;
            Some((inode, InetRow { state }))
        })
        .collect()
}

/// The peer of a connected ICMP ping or raw socket (inode `ino`), from the
/// process's /proc/net/`table` (icmp, raw; icmp6, raw6 for IPv6): the
/// row's remote address when its state is ESTABLISHED. Addresses are hex
/// of native-endian 32-bit words.
fn table_peer(pid: Pid, family: i32, table: &str, ino: u64) -> Option<SocketAddr> {
    let table = if family == libc::AF_INET6 { format!("net/{table}6") } else { format!("net/{table}") };
    let text = proc::read(pid, &table).ok()?;
    let row = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.get(9).and_then(|i| i.parse::<u64>().ok()) == Some(ino) && c.get(3).copied() == Some("01"))?;
    parse_table_address(row.get(2)?)
}

/// `HEXADDR:HEXPORT` of a /proc/net table: 8 hex digits for IPv4, 32 for
/// IPv6, each 32-bit word in this machine's byte order.
fn parse_table_address(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<u32>> =
        (0..addr.len() / 8).map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()).collect();
    let bytes: Vec<u8> = words?.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parse /proc/net/unix into inode -> socket type (SOCK_STREAM, ...).
/// Columns: `Num RefCount Protocol Flags Type St Inode Path`.
pub fn parse_unix_table(text: &str) -> HashMap<u64, u16> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let ty = u16::from_str_radix(cols.get(4)?, 16).ok()?;
            let inode = cols.get(6)?.parse().ok()?;
            Some((inode, ty))
        })
        .collect()
}

/// TCP state names, as in include/net/tcp_states.h.
fn tcp_state_name(st: u8) -> &'static str {
    match st {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0a => "LISTEN",
        0x0b => "CLOSING",
        _ => "unknown",
    }
}

/// The target's socket tables, read once per scan when a socket is seen.
#[derive(Debug, Default)]
pub struct Tables {
    tcp: HashMap<u64, InetRow>,
    unix: HashMap<u64, u16>,
}

impl Tables {
    pub fn read(pid: Pid) -> Tables {
        let mut t = Tables::default();
        for name in ["net/tcp", "net/tcp6"] {
            if let Ok(text) = proc::read(pid, name) {
                t.tcp.extend(parse_inet_table(&text));
            }
        }
        if let Ok(text) = proc::read(pid, "net/unix") {
            t.unix = parse_unix_table(&text);
        }
        t
    }

    /// What the socket with inode `ino` is, given the protocol name the
    /// kernel gives it (`system.sockprotoname`: "TCP", "UDPv6", "UNIX", ...).
    pub fn classify(&self, proto: Option<&str>, ino: u64) -> Result<Kind, String> {
        let unsupported = |what: &str| Err(format!("{what} (not supported yet)"));
        match proto {
            Some("TCP" | "TCPv6") => match self.tcp.get(&ino).map(|r| r.state) {
                Some(TCP_LISTEN) => Ok(Kind::TcpListen),
                // ESTABLISHED, being opened (SYN_SENT), or closing:
                // FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING.
                Some(0x01 | TCP_SYN_SENT | 0x04 | 0x05 | 0x08 | 0x09 | 0x0b) => Ok(Kind::TcpEstablished),
                // Made, perhaps bound: not in the connection tables.
                Some(TCP_CLOSE) | None => Ok(Kind::TcpUnconnected),
                Some(st) => unsupported(&format!("a TCP socket in state {}", tcp_state_name(st))),
            },
            // An unbound UDP socket is in no table, and is supported too.
            Some("UDP" | "UDPv6") => Ok(Kind::Udp),
            // "UNIX" (datagram, seqpacket) or "UNIX-STREAM" (Linux 5.15+).
            Some(p) if p.starts_with("UNIX") => match self.unix.get(&ino).map(|&t| i32::from(t)) {
                Some(libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET) | None => Ok(Kind::Unix),
                Some(t) => unsupported(&format!("a unix socket of type {t}")),
            },
            Some("NETLINK") => Ok(Kind::Netlink),
            Some("PACKET") => Ok(Kind::Packet),
            // Raw IP sockets too (InetSocket.raw).
            Some("RAW" | "RAWv6") => Ok(Kind::Udp),
            // Datagram sockets of other protocols, made again as UDP ones
            // are (InetSocket.protocol).
            Some("PING" | "PINGv6" | "UDP-Lite" | "UDPLITEv6") => Ok(Kind::Udp),
            Some(other) => unsupported(&format!("a {other} socket")),
            None => unsupported("a socket of unknown protocol"),
        }
    }
}

pub use stasis_sys::sock::protocol_name;

/// The IP address and port of `sa`; `None` for another family.
pub(super) fn socket_addr(sa: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = sa.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    sa.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

fn inet_addr(sa: &SockaddrStorage) -> Option<InetAddr> {
    socket_addr(sa).map(|a| InetAddr::from_socket_addr(&a))
}

/// Dump the socket from the agent's copy of it.
pub fn dump(pid: Pid, seen: &Seen, copy: &OwnedFd) -> Result<RecordKind, String> {
    let err = |what: &'static str| move |e: Errno| format!("{what}: {e}");
    let ty = getsockopt(copy, sockopt::SockType).map_err(err("SO_TYPE"))?;
    let local_sa = getsockname::<SockaddrStorage>(copy.as_raw_fd()).map_err(err("getsockname"))?;
    let family = match local_sa.family() {
        Some(AddressFamily::Inet) => libc::AF_INET,
        Some(AddressFamily::Inet6) => libc::AF_INET6,
        f => return Err(format!("socket of address family {f:?}")),
    };
    let local = inet_addr(&local_sa).ok_or("getsockname: not an IP address")?;
    let peer = match getpeername::<SockaddrStorage>(copy.as_raw_fd()) {
        Ok(sa) => Some(inet_addr(&sa).ok_or("getpeername: not an IP address")?),
        Err(Errno::ENOTCONN) => None,
        Err(e) => return Err(format!("getpeername: {e}")),
    };
    let mut s = InetSocket {
        family,
        local: Some(local),
        peer,
        reuseaddr: getsockopt(copy, sockopt::ReuseAddr).map_err(err("SO_REUSEADDR"))?,
        reuseport: getsockopt(copy, sockopt::ReusePort).map_err(err("SO_REUSEPORT"))?,
        broadcast: getsockopt(copy, sockopt::Broadcast).map_err(err("SO_BROADCAST"))?,
        keepalive: getsockopt(copy, sockopt::KeepAlive).map_err(err("SO_KEEPALIVE"))?,
        ..InetSocket::default()
    };
    if family == libc::AF_INET6 {
        s.v6only = getsockopt(copy, sockopt::Ipv6V6Only).map_err(err("IPV6_V6ONLY"))?;
    }
    let device = getsockopt(copy, sockopt::BindToDevice).map_err(err("SO_BINDTODEVICE"))?;
    s.device = device.to_string_lossy().into_owned();
    let (level, freebind, transparent) = ip_options(family);
    s.freebind = stasis_sys::sock::int_option(copy, level, freebind).map_err(err("IP_FREEBIND"))? != 0;
    s.transparent = stasis_sys::sock::int_option(copy, level, transparent).map_err(err("IP_TRANSPARENT"))? != 0;
    // SO_BUF_LOCK (Linux 5.14) tells which buffer sizes were set explicitly;
    // the others follow the kernel's autotuning and are left to it.
    (s.rcvbuf, s.sndbuf) = super::sockopt::explicit_buffers(copy)?;
    let sock_ty = match ty {
        SockType::Stream => libc::SOCK_STREAM,
        SockType::Raw => libc::SOCK_RAW,
        _ => libc::SOCK_DGRAM,
    };
    let protocol =
        stasis_sys::sock::int_option(copy, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(err("SO_PROTOCOL"))?;
    s.raw = ty == SockType::Raw;
    if s.raw || !matches!(protocol, libc::IPPROTO_TCP | libc::IPPROTO_UDP) {
        s.protocol = protocol;
    }
    s.options = super::sockopt::dump(copy, family, sock_ty, protocol)?;
    match seen.kind {
        Ok(Kind::TcpListen) => {
            if ty != SockType::Stream || !getsockopt(copy, sockopt::AcceptConn).map_err(err("SO_ACCEPTCONN"))? {
                return Err(format!("{} is no longer a listening TCP socket", seen.target));
            }
            s.nodelay = getsockopt(copy, sockopt::TcpNoDelay).map_err(err("TCP_NODELAY"))?;
            // Connections waiting to be accepted are not kept: the dump
            // refuses them, or leaves them out (dump::in_flight_problems).
            let (backlog, queued) = listen_backlog(pid, family, seen.ino)?;
            s.skipped_connections = queued;
            s.backlog = backlog;
            Ok(RecordKind::TcpListen(s))
        }
        Ok(Kind::TcpEstablished) => {
            if ty == SockType::Stream && s.peer.is_none() {
                // Connecting: getpeername fails until the connection is made.
                s.peer = syn_sent_peer(pid, family, seen.ino).ok().map(|a| InetAddr::from_socket_addr(&a));
            }
            if ty != SockType::Stream || s.peer.is_none() {
                return Err(format!("{} is no longer a connected TCP socket", seen.target));
            }
            s.nodelay = getsockopt(copy, sockopt::TcpNoDelay).map_err(err("TCP_NODELAY"))?;
            Ok(RecordKind::Tcp(super::tcp::dump(copy, s)?))
        }
        Ok(Kind::TcpUnconnected) => {
            if ty != SockType::Stream || s.peer.is_some() {
                return Err(format!("{} is no longer an unconnected TCP socket", seen.target));
            }
            s.nodelay = getsockopt(copy, sockopt::TcpNoDelay).map_err(err("TCP_NODELAY"))?;
            // Closed after a connection, both ways shut (reads give end of
            // file): poll tells, as nothing else does for a closed socket
            // (readable with nothing queued: shut for reading).
            let mut pfd = [PollFd::new(copy.as_fd(), PollFlags::POLLIN)];
            if poll(&mut pfd, PollTimeout::ZERO).map_err(err("poll"))? == 1
                && pfd[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN))
            {
                s.shutdown = 3;
            }
            Ok(RecordKind::TcpUnconnected(s))
        }
        Ok(Kind::Udp) => {
            if ty != SockType::Datagram && ty != SockType::Raw {
                return Err(format!("{} is not a UDP socket", seen.target));
            }
            // An ICMP ping socket or a raw one: no cork, and no inet_diag
            // to tell its shutdown by (not read). One connected with port 0
            // has no peer for getpeername: /proc/net/{icmp,raw} show it.
            let ping = matches!(protocol, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6);
            if s.raw || ping {
                if s.peer.is_none() {
                    let table = if s.raw { "raw" } else { "icmp" };
                    s.peer = table_peer(pid, family, table, seen.ino).map(|a| InetAddr::from_socket_addr(&a));
                }
                return Ok(RecordKind::Udp(s));
            }
            // A corked socket holds a datagram being built in the kernel,
            // which cannot be read out.
            const UDP_CORK: i32 = 1;
            if stasis_sys::sock::int_option(copy, libc::IPPROTO_UDP, UDP_CORK).map_err(err("UDP_CORK"))? != 0 {
                return Err(format!("{} is corked (UDP_CORK, not supported)", s.describe()));
            }
            s.shutdown = u32::from(udp_shutdown(pid, family, protocol, seen.ino)?);
            Ok(RecordKind::Udp(s))
        }
        _ => Err(format!("{} is not a supported socket", seen.target)),
    }
}

/// A NETLINK_SOCK_DIAG socket in the network namespace of `pid` (the
/// agent's own when they are the same; else made by a thread that joined
/// the target's: a socket stays in the namespace it was made in).
pub(super) fn diag_socket(pid: Pid) -> Result<OwnedFd, String> {
    let make = || {
        let sock = socket::socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(|e| format!("NETLINK_SOCK_DIAG socket: {e}"))?;
        // A request the kernel drops (one it cannot parse) gets no answer:
        // a wait for one must end, or the frozen tree would stay frozen.
        let limit = stasis_sys::nix::sys::time::TimeVal::new(10, 0);
        setsockopt(&sock, sockopt::ReceiveTimeout, &limit).map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
        Ok(sock)
    };
    let ns = proc::path(pid, "ns/net");
    let same = match (std::fs::metadata(&ns), std::fs::metadata("/proc/self/ns/net")) {
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            (a.dev(), a.ino()) == (b.dev(), b.ino())
        }
        _ => true,
    };
    if same {
        return make();
    }
    let nsfile = std::fs::File::open(&ns).map_err(|e| format!("{}: {e}", ns.display()))?;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            use stasis_sys::nix::sched::{setns, CloneFlags};
            setns(nsfile.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns into the target's net: {e}"))?;
            make()
        })
        .join()
        .map_err(|_| "netlink thread panicked".to_string())?
    })
}

/// An inet_diag dump request for `protocol` sockets of `family` in
/// `states` (a bit per state).
fn diag_request_for(family: i32, protocol: i32, states: u32) -> Vec<u8> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    let mut req = Vec::with_capacity(16 + 56);
    req.extend_from_slice(&(16u32 + 56).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.push(family as u8);
    req.push(protocol as u8);
    req.push(0); // idiag_ext
    req.push(0); // pad
    req.extend_from_slice(&states.to_ne_bytes()); // idiag_states
    req.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: all wildcards
    req
}

/// One inet_diag_msg: (inode, rqueue, wqueue).
fn parse_diag_msg(msg: &[u8]) -> Option<(u64, u32, u32)> {
    let u32_at = |o: usize| Some(u32::from_ne_bytes(msg.get(o..o + 4)?.try_into().ok()?));
    Some((u64::from(u32_at(68)?), u32_at(56)?, u32_at(60)?))
}

/// Hand the body (after its nlmsghdr) of each message of a netlink reply
/// buffer to `each`; `Ok(true)` when the dump is done.
fn walk_reply(buf: &[u8], each: &mut dyn FnMut(&[u8]) -> Result<(), String>) -> Result<bool, String> {
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
        if len < 16 || at + len > buf.len() {
            return Err("malformed netlink reply".into());
        }
        let body = &buf[at + 16..at + len];
        match i32::from(ty) {
            libc::NLMSG_DONE => return Ok(true),
            libc::NLMSG_ERROR => {
                let errno = body.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                return Err(Errno::from_raw(-errno).to_string());
            }
            _ => each(body)?,
        }
        at += len.div_ceil(4) * 4;
    }
    Ok(false)
}

/// Send the sock_diag dump request `req` in the network namespace of `pid`
/// and hand each message of the reply to `each` (see [`walk_reply`]);
/// errors start with `what` ("inet_diag", "unix_diag").
pub(super) fn diag_dump(
    pid: Pid,
    req: &[u8],
    what: &str,
    mut each: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let sock = diag_socket(pid)?;
    socket::send(sock.as_raw_fd(), req, socket::MsgFlags::empty()).map_err(|e| format!("{what} request: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket::recv(sock.as_raw_fd(), &mut buf, socket::MsgFlags::empty())
            .map_err(|e| format!("{what} reply: {e}"))?;
        if n == 0 || walk_reply(&buf[..n], &mut each).map_err(|e| format!("{what}: {e}"))? {
            return Ok(());
        }
    }
}

/// The inet_diag message of the `protocol` socket of `family` with inode
/// `ino`, among those in `states` (a bit per state), as the network
/// namespace of `pid` lists them.
fn diag_message(pid: Pid, family: i32, protocol: i32, states: u32, ino: u64) -> Result<Option<Vec<u8>>, String> {
    let mut found = None;
    diag_dump(pid, &diag_request_for(family, protocol, states), "inet_diag", |body| {
        if parse_diag_msg(body).is_some_and(|(i, _, _)| i == ino) {
            found = Some(body.to_vec());
        }
        Ok(())
    })?;
    Ok(found)
}

/// The attribute of type `ty` of an inet_diag message (after its 72 bytes).
fn diag_attribute(msg: &[u8], ty: u16) -> Option<&[u8]> {
    diag_attribute_at(msg, 72, ty)
}

/// The attribute of type `ty` of a sock_diag message whose attributes
/// start at `start`.
pub(super) fn diag_attribute_at(msg: &[u8], start: usize, ty: u16) -> Option<&[u8]> {
    let mut a = start;
    while a + 4 <= msg.len() {
        let alen = u16::from_ne_bytes(msg[a..a + 2].try_into().ok()?) as usize;
        let aty = u16::from_ne_bytes(msg[a + 2..a + 4].try_into().ok()?);
        if alen < 4 || a + alen > msg.len() {
            return None;
        }
        if aty == ty {
            return Some(&msg[a + 4..a + alen]);
        }
        a += alen.div_ceil(4) * 4;
    }
    None
}

/// The remote address of an inet_diag message (inet_diag_sockid: ports
/// in network order at 4, destination address at 24).
fn diag_peer(msg: &[u8], family: i32) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(msg.get(6..8)?.try_into().ok()?);
    let ip: std::net::IpAddr = match family {
        libc::AF_INET6 => <[u8; 16]>::try_from(msg.get(24..40)?).ok()?.into(),
        _ => <[u8; 4]>::try_from(msg.get(24..28)?).ok()?.into(),
    };
    Some(SocketAddr::new(ip, port))
}

/// How the UDP socket with inode `ino` was shut down (SHUT_RD 1, SHUT_WR 2
/// bits of sk_shutdown), from inet_diag's INET_DIAG_SHUTDOWN attribute.
fn udp_shutdown(pid: Pid, family: i32, protocol: i32, ino: u64) -> Result<u8, String> {
    const INET_DIAG_SHUTDOWN: u16 = 8;
    let msg = diag_message(pid, family, protocol, u32::MAX, ino)?;
    Ok(msg.and_then(|m| diag_attribute(&m, INET_DIAG_SHUTDOWN)?.first().copied()).unwrap_or(0))
}

/// The backlog (sk_max_ack_backlog) of the listening socket with inode
/// `ino`, and how many connections wait in its accept queue.
fn listen_backlog(pid: Pid, family: i32, ino: u64) -> Result<(u32, u32), String> {
    diag_message(pid, family, libc::IPPROTO_TCP, 1 << TCP_LISTEN, ino)?
        .and_then(|m| parse_diag_msg(&m))
        .map(|(_, rq, wq)| (wq, rq))
        .ok_or_else(|| format!("inet_diag does not list the listening socket with inode {ino}"))
}

/// The address a TCP socket in SYN_SENT (inode `ino`) connects to, which
/// getpeername does not tell before the connection is made.
pub(crate) fn syn_sent_peer(pid: Pid, family: i32, ino: u64) -> Result<SocketAddr, String> {
    diag_message(pid, family, libc::IPPROTO_TCP, 1 << TCP_SYN_SENT, ino)?
        .and_then(|m| diag_peer(&m, family))
        .ok_or_else(|| format!("inet_diag does not list the connecting socket with inode {ino}"))
}

/// A new TCP socket with the options of `s`, neither bound nor connected.
pub(super) fn new_tcp(s: &InetSocket) -> Result<OwnedFd, String> {
    new_socket(s, true)
}

/// A new socket as recorded: options, bind, then listen or connect.
/// `shared`: another socket of the tree is bound to the same address: the
/// socket is bound with SO_REUSEPORT whatever its own (the caller turns it
/// off again once all are bound: two sockets that bound together with it
/// keep their port when one turns it off since).
pub fn create(s: &InetSocket, tcp: bool, listen: bool, shared: bool) -> Result<OwnedFd, String> {
    let sock = new_socket(s, tcp)?;
    if shared && !s.reuseport {
        setsockopt(&sock, sockopt::ReusePort, &true).map_err(|e| format!("SO_REUSEPORT: {e}"))?;
    }
    let addr = |a: &InetAddr| a.to_socket_addr().ok_or_else(|| format!("malformed address {a:?}"));
    // A raw socket's port is its protocol: bound when its address is set.
    let bound = |l: &&InetAddr| match s.raw {
        true => l.to_socket_addr().is_some_and(|a| !a.ip().is_unspecified()),
        false => l.port != 0,
    };
    if let Some(local) = s.local.as_ref().filter(bound) {
        let sa = addr(local)?;
        let bind = || socket::bind(sock.as_raw_fd(), &SockaddrStorage::from(sa));
        let mut r = bind();
        if r == Err(Errno::EADDRINUSE) && tcp && !listen {
            // A TCP socket that neither listens nor is connected: closed
            // after a connection whose addresses linger (TIME_WAIT), or made
            // and bound only. Bound as repair mode forces, which a socket
            // that does not listen cannot misuse (listen and connect check
            // again); its SO_REUSEADDR is set back after.
            r = super::tcp::bind_forced(&sock, sa, s.reuseaddr);
        }
        if r == Err(Errno::EADDRNOTAVAIL) && !s.freebind {
            // Bound with IP_FREEBIND to an address the host lacks, which was
            // turned off since: bound the same way, then off again.
            let (level, freebind, _) = ip_options(s.family);
            let set = |v| stasis_sys::sock::set_int_option(&sock, level, freebind, v);
            r = set(1).and_then(|()| bind()).and_then(|()| set(0));
        }
        r.map_err(|e| match e {
            Errno::EADDRINUSE => format!("cannot bind {sa}: address in use"),
            e => format!("cannot bind {sa}: {}", e.desc().to_lowercase()),
        })?;
    }
    if tcp && listen {
        let backlog = socket::Backlog::new(s.backlog.min(i32::MAX as u32) as i32)
            .map_err(|e| format!("backlog {}: {e}", s.backlog))?;
        socket::listen(&sock, backlog).map_err(|e| format!("listen: {e}"))?;
    } else if let Some(peer) = s.peer.as_ref().filter(|_| !tcp) {
        let sa = addr(peer)?;
        socket::connect(sock.as_raw_fd(), &SockaddrStorage::from(sa)).map_err(|e| format!("connect to {sa}: {e}"))?;
    }
    // SHUT_RD 1, SHUT_WR 2, as sk_shutdown holds them.
    let how = match s.shutdown & 3 {
        1 => Some(socket::Shutdown::Read),
        2 => Some(socket::Shutdown::Write),
        3 => Some(socket::Shutdown::Both),
        _ => None,
    };
    if let Some(how) = how {
        // Unconnected, it says ENOTCONN but marks the socket all the same.
        match socket::shutdown(sock.as_raw_fd(), how) {
            Ok(()) | Err(Errno::ENOTCONN) => {}
            Err(e) => return Err(format!("shutdown: {e}")),
        }
    }
    Ok(sock)
}

/// The local addresses (TCP or UDP) that more than one socket of `fds`
/// (listening, bound, not connected) is bound to.
pub fn shared_addresses<'a>(fds: impl Iterator<Item = &'a stasis_image::records::Fd>) -> HashSet<(bool, SocketAddr)> {
    use stasis_image::records::fd::Kind;
    let mut seen = HashSet::new();
    let mut shared = HashSet::new();
    for f in fds {
        let (tcp, s) = match &f.kind {
            Some(Kind::TcpListen(s)) | Some(Kind::TcpUnconnected(s)) => (true, s),
            Some(Kind::Udp(s)) => (false, s),
            _ => continue,
        };
        let Some(a) = s.local.as_ref().filter(|l| l.port != 0).and_then(InetAddr::to_socket_addr) else { continue };
        if !seen.insert((tcp, a)) {
            shared.insert((tcp, a));
        }
    }
    shared
}

/// The level, and the names of IP_FREEBIND and IP_TRANSPARENT, for
/// `family`.
fn ip_options(family: i32) -> (i32, i32, i32) {
    match family {
        libc::AF_INET6 => (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, libc::IPV6_TRANSPARENT),
        _ => (libc::IPPROTO_IP, libc::IP_FREEBIND, libc::IP_TRANSPARENT),
    }
}

/// A new socket of the family and protocol of `s`, with its options.
fn new_socket(s: &InetSocket, tcp: bool) -> Result<OwnedFd, String> {
    let (family, ty, proto) = match (s.family, tcp) {
        (libc::AF_INET, true) => (AddressFamily::Inet, SockType::Stream, SockProtocol::Tcp),
        (libc::AF_INET6, true) => (AddressFamily::Inet6, SockType::Stream, SockProtocol::Tcp),
        (libc::AF_INET, false) => (AddressFamily::Inet, SockType::Datagram, SockProtocol::Udp),
        (libc::AF_INET6, false) => (AddressFamily::Inet6, SockType::Datagram, SockProtocol::Udp),
        (f, _) => return Err(format!("socket of address family {f}")),
    };
    let sock = match (s.raw, s.protocol) {
        (true, p) => stasis_sys::sock::new_socket(s.family, libc::SOCK_RAW, p),
        (false, 0) => socket::socket(family, ty, SockFlag::SOCK_CLOEXEC, proto),
        (false, p) => stasis_sys::sock::new_socket(s.family, libc::SOCK_DGRAM, p),
    }
    .map_err(|e| format!("socket: {e}"))?;
    let set = |what: &str, r: Result<(), Errno>| r.map_err(|e| format!("{what}: {e}"));
    // Before bind: these decide whether and how the bind succeeds.
    set("SO_REUSEADDR", setsockopt(&sock, sockopt::ReuseAddr, &s.reuseaddr))?;
    set("SO_REUSEPORT", setsockopt(&sock, sockopt::ReusePort, &s.reuseport))?;
    // Not on a raw socket, whose protocol number already counts as bound.
    if s.family == libc::AF_INET6 && !s.raw {
        set("IPV6_V6ONLY", setsockopt(&sock, sockopt::Ipv6V6Only, &s.v6only))?;
    }
    if !s.device.is_empty() {
        let device = std::ffi::OsString::from(&s.device);
        set(&format!("SO_BINDTODEVICE {}", s.device), setsockopt(&sock, sockopt::BindToDevice, &device))?;
    }
    let (level, freebind, transparent) = ip_options(s.family);
    if s.freebind {
        set("IP_FREEBIND", stasis_sys::sock::set_int_option(&sock, level, freebind, 1))?;
    }
    if s.transparent {
        set("IP_TRANSPARENT", stasis_sys::sock::set_int_option(&sock, level, transparent, 1))?;
    }
    set("SO_BROADCAST", setsockopt(&sock, sockopt::Broadcast, &s.broadcast))?;
    set("SO_KEEPALIVE", setsockopt(&sock, sockopt::KeepAlive, &s.keepalive))?;
    if tcp {
        set("TCP_NODELAY", setsockopt(&sock, sockopt::TcpNoDelay, &s.nodelay))?;
    }
    super::sockopt::set_buffers(&sock, s.rcvbuf, s.sndbuf)?;
    super::sockopt::restore(&sock, &s.options, &s.describe());
    Ok(sock)
}

#[cfg(test)]
mod table_tests {
    use super::parse_table_address;

    #[test]
    fn reads_addresses_of_proc_net_tables() {
        let v4 = if cfg!(target_endian = "little") { "0100007F:1F90" } else { "7F000001:1F90" };
        assert_eq!(parse_table_address(v4), Some("127.0.0.1:8080".parse().unwrap()));
        let one = if cfg!(target_endian = "little") { "01000000" } else { "00000001" };
        let v6 = format!("000000000000000000000000{one}:0000");
        assert_eq!(parse_table_address(&v6), Some("[::1]:0".parse().unwrap()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 123457 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 223344 1 0000000000000000 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  485: 0100007F:A1B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 33333 2 0000000000000000 0
  486: 0100007F:C3D4 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 33334 2 0000000000000000 0
";
    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 5551 /run/some.sock
0000000000000000: 00000002 00000000 00000000 0002 01 5552
0000000000000000: 00000003 00000000 00000000 0005 03 5553 @abstract
";

    #[test]
    fn proc_net_fixtures() {
        let tcp = parse_inet_table(TCP);
        assert_eq!(tcp.len(), 2);
        assert_eq!(tcp[&123456].state, TCP_LISTEN);
        assert_eq!(tcp[&123457].state, 1);
        assert_eq!(parse_inet_table(TCP6)[&223344].state, TCP_LISTEN);
        let udp = parse_inet_table(UDP);
        assert_eq!((udp[&33333].state, udp[&33334].state), (7, 1));
        let unix = parse_unix_table(UNIX);
        assert_eq!((unix[&5551], unix[&5552], unix[&5553]), (1, 2, 5));

        let mut t = Tables { tcp, unix };
        t.tcp.extend(parse_inet_table(TCP6));
        assert_eq!(t.classify(Some("TCP"), 123456), Ok(Kind::TcpListen));
        assert_eq!(t.classify(Some("TCPv6"), 223344), Ok(Kind::TcpListen));
        assert_eq!(t.classify(Some("TCP"), 123457), Ok(Kind::TcpEstablished));
        assert_eq!(t.classify(Some("UDP"), 33333), Ok(Kind::Udp));
        assert_eq!(t.classify(Some("UDPv6"), 1), Ok(Kind::Udp));
        for (proto, ino) in [("UNIX", 5551), ("UNIX-STREAM", 1), ("UNIX", 5552), ("UNIX", 5553)] {
            assert_eq!(t.classify(Some(proto), ino), Ok(Kind::Unix));
        }
        assert_eq!(t.classify(Some("NETLINK"), 9), Ok(Kind::Netlink));
        assert_eq!(t.classify(Some("PACKET"), 9), Ok(Kind::Packet));
    }

    /// Parse a netlink reply buffer into `found`, the message (inet_diag_msg
    /// and its attributes) of the socket with inode `ino`; `Ok(true)` when the
    /// dump is done.
    fn parse_diag_reply(buf: &[u8], ino: u64, found: &mut Option<Vec<u8>>) -> Result<bool, String> {
        walk_reply(buf, &mut |body| {
            if parse_diag_msg(body).is_some_and(|(i, _, _)| i == ino) {
                *found = Some(body.to_vec());
            }
            Ok(())
        })
        .map_err(|e| format!("inet_diag: {e}"))
    }

    #[test]
    fn diag_reply_fixture() {
        // nlmsghdr (type 20) + inet_diag_msg, then NLMSG_DONE.
        let mut msg = vec![0u8; 72];
        msg[56..60].copy_from_slice(&2u32.to_ne_bytes());
        msg[60..64].copy_from_slice(&7u32.to_ne_bytes());
        msg[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        let mut buf = Vec::new();
        buf.extend_from_slice(&(16u32 + 72).to_ne_bytes());
        buf.extend_from_slice(&20u16.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf.extend_from_slice(&msg);
        let mut found = None;
        assert_eq!(parse_diag_reply(&buf, 4242, &mut found), Ok(false));
        assert_eq!(found.as_deref().and_then(parse_diag_msg), Some((4242, 2, 7)));
        let mut done = Vec::new();
        done.extend_from_slice(&20u32.to_ne_bytes());
        done.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        done.extend_from_slice(&[0; 14]);
        assert_eq!(parse_diag_reply(&done, 4242, &mut found), Ok(true));

        // The peer (port, address in network order) and an attribute.
        msg[6..8].copy_from_slice(&8080u16.to_be_bytes());
        msg[24..28].copy_from_slice(&[10, 0, 0, 9]);
        msg.extend_from_slice(&5u16.to_ne_bytes());
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&[2, 0, 0, 0]);
        assert_eq!(diag_peer(&msg, libc::AF_INET), Some("10.0.0.9:8080".parse().unwrap()));
        assert_eq!(diag_attribute(&msg, 8), Some(&[2][..]));
        assert_eq!(diag_attribute(&msg, 9), None);
    }

    /// Our own listening socket: the inet_diag backlog, protocol name and
    /// table lookup, and a dump/create round trip.
    #[test]
    fn live_listener_and_udp() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l = OwnedFd::from(l);
        socket::listen(&l, socket::Backlog::new(5).unwrap()).unwrap();
        let me = Pid::this();
        let link = proc::path(me, &format!("fd/{}", l.as_raw_fd()));
        assert_eq!(protocol_name(&link).as_deref(), Some("TCP"));
        let seen = super::super::scan(me).unwrap().into_iter().find(|s| s.fd == l.as_raw_fd()).unwrap();
        assert_eq!(seen.kind, Ok(Kind::TcpListen));
        let RecordKind::TcpListen(rec) = dump(me, &seen, &l).unwrap() else { panic!("not a listener") };
        assert_eq!(rec.backlog, 5);
        assert_eq!(rec.family, libc::AF_INET);
        drop(l);
        let again = create(&rec, true, true, false).unwrap();
        assert!(getsockopt(&again, sockopt::AcceptConn).unwrap());
        let sa = getsockname::<SockaddrStorage>(again.as_raw_fd()).unwrap();
        assert_eq!(inet_addr(&sa), rec.local);

        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        u.connect(std::net::TcpListener::local_addr(&std::net::TcpListener::from(again)).unwrap()).unwrap();
        let u = OwnedFd::from(u);
        let seen = super::super::scan(me).unwrap().into_iter().find(|s| s.fd == u.as_raw_fd()).unwrap();
        assert_eq!(seen.kind, Ok(Kind::Udp));
        let RecordKind::Udp(rec) = dump(me, &seen, &u).unwrap() else { panic!("not udp") };
        assert!(rec.peer.is_some());
        let err = create(&rec, false, false, false).unwrap_err();
        assert!(err.contains("address in use"), "{err}");
        drop(u);
        create(&rec, false, false, false).unwrap();
    }
}
