//! open_by_handle_at(2): open a file from the handle the kernel shows for
//! it (in /proc/PID/fdinfo of an inotify fd, for instance), to learn its
//! path. Needs CAP_DAC_READ_SEARCH.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// Longest handle the kernel hands out (MAX_HANDLE_SZ).
pub const MAX_HANDLE_SZ: usize = 128;

/// Open the file `handle` (of `handle_type`) names on the filesystem that
/// `mount` is on, with `flags` (e.g. O_PATH).
pub fn open_by_handle(mount: BorrowedFd<'_>, handle_type: i32, handle: &[u8], flags: i32) -> Result<OwnedFd, Errno> {
    if handle.len() > MAX_HANDLE_SZ {
        return Err(Errno::EINVAL);
    }
    // struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[]; }
    // built in u32 words so the header is aligned.
    let mut buf = vec![0u32; 2 + handle.len().div_ceil(4)];
    buf[0] = handle.len() as u32;
    buf[1] = handle_type as u32;
    for (i, chunk) in handle.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        buf[2 + i] = u32::from_ne_bytes(word);
    }
    // SAFETY: `buf` is a live, 4-byte aligned struct file_handle whose
    // handle_bytes matches the bytes that follow it; the kernel only reads
    // it. The mount fd is borrowed for the call.
    let fd = unsafe { libc::open_by_handle_at(mount.as_raw_fd(), buf.as_mut_ptr().cast(), flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: open_by_handle_at returned a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_opens_its_file() {
        let dir = std::env::temp_dir();
        let file = dir.join(format!("stasis-fhandle-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
        // name_to_handle_at to get a handle to open again.
        let mut words = [0u32; 2 + MAX_HANDLE_SZ / 4];
        words[0] = MAX_HANDLE_SZ as u32;
        let mut mount_id = 0;
        // SAFETY: `words` is an aligned file_handle with room for
        // MAX_HANDLE_SZ bytes, as handle_bytes says; `path` is NUL-terminated.
        let r = unsafe {
            libc::name_to_handle_at(libc::AT_FDCWD, path.as_ptr(), words.as_mut_ptr().cast(), &mut mount_id, 0)
        };
        assert_eq!(r, 0, "name_to_handle_at: {}", Errno::last());
        let len = words[0] as usize;
        let raw: Vec<u8> = words[2..].iter().flat_map(|w| w.to_ne_bytes()).take(len).collect();
        let mount = std::fs::File::open(&dir).unwrap();
        let fd = open_by_handle(std::os::fd::AsFd::as_fd(&mount), words[1] as i32, &raw, libc::O_PATH).unwrap();
        let back = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(back, std::fs::canonicalize(&file).unwrap());
        std::fs::remove_file(&file).unwrap();
    }
}
