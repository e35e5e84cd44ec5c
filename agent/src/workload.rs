//! Workloads bundled in the binary, for `stasis demo` and `stasis bench`:
//! stasis runs itself again (`stasis workload ...`, a hidden subcommand) to
//! get a process it can capture with no setup.
//!
//! Each workload holds only what stasis can capture today: one process, one
//! thread, regular files, /dev/null. It talks to its driver through files
//! in its directory, like the C workloads of the test suite
//! (`tests/workloads/workload.h`):
//!
//! - `DIR/ready`: written (atomically) once set up; holds the pid.
//! - `DIR/check`: created by the driver to ask for a self-check.
//! - `DIR/result`: the verdict, `ok ...` or `fail ...`, written
//!   (atomically) just before the workload exits.
//!
//! The second half of this module is the driver's side: [`Workload`] starts
//! one and owns it until it is reaped, through its dump and restore.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stasis_sys::nix::errno::Errno;
use stasis_sys::nix::sys::signal::{kill, Signal};
use stasis_sys::nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use stasis_sys::nix::unistd::{close, Pid};

use crate::Outcome;

/// Run a workload. Hidden from `stasis --help`: `stasis demo` and `stasis
/// bench` start it.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Debug, clap::Subcommand)]
enum Kind {
    /// Tick every --interval-ms: append "tick N checksum X" to
    /// DIR/counter.log (a file kept open, O_APPEND) and print it; X chains
    /// a hash over every tick. On DIR/check, check that the log matches the
    /// counter and checksum held in memory.
    Counter {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
    },
    /// Fill --mib MiB of anonymous memory, then sleep. On DIR/check, check
    /// that the memory still has the checksum it had when filled.
    ///
    /// On DIR/change (without --dirty), change 1% of the pages, spread out
    /// (the first word of every 100th page), take the checksum the check
    /// expects anew, and write DIR/changed: the workload of an incremental
    /// dump.
    ///
    /// With --dirty, write instead of sleeping: every 10 ms, the first word
    /// of 1% of the pages, in an order that visits every page once per
    /// round (page k*STRIDE mod PAGES at write k), each with a value made
    /// from the page and the write's number. The check then also checks
    /// each page's word against the number of writes done (kept in memory
    /// too): a page whose copy is older or newer than the rest shows.
    Memory {
        #[arg(long)]
        mib: u64,
        #[arg(long, value_enum)]
        pattern: Pattern,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        dirty: bool,
    },
}

/// What the memory workload fills its memory with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// xorshift output: zstd cannot compress it.
    Random,
    /// Log-like text lines: zstd compresses it several times over.
    Compressible,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Random => "random",
            Pattern::Compressible => "compressible",
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    close_inherited_fds()?;
    match args.kind {
        Kind::Counter { dir, interval_ms } => counter(&dir, Duration::from_millis(interval_ms)),
        Kind::Memory { mib, pattern, dir, dirty } => memory(&dir, mib, pattern, dirty),
    }
}

/// Close every fd but stdin, stdout and stderr. std::process::Command
/// leaves fds without FD_CLOEXEC open across exec, and whatever started
/// the driver may have passed some (a pipe to a supervisor, say) that
/// stasis could not dump. Runs first thing, while no fd above 2 belongs to
/// anything in this process.
fn close_inherited_fds() -> anyhow::Result<()> {
    let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
        .context("cannot list /proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // The directory's own fd, listed above, is closed by now: EBADF.
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        match close(fd) {
            Ok(()) | Err(Errno::EBADF) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot close inherited fd {fd}")),
        }
    }
    Ok(())
}

/// How often a sleeping workload looks for `DIR/check`.
const CHECK_POLL: Duration = Duration::from_millis(50);

/// Write `DIR/name` so that a reader never sees it half-written.
fn write_atomic(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(name)).with_context(|| format!("cannot write {}", dir.join(name).display()))
}

fn finish(dir: &Path, verdict: Result<String, String>) -> anyhow::Result<Outcome> {
    let (text, outcome) = match verdict {
        Ok(msg) => (format!("ok {msg}\n"), Outcome::Success),
        Err(msg) => (format!("fail {msg}\n"), Outcome::Failure),
    };
    print!("self-check: {text}");
    write_atomic(dir, "result", &text)?;
    Ok(outcome)
}

