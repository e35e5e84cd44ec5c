//! Pseudo-terminal pairs the tree owns: a tmux server with two panes, each
//! running a program on its own terminal, is dumped, killed and restored;
//! `tmux` (driven through `send-keys` and `capture-pane`, as a user would
//! through `tmux attach`) then shows both panes, whose programs carry on
//! from where they were and answer what is typed.

mod util;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use util::spawned::{python3, tempdir, tool};
use util::workload::{is_alive, wait_gone};

/// A tmux server on its own socket in DIR, killed when dropped.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(tool("tmux"))
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run tmux {args:?}: {e}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn server_pid(&self) -> i32 {
        self.ok(&["display-message", "-p", "#{pid}"]).trim().parse().expect("the server's pid")
    }

    /// The last number a pane printed after `word` ("tick 12" -> 12).
    fn last(&self, pane: &str, word: &str) -> Option<u64> {
        let screen = self.ok(&["capture-pane", "-p", "-t", pane]);
        screen.lines().rev().find_map(|l| l.strip_prefix(word)?.trim().parse().ok())
    }

    fn wait_last(&self, pane: &str, word: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(n) = self.last(pane, word).filter(|&n| n >= at_least) {
                return n;
            }
            assert!(Instant::now() < deadline, "pane {pane}: no {word:?} {at_least} on\n{}", self.screen(pane));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn screen(&self, pane: &str) -> String {
        self.ok(&["capture-pane", "-p", "-t", pane])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The parent of `pid`, from /proc (its name may hold spaces).
fn parent(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat[stat.rfind(')').map_or(0, |i| i + 2)..].split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// Restore the server: at its pid, or (when other sessions hold its panes'
/// /dev/pts/N by then, as tests running alongside may) into a new PID
/// namespace with a devpts of its own, whose init is killed when dropped.
fn restore(server: i32, images: &Path) -> (i32, Option<util::pidns::NamespaceInit>) {
    let r = util::run(["restore", "--images", images.to_str().unwrap()]).success();
    let host: i32 = r.stdout.trim().parse().unwrap_or_else(|_| panic!("no pid printed\n{}", r.dump()));
    if host == server {
        return (host, None);
    }
    assert!(r.stderr.contains("devpts of its own"), "restored at another pid, and not for its terminals\n{}", r.dump());
    (host, Some(util::pidns::NamespaceInit(parent(host))))
}

/// Two panes: a bash loop counting ticks that answers a typed line with
/// "got LINE" (holding /dev/tty open as fd 7, as programs that talk to
/// their terminal do), and a python counter.
fn start(dir: &Path) -> Tmux {
    let t = Tmux { socket: dir.join("sock") };
    let bash =
        r#"exec 7<>/dev/tty; i=0; while :; do i=$((i+1)); echo "tick $i"; read -t 0.3 line && echo "got $line"; done"#;
    let py = dir.join("count.py");
    std::fs::write(
        &py,
        "import time\ni = 0\nwhile True:\n    i += 1\n    print('py', i, flush=True)\n    time.sleep(0.3)\n",
    )
    .unwrap();
    t.ok(&["new-session", "-d", "-s", "w", "-x", "100", "-y", "30", &format!("bash -c '{bash}'")]);
    t.ok(&["split-window", "-t", "w", &format!("{} -I {}", python3().display(), py.display())]);
    t
}

#[test]
fn tmux_server_with_two_panes_round_trip() {
    let dir = tempdir("tmux");
    let t = start(dir.path());
    let server = t.server_pid();
    t.wait_last("w:0.0", "tick", 3);
    t.wait_last("w:0.1", "py", 3);
    let images = tempdir("tmux-img");
    util::spawned::dump_ok(server, images.path(), &[]);
    assert!(wait_gone(server, Duration::from_secs(30)), "the server outlived its dump");
    assert!(!t.run(&["list-sessions"]).status.success(), "a tmux server still answers after the dump");

    let (server, _init) = restore(server, images.path());
    // Both panes are there and their programs go on from where they were:
    // the counts are past what the image holds, not started again.
    let screen0 = t.screen("w:0.0");
    let at_restore = t.last("w:0.0", "tick").unwrap_or_else(|| panic!("no ticks in pane 0:\n{screen0}"));
    let py_at_restore = t.last("w:0.1", "py").expect("no count in pane 1");
    assert!(at_restore >= 3 && py_at_restore >= 3, "the panes lost their screens: {at_restore} {py_at_restore}");
    t.wait_last("w:0.0", "tick", at_restore + 3);
    t.wait_last("w:0.1", "py", py_at_restore + 3);
    let screen = t.screen("w:0.0");
    let ticks: Vec<u64> = screen.lines().filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok()).collect();
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "pane 0 did not count on one by one:\n{screen}");
    // Typing reaches the program in the pane.
    t.ok(&["send-keys", "-t", "w:0.0", "hello after restore", "Enter"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.screen("w:0.0").contains("got hello after restore") {
        assert!(Instant::now() < deadline, "pane 0 did not answer:\n{}", t.screen("w:0.0"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(is_alive(server));
}

/// --leave-running: the server and its panes run on untouched (the bytes
/// queued in the terminals while it was stopped are put back), answer what
/// is typed; once it is gone, the image restores it as at the dump.
#[test]
fn tmux_server_leave_running() {
    let dir = tempdir("tmux-lr");
    let t = start(dir.path());
    let server = t.server_pid();
    t.wait_last("w:0.0", "tick", 3);
    let images = tempdir("tmux-lr-img");
    util::spawned::dump_ok(server, images.path(), &["--leave-running"]);
    let at_dump = t.last("w:0.0", "tick").unwrap();
    t.wait_last("w:0.0", "tick", at_dump + 3);
    t.ok(&["send-keys", "-t", "w:0.0", "still here", "Enter"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.screen("w:0.0").contains("got still here") {
        assert!(Instant::now() < deadline, "pane 0 did not answer after the dump:\n{}", t.screen("w:0.0"));
        std::thread::sleep(Duration::from_millis(50));
    }
    t.ok(&["kill-server"]);
    assert!(wait_gone(server, Duration::from_secs(30)), "the server outlived kill-server");
    let (_, _init) = restore(server, images.path());
    let screen = t.screen("w:0.0");
    assert!(!screen.contains("got still here"), "the restored screen is from after the dump:\n{screen}");
    let restored = t.last("w:0.0", "tick").expect("no ticks after the restore");
    t.wait_last("w:0.0", "tick", restored + 3);
    t.wait_last("w:0.1", "py", 1);
}

/// The panes' /dev/pts/N taken by other sessions by the time of the
/// restore: the server and its panes go into a new PID namespace with a
/// devpts of their own, where each pair has its index again (said on
/// stderr), and everything works as before; the other sessions' terminals
/// are left alone.
#[test]
fn tmux_panes_whose_terminals_were_taken() {
    use std::os::fd::AsRawFd;
    let dir = tempdir("tmux-taken");
    let t = start(dir.path());
    let server = t.server_pid();
    t.wait_last("w:0.0", "tick", 3);
    let panes = t.ok(&["list-panes", "-t", "w", "-F", "#{pane_tty}"]);
    let images = tempdir("tmux-taken-img");
    util::spawned::dump_ok(server, images.path(), &[]);
    assert!(wait_gone(server, Duration::from_secs(30)));
    // Other sessions take the panes' terminals: this test opens pairs until
    // it holds each pane's /dev/pts/N. A test running alongside may hold one
    // for a while; pairs past the panes' numbers are closed again and the
    // test tries until that one is free (the lowest free number is given).
    let pane_names: Vec<&str> = panes.lines().collect();
    let index = |name: &str| name.rsplit('/').next().and_then(|n| n.parse::<u32>().ok()).unwrap_or(u32::MAX);
    let highest = pane_names.iter().map(|p| index(p)).max().expect("no panes");
    let name_of =
        |p: &nix::pty::OpenptyResult| std::fs::read_link(format!("/proc/self/fd/{}", p.slave.as_raw_fd())).unwrap();
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pane_names.iter().all(|pane| held.iter().any(|p| name_of(p) == Path::new(pane))) {
        assert!(Instant::now() < deadline, "{panes} never came free to be taken");
        let pair = nix::pty::openpty(None, None).expect("openpty");
        if index(&name_of(&pair).to_string_lossy()) <= highest {
            held.push(pair);
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let r = util::run(["restore", "--images", images.path().to_str().unwrap()]).success();
    assert!(r.stderr.contains("devpts of its own"), "no notice\n{}", r.dump());
    let host: i32 = r.stdout.trim().parse().unwrap();
    let _init = util::pidns::NamespaceInit(parent(host));
    // The panes see the same /dev/pts/N in their own devpts.
    assert_eq!(t.ok(&["list-panes", "-t", "w", "-F", "#{pane_tty}"]), panes);
    let at = t.last("w:0.0", "tick").expect("no ticks after the restore");
    t.wait_last("w:0.0", "tick", at + 3);
    t.ok(&["send-keys", "-t", "w:0.0", "in a devpts of its own", "Enter"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.screen("w:0.0").contains("got in a devpts of its own") {
        assert!(Instant::now() < deadline, "pane 0 did not answer:\n{}", t.screen("w:0.0"));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The other sessions' terminals got nothing.
    for p in &held {
        let mut buf = [0u8; 64];
        nix::fcntl::fcntl(&p.master, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
        assert!(nix::unistd::read(&p.master, &mut buf).is_err(), "another session's terminal got output");
    }
}

/// Holds a pseudo-terminal pair with every setting away from its default
/// and bytes queued both ways, then checks them all after DIR/check shows
/// up: the same /dev/pts/N, termios (no echo, ^A as VINTR), window size,
/// packet mode, exclusive mode, the slave locked, the output queued for the
/// master (after the line discipline: "\r\n"), the typed line and the
/// partial line queued for the slave.
const PTY_SCRIPT: &str = r#"
import fcntl, os, struct, sys, termios, time
d = sys.argv[1]
TIOCGPKT, TIOCGEXCL, TIOCSPTLCK, TIOCGPTLCK = 0x80045438, 0x80045440, 0x40045431, 0x80045439
m, s = os.openpty()
a = termios.tcgetattr(s)
a[3] &= ~termios.ECHO
a[6][termios.VINTR] = b'\x01'
termios.tcsetattr(s, termios.TCSANOW, a)
fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack('HHHH', 33, 111, 7, 9))
fcntl.ioctl(m, termios.TIOCPKT, struct.pack('i', 1))
fcntl.ioctl(s, termios.TIOCEXCL)
fcntl.ioctl(m, TIOCSPTLCK, struct.pack('i', 1))
os.write(m, b'typed line\npartial')
os.write(s, b'output\n')
name = os.ttyname(s)
with open(os.path.join(d, 'ready.tmp'), 'w') as f:
    f.write(name)
os.replace(os.path.join(d, 'ready.tmp'), os.path.join(d, 'ready'))
while not os.path.exists(os.path.join(d, 'check')):
    time.sleep(0.02)
bad = []
def want(what, got, expected):
    if got != expected:
        bad.append('%s: %r, expected %r' % (what, got, expected))
int_of = lambda fd, req: struct.unpack('i', fcntl.ioctl(fd, req, struct.pack('i', 0)))[0]
want('name', os.ttyname(s), name)
a = termios.tcgetattr(s)
want('echo', a[3] & termios.ECHO, 0)
want('VINTR', a[6][termios.VINTR], b'\x01')
want('winsize', struct.unpack('HHHH', fcntl.ioctl(s, termios.TIOCGWINSZ, b'\0' * 8)), (33, 111, 7, 9))
want('packet mode', int_of(m, TIOCGPKT), 1)
want('exclusive', int_of(s, TIOCGEXCL), 1)
want('locked', int_of(m, TIOCGPTLCK), 1)
os.set_blocking(m, False)
want('output for the master', os.read(m, 100), b'\x00output\r\n')
os.set_blocking(s, False)
want('typed line', os.read(s, 100), b'typed line\n')
os.write(m, b'\n')
time.sleep(0.1)
want('partial line', os.read(s, 100), b'partial\n')
with open(os.path.join(d, 'result.tmp'), 'w') as f:
    f.write('ok\n' if not bad else 'fail: ' + '; '.join(bad) + '\n')
os.replace(os.path.join(d, 'result.tmp'), os.path.join(d, 'result'))
"#;

fn start_pty_holder(name: &str) -> util::spawned::Spawned {
    let dir = tempdir(name);
    let script = dir.path().join("pty.py");
    std::fs::write(&script, PTY_SCRIPT).unwrap();
    let mut cmd = Command::new(python3());
    cmd.arg("-I").arg(&script).arg(dir.path());
    let p = util::spawned::Spawned::start(name, cmd, dir);
    p.wait_for(Duration::from_secs(30), "DIR/ready", || std::fs::read_to_string(p.dir.join("ready")).ok());
    p
}

fn pty_holder_result(p: &util::spawned::Spawned) -> String {
    std::fs::write(p.dir.join("check"), "").unwrap();
    p.wait_for(Duration::from_secs(30), "DIR/result", || std::fs::read_to_string(p.dir.join("result")).ok())
}

#[test]
fn pty_pair_settings_and_queues_round_trip() {
    let mut p = start_pty_holder("pty-rt");
    let images = tempdir("pty-rt-img");
    util::spawned::dump_ok(p.pid, images.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    let (pid, _init) = restore(p.pid, images.path());
    let mut p = util::spawned::Spawned::adopt("pty-rt (restored)", pid, &p.dir);
    assert_eq!(pty_holder_result(&p).trim(), "ok", "{}", p.log());
    p.wait_exit(Duration::from_secs(30));
}

/// --leave-running: the bytes read out of the queues while the process was
/// stopped are back in them, and its settings untouched.
#[test]
fn pty_pair_settings_and_queues_leave_running() {
    let mut p = start_pty_holder("pty-lr");
    let images = tempdir("pty-lr-img");
    util::spawned::dump_ok(p.pid, images.path(), &["--leave-running"]);
    assert_eq!(pty_holder_result(&p).trim(), "ok", "{}", p.log());
    p.wait_exit(Duration::from_secs(30));
}

/// A process holding the master of a pair whose slave is the controlling
/// terminal of a session led outside the dumped tree (here its parent's):
/// refused, naming the terminal and the session, and left running.
#[test]
fn pty_controlling_a_session_led_outside_is_refused() {
    let dir = tempdir("pty-outside");
    let script = dir.path().join("pty.py");
    std::fs::write(
        &script,
        r#"
import fcntl, os, sys, termios, time
d = sys.argv[1]
m, s = os.openpty()
os.setsid()
fcntl.ioctl(s, termios.TIOCSCTTY, 0)
if os.fork() == 0:
    with open(os.path.join(d, 'child'), 'w') as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.05)
while True:
    time.sleep(0.05)
"#,
    )
    .unwrap();
    let mut cmd = Command::new(python3());
    cmd.arg("-I").arg(&script).arg(dir.path());
    let leader = util::spawned::Spawned::start("pty-outside", cmd, dir);
    let child: i32 = leader.wait_for(Duration::from_secs(30), "DIR/child", || {
        std::fs::read_to_string(leader.dir.join("child")).ok()?.trim().parse().ok()
    });
    let images = tempdir("pty-outside-img");
    let r =
        util::run(["dump", "--pid", &child.to_string(), "--images", images.path().to_str().unwrap()]).expect_code(1);
    assert!(
        r.stderr.contains("is the controlling terminal of session")
            && r.stderr.contains("whose leader is not in the tree"),
        "{}",
        r.dump()
    );
    assert!(is_alive(child) && is_alive(leader.pid), "the refusal harmed a process");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), nix::sys::signal::Signal::SIGKILL);
}
