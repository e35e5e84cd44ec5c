//! TCP connections, established or closing, through TCP_REPAIR (as CRIU's
//! soccr).
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
//!
//! A closing connection (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK,
//! CLOSING) is dumped the same way, with its state; its FINs take sequence
//! numbers but no bytes. It is rebuilt ESTABLISHED, and its FINs put back
//! when the tree is let go ([`Repaired::let_go`]): this side's with
//! shutdown(2) in repair mode, the peer's (and the peer's acknowledgement
//! of ours) as segments from the peer's address on a raw socket.
//!
//! A connection being opened (SYN_SENT) keeps only the sequence number
//! after its SYN: restore binds the socket and sets it in repair mode, and
//! when the tree is let go calls connect(2) with repair mode off, so the
//! same SYN is sent again (as CRIU does).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use stasis_image::records::{InetSocket, TcpConn};
use stasis_sys::nix::errno::Errno;
use stasis_sys::nix::libc;
use stasis_sys::nix::sys::socket::{self, getsockopt, setsockopt, sockopt, MsgFlags, SockaddrStorage};
use stasis_sys::tcp::{self as repair, Queue, Window};
use stasis_sys::Pid;

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
    c.state = u32::from(negotiated.state);
    if !matches!(
        negotiated.state,
        repair::ESTABLISHED
            | repair::SYN_SENT
            | repair::FIN_WAIT1
            | repair::FIN_WAIT2
            | repair::CLOSE_WAIT
            | repair::LAST_ACK
            | repair::CLOSING
    ) {
        return Err(format!("TCP state {} is not a connection's", negotiated.state));
    }
    if negotiated.state == repair::SYN_SENT {
        return dump_syn_sent(copy, c);
    }
    let fin_sent = fin_sent(negotiated.state);
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
    let mut outq = repair::outq(copy).map_err(err("SIOCOUTQ"))?;
    c.unsent = repair::outq_unsent(copy).map_err(err("SIOCOUTQNSD"))?;
    if fin_sent {
        // The FIN takes a sequence number but no byte of the queue: it is
        // in the counts until acknowledged (and in the unsent one until
        // sent, behind every unsent byte).
        outq = outq.saturating_sub(1);
        c.unsent = c.unsent.saturating_sub(1);
    }
    c.send_queue = peek(copy, outq).map_err(|e| format!("reading the send queue: {e}"))?;
    repair::select_queue(copy, Queue::None).map_err(err("TCP_REPAIR_QUEUE"))?;
    if c.unsent as usize > c.send_queue.len() {
        return Err(format!("{} unsent bytes in a send queue of {}", c.unsent, c.send_queue.len()));
    }
    Ok(c)
}

