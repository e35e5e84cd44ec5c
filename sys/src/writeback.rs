//! sync_file_range(2) `SYNC_FILE_RANGE_WRITE`: start writing a range of a
//! file's dirty page cache to its device without waiting for it, so that
//! a later fsync finds most of it written (nix does not wrap the call).
//! It makes nothing durable by itself: neither the file's metadata nor the
//! device's cache are flushed, and an error of the writeback shows at the
//! next fsync, which the caller still makes.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

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
        let dir = std::env::temp_dir().join(format!("stasis-writeback-{}", std::process::id()));
        let mut f = std::fs::File::create(&dir).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        super::start(f.as_fd(), 0, 1 << 20).unwrap();
        // The range is written (or being written): a sync has it all.
        f.sync_data().unwrap();
        assert_eq!(std::fs::read(&dir).unwrap(), vec![7u8; 1 << 20]);
        std::fs::remove_file(&dir).unwrap();
        // A range past what a signed offset holds is refused, not wrapped.
        assert_eq!(super::start(f.as_fd(), u64::MAX, 1), Err(nix::errno::Errno::EINVAL));
    }
}
