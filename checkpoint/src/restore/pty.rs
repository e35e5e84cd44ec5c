//! The tree's pseudo-terminal pairs, made again by the agent before any
//! process: each at its old index (/dev/pts/N: devpts gives the lowest free
//! index, so /dev/ptmx is opened until N comes, the others closed again),
//! with its settings and its queued bytes. The processes' master fds are
//! the agent's master (one open file description, as there can be no
//! other), their slave fds descriptions of their own on the slave. The
//! session leader takes the slave as its controlling terminal
//! (TIOCSCTTY, injected) and the agent sets the foreground group through
//! the master once every process exists.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use stasis_image::records::Pty;
use stasis_sys::nix::fcntl::OFlag;
use stasis_sys::nix::libc;
use stasis_sys::tty;

use super::RestoreError;

/// A pair made again; the agent holds both ends until the tree runs.
#[derive(Debug)]
pub struct Made {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

fn err(index: u32) -> impl Fn(String) -> RestoreError {
    move |what| RestoreError::Step { step: format!("pseudo-terminal /dev/pts/{index}"), what }
}

/// Every pair of the image, by index; through `ptmx` (the ptmx of a
/// devpts of the tree's own) rather than /dev/ptmx when given.
pub fn make_all(ptys: &[Pty], ptmx: Option<&str>) -> Result<HashMap<u32, Made>, RestoreError> {
    if let Some(path) = ptmx {
        // It must be another instance than this host's.
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &str| std::fs::metadata(p).map(|m| m.dev()).ok();
        if dev(path).is_none() || dev(path) == dev("/dev/pts/ptmx") {
            return Err(RestoreError::Step {
                step: "pseudo-terminals".into(),
                what: format!("{path} is not a devpts of the tree's own"),
            });
        }
    }
    let mut made = HashMap::new();
    for p in ptys {
        made.insert(p.index, make(p, ptmx).map_err(err(p.index))?);
    }
    Ok(made)
}

/// The master of a new pair, at whatever index devpts gives, unlocked so
/// its slave can be opened.
pub fn new_master() -> Result<OwnedFd, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(OFlag::O_NOCTTY.bits())
        .open("/dev/ptmx")
        .map_err(|e| format!("opening /dev/ptmx: {e}"))?
        .into();
    tty::set_locked(&master, false).map_err(|e| format!("unlocking it: {e}"))?;
    Ok(master)
}

/// The master of a new pair at `index`.
fn master_at(index: u32, ptmx: Option<&str>) -> Result<OwnedFd, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = ptmx.unwrap_or("/dev/ptmx");
    let mut others = Vec::new();
    loop {
        let master: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(OFlag::O_NOCTTY.bits())
            .open(path)
            .map_err(|e| format!("opening {path}: {e}"))?
            .into();
        let got = tty::pty_index(&master).map_err(|e| format!("TIOCGPTN: {e}"))?;
        if got == index {
            return Ok(master);
        }
        if got > index {
            return Err(format!(
                "/dev/pts/{index} is taken here (by a terminal of another session); a restore into a devpts of \
                 its own is not supported yet"
            ));
        }
        // A lower free index: hold it until ours comes.
        others.push(master);
    }
}

fn make(p: &Pty, ptmx: Option<&str>) -> Result<Made, String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: stasis_sys::Errno| format!("{what}: {err}")
    };
    let master = master_at(p.index, ptmx)?;
    tty::set_locked(&master, false).map_err(e("TIOCSPTLCK"))?;
    let slave = tty::peer(&master, libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK).map_err(e("TIOCGPTPEER"))?;
    let termios = match p.termios.as_slice().try_into() {
        Ok(t) => t,
        Err(_) => tty::termios(&slave).map_err(e("TCGETS2"))?,
    };
    crate::fd::pty::put_queued(&master, &slave, &termios, &p.to_slave, &p.to_master)?;
    if let [rows, cols, x, y] = p.winsize[..] {
        tty::set_winsize(&slave, [rows as u16, cols as u16, x as u16, y as u16]).map_err(e("TIOCSWINSZ"))?;
    }
    if p.exclusive {
        tty::set_exclusive(&slave).map_err(e("TIOCEXCL"))?;
    }
    if p.packet_mode {
        tty::set_packet_mode(&master, true).map_err(e("TIOCPKT"))?;
    }
    if p.mode != 0 {
        super::deleted::set_owner_and_mode(&slave, p.uid, p.gid, p.mode)
            .map_err(|err| format!("/dev/pts/{}: {err}", p.index))?;
    }
    Ok(Made { master, slave })
}

/// Once the tree's fds are made: lock the slaves that were locked.
pub fn lock(ptys: &[Pty], made: &HashMap<u32, Made>) -> Result<(), RestoreError> {
    for p in ptys.iter().filter(|p| p.locked) {
        let m = made.get(&p.index).ok_or_else(|| err(p.index)("not made".into()))?;
        tty::set_locked(&m.master, true).map_err(|e| err(p.index)(format!("TIOCSPTLCK: {e}")))?;
    }
    Ok(())
}
