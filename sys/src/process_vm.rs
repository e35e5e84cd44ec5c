//! process_vm_readv(2) / process_vm_writev(2): bulk copies between the
//! agent's memory and a target's, without stopping it or running code in it.
//!
//! The access check is `PTRACE_MODE_ATTACH_REALCREDS` (mm/process_vm_access.c).
//! The kernel copies whole iovecs until the first fault and returns the
//! number of bytes done, so a short count is not an error from the kernel's
//! view; [`read_exact`] and [`write_exact`] turn it into one that names the
//! address where the copy stopped. nix already wraps both calls safely; this
//! module adds typed errors and the address bookkeeping.

use std::io::{IoSlice, IoSliceMut};

use nix::errno::Errno;
use nix::sys::uio::{self, RemoteIoVec};
use nix::unistd::Pid;

/// An address in another process's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteAddr(pub u64);

impl std::fmt::Display for RemoteAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Errors of cross-process memory copies.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The syscall failed outright (EPERM: no ptrace access; ESRCH: gone;
    /// EFAULT: the first remote address is not mapped).
    #[error("process_vm_{op} of {len} bytes at {addr} in process {pid} failed")]
    Copy {
        /// "readv" or "writev".
        op: &'static str,
        /// The target process.
        pid: Pid,
        /// The first remote address.
        addr: RemoteAddr,
        /// Total bytes asked for.
        len: usize,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// The copy stopped early, at an unmapped or inaccessible address.
    #[error("process_vm_{op} in process {pid} stopped after {done} of {len} bytes at {addr}")]
    Short {
        /// "readv" or "writev".
        op: &'static str,
        /// The target process.
        pid: Pid,
        /// Where the copy stopped.
        addr: RemoteAddr,
        /// Bytes copied.
        done: usize,
        /// Bytes asked for.
        len: usize,
    },
}

fn remote(addr: RemoteAddr, len: usize) -> RemoteIoVec {
    RemoteIoVec { base: addr.0 as usize, len }
}

/// Reads `buf.len()` bytes at `addr` of `pid`; returns how many were read
/// (fewer at the first fault).
pub fn read(pid: Pid, addr: RemoteAddr, buf: &mut [u8]) -> Result<usize, Error> {
    let len = buf.len();
    uio::process_vm_readv(pid, &mut [IoSliceMut::new(buf)], &[remote(addr, len)]).map_err(|errno| Error::Copy {
        op: "readv",
        pid,
        addr,
        len,
        errno,
    })
}

/// Reads exactly `buf.len()` bytes at `addr` of `pid`.
pub fn read_exact(pid: Pid, addr: RemoteAddr, buf: &mut [u8]) -> Result<(), Error> {
    let len = buf.len();
    let done = read(pid, addr, buf)?;
    if done != len {
        return Err(Error::Short { op: "readv", pid, addr: RemoteAddr(addr.0 + done as u64), done, len });
    }
    Ok(())
}

/// Scatter read: each `(addr, len)` range of `pid` in turn into consecutive
/// bytes of `buf`, in one syscall per `IOV_MAX` ranges. Returns the bytes
/// read; `buf` must hold the sum of the lengths.
pub fn read_ranges(pid: Pid, ranges: &[(RemoteAddr, usize)], buf: &mut [u8]) -> Result<usize, Error> {
    let total: usize = ranges.iter().map(|&(_, len)| len).sum();
    assert!(buf.len() >= total, "buffer of {} bytes for {total}", buf.len());
    // IOV_MAX (1024 on Linux) bounds the remote iovec count per call.
    const IOV_MAX: usize = 1024;
    let mut done = 0;
    for chunk in ranges.chunks(IOV_MAX) {
        let remote_iov: Vec<RemoteIoVec> = chunk.iter().map(|&(a, l)| remote(a, l)).collect();
        let chunk_len: usize = chunk.iter().map(|&(_, len)| len).sum();
        let local = &mut buf[done..done + chunk_len];
        let n = uio::process_vm_readv(pid, &mut [IoSliceMut::new(local)], &remote_iov)
            .map_err(|errno| Error::Copy { op: "readv", pid, addr: chunk[0].0, len: chunk_len, errno })?;
        done += n;
        if n != chunk_len {
            break;
        }
    }
    Ok(done)
}

/// Writes all of `data` at `addr` of `pid`. Unlike /proc/PID/mem, this
/// respects the target's page protections: a read-only page is EFAULT.
pub fn write_exact(pid: Pid, addr: RemoteAddr, data: &[u8]) -> Result<(), Error> {
    let len = data.len();
    let done = uio::process_vm_writev(pid, &[IoSlice::new(data)], &[remote(addr, len)])
        .map_err(|errno| Error::Copy { op: "writev", pid, addr, len, errno })?;
    if done != len {
        return Err(Error::Short { op: "writev", pid, addr: RemoteAddr(addr.0 + done as u64), done, len });
    }
    Ok(())
}

/// Writes `bufs`, one after another, at `addr` of `pid`, in one call per
/// `IOV_MAX` of them; returns the bytes written (fewer at the first page
/// it may not write: read-only, PROT_NONE, unmapped).
pub fn write_vectored(pid: Pid, addr: RemoteAddr, bufs: &[&[u8]]) -> Result<usize, Error> {
    const IOV_MAX: usize = 1024;
    let mut done = 0;
    for part in bufs.chunks(IOV_MAX) {
        let len: usize = part.iter().map(|b| b.len()).sum();
        let local: Vec<IoSlice<'_>> = part.iter().map(|b| IoSlice::new(b)).collect();
        let at = RemoteAddr(addr.0 + done as u64);
        let n = match uio::process_vm_writev(pid, &local, &[remote(at, len)]) {
            Ok(n) => n,
            Err(Errno::EFAULT) if done > 0 => 0,
            Err(errno) => return Err(Error::Copy { op: "writev", pid, addr: at, len, errno }),
        };
        done += n;
        if n != len {
            break;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::{spawn, ChildAction};

    #[test]
    fn reads_and_writes_a_forked_childs_copy() {
        let mut ours = vec![0xa5u8; 8192];
        let addr = RemoteAddr(ours.as_ptr() as u64);
        let child = spawn(ChildAction::Pause).expect("fork");

        let mut seen = vec![0u8; 8192];
        read_exact(child.pid(), addr, &mut seen).expect("process_vm_readv of the child");
        assert_eq!(seen, ours);

        write_exact(child.pid(), addr, b"child").expect("process_vm_writev");
        let mut back = [0u8; 5];
        read_exact(child.pid(), addr, &mut back).unwrap();
        assert_eq!(&back, b"child");
        // Only the child's copy changed.
        assert_eq!(ours[..5], [0xa5; 5]);

        let mut two = [0u8; 10];
        let n = read_ranges(child.pid(), &[(addr, 5), (RemoteAddr(addr.0 + 100), 5)], &mut two).unwrap();
        assert_eq!(n, 10);
        assert_eq!(&two, b"child\xa5\xa5\xa5\xa5\xa5");

        // Several buffers, one after another.
        let n = write_vectored(child.pid(), addr, &[b"one", b"two", b"three"]).unwrap();
        assert_eq!(n, 11);
        let mut back = [0u8; 12];
        read_exact(child.pid(), addr, &mut back).unwrap();
        assert_eq!(&back, b"onetwothree\xa5");
        ours[0] = 0;
    }

    #[test]
    fn an_unmapped_address_is_an_error() {
        let child = spawn(ChildAction::Pause).expect("fork");
        let mut buf = [0u8; 8];
        let err = read_exact(child.pid(), RemoteAddr(8), &mut buf).unwrap_err();
        assert!(matches!(err, Error::Copy { errno: Errno::EFAULT, .. }), "{err:?}");
    }
}
