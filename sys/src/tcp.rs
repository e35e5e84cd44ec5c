//! TCP_REPAIR: putting a TCP socket in repair mode, where connect(2) and
//! send(2)/recv(2) manipulate its state and queues instead of talking to
//! the peer (include/uapi/linux/tcp.h, net/ipv4/tcp.c `do_tcp_setsockopt`;
//! needs CAP_NET_ADMIN over the socket's network namespace).
//!
//! Dump sets it on a copy of the target's socket (pidfd_getfd) to read
//! sequence numbers and queues without sending anything; restore sets it on
//! a fresh socket to rebuild an established connection. Leaving a socket in
//! repair mode would freeze its connection, so [`RepairMode`] leaves it on
//! drop. Pure setsockopt(2): nix's safe wrapper suffices, no unsafe here.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType};

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
        socket::setsockopt(&fd, sockopt::TcpRepair, &REPAIR_ON)
            .map_err(|errno| Error::Set { value: REPAIR_ON, errno })?;
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
    socket::setsockopt(&fd, sockopt::TcpRepair, &REPAIR_OFF).map_err(|errno| Error::Set { value: REPAIR_OFF, errno })
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

#[cfg(test)]
mod tests {
    use super::*;

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
