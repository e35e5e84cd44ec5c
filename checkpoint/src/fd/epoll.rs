//! epoll instances. /proc/PID/fdinfo of an epoll fd lists each registration
//! (fs/eventpoll.c `ep_show_fdinfo`): the watched fd by the process's own
//! number, its event mask and its data. Registrations are keyed by that fd
//! number, so restore re-creates the instance inside the process and adds
//! each registration there, after every other fd is in place.
//!
//! What is not restored: which events were ready but not yet collected at
//! dump time; the kernel re-computes readiness when a watched fd is added,
//! so level-triggered registrations report again, and an edge-triggered one
//! reports an edge that was already pending.

use stasis_image::records::{fd::Kind, Epoll, EpollTarget};
use stasis_sys::Pid;
use std::collections::HashMap;

use super::Seen;
use crate::proc;

pub fn dump(pid: Pid, seen: &Seen) -> Result<Kind, String> {
    let text = proc::read(pid, &format!("fdinfo/{}", seen.fd)).map_err(|e| format!("fdinfo: {e}"))?;
    Ok(Kind::Epoll(Epoll { targets: parse(&text)? }))
}

/// The `tfd:` lines of an epoll fd's fdinfo.
pub fn parse(text: &str) -> Result<Vec<EpollTarget>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        let mut words = line.split_whitespace();
        let mut field = |name: &str| {
            while let Some(w) = words.next() {
                if w == name {
                    return words.next().ok_or_else(|| format!("no value for {name} in {line:?}"));
                }
            }
            Err(format!("no {name} in {line:?}"))
        };
        let fd = field("tfd:")?.parse().map_err(|_| format!("bad tfd in {line:?}"))?;
        let events = u32::from_str_radix(field("events:")?, 16).map_err(|_| format!("bad events in {line:?}"))?;
        let data = u64::from_str_radix(field("data:")?, 16).map_err(|_| format!("bad data in {line:?}"))?;
        // "pos:0 ino:2a1c sdev:c", each word with its value.
        let ino = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ino:"))
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(|| format!("no ino in {line:?}"))?;
        out.push(EpollTarget { fd, events, data, ino, via: None, holder: None });
    }
    Ok(out)
}

/// Registrations whose fd number the process closed (or reused) after
/// adding it still watch their file: name the process's fd that holds it
/// now (`via`), found by kcmp `KCMP_EPOLL_TFD` (both ends of a pipe share
/// an inode); one held by no fd of the process is an error.
pub fn find_closed(pid: Pid, epfd: i32, targets: &mut [EpollTarget], fds: &[Seen]) -> Result<(), String> {
    // Registrations under one number, in fdinfo's order, are told apart
    // by their rank among those (kcmp's `toff`).
    let mut seen_under: HashMap<i32, u32> = HashMap::new();
    for t in targets {
        let toff = *seen_under.entry(t.fd).and_modify(|n| *n += 1).or_insert(0);
        let same = |fd: i32| stasis_sys::kcmp::same_epoll_target(pid, fd, epfd, t.fd, toff).unwrap_or(false);
        if fds.iter().any(|s| s.fd == t.fd && s.ino == t.ino) && same(t.fd) {
            continue;
        }
        let holder = fds.iter().filter(|s| s.ino == t.ino).find(|s| same(s.fd)).ok_or_else(|| {
            format!(
                "it watches, as fd {}, a file (inode {}) the process holds no fd on any more (not supported)",
                t.fd, t.ino
            )
        })?;
        t.via = Some(holder.fd);
    }
    Ok(())
}

/// The registrations of an epoll passed in flight (the agent's copy
/// `epfd`, held by no process of the tree: their numbers were some
/// process's): for each, the fd of a process of the tree (`fds`, every fd
/// of the tree) that holds the watched file, found by kcmp
/// `KCMP_EPOLL_TFD`; one no process holds is an error.
pub fn find_holders(epfd: i32, targets: &mut [EpollTarget], fds: &[(Pid, Seen)]) -> Result<(), String> {
    let mut seen_under: HashMap<i32, u32> = HashMap::new();
    for t in targets {
        let toff = *seen_under.entry(t.fd).and_modify(|n| *n += 1).or_insert(0);
        let same = |pid: Pid, fd: i32| {
            stasis_sys::kcmp::epoll_target_is(pid, fd, Pid::this(), epfd, t.fd, toff).unwrap_or(false)
        };
        let (pid, s) = fds.iter().filter(|(_, s)| s.ino == t.ino).find(|(p, s)| same(*p, s.fd)).ok_or_else(|| {
            format!(
                "it watches, as fd {}, a file (inode {}) no process of the tree holds an fd on (not supported)",
                t.fd, t.ino
            )
        })?;
        t.holder = Some(stasis_image::records::FdRef { pid: pid.as_raw(), fd: s.fd });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fixture() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\n\
            tfd:        5 events:       19 data:                5  pos:0 ino:2a1c sdev:c\n\
            tfd:       12 events: 80000001 data: ffffffffffffffff  pos:0 ino:2a1d sdev:c\n";
        let t = parse(text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].fd, t[0].events, t[0].data, t[0].ino), (5, 0x19, 5, 0x2a1c));
        assert_eq!((t[1].fd, t[1].events, t[1].data), (12, 0x8000_0001, u64::MAX));
    }
}
