//! Socket options with no field of their own in the records: priority,
//! mark, low-water marks, keepalive timing, corking, TOS and TTL, linger,
//! timeouts and the like (the set CRIU keeps).
//!
//! Dump reads each from the socket and from a new socket of the same family,
//! type and protocol (once per kind), and records those that differ, so that an option left
//! as the kernel set it stays the kernel's after a restore (on another host
//! too, whose defaults may differ). Restore sets what was recorded on the
//! new socket before it is bound; an option the kernel refuses costs a
//! warning naming it, not the restore.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use stasis_image::records::SockOption;
use stasis_sys::nix::errno::Errno;
use stasis_sys::nix::libc;
use stasis_sys::nix::sys::socket::{getsockopt, setsockopt, sockopt};
use stasis_sys::nix::sys::time::{TimeVal, TimeValLike};
use stasis_sys::sock::{int_option, set_int_option};

/// SO_LINGER, SO_RCVTIMEO and SO_SNDTIMEO, which are not ints.
const LINGER: (i32, i32) = (libc::SOL_SOCKET, libc::SO_LINGER);
const RCVTIMEO: (i32, i32) = (libc::SOL_SOCKET, libc::SO_RCVTIMEO);
const SNDTIMEO: (i32, i32) = (libc::SOL_SOCKET, libc::SO_SNDTIMEO);

/// The int options read for a socket of `family` (AF_INET, AF_INET6,
/// AF_UNIX), with the TCP ones for TCP, in the order they are set again:
/// IP_TOS before SO_PRIORITY (setting the TOS sets the priority too).
fn int_options(family: i32, tcp: bool) -> Vec<(i32, i32)> {
    use libc::*;
    let mut v = Vec::new();
    match family {
        AF_INET => v.extend([
            (IPPROTO_IP, IP_TOS),
            (IPPROTO_IP, IP_TTL),
            (IPPROTO_IP, IP_PKTINFO),
            (IPPROTO_IP, IP_RECVTOS),
            (IPPROTO_IP, IP_MTU_DISCOVER),
            (IPPROTO_IP, IP_RECVERR),
            // Raw sockets': the header included, the ICMP types dropped.
            (IPPROTO_IP, IP_HDRINCL),
            (SOL_RAW, ICMP_FILTER),
        ]),
        AF_INET6 => v.extend([
            (IPPROTO_IPV6, IPV6_TCLASS),
            (IPPROTO_IPV6, IPV6_UNICAST_HOPS),
            (IPPROTO_IPV6, IPV6_RECVPKTINFO),
            (IPPROTO_IPV6, IPV6_MTU_DISCOVER),
            (IPPROTO_IPV6, IPV6_RECVERR),
            // A raw socket's checksum offset.
            (IPPROTO_IPV6, IPV6_CHECKSUM),
        ]),
        // SOL_NETLINK's NETLINK_PKTINFO, BROADCAST_ERROR, NO_ENOBUFS,
        // LISTEN_ALL_NSID, CAP_ACK, EXT_ACK, GET_STRICT_CHK.
        AF_NETLINK => v.extend([3, 4, 5, 8, 10, 11, 12].map(|name| (270, name))),
        _ => {}
    }
    v.extend([
        (SOL_SOCKET, SO_PRIORITY),
        (SOL_SOCKET, SO_RCVLOWAT),
        (SOL_SOCKET, SO_MARK),
        (SOL_SOCKET, SO_PASSSEC),
        (SOL_SOCKET, SO_DONTROUTE),
        (SOL_SOCKET, SO_NO_CHECK),
        (SOL_SOCKET, SO_OOBINLINE),
    ]);
    if tcp {
        v.extend([
            (IPPROTO_TCP, TCP_KEEPIDLE),
            (IPPROTO_TCP, TCP_KEEPINTVL),
            (IPPROTO_TCP, TCP_KEEPCNT),
            (IPPROTO_TCP, TCP_CORK),
            (IPPROTO_TCP, TCP_USER_TIMEOUT),
            (IPPROTO_TCP, TCP_NOTSENT_LOWAT),
        ]);
    } else {
        // A UDP-Lite socket's checksum coverage (SOL_UDPLITE: its send and
        // receive UDPLITE_*_CSCOV); another socket does not let them read.
        v.extend([(UDPLITE_LEVEL, 10), (UDPLITE_LEVEL, 11)]);
    }
    v
}

