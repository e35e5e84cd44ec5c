//! Self-checking workloads (like CRIU's zdtm): build the C programs in
//! `tests/workloads/` and drive them through the file protocol described at
//! the top of `tests/workloads/workload.h`.
//!
//! Everything goes through files in the workload's directory (`ready`,
//! `progress`, `check`, `result`, `info`, `log`) and through `/proc/PID`, never
//! through the child handle: after `stasis restore` the process is back at
//! the same PID but is no longer a child of the test. The child handle is only
//! used to reap the original process (after `dump --kill` it is a zombie of
//! the test and holds its PID until reaped, see [`Workload::wait_exit`]).
//!
//! A zombie counts as gone: PID 1 on the test machines reaps orphans a second
//! or two late, see proc_pid_stat(5) for the state field.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a workload may take to set up and write `DIR/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a workload may take to verify itself once `DIR/check` exists.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

const POLL: Duration = Duration::from_millis(10);

/// The directory holding the workload sources and `workload.h`.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads")
}

fn gcc_flags() -> Vec<&'static str> {
    vec!["-O1", "-g", "-pthread", "-Wall", "-Werror"]
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Compile `tests/workloads/{name}.c` (unless the binary is newer than the
/// source and `workload.h`) and return the binary's path.
///
/// Tests run in parallel processes: gcc writes a private temporary name that
/// is renamed into place, so a reader never sees a half-written binary.
pub fn build(name: &str) -> PathBuf {
    let src = source_dir().join(format!("{name}.c"));
    let src_time = mtime(&src).unwrap_or_else(|| panic!("workload source {} does not exist", src.display()));
    // Any header may be included (workload.h, kids.h): the newest counts.
    let headers = fs::read_dir(source_dir()).expect("tests/workloads exists").flatten().map(|e| e.path());
    let newest_input = headers
        .filter(|p| p.extension().is_some_and(|e| e == "h"))
        .filter_map(|p| mtime(&p))
        .fold(src_time, SystemTime::max);

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workloads");
    fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("create {}: {e}", out_dir.display()));
    let out = out_dir.join(name);
    if mtime(&out).is_some_and(|built| built >= newest_input) {
        return out;
    }

    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let tmp = out_dir.join(format!(".{name}.{}.{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let mut cmd = Command::new("gcc");
    cmd.args(gcc_flags()).arg("-o").arg(&tmp).arg(&src);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc to build workload {name} ({cmd:?}): {e}; is gcc installed?"));
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        panic!(
            "building workload {name} failed ({}): {cmd:?}\n--- gcc stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Tests build in parallel: a binary another test already published may
    // be running, and replacing it would make that process's executable
    // "(deleted)", which stasis rightly refuses to dump. So the binary is
    // published with link(2), which fails if another test won the race (its
    // build of the same sources is as good); only a stale one is replaced.
    let fresh = |out: &Path| mtime(out).is_some_and(|built| built >= newest_input);
    if fs::hard_link(&tmp, &out).is_ok() || fresh(&out) {
        let _ = fs::remove_file(&tmp);
        return out;
    }
    fs::rename(&tmp, &out).unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), out.display()));
    out
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `D`, `T`, `Z`, ...), or
/// `None` when there is no such process.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field is in parentheses and may itself contain ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether PID runs (a zombie or a dead task does not).
pub fn is_alive(pid: i32) -> bool {
    !matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

/// Poll until PID is gone or a zombie; false on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL);
    }
}

/// What a workload wrote to `DIR/result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// The text after `fail: ` (empty when ok).
    pub message: String,
    /// The generation counter at check time.
    pub generation: u64,
}

impl Outcome {
    /// Parse `ok` or `fail: MSG`, then `generation N`.
    pub fn parse(text: &str) -> Option<Outcome> {
        let mut lines = text.lines();
        let first = lines.next()?;
        let (ok, message) = match first.strip_prefix("fail: ") {
            Some(msg) => (false, msg.to_string()),
            None if first == "ok" => (true, String::new()),
            None => return None,
        };
        let generation = lines.next()?.strip_prefix("generation ")?.trim().parse().ok()?;
        Some(Outcome { ok, message, generation })
    }
}

/// A running workload process and its directory.
///
/// Dropping it SIGKILLs the process if it still runs (and reaps it if it is
/// our child). When the test panics, the directory is kept and its path
/// printed, for the log and the files the workload wrote.
#[derive(Debug)]
pub struct Workload {
    pub name: String,
    pub pid: i32,
    /// The workload's directory (`DIR` in workload.h).
    pub dir: PathBuf,
    guard: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl Workload {
    /// Build and start workload `name` with `args` after its directory; wait
    /// until it wrote `DIR/ready`.
    pub fn start(name: &str, args: &[&str]) -> Workload {
        let bin = build(name);
        let guard = tempfile::Builder::new().prefix(&format!("stasis-wl-{name}-")).tempdir().expect("create temp dir");
        let dir = guard.path().to_path_buf();
        let log = fs::OpenOptions::new().create(true).append(true).open(dir.join("log")).expect("create DIR/log");
        let log2 = log.try_clone().expect("dup log fd");
        let mut cmd = Command::new(&bin);
        cmd.arg(&dir).args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        let mut w = Workload { name: name.to_string(), pid, dir, guard: Some(guard), child: Some(child) };
        w.wait_ready(READY_TIMEOUT);
        w
    }

    /// Take over a workload that is not our child, e.g. one `stasis restore`
    /// brought back in another test process, in directory `dir`.
    pub fn adopt(name: &str, pid: i32, dir: tempfile::TempDir) -> Workload {
        Workload { name: name.to_string(), pid, dir: dir.path().to_path_buf(), guard: Some(dir), child: None }
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let ready = self.dir.join("ready");
        loop {
            if let Ok(text) = fs::read_to_string(&ready) {
                let pid: i32 = text.trim().parse().unwrap_or_else(|_| self.fail(&format!("DIR/ready holds {text:?}")));
                if pid != self.pid {
                    self.fail(&format!("DIR/ready holds pid {pid}, spawned pid {}", self.pid));
                }
                return;
            }
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    self.child = None;
                    self.fail(&format!("exited before it was ready: {status}"));
                }
            }
            if Instant::now() >= deadline {
                self.fail(&format!("not ready after {timeout:?}"));
            }
            sleep(POLL);
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!("workload {} (pid {}): {what}\n--- log:\n{}", self.name, self.pid, self.log())
    }

