//! sync_file_range(2) `SYNC_FILE_RANGE_WRITE`: start writing a range of a
//! file's dirty page cache to its device without waiting for it, so that
//! a later fsync finds most of it written (nix does not wrap the call).
//! It makes nothing durable by itself: neither the file's metadata nor the
//! device's cache are flushed, and an error of the writeback shows at the
//! next fsync, which the caller still makes.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// cachestat(2), the same on every architecture (the unified numbers).
const SYS_CACHESTAT: libc::c_long = 451;

/// How many pages of `len` bytes of `file` from `offset` are in the page
/// cache dirty and not yet being written (cachestat(2), Linux 6.5): what a
/// sync would still have to start.
pub fn dirty_pages(file: BorrowedFd<'_>, offset: u64, len: u64) -> Result<u64, Errno> {
    // struct cachestat_range { __u64 off, len; }
    let range: [u64; 2] = [offset, len];
    // struct cachestat { __u64 nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; }
    let mut stat = [0u64; 5];
    // SAFETY: `range` and `stat` are live arrays of the sizes of the
    // structs the kernel reads and fills.
    let r = unsafe { libc::syscall(SYS_CACHESTAT, file.as_raw_fd(), range.as_ptr(), stat.as_mut_ptr(), 0) };
    Errno::result(r).map(|_| stat[1])
}

/// Start the writeback of `len` bytes of `file` from `offset`.
pub fn start(file: BorrowedFd<'_>, offset: u64, len: u64) -> Result<(), Errno> {
    let (offset, len) =
        (i64::try_from(offset).map_err(|_| Errno::EINVAL)?, i64::try_from(len).map_err(|_| Errno::EINVAL)?);
    // SAFETY: sync_file_range takes integers only; an invalid fd or range
    // yields an errno.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn starts_the_writeback_of_a_dirty_range() {
        let path = std::env::temp_dir().join(format!("stasis-writeback-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        // In pages of their own (one write caches in one folio, as large
        // as the write, whose writeback starts whole).
        for _ in 0..512 {
            f.write_all(&[7u8; 4096]).unwrap();
        }
        let dirty = |offset, len| super::dirty_pages(f.as_fd(), offset, len).unwrap();
        assert_eq!(dirty(0, 2 << 20), 512, "the pages just written are dirty");
        super::start(f.as_fd(), 0, 1 << 20).unwrap();
        // Under writeback or written: no longer dirty; the rest is.
        assert_eq!(dirty(0, 1 << 20), 0);
        assert_eq!(dirty(1 << 20, 1 << 20), 256);
        f.sync_data().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 2 << 20]);
        std::fs::remove_file(&path).unwrap();
        // A range past what a signed offset holds is refused, not wrapped.
        assert_eq!(super::start(f.as_fd(), u64::MAX, 1), Err(nix::errno::Errno::EINVAL));
    }
}