/// splitmix64's finaliser: a cheap, well-mixing 64-bit hash step.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const CHAIN_SEED: u64 = 0x5354_4153_4953_0001;

/// The checksum after tick `n`, given the one after tick `n - 1`.
fn chain(prev: u64, n: u64) -> u64 {
    mix(prev ^ mix(n))
}

/// One line of `counter.log`.
fn tick_line(n: u64, sum: u64) -> String {
    format!("tick {n} checksum {sum:016x}\n")
}

/// Parse a `tick N checksum X` line.
pub fn parse_tick(line: &str) -> Option<(u64, u64)> {
    let mut words = line.split_whitespace();
    let (Some("tick"), Some(n), Some("checksum"), Some(x), None) =
        (words.next(), words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    Some((n.parse().ok()?, u64::from_str_radix(x, 16).ok()?))
}

fn counter(dir: &Path, interval: Duration) -> anyhow::Result<Outcome> {
    let log_path = dir.join("counter.log");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let check = dir.join("check");
    // The state the self-check compares with the log.
    let mut ticks: u64 = 0;
    let mut sum = CHAIN_SEED;
    write_atomic(dir, "ready", &format!("{}\n", std::process::id()))?;
    println!(
        "counter: pid {}, ticking every {} ms into {}",
        std::process::id(),
        interval.as_millis(),
        log_path.display()
    );
    loop {
        if check.exists() {
            return finish(dir, check_counter(&log_path, ticks, sum));
        }
        let next = chain(sum, ticks + 1);
        let line = tick_line(ticks + 1, next);
        log.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", log_path.display()))?;
        ticks += 1;
        sum = next;
        print!("{line}");
        sleep(interval);
    }
}

/// Whether `counter.log` holds exactly `ticks` lines, numbered 1, 2, ...,
/// whose checksums chain to `sum`.
fn check_counter(log_path: &Path, ticks: u64, sum: u64) -> Result<String, String> {
    let text = fs::read_to_string(log_path).map_err(|e| format!("cannot read {}: {e}", log_path.display()))?;
    let mut expect = CHAIN_SEED;
    let mut lines = 0u64;
    for (i, line) in text.lines().enumerate() {
        let i = i as u64 + 1;
        let Some((n, x)) = parse_tick(line) else { return Err(format!("line {i} is not a tick: {line:?}")) };
        expect = chain(expect, i);
        if n != i || x != expect {
            return Err(format!("line {i} is {line:?}, expected {:?}", tick_line(i, expect).trim_end()));
        }
        lines = i;
    }
    if lines != ticks {
        return Err(format!("{lines} ticks in the log, {ticks} in memory"));
    }
    if expect != sum {
        return Err(format!("checksum {expect:016x} from the log, {sum:016x} in memory"));
    }
    Ok(format!("{ticks} ticks: counter and checksum {sum:016x} in memory match counter.log"))
}

/// xorshift64*: fast, and random enough to defeat zstd.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Fill `buf` with log-like lines: ascending sequence numbers and times,
/// fields drawn from small vocabularies. zstd -1 stores it in a fraction of
/// its size, and no two 64 KiB chunks are alike (the image deduplicates
/// chunks, which would hide the compression).
fn fill_text(buf: &mut [u8], rng: &mut XorShift) {
    const HOSTS: [&str; 4] = ["web-01", "web-02", "db-01", "cache-01"];
    const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
    const PATHS: [&str; 6] =
        ["/api/v1/items", "/api/v1/users", "/api/v1/orders", "/static/app.js", "/health", "/login"];
    const STATUS: [&str; 4] = ["200 OK", "200 OK", "304 Not Modified", "404 Not Found"];
    let mut line = String::with_capacity(160);
    let mut at = 0;
    let mut seq: u64 = 0;
    while at < buf.len() {
        let r = rng.next();
        seq += 1;
        let secs = seq / 16;
        line.clear();
        use std::fmt::Write as _;
        let _ = writeln!(
            line,
            "{seq:010} 2025-06-01T{:02}:{:02}:{:02}Z {} {} {}/{} {} {}ms",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            HOSTS[(r & 3) as usize],
            METHODS[((r >> 2) & 3) as usize],
            PATHS[((r >> 4) % 6) as usize],
            (r >> 8) % 1000,
            STATUS[((r >> 20) & 3) as usize],
            (r >> 24) % 50,
        );
        let n = line.len().min(buf.len() - at);
        buf[at..at + n].copy_from_slice(&line.as_bytes()[..n]);
        at += n;
    }
}

/// A fast checksum of memory: four independent multiply-rotate lanes.
fn checksum(data: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lanes = [1u64, 2, 3, 4];
    let mut blocks = data.chunks_exact(32);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            *lane = (*lane ^ w).wrapping_mul(K).rotate_left(29);
        }
    }
    let mut h = data.len() as u64;
    for b in blocks.remainder() {
        h = mix(h ^ u64::from(*b));
    }
    lanes.iter().fold(h, |acc, l| mix(acc ^ l))
}

