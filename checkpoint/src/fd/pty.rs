//! Pseudo-terminal pairs whose master the tree holds (a tmux server and its
//! panes, an ssh daemon's sessions). The pair is dumped once, from a master
//! fd: its index, the slave's settings (termios, window size, exclusive
//! mode), the master's packet mode and lock, the session it controls and
//! that session's foreground group, and the bytes queued each way. A slave
//! fd of such a pair is recorded by index ([`slaves_of_the_tree`]).
//!
//! A terminal has no way to read its queues without consuming them, so the
//! bytes are read out while the tree is stopped, and written back the same
//! way they came (typed bytes through the master, output through the slave)
//! when the tree runs on: [`Captured`] does so unless told the tree was
//! killed, on every path.

use std::os::fd::OwnedFd;

use stasis_image::records::{self, fd::Kind as RecordKind};
use stasis_sys::nix::libc;
use stasis_sys::tty;

/// One pair, read while the tree is stopped, with what is needed to put its
/// queued bytes back.
#[derive(Debug)]
pub struct Captured {
    pub record: records::Pty,
    master: OwnedFd,
    slave: OwnedFd,
    /// The tree is gone: nothing to put back.
    killed: bool,
}

/// The index of the pair behind a master fd (the agent's copy).
pub fn index(master: &OwnedFd) -> Result<u32, String> {
    tty::pty_index(master).map_err(|e| format!("TIOCGPTN: {e}"))
}

/// Read the pair of `master` (the agent's copy of a tree's master fd).
pub fn capture(master: &OwnedFd) -> Result<Captured, String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: stasis_sys::Errno| format!("{what}: {err}")
    };
    let index = index(master)?;
    let master = master.try_clone().map_err(|err| format!("dup: {err}"))?;
    // A locked slave opens for nobody: unlocked for the moment.
    let locked = tty::locked(&master).map_err(e("TIOCGPTLCK"))?;
    if locked {
        tty::set_locked(&master, false).map_err(e("TIOCSPTLCK"))?;
    }
    let slave = tty::peer(&master, libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK);
    if locked {
        tty::set_locked(&master, true).map_err(e("TIOCSPTLCK"))?;
    }
    let slave = slave.map_err(e("TIOCGPTPEER"))?;
    let termios = tty::termios(&slave).map_err(e("TCGETS2"))?;
    let packet_mode = tty::packet_mode(&master).map_err(e("TIOCGPKT"))?;
    let mut record = records::Pty {
        index,
        termios: termios.to_vec(),
        winsize: tty::winsize(&slave).map_err(e("TIOCGWINSZ"))?.iter().map(|v| u32::from(*v)).collect(),
        packet_mode,
        locked,
        exclusive: tty::exclusive(&slave).map_err(e("TIOCGEXCL"))?,
        session: tty::session(&master).map_err(e("TIOCGSID"))?.unwrap_or(0),
        foreground: tty::foreground(&master).map_err(e("TIOCGPGRP"))?.unwrap_or(0),
        to_master: Vec::new(),
        to_slave: Vec::new(),
        ..records::Pty::default()
    };
    // The slave's node: grantpt(3) or a program may have changed it.
    let node = stasis_sys::nix::sys::stat::fstat(&slave).map_err(e("fstat"))?;
    (record.mode, record.uid, record.gid) = (node.st_mode & 0o7777, node.st_uid, node.st_gid);
    // Output for the master: read it without packet mode's status bytes.
    if packet_mode {
        tty::set_packet_mode(&master, false).map_err(e("TIOCPKT"))?;
    }
    let read = drain(&master, &mut record.to_master);
    if packet_mode {
        tty::set_packet_mode(&master, true).map_err(e("TIOCPKT"))?;
    }
    read.map_err(|err| format!("reading its output queue: {err}"))?;
    // Input for the slave: a partial line of canonical mode shows only in
    // non-canonical mode.
    let mut raw = termios;
    let lflag = tty::termios_flag(&raw, tty::TERMIOS_LFLAG) & !libc::ICANON;
    tty::set_termios_flag(&mut raw, tty::TERMIOS_LFLAG, lflag);
    tty::set_termios(&slave, &raw).map_err(e("TCSETS2"))?;
    let read = drain(&slave, &mut record.to_slave);
    tty::set_termios(&slave, &termios).map_err(e("TCSETS2"))?;
    read.map_err(|err| format!("reading its input queue: {err}"))?;
    Ok(Captured { record, master, slave, killed: false })
}

