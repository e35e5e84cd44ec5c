//! Packet sockets (AF_PACKET): a DHCP client's, an LLDP daemon's, a
//! capture tool's.
//!
//! The dump reads the agent's pidfd_getfd copy (type, protocol and the
//! interface it is bound to, from getsockname's sockaddr_ll) and the
//! socket's packet_diag record (NETLINK_SOCK_DIAG, by inode): its
//! SOL_PACKET settings (version, reserve, copy threshold, timestamping,
//! auxdata, origdev, vnet header, loss), its memberships and its fanout
//! group; a socket of the obsolete SOCK_PACKET type is bound to a device
//! by name only. Its memory-mapped rings (PACKET_RX_RING, PACKET_TX_RING)
//! are set up again with the same geometry, empty, before the socket is
//! bound; the process's mappings of them are made again once its fds are
//! in place (a [`VmaKind::PacketRing`] mapping). The restore makes a new socket
//! of that type and protocol, sets the settings, binds it to the interface
//! of that name, adds each membership as often as it was added, and joins
//! the fanout group.
//!
//! Not kept: frames queued on it (a warning says so), as for UDP, and the
//! frames in its rings (read or not).
//!
//! [`VmaKind::PacketRing`]: stasis_image::records::VmaKind::PacketRing

use std::os::fd::{AsFd, OwnedFd};

use stasis_image::records::{fd::Kind as RecordKind, PacketMembership, PacketRing, PacketSocket};
use stasis_sys::nix::errno::Errno;
use stasis_sys::nix::libc;
use stasis_sys::nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use stasis_sys::sock::{int_option, set_int_option};
use stasis_sys::Pid;

use super::Seen;

/// packet_diag (linux/packet_diag.h): what to show, and the attributes.
const SHOW_INFO: u32 = 0x1;
const SHOW_MCLIST: u32 = 0x2;
const SHOW_RING_CFG: u32 = 0x4;
const SHOW_FANOUT: u32 = 0x8;
const DIAG_INFO: u16 = 0;
const DIAG_MCLIST: u16 = 1;
const DIAG_RX_RING: u16 = 2;
const DIAG_TX_RING: u16 = 3;
const DIAG_FANOUT: u16 = 4;
/// pdi_flags of PACKET_DIAG_INFO.
const PDI_AUXDATA: u32 = 0x2;
const PDI_ORIGDEV: u32 = 0x4;
const PDI_VNETHDR: u32 = 0x8;
const PDI_LOSS: u32 = 0x10;
/// SOL_PACKET options set again (linux/if_packet.h).
const PACKET_COPY_THRESH: i32 = 7;
const PACKET_AUXDATA: i32 = 8;
const PACKET_ORIGDEV: i32 = 9;
const PACKET_VERSION: i32 = 10;
const PACKET_RESERVE: i32 = 12;
const PACKET_LOSS: i32 = 14;
const PACKET_VNET_HDR: i32 = 15;
const PACKET_TIMESTAMP: i32 = 17;
const PACKET_FANOUT: i32 = 18;
const PACKET_RX_RING: i32 = 5;
const PACKET_TX_RING: i32 = 13;
/// SOCK_PACKET, the obsolete type.
const SOCK_PACKET: i32 = 10;

