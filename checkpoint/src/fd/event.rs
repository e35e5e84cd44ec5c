//! eventfd, timerfd, signalfd and pidfd: kernel objects whose whole state
//! is in /proc/PID/fdinfo (fs/eventfd.c, fs/timerfd.c, fs/signalfd.c,
//! kernel/pid.c `*_show_fdinfo`), re-created at restore.
//!
//! A pidfd names a process: the restored process itself (made again inside
//! it once it exists), or another process, which must still be running at
//! restore (a pidfd cannot name a process that is gone). A pidfd whose
//! process had already exited at dump time (`Pid: -1`) is refused.
//!
//! A timerfd is restored relative: it fires after the time that was left at
//! dump time, counted from the restore (the time the process was not
//! running does not count), and with its interval. Expirations that had
//! happened but were not read yet are restored as one pending expiry (the
//! timer fires at once), since the kernel offers no way to set the count.

use stasis_image::records::{fd::Kind, Eventfd, Signalfd, Timerfd};
use stasis_sys::Pid;

use super::Seen;
use crate::proc;

pub fn dump(pid: Pid, seen: &Seen) -> Result<Kind, String> {
    let text = proc::read(pid, &format!("fdinfo/{}", seen.fd)).map_err(|e| format!("fdinfo: {e}"))?;
    match seen.kind {
        Ok(super::Kind::Eventfd) => parse_eventfd(&text).map(Kind::Eventfd),
        Ok(super::Kind::Timerfd) => parse_timerfd(&text).map(Kind::Timerfd),
        Ok(super::Kind::Signalfd) => parse_signalfd(&text).map(Kind::Signalfd),
        Ok(super::Kind::Pidfd) => {
            let mut pidfd = parse_pidfd(&text)?;
            if pidfd.pid == -1 {
                pidfd.dead_ino = seen.ino;
            }
            Ok(Kind::Pidfd(pidfd))
        }
        _ => Err(format!("{} is not an event fd", seen.target)),
    }
}

fn field<'a>(text: &'a str, name: &str) -> Result<&'a str, String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .ok_or_else(|| format!("no {name} in fdinfo"))
}

pub fn parse_eventfd(text: &str) -> Result<Eventfd, String> {
    let count = u64::from_str_radix(field(text, "eventfd-count")?, 16).map_err(|e| format!("eventfd-count: {e}"))?;
    // Older kernels do not show the mode; those only had EFD_SEMAPHORE via
    // the flags, which fdinfo does not show: assume the common case.
    let semaphore = field(text, "eventfd-semaphore").is_ok_and(|v| v == "1");
    Ok(Eventfd { count, semaphore })
}

/// "(sec, nsec)" as nanoseconds.
fn timespec(v: &str) -> Result<u64, String> {
    let inner = v.trim().trim_start_matches('(').trim_end_matches(')');
    let (s, ns) = inner.split_once(',').ok_or_else(|| format!("bad time {v:?}"))?;
    let s: u64 = s.trim().parse().map_err(|_| format!("bad time {v:?}"))?;
    let ns: u64 = ns.trim().parse().map_err(|_| format!("bad time {v:?}"))?;
    Ok(s * 1_000_000_000 + ns)
}

pub fn parse_timerfd(text: &str) -> Result<Timerfd, String> {
    Ok(Timerfd {
        clockid: field(text, "clockid")?.parse().map_err(|_| "bad clockid".to_string())?,
        ticks: field(text, "ticks")?.parse().map_err(|_| "bad ticks".to_string())?,
        settime_flags: u32::from_str_radix(field(text, "settime flags")?, 8).map_err(|_| "bad settime flags")?,
        value_ns: timespec(field(text, "it_value")?)?,
        interval_ns: timespec(field(text, "it_interval")?)?,
    })
}

pub fn parse_pidfd(text: &str) -> Result<stasis_image::records::Pidfd, String> {
    let pid: i32 = field(text, "Pid")?.parse().map_err(|_| "bad Pid in fdinfo".to_string())?;
    // -1: the process has exited (and was reaped); 0: it is in a PID
    // namespace this one does not see into.
    if pid == 0 {
        return Err("a pidfd of a process outside stasis's PID namespace (not supported)".into());
    }
    if pid < 0 {
        return Ok(stasis_image::records::Pidfd { pid: -1, ..Default::default() });
    }
    Ok(stasis_image::records::Pidfd { pid, ..Default::default() })
}

pub fn parse_signalfd(text: &str) -> Result<Signalfd, String> {
    Ok(Signalfd { mask: u64::from_str_radix(field(text, "sigmask")?, 16).map_err(|e| format!("sigmask: {e}"))? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fixtures() {
        let e = parse_eventfd(
            "pos:\t0\nflags:\t02\neventfd-count:               1f\neventfd-id: 1\neventfd-semaphore: 1\n",
        )
        .unwrap();
        assert_eq!(e, Eventfd { count: 0x1f, semaphore: true });
        let t = parse_timerfd(
            "clockid: 1\nticks: 3\nsettime flags: 01\nit_value: (99, 999936453)\nit_interval: (3600, 0)\n",
        )
        .unwrap();
        assert_eq!((t.clockid, t.ticks, t.settime_flags), (1, 3, 1));
        assert_eq!((t.value_ns, t.interval_ns), (99_999_936_453, 3_600_000_000_000));
        assert_eq!(parse_signalfd("sigmask:\t0000000000000200\n").unwrap().mask, 0x200);
        assert_eq!(parse_pidfd("pos:\t0\nPid:\t20850\nNSpid:\t20850\n").unwrap().pid, 20850);
        // Of an exited process: -1; of one in a namespace not seen into: 0.
        assert_eq!(parse_pidfd("Pid:\t-1\nNSpid:\t-1\n").unwrap().pid, -1);
        assert!(parse_pidfd("Pid:\t0\n").is_err());
    }
}
