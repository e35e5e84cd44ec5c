//! Pipes and FIFOs, with the data buffered in them.
//!
//! The buffer is read without consuming it: the agent opens a new read end
//! of the same pipe through /proc/self/fd/N of its copy (which works for the
//! write end too, as for a FIFO), and tee(2)s from it into a pipe of its own,
//! which it then drains. The target's pipe is left exactly as it was.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::{fcntl, tee, FcntlArg, OFlag, SpliceFFlags};
use stasis_image::records::{fd::Kind, Fifo, Pipe};
use stasis_sys::nix;

use super::{file, Extra, Seen};

/// The pipe's id (its inode) and its buffer.
pub fn dump(seen: &Seen, copy: &OwnedFd) -> Result<(u64, Pipe), String> {
    let (capacity, data) = peek(copy)?;
    Ok((seen.ino, Pipe { id: seen.ino, capacity, data, ends: 0 }))
}

pub fn dump_fifo(seen: &Seen, copy: &OwnedFd) -> Result<(Kind, Extra), String> {
    let file = file::file_ref(&seen.target, copy)?;
    let (_, pipe) = dump(seen, copy)?;
    Ok((Kind::Fifo(Fifo { file: Some(file), pipe: seen.ino }), Extra { pipe: Some(pipe), ..Extra::default() }))
}

/// The capacity of the pipe behind `fd` and the bytes in it, unconsumed.
pub fn peek(fd: &OwnedFd) -> Result<(u32, Vec<u8>), String> {
    let capacity = fcntl(fd, FcntlArg::F_GETPIPE_SZ).map_err(|e| format!("F_GETPIPE_SZ: {e}"))? as u32;
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| format!("cannot open a read end: {e}"))?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| format!("pipe2: {e}"))?;
    // Our pipe must hold all of theirs for one tee to copy it all; their
    // capacity is at most pipe-max-size, which we may set without
    // CAP_SYS_RESOURCE.
    fcntl(&out_w, FcntlArg::F_SETPIPE_SZ(capacity as i32)).map_err(|e| format!("F_SETPIPE_SZ({capacity}): {e}"))?;
    let copied = match tee(&reader, &out_w, capacity as usize, SpliceFFlags::SPLICE_F_NONBLOCK) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => 0,
        Err(e) => return Err(format!("tee: {e}")),
    };
    drop(out_w);
    let mut data = Vec::with_capacity(copied);
    std::fs::File::from(out_r).read_to_end(&mut data).map_err(|e| format!("read: {e}"))?;
    if data.len() != copied {
        return Err(format!("tee copied {copied} bytes but {} came out", data.len()));
    }
    Ok((capacity, data))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn peek_leaves_the_data_in_place() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut wf = std::fs::File::from(w);
        wf.write_all(b"hello pipe").unwrap();
        let w: OwnedFd = wf.into();
        // Peek through either end.
        for end in [&r, &w] {
            let (cap, data) = peek(end).unwrap();
            assert_eq!(cap, 65536);
            assert_eq!(data, b"hello pipe");
        }
        let mut buf = [0; 64];
        let n = nix::unistd::read(&r, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello pipe");
    }

    #[test]
    fn peek_of_an_empty_pipe() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert_eq!(peek(&r).unwrap().1, b"");
    }
}