pub fn dump(pid: Pid, seen: &Seen, copy: &OwnedFd) -> Result<RecordKind, String> {
    let err = |what: &'static str| move |e: Errno| format!("{what}: {e}");
    let sock_type = int_option(copy, libc::SOL_SOCKET, libc::SO_TYPE).map_err(err("SO_TYPE"))?;
    let msg = diag(pid, seen.ino)?.ok_or_else(|| format!("packet_diag does not list socket {}", seen.ino))?;
    // The protocol as it was bound last (socket(2)'s, or bind's), which
    // SO_PROTOCOL does not tell: packet_diag_msg's num, in host order.
    let protocol = i32::from(u16::from_ne_bytes([msg[2], msg[3]]).to_be());
    let name = |index: u32| {
        stasis_sys::sock::interface_name(index).map_err(|e| format!("the name of network interface {index}: {e}"))
    };
    // Bound to: an interface (by index; a SOCK_PACKET socket's by name).
    let interface = match sock_type {
        SOCK_PACKET => stasis_sys::sock::packet_spkt_device(copy).map_err(err("getsockname"))?,
        _ => match stasis_sys::sock::packet_name(copy).map_err(err("getsockname"))?.1 {
            0 => String::new(),
            index => name(index as u32)?,
        },
    };
    let mut s = PacketSocket {
        sock_type,
        protocol: protocol as u16 as u32,
        interface,
        options: super::sockopt::dump(copy, libc::AF_PACKET, sock_type, protocol)?,
        ..PacketSocket::default()
    };
    let attr = |ty| super::socket::diag_attribute_at(&msg, 16, ty);
    let u32_at = |b: &[u8], o: usize| b.get(o..o + 4).map(|w| u32::from_ne_bytes(w.try_into().expect("4 bytes")));
    // struct packet_diag_ring: the seven u32 of struct tpacket_req3.
    let ring = |ty| -> Result<Option<PacketRing>, String> {
        let Some(r) = attr(ty) else { return Ok(None) };
        let w: Vec<u32> = (0..7).map(|i| u32_at(r, i * 4)).collect::<Option<_>>().ok_or("packet_diag_ring is short")?;
        Ok(Some(PacketRing {
            block_size: w[0],
            block_nr: w[1],
            frame_size: w[2],
            frame_nr: w[3],
            retire_blk_tov: w[4],
            sizeof_priv: w[5],
            feature_req_word: w[6],
        }))
    };
    (s.rx_ring, s.tx_ring) = (ring(DIAG_RX_RING)?, ring(DIAG_TX_RING)?);
    let info = attr(DIAG_INFO).ok_or("packet_diag gave no PACKET_DIAG_INFO")?;
    let field = |o| u32_at(info, o).ok_or("PACKET_DIAG_INFO is short");
    (s.version, s.reserve, s.copy_thresh, s.tstamp) = (field(4)?, field(8)?, field(12)?, field(16)?);
    let flags = field(20)?;
    (s.auxdata, s.origdev) = (flags & PDI_AUXDATA != 0, flags & PDI_ORIGDEV != 0);
    (s.vnet_hdr, s.loss) = (flags & PDI_VNETHDR != 0, flags & PDI_LOSS != 0);
    // struct packet_diag_mclist: index, count (u32), type, alen (u16),
    // address (32 bytes).
    for m in attr(DIAG_MCLIST).unwrap_or_default().chunks_exact(44) {
        let (index, count) = (u32_at(m, 0).unwrap_or(0), u32_at(m, 4).unwrap_or(0));
        let kind = u16::from_ne_bytes([m[8], m[9]]);
        let alen = (u16::from_ne_bytes([m[10], m[11]]) as usize).min(32);
        s.memberships.push(PacketMembership {
            interface: name(index)?,
            kind: u32::from(kind),
            count,
            address: m[12..12 + alen].to_vec(),
        });
    }
    if let Some(f) = attr(DIAG_FANOUT).and_then(|f| u32_at(f, 0)) {
        (s.fanout, s.fanout_set) = (f, true);
    }
    (s.rcvbuf, s.sndbuf) = super::sockopt::explicit_buffers(copy)?;
    let mut pfd = [PollFd::new(copy.as_fd(), PollFlags::POLLIN)];
    if poll(&mut pfd, PollTimeout::ZERO).map_err(err("poll"))? == 1 {
        tracing::warn!(fd = seen.fd, "{}: the frames queued on it are not kept", describe(&s));
    }
    Ok(RecordKind::Packet(s))
}

/// The packet_diag message of the socket with inode `ino`, as the network
/// namespace of `pid` lists them.
fn diag(pid: Pid, ino: u64) -> Result<Option<Vec<u8>>, String> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    // nlmsghdr, then struct packet_diag_req (20 bytes): family, protocol,
    // pad, inode, what to show, cookie.
    let mut req = Vec::with_capacity(16 + 20);
    req.extend_from_slice(&(16u32 + 20).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[libc::AF_PACKET as u8, 0, 0, 0]);
    req.extend_from_slice(&(ino as u32).to_ne_bytes());
    req.extend_from_slice(&(SHOW_INFO | SHOW_MCLIST | SHOW_RING_CFG | SHOW_FANOUT).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]);
    let mut found = None;
    super::socket::diag_dump(pid, &req, "packet_diag", |body| {
        // struct packet_diag_msg: family, type, num (u8, u8, u16), inode.
        if body.get(4..8).is_some_and(|i| u32::from_ne_bytes(i.try_into().expect("4 bytes")) as u64 == ino) {
            found = Some(body.to_vec());
        }
        Ok(())
    })?;
    Ok(found)
}

