//! Socket facts nix does not wrap: the protocol name of a socket inode
//! (`system.sockprotoname`, readable through /proc/PID/fd/N without touching
//! the process) and SO_BUF_LOCK (which buffer sizes were set explicitly).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

/// The protocol name the kernel gives the socket behind `path` ("TCP",
/// "UDPv6", "UNIX", "NETLINK", ...), following symlinks such as
/// /proc/PID/fd/N. `None` when it is not a socket or cannot be read.
pub fn protocol_name(path: &Path) -> Option<String> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both names are NUL-terminated C strings that outlive the call,
    // and buf is valid for writes of buf.len() bytes.
    let n =
        unsafe { libc::getxattr(path.as_ptr(), c"system.sockprotoname".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).ok()?;
    let name = &buf[..n];
    let name = name.split(|&b| b == 0).next().unwrap_or(name);
    Some(String::from_utf8_lossy(name).into_owned())
}

/// SO_BUF_LOCK: `SOCK_SNDBUF_LOCK` (1) | `SOCK_RCVBUF_LOCK` (2), the buffer
/// sizes set explicitly with SO_SNDBUF/SO_RCVBUF (Linux 5.14).
pub fn buf_lock(fd: impl AsFd) -> Result<u32, Errno> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of their sizes for the call.
    let r = unsafe {
        libc::getsockopt(fd.as_fd().as_raw_fd(), libc::SOL_SOCKET, libc::SO_BUF_LOCK, (&raw mut v).cast(), &raw mut len)
    };
    Errno::result(r).map(|_| v as u32)
}

/// `SOCK_SNDBUF_LOCK` in [`buf_lock`].
pub const SNDBUF_LOCK: u32 = 1;
/// `SOCK_RCVBUF_LOCK` in [`buf_lock`].
pub const RCVBUF_LOCK: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_locks() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = format!("/proc/self/fd/{}", l.as_raw_fd());
        assert_eq!(protocol_name(Path::new(&link)).as_deref(), Some("TCP"));
        assert_eq!(protocol_name(Path::new("/proc/self/exe")), None);
        assert_eq!(buf_lock(&l), Ok(0));
        nix::sys::socket::setsockopt(&l, nix::sys::socket::sockopt::RcvBuf, &65536).unwrap();
        assert_eq!(buf_lock(&l), Ok(RCVBUF_LOCK));
    }
}
