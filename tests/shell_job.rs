//! A shell job: a process whose stdin, stdout and stderr are a terminal of
//! a session outside the image. Restored with --shell-job from another
//! terminal, those fds point at the restoring terminal (like `criu
//! --shell-job`), and its output shows up there; without it the restore is
//! refused, and a terminal that another session has taken since the dump is
//! never handed over.

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

/// A bash loop on `term` printing a growing counter (tick-N), paced by
/// reads on a FIFO in `dir`. It first closes what it inherited beyond
/// stdio (the test runner's pipes).
fn ticker(term: &Pty, dir: &std::path::Path) -> std::process::Child {
    let script = "for f in /proc/$$/fd/*; do n=${f##*/}; [ \"$n\" -gt 2 ] && eval \"exec $n>&-\"; done 2>/dev/null; \
                  i=0; while :; do i=$((i+1)); echo tick-$i; read -t 0.1 <> \"$1\" || :; done";
    let fifo = dir.join("pace");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    Command::new("bash")
        .args(["-c", script, "bash"])
        .arg(&fifo)
        .stdin(term.stdio())
        .stdout(term.stdio())
        .stderr(term.stdio())
        .spawn()
        .expect("run bash (needs bash)")
}

#[test]
fn terminal_fds_follow_the_restoring_terminal() {
    let mut first = pty();
    let mut second = pty();
    let dir = tempfile::tempdir().unwrap();
    let mut target = ticker(&first, dir.path());
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
        .inspect(|f| assert!(f["target"].as_str().unwrap().starts_with(&first.name), "{f}"))
        .map(|f| f["fd"].as_i64().unwrap())
        .collect();
    assert!(ttys.len() >= 2, "expected stdout and stderr on the terminal: {v}");

    // Restored by a stasis on another terminal.
    let restored = util::stasis()
        .args(["restore", "--shell-job", "--images", images.to_str().unwrap()])
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

/// The program on a terminal, dumped by a stasis that is not on it; the
/// terminal is then closed and its /dev/pts/N taken by another session. A
/// restore without --shell-job refuses, naming the fd and the terminal,
/// creates nothing, and that session's terminal gets nothing; with
/// --shell-job from a third terminal the program goes on there.
#[test]
fn a_terminal_taken_by_another_session_is_never_handed_over() {
    let first = pty();
    let dir = tempfile::tempdir().unwrap();
    let mut target = ticker(&first, dir.path());
    let pid = target.id() as i32;
    std::thread::sleep(Duration::from_millis(300));
    let images = dir.path().join("image");
    util::run(["dump", "--pid", &pid.to_string(), "--images", images.to_str().unwrap()]).success();
    target.wait().unwrap();
    let name = first.name.clone();
    drop(first);

    // Another session takes the same /dev/pts/N (the lowest free index:
    // open terminals until one gets it).
    let mut spare = Vec::new();
    let mut taken = loop {
        let p = pty();
        if p.name == name {
            break p;
        }
        assert!(spare.len() < 64, "no new terminal got {name} back");
        spare.push(p);
    };
    drop(spare);
    let mut other = Command::new("setsid")
        .args(["sleep", "1000"])
        .stdin(taken.stdio())
        .stdout(taken.stdio())
        .stderr(taken.stdio())
        .spawn()
        .expect("run setsid sleep");

    let refused = util::run(["restore", "--images", images.to_str().unwrap()]).expect_code(1);
    assert!(
        refused.stderr.contains(&format!("is the terminal {name}")) && refused.stderr.contains("--shell-job"),
        "the refusal does not name the terminal and the way out\n{}",
        refused.dump()
    );
    assert!(!is_alive(pid), "a refused restore left a process at {pid}");
    let leaked = taken.read_until("tick-", Duration::from_millis(500));
    assert!(!leaked.contains("tick-"), "the other session's terminal got the program's output: {leaked:?}");

    // Any fd handed in for it: a fourth terminal, as fd 5 of the stasis.
    let mut fourth = pty();
    let rdev = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&name).unwrap().rdev()
    };
    let key = format!("tty:[{}:{}]", nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let handed = util::run_command({
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(r#"exec "$0" restore --images "$1" --inherit-fd "fd[5]:$2" 5<>"$3""#)
            .arg(env!("CARGO_BIN_EXE_stasis"))
            .arg(&images)
            .arg(&key)
            .arg(&fourth.name)
            .stdin(Stdio::null());
        cmd
    })
    .success();
    assert_eq!(handed.stdout.trim(), pid.to_string(), "{}", handed.dump());
    let seen = fourth.read_until("tick-", Duration::from_secs(10));
    assert!(seen.contains("tick-"), "no output on the terminal handed in: {seen:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(wait_gone(pid, Duration::from_secs(10)));

    let mut third = pty();
    let restored = util::stasis()
        .args(["restore", "--shell-job", "--images", images.to_str().unwrap()])
        .stdin(third.stdio())
        .stdout(Stdio::piped())
        .stderr(third.stdio())
        .output()
        .unwrap();
    assert!(restored.status.success(), "restore failed: {}", third.read_until("error", Duration::from_secs(1)));
    let seen = third.read_until("tick-", Duration::from_secs(10));
    assert!(seen.contains("tick-"), "no output on the restoring terminal: {seen:?}");
    let leaked = taken.read_until("tick-", Duration::from_millis(300));
    assert!(!leaked.contains("tick-"), "the other session's terminal got the program's output: {leaked:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(wait_gone(pid, Duration::from_secs(10)));
    let _ = other.kill();
    let _ = other.wait();
}