/// "packet socket (raw, protocol 0x0003, on eth0)" for messages.
pub fn describe(s: &PacketSocket) -> String {
    let ty = match s.sock_type {
        libc::SOCK_DGRAM => "datagram",
        SOCK_PACKET => "SOCK_PACKET",
        _ => "raw",
    };
    let on = if s.interface.is_empty() { "every interface".to_owned() } else { s.interface.clone() };
    format!("packet socket ({ty}, protocol {:#06x}, on {on})", u16::from_be(s.protocol as u16))
}

/// A new socket as `s` was.
pub fn make(s: &PacketSocket) -> Result<OwnedFd, String> {
    let what = describe(s);
    let what = what.as_str();
    let fail = |step: String| move |e: Errno| format!("{what}: {step}: {e}");
    let sock =
        stasis_sys::sock::new_socket(libc::AF_PACKET, s.sock_type, s.protocol as i32).map_err(fail("socket".into()))?;
    super::sockopt::set_buffers(&sock, s.rcvbuf, s.sndbuf).map_err(|e| format!("{what}: {e}"))?;
    super::sockopt::restore(&sock, &s.options, what);
    let ints = [
        (PACKET_VERSION, s.version as i32, "PACKET_VERSION"),
        (PACKET_RESERVE, s.reserve as i32, "PACKET_RESERVE"),
        (PACKET_COPY_THRESH, s.copy_thresh as i32, "PACKET_COPY_THRESH"),
        (PACKET_TIMESTAMP, s.tstamp as i32, "PACKET_TIMESTAMP"),
        (PACKET_AUXDATA, i32::from(s.auxdata), "PACKET_AUXDATA"),
        (PACKET_ORIGDEV, i32::from(s.origdev), "PACKET_ORIGDEV"),
        (PACKET_VNET_HDR, i32::from(s.vnet_hdr), "PACKET_VNET_HDR"),
        (PACKET_LOSS, i32::from(s.loss), "PACKET_LOSS"),
    ];
    // A SOCK_PACKET socket has none of these (nor a setsockopt for them).
    for (name, value, label) in ints.into_iter().filter(|&(_, v, _)| v != 0 && s.sock_type != SOCK_PACKET) {
        set_int_option(&sock, libc::SOL_PACKET, name, value).map_err(fail(label.into()))?;
    }
    // After the version and reserve, which a ring fixes (EBUSY after).
    let rings = [(PACKET_RX_RING, &s.rx_ring, "PACKET_RX_RING"), (PACKET_TX_RING, &s.tx_ring, "PACKET_TX_RING")];
    for (name, ring, label) in rings.iter().filter_map(|(n, r, l)| r.as_ref().map(|r| (*n, r, *l))) {
        let req = [
            ring.block_size,
            ring.block_nr,
            ring.frame_size,
            ring.frame_nr,
            ring.retire_blk_tov,
            ring.sizeof_priv,
            ring.feature_req_word,
        ];
        let bytes: Vec<u8> = req.iter().flat_map(|w| w.to_ne_bytes()).collect();
        stasis_sys::sock::set_bytes_option(&sock, libc::SOL_PACKET, name, &bytes).map_err(fail(label.into()))?;
    }
    let index = |name: &str| {
        stasis_sys::nix::net::if_::if_nametoindex(name)
            .map(|i| i as i32)
            .map_err(|e| format!("{what}: no network interface {name} here ({e})"))
    };
    match (s.sock_type, s.interface.as_str()) {
        (_, "") => {}
        (SOCK_PACKET, device) => stasis_sys::sock::packet_bind_spkt(&sock, device).map_err(fail("bind".into()))?,
        (_, name) => {
            stasis_sys::sock::packet_bind(&sock, s.protocol as u16, index(name)?).map_err(fail("bind".into()))?
        }
    }
    for m in &s.memberships {
        let at = index(&m.interface)?;
        for _ in 0..m.count.max(1) {
            stasis_sys::sock::packet_add_membership(&sock, at, m.kind as u16, &m.address)
                .map_err(fail(format!("membership on {}", m.interface)))?;
        }
    }
    if s.fanout_set {
        set_int_option(&sock, libc::SOL_PACKET, PACKET_FANOUT, s.fanout as i32)
            .map_err(fail(format!("joining fanout group {:#x}", s.fanout)))?;
    }
    Ok(sock)
}