/// A connection being opened (SYN_SENT, no answer yet): only the sequence
/// number after its SYN, so that the SYN sent again at restore is the same
/// one and a peer that saw the first answers it.
fn dump_syn_sent(copy: &OwnedFd, mut c: TcpConn) -> Result<TcpConn, String> {
    let err = |what: &'static str| move |e: Errno| format!("{what}: {e}");
    repair::select_queue(copy, Queue::Send).map_err(err("TCP_REPAIR_QUEUE"))?;
    c.snd_seq = repair::queue_seq(copy).map_err(err("TCP_QUEUE_SEQ"))?;
    // Data sent with the SYN (TCP Fast Open) would be in the queue.
    let mut byte = [0u8; 1];
    let data = socket::recv(copy.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT);
    repair::select_queue(copy, Queue::None).map_err(err("TCP_REPAIR_QUEUE"))?;
    match data {
        Ok(0) | Err(Errno::EAGAIN) => Ok(c),
        Ok(_) => Err("connecting with data in its SYN (TCP Fast Open): not supported".into()),
        Err(e) => Err(format!("reading the send queue: {e}")),
    }
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
    let (local, peer) = (addr(&s.local)?, addr(&s.peer)?);
    let mut options = s.clone();
    // Bound and connected below, in repair mode; not listening.
    (options.local, options.peer, options.backlog) = (None, None, 0);
    let sock = super::socket::new_tcp(&options)?;
    let err = |what: &'static str| move |e: Errno| format!("{what}: {e}");
    repair::set_repair(&sock, 1).map_err(|e| format!("TCP_REPAIR: {e}"))?;
    socket::bind(sock.as_raw_fd(), &SockaddrStorage::from(local)).map_err(|e| format!("cannot bind {local}: {e}"))?;
    if state(c) == repair::SYN_SENT {
        // The SYN's own sequence number; connect(2) when the tree is let go.
        repair::select_queue(&sock, Queue::Send).map_err(err("TCP_REPAIR_QUEUE"))?;
        repair::set_queue_seq(&sock, c.snd_seq.wrapping_sub(1)).map_err(err("TCP_QUEUE_SEQ"))?;
        repair::select_queue(&sock, Queue::None).map_err(err("TCP_REPAIR_QUEUE"))?;
        return Ok(sock);
    }
    let sent = c.send_queue.len() - c.unsent as usize;
    // Made ESTABLISHED, without the FINs: they come once the tree is whole
    // (`Repaired::let_go`).
    let st = state(c);
    let (fin_sent, fin_received) = (u32::from(fin_sent(st)), u32::from(fin_received(st)));
    let (snd_seq, rcv_seq) = (c.snd_seq.wrapping_sub(fin_sent), c.rcv_seq.wrapping_sub(fin_received));
    repair::select_queue(&sock, Queue::Send).map_err(err("TCP_REPAIR_QUEUE"))?;
    repair::set_queue_seq(&sock, snd_seq.wrapping_sub(c.send_queue.len() as u32)).map_err(err("TCP_QUEUE_SEQ"))?;
    repair::select_queue(&sock, Queue::Recv).map_err(err("TCP_REPAIR_QUEUE"))?;
    repair::set_queue_seq(&sock, rcv_seq.wrapping_sub(c.recv_queue.len() as u32)).map_err(err("TCP_QUEUE_SEQ"))?;
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

    // The buffers take the queues whole (the kernel counts them in its own
    // units, which need not come to what the original's held), then are
    // set back as they were.
    let (recv, send) = (c.recv_queue.len(), c.send_queue.len());
    let room = super::sockopt::Buffers::raise(&sock, recv * 2 + (64 << 10), send * 2 + (64 << 10))
        .map_err(err("making room for the queues"))?;
    repair::select_queue(&sock, Queue::Recv).map_err(err("TCP_REPAIR_QUEUE"))?;
    send_all(&sock, &c.recv_queue).map_err(|e| format!("restoring the receive queue: {e}"))?;
    repair::select_queue(&sock, Queue::Send).map_err(err("TCP_REPAIR_QUEUE"))?;
    send_all(&sock, &c.send_queue[..sent]).map_err(|e| format!("restoring the send queue: {e}"))?;
    repair::select_queue(&sock, Queue::None).map_err(err("TCP_REPAIR_QUEUE"))?;
    let w = Window {
        snd_wl1: c.snd_wl1,
        snd_wnd: c.snd_wnd,
        max_window: c.max_window,
        // The window's left edge no later than the end of what was
        // received: before the peer's FIN.
        rcv_wnd: c.rcv_wnd.wrapping_add(fin_received),
        rcv_wup: c.rcv_wup.wrapping_sub(fin_received),
    };
    repair::set_window(&sock, &w).map_err(err("TCP_REPAIR_WINDOW"))?;
    if c.unsent > 0 {
        // Never sent: ordinary data, queued behind the rest.
        repair::set_repair(&sock, repair::REPAIR_OFF_NO_PROBE).map_err(err("TCP_REPAIR"))?;
        let r = send_all(&sock, &c.send_queue[sent..]);
        repair::set_repair(&sock, 1).map_err(err("TCP_REPAIR"))?;
        r.map_err(|e| format!("restoring the unsent data: {e}"))?;
    }
    room.set_back(&sock).map_err(err("setting the buffer sizes back"))?;
    Ok(sock)
}

/// Bind `sock` to `addr` in repair mode, which forces address reuse (over a
/// connection lingering in TIME_WAIT there); then out of it, with
/// SO_REUSEADDR set back to `reuseaddr`.
pub fn bind_forced(sock: &OwnedFd, addr: SocketAddr, reuseaddr: bool) -> Result<(), Errno> {
    repair::set_repair(sock, 1)?;
    let r = socket::bind(sock.as_raw_fd(), &SockaddrStorage::from(addr));
    leave_quietly(sock, reuseaddr)?;
    r
}

/// The state of a connection record (images before the field: ESTABLISHED).
fn state(c: &TcpConn) -> u8 {
    match c.state {
        0 => repair::ESTABLISHED,
        s => s as u8,
    }
}

