//! Socket facts nix does not wrap: the protocol name of a socket inode
//! (`system.sockprotoname`, readable through /proc/PID/fd/N without touching
//! the process) and SO_BUF_LOCK (which buffer sizes were set explicitly).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

/// The protocol name the kernel gives the socket behind `path` ("TCP",
/// "UDPv6", "UNIX", "NETLINK", ...), following symlinks such as
/// /proc/PID/fd/N. `None` when it is not a socket or cannot be read.
pub fn protocol_name(path: &Path) -> Option<String> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both names are NUL-terminated C strings that outlive the call,
    // and buf is valid for writes of buf.len() bytes.
    let n =
        unsafe { libc::getxattr(path.as_ptr(), c"system.sockprotoname".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).ok()?;
    let name = &buf[..n];
    let name = name.split(|&b| b == 0).next().unwrap_or(name);
    Some(String::from_utf8_lossy(name).into_owned())
}

/// SO_BUF_LOCK: `SOCK_SNDBUF_LOCK` (1) | `SOCK_RCVBUF_LOCK` (2), the buffer
/// sizes set explicitly with SO_SNDBUF/SO_RCVBUF (Linux 5.14).
pub fn buf_lock(fd: impl AsFd) -> Result<u32, Errno> {
    int_option(fd, libc::SOL_SOCKET, libc::SO_BUF_LOCK).map(|v| v as u32)
}

/// An O_PATH fd on the file a unix socket is bound to (SIOCUNIXFILE,
/// Linux 4.11; CAP_NET_ADMIN): its full path in /proc/self/fd, " (deleted)"
/// after it once removed, even when bound to a relative name.
pub fn unix_socket_file(fd: impl AsFd) -> Result<OwnedFd, Errno> {
    const SIOCUNIXFILE: libc::c_ulong = 0x89e0;
    // SAFETY: SIOCUNIXFILE takes no argument; it returns a new fd, which
    // is owned here from then on.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), SIOCUNIXFILE) };
    // SAFETY: on success r is a new fd nothing else owns.
    Errno::result(r).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An integer socket option nix does not name (SO_PEEK_OFF, TCP_REPAIR, ...).
pub fn int_option(fd: impl AsFd, level: libc::c_int, name: libc::c_int) -> Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of their sizes for the call.
    let r = unsafe { libc::getsockopt(fd.as_fd().as_raw_fd(), level, name, (&raw mut v).cast(), &raw mut len) };
    Errno::result(r).map(|_| v)
}

/// Set an integer socket option nix does not name.
pub fn set_int_option(fd: impl AsFd, level: libc::c_int, name: libc::c_int, value: i32) -> Result<(), Errno> {
    // SAFETY: value is valid for reads of its size for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}

/// A socket option that is a struct of `len` bytes (ICMPV6_FILTER...), as
/// many bytes as the kernel gives.
pub fn bytes_option(fd: impl AsFd, level: libc::c_int, name: libc::c_int, len: usize) -> Result<Vec<u8>, Errno> {
    let mut v = vec![0u8; len];
    let mut got = len as libc::socklen_t;
    // SAFETY: v and got are valid for writes of `len` bytes and of their size.
    let r = unsafe { libc::getsockopt(fd.as_fd().as_raw_fd(), level, name, v.as_mut_ptr().cast(), &raw mut got) };
    Errno::result(r)?;
    v.truncate(got as usize);
    Ok(v)
}

/// Set a socket option that is a struct, from its bytes.
pub fn set_bytes_option(fd: impl AsFd, level: libc::c_int, name: libc::c_int, value: &[u8]) -> Result<(), Errno> {
    // SAFETY: value is valid for reads of its length for the call.
    let r = unsafe {
        libc::setsockopt(fd.as_fd().as_raw_fd(), level, name, value.as_ptr().cast(), value.len() as libc::socklen_t)
    };
    Errno::result(r).map(drop)
}

/// A new socket (close-on-exec) of raw `family`, `ty` and `protocol`, as
/// a socket's own SO_DOMAIN, SO_TYPE and SO_PROTOCOL give them.
pub fn new_socket(family: i32, ty: i32, protocol: i32) -> Result<OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) takes no pointers.
    let fd = Errno::result(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: fd was just made and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One message (or stream bytes) read with MSG_PEEK: see [`peek`].
#[derive(Debug)]
pub struct Peeked {
    /// Bytes copied, or the message's whole length when it was truncated.
    pub len: usize,
    /// The message was longer than the buffer.
    pub truncated: bool,
    /// Copies of the file descriptors passed with it (SCM_RIGHTS): a peek
    /// installs them in the caller as a receive would, and leaves them in
    /// the message.
    pub fds: Vec<OwnedFd>,
}

/// recvmsg with MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC: the next message (at
/// the socket's SO_PEEK_OFF, if set) without consuming it. `None` when
/// nothing is queued. EMSGSIZE when the fds passed with it did not all fit
/// (the kernel closed the rest).
pub fn peek(fd: impl AsFd, buf: &mut [u8]) -> Result<Option<Peeked>, Errno> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC | MsgFlags::MSG_CMSG_CLOEXEC;
    let mut cmsg = nix::cmsg_space!([RawFd; 253], libc::ucred);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = match recvmsg::<()>(fd.as_fd().as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
        Ok(m) => m,
        Err(Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut passed = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel has just installed these fds for us
            // (MSG_PEEK hands out copies) and nothing else knows them.
            passed.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(Errno::EMSGSIZE);
    }
    Ok(Some(Peeked { len: msg.bytes, truncated: msg.flags.contains(MsgFlags::MSG_TRUNC), fds: passed }))
}

/// accept4(2) with SOCK_CLOEXEC, owning the new connection's fd.
pub fn accept(listener: impl AsFd) -> Result<OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    let fd = nix::sys::socket::accept4(listener.as_fd().as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: accept4 just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `SOCK_SNDBUF_LOCK` in [`buf_lock`].
pub const SNDBUF_LOCK: u32 = 1;
/// `SOCK_RCVBUF_LOCK` in [`buf_lock`].
pub const RCVBUF_LOCK: u32 = 2;

/// The classic BPF filter attached to a socket (SO_ATTACH_FILTER), each
/// `struct sock_filter` as a little-endian u64; empty when none (an eBPF
/// program attached with SO_ATTACH_BPF does not show here).
pub fn filter(fd: impl AsFd) -> Result<Vec<u64>, Errno> {
    let raw = fd.as_fd().as_raw_fd();
    let mut len: libc::socklen_t = 0;
    // SAFETY: with a zero length the kernel writes only the instruction
    // count to len.
    let r = unsafe { libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_GET_FILTER, std::ptr::null_mut(), &raw mut len) };
    Errno::result(r)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut prog = vec![0u64; len as usize];
    // SAFETY: prog holds len instructions of 8 bytes; len is in instructions.
    let r =
        unsafe { libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_GET_FILTER, prog.as_mut_ptr().cast(), &raw mut len) };
    Errno::result(r)?;
    prog.truncate(len as usize);
    Ok(prog)
}