/// SOL_UDPLITE (IPPROTO_UDPLITE).
const UDPLITE_LEVEL: i32 = 136;
/// SOL_RAW's ICMP_FILTER (a u32 bit mask), from linux/icmp.h.
const ICMP_FILTER: i32 = 1;
/// ICMPV6_FILTER of a raw ICMPv6 socket (SOL_ICMPV6), a 32-byte struct.
const ICMP6_FILTER: (i32, i32) = (libc::IPPROTO_ICMPV6, 1);

/// The options of `sock` (of `family`, `ty`, `protocol`) that differ from
/// a new socket's. An option this kernel does not read is left out.
pub fn dump(sock: &OwnedFd, family: i32, ty: i32, protocol: i32) -> Result<Vec<SockOption>, String> {
    let defaults = defaults(family, ty, protocol)?;
    Ok(read(sock, family, protocol == libc::IPPROTO_TCP).into_iter().filter(|o| !defaults.contains(o)).collect())
}

/// A new socket's options, read once per kind of socket: a dump meets many
/// sockets of few kinds, in the freeze.
fn defaults(family: i32, ty: i32, protocol: i32) -> Result<Arc<Vec<SockOption>>, String> {
    type Cache = Mutex<HashMap<(i32, i32, i32), Arc<Vec<SockOption>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Cache::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = cache.get(&(family, ty, protocol)) {
        return Ok(Arc::clone(d));
    }
    let fresh = stasis_sys::sock::new_socket(family, ty, protocol).map_err(|e| format!("socket for defaults: {e}"))?;
    let d = Arc::new(read(&fresh, family, protocol == libc::IPPROTO_TCP));
    cache.insert((family, ty, protocol), Arc::clone(&d));
    Ok(d)
}

/// Every option of [`int_options`], SO_LINGER and the timeouts that `sock`
/// lets read, as they are recorded.
fn read(sock: &OwnedFd, family: i32, tcp: bool) -> Vec<SockOption> {
    let mut out: Vec<SockOption> = int_options(family, tcp)
        .into_iter()
        .filter_map(|(level, name)| {
            int_option(sock, level, name).ok().map(|value| SockOption { level, name, value, ..SockOption::default() })
        })
        .collect();
    if let Ok(l) = getsockopt(sock, sockopt::Linger) {
        let value = (i32::from(l.l_onoff != 0) << 31) | (l.l_linger & 0x7fff_ffff);
        out.push(SockOption { level: LINGER.0, name: LINGER.1, value, ..SockOption::default() });
    }
    if let Ok(bytes) = stasis_sys::sock::bytes_option(sock, ICMP6_FILTER.0, ICMP6_FILTER.1, 32) {
        out.push(SockOption { level: ICMP6_FILTER.0, name: ICMP6_FILTER.1, bytes, ..SockOption::default() });
    }
    let micros = |t: TimeVal| t.num_microseconds().max(0) as u64;
    for ((level, name), t) in
        [(RCVTIMEO, getsockopt(sock, sockopt::ReceiveTimeout)), (SNDTIMEO, getsockopt(sock, sockopt::SendTimeout))]
    {
        if let Ok(t) = t {
            out.push(SockOption { level, name, micros: micros(t), ..SockOption::default() });
        }
    }
    out
}

/// SO_RCVBUF and SO_SNDBUF as the kernel reports them, each only when it
/// was set explicitly (SO_BUF_LOCK, Linux 5.14), else 0: the others follow
/// the kernel's autotuning and are left to it.
pub fn explicit_buffers(sock: &OwnedFd) -> Result<(u32, u32), String> {
    let locks = stasis_sys::sock::buf_lock(sock).unwrap_or(0);
    let size = |locked: bool, opt: Result<usize, Errno>, what: &str| match locked {
        true => opt.map(|v| v as u32).map_err(|e| format!("{what}: {e}")),
        false => Ok(0),
    };
    Ok((
        size(locks & stasis_sys::sock::RCVBUF_LOCK != 0, getsockopt(sock, sockopt::RcvBuf), "SO_RCVBUF")?,
        size(locks & stasis_sys::sock::SNDBUF_LOCK != 0, getsockopt(sock, sockopt::SndBuf), "SO_SNDBUF")?,
    ))
}

