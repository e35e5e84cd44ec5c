//! Netlink sockets: a process talking to the kernel (rtnetlink), listening
//! to it (a uevent monitor, audit) or to another process through it.
//!
//! The dump reads the agent's pidfd_getfd copy: protocol and type, the
//! port id and the groups it joined (getsockname; NETLINK_LIST_MEMBERSHIPS
//! for every group, not only the first 32), where it is connected
//! (getpeername), buffer sizes set explicitly, and its NETLINK_* and socket
//! level options. The restore makes a new socket of that protocol, sets
//! the options, binds it to the same port id (free again once the original
//! is gone), joins each group and connects.
//!
//! Not kept: messages queued on it (a warning says so), as for UDP.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use stasis_image::records::{fd::Kind as RecordKind, NetlinkSocket};
use stasis_sys::nix::errno::Errno;
use stasis_sys::nix::libc;
use stasis_sys::nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use stasis_sys::nix::sys::socket::{self, NetlinkAddr};

use super::Seen;

/// SOL_NETLINK and its NETLINK_ADD_MEMBERSHIP, NETLINK_LIST_MEMBERSHIPS.
const SOL_NETLINK: i32 = 270;
const ADD_MEMBERSHIP: i32 = 1;
const LIST_MEMBERSHIPS: i32 = 9;

pub fn dump(seen: &Seen, copy: &OwnedFd) -> Result<RecordKind, String> {
    let err = |what: &'static str| move |e: Errno| format!("{what}: {e}");
    let int = |level, name, what| stasis_sys::sock::int_option(copy, level, name).map_err(err(what));
    let protocol = int(libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL")?;
    let sock_type = int(libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")?;
    let local: NetlinkAddr = socket::getsockname(copy.as_raw_fd()).map_err(err("getsockname"))?;
    let peer: NetlinkAddr = socket::getpeername(copy.as_raw_fd()).map_err(err("getpeername"))?;
    // Every group joined, as a bit map of u32 words (group n is bit n-1).
    let map = stasis_sys::sock::bytes_option(copy, SOL_NETLINK, LIST_MEMBERSHIPS, 1024)
        .map_err(err("NETLINK_LIST_MEMBERSHIPS"))?;
    let mut groups = Vec::new();
    for (w, word) in map.chunks_exact(4).enumerate() {
        let word = u32::from_ne_bytes(word.try_into().expect("4 bytes"));
        groups.extend((0..32).filter(|b| word & (1 << b) != 0).map(|b| w as u32 * 32 + b + 1));
    }
    let mut s = NetlinkSocket {
        protocol,
        sock_type,
        portid: local.pid(),
        groups,
        dst_portid: peer.pid(),
        dst_group: peer.groups(),
        options: super::sockopt::dump(copy, libc::AF_NETLINK, sock_type, protocol)?,
        ..NetlinkSocket::default()
    };
    (s.rcvbuf, s.sndbuf) = super::sockopt::explicit_buffers(copy)?;
    let mut pfd = [PollFd::new(copy.as_fd(), PollFlags::POLLIN)];
    if poll(&mut pfd, PollTimeout::ZERO).map_err(err("poll"))? == 1 {
        tracing::warn!(fd = seen.fd, "{}: the messages queued on it are not kept", describe(&s));
    }
    Ok(RecordKind::Netlink(s))
}

/// "netlink socket 15, port 1234, groups 1" for messages.
pub fn describe(s: &NetlinkSocket) -> String {
    let mut out = format!("netlink socket of protocol {}, port {}", s.protocol, s.portid);
    if !s.groups.is_empty() {
        let groups: Vec<String> = s.groups.iter().map(u32::to_string).collect();
        out.push_str(&format!(", groups {}", groups.join(",")));
    }
    if s.dst_portid != 0 || s.dst_group != 0 {
        out.push_str(&format!(", connected to port {} group {}", s.dst_portid, s.dst_group));
    }
    out
}

/// A new socket as `s` was: options, bound to its port id, in its groups,
/// connected.
pub fn make(s: &NetlinkSocket) -> Result<OwnedFd, String> {
    let what = describe(s);
    let sock = stasis_sys::sock::new_socket(libc::AF_NETLINK, s.sock_type, s.protocol)
        .map_err(|e| format!("{what}: socket: {e}"))?;
    super::sockopt::set_buffers(&sock, s.rcvbuf, s.sndbuf).map_err(|e| format!("{what}: {e}"))?;
    super::sockopt::restore(&sock, &s.options, &what);
    if s.portid != 0 {
        socket::bind(sock.as_raw_fd(), &NetlinkAddr::new(s.portid, 0)).map_err(|e| match e {
            Errno::EADDRINUSE => format!("{what}: port {} is taken (by the original left running?)", s.portid),
            e => format!("{what}: bind: {e}"),
        })?;
    }
    for g in &s.groups {
        stasis_sys::sock::set_int_option(&sock, SOL_NETLINK, ADD_MEMBERSHIP, *g as i32)
            .map_err(|e| format!("{what}: joining group {g}: {e}"))?;
    }
    if s.dst_portid != 0 || s.dst_group != 0 {
        socket::connect(sock.as_raw_fd(), &NetlinkAddr::new(s.dst_portid, s.dst_group))
            .map_err(|e| format!("{what}: connect: {e}"))?;
    }
    Ok(sock)
}