/// This side has shut down for writing: its FIN is queued, sent, or acknowledged.
fn fin_sent(state: u8) -> bool {
    matches!(state, repair::FIN_WAIT1 | repair::FIN_WAIT2 | repair::LAST_ACK | repair::CLOSING)
}

/// The peer's FIN came.
fn fin_received(state: u8) -> bool {
    matches!(state, repair::CLOSE_WAIT | repair::LAST_ACK | repair::CLOSING)
}

/// A restored connection, in repair mode until the tree is let go.
#[derive(Debug)]
pub struct Repaired {
    sock: OwnedFd,
    /// SO_REUSEADDR, which leaving repair mode clears.
    reuseaddr: bool,
    /// What is left to make the connection's closing state again.
    closing: Option<Closing>,
    /// Where a connection being opened connects to.
    connect: Option<SocketAddr>,
}

/// A connection's closing state, made once every socket of the tree
/// exists, so the acknowledgements it sends find their socket (a peer in
/// the tree) or the peer itself, not a host that answers with RST.
#[derive(Debug)]
struct Closing {
    state: u8,
    local: SocketAddr,
    peer: SocketAddr,
    /// The peer's next sequence number, before its FIN.
    rcv_nxt: u32,
    /// The first byte not acknowledged, and after this side's FIN.
    snd_una: u32,
    snd_end: u32,
    /// The peer's window, as its segments carry it.
    window: u16,
}

impl Repaired {
    /// `sock`, made by [`restore`] from `c`.
    pub fn new(sock: OwnedFd, c: &TcpConn) -> Result<Repaired, String> {
        let s = c.socket.as_ref().ok_or("no addresses")?;
        let st = state(c);
        let connect = (st == repair::SYN_SENT).then(|| addr(&s.peer)).transpose()?;
        let closing = if matches!(st, repair::ESTABLISHED | repair::SYN_SENT) {
            None
        } else {
            let snd_data_end = c.snd_seq.wrapping_sub(u32::from(fin_sent(st)));
            let scale = if c.options as u8 & repair::TCPI_OPT_WSCALE != 0 { c.snd_wscale.min(14) } else { 0 };
            Some(Closing {
                state: st,
                // As they go on the wire, which the segments are written for.
                local: wire(addr(&s.local)?),
                peer: wire(addr(&s.peer)?),
                rcv_nxt: c.rcv_seq.wrapping_sub(u32::from(fin_received(st))),
                snd_una: snd_data_end.wrapping_sub(c.send_queue.len() as u32),
                snd_end: c.snd_seq,
                window: (c.snd_wnd >> scale).min(u32::from(u16::MAX)) as u16,
            })
        };
        Ok(Repaired { sock, reuseaddr: s.reuseaddr, closing, connect })
    }

    /// Make the closing state (this side's FIN, with shutdown(2) in repair
    /// mode; the peer's FIN and its acknowledgement of ours, as segments
    /// from the peer's address), then leave repair mode with a window
    /// probe. The network lock is gone by then.
    pub fn let_go(&self) -> Result<(), String> {
        if let Some(peer) = self.connect {
            return self.connect(peer);
        }
        if let Some(c) = &self.closing {
            c.make(&self.sock)?;
        }
        leave(&self.sock, self.reuseaddr).map_err(|e| format!("TCP_REPAIR off: {e}"))
    }
}

