//! Anonymous private mappings owned by the agent, unmapped on drop.
//!
//! Used as scratch memory whose page-level state the agent inspects
//! (pagemap, userfaultfd write-protect, soft-dirty): a Rust `Vec` gives no
//! page alignment and may share pages with other allocations, which would
//! make page counts meaningless.

use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::mman::{self, MapFlags, ProtFlags};

/// Errors of mapping creation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// mmap(2) failed.
    #[error("cannot map {len} bytes of anonymous memory")]
    Map {
        /// The requested length.
        len: usize,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// An anonymous read-write mapping (private, or shared with [`AnonMapping::shared`]).
#[derive(Debug)]
pub struct AnonMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value alone; moving the
// owner to another thread moves the only access path with it.
unsafe impl Send for AnonMapping {}

impl AnonMapping {
    /// Maps `pages` fresh pages (never touched, so not yet present).
    pub fn new(pages: usize) -> Result<Self, Error> {
        Self::map(pages, MapFlags::MAP_PRIVATE)
    }

    /// Maps `pages` fresh pages of a new MAP_SHARED anonymous object (a
    /// shmem file, which /proc/self/map_files opens for other processes
    /// to map).
    pub fn shared(pages: usize) -> Result<Self, Error> {
        Self::map(pages, MapFlags::MAP_SHARED)
    }

    fn map(pages: usize, flags: MapFlags) -> Result<Self, Error> {
        let len = pages.saturating_mul(page_size());
        let nz = NonZeroUsize::new(len).ok_or(Error::Map { len, errno: Errno::EINVAL })?;
        // SAFETY: a fresh anonymous mapping (private, or a new shared object
        // nobody else maps yet) at an address the kernel chooses aliases no
        // existing Rust object.
        let ptr = unsafe { mman::mmap_anonymous(None, nz, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, flags) }
            .map_err(|errno| Error::Map { len, errno })?;
        Ok(AnonMapping { ptr: ptr.cast(), len })
    }

    /// madvise(2) over the whole mapping: advice that changes its flags
    /// (MADV_DONTFORK, MADV_DOFORK, ...), not its contents.
    pub fn advise(&self, advice: mman::MmapAdvise) -> Result<(), Errno> {
        // SAFETY: the range is this mapping's own, which stays mapped; the
        // advice callers give changes flags, and no Rust reference into it
        // is invalidated by that.
        unsafe { mman::madvise(self.ptr.cast(), self.len, advice) }
    }

    /// The start address.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `new` refuses zero pages).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address range `[start, end)`.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.addr()..self.addr() + self.len as u64
    }

    /// The memory, readable.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is a live read-write mapping owned by self,
        // zero-filled by the kernel (so initialised), and only reachable
        // through self, whose borrow this slice holds.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The memory, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; the exclusive borrow of self makes this the
        // only reference to the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Writes one byte at the start of page `index`, faulting the page in
    /// for writing. The store is volatile so it cannot be elided even though
    /// nothing in Rust reads it back: its side effect is the page-table
    /// change that pagemap and userfaultfd observe.
    pub fn touch_page(&mut self, index: usize, value: u8) {
        let offset = index * page_size();
        assert!(offset < self.len, "page {index} outside the mapping");
        let byte: *mut u8 = &mut self.as_mut_slice()[offset];
        // SAFETY: `byte` comes from a live &mut u8 into the mapping, so it is
        // aligned, writable and unaliased.
        unsafe { byte.write_volatile(value) };
    }
}

/// A large anonymous private mapping of which only the pages written take
/// memory (MAP_NORESERVE), filled by the kernel straight from a file at
/// any offset, from several threads at once, and read back once they are
/// done: a copy of another process's memory kept in the agent.
///
/// It hands out no reference to its memory while it can be filled (filling
/// takes `&self`, reading `&mut self`), so the kernel's writes never race
/// with a Rust borrow.
#[derive(Debug)]
pub struct SparseBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain memory owned by this value; `&self` methods only pass the
// kernel a pointer to write through (never make a reference to it), and
// reading back needs `&mut self`.
unsafe impl Send for SparseBuffer {}
// SAFETY: as above: concurrent fills are kernel writes to memory no Rust
// reference points into.
unsafe impl Sync for SparseBuffer {}

