//! POSIX timers: /proc/PID/timers names each timer (fs/proc/base.c
//! `show_timer`): its id, signal and sigev_value, how it notifies and whom,
//! and its clock. The time left is read with timer_gettime injected into
//! the process. Restore creates each again with the same id
//! (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.15+) and arms it with what was
//! left; overruns are not kept.

use stasis_image::records::PosixTimer;

/// The notify kinds of `show_timer`.
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD: i32 = 2;
const SIGEV_THREAD_ID: i32 = 4;

/// Parse /proc/PID/timers; times are filled in later.
pub fn parse(text: &str) -> Result<Vec<PosixTimer>, String> {
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if key == "ID" {
            out.push(PosixTimer {
                id: value.parse().map_err(|_| format!("bad timer id {value:?}"))?,
                ..Default::default()
            });
            continue;
        }
        let t = out.last_mut().ok_or_else(|| format!("{key} before a timer ID"))?;
        match key {
            "signal" => {
                let (sig, val) = value.split_once('/').ok_or_else(|| format!("bad signal line {value:?}"))?;
                t.signal = sig.parse().map_err(|_| format!("bad signal {sig:?}"))?;
                t.value = u64::from_str_radix(val, 16).map_err(|_| format!("bad sigev_value {val:?}"))?;
            }
            "notify" => {
                // "signal/pid.123", "signal/tid.124", "none/pid.123"
                let (how, who) = value.split_once('/').ok_or_else(|| format!("bad notify line {value:?}"))?;
                let base = match how {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    other => return Err(format!("unknown timer notification {other:?}")),
                };
                let (kind, id) = who.split_once('.').ok_or_else(|| format!("bad notify target {who:?}"))?;
                t.notify = if kind == "tid" { base | SIGEV_THREAD_ID } else { base };
                t.tid = if kind == "tid" { id.parse().map_err(|_| format!("bad tid {id:?}"))? } else { 0 };
            }
            "ClockID" => t.clockid = value.parse().map_err(|_| format!("bad clock {value:?}"))?,
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fixture() {
        let t = parse(
            "ID: 0\nsignal: 14/0000000000001234\nnotify: signal/pid.32582\nClockID: 1\n\
             ID: 3\nsignal: 35/0000000000000000\nnotify: signal/tid.32590\nClockID: 0\n\
             ID: 4\nsignal: 0/0000000000000000\nnotify: none/pid.32582\nClockID: 7\n",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].id, t[0].signal, t[0].value, t[0].notify, t[0].clockid), (0, 14, 0x1234, 0, 1));
        assert_eq!((t[1].id, t[1].signal, t[1].notify, t[1].tid), (3, 35, 4, 32590));
        assert_eq!((t[2].notify, t[2].clockid), (1, 7));
    }
}