impl Repaired {
    /// Open the connection again: out of repair mode, connect(2) without
    /// waiting (the process, stopped until the tree is let go, may be in a
    /// blocking connect it goes back to), which sends the SYN with the
    /// sequence number set at restore.
    fn connect(&self, peer: SocketAddr) -> Result<(), String> {
        use stasis_sys::nix::fcntl::{fcntl, FcntlArg, OFlag};
        let shown = || format!("connection to {peer}");
        leave_quietly(&self.sock, self.reuseaddr).map_err(|e| format!("{}: TCP_REPAIR off: {e}", shown()))?;
        let flags = fcntl(&self.sock, FcntlArg::F_GETFL).map_err(|e| format!("F_GETFL: {e}"))?;
        let flags = OFlag::from_bits_truncate(flags);
        fcntl(&self.sock, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(|e| format!("F_SETFL: {e}"))?;
        let r = socket::connect(self.sock.as_raw_fd(), &SockaddrStorage::from(peer));
        fcntl(&self.sock, FcntlArg::F_SETFL(flags)).map_err(|e| format!("F_SETFL: {e}"))?;
        match r {
            Ok(()) | Err(Errno::EINPROGRESS) => Ok(()),
            Err(e) => Err(format!("{}: connect: {e}", shown())),
        }
    }
}

impl Closing {
    fn make(&self, sock: &OwnedFd) -> Result<(), String> {
        let shutdown = |q: Queue| -> Result<(), String> {
            // In repair mode the send queue selected marks the FIN sent
            // without sending it; with none selected it is sent (or queued
            // behind unsent bytes), as shutdown(2) would.
            repair::select_queue(sock, q).map_err(|e| format!("TCP_REPAIR_QUEUE: {e}"))?;
            let r = socket::shutdown(sock.as_raw_fd(), socket::Shutdown::Write);
            repair::select_queue(sock, Queue::None).map_err(|e| format!("TCP_REPAIR_QUEUE: {e}"))?;
            r.map_err(|e| format!("shutdown: {e}"))
        };
        let segment = |seq: u32, ack: u32, flags: u8, what: &str| {
            repair::send_segment(self.peer, self.local, seq, ack, flags, self.window)
                .map_err(|e| format!("sending the peer's {what} from {} (raw socket): {e}", self.peer))
        };
        let peer_fin = || segment(self.rcv_nxt, self.snd_una, repair::FLAG_FIN | repair::FLAG_ACK, "FIN");
        match self.state {
            repair::FIN_WAIT1 => shutdown(Queue::None)?,
            repair::FIN_WAIT2 => {
                shutdown(Queue::Send)?;
                Self::wait_for(sock, repair::FIN_WAIT1)?;
                segment(self.rcv_nxt, self.snd_end, repair::FLAG_ACK, "acknowledgement of the FIN")?;
            }
            repair::CLOSE_WAIT => peer_fin()?,
            repair::LAST_ACK => {
                peer_fin()?;
                Self::wait_for(sock, repair::CLOSE_WAIT)?;
                shutdown(Queue::None)?;
            }
            repair::CLOSING => {
                shutdown(Queue::None)?;
                Self::wait_for(sock, repair::FIN_WAIT1)?;
                peer_fin()?;
            }
            st => return Err(format!("TCP state {st} cannot be restored")),
        }
        Self::wait_for(sock, self.state).map_err(|e| format!("connection {} - {}: {e}", self.local, self.peer))
    }

    /// Wait until `sock` is in `state` (a segment sent to it is taken in
    /// by the network stack, perhaps after sendto returned).
    fn wait_for(sock: &OwnedFd, state: u8) -> Result<(), String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let now = repair::negotiated(sock).map_err(|e| format!("TCP_INFO: {e}"))?.state;
            if now == state {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("in TCP state {now}, not {state}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// An address of a connection record.
fn addr(a: &Option<stasis_image::records::InetAddr>) -> Result<SocketAddr, String> {
    a.as_ref().and_then(|a| a.to_socket_addr()).ok_or_else(|| "malformed address".to_string())
}

/// An address as it goes on the wire (an IPv4-mapped one is IPv4).
fn wire(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(crate::netlock::wire(a.ip()), a.port())
}

/// Write all of `data` (to the selected queue, in repair mode).
fn send_all(sock: &OwnedFd, data: &[u8]) -> Result<(), Errno> {
    let mut at = 0;
    while at < data.len() {
        at += socket::send(sock.as_raw_fd(), &data[at..], MsgFlags::MSG_DONTWAIT)?;
    }
    Ok(())
}

/// The local and peer addresses of a connected or connecting socket (the
/// socket with inode `ino` in the network namespace of `pid`).
pub fn addresses(pid: Pid, ino: u64, sock: &OwnedFd) -> Result<(SocketAddr, SocketAddr), String> {
    let get = |sa: Result<SockaddrStorage, Errno>, what: &str| -> Result<SocketAddr, String> {
        super::socket::socket_addr(&sa.map_err(|e| format!("{what}: {e}"))?).ok_or_else(|| format!("{what}: not IP"))
    };
    let local = get(socket::getsockname(sock.as_raw_fd()), "getsockname")?;
    let peer = match socket::getpeername(sock.as_raw_fd()) {
        // Connecting (SYN_SENT): the kernel does not tell it by getpeername.
        Err(Errno::ENOTCONN) => {
            let family = if local.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
            super::socket::syn_sent_peer(pid, family, ino)?
        }
        sa => get(sa, "getpeername")?,
    };
    Ok((local, peer))
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
