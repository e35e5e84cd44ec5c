//! TCP_REPAIR: putting a TCP socket in repair mode, where connect(2) and
//! send(2)/recv(2) manipulate its state and queues instead of talking to
//! the peer (include/uapi/linux/tcp.h, net/ipv4/tcp.c `do_tcp_setsockopt`;
//! needs CAP_NET_ADMIN over the socket's network namespace).
//!
//! Dump sets it on a copy of the target's socket (pidfd_getfd) to read
//! sequence numbers and queues without sending anything; restore sets it on
//! a fresh socket to rebuild an established connection. Leaving a socket in
//! repair mode would freeze its connection, so [`RepairMode`] leaves it on
//! drop. The queue, window and option calls below are what a dump reads
//! and a restore writes (net/ipv4/tcp.c `tcp_repair_set_window`,
//! `tcp_repair_options_est`, `tcp_peek_sndq`).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage};

/// `TCP_REPAIR_ON`.
const REPAIR_ON: u32 = 1;
/// `TCP_REPAIR_OFF`: leave repair mode, sending a window probe.
const REPAIR_OFF: u32 = 0;

/// Errors of TCP repair mode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating the probe socket failed.
    #[error("cannot create a TCP socket")]
    Socket(#[source] Errno),
    /// setsockopt(TCP_REPAIR) failed (EPERM: no CAP_NET_ADMIN).
    #[error("cannot set TCP_REPAIR to {value}")]
    Set {
        /// The value written.
        value: u32,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// getsockopt(TCP_REPAIR) failed.
    #[error("cannot read TCP_REPAIR")]
    Get(#[source] Errno),
}

/// A TCP socket held in repair mode; repair mode is left on drop.
#[derive(Debug)]
pub struct RepairMode<'fd> {
    fd: BorrowedFd<'fd>,
}

impl<'fd> RepairMode<'fd> {
    /// Enters repair mode on `fd`.
    pub fn enter(fd: BorrowedFd<'fd>) -> Result<Self, Error> {
        set_repair(fd, REPAIR_ON as i32).map_err(|errno| Error::Set { value: REPAIR_ON, errno })?;
        Ok(RepairMode { fd })
    }

    /// Leaves repair mode, reporting a failure (drop would ignore it).
    pub fn leave(self) -> Result<(), Error> {
        let result = set_off(self.fd);
        std::mem::forget(self);
        result
    }
}

fn set_off(fd: BorrowedFd<'_>) -> Result<(), Error> {
    set_repair(fd, REPAIR_OFF as i32).map_err(|errno| Error::Set { value: REPAIR_OFF, errno })
}

impl Drop for RepairMode<'_> {
    fn drop(&mut self) {
        let _ = set_off(self.fd);
    }
}

/// Whether `fd` is in repair mode.
pub fn in_repair(fd: impl AsFd) -> Result<bool, Error> {
    socket::getsockopt(&fd, sockopt::TcpRepair).map(|v| v != 0).map_err(Error::Get)
}

/// A fresh, unconnected IPv4 TCP socket (close-on-exec).
pub fn new_socket() -> Result<OwnedFd, Error> {
    socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(Error::Socket)
}

/// `TCP_REPAIR_OFF_NO_WP`: leave repair mode without sending a window
/// probe (the connection is untouched, as after a dump that lets the
/// process run on).
pub const REPAIR_OFF_NO_PROBE: i32 = -1;

/// Set TCP_REPAIR: 1 on, 0 off (sending a window probe), or
/// [`REPAIR_OFF_NO_PROBE`].
pub fn set_repair(fd: impl AsFd, value: i32) -> Result<(), Errno> {
    crate::sock::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, value)
}

/// The queues of a socket in repair mode that TCP_QUEUE_SEQ, send(2) and
/// recv(2) act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    None = 0,
    Recv = 1,
    Send = 2,
}

/// Select the queue (TCP_REPAIR_QUEUE).
pub fn select_queue(fd: impl AsFd, q: Queue) -> Result<(), Errno> {
    crate::sock::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, q as i32)
}

/// TCP_QUEUE_SEQ of the selected queue: write_seq (send) or rcv_nxt (recv).
pub fn queue_seq(fd: impl AsFd) -> Result<u32, Errno> {
    crate::sock::int_option(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ).map(|v| v as u32)
}