/// The protocol (network byte order, as socket(2) took it) and interface
/// index a packet socket (AF_PACKET) is bound to, from getsockname's
/// `sockaddr_ll`; index 0: every interface.
pub fn packet_name(fd: impl AsFd) -> Result<(u16, i32), Errno> {
    // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: sa and len are valid for writes of their sizes for the call.
    let r = unsafe { libc::getsockname(fd.as_fd().as_raw_fd(), (&raw mut sa).cast(), &raw mut len) };
    Errno::result(r)?;
    Ok((sa.sll_protocol, sa.sll_ifindex))
}

/// Bind a packet socket to `protocol` (network byte order) on interface
/// `ifindex`.
pub fn packet_bind(fd: impl AsFd, protocol: u16, ifindex: i32) -> Result<(), Errno> {
    // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = protocol;
    sa.sll_ifindex = ifindex;
    let len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: sa is valid for reads of its size for the call.
    let r = unsafe { libc::bind(fd.as_fd().as_raw_fd(), (&raw const sa).cast(), len) };
    Errno::result(r).map(drop)
}

/// The device a SOCK_PACKET socket is bound to (getsockname's
/// `sockaddr_pkt`: the name in `sa_data`); empty when unbound.
pub fn packet_spkt_device(fd: impl AsFd) -> Result<String, Errno> {
    // SAFETY: sockaddr is plain data; all zeros is a valid value.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr>() as libc::socklen_t;
    // SAFETY: sa and len are valid for writes of their sizes for the call.
    let r = unsafe { libc::getsockname(fd.as_fd().as_raw_fd(), (&raw mut sa).cast(), &raw mut len) };
    Errno::result(r)?;
    let name: Vec<u8> = sa.sa_data.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// Bind a SOCK_PACKET socket to the device named `device`.
pub fn packet_bind_spkt(fd: impl AsFd, device: &str) -> Result<(), Errno> {
    // SAFETY: sockaddr is plain data; all zeros is a valid value.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::AF_PACKET as u16;
    for (d, s) in sa.sa_data.iter_mut().zip(device.bytes().take(13)) {
        *d = s as libc::c_char;
    }
    let len = size_of::<libc::sockaddr>() as libc::socklen_t;
    // SAFETY: sa is valid for reads of its size for the call.
    let r = unsafe { libc::bind(fd.as_fd().as_raw_fd(), (&raw const sa).cast(), len) };
    Errno::result(r).map(drop)
}

/// PACKET_ADD_MEMBERSHIP: `struct packet_mreq` for interface `ifindex`, of
/// `kind` (PACKET_MR_MULTICAST, PROMISC, ALLMULTI, UNICAST), with `addr`
/// (at most 8 bytes).
pub fn packet_add_membership(fd: impl AsFd, ifindex: i32, kind: u16, addr: &[u8]) -> Result<(), Errno> {
    // SAFETY: packet_mreq is plain data; all zeros is a valid value.
    let mut m: libc::packet_mreq = unsafe { std::mem::zeroed() };
    m.mr_ifindex = ifindex;
    m.mr_type = kind;
    let n = addr.len().min(m.mr_address.len());
    m.mr_alen = n as u16;
    m.mr_address[..n].copy_from_slice(&addr[..n]);
    let len = size_of::<libc::packet_mreq>() as libc::socklen_t;
    // SAFETY: m is valid for reads of its size for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&raw const m).cast(),
            len,
        )
    };
    Errno::result(r).map(drop)
}

/// The name of network interface `index` (if_indextoname(3)).
pub fn interface_name(index: u32) -> Result<String, Errno> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(Errno::last());
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Ok(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_locks() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = format!("/proc/self/fd/{}", l.as_raw_fd());
        assert_eq!(protocol_name(Path::new(&link)).as_deref(), Some("TCP"));
        assert_eq!(protocol_name(Path::new("/proc/self/exe")), None);
        assert_eq!(buf_lock(&l), Ok(0));
        nix::sys::socket::setsockopt(&l, nix::sys::socket::sockopt::RcvBuf, &65536).unwrap();
        assert_eq!(buf_lock(&l), Ok(RCVBUF_LOCK));
    }
}
