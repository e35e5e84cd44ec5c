//! Established TCP connections, through TCP_REPAIR (as CRIU's soccr).
//!
//! Dump puts the agent's copy of the socket in repair mode, where recv(2)
//! with MSG_PEEK reads a queue without touching the connection: the
//! receive queue (bytes the process has not read) and the send queue
//! (bytes written and not yet acknowledged, from snd_una, of which the last
//! SIOCOUTQNSD bytes were never sent), with the sequence number at the end
//! of each, the negotiated options and the window. The socket stays in
//! repair mode until the dump ends: closed in repair mode (the killed
//! process) it goes away without a FIN or RST; for a dump that lets the
//! tree run on, repair mode is left without a window probe, so the
//! connection never notices. Meanwhile the network lock (`netlock`) drops
//! the peer's packets, so none is acknowledged and then lost.
//!
//! Restore makes a socket in repair mode, binds it (repair mode forces
//! address reuse, so it shares the port with a restored listener), sets
//! each queue's first sequence number, "connects" (no SYN is sent), sets
//! the options, puts back the receive queue and the sent part of the send
//! queue, and the window; the never-sent part is written with repair mode
//! off, as ordinary data. The socket leaves repair mode (with a window
//! probe) when the tree is let go, after the network lock is removed.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use stasis_image::records::{InetSocket, TcpConn};
use stasis_sys::nix::errno::Errno;
use stasis_sys::nix::sys::socket::{self, getsockopt, setsockopt, sockopt, MsgFlags, SockaddrStorage};
use stasis_sys::tcp::{self as repair, Queue, Window};

/// Read the connection behind `copy` (the agent's copy), leaving it in
/// repair mode; `base` holds its addresses and options.
pub fn dump(copy: &OwnedFd, base: InetSocket) -> Result<TcpConn, String> {
    let err = |what: &'static str| move |e: Errno| format!("{what}: {e}");
    repair::set_repair(copy, 1).map_err(|e| match e {
        Errno::EPERM => "TCP_REPAIR: not permitted (needs CAP_NET_ADMIN)".to_string(),
        e => format!("TCP_REPAIR: {e}"),
    })?;
    let mut c = TcpConn { socket: Some(base), ..TcpConn::default() };
    let negotiated = repair::negotiated(copy).map_err(err("TCP_INFO"))?;
    c.options = u32::from(negotiated.options);
    c.snd_wscale = u32::from(negotiated.snd_wscale);
    c.rcv_wscale = u32::from(negotiated.rcv_wscale);
    c.mss = getsockopt(copy, sockopt::TcpMaxSeg).map_err(err("TCP_MAXSEG"))?;
    c.timestamp = repair::timestamp(copy).map_err(err("TCP_TIMESTAMP"))?;
    let w = repair::window(copy).map_err(err("TCP_REPAIR_WINDOW"))?;
    (c.snd_wl1, c.snd_wnd, c.max_window, c.rcv_wnd, c.rcv_wup) =
        (w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup);

    repair::select_queue(copy, Queue::Recv).map_err(err("TCP_REPAIR_QUEUE"))?;
    c.rcv_seq = repair::queue_seq(copy).map_err(err("TCP_QUEUE_SEQ"))?;
    let inq = repair::inq(copy).map_err(err("SIOCINQ"))?;
    c.recv_queue = peek(copy, inq).map_err(|e| format!("reading the receive queue: {e}"))?;

    repair::select_queue(copy, Queue::Send).map_err(err("TCP_REPAIR_QUEUE"))?;
    c.snd_seq = repair::queue_seq(copy).map_err(err("TCP_QUEUE_SEQ"))?;
    let outq = repair::outq(copy).map_err(err("SIOCOUTQ"))?;
    c.unsent = repair::outq_unsent(copy).map_err(err("SIOCOUTQNSD"))?;
    c.send_queue = peek(copy, outq).map_err(|e| format!("reading the send queue: {e}"))?;
    repair::select_queue(copy, Queue::None).map_err(err("TCP_REPAIR_QUEUE"))?;
    if c.unsent as usize > c.send_queue.len() {
        return Err(format!("{} unsent bytes in a send queue of {}", c.unsent, c.send_queue.len()));
    }
    Ok(c)
}

/// Exactly `len` bytes of the selected queue, with MSG_PEEK.
fn peek(sock: &OwnedFd, len: u32) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len as usize];
    if len == 0 {
        return Ok(buf);
    }
    let n = socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT)?;
    if n != buf.len() {
        return Err(Errno::EIO);
    }
    Ok(buf)
}

/// Leave repair mode without a window probe: after a dump that lets the
/// tree run on, or one that failed. Leaving clears SO_REUSEADDR, which is
/// set back to `reuseaddr`.
pub fn leave_quietly(sock: &OwnedFd, reuseaddr: bool) -> Result<(), Errno> {
    repair::set_repair(sock, repair::REPAIR_OFF_NO_PROBE)?;
    setsockopt(sock, sockopt::ReuseAddr, &reuseaddr)
}

/// Leave repair mode, sending a window probe so the peer resumes at once;
/// SO_REUSEADDR as [`leave_quietly`].
pub fn leave(sock: &OwnedFd, reuseaddr: bool) -> Result<(), Errno> {
    repair::set_repair(sock, 0)?;
    setsockopt(sock, sockopt::ReuseAddr, &reuseaddr)
}