/// Set the first sequence number of the selected queue (before connect).
pub fn set_queue_seq(fd: impl AsFd, seq: u32) -> Result<(), Errno> {
    crate::sock::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, seq as i32)
}

/// `struct tcp_repair_window`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// TCP_REPAIR_WINDOW.
pub fn window(fd: impl AsFd) -> Result<Window, Errno> {
    let mut w = Window::default();
    let mut len = size_of::<Window>() as libc::socklen_t;
    // SAFETY: w and len are valid for writes of their sizes for the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_WINDOW,
            (&raw mut w).cast(),
            &raw mut len,
        )
    };
    Errno::result(r).map(|_| w)
}

/// Set TCP_REPAIR_WINDOW (connected, in repair mode).
pub fn set_window(fd: impl AsFd, w: &Window) -> Result<(), Errno> {
    // SAFETY: w is valid for reads of its size for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_WINDOW,
            (w as *const Window).cast(),
            size_of::<Window>() as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}

/// TCPOPT_MAXSEG, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP: the
/// option codes of TCP_REPAIR_OPTIONS.
pub const OPT_MSS: u32 = 2;
pub const OPT_WINDOW: u32 = 3;
pub const OPT_SACK_PERM: u32 = 4;
pub const OPT_TIMESTAMP: u32 = 8;

/// Set TCP_REPAIR_OPTIONS: (option code, value) pairs, as `struct
/// tcp_repair_opt`, negotiated at the handshake (connected, in repair mode).
pub fn set_repair_options(fd: impl AsFd, opts: &[(u32, u32)]) -> Result<(), Errno> {
    let raw: Vec<[u32; 2]> = opts.iter().map(|&(c, v)| [c, v]).collect();
    // SAFETY: raw is valid for reads of its length in bytes for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_OPTIONS,
            raw.as_ptr().cast(),
            (raw.len() * size_of::<[u32; 2]>()) as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}

/// What TCP_INFO tells of the connection's state and the options
/// negotiated at the handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// `tcpi_state` (include/net/tcp_states.h: [`ESTABLISHED`], ...).
    pub state: u8,
    /// TCPI_OPT_TIMESTAMPS (1), TCPI_OPT_SACK (2), TCPI_OPT_WSCALE (4).
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
}

pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub const TCPI_OPT_SACK: u8 = 2;
pub const TCPI_OPT_WSCALE: u8 = 4;

/// The negotiated options, from TCP_INFO (`tcpi_options` and the
/// `tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4` byte after it).
pub fn negotiated(fd: impl AsFd) -> Result<Negotiated, Errno> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf and len are valid for writes of their sizes for the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    Errno::result(r)?;
    if len < 7 {
        return Err(Errno::EINVAL);
    }
    Ok(Negotiated { state: buf[0], options: buf[5], snd_wscale: buf[6] & 0x0f, rcv_wscale: buf[6] >> 4 })
}

/// TCP states (include/net/tcp_states.h) of a connection.
pub const ESTABLISHED: u8 = 1;
pub const SYN_SENT: u8 = 2;
pub const FIN_WAIT1: u8 = 4;
pub const FIN_WAIT2: u8 = 5;
pub const CLOSE_WAIT: u8 = 8;
pub const LAST_ACK: u8 = 9;
pub const CLOSING: u8 = 11;

/// TCP header flags.
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_ACK: u8 = 0x10;

/// One TCP segment without data, as if sent by `from` to `to`: the kernel
/// takes it in as the peer's (a FIN that a socket rebuilt in repair mode
/// has to see arrive, or the acknowledgement of its own FIN). Sent from a
/// raw socket bound to `from` (IP_TRANSPARENT lets it be an address this
/// host does not have; needs CAP_NET_RAW and CAP_NET_ADMIN), the checksum
/// computed here over the pseudo-header. Both addresses of one family.
pub fn send_segment(from: SocketAddr, to: SocketAddr, seq: u32, ack: u32, flags: u8, window: u16) -> Result<(), Errno> {
    let (family, level, transparent) = match from {
        SocketAddr::V4(_) => (AddressFamily::Inet, libc::SOL_IP, libc::IP_TRANSPARENT),
        SocketAddr::V6(_) => (AddressFamily::Inet6, libc::SOL_IPV6, libc::IPV6_TRANSPARENT),
    };
    if from.is_ipv4() != to.is_ipv4() {
        return Err(Errno::EAFNOSUPPORT);
    }
    let raw = socket::socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::Tcp)?;
    crate::sock::set_int_option(&raw, level, transparent, 1)?;
    socket::bind(raw.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(from.ip(), 0)))?;
    let segment = segment(from, to, seq, ack, flags, window);
    let dest = SockaddrStorage::from(SocketAddr::new(to.ip(), 0));
    let n = socket::sendto(raw.as_raw_fd(), &segment, &dest, MsgFlags::empty())?;
    if n != segment.len() {
        return Err(Errno::EIO);
    }
    Ok(())
}