impl SparseBuffer {
    /// Reserves `len` bytes (rounded up to pages) of address space.
    pub fn new(len: usize) -> Result<Self, Error> {
        let len = len.div_ceil(page_size()).max(1) * page_size();
        let nz = NonZeroUsize::new(len).ok_or(Error::Map { len, errno: Errno::EINVAL })?;
        let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE;
        // SAFETY: a fresh anonymous private mapping at an address the kernel
        // chooses aliases no existing Rust object.
        let ptr = unsafe { mman::mmap_anonymous(None, nz, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, flags) }
            .map_err(|errno| Error::Map { len, errno })?;
        Ok(SparseBuffer { ptr: ptr.cast(), len })
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy up to `len` bytes of process `pid`'s memory at `addr` into the
    /// buffer at `offset` with process_vm_readv (one copy; it pins the
    /// pages it reads). Returns the bytes copied: fewer at the first page
    /// it may not read (0 when that is the first).
    pub fn fill_from_process(&self, pid: nix::unistd::Pid, addr: u64, offset: usize, len: usize) -> usize {
        let end = offset.checked_add(len).filter(|&e| e <= self.len);
        assert!(end.is_some(), "fill of {len} bytes at {offset} outside a buffer of {}", self.len);
        let mut done = 0;
        while done < len {
            let local = libc::iovec {
                // SAFETY: offset + done .. offset + len lies inside the
                // mapping (checked above), which lives as long as self; no
                // Rust reference points into it while self is shared.
                iov_base: unsafe { self.ptr.as_ptr().add(offset + done) }.cast(),
                iov_len: len - done,
            };
            let remote = libc::iovec { iov_base: (addr + done as u64) as *mut libc::c_void, iov_len: len - done };
            // SAFETY: the local iovec is valid for writes of its length
            // (above); the remote one is only an address in the target.
            let n = unsafe { libc::process_vm_readv(pid.as_raw(), &local, 1, &remote, 1, 0) };
            match n {
                n if n > 0 => done += n as usize,
                _ if Errno::last() == Errno::EINTR => {}
                _ => break,
            }
        }
        done
    }

    /// Read `len` bytes of `file` at `file_offset` into the buffer at
    /// `offset` (pread, repeated while short). Fills of overlapping ranges
    /// at once leave either's bytes.
    pub fn fill_from(&self, file: &std::fs::File, file_offset: u64, offset: usize, len: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let end = offset.checked_add(len).filter(|&e| e <= self.len);
        assert!(end.is_some(), "fill of {len} bytes at {offset} outside a buffer of {}", self.len);
        let mut done = 0;
        while done < len {
            // SAFETY: offset + done .. offset + len lies inside the mapping
            // (checked above), which lives as long as self; no Rust
            // reference points into it while self is shared (see the type).
            let dst = unsafe { self.ptr.as_ptr().add(offset + done) };
            let at = libc::off_t::try_from(file_offset + done as u64)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
            // SAFETY: dst is valid for writes of len - done bytes (above).
            let n = unsafe { libc::pread(file.as_raw_fd(), dst.cast(), len - done, at) };
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// The bytes at `offset`, into `buf`.
    pub fn read(&mut self, offset: usize, buf: &mut [u8]) {
        self.reader().read(offset, buf);
    }

    /// Reads from any number of threads at once, while no fill runs (the
    /// buffer is borrowed mutably as long as the reader lives).
    pub fn reader(&mut self) -> SparseReader<'_> {
        SparseReader { buf: self }
    }
}

/// Reads of a [`SparseBuffer`] no fill runs into meanwhile
/// ([`SparseBuffer::reader`]).
#[derive(Debug, Clone, Copy)]
pub struct SparseReader<'a> {
    buf: &'a SparseBuffer,
}

impl SparseReader<'_> {
    /// The bytes at `offset`, into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let len = self.buf.len;
        let end = offset.checked_add(buf.len()).filter(|&e| e <= len);
        assert!(end.is_some(), "read of {} bytes at {offset} outside a buffer of {len}", buf.len());
        // SAFETY: offset is inside the live mapping (checked above).
        let start = unsafe { self.buf.ptr.as_ptr().add(offset) };
        // SAFETY: start..start + buf.len() is inside the mapping, which the
        // kernel zero-filled where never written; the reader was made from
        // a `&mut SparseBuffer` it still borrows, so no fill runs now, and
        // reads only share.
        let src = unsafe { std::slice::from_raw_parts(start, buf.len()) };
        buf.copy_from_slice(src);
    }
}

impl Drop for SparseBuffer {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; no reference into
        // the mapping outlives the borrow of self that made it.
        let _ = unsafe { mman::munmap(self.ptr.cast(), self.len) };
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, and no reference
        // into the mapping outlives self (all slices borrow self).
        let _ = unsafe { mman::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::{spawn, ChildAction};

    /// A fill from another process copies its bytes to the offset asked,
    /// and stops at a page it may not read.
    #[test]
    fn sparse_buffer_fills_from_a_process() {
        let page = page_size();
        let ours: Vec<u8> = (0..2 * page).map(|i| (i % 251) as u8).collect();
        let child = spawn(ChildAction::Pause).expect("fork");
        let mut buf = SparseBuffer::new(4 * page).unwrap();
        assert_eq!(buf.fill_from_process(child.pid(), ours.as_ptr() as u64, page, 2 * page), 2 * page);
        let mut back = vec![0u8; 3 * page];
        buf.read(0, &mut back);
        assert_eq!(back[..page], vec![0u8; page][..], "the page before the fill");
        assert_eq!(back[page..], ours[..]);
        // Address 0 is never mapped: nothing copied.
        assert_eq!(buf.fill_from_process(child.pid(), 0, 0, page), 0);
    }
}
