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
        out.push(EpollTarget { fd, events, data });
    }
    Ok(out)
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
        assert_eq!((t[0].fd, t[0].events, t[0].data), (5, 0x19, 5));
        assert_eq!((t[1].fd, t[1].events, t[1].data), (12, 0x8000_0001, u64::MAX));
    }
}
