//! Pseudo-terminal ioctls (tty_ioctl(4), pty(7)): what a dump reads of a
//! terminal pair the tree owns, and what a restore sets again. Settings are
//! read through the kernel's own structures (`struct termios2`, `struct
//! winsize`), kept as bytes.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// `sizeof(struct termios2)` on Linux: four flag words, the line
/// discipline, 19 control characters, two speeds.
pub const TERMIOS2_LEN: usize = 44;

fn ioctl_int_out(fd: impl AsFd, request: libc::Ioctl) -> Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int to the pointer, which points at v.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request, &mut v) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(v)
}

fn ioctl_int_in(fd: impl AsFd, request: libc::Ioctl, v: i32) -> Result<(), Errno> {
    let v: libc::c_int = v;
    // SAFETY: the request reads one int from the pointer, which points at v.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request, &v) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// The index N of the pair a master belongs to (/dev/pts/N): TIOCGPTN.
pub fn pty_index(master: impl AsFd) -> Result<u32, Errno> {
    ioctl_int_out(master, libc::TIOCGPTN).map(|n| n as u32)
}

/// A new open file description of the slave of `master` (TIOCGPTPEER),
/// with `flags` (O_RDWR | O_NOCTTY | ...); no path is looked up.
pub fn peer(master: impl AsFd, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: TIOCGPTPEER takes the open flags as its integer argument and
    // returns a new fd, which nothing else owns.
    let fd = unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCGPTPEER, flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fd was just made for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The terminal's settings, `struct termios2` as bytes (TCGETS2).
pub fn termios(fd: impl AsFd) -> Result<[u8; TERMIOS2_LEN], Errno> {
    let mut raw = [0u8; TERMIOS2_LEN];
    // SAFETY: TCGETS2 writes a struct termios2, TERMIOS2_LEN bytes, to the
    // buffer, which is that long.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TCGETS2, raw.as_mut_ptr()) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(raw)
}

/// Set the terminal's settings from `struct termios2` bytes (TCSETS2).
pub fn set_termios(fd: impl AsFd, raw: &[u8; TERMIOS2_LEN]) -> Result<(), Errno> {
    // SAFETY: TCSETS2 reads a struct termios2, TERMIOS2_LEN bytes, from the
    // buffer.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TCSETS2, raw.as_ptr()) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Offsets of the flag words in `struct termios2`.
pub const TERMIOS_IFLAG: usize = 0;
pub const TERMIOS_OFLAG: usize = 4;
pub const TERMIOS_LFLAG: usize = 12;

/// Read or change one flag word of termios2 bytes.
pub fn termios_flag(raw: &[u8; TERMIOS2_LEN], at: usize) -> u32 {
    u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"))
}

pub fn set_termios_flag(raw: &mut [u8; TERMIOS2_LEN], at: usize, v: u32) {
    raw[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Rows, columns, width and height in pixels (TIOCGWINSZ).
pub fn winsize(fd: impl AsFd) -> Result<[u16; 4], Errno> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a struct winsize to the pointer.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok([ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel])
}

pub fn set_winsize(fd: impl AsFd, v: [u16; 4]) -> Result<(), Errno> {
    let ws = libc::winsize { ws_row: v[0], ws_col: v[1], ws_xpixel: v[2], ws_ypixel: v[3] };
    // SAFETY: TIOCSWINSZ reads a struct winsize from the pointer.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Packet mode of a master (TIOCGPKT), set with TIOCPKT.
pub fn packet_mode(master: impl AsFd) -> Result<bool, Errno> {
    ioctl_int_out(master, libc::TIOCGPKT).map(|v| v != 0)
}

pub fn set_packet_mode(master: impl AsFd, on: bool) -> Result<(), Errno> {
    ioctl_int_in(master, libc::TIOCPKT, on as i32)
}

/// Whether the slave is locked (TIOCGPTLCK on the master; opening it fails).
pub fn locked(master: impl AsFd) -> Result<bool, Errno> {
    ioctl_int_out(master, libc::TIOCGPTLCK).map(|v| v != 0)
}

pub fn set_locked(master: impl AsFd, on: bool) -> Result<(), Errno> {
    ioctl_int_in(master, libc::TIOCSPTLCK, on as i32)
}

/// Exclusive mode of a terminal (TIOCGEXCL): only root may open it again.
pub fn exclusive(fd: impl AsFd) -> Result<bool, Errno> {
    ioctl_int_out(fd, libc::TIOCGEXCL).map(|v| v != 0)
}

pub fn set_exclusive(fd: impl AsFd) -> Result<(), Errno> {
    // SAFETY: TIOCEXCL takes no argument.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCEXCL) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// The session the terminal is the controlling terminal of (TIOCGSID;
/// through a master, its slave's), None when none.
pub fn session(fd: impl AsFd) -> Result<Option<i32>, Errno> {
    match ioctl_int_out(fd, libc::TIOCGSID) {
        Ok(sid) => Ok(Some(sid)),
        Err(Errno::ENOTTY) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Its foreground process group (TIOCGPGRP; through a master, its slave's).
pub fn foreground(fd: impl AsFd) -> Result<Option<i32>, Errno> {
    match ioctl_int_out(fd, libc::TIOCGPGRP) {
        Ok(0) => Ok(None),
        Ok(pgrp) => Ok(Some(pgrp)),
        Err(Errno::ENOTTY) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Make `pgrp` the foreground process group (TIOCSPGRP); through a master,
/// of its slave, which must be the controlling terminal of `pgrp`'s session.
pub fn set_foreground(fd: impl AsFd, pgrp: i32) -> Result<(), Errno> {
    ioctl_int_in(fd, libc::TIOCSPGRP, pgrp)
}

/// Bytes waiting to be read from this end (FIONREAD).
pub fn queued(fd: impl AsFd) -> Result<usize, Errno> {
    ioctl_int_out(fd, libc::FIONREAD).map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_reads_and_sets_back() {
        let master = nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY).unwrap();
        let n = pty_index(&master).unwrap();
        nix::pty::unlockpt(&master).unwrap();
        assert!(!locked(&master).unwrap());
        let slave = peer(&master, libc::O_RDWR | libc::O_NOCTTY).unwrap();
        assert_eq!(
            std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap().to_str(),
            Some(format!("/dev/pts/{n}").as_str())
        );
        let mut t = termios(&slave).unwrap();
        let lflag = termios_flag(&t, TERMIOS_LFLAG) ^ libc::ECHO;
        set_termios_flag(&mut t, TERMIOS_LFLAG, lflag);
        set_termios(&slave, &t).unwrap();
        assert_eq!(termios(&slave).unwrap(), t);
        set_winsize(&slave, [30, 100, 1, 2]).unwrap();
        assert_eq!(winsize(&master).unwrap(), [30, 100, 1, 2]);
        set_packet_mode(&master, true).unwrap();
        assert!(packet_mode(&master).unwrap());
        assert!(!exclusive(&slave).unwrap());
        assert_eq!(session(&master).unwrap(), None);
        nix::unistd::write(&slave, b"out").unwrap();
        // Output reaches the master's queue (after the line discipline).
        let mut waited = 0;
        while queued(&master).unwrap() == 0 && waited < 100 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            waited += 1;
        }
        assert!(queued(&master).unwrap() > 0);
    }
}
