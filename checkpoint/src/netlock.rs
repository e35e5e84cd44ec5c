//! The network lock: while the established TCP connections of a
//! checkpointed tree have no socket (between dump and restore), the kernel
//! would answer the peer's retransmits with RST, and the peer would give the
//! connection up. A lock drops the incoming packets of each such connection
//! instead: the peer sees a silent path, keeps retransmitting, and the
//! restored socket answers once the lock is gone.
//!
//! A lock is an nftables table of its own in the caller's network namespace,
//! `inet stasis_<name>`, with one base chain holding one drop rule per
//! connection; `nft list ruleset` shows it as
//!
//! ```text
//! table inet stasis_<name> {
//!     chain input {
//!         type filter hook input priority raw; policy accept;
//!         meta nfproto ipv4 meta l4proto tcp ip saddr R ip daddr L tcp sport RP tcp dport LP drop
//!         meta nfproto ipv6 meta l4proto tcp ip6 saddr R ip6 daddr L tcp sport RP tcp dport LP drop
//!     }
//! }
//! ```
//!
//! (L, LP: the local address and port of the connection; R, RP: the peer's;
//! priority raw is -300.) The table stays in the kernel until [`unlock`], so
//! a dump can lock and exit, and a restore minutes later unlock.
//!
//! The tables are written and read over netlink (NETLINK_NETFILTER) by the
//! small [`nfnl`] module below: one nf_tables batch per call, so a lock,
//! however many connections it holds, is put in place, replaced or removed
//! in one transaction. No `nft` binary and no C library are involved; the
//! socket calls are nix's safe ones.

use std::ffi::{CStr, CString};
use std::net::{IpAddr, SocketAddr};

use stasis_sys::nix::libc;

use nfnl::Expr;

/// The prefix of the name of every lock's table.
pub const TABLE_PREFIX: &str = "stasis_";

/// The base chain of a lock's table.
const CHAIN: &CStr = c"input";

/// The priority of the chain on the input hook: that of the `raw` tables,
/// ahead of `filter` (0) and of every ordinary input chain, so nothing can
/// accept the packet first.
pub const PRIORITY: i32 = -300;

/// One TCP connection to lock, as seen from the side being checkpointed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conn {
    /// The connection's address on this host.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
}

/// The nftables table of the lock called `name`: `stasis_<name>`, in the
/// `inet` family.
pub fn table_name(name: &str) -> String {
    format!("{TABLE_PREFIX}{name}")
}

/// Drop incoming packets of these connections until `unlock(name)`.
/// Replaces a lock of the same name (atomically: no packet of a connection
/// in both the old and the new lock gets through in between).
pub fn lock(name: &str, conns: &[Conn]) -> Result<(), String> {
    let table = table_cname(name)?;
    let shown = table_name(name);
    let rules = conns.iter().map(|c| drop_rule(c).map(|r| (c, r))).collect::<Result<Vec<_>, _>>()?;

    let mut batch = nfnl::Batch::new(format!("add table {shown}"));
    // Add (a no-op when it exists), delete, add again: this replaces a lock
    // of the same name in the one transaction, and needs no lookup first.
    batch.add_table(&table, format!("add table {shown}"));
    batch.del_table(&table, format!("delete the old table {shown}"));
    batch.add_table(&table, format!("add table {shown}"));
    batch.add_base_chain(
        &table,
        CHAIN,
        libc::NF_INET_LOCAL_IN as u32,
        PRIORITY,
        libc::NF_ACCEPT as u32,
        format!("add chain input to table {shown}"),
    );
    for (conn, exprs) in &rules {
        batch.add_rule(
            &table,
            CHAIN,
            exprs,
            format!("add the rule for {} -> {} to table {shown}", conn.remote, conn.local),
        );
    }
    nfnl::Socket::open()?.apply(batch)
}