/// Set the buffer sizes [`explicit_buffers`] recorded (0: left alone). The
/// recorded sizes are the kernel's doubled values: the FORCE options (we
/// are root) double half of it back, past net.core.[rw]mem_max.
pub fn set_buffers(sock: &OwnedFd, rcvbuf: u32, sndbuf: u32) -> Result<(), String> {
    if rcvbuf > 0 {
        let half = (rcvbuf / 2) as usize;
        setsockopt(sock, sockopt::RcvBufForce, &half)
            .or_else(|_| setsockopt(sock, sockopt::RcvBuf, &half))
            .map_err(|e| format!("SO_RCVBUF {rcvbuf}: {e}"))?;
    }
    if sndbuf > 0 {
        let half = (sndbuf / 2) as usize;
        setsockopt(sock, sockopt::SndBufForce, &half)
            .or_else(|_| setsockopt(sock, sockopt::SndBuf, &half))
            .map_err(|e| format!("SO_SNDBUF {sndbuf}: {e}"))?;
    }
    Ok(())
}

/// Set `options` on `sock`; one the kernel refuses is warned about.
pub fn restore(sock: &OwnedFd, options: &[SockOption], what: &str) {
    for o in options {
        let r = match (o.level, o.name) {
            LINGER => {
                let l = libc::linger { l_onoff: (o.value as u32 >> 31) as i32, l_linger: o.value & 0x7fff_ffff };
                setsockopt(sock, sockopt::Linger, &l)
            }
            RCVTIMEO => setsockopt(sock, sockopt::ReceiveTimeout, &TimeVal::microseconds(o.micros as i64)),
            SNDTIMEO => setsockopt(sock, sockopt::SendTimeout, &TimeVal::microseconds(o.micros as i64)),
            ICMP6_FILTER => stasis_sys::sock::set_bytes_option(sock, o.level, o.name, &o.bytes),
            (level, name) => set_int_option(sock, level, name, o.value),
        };
        if let Err(e) = r {
            tracing::warn!(
                fd = sock.as_raw_fd(),
                "{what}: socket option {}/{} could not be set to {} again: {e}",
                o.level,
                o.name,
                if o.micros > 0 { o.micros as i64 } else { i64::from(o.value) }
            );
        }
    }
}

/// A socket's buffers raised for a while ([`Buffers::raise`]): the sizes
/// and lock bits (SO_BUF_LOCK: a size the program set is locked, one the
/// kernel tunes is not) to set back.
#[derive(Debug)]
pub struct Buffers {
    rcvbuf: Option<usize>,
    sndbuf: Option<usize>,
    locks: u32,
}

impl Buffers {
    /// Make room in the buffers of `sock` for `recv` and `send` more bytes
    /// (0: that buffer as it is), where they do not have it already.
    pub fn raise(sock: &OwnedFd, recv: usize, send: usize) -> Result<Buffers, Errno> {
        let locks = stasis_sys::sock::buf_lock(sock)?;
        // Sizes read are doubled; the FORCE options double what they take.
        let grow = |size: usize, need: usize| (need > size / 2).then_some(size);
        let rcvbuf = grow(getsockopt(sock, sockopt::RcvBuf)?, recv);
        let sndbuf = grow(getsockopt(sock, sockopt::SndBuf)?, send);
        if let Some(size) = rcvbuf {
            setsockopt(sock, sockopt::RcvBufForce, &(size + recv))?;
        }
        if let Some(size) = sndbuf {
            setsockopt(sock, sockopt::SndBufForce, &(size + send))?;
        }
        Ok(Buffers { rcvbuf, sndbuf, locks })
    }

    /// The sizes and lock bits as they were.
    pub fn set_back(self, sock: &OwnedFd) -> Result<(), Errno> {
        if let Some(size) = self.rcvbuf {
            setsockopt(sock, sockopt::RcvBufForce, &(size / 2))?;
        }
        if let Some(size) = self.sndbuf {
            setsockopt(sock, sockopt::SndBufForce, &(size / 2))?;
        }
        if self.rcvbuf.is_some() || self.sndbuf.is_some() {
            set_int_option(sock, libc::SOL_SOCKET, libc::SO_BUF_LOCK, self.locks as i32)?;
        }
        Ok(())
    }
}