    /// Everything the workload printed.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_else(|e| format!("(cannot read log: {e})"))
    }

    /// The value of `key` in `DIR/info` (published before ready).
    pub fn info(&self, key: &str) -> String {
        let text =
            fs::read_to_string(self.dir.join("info")).unwrap_or_else(|e| self.fail(&format!("read DIR/info: {e}")));
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(' ').map(str::to_string))
            .unwrap_or_else(|| self.fail(&format!("no {key:?} in DIR/info:\n{text}")))
    }

    /// [`Workload::info`] parsed as a number.
    pub fn info_u64(&self, key: &str) -> u64 {
        let v = self.info(key);
        v.parse().unwrap_or_else(|_| self.fail(&format!("DIR/info {key} = {v:?} is not a number")))
    }

    /// The last generation written to `DIR/progress`.
    pub fn progress(&self) -> Option<u64> {
        fs::read_to_string(self.dir.join("progress")).ok()?.trim().parse().ok()
    }

    /// Wait until the progress is beyond `past`; returns it. Panics on
    /// timeout or when the process is gone.
    pub fn wait_progress(&self, past: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            match self.progress() {
                Some(p) if p > past => return p,
                _ => {}
            }
            if !is_alive(self.pid) {
                self.fail(&format!("gone while waiting for progress beyond {past}"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no progress beyond {past} after {timeout:?} (at {:?})", self.progress()));
            }
            sleep(POLL);
        }
    }

    /// Wait until the progress advanced past its current value: proves the
    /// process runs.
    pub fn wait_running(&self) -> u64 {
        self.wait_progress(self.progress().unwrap_or(0), READY_TIMEOUT)
    }

    /// Ask the workload to verify itself (create `DIR/check`) and wait for
    /// `DIR/result`. Panics if the process is gone without a result or on
    /// timeout.
    pub fn check(&self) -> Outcome {
        let result = self.dir.join("result");
        if let Err(e) = fs::write(self.dir.join("check"), b"") {
            self.fail(&format!("create DIR/check: {e}"));
        }
        let deadline = Instant::now() + CHECK_TIMEOUT;
        loop {
            let gone = !is_alive(self.pid);
            // Read after looking at the process: a result written just before
            // it exited is still seen.
            match fs::read_to_string(&result) {
                Ok(text) => {
                    return Outcome::parse(&text).unwrap_or_else(|| self.fail(&format!("bad DIR/result {text:?}")))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => self.fail(&format!("read DIR/result: {e}")),
            }
            if gone {
                self.fail("gone without writing DIR/result");
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no DIR/result {CHECK_TIMEOUT:?} after DIR/check"));
            }
            sleep(POLL);
        }
    }

    /// [`Workload::check`], panicking with the message and log unless it is ok.
    pub fn check_ok(&self) -> Outcome {
        let outcome = self.check();
        if !outcome.ok {
            self.fail(&format!("self-check failed: {}", outcome.message));
        }
        outcome
    }

    /// [`Workload::check`], panicking unless it reported a failure.
    pub fn check_fails(&self) -> Outcome {
        let outcome = self.check();
        if outcome.ok {
            self.fail("self-check passed, expected it to detect damage");
        }
        outcome
    }

    /// Wait until the process is gone (e.g. after `stasis dump --kill`) and
    /// reap it if it is our child, so its PID is free for the restore.
    /// Returns its exit status when it was our child.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if !wait_gone(self.pid, timeout) {
            self.fail(&format!("still running {timeout:?} later"));
        }
        let mut child = self.child.take()?;
        Some(child.wait().expect("reap workload"))
    }

    /// Whether the process is still the workload we started: a non-child PID
    /// might have been reused, so its argv[1] must be our directory.
    fn is_ours(&self) -> bool {
        if self.child.is_some() {
            return true;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{}/cmdline", self.pid)) else { return false };
        cmdline.split(|&b| b == 0).nth(1) == Some(self.dir.as_os_str().as_encoded_bytes())
    }

    /// SIGKILL the process and wait until it is gone (and reaped, if ours).
    pub fn kill(&mut self) {
        if is_alive(self.pid) && self.is_ours() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        let _ = self.wait_exit(CHECK_TIMEOUT);
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let ours = is_alive(self.pid) && self.is_ours();
        clean_up(self.pid, ours, self.child.take(), self.guard.take(), &format!("workload {}", self.name));
    }
}

/// What a test's process guard does when dropped: SIGKILL the process if it
/// is still `ours`, reap it if it is our `child`, and keep its directory
/// (printing where) when the test failed. Never panics; a process stuck in D
/// state is left behind.
pub fn clean_up(pid: i32, ours: bool, child: Option<Child>, guard: Option<tempfile::TempDir>, what: &str) {
    if ours {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if wait_gone(pid, Duration::from_secs(10)) {
        if let Some(mut child) = child {
            let _ = child.wait();
        }
    }
    if std::thread::panicking() {
        if let Some(guard) = guard {
            eprintln!("{what} directory kept: {}", guard.keep().display());
        }
    }
}