fn memory(dir: &Path, mib: u64, pattern: Pattern, dirty: bool) -> anyhow::Result<Outcome> {
    let len = usize::try_from(mib << 20).context("--mib too large")?;
    let mut mem = vec![0u8; len];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    match pattern {
        Pattern::Random => {
            for word in mem.chunks_exact_mut(8) {
                word.copy_from_slice(&rng.next().to_le_bytes());
            }
        }
        Pattern::Compressible => fill_text(&mut mem, &mut rng),
    }
    let writes = Writes::new(mem.len() / PAGE);
    if dirty {
        // The checksum leaves the writer's words out (as zeros).
        writes.put_words(&mut mem, |_| 0);
    }
    let mut sum = checksum(&mem);
    let mut done = 0;
    if dirty {
        writes.put_words(&mut mem, |page| writes.value(page, 0));
    }
    println!("memory: pid {}, {mib} MiB of {} data, checksum {sum:016x}", std::process::id(), pattern.name());
    write_atomic(dir, "ready", &format!("{}\n", std::process::id()))?;
    let check = dir.join("check");
    while !check.exists() {
        match dirty {
            true => {
                for _ in 0..writes.per_tick {
                    let page = writes.page_of(done);
                    done += 1;
                    mem[page * PAGE..page * PAGE + 8].copy_from_slice(&writes.value(page, done).to_le_bytes());
                }
                sleep(DIRTY_TICK);
            }
            false if dir.join("change").exists() && !dir.join("changed").exists() => {
                for page in (0..mem.len() / PAGE).step_by(100) {
                    let word = u64::from_le_bytes(mem[page * PAGE..page * PAGE + 8].try_into().expect("8 bytes"));
                    mem[page * PAGE..page * PAGE + 8].copy_from_slice(&mix(word ^ page as u64).to_le_bytes());
                }
                sum = checksum(&mem);
                println!("memory: 1% of the pages changed, checksum {sum:016x}");
                write_atomic(dir, "changed", "1\n")?;
            }
            false => sleep(CHECK_POLL),
        }
    }
    let mut wrong = None;
    if dirty {
        for page in 0..writes.pages {
            let word = u64::from_le_bytes(mem[page * PAGE..page * PAGE + 8].try_into().expect("8 bytes"));
            let expected = writes.value(page, writes.last_write(page, done));
            if word != expected && wrong.is_none() {
                wrong = Some(format!("page {page} holds {word:016x}, not the value of its last write of {done}"));
            }
        }
        writes.put_words(&mut mem, |_| 0);
    }
    let now = checksum(&mem);
    let writes_done = if dirty { format!(", {done} page writes") } else { String::new() };
    finish(
        dir,
        match wrong {
            Some(w) => Err(format!("{mib} MiB{writes_done}: {w}")),
            None if now == sum => Ok(format!("{mib} MiB, checksum {sum:016x}{writes_done}")),
            None => Err(format!("{mib} MiB, checksum {now:016x}, was {sum:016x}{writes_done}")),
        },
    )
}

const PAGE: usize = 4096;
/// How often the --dirty writer writes 1% of the pages.
const DIRTY_TICK: Duration = Duration::from_millis(10);

/// The --dirty writer's schedule: write k (from 0) goes to page
/// k * stride mod pages, and writes into it the value of (page, k + 1).
#[derive(Debug)]
struct Writes {
    pages: usize,
    stride: u64,
    /// stride's inverse modulo pages.
    inverse: u64,
    per_tick: usize,
}

