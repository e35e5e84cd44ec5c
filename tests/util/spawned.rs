//! Real programs (python3, bash, coreutils) started for dump and restore
//! tests, tracked by pid like [`super::workload::Workload`]: after `stasis
//! restore` the process is back at its pid but is no longer our child.
//!
//! Each program runs in its own temp directory, which also appears in its
//! command line (as a script path, an argument or argv[0]): that is how a
//! pid that is no longer our child is recognised as ours before it is
//! killed. stdin is /dev/null, stdout and stderr are `DIR/log`, and no other
//! fd is inherited (std closes them), so nothing in the program refers to
//! the test harness.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::workload::{clean_up, is_alive, wait_gone};

/// The path of `name` on PATH; panics naming the tool when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("this test needs `{name}` on PATH, and it is not installed"))
}

/// The real interpreter behind `python3` on PATH (resolving wrappers such as
/// pyenv shims, which are shell scripts that would run as the process
/// first). Panics when python3 is missing.
pub fn python3() -> PathBuf {
    let launcher = tool("python3");
    let out = Command::new(&launcher)
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("this test needs python3, and {} does not run: {e}", launcher.display()));
    assert!(out.status.success(), "python3 ({}) failed: {}", launcher.display(), String::from_utf8_lossy(&out.stderr));
    let exe = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(exe.is_file(), "python3 reports sys.executable {exe:?}, which does not exist");
    exe
}

/// A temp directory for one program (kept, with its path printed, when the
/// test panics: see [`Spawned`]'s drop).
pub fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("stasis-prog-{name}-")).tempdir().expect("create temp dir")
}

/// `python3 -I DIR/script.py DIR ARGS...` with `script` written to a temp
/// directory of its own (DIR, named after `name`).
pub fn python_script(name: &str, script: &str, args: &[&str]) -> Spawned {
    let dir = tempdir(name);
    let path = dir.path().join("script.py");
    fs::write(&path, script).unwrap();
    let mut cmd = Command::new(python3());
    cmd.arg("-I").arg(&path).arg(dir.path()).args(args);
    Spawned::start(name, cmd, dir)
}

/// Mark every fd above 2 of this test process close-on-exec. std opens its
/// own fds with O_CLOEXEC, but the test runner may hand us some without it
/// (e.g. the write end of its output pipe), which a program would inherit
/// and hold open after the test ends (the runner would wait for it).
/// Pipes to the outside are tested on purpose in `tests/external_pipes.rs`.
pub fn cloexec_inherited_fds() {
    stasis_sys::fdtable::cloexec_from(3).expect("close_range(CLOSE_RANGE_CLOEXEC)");
}

/// A started program.
#[derive(Debug)]
pub struct Spawned {
    pub name: String,
    pub pid: i32,
    pub dir: PathBuf,
    guard: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl Spawned {
    /// Start `cmd` with stdin /dev/null and stdout/stderr appended to
    /// `DIR/log`. The command line must contain the directory's path.
    pub fn start(name: &str, mut cmd: Command, dir: tempfile::TempDir) -> Spawned {
        cloexec_inherited_fds();
        let log = fs::OpenOptions::new().create(true).append(true).open(dir.path().join("log")).expect("create log");
        let log2 = log.try_clone().expect("dup log fd");
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        Spawned { name: name.into(), pid, dir: dir.path().to_path_buf(), guard: Some(dir), child: Some(child) }
    }

    /// Track a program the test started with stdio of its own; `cmd`
    /// must not set stderr (it goes to `DIR/log`).
    pub fn start_with_stdio(name: &str, mut cmd: Command, dir: tempfile::TempDir) -> Spawned {
        cloexec_inherited_fds();
        let log = fs::OpenOptions::new().create(true).append(true).open(dir.path().join("log")).expect("create log");
        cmd.stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        Spawned { name: name.into(), pid, dir: dir.path().to_path_buf(), guard: Some(dir), child: Some(child) }
    }

    /// Track a process that is not our child (a grandchild, or one
    /// restored), recognised as ours by `dir` in its command line.
    pub fn adopt(name: &str, pid: i32, dir: &Path) -> Spawned {
        Spawned { name: name.into(), pid, dir: dir.to_path_buf(), guard: None, child: None }
    }

    /// The pipe to the program's stdin (started with `Stdio::piped()`).
    pub fn take_stdin(&mut self) -> std::process::ChildStdin {
        self.child.as_mut().and_then(|c| c.stdin.take()).expect("started with a piped stdin")
    }

    /// The pipe from the program's stdout (started with `Stdio::piped()`).
    pub fn take_stdout(&mut self) -> std::process::ChildStdout {
        self.child.as_mut().and_then(|c| c.stdout.take()).expect("started with a piped stdout")
    }

    /// Everything the program printed.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_else(|e| format!("(cannot read log: {e})"))
    }

    /// Whether `pid` still runs this program: our child, or a process whose
    /// command line holds our directory.
    pub fn is_ours(&self) -> bool {
        if self.child.is_some() {
            return true;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{}/cmdline", self.pid)) else { return false };
        let dir = self.dir.as_os_str().as_encoded_bytes();
        cmdline.windows(dir.len()).any(|w| w == dir)
    }

    pub fn alive(&self) -> bool {
        is_alive(self.pid)
    }

    /// Wait until the process is gone and reap it if it is our child (so
    /// its pid is free for a restore). Panics on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        assert!(
            wait_gone(self.pid, timeout),
            "{} (pid {}) still runs {timeout:?} later\n{}",
            self.name,
            self.pid,
            self.log()
        );
        let mut child = self.child.take()?;
        Some(child.wait().expect("reap"))
    }

    /// SIGKILL the process (if it is still ours) and wait until it is gone.
    pub fn kill(&mut self) {
        if is_alive(self.pid) && self.is_ours() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        self.wait_exit(Duration::from_secs(30));
    }

    /// Poll `what` (e.g. reading a file) until it returns Some, while the
    /// process runs. Panics on timeout or when the process is gone first.
    pub fn wait_for<T>(&self, timeout: Duration, desc: &str, mut what: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let gone = !is_alive(self.pid);
            if let Some(v) = what() {
                return v;
            }
            assert!(
                !gone,
                "{} (pid {}) is gone while waiting for {desc}\n--- log:\n{}",
                self.name,
                self.pid,
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "{} (pid {}): no {desc} after {timeout:?}\n--- log:\n{}",
                self.name,
                self.pid,
                self.log()
            );
            sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let ours = self.alive() && self.is_ours();
        clean_up(self.pid, ours, self.child.take(), self.guard.take(), &self.name);
    }
}

/// `stasis dump --pid PID --images DIR EXTRA...`, asserting success.
pub fn dump_ok(pid: i32, images: &Path, extra: &[&str]) -> super::Run {
    let p = pid.to_string();
    let mut args = vec!["dump", "--pid", &p, "--images", images.to_str().unwrap()];
    args.extend_from_slice(extra);
    super::run(&args).success()
}

/// `stasis restore --images DIR`, asserting success at `pid`.
pub fn restore_ok(pid: i32, images: &Path) -> super::Run {
    let r = super::run(["restore", "--images", images.to_str().unwrap()]).success();
    assert_eq!(r.stdout.trim(), pid.to_string(), "restored at another pid\n{}", r.dump());
    r
}