/// Read what is queued on `fd`, by FIONREAD's count (so a blocking fd does
/// not block).
fn drain(fd: &OwnedFd, out: &mut Vec<u8>) -> Result<(), stasis_sys::Errno> {
    loop {
        let n = tty::queued(fd)?;
        if n == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; n];
        match stasis_sys::nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(stasis_sys::Errno::EAGAIN) => return Ok(()),
            Ok(got) => out.extend_from_slice(&buf[..got]),
            Err(stasis_sys::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Put queued bytes into a pair as they were: `to_slave` typed in through
/// the master with echo, signals and input translation off (they were
/// translated already), `to_master` written on the slave with output
/// processing off; then the settings `termios`.
pub fn put_queued(
    master: &OwnedFd,
    slave: &OwnedFd,
    termios: &[u8; tty::TERMIOS2_LEN],
    to_slave: &[u8],
    to_master: &[u8],
) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: stasis_sys::Errno| format!("{what}: {err}")
    };
    if !to_slave.is_empty() {
        let mut raw = *termios;
        let lflag = tty::termios_flag(&raw, tty::TERMIOS_LFLAG)
            & !(libc::ECHO | libc::ECHONL | libc::ECHOE | libc::ECHOK | libc::ISIG | libc::IEXTEN);
        tty::set_termios_flag(&mut raw, tty::TERMIOS_LFLAG, lflag);
        let iflag = tty::termios_flag(&raw, tty::TERMIOS_IFLAG)
            & !(libc::ICRNL | libc::INLCR | libc::IGNCR | libc::ISTRIP | libc::IXON | libc::IUCLC);
        tty::set_termios_flag(&mut raw, tty::TERMIOS_IFLAG, iflag);
        tty::set_termios(slave, &raw).map_err(e("TCSETS2"))?;
        write_all(master, to_slave).map_err(|err| format!("typing {} queued bytes back: {err}", to_slave.len()))?;
    }
    if !to_master.is_empty() {
        let mut raw = *termios;
        let oflag = tty::termios_flag(&raw, tty::TERMIOS_OFLAG) & !libc::OPOST;
        tty::set_termios_flag(&mut raw, tty::TERMIOS_OFLAG, oflag);
        tty::set_termios(slave, &raw).map_err(e("TCSETS2"))?;
        write_all(slave, to_master).map_err(|err| format!("writing {} queued bytes back: {err}", to_master.len()))?;
    }
    tty::set_termios(slave, termios).map_err(e("TCSETS2"))
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> Result<(), stasis_sys::Errno> {
    while !data.is_empty() {
        match stasis_sys::nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(stasis_sys::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Captured {
    /// The tree was killed: its pairs are gone with it.
    pub fn killed(mut self) {
        self.killed = true;
    }

    /// Put the queued bytes back, for a tree that runs on.
    pub fn put_back(mut self) -> Result<(), String> {
        self.killed = true;
        self.put()
    }

    fn put(&self) -> Result<(), String> {
        let termios: [u8; tty::TERMIOS2_LEN] =
            self.record.termios.as_slice().try_into().map_err(|_| "termios of another size".to_string())?;
        if self.record.to_slave.is_empty() && self.record.to_master.is_empty() {
            return Ok(());
        }
        // Without packet mode meanwhile: the settings changed for the
        // moment would queue status bytes for the master (TIOCPKT_DOSTOP),
        // which turning it on again clears.
        let packet = self.record.packet_mode;
        if packet {
            tty::set_packet_mode(&self.master, false).map_err(|e| format!("TIOCPKT: {e}"))?;
        }
        let put = put_queued(&self.master, &self.slave, &termios, &self.record.to_slave, &self.record.to_master);
        if packet {
            tty::set_packet_mode(&self.master, true).map_err(|e| format!("TIOCPKT: {e}"))?;
        }
        put
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        if !self.killed {
            if let Err(e) = self.put() {
                tracing::warn!("pseudo-terminal {}: its queued bytes could not be put back: {e}", self.record.index);
            }
        }
    }
}

/// The pair index of a pts device number: /dev/pts/N is device 136:N
/// (minors of 20 bits, majors 136-143 for the rest).
pub fn index_of_slave(rdev: u64) -> Option<u32> {
    let (major, minor) = (super::dev_major(rdev), super::dev_minor(rdev));
    (136..=143).contains(&major).then(|| (((major - 136) << 20) + minor) as u32)
}

/// Turn the slave fds of the tree's own pairs (recorded as terminals) into
/// slaves of those pairs, by index; and /dev/tty, for a process whose
/// controlling terminal (`ctty`, its stat's tty_nr) is one of them, into
/// that slave (the same terminal, opened by its own name).
pub fn slaves_of_the_tree(fds: &mut [records::Fd], indices: &std::collections::BTreeSet<u32>, ctty: u64) {
    let own = index_of_slave(ctty).filter(|i| indices.contains(i));
    for f in fds {
        // A hung-up slave is no pair's now, whatever took its index since.
        let Some(RecordKind::Tty(t)) = f.kind.as_ref().filter(|k| !matches!(k, RecordKind::Tty(t) if t.hung_up)) else {
            continue;
        };
        let index = match index_of_slave(t.rdev) {
            Some(i) => Some(i),
            None if t.rdev == crate::proc::makedev(5, 0) => own,
            None => None,
        };
        if let Some(i) = index.filter(|i| indices.contains(i)) {
            f.kind = Some(RecordKind::PtySlave(i));
        }
    }
}