impl Writes {
    fn new(pages: usize) -> Writes {
        let n = pages.max(1) as u64;
        // An odd stride near n / phi spreads consecutive writes far apart;
        // it must be prime to n for every page to be visited.
        let mut stride = (n as f64 / 1.618) as u64 | 1;
        while gcd(stride, n) != 1 {
            stride += 2;
        }
        let inverse = inverse_mod(stride % n, n);
        Writes { pages, stride, inverse, per_tick: (pages / 100).max(1) }
    }

    fn page_of(&self, k: u64) -> usize {
        ((u128::from(k) * u128::from(self.stride)) % self.pages as u128) as usize
    }

    /// The number (from 1) of the last of the first `done` writes that
    /// went to `page`, 0 for none.
    fn last_write(&self, page: usize, done: u64) -> u64 {
        let n = self.pages as u64;
        let first = ((u128::from(page as u64) * u128::from(self.inverse)) % u128::from(n)) as u64;
        match done > first {
            true => first + (done - 1 - first) / n * n + 1,
            false => 0,
        }
    }

    fn value(&self, page: usize, write: u64) -> u64 {
        mix((page as u64) << 32 ^ write ^ 0x5752_4954_4552_0000)
    }

    fn put_words(&self, mem: &mut [u8], word: impl Fn(usize) -> u64) {
        for page in 0..self.pages {
            mem[page * PAGE..page * PAGE + 8].copy_from_slice(&word(page).to_le_bytes());
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// x with a * x = 1 mod n (a prime to n).
fn inverse_mod(a: u64, n: u64) -> u64 {
    let (mut r0, mut r1) = (i128::from(n), i128::from(a));
    let (mut t0, mut t1) = (0i128, 1i128);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    t0.rem_euclid(i128::from(n)) as u64
}

// ---------------------------------------------------------------------
// The driver's side.

const POLL: Duration = Duration::from_millis(10);

pub use crate::cancel::{cancel_on_signals, Cancel};

fn check_cancel(cancel: &Cancel) -> anyhow::Result<()> {
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// A workload this stasis started, from spawn to reaping, through its dump
/// (which kills it) and its restore (which makes it a child of this stasis
/// again, at the same pid). Dropping it kills and reaps it if it still runs.
#[derive(Debug)]
pub struct Workload {
    pub pid: i32,
    pub dir: PathBuf,
    /// The spawned process, until reaped; after a restore there is none,
    /// and the process is reaped by pid.
    child: Option<Child>,
    /// Whether a process at `pid` is ours to kill and reap.
    live: bool,
}

impl Workload {
    /// Start `EXE workload ARGS...` (EXE from [`stasis_exe`]) in `dir`
    /// (created if needed), with stdin from /dev/null and stdout and stderr
    /// to `dir/stdout.log`.
    pub fn spawn(exe: &Path, dir: &Path, args: &[String]) -> anyhow::Result<Workload> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let out_path = dir.join("stdout.log");
        let out = File::options()
            .create(true)
            .append(true)
            .open(&out_path)
            .with_context(|| format!("cannot create {}", out_path.display()))?;
        let err = out.try_clone().context("cannot duplicate the output file")?;
        let mut cmd = Command::new(exe);
        cmd.arg("workload").args(args).stdin(Stdio::null()).stdout(out).stderr(err).env_remove("RUST_LOG");
        let child = cmd.spawn().with_context(|| format!("cannot start {}", exe.display()))?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        Ok(Workload { pid, dir: dir.to_path_buf(), child: Some(child), live: true })
    }

    /// The command line `spawn` runs, for people.
    pub fn command_line(exe: &Path, args: &[String]) -> String {
        format!("{} workload {}", exe.display(), args.join(" "))
    }

    /// Wait for `DIR/ready`.
    pub fn wait_ready(&mut self, timeout: Duration, cancel: &Cancel) -> anyhow::Result<()> {
        let ready = self.dir.join("ready");
        let deadline = Instant::now() + timeout;
        loop {
            if ready.exists() {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait().context("cannot wait for the workload")? {
                    self.child = None;
                    self.live = false;
                    bail!("the workload exited before it was ready ({status}); see {}/stdout.log", self.dir.display());
                }
            }
            check_cancel(cancel)?;
            if Instant::now() >= deadline {
                bail!("the workload was not ready after {timeout:?}");
            }
            sleep(POLL);
        }
    }

    /// Have the memory workload change 1% of its pages (`DIR/change`),
    /// and wait until it has (`DIR/changed`).
    pub fn change(&mut self, timeout: Duration, cancel: &Cancel) -> anyhow::Result<()> {
        fs::write(self.dir.join("change"), "").context("cannot ask the workload to change its memory")?;
        let deadline = Instant::now() + timeout;
        while !self.dir.join("changed").exists() {
            check_cancel(cancel)?;
            if Instant::now() >= deadline {
                bail!(
                    "the workload did not change its memory within {timeout:?}; see {}/stdout.log",
                    self.dir.display()
                );
            }
            sleep(POLL);
        }
        Ok(())
    }

    /// Reap the process a dump killed, which frees its pid for the restore.
    /// Returns how it ended, for people.
    pub fn reap_killed(&mut self) -> anyhow::Result<String> {
        self.live = false;
        match self.child.take() {
            Some(mut child) => {
                let status = child.wait().context("cannot reap the dumped process")?;
                Ok(status.to_string())
            }
            None => Ok("already reaped".into()),
        }
    }

    /// Kill the process (left running by a dump) and reap it, which frees
    /// its pid for the restore.
    pub fn kill_and_reap(&mut self) -> anyhow::Result<String> {
        if let Some(child) = &mut self.child {
            child.kill().context("cannot kill the dumped process")?;
        }
        self.reap_killed()
    }

    /// The process runs again at `pid`, restored by this stasis (and so its
    /// child).
    pub fn restored(&mut self, pid: i32) {
        self.pid = pid;
        self.child = None;
        self.live = true;
    }

    /// Ask for a self-check (`DIR/check`), wait for `DIR/result` and for
    /// the process to exit, and reap it. Returns the verdict's text.
    pub fn check(&mut self, timeout: Duration, cancel: &Cancel) -> anyhow::Result<String> {
        let result = self.dir.join("result");
        let _ = fs::remove_file(&result);
        fs::write(self.dir.join("check"), "").context("cannot ask the workload to check itself")?;
        let deadline = Instant::now() + timeout;
        let mut exited = None;
        loop {
            if exited.is_none() {
                exited = self.try_reap()?;
            }
            if let Ok(text) = fs::read_to_string(&result) {
                // The workload exits right after writing its result.
                while exited.is_none() && Instant::now() < deadline {
                    sleep(POLL);
                    exited = self.try_reap()?;
                }
                let text = text.trim().to_owned();
                return match exited {
                    Some(how) if how != "exited 0" && text.starts_with("ok") => {
                        Ok(format!("fail: said {text:?} but then {how}"))
                    }
                    _ => Ok(text),
                };
            }
            if let Some(how) = &exited {
                bail!("the workload {how} without a verdict; see {}/stdout.log", self.dir.display());
            }
            check_cancel(cancel)?;
            if Instant::now() >= deadline {
                bail!("no verdict from the workload after {timeout:?}");
            }
            sleep(POLL);
        }
    }

    /// Reap the process if it has ended; how it ended.
    fn try_reap(&mut self) -> anyhow::Result<Option<String>> {
        if !self.live {
            return Ok(Some("was reaped".into()));
        }
        if let Some(child) = &mut self.child {
            let status = child.try_wait().context("cannot wait for the workload")?;
            if status.is_some() {
                self.live = false;
                self.child = None;
            }
            return Ok(status.map(|s| match s.code() {
                Some(code) => format!("exited {code}"),
                None => s.to_string(),
            }));
        }
        let how = match waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(WaitStatus::Exited(_, code)) => format!("exited {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => format!("was killed by {sig}"),
            Ok(other) => return Err(anyhow::anyhow!("unexpected wait status {other:?}")),
            Err(Errno::ECHILD) => "is not a child of this stasis".into(),
            Err(e) => return Err(e).context("cannot wait for the restored process"),
        };
        self.live = false;
        Ok(Some(how))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        } else {
            let pid = Pid::from_raw(self.pid);
            if kill(pid, Signal::SIGKILL).is_ok() {
                let _ = waitpid(pid, None);
            }
        }
    }
}

/// How demo and bench dump the workload: killed once the image is verified.
pub fn dump_options(pid: i32, images: &Path, cancel: &Cancel) -> stasis_checkpoint::dump::DumpOptions {
    stasis_checkpoint::dump::DumpOptions {
        target: stasis_checkpoint::freeze::Target::Tree(Pid::from_raw(pid)),
        images: images.to_path_buf(),
        leave_running: false,
        cgroup: None,
        write: stasis_image::WriteOptions::default(),
        cancel: Some(Cancel::clone(cancel)),
        progress: None,
        while_frozen: None,
        pre_copy: false,
        skip_in_flight: false,
        max_freeze: None,
        keep_tracking: false,
    }
}

/// How demo and bench restore it.
pub fn restore_options(images: &Path, cancel: &Cancel) -> stasis_checkpoint::restore::RestoreOptions {
    stasis_checkpoint::restore::RestoreOptions {
        images: images.to_path_buf(),
        allow_changed_files: false,
        pid_timeout: Duration::from_secs(10),
        pid_namespace: Default::default(),
        cancel: Some(Cancel::clone(cancel)),
        progress: None,
        moved_devices: Vec::new(),
        inherit: Vec::new(),
        shell_job: false,
    }
}

/// The stasis executable, which runs the workload as a hidden subcommand.
pub fn stasis_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the stasis executable")
}

/// A fresh directory `PREFIX-PID-N` under `base` (not a predictable name
/// that someone else could have made: create_dir fails if it exists).
pub fn fresh_dir(base: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(base).with_context(|| format!("cannot create {}", base.display()))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    for n in 0..1000u32 {
        let dir = base.join(format!("{prefix}-{}-{:08x}", std::process::id(), nanos.wrapping_add(n)));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    bail!("cannot make a fresh directory under {}", base.display())
}

/// Bytes of the files in `dir` (an image directory is flat).
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    // A pack may have holes (chunks of a live snapshot's first copy that
    // were replaced): what is allocated counts, not the length.
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len().min(m.blocks() * 512))
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_writes_visit_every_page_and_are_found_again() {
        for pages in [1, 2, 7, 100, 4096, 65_536] {
            let w = Writes::new(pages);
            let mut last = vec![0u64; pages];
            for k in 0..(3 * pages as u64 + 5) {
                last[w.page_of(k)] = k + 1;
                if k % (pages as u64 / 4 + 1) == 0 || k + 1 == 3 * pages as u64 + 5 {
                    for (page, &l) in last.iter().enumerate() {
                        assert_eq!(w.last_write(page, k + 1), l, "pages {pages}, page {page} after {} writes", k + 1);
                    }
                }
            }
            assert!(last.iter().all(|&l| l > 0), "a page never written, {pages} pages");
        }
    }

