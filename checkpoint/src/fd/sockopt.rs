//! Socket options with no field of their own in the records: priority,
//! mark, low-water marks, keepalive timing, corking, TOS and TTL, linger,
//! timeouts and the like (the set CRIU keeps).
//!
//! Dump reads each from the socket and from a new socket of the same family,
//! type and protocol, and records those that differ, so that an option left
//! as the kernel set it stays the kernel's after a restore (on another host
//! too, whose defaults may differ). Restore sets what was recorded on the
//! new socket before it is bound; an option the kernel refuses costs a
//! warning naming it, not the restore.

use std::os::fd::{AsRawFd, OwnedFd};

use stasis_image::records::SockOption;
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
        ]),
        AF_INET6 => v.extend([
            (IPPROTO_IPV6, IPV6_TCLASS),
            (IPPROTO_IPV6, IPV6_UNICAST_HOPS),
            (IPPROTO_IPV6, IPV6_RECVPKTINFO),
            (IPPROTO_IPV6, IPV6_MTU_DISCOVER),
            (IPPROTO_IPV6, IPV6_RECVERR),
        ]),
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
    }
    v
}

/// The options of `sock` (of `family`, `ty`, `protocol`) that differ from
/// a new socket's. An option this kernel does not read is left out.
pub fn dump(sock: &OwnedFd, family: i32, ty: i32, protocol: i32) -> Result<Vec<SockOption>, String> {
    let fresh = stasis_sys::sock::new_socket(family, ty, protocol).map_err(|e| format!("socket for defaults: {e}"))?;
    let mut out = Vec::new();
    for (level, name) in int_options(family, protocol == libc::IPPROTO_TCP) {
        let Ok(value) = int_option(sock, level, name) else { continue };
        if int_option(&fresh, level, name) != Ok(value) {
            out.push(SockOption { level, name, value, micros: 0 });
        }
    }
    let linger = |s: &OwnedFd| getsockopt(s, sockopt::Linger).map(|l| (l.l_onoff != 0, l.l_linger));
    if let Some((on, secs)) = linger(sock).ok().filter(|l| linger(&fresh).ok() != Some(*l)) {
        let value = (i32::from(on) << 31) | (secs & 0x7fff_ffff);
        out.push(SockOption { level: LINGER.0, name: LINGER.1, value, micros: 0 });
    }
    let micros = |t: TimeVal| t.num_microseconds().max(0) as u64;
    for ((level, name), ours, theirs) in [
        (RCVTIMEO, getsockopt(sock, sockopt::ReceiveTimeout), getsockopt(&fresh, sockopt::ReceiveTimeout)),
        (SNDTIMEO, getsockopt(sock, sockopt::SendTimeout), getsockopt(&fresh, sockopt::SendTimeout)),
    ] {
        if let Some(t) = ours.ok().filter(|t| theirs.ok() != Some(*t)) {
            out.push(SockOption { level, name, value: 0, micros: micros(t) });
        }
    }
    Ok(out)
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
