//! The tree's established TCP connections while a dump runs: their
//! incoming packets dropped by the network lock (taken before any socket is
//! read, so no byte the peer sends is acknowledged and then lost), and the
//! agent's copies of their sockets, which the dump puts in repair mode.
//!
//! Dropped without [`TcpHold::keep`] (a failed dump), or let go after a
//! dump that lets the tree run on, every socket leaves repair mode without
//! a window probe and the lock is removed: the connections go on as if
//! nothing happened. Kept (a killed tree), the lock stays for restore to
//! remove.

use std::collections::HashSet;
use std::os::fd::OwnedFd;

use stasis_sys::nix::sys::socket::{getsockopt, sockopt};
use stasis_sys::pidfd::PidFd;
use stasis_sys::Pid;

use super::DumpError;
use crate::fd::{self, Seen};
use crate::netlock;

pub(super) struct TcpHold {
    /// The lock's name (an nftables table); none without connections.
    pub lock: Option<String>,
    /// Each socket, with its SO_REUSEADDR (leaving repair mode clears it).
    copies: Vec<(OwnedFd, bool)>,
    kept: bool,
}

impl TcpHold {
    /// Lock the established connections of every process in `seen`.
    pub fn take(root: Pid, seen: &[(Pid, Vec<Seen>)]) -> Result<TcpHold, DumpError> {
        let mut hold = TcpHold { lock: None, copies: Vec::new(), kept: false };
        let mut conns = Vec::new();
        let mut inodes = HashSet::new();
        for (pid, fds) in seen {
            let established = fds.iter().filter(|s| matches!(s.kind, Ok(fd::Kind::TcpEstablished)));
            for s in established.filter(|s| inodes.insert(s.ino)) {
                let fd_err = |what: String| DumpError::Fd { pid: *pid, fd: s.fd, what };
                let copy = PidFd::open(*pid).and_then(|p| p.get_fd(s.fd)).map_err(|e| fd_err(crate::chain(&e)))?;
                let (local, remote) = fd::tcp::addresses(*pid, s.ino, &copy).map_err(fd_err)?;
                let reuse = getsockopt(&copy, sockopt::ReuseAddr).map_err(|e| fd_err(format!("SO_REUSEADDR: {e}")))?;
                conns.push(netlock::Conn { local, remote });
                hold.copies.push((copy, reuse));
            }
        }
        if !conns.is_empty() {
            let name = fd::tcp::lock_name(root.as_raw());
            netlock::lock(&name, &conns).map_err(|what| DumpError::Fd { pid: root, fd: -1, what })?;
            hold.lock = Some(name);
        }
        Ok(hold)
    }

    /// After a dump that lets the tree run on: leave repair mode quietly
    /// and remove the lock.
    pub fn let_go(mut self) -> Result<(), String> {
        self.release()
    }

    /// After a killed tree: the lock stays until restore.
    pub fn keep(mut self) {
        self.kept = true;
    }

    fn release(&mut self) -> Result<(), String> {
        let mut result = Ok(());
        for (c, reuse) in self.copies.drain(..) {
            if let Err(e) = fd::tcp::leave_quietly(&c, reuse) {
                result = Err(format!("leaving TCP repair mode: {e}"));
            }
        }
        if let Some(name) = self.lock.take() {
            netlock::unlock(&name)?;
        }
        result
    }
}

impl Drop for TcpHold {
    fn drop(&mut self) {
        if !self.kept {
            if let Err(e) = self.release() {
                tracing::warn!("{e}");
            }
        }
    }
}