    #[test]
    fn tick_lines_parse_back() {
        let line = tick_line(12, 0xdead_beef);
        assert_eq!(parse_tick(&line), Some((12, 0xdead_beef)));
        assert_eq!(parse_tick("tick 1 checksum zz"), None);
        assert_eq!(parse_tick("tick 1 checksum 00 extra"), None);
    }

    #[test]
    fn counter_check_catches_a_missing_tick() {
        let dir = std::env::temp_dir().join(format!("stasis-wl-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("counter.log");
        let mut sum = CHAIN_SEED;
        let mut text = String::new();
        for n in 1..=5 {
            sum = chain(sum, n);
            text.push_str(&tick_line(n, sum));
        }
        fs::write(&log, &text).unwrap();
        assert!(check_counter(&log, 5, sum).is_ok());
        assert!(check_counter(&log, 6, sum).unwrap_err().contains("5 ticks in the log, 6 in memory"));
        assert!(check_counter(&log, 5, sum ^ 1).is_err());
        fs::write(&log, text.replace("tick 3 ", "tick 4 ")).unwrap();
        assert!(check_counter(&log, 5, sum).unwrap_err().contains("line 3"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_fill_is_complete_and_varied() {
        let mut buf = vec![0u8; 256 << 10];
        fill_text(&mut buf, &mut XorShift(1));
        assert!(!buf.contains(&0));
        let (a, b) = buf.split_at(128 << 10);
        assert_ne!(&a[..64 << 10], &b[..64 << 10]);
        assert_ne!(checksum(a), checksum(b));
    }
}