/// Re-create the connection, in repair mode (see the module docs).
pub fn restore(c: &TcpConn) -> Result<OwnedFd, String> {
    let s = c.socket.as_ref().ok_or("no addresses")?;
    let addr = |a: &Option<stasis_image::records::InetAddr>| -> Result<SocketAddr, String> {
        a.as_ref().and_then(|a| a.to_socket_addr()).ok_or_else(|| "malformed address".to_string())
    };
    let (local, peer) = (addr(&s.local)?, addr(&s.peer)?);
    let mut options = s.clone();
    // Bound and connected below, in repair mode; not listening.
    (options.local, options.peer, options.backlog) = (None, None, 0);
    let sock = super::socket::new_tcp(&options)?;
    let err = |what: &'static str| move |e: Errno| format!("{what}: {e}");
    repair::set_repair(&sock, 1).map_err(|e| format!("TCP_REPAIR: {e}"))?;
    socket::bind(sock.as_raw_fd(), &SockaddrStorage::from(local)).map_err(|e| format!("cannot bind {local}: {e}"))?;
    let sent = c.send_queue.len() - c.unsent as usize;
    repair::select_queue(&sock, Queue::Send).map_err(err("TCP_REPAIR_QUEUE"))?;
    repair::set_queue_seq(&sock, c.snd_seq.wrapping_sub(c.send_queue.len() as u32)).map_err(err("TCP_QUEUE_SEQ"))?;
    repair::select_queue(&sock, Queue::Recv).map_err(err("TCP_REPAIR_QUEUE"))?;
    repair::set_queue_seq(&sock, c.rcv_seq.wrapping_sub(c.recv_queue.len() as u32)).map_err(err("TCP_QUEUE_SEQ"))?;
    socket::connect(sock.as_raw_fd(), &SockaddrStorage::from(peer))
        .map_err(|e| format!("connect to {peer} in repair mode: {e}"))?;

    let mut opts = vec![(repair::OPT_MSS, c.mss)];
    let o = c.options as u8;
    if o & repair::TCPI_OPT_WSCALE != 0 {
        opts.push((repair::OPT_WINDOW, c.snd_wscale | (c.rcv_wscale << 16)));
    }
    if o & repair::TCPI_OPT_SACK != 0 {
        opts.push((repair::OPT_SACK_PERM, 0));
    }
    if o & repair::TCPI_OPT_TIMESTAMPS != 0 {
        opts.push((repair::OPT_TIMESTAMP, 0));
    }
    repair::set_repair_options(&sock, &opts).map_err(err("TCP_REPAIR_OPTIONS"))?;
    if o & repair::TCPI_OPT_TIMESTAMPS != 0 {
        repair::set_timestamp(&sock, c.timestamp).map_err(err("TCP_TIMESTAMP"))?;
    }

    repair::select_queue(&sock, Queue::Recv).map_err(err("TCP_REPAIR_QUEUE"))?;
    send_all(&sock, &c.recv_queue).map_err(|e| format!("restoring the receive queue: {e}"))?;
    repair::select_queue(&sock, Queue::Send).map_err(err("TCP_REPAIR_QUEUE"))?;
    send_all(&sock, &c.send_queue[..sent]).map_err(|e| format!("restoring the send queue: {e}"))?;
    repair::select_queue(&sock, Queue::None).map_err(err("TCP_REPAIR_QUEUE"))?;
    let w = Window {
        snd_wl1: c.snd_wl1,
        snd_wnd: c.snd_wnd,
        max_window: c.max_window,
        rcv_wnd: c.rcv_wnd,
        rcv_wup: c.rcv_wup,
    };
    repair::set_window(&sock, &w).map_err(err("TCP_REPAIR_WINDOW"))?;
    if c.unsent > 0 {
        // Never sent: ordinary data, queued behind the rest.
        repair::set_repair(&sock, repair::REPAIR_OFF_NO_PROBE).map_err(err("TCP_REPAIR"))?;
        let r = send_all(&sock, &c.send_queue[sent..]);
        repair::set_repair(&sock, 1).map_err(err("TCP_REPAIR"))?;
        r.map_err(|e| format!("restoring the unsent data: {e}"))?;
    }
    Ok(sock)
}

/// Write all of `data` (to the selected queue, in repair mode).
fn send_all(sock: &OwnedFd, data: &[u8]) -> Result<(), Errno> {
    let mut at = 0;
    while at < data.len() {
        at += socket::send(sock.as_raw_fd(), &data[at..], MsgFlags::MSG_DONTWAIT)?;
    }
    Ok(())
}

/// The local and peer addresses of a connected socket.
pub fn addresses(sock: &OwnedFd) -> Result<(SocketAddr, SocketAddr), String> {
    let get = |sa: Result<SockaddrStorage, Errno>, what: &str| -> Result<SocketAddr, String> {
        super::socket::socket_addr(&sa.map_err(|e| format!("{what}: {e}"))?).ok_or_else(|| format!("{what}: not IP"))
    };
    Ok((
        get(socket::getsockname(sock.as_raw_fd()), "getsockname")?,
        get(socket::getpeername(sock.as_raw_fd()), "getpeername")?,
    ))
}

/// The name of a dump's network lock (its table is `stasis_<name>`).
pub fn lock_name(root: i32) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{root}_{}", now.as_millis())
}

/// The connection of a record, as the network lock names it.
pub fn lock_conn(c: &TcpConn) -> Option<crate::netlock::Conn> {
    let s = c.socket.as_ref()?;
    Some(crate::netlock::Conn {
        local: s.local.as_ref()?.to_socket_addr()?,
        remote: s.peer.as_ref()?.to_socket_addr()?,
    })
}