/// Remove the lock; Ok if there was none.
pub fn unlock(name: &str) -> Result<(), String> {
    let table = table_cname(name)?;
    let shown = table_name(name);
    let mut batch = nfnl::Batch::new(format!("delete table {shown}"));
    // Adding it first makes the delete succeed when there is no lock.
    batch.add_table(&table, format!("delete table {shown}"));
    batch.del_table(&table, format!("delete table {shown}"));
    nfnl::Socket::open()?.apply(batch)
}

/// Whether a lock of this name exists (for tests and `stasis inspect`).
pub fn is_locked(name: &str) -> Result<bool, String> {
    let table = table_cname(name)?;
    let found = nfnl::Socket::open()?
        .inet_tables(Some(&table))
        .map_err(|e| format!("nftables: cannot look up table {}: {e}", table_name(name)))?;
    Ok(!found.is_empty())
}

/// The names of the locks in the caller's network namespace (its `inet`
/// tables called `stasis_*`, less the prefix).
pub fn locks() -> Result<Vec<String>, String> {
    let tables =
        nfnl::Socket::open()?.inet_tables(None).map_err(|e| format!("nftables: cannot list the inet tables: {e}"))?;
    Ok(tables.into_iter().filter_map(|t| t.strip_prefix(TABLE_PREFIX).map(str::to_string)).collect())
}

/// The table's name as netlink wants it, checked: no NUL inside, and
/// NFT_TABLE_MAXNAMELEN (256 bytes with the NUL) at most.
fn table_cname(name: &str) -> Result<CString, String> {
    let table = table_name(name);
    if table.len() > 255 {
        return Err(format!("nftables: lock name too long ({} bytes): {name:?}", name.len()));
    }
    CString::new(table).map_err(|_| format!("nftables: lock name with a NUL byte: {name:?}"))
}