/// The bytes of a 20-byte TCP header (no options, no data), checksummed.
fn segment(from: SocketAddr, to: SocketAddr, seq: u32, ack: u32, flags: u8, window: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&from.port().to_be_bytes());
    h.extend_from_slice(&to.port().to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&ack.to_be_bytes());
    h.push(5 << 4); // data offset: 5 words
    h.push(flags);
    h.extend_from_slice(&window.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let mut pseudo = Vec::new();
    match (from.ip(), to.ip()) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            pseudo.extend_from_slice(&f.octets());
            pseudo.extend_from_slice(&t.octets());
            pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
            pseudo.extend_from_slice(&(h.len() as u16).to_be_bytes());
        }
        (f, t) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            pseudo.extend_from_slice(&v6(f));
            pseudo.extend_from_slice(&v6(t));
            pseudo.extend_from_slice(&(h.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_TCP as u8]);
        }
    }
    pseudo.extend_from_slice(&h);
    let sum = checksum(&pseudo);
    h[16..18].copy_from_slice(&sum.to_be_bytes());
    h
}

/// The internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ioctl_int(fd: impl AsFd, request: libc::Ioctl) -> Result<u32, Errno> {
    let mut v: libc::c_int = 0;
    // SAFETY: the SIOC*Q requests write one int through the pointer.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request, &raw mut v) };
    Errno::result(r).map(|_| v as u32)
}

/// Bytes in the send queue, sent or not (SIOCOUTQ).
pub fn outq(fd: impl AsFd) -> Result<u32, Errno> {
    ioctl_int(fd, libc::TIOCOUTQ)
}

/// Bytes in the send queue not sent yet (SIOCOUTQNSD).
pub fn outq_unsent(fd: impl AsFd) -> Result<u32, Errno> {
    const SIOCOUTQNSD: libc::Ioctl = 0x894B;
    ioctl_int(fd, SIOCOUTQNSD)
}

/// Bytes in the receive queue (SIOCINQ).
pub fn inq(fd: impl AsFd) -> Result<u32, Errno> {
    ioctl_int(fd, libc::FIONREAD)
}

/// TCP_TIMESTAMP: the socket's timestamp clock (with its offset), to be
/// set again so the peer sees timestamps go on.
pub fn timestamp(fd: impl AsFd) -> Result<u32, Errno> {
    crate::sock::int_option(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP).map(|v| v as u32)
}

/// Set TCP_TIMESTAMP (in repair mode).
pub fn set_timestamp(fd: impl AsFd, ts: u32) -> Result<(), Errno> {
    crate::sock::set_int_option(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP, ts as i32)
}

const TCP_TIMESTAMP: libc::c_int = 24;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        // A checksummed segment sums to zero with its pseudo-header.
        let (from, to): (SocketAddr, SocketAddr) = ("10.1.2.3:4000".parse().unwrap(), "10.9.8.7:80".parse().unwrap());
        let seg = segment(from, to, 1, 2, FLAG_ACK | FLAG_FIN, 512);
        let mut pseudo = vec![10, 1, 2, 3, 10, 9, 8, 7, 0, 6, 0, 20];
        pseudo.extend_from_slice(&seg);
        assert_eq!(checksum(&pseudo), 0);
    }

    #[test]
    fn enter_and_leave_repair_mode() {
        let sock = new_socket().unwrap();
        let repair = RepairMode::enter(sock.as_fd()).expect("TCP_REPAIR (CAP_NET_ADMIN)");
        assert!(in_repair(&sock).unwrap());
        repair.leave().unwrap();
        assert!(!in_repair(&sock).unwrap());
        {
            let _repair = RepairMode::enter(sock.as_fd()).unwrap();
        }
        assert!(!in_repair(&sock).unwrap(), "drop did not leave repair mode");
    }
}
