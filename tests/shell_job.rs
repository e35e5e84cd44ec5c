//! A shell job: a process whose stdin, stdout and stderr are the terminal
//! stasis itself runs on. Restored from another terminal, those fds point at
//! the restoring terminal (like `criu --shell-job`), and its output shows
//! up there.

mod util;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::openpty;
use util::workload::{is_alive, wait_gone};

struct Pty {
    master: std::fs::File,
    slave: OwnedFd,
    name: String,
}

fn pty() -> Pty {
    let p = openpty(None, None).expect("openpty (needs /dev/ptmx)");
    let name =
        std::fs::read_link(format!("/proc/self/fd/{}", p.slave.as_raw_fd())).unwrap().to_string_lossy().into_owned();
    fcntl(&p.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    Pty { master: p.master.into(), slave: p.slave, name }
}

impl Pty {
    fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().unwrap())
    }

    /// Read what the terminal showed until `want` appears or time runs out.
    fn read_until(&mut self, want: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline && !seen.contains(want) {
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        seen
    }
}

#[test]
fn terminal_fds_follow_the_restoring_terminal() {
    let mut first = pty();
    let mut second = pty();
    // Prints a growing counter to its terminal. It first closes what it
    // inherited beyond stdio (the test runner's pipes).
    let script = "for f in /proc/$$/fd/*; do n=${f##*/}; [ \"$n\" -gt 2 ] && eval \"exec $n>&-\"; done 2>/dev/null; \
                  i=0; while :; do i=$((i+1)); echo tick-$i; read -t 0.1 <> \"$1\" || :; done";
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pace");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut target = Command::new("bash")
        .args(["-c", script, "bash"])
        .arg(&fifo)
        .stdin(first.stdio())
        .stdout(first.stdio())
        .stderr(first.stdio())
        .spawn()
        .expect("run bash (needs bash)");
    let pid = target.id() as i32;
    std::thread::sleep(Duration::from_millis(500));
    let images = dir.path().join("image");

    // Dumped by a stasis on the same terminal.
    let dumped = util::stasis()
        .args(["dump", "--pid", &pid.to_string(), "--images", images.to_str().unwrap()])
        .stdin(first.stdio())
        .stdout(first.stdio())
        .stderr(first.stdio())
        .status()
        .unwrap();
    assert!(
        dumped.success(),
        "dump failed: {}",
        first
            .read_until("stasis: error", Duration::from_secs(2))
            .lines()
            .filter(|l| !l.starts_with("tick"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    target.wait().unwrap();
    let v = util::run(["inspect", "--json", images.to_str().unwrap()]).success().json();
    // bash moves fds about while it reads (its stdin is saved elsewhere
    // during `read <> fifo`): take the fds the image holds as terminals.
    let ttys: Vec<i64> = v["processes"][0]["fds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "tty")
        .inspect(|f| assert_eq!(f["target"], first.name.as_str()))
        .map(|f| f["fd"].as_i64().unwrap())
        .collect();
    assert!(ttys.len() >= 2, "expected stdout and stderr on the terminal: {v}");

    // Restored by a stasis on another terminal.
    let restored = util::stasis()
        .args(["restore", "--images", images.to_str().unwrap()])
        .stdin(second.stdio())
        .stdout(Stdio::piped())
        .stderr(second.stdio())
        .output()
        .unwrap();
    assert!(restored.status.success(), "restore failed: {}", second.read_until("error", Duration::from_secs(1)));
    for fd in ttys {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(link.to_string_lossy(), second.name, "fd {fd} of the restored process");
    }
    let seen = second.read_until("tick-", Duration::from_secs(10));
    assert!(seen.contains("tick-"), "no output on the restoring terminal: {seen:?}");
    assert!(is_alive(pid));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(wait_gone(pid, Duration::from_secs(10)));
}