/// An address as it goes on the wire: an IPv4-mapped IPv6 address (an
/// AF_INET6 socket talking IPv4) is IPv4.
pub(crate) fn wire(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The expressions of the rule dropping the packets that come from
/// `conn.remote` to `conn.local`, those nft makes of
/// `meta nfproto F meta l4proto tcp ip saddr R ip daddr L tcp sport RP tcp dport LP drop`:
/// each match loads a field into register 1 and compares it.
fn drop_rule(conn: &Conn) -> Result<Vec<Expr>, String> {
    // (nfproto, offsets of saddr and daddr in the network header, R, L)
    let (nfproto, saddr_at, daddr_at, remote, local) = match (wire(conn.remote.ip()), wire(conn.local.ip())) {
        (IpAddr::V4(r), IpAddr::V4(l)) => (libc::NFPROTO_IPV4, 12, 16, r.octets().to_vec(), l.octets().to_vec()),
        (IpAddr::V6(r), IpAddr::V6(l)) => (libc::NFPROTO_IPV6, 8, 24, r.octets().to_vec(), l.octets().to_vec()),
        _ => {
            return Err(format!(
                "nftables: connection {} - {}: the addresses are of different families",
                conn.local, conn.remote
            ))
        }
    };
    let network = libc::NFT_PAYLOAD_NETWORK_HEADER as u32;
    let transport = libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32;
    let addr_len = remote.len() as u32;
    Ok(vec![
        Expr::Meta { key: libc::NFT_META_NFPROTO as u32 },
        Expr::CmpEq(vec![nfproto as u8]),
        Expr::Meta { key: libc::NFT_META_L4PROTO as u32 },
        Expr::CmpEq(vec![libc::IPPROTO_TCP as u8]),
        Expr::Payload { base: network, offset: saddr_at, len: addr_len },
        Expr::CmpEq(remote),
        Expr::Payload { base: network, offset: daddr_at, len: addr_len },
        Expr::CmpEq(local),
        Expr::Payload { base: transport, offset: 0, len: 2 },
        Expr::CmpEq(conn.remote.port().to_be_bytes().to_vec()),
        Expr::Payload { base: transport, offset: 2, len: 2 },
        Expr::CmpEq(conn.local.port().to_be_bytes().to_vec()),
        Expr::Drop,
    ])
}

/// Just enough nfnetlink for the lock: nf_tables batches of
/// NEWTABLE/DELTABLE/NEWCHAIN/NEWRULE (expressions meta, payload, cmp and an
/// immediate verdict), and NFT_MSG_GETTABLE. Messages are plain bytes
/// (struct nlmsghdr, struct nfgenmsg, then netlink attributes; nf_tables
/// wants its integers big-endian), sent through nix's safe socket calls.
mod nfnl {
    use std::ffi::CStr;
    use std::os::fd::{AsRawFd, OwnedFd};

    use stasis_sys::nix::errno::Errno;
    use stasis_sys::nix::libc;
    use stasis_sys::nix::sys::socket::{
        recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
    };
    use stasis_sys::nix::sys::time::TimeVal;

    // Attribute numbers (enums in linux/netfilter/nf_tables.h; libc lacks them).
    const NFTA_TABLE_NAME: u16 = 1;
    const NFTA_TABLE_FLAGS: u16 = 2;
    const NFTA_CHAIN_TABLE: u16 = 1;
    const NFTA_CHAIN_NAME: u16 = 3;
    const NFTA_CHAIN_HOOK: u16 = 4;
    const NFTA_CHAIN_POLICY: u16 = 5;
    const NFTA_CHAIN_TYPE: u16 = 7;
    const NFTA_HOOK_HOOKNUM: u16 = 1;
    const NFTA_HOOK_PRIORITY: u16 = 2;
    const NFTA_RULE_TABLE: u16 = 1;
    const NFTA_RULE_CHAIN: u16 = 2;
    const NFTA_RULE_EXPRESSIONS: u16 = 4;
    const NFTA_LIST_ELEM: u16 = 1;
    const NFTA_EXPR_NAME: u16 = 1;
    const NFTA_EXPR_DATA: u16 = 2;
    const NFTA_META_DREG: u16 = 1;
    const NFTA_META_KEY: u16 = 2;
    const NFTA_CMP_SREG: u16 = 1;
    const NFTA_CMP_OP: u16 = 2;
    const NFTA_CMP_DATA: u16 = 3;
    const NFTA_PAYLOAD_DREG: u16 = 1;
    const NFTA_PAYLOAD_BASE: u16 = 2;
    const NFTA_PAYLOAD_OFFSET: u16 = 3;
    const NFTA_PAYLOAD_LEN: u16 = 4;
    const NFTA_IMMEDIATE_DREG: u16 = 1;
    const NFTA_IMMEDIATE_DATA: u16 = 2;
    const NFTA_DATA_VALUE: u16 = 1;
    const NFTA_DATA_VERDICT: u16 = 2;
    const NFTA_VERDICT_CODE: u16 = 1;
    const NLA_F_NESTED: u16 = 1 << 15;
    const NLA_TYPE_MASK: u16 = !(3 << 14);

    const NLMSG_HDRLEN: usize = 16;
    /// struct nfgenmsg: family, version, res_id.
    const NFGEN_LEN: usize = 4;

    /// The nlmsg_type of an nf_tables message.
    fn msg_type(cmd: i32) -> u16 {
        ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | cmd as u16
    }

    /// One expression of a rule; every one works on register 1.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(super) enum Expr {
        /// Load the meta key (NFT_META_*).
        Meta { key: u32 },
        /// Load `len` bytes at `offset` of the header `base` (NFT_PAYLOAD_*).
        Payload { base: u32, offset: u32, len: u32 },
        /// Go on with the rule only if the register holds these bytes.
        CmpEq(Vec<u8>),
        /// Drop the packet.
        Drop,
    }

    /// A netlink attribute.
    fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
        buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(data);
        buf.resize(buf.len().next_multiple_of(4), 0);
    }

    fn attr_be32(buf: &mut Vec<u8>, ty: u16, value: u32) {
        attr(buf, ty, &value.to_be_bytes());
    }

    /// A nested attribute holding what `inner` writes.
    fn nest(buf: &mut Vec<u8>, ty: u16, inner: impl FnOnce(&mut Vec<u8>)) {
        let at = buf.len();
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        inner(buf);
        let len = (buf.len() - at) as u16;
        buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn expr(buf: &mut Vec<u8>, e: &Expr) {
        let reg1 = libc::NFT_REG_1 as u32;
        let name: &CStr = match e {
            Expr::Meta { .. } => c"meta",
            Expr::Payload { .. } => c"payload",
            Expr::CmpEq(_) => c"cmp",
            Expr::Drop => c"immediate",
        };
        nest(buf, NFTA_LIST_ELEM, |buf| {
            attr(buf, NFTA_EXPR_NAME, name.to_bytes_with_nul());
            nest(buf, NFTA_EXPR_DATA, |buf| match e {
                Expr::Meta { key } => {
                    attr_be32(buf, NFTA_META_DREG, reg1);
                    attr_be32(buf, NFTA_META_KEY, *key);
                }
                Expr::Payload { base, offset, len } => {
                    attr_be32(buf, NFTA_PAYLOAD_DREG, reg1);
                    attr_be32(buf, NFTA_PAYLOAD_BASE, *base);
                    attr_be32(buf, NFTA_PAYLOAD_OFFSET, *offset);
                    attr_be32(buf, NFTA_PAYLOAD_LEN, *len);
                }
                Expr::CmpEq(data) => {
                    attr_be32(buf, NFTA_CMP_SREG, reg1);
                    attr_be32(buf, NFTA_CMP_OP, libc::NFT_CMP_EQ as u32);
                    nest(buf, NFTA_CMP_DATA, |buf| attr(buf, NFTA_DATA_VALUE, data));
                }
                Expr::Drop => {
                    attr_be32(buf, NFTA_IMMEDIATE_DREG, libc::NFT_REG_VERDICT as u32);
                    nest(buf, NFTA_IMMEDIATE_DATA, |buf| {
                        nest(buf, NFTA_DATA_VERDICT, |buf| {
                            attr_be32(buf, NFTA_VERDICT_CODE, libc::NF_DROP as u32);
                        })
                    });
                }
            });
        });
    }

    /// An nf_tables transaction: NFNL_MSG_BATCH_BEGIN, the commands, then
    /// NFNL_MSG_BATCH_END. Each message's seq is its index, which names it
    /// in an error.
    #[derive(Debug)]
    pub(super) struct Batch {
        buf: Vec<u8>,
        /// What each message does, by seq.
        what: Vec<String>,
        /// Where the last command starts.
        last: usize,
    }

    impl Batch {
        /// A batch doing `summary` (for errors the kernel pins on the batch
        /// as a whole, such as EPERM or a failed commit).
        pub(super) fn new(summary: String) -> Self {
            let mut b = Batch { buf: Vec::new(), what: Vec::new(), last: 0 };
            b.batch_marker(libc::NFNL_MSG_BATCH_BEGIN, summary);
            b
        }

        /// NFNL_MSG_BATCH_BEGIN or _END: family AF_UNSPEC, the subsystem
        /// in res_id.
        fn batch_marker(&mut self, ty: i32, what: String) {
            let res_id = libc::NFNL_SUBSYS_NFTABLES as u16;
            self.message(ty as u16, 0, libc::AF_UNSPEC as u8, res_id, what, |_| {});
        }

        /// Append a message: header, nfgenmsg and the attributes `body`
        /// writes.
        fn message(
            &mut self,
            ty: u16,
            flags: i32,
            family: u8,
            res_id: u16,
            what: String,
            body: impl FnOnce(&mut Vec<u8>),
        ) {
            let at = self.buf.len();
            let seq = self.what.len() as u32;
            self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set below
            self.buf.extend_from_slice(&ty.to_ne_bytes());
            self.buf.extend_from_slice(&((libc::NLM_F_REQUEST | flags) as u16).to_ne_bytes());
            self.buf.extend_from_slice(&seq.to_ne_bytes());
            self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
            self.buf.push(family);
            self.buf.push(libc::NFNETLINK_V0 as u8);
            self.buf.extend_from_slice(&res_id.to_be_bytes());
            body(&mut self.buf);
            let len = (self.buf.len() - at) as u32;
            self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
            self.what.push(what);
            self.last = at;
        }

        fn command(&mut self, cmd: i32, flags: i32, what: String, body: impl FnOnce(&mut Vec<u8>)) {
            self.message(msg_type(cmd), flags, libc::NFPROTO_INET as u8, 0, what, body);
        }

        /// Create the inet table, or leave it be when it exists.
        pub(super) fn add_table(&mut self, table: &CStr, what: String) {
            self.command(libc::NFT_MSG_NEWTABLE, libc::NLM_F_CREATE, what, |buf| {
                attr(buf, NFTA_TABLE_NAME, table.to_bytes_with_nul());
                attr_be32(buf, NFTA_TABLE_FLAGS, 0);
            });
        }

        /// Delete the inet table with all it holds.
        pub(super) fn del_table(&mut self, table: &CStr, what: String) {
            self.command(libc::NFT_MSG_DELTABLE, 0, what, |buf| {
                attr(buf, NFTA_TABLE_NAME, table.to_bytes_with_nul());
            });
        }

        /// Add a base chain of type filter on `hook` (NF_INET_*).
        pub(super) fn add_base_chain(
            &mut self,
            table: &CStr,
            chain: &CStr,
            hook: u32,
            priority: i32,
            policy: u32,
            what: String,
        ) {
            self.command(libc::NFT_MSG_NEWCHAIN, libc::NLM_F_CREATE, what, |buf| {
                attr(buf, NFTA_CHAIN_TABLE, table.to_bytes_with_nul());
                attr(buf, NFTA_CHAIN_NAME, chain.to_bytes_with_nul());
                nest(buf, NFTA_CHAIN_HOOK, |buf| {
                    attr_be32(buf, NFTA_HOOK_HOOKNUM, hook);
                    attr(buf, NFTA_HOOK_PRIORITY, &priority.to_be_bytes());
                });
                attr_be32(buf, NFTA_CHAIN_POLICY, policy);
                attr(buf, NFTA_CHAIN_TYPE, c"filter".to_bytes_with_nul());
            });
        }

        /// Append a rule to the chain.
        pub(super) fn add_rule(&mut self, table: &CStr, chain: &CStr, exprs: &[Expr], what: String) {
            self.command(libc::NFT_MSG_NEWRULE, libc::NLM_F_CREATE | libc::NLM_F_APPEND, what, |buf| {
                attr(buf, NFTA_RULE_TABLE, table.to_bytes_with_nul());
                attr(buf, NFTA_RULE_CHAIN, chain.to_bytes_with_nul());
                nest(buf, NFTA_RULE_EXPRESSIONS, |buf| exprs.iter().for_each(|e| expr(buf, e)));
            });
        }

        /// The bytes to send, ending the batch; the last command asks for
        /// an ack, which tells the batch is through. (Errors come without
        /// asking; acks of every command would be many replies for a
        /// large lock, and an ack of the batch end needs Linux 6.10.)
        fn finish(mut self) -> (Vec<u8>, Vec<String>, u32) {
            let acked = self.what.len() as u32 - 1;
            let flags = &mut self.buf[self.last + 6..self.last + 8];
            let set = u16::from_ne_bytes([flags[0], flags[1]]) | libc::NLM_F_ACK as u16;
            flags.copy_from_slice(&set.to_ne_bytes());
            let summary = self.what[0].clone();
            self.batch_marker(libc::NFNL_MSG_BATCH_END, summary);
            (self.buf, self.what, acked)
        }
    }

    /// A NETLINK_NETFILTER socket of the caller's network namespace.
    #[derive(Debug)]
    pub(super) struct Socket(OwnedFd);

    impl Socket {
        pub(super) fn open() -> Result<Self, String> {
            let fd =
                socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkNetFilter)
                    .map_err(|e| format!("nftables: NETLINK_NETFILTER socket: {}", e.desc()))?;
            // The kernel answers during the send; never hang on a lost reply.
            setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(5, 0))
                .map_err(|e| format!("nftables: SO_RCVTIMEO: {}", e.desc()))?;
            Ok(Socket(fd))
        }

        /// Run the batch as one transaction: Ok once the kernel committed it.
        pub(super) fn apply(&mut self, batch: Batch) -> Result<(), String> {
            let (req, what, acked) = batch.finish();
            let summary = &what[0];
            // A large lock is a large message: let the socket send it whole
            // (nft does the same), rather than split the transaction.
            if req.len() > 64 * 1024 {
                setsockopt(&self.0, sockopt::SndBufForce, &(req.len() + 4096))
                    .map_err(|e| format!("nftables: cannot {summary}: SO_SNDBUFFORCE: {}", e.desc()))?;
            }
            send(self.0.as_raw_fd(), &req, MsgFlags::empty())
                .map_err(|e| format!("nftables: cannot {summary}: {}", e.desc()))?;

            // The kernel has processed the batch when send returns: errors
            // (first one kept), then the ack, are queued by now.
            let mut failed: Option<(u32, i32)> = None;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let flags = if failed.is_some() { MsgFlags::MSG_DONTWAIT } else { MsgFlags::empty() };
                let n = match recv(self.0.as_raw_fd(), &mut buf, flags) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) if failed.is_some() => break,
                    Err(Errno::EAGAIN) => return Err(format!("nftables: cannot {summary}: no answer from the kernel")),
                    // Replies lost: only many errors make that many.
                    Err(Errno::ENOBUFS) => {
                        failed.get_or_insert((0, libc::ENOBUFS));
                        continue;
                    }
                    Err(e) => return Err(format!("nftables: cannot {summary}: recv: {}", e.desc())),
                };
                let mut ok = false;
                for Reply { ty, seq, body } in messages(&buf[..n])? {
                    if i32::from(ty) == libc::NLMSG_ERROR {
                        match error_code(body)? {
                            0 => ok |= seq == acked,
                            e => {
                                failed.get_or_insert((seq, e));
                            }
                        }
                    }
                }
                if ok && failed.is_none() {
                    return Ok(());
                }
            }
            let (seq, errno) = failed.unwrap_or_default();
            let doing = what.get(seq as usize).unwrap_or(summary);
            Err(format!("nftables: cannot {doing}: {}", Errno::from_raw(errno).desc()))
        }

        /// The names of the `inet` tables: the one called `name` (none if
        /// it does not exist), or all of them.
        pub(super) fn inet_tables(&mut self, name: Option<&CStr>) -> Result<Vec<String>, String> {
            const SEQ: u32 = 1;
            let flags = match name {
                Some(_) => libc::NLM_F_REQUEST | libc::NLM_F_ACK,
                None => libc::NLM_F_REQUEST | libc::NLM_F_DUMP,
            };
            let mut req = Vec::with_capacity(64);
            req.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set below
            req.extend_from_slice(&msg_type(libc::NFT_MSG_GETTABLE).to_ne_bytes());
            req.extend_from_slice(&(flags as u16).to_ne_bytes());
            req.extend_from_slice(&SEQ.to_ne_bytes());
            req.extend_from_slice(&0u32.to_ne_bytes());
            req.extend_from_slice(&[libc::NFPROTO_INET as u8, libc::NFNETLINK_V0 as u8, 0, 0]);
            if let Some(name) = name {
                attr(&mut req, NFTA_TABLE_NAME, name.to_bytes_with_nul());
            }
            let len = req.len() as u32;
            req[..4].copy_from_slice(&len.to_ne_bytes());
            send(self.0.as_raw_fd(), &req, MsgFlags::empty()).map_err(|e| format!("send: {}", e.desc()))?;

            let mut names = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(format!("recv: {}", e.desc())),
                };
                for Reply { ty, seq, body } in messages(&buf[..n])? {
                    if seq != SEQ {
                        continue;
                    }
                    match i32::from(ty) {
                        libc::NLMSG_DONE => return Ok(names),
                        libc::NLMSG_ERROR => {
                            return match error_code(body)? {
                                0 => Ok(names),
                                e if e == libc::ENOENT && name.is_some() => Ok(Vec::new()),
                                e => Err(Errno::from_raw(e).desc().to_string()),
                            }
                        }
                        _ if ty == msg_type(libc::NFT_MSG_NEWTABLE) => {
                            names.extend(table_name_attr(body.get(NFGEN_LEN..).unwrap_or_default()));
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// One message of a reply.
    struct Reply<'a> {
        ty: u16,
        seq: u32,
        body: &'a [u8],
    }

    /// The messages of one datagram.
    fn messages(mut buf: &[u8]) -> Result<Vec<Reply<'_>>, String> {
        let mut out = Vec::new();
        while buf.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len < NLMSG_HDRLEN || len > buf.len() {
                return Err("nftables: malformed netlink reply".into());
            }
            let ty = u16::from_ne_bytes([buf[4], buf[5]]);
            let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
            out.push(Reply { ty, seq, body: &buf[NLMSG_HDRLEN..len] });
            buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
        }
        Ok(out)
    }

    /// The errno of an NLMSG_ERROR (0: an ack).
    fn error_code(body: &[u8]) -> Result<i32, String> {
        let code = body.get(..4).ok_or("nftables: short netlink error message")?;
        Ok(-i32::from_ne_bytes([code[0], code[1], code[2], code[3]]))
    }

    /// NFTA_TABLE_NAME among the attributes of a table message.
    fn table_name_attr(mut attrs: &[u8]) -> Option<String> {
        while attrs.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
            let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
            let data = attrs.get(4..len)?;
            if ty == NFTA_TABLE_NAME {
                let data = data.split(|&b| b == 0).next().unwrap_or_default();
                return Some(String::from_utf8_lossy(data).into_owned());
            }
            attrs = attrs.get(len.next_multiple_of(4).max(4)..).unwrap_or_default();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// Removes the lock even when the test fails.
    struct Guard(String);

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = unlock(&self.0);
        }
    }

    /// A lock name no other test process uses.
    fn unique(tag: &str) -> String {
        format!("test_{}_{tag}", std::process::id())
    }

    /// A connected pair on `bind`: (client, accepted server side, the
    /// connection as the server sees it).
    fn pair(bind: &str) -> (TcpStream, TcpStream, Conn) {
        let listener = TcpListener::bind(bind).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let conn = Conn { local: server.local_addr().unwrap(), remote: peer };
        (client, server, conn)
    }

    /// Nothing arrives on `server` within `wait`, and `client` is not reset.
    fn assert_held(client: &TcpStream, server: &mut TcpStream, wait: Duration) {
        server.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 16];
        match server.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("the lock let data through: {other:?}"),
        }
        assert!(client.take_error().unwrap().is_none(), "client socket got an error");
        client.set_nonblocking(true).unwrap();
        match (&*client).read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("client connection not intact: {other:?}"),
        }
        client.set_nonblocking(false).unwrap();
    }

    /// `want` arrives on `to` within 10 s (the sender's retransmission).
    fn assert_arrives(to: &mut TcpStream, want: &[u8]) -> Duration {
        let start = Instant::now();
        to.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; want.len()];
        to.read_exact(&mut got).unwrap_or_else(|e| panic!("data did not arrive after {:?}: {e}", start.elapsed()));
        assert_eq!(got, want);
        start.elapsed()
    }

    /// Both directions work.
    fn assert_works(client: &mut TcpStream, server: &mut TcpStream) {
        server.write_all(b"pong").unwrap();
        assert_arrives(client, b"pong");
        client.write_all(b"again").unwrap();
        assert_arrives(server, b"again");
    }

    fn fake(local: &str, remote: &str) -> Conn {
        Conn { local: local.parse().unwrap(), remote: remote.parse().unwrap() }
    }

    #[test]
    fn netlock_v4_holds_packets_until_unlock() {
        let name = unique("v4");
        let _guard = Guard(name.clone());
        let (mut client, mut server, conn) = pair("127.0.0.1:0");

        lock(&name, &[conn]).unwrap();
        assert!(is_locked(&name).unwrap());
        client.write_all(b"ping").unwrap();
        assert_held(&client, &mut server, Duration::from_millis(1500));

        unlock(&name).unwrap();
        assert!(!is_locked(&name).unwrap());
        let after = assert_arrives(&mut server, b"ping");
        eprintln!("delivered {after:?} after unlock");
        assert_works(&mut client, &mut server);
    }

    #[test]
    fn netlock_v6_holds_packets_and_replace_drops_old_rules() {
        let name = unique("v6");
        let _guard = Guard(name.clone());
        let (mut client, mut server, conn) = pair("[::1]:0");

        lock(&name, &[conn]).unwrap();
        client.write_all(b"ping6").unwrap();
        assert_held(&client, &mut server, Duration::from_millis(800));

        // Replacing the lock by one of another connection frees this one.
        let other = Conn { local: conn.local, remote: SocketAddr::new(conn.remote.ip(), 1) };
        lock(&name, &[other]).unwrap();
        assert!(is_locked(&name).unwrap());
        assert_arrives(&mut server, b"ping6");
        assert_works(&mut client, &mut server);
        unlock(&name).unwrap();
        assert!(!is_locked(&name).unwrap());
    }

    #[test]
    fn netlock_names_are_independent_and_unlock_is_idempotent() {
        let (a, b) = (unique("a"), unique("b"));
        let _guards = (Guard(a.clone()), Guard(b.clone()));
        let conn = fake("10.0.0.1:22", "10.0.0.2:40000");

        assert!(!is_locked(&a).unwrap());
        unlock(&a).unwrap();
        lock(&a, &[conn]).unwrap();
        lock(&a, &[conn, fake("[fe80::1]:22", "[fe80::2]:40000")]).unwrap();
        assert!(is_locked(&a).unwrap());
        assert!(!is_locked(&b).unwrap());
        lock(&b, &[]).unwrap();
        let all = locks().unwrap();
        assert!(all.contains(&a) && all.contains(&b), "{all:?}");

        unlock(&a).unwrap();
        assert!(!is_locked(&a).unwrap());
        assert!(is_locked(&b).unwrap());
        unlock(&a).unwrap();
        unlock(&b).unwrap();
        unlock(&b).unwrap();
        assert!(!is_locked(&b).unwrap());
        let all = locks().unwrap();
        assert!(!all.contains(&a) && !all.contains(&b), "{all:?}");
    }

    #[test]
    fn netlock_many_connections_and_bad_input() {
        let name = unique("many");
        let _guard = Guard(name.clone());
        // IPv4-mapped addresses are locked as IPv4; 2000 rules take several batches.
        let conns: Vec<Conn> = (0..2000u16)
            .map(|i| {
                let remote =
                    if i % 2 == 0 { format!("[::ffff:10.1.2.3]:{}", 1000 + i) } else { format!("[fd00::1]:{i}") };
                let local = if i % 2 == 0 { "[::ffff:10.9.9.9]:443" } else { "[fd00::9]:443" };
                fake(local, &remote)
            })
            .collect();
        lock(&name, &conns).unwrap();
        assert!(is_locked(&name).unwrap());
        unlock(&name).unwrap();

        let mixed = fake("10.0.0.1:22", "[fd00::2]:40000");
        let e = lock(&name, &[mixed]).unwrap_err();
        assert!(e.contains("different families"), "{e}");
        assert!(!is_locked(&name).unwrap(), "a refused lock left a table");
        assert!(lock("bad\0name", &[]).unwrap_err().contains("NUL"));
        assert!(lock(&"x".repeat(300), &[]).unwrap_err().contains("too long"));
    }
}
