//! Regular files and directories, including files unlinked while open.
//!
//! A file is recorded by path and identity (device, inode, size, mtime), so
//! restore can refuse a file that changed since the dump. A deleted file has
//! no path to reopen: its contents are read through the agent's copy of the
//! fd and stored in the image, and restore recreates it as an unlinked file.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::stat::fstat;
use stasis_image::records::{fd::Kind, FileRef};
use stasis_sys::nix::{self, libc};

use super::{Extra, Seen};

const DELETED: &str = " (deleted)";

/// Identity of the file behind `fd`, recorded under `path`.
pub fn file_ref(path: &str, fd: impl AsFd) -> Result<FileRef, String> {
    let st = fstat(fd.as_fd()).map_err(|e| format!("fstat: {e}"))?;
    let deleted = st.st_nlink == 0;
    let path = if deleted { path.strip_suffix(DELETED).unwrap_or(path) } else { path };
    Ok(FileRef {
        path: path.to_owned(),
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        mode: st.st_mode,
        deleted,
        contents_mm: 0,
        content_hash: Vec::new(),
        uid: st.st_uid,
        gid: st.st_gid,
        link_target: String::new(),
    })
}

pub fn dump(seen: &Seen, copy: &OwnedFd) -> Result<(Kind, Extra), String> {
    let mut file = file_ref(&seen.target, copy)?;
    let mut extra = Extra::default();
    // A symbolic link (an O_PATH|O_NOFOLLOW fd): its target, to make it
    // again when it was removed.
    if file.mode & libc::S_IFMT == libc::S_IFLNK {
        let target = nix::fcntl::readlinkat(copy, "").map_err(|e| format!("readlink of {}: {e}", file.path))?;
        file.link_target = target.to_string_lossy().into_owned();
        return Ok((Kind::File(file), extra));
    }
    // A removed directory is made again empty (as it was, being removed).
    if file.deleted && file.mode & libc::S_IFMT != libc::S_IFDIR {
        if file.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(format!("deleted {} is not a regular file", file.path));
        }
        // A description of our own to read from: the process's may be
        // write-only.
        let reader = std::fs::File::open(format!("/proc/self/fd/{}", copy.as_raw_fd()))
            .map_err(|e| format!("cannot open deleted {} for reading: {e}", file.path))?;
        extra.contents = Some(read_all(&reader.into(), file.size)?);
    }
    Ok((Kind::File(file), extra))
}

/// All `size` bytes of a file through `fd`, without moving its offset.
pub fn read_all(fd: &OwnedFd, size: u64) -> Result<Vec<u8>, String> {
    let mut buf = vec![0; size as usize];
    let mut at = 0;
    while at < buf.len() {
        match nix::sys::uio::pread(fd, &mut buf[at..], at as i64) {
            Ok(0) => return Err(format!("file ended at {at} of {size} bytes")),
            Ok(n) => at += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(buf)
}
