//! /proc/PID/mem: reading and writing a target's memory through the file
//! the kernel exposes for debuggers (proc(5), fs/proc/base.c `mem_rw`).
//!
//! Writes go through `access_remote_vm` with `FOLL_FORCE`, so unlike
//! process_vm_writev(2) they can patch read-only private mappings (breaking
//! copy-on-write), which is what restore needs to fill text and rodata pages
//! after mapping them with their final protections. The `proc_mem.force_override`
//! boot parameter (Linux 6.12) can forbid that; a probe tells.
//! Opening needs `PTRACE_MODE_ATTACH_FSCREDS`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

use nix::unistd::Pid;

use crate::process_vm::RemoteAddr;

/// Errors of /proc/PID/mem access.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened (ptrace access denied, process gone).
    #[error("cannot open /proc/{pid}/mem")]
    Open {
        /// The process.
        pid: Pid,
        /// The open error.
        #[source]
        source: io::Error,
    },
    /// A read or write failed or was short (EIO: address not mapped).
    #[error("cannot {op} {len} bytes at {addr} of /proc/{pid}/mem")]
    Access {
        /// "read" or "write".
        op: &'static str,
        /// The process.
        pid: Pid,
        /// The address.
        addr: RemoteAddr,
        /// Bytes asked for.
        len: usize,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// An open /proc/PID/mem.
#[derive(Debug)]
pub struct ProcMem {
    file: File,
    pid: Pid,
}

impl ProcMem {
    /// Opens /proc/PID/mem for reading, and for writing if `write`.
    pub fn open(pid: Pid, write: bool) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|source| Error::Open { pid, source })?;
        Ok(ProcMem { file, pid })
    }

    /// The process.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Reads exactly `buf.len()` bytes at `addr`.
    pub fn read_exact_at(&self, addr: RemoteAddr, buf: &mut [u8]) -> Result<(), Error> {
        self.file.read_exact_at(buf, addr.0).map_err(|source| Error::Access {
            op: "read",
            pid: self.pid,
            addr,
            len: buf.len(),
            source,
        })
    }

    /// Reads `len` bytes at `addr` straight into `buf` at `offset`.
    pub fn read_into(
        &self,
        addr: RemoteAddr,
        buf: &crate::mman::SparseBuffer,
        offset: usize,
        len: usize,
    ) -> Result<(), Error> {
        buf.fill_from(&self.file, addr.0, offset, len).map_err(|source| Error::Access {
            op: "read",
            pid: self.pid,
            addr,
            len,
            source,
        })
    }

    /// Writes all of `data` at `addr`.
    pub fn write_all_at(&self, addr: RemoteAddr, data: &[u8]) -> Result<(), Error> {
        self.file.write_all_at(data, addr.0).map_err(|source| Error::Access {
            op: "write",
            pid: self.pid,
            addr,
            len: data.len(),
            source,
        })
    }
}

impl ProcMem {
    /// Write `bufs`, one after another, from `addr` on, in as few calls as
    /// the kernel takes (pwritev: no copy of them into one buffer first).
    pub fn write_all_vectored_at(&self, addr: RemoteAddr, bufs: &[&[u8]]) -> Result<(), Error> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let err = |source| Error::Access { op: "write", pid: self.pid, addr, len: total, source };
        let (mut k, mut skip, mut at) = (0, 0, addr.0);
        while k < bufs.len() {
            // At most IOV_MAX slices a call.
            let slices: Vec<io::IoSlice<'_>> = std::iter::once(&bufs[k][skip..])
                .chain(bufs[k + 1..].iter().copied())
                .take(1024)
                .map(io::IoSlice::new)
                .collect();
            let n = match nix::sys::uio::pwritev(&self.file, &slices, at as i64) {
                Ok(0) => return Err(err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing"))),
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(err(io::Error::from(e))),
            };
            at += n as u64;
            let mut left = n;
            while left > 0 {
                let here = bufs[k].len() - skip;
                if left < here {
                    skip += left;
                    left = 0;
                } else {
                    left -= here;
                    k += 1;
                    skip = 0;
                }
            }
            while k < bufs.len() && bufs[k].len() == skip {
                k += 1;
                skip = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::{spawn, ChildAction};

    #[test]
    fn writes_a_forked_childs_copy() {
        let ours = vec![0x5au8; 4096];
        let addr = RemoteAddr(ours.as_ptr() as u64);
        let child = spawn(ChildAction::Pause).expect("fork");
        let mem = ProcMem::open(child.pid(), true).expect("open /proc/PID/mem for writing");
        mem.write_all_at(addr, b"restored").expect("write /proc/PID/mem");
        let mut back = [0u8; 8];
        mem.read_exact_at(addr, &mut back).unwrap();
        assert_eq!(&back, b"restored");
        mem.write_all_vectored_at(RemoteAddr(addr.0 + 100), &[b"in ", b"", b"three", b" parts"]).expect("pwritev");
        let mut back = [0u8; 14];
        mem.read_exact_at(RemoteAddr(addr.0 + 100), &mut back).unwrap();
        assert_eq!(&back, b"in three parts");
        assert_eq!(ours[..8], [0x5a; 8]);
    }

    static READ_ONLY: [u8; 8] = *b"readonly";

    #[test]
    fn writes_a_read_only_page_of_a_child() {
        let addr = RemoteAddr(READ_ONLY.as_ptr() as u64);
        let child = spawn(ChildAction::Pause).expect("fork");
        let mem = ProcMem::open(child.pid(), true).unwrap();
        mem.write_all_at(addr, b"patched!").expect("FOLL_FORCE write to a read-only private mapping");
        let mut back = [0u8; 8];
        mem.read_exact_at(addr, &mut back).unwrap();
        assert_eq!(&back, b"patched!");
        assert_eq!(std::hint::black_box(&READ_ONLY), b"readonly");
    }
}
