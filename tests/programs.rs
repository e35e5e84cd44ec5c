//! Dump and restore of real programs from Debian (python3, bash, coreutils
//! sleep) rather than our own C workloads: each must carry on after the
//! restore exactly as if it had never stopped, which the tests see in what
//! the program itself computes and writes.

mod util;

use std::fs;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use util::spawned::{dump_ok, python3, python_script, restore_ok, tempdir, tool, Spawned};
use util::workload::{is_alive, wait_gone, Workload};

/// Builds a 300k-entry dict deterministically, then walks a hash chain
/// through it for STEPS steps, rewriting the entry it visits (so the result
/// depends on the whole dict surviving the restore intact), and writes the
/// final value and a checksum of the dict to DIR/result.
///
/// Progress is published as a symlink whose target is the step (symlink,
/// then rename over DIR/progress): the script never holds an fd on its
/// directory while it computes, so a --leave-running dump cannot catch a
/// transient fd on a file the original then moves on (which restore would
/// rightly refuse as changed).
const DICT_SCRIPT: &str = r#"
import os, sys
d_dir, n_steps = sys.argv[1], int(sys.argv[2])

def publish(step):
    tmp = os.path.join(d_dir, "progress.tmp")
    os.symlink(str(step), tmp)
    os.replace(tmp, os.path.join(d_dir, "progress"))

M = (1 << 64) - 1
N = 300_000
d = {i: (i * 6364136223846793005 + 1442695040888963407) & M for i in range(N)}
x = 1
every = max(1, n_steps // 20)
for step in range(n_steps):
    k = x % N
    x = ((x * 6364136223846793005) ^ d[k]) & M
    d[k] = (x >> 7) ^ step
    if step % every == 0:
        publish(step)
with open(os.path.join(d_dir, "result.tmp"), "w") as f:
    f.write("%d %d %d\n" % (x, len(d), sum(d.values()) & M))
os.replace(os.path.join(d_dir, "result.tmp"), os.path.join(d_dir, "result"))
"#;

/// About 6-12 s of computation on an idle core: enough to be running still
/// after two dumps that copy its memory while it runs first.
const DICT_STEPS: u64 = 2_400_000;
const RESULT_TIMEOUT: Duration = Duration::from_secs(120);

fn start_dict(name: &str) -> Spawned {
    let dir = tempdir(name);
    let script = dir.path().join("dict.py");
    fs::write(&script, DICT_SCRIPT).unwrap();
    let mut cmd = Command::new(python3());
    cmd.arg("-I").arg(&script).arg(dir.path()).arg(DICT_STEPS.to_string()).current_dir(dir.path());
    Spawned::start(name, cmd, dir)
}

fn dict_progress(dir: &Path) -> Option<u64> {
    fs::read_link(dir.join("progress")).ok()?.to_str()?.parse().ok()
}

fn dict_result(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join("result")).ok()
}

/// The result of an uninterrupted run.
fn dict_expected() -> String {
    let mut p = start_dict("dict-expected");
    let result = p.wait_for(RESULT_TIMEOUT, "DIR/result", || dict_result(&p.dir));
    let status = p.wait_exit(Duration::from_secs(30)).expect("our child");
    assert!(status.success(), "uninterrupted python run failed: {status}\n{}", p.log());
    assert_eq!(result.split_whitespace().count(), 3, "bad result {result:?}");
    result
}

/// Wait until the script is inside its loop (past its first progress step).
fn wait_in_loop(p: &Spawned) -> u64 {
    p.wait_for(Duration::from_secs(60), "progress past step 0", || dict_progress(&p.dir).filter(|&s| s > 0))
}

/// Wait for DIR/result, checking on the way that the progress never drops
/// below `floor` (a restored process resumes, it does not start over).
fn wait_dict_result(p: &Spawned, floor: u64) -> String {
    p.wait_for(RESULT_TIMEOUT, "DIR/result", || {
        if let Some(s) = dict_progress(&p.dir) {
            assert!(s >= floor, "progress went back from {floor} to {s}: the restored script started over");
        }
        dict_result(&p.dir)
    })
}

/// Dump python computing over its large dict (killing it), restore it with
/// `restore_args`, and check it computes the uninterrupted run's result;
/// the restore's output.
fn dict_round_trip(name: &str, restore_args: &[&str]) -> util::Run {
    let want = dict_expected();
    let mut p = start_dict(name);
    wait_in_loop(&p);
    let images = tempdir(&format!("{name}-img"));
    dump_ok(p.pid, images.path(), &[]);
    let status = p.wait_exit(Duration::from_secs(30)).expect("our child");
    assert_eq!(status.signal(), Some(9), "the dump should have killed python: {status}");
    let at_dump = dict_progress(&p.dir).unwrap();
    assert!(dict_result(&p.dir).is_none(), "python finished before the dump; raise DICT_STEPS");
    let mut args = vec!["restore", "--images", images.path().to_str().unwrap()];
    args.extend_from_slice(restore_args);
    let r = util::run(&args).success();
    assert_eq!(r.stdout.trim(), p.pid.to_string(), "restored at another pid\n{}", r.dump());
    assert_eq!(wait_dict_result(&p, at_dump), want, "the restored run computed another result\n{}", p.log());
    r
}

#[test]
fn python_large_dict_round_trip() {
    dict_round_trip("dict-rt", &[]);
}

/// `restore --lazy` of python computing over its large dict: it runs on
/// at once, reading and writing all over its heap while the heap loads,
/// and computes the uninterrupted run's result.
#[test]
fn python_large_dict_lazy_restore() {
    let r = dict_round_trip("dict-lazy", &["--lazy"]);
    assert!(r.stderr.contains("memory loaded"), "{}", r.dump());
}

#[test]
fn python_large_dict_leave_running() {
    let want = dict_expected();
    let mut p = start_dict("dict-lr");
    wait_in_loop(&p);
    let images = tempdir("dict-lr-img");
    dump_ok(p.pid, images.path(), &["--leave-running"]);
    let at_dump = dict_progress(&p.dir).unwrap();
    // The original computes on after the dump...
    p.wait_for(Duration::from_secs(60), "progress after the dump", || dict_progress(&p.dir).filter(|&s| s > at_dump));
    p.kill();
    assert!(dict_result(&p.dir).is_none(), "the original finished before it was killed; raise DICT_STEPS");
    // ...and the copy restored from the image finishes the same computation.
    restore_ok(p.pid, images.path());
    assert_eq!(wait_dict_result(&p, 0), want, "the restored run computed another result\n{}", p.log());
}

#[test]
fn python_large_dict_checkpointed_twice() {
    let want = dict_expected();
    let mut p = start_dict("dict-twice");
    wait_in_loop(&p);
    let first = tempdir("dict-twice-img1");
    dump_ok(p.pid, first.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    let at_first = dict_progress(&p.dir).unwrap();
    restore_ok(p.pid, first.path());
    // The restored process computes (its progress moves), then is dumped again.
    let moved = p.wait_for(Duration::from_secs(60), "progress after the first restore", || {
        dict_progress(&p.dir).filter(|&s| s > at_first)
    });
    let second = tempdir("dict-twice-img2");
    dump_ok(p.pid, second.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    assert!(dict_result(&p.dir).is_none(), "python finished before the second dump; raise DICT_STEPS");
    restore_ok(p.pid, second.path());
    assert_eq!(wait_dict_result(&p, moved), want, "the twice restored run computed another result\n{}", p.log());
}

#[test]
fn sleep_sleeps_the_remaining_time() {
    const SLEEP: Duration = Duration::from_secs(6);
    let dir = tempdir("sleep");
    let mut cmd = Command::new(tool("sleep"));
    // argv[0] names our directory, to recognise the restored process.
    cmd.arg0(dir.path().join("sleep")).arg(SLEEP.as_secs().to_string());
    let started = Instant::now();
    let mut p = Spawned::start("sleep", cmd, dir);
    sleep(Duration::from_secs(1));
    assert!(p.alive(), "sleep exited early\n{}", p.log());
    let images = tempdir("sleep-img");
    dump_ok(p.pid, images.path(), &[]);
    let status = p.wait_exit(Duration::from_secs(30)).expect("our child");
    assert_eq!(status.signal(), Some(9), "the dump should have killed sleep: {status}");
    restore_ok(p.pid, images.path());
    let restored = Instant::now();
    sleep(Duration::from_secs(2));
    assert!(
        p.alive() && p.is_ours(),
        "the restored sleep exited within 2 s of the restore ({:?} after it first started), not after the rest of its {SLEEP:?}",
        started.elapsed()
    );
    assert!(
        wait_gone(p.pid, Duration::from_secs(60)),
        "the restored sleep still runs {:?} after it started",
        started.elapsed()
    );
    let total = started.elapsed();
    assert!(
        total + Duration::from_millis(300) >= SLEEP,
        "sleep {SLEEP:?} was gone {total:?} after it started (restored {:?} in)",
        restored - started
    );
    assert!(total < Duration::from_secs(60), "sleep {SLEEP:?} took {total:?}");
}

/// Wait until the bash loop's DIR/count is 20 past `at_dump`, checking on
/// the way that it never goes back (a restored loop goes on, it does not
/// start over).
fn counts_on(p: &Spawned, at_dump: u64) {
    let count = |dir: &Path| fs::read_to_string(dir.join("count")).ok()?.trim().parse::<u64>().ok();
    let mut last = at_dump;
    p.wait_for(Duration::from_secs(30), "count 20 past the dump", || {
        // An empty read is a write in progress (truncate, then printf).
        if let Some(c) = count(&p.dir) {
            assert!(c >= last, "count went from {last} to {c} (dumped at {at_dump}): bash started over");
            last = c;
        }
        (last >= at_dump + 20).then_some(())
    });
}

#[test]
fn bash_builtin_loop_counts_on() {
    let dir = tempdir("bash-loop");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Builtins only: an external command would fork a child, and a process
    // with children cannot be dumped yet. `read -t` on the FIFO (held open
    // read-write, so it never sees EOF) paces the loop without a fork.
    let script = r#"exec 3<>"$1/fifo"; i=0; while :; do i=$((i+1)); printf '%s\n' "$i" > "$1/count"; read -t 0.05 -u 3 || true; done"#;
    let mut cmd = Command::new(tool("bash"));
    cmd.arg("-c").arg(script).arg("bash-loop").arg(dir.path());
    let mut p = Spawned::start("bash-loop", cmd, dir);
    let count = |dir: &Path| fs::read_to_string(dir.join("count")).ok()?.trim().parse::<u64>().ok();
    p.wait_for(Duration::from_secs(30), "count 5", || count(&p.dir).filter(|&c| c >= 5));
    let images = tempdir("bash-loop-img");
    dump_ok(p.pid, images.path(), &[]);
    let status = p.wait_exit(Duration::from_secs(30)).expect("our child");
    assert_eq!(status.signal(), Some(9), "the dump should have killed bash: {status}");
    let at_dump = count(&p.dir).expect("a count at dump time");
    restore_ok(p.pid, images.path());
    counts_on(&p, at_dump);
    assert!(is_alive(p.pid), "restored bash is gone\n{}", p.log());
    p.kill();
}

/// dump, restore, dump the restored process, restore again, self-check.
fn checkpoint_twice(name: &str, args: &[&str]) {
    let mut w = Workload::start(name, args);
    let before = w.wait_running();
    let first = tempdir(&format!("{name}-img1"));
    dump_ok(w.pid, first.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    restore_ok(w.pid, first.path());
    let moved = w.wait_running();
    let second = tempdir(&format!("{name}-img2"));
    dump_ok(w.pid, second.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    restore_ok(w.pid, second.path());
    let outcome = w.check_ok();
    assert!(
        outcome.generation >= moved && moved > before,
        "generations: {before} before, {moved} after the first restore, {} at the end",
        outcome.generation
    );
}

#[test]
fn mem_dense_checkpointed_twice() {
    checkpoint_twice("mem_dense", &["16"]);
}

#[test]
fn threads_checkpointed_twice() {
    checkpoint_twice("threads", &[]);
}

/// A program whose executable was deleted while it runs (replaced by an
/// upgrade): a copy of bash, removed, counting in a loop. After the restore
/// it counts on, its code comes from the deleted file made again, and its
/// exe link names that file, deleted, as before.
#[test]
fn program_whose_executable_was_deleted() {
    let dir = tempdir("deleted-exe");
    let exe = dir.path().join("bash-copy");
    fs::copy(tool("bash"), &exe).unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let script = r#"exec 3<>"$1/fifo"; i=0; while :; do i=$((i+1)); printf '%s\n' "$i" > "$1/count"; read -t 0.05 -u 3 || true; done"#;
    let mut cmd = Command::new(&exe);
    cmd.arg("-c").arg(script).arg("deleted-exe").arg(dir.path());
    let mut p = Spawned::start("deleted-exe", cmd, dir);
    let count = |dir: &Path| fs::read_to_string(dir.join("count")).ok()?.trim().parse::<u64>().ok();
    p.wait_for(Duration::from_secs(30), "count 5", || count(&p.dir).filter(|&c| c >= 5));
    fs::remove_file(&exe).unwrap();
    let link = |pid: i32| fs::read_link(format!("/proc/{pid}/exe")).unwrap().to_string_lossy().into_owned();
    let want = format!("{} (deleted)", exe.display());
    assert_eq!(link(p.pid), want);
    let images = tempdir("deleted-exe-img");
    dump_ok(p.pid, images.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    let at_dump = count(&p.dir).expect("a count at dump time");
    restore_ok(p.pid, images.path());
    assert_eq!(link(p.pid), want, "the restored process's exe link");
    counts_on(&p, at_dump);
    p.kill();
}

/// `flock FILE sleep 1000` dumped whole (flock(1) and its job): after the
/// restore the lock is held again, so another `flock -n FILE` fails, and
/// it is free once the restored tree is gone.
#[test]
fn flock_and_its_job_keep_the_lock() {
    let dir = tempdir("flock-tree");
    let lock = dir.path().join("lockfile");
    let mut cmd = Command::new(tool("flock"));
    cmd.arg(&lock).arg(tool("sleep")).arg("1000");
    let mut p = Spawned::start("flock-tree", cmd, dir);
    let job = p.wait_for(Duration::from_secs(30), "flock's job running sleep", || {
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", p.pid)).ok()?;
        let job = children.split_whitespace().next()?.parse::<i32>().ok()?;
        (fs::read_to_string(format!("/proc/{job}/comm")).ok()?.trim() == "sleep").then_some(job)
    });
    let try_lock = || Command::new(tool("flock")).arg("-n").arg(&lock).arg("true").status().unwrap().success();
    assert!(!try_lock(), "the lock is not held before the dump");
    let images = tempdir("flock-tree-img");
    dump_ok(p.pid, images.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    assert!(wait_gone(job, Duration::from_secs(30)), "the job outlived the dump");
    restore_ok(p.pid, images.path());
    assert!(is_alive(job), "the job was not restored");
    assert!(!try_lock(), "the lock is free after the restore");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(job), nix::sys::signal::Signal::SIGKILL);
    // flock(1) exits with its job, and the lock goes with it.
    assert!(wait_gone(p.pid, Duration::from_secs(30)), "flock outlived its job");
    assert!(try_lock(), "the lock is still held after the tree is gone");
}

/// A logger appending numbered lines to a log opened with O_APPEND (as
/// `>>` or open(..., "a") make it); while it is dumped away, another
/// process appends to the same log. The restore is not refused for that
/// (every write goes to the end whatever happened), says so, and the log
/// then holds every line once, in order: the logger's up to the dump, the
/// other's, the logger's from the next number on. A file that shrank is
/// still refused.
#[test]
fn append_only_log_that_grew_since_the_dump() {
    let dir = tempdir("append-log");
    let script = dir.path().join("logger.py");
    fs::write(
        &script,
        "import os, sys, time\nfd = os.open(os.path.join(sys.argv[1], 'app.log'), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)\n\
         i = 0\nwhile True:\n    i += 1\n    os.write(fd, b'line %d\\n' % i)\n    time.sleep(0.005)\n",
    )
    .unwrap();
    let log = dir.path().join("app.log");
    let mut cmd = Command::new(python3());
    cmd.arg("-I").arg(&script).arg(dir.path());
    let mut p = Spawned::start("append-log", cmd, dir);
    let lines =
        |path: &Path| fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>();
    p.wait_for(Duration::from_secs(30), "5 lines", || (lines(&log).len() >= 5).then_some(()));
    let images = tempdir("append-log-img");
    dump_ok(p.pid, images.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    let at_dump = lines(&log).len();
    fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"from another process\n").unwrap();
    let r = restore_ok(p.pid, images.path());
    assert!(r.stderr.contains("grew by 21 bytes") && r.stderr.contains("appending only"), "no note\n{}", r.dump());
    assert!(!r.stderr.contains('\x1b'), "colour codes in a note written to a pipe\n{}", r.dump());
    p.wait_for(Duration::from_secs(30), "20 more lines", || (lines(&log).len() >= at_dump + 21).then_some(()));
    p.kill();
    let mut want: Vec<String> = (1..=at_dump).map(|i| format!("line {i}")).collect();
    want.push("from another process".into());
    let all = lines(&log);
    want.extend((at_dump + 1..all.len()).map(|i| format!("line {i}")));
    assert_eq!(all, want, "the log does not hold every line once, in order");

    // Truncated since: refused.
    let images2 = tempdir("append-log-img2");
    let mut cmd = Command::new(python3());
    let dir = tempdir("append-log2");
    let log = dir.path().join("app.log");
    cmd.arg("-I").arg(&script).arg(dir.path());
    let mut q = Spawned::start("append-log2", cmd, dir);
    q.wait_for(Duration::from_secs(30), "5 lines", || (lines(&log).len() >= 5).then_some(()));
    dump_ok(q.pid, images2.path(), &[]);
    q.wait_exit(Duration::from_secs(30));
    fs::write(&log, "short\n").unwrap();
    let r = util::run(["restore", "--images", images2.path().to_str().unwrap()]).expect_code(1);
    assert!(r.stderr.contains("app.log") && r.stderr.contains("changed since the dump"), "{}", r.dump());
}

/// A process stopped by SIGSTOP (a shell's stopped job) is dumped and comes
/// back stopped: it does not count on until it gets SIGCONT, then goes on
/// from where it was. With --leave-running the original stays stopped too.
#[test]
fn stopped_process_comes_back_stopped() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let state = |pid: i32| {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat[stat.rfind(')').map_or(0, |i| i + 2)..].chars().next()
    };
    let dir = tempdir("stopped");
    let script =
        r#"i=0; while :; do i=$((i+1)); printf '%s\n' "$i" > "$1/count"; read -t 0.02 -u 3 || true; done 3<>"$1/fifo""#;
    nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut cmd = Command::new(tool("bash"));
    cmd.arg("-c").arg(script).arg("stopped").arg(dir.path());
    let mut p = Spawned::start("stopped", cmd, dir);
    let count = |dir: &Path| fs::read_to_string(dir.join("count")).ok()?.trim().parse::<u64>().ok();
    p.wait_for(Duration::from_secs(30), "count 5", || count(&p.dir).filter(|&c| c >= 5));
    kill(Pid::from_raw(p.pid), Signal::SIGSTOP).unwrap();
    p.wait_for(Duration::from_secs(10), "state T", || (state(p.pid) == Some('T')).then_some(()));
    let still = |p: &Spawned, what: &str| {
        let at = count(&p.dir);
        sleep(Duration::from_millis(300));
        assert_eq!(count(&p.dir), at, "{what}: it counted while stopped");
        assert_eq!(state(p.pid), Some('T'), "{what}: not stopped");
    };

    let images = tempdir("stopped-lr-img");
    dump_ok(p.pid, images.path(), &["--leave-running"]);
    still(&p, "the original after a --leave-running dump");

    let images = tempdir("stopped-img");
    dump_ok(p.pid, images.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    let at_dump = count(&p.dir).unwrap();
    restore_ok(p.pid, images.path());
    still(&p, "the restored process");
    kill(Pid::from_raw(p.pid), Signal::SIGCONT).unwrap();
    p.wait_for(Duration::from_secs(30), "counting on after SIGCONT", || count(&p.dir).filter(|&c| c >= at_dump + 5));
    p.kill();
}

/// Holds 64 MiB of pages from seeded generators, blocked in a read of
/// DIR/ctl (a FIFO it makes) between orders, so that nothing but an order changes
/// its memory: `c` rewrites 1% of the pages (every 100th, spread out) and
/// makes DIR/changed; `k` checks every page is what it must be and writes
/// DIR/result.
const PAGES_SCRIPT: &str = r#"
import mmap, os, random, sys
d = sys.argv[1]
pages = 16384
page = lambda k, v: random.Random(k * 1000 + v).randbytes(4096)
os.mkfifo(os.path.join(d, "ctl"), 0o600)
# Page-aligned (a bytearray's bytes start past a header: each of its
# pages would straddle two of the process's). Shared (mmap's default), or
# private with "private".
private = sys.argv[2:] == ["private"]
buf = mmap.mmap(-1, pages * 4096, flags=mmap.MAP_PRIVATE) if private else mmap.mmap(-1, pages * 4096)
for k in range(pages):
    buf[k * 4096:(k + 1) * 4096] = page(k, 0)
version = [0] * pages
# Pages given back to the kernel (MADV_DONTNEED) and read since: zeros.
dropped = set()
ctl = os.open(os.path.join(d, "ctl"), os.O_RDWR)
open(os.path.join(d, "ready"), "w").close()
while True:
    order = os.read(ctl, 1)
    if order == b"c":
        for k in range(0, pages, 100):
            version[k] += 1
            buf[k * 4096:(k + 1) * 4096] = page(k, version[k])
        open(os.path.join(d, "changed"), "w").close()
    elif order == b"d":
        for k in range(50, pages, 100):
            buf.madvise(mmap.MADV_DONTNEED, k * 4096, 4096)
            dropped.add(k)
            buf[k * 4096]
        open(os.path.join(d, "dropped"), "w").close()
    elif order == b"k":
        break
zero = bytes(4096)
want = lambda k: zero if k in dropped else page(k, version[k])
bad = [k for k in range(pages) if buf[k * 4096:(k + 1) * 4096] != want(k)]
with open(os.path.join(d, "result.tmp"), "w") as f:
    f.write("ok %d\n" % sum(version) if not bad else "fail: pages %r\n" % bad[:5])
os.replace(os.path.join(d, "result.tmp"), os.path.join(d, "result"))
"#;

/// An order to the pages script, through its FIFO.
fn order(dir: &Path, what: &[u8]) {
    use std::io::Write;
    fs::OpenOptions::new().write(true).open(dir.join("ctl")).unwrap().write_all(what).unwrap();
}

/// Incremental images (`dump --parent`): a process dumped (left running),
/// then again after writing 1% of its pages, spread out, with the first
/// image as parent: the second stores only the chunks that changed, each
/// as the pages it changed from the parent's (under 5% of the first's
/// bytes at the default chunk size), and restored from it
/// (the parent's chunks read from the parent) the process has every page
/// as it was, the changed ones changed.
#[test]
fn incremental_image_of_a_process_that_wrote_one_percent() {
    let mut p = python_script("incremental", PAGES_SCRIPT, &[]);
    p.wait_for(Duration::from_secs(60), "DIR/ready", || p.dir.join("ready").exists().then_some(()));
    let parent = tempdir("incremental-parent");
    dump_ok(p.pid, parent.path(), &["--leave-running"]);
    order(&p.dir, b"c");
    p.wait_for(Duration::from_secs(30), "DIR/changed", || p.dir.join("changed").exists().then_some(()));
    let child = tempdir("incremental-child");
    // Cut otherwise than the parent, nothing would be shared: refused.
    let pid = p.pid.to_string();
    let (c, pp) = (child.path().to_str().unwrap(), parent.path().to_str().unwrap());
    let r = util::run(["dump", "--pid", &pid, "--images", c, "--parent", pp, "--chunk-size", "16K"]).expect_code(1);
    assert!(r.stderr.contains("differs from the parent image's chunk size"), "{}", r.dump());
    let r = util::run(["dump", "--pid", &pid, "--images", c, "--chunk-size", "5000"]).expect_code(2);
    assert!(r.stderr.contains("not a multiple of 4K"), "{}", r.dump());
    let r = dump_ok(p.pid, child.path(), &["--parent", parent.path().to_str().unwrap(), "--json"]);
    p.wait_exit(Duration::from_secs(30));
    // Every file of each image: chunks and manifest (index included).
    let bytes = |d: &Path| fs::read_dir(d).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum::<u64>();
    let (first, second) = (bytes(parent.path()), bytes(child.path()));
    assert!(first > 64 << 20, "the first image holds {first} bytes\n{}", r.dump());
    assert!(second * 20 <= first, "the incremental image holds {second} bytes, the first {first}: over 5%");
    let shown = util::run(["inspect", "--json", child.path().to_str().unwrap()]).success().json();
    // At the default chunk size (64 KiB): a sixth of the chunks changed,
    // each stored as the page it changed (a delta on the parent's chunk).
    assert_eq!(shown["chunk_size"], 65536, "{shown}");
    restore_ok(p.pid, child.path());
    order(&p.dir, b"k");
    let result = p.wait_for(Duration::from_secs(60), "DIR/result", || fs::read_to_string(p.dir.join("result")).ok());
    assert_eq!(result.trim(), "ok 164", "{}", p.log());
}

/// Write tracking kept between dumps (`dump --keep-tracking`) of private
/// memory: the second dump (`--parent` the first) reads only what the
/// process wrote since,
/// taking the tracking back from the first's holder and keeping it again;
/// pages given back to the kernel and faulted in again (zeros now) are
/// not taken from the parent; a third dump, killing it, goes on from the
/// second's tracking, and the process restored from the three images has
/// every page as it was at the third (the unchanged ones through the
/// first two images' chunks).
#[test]
fn write_tracking_kept_between_dumps_reads_only_what_was_written() {
    let mut p = python_script("tracking", PAGES_SCRIPT, &["private"]);
    p.wait_for(Duration::from_secs(60), "DIR/ready", || p.dir.join("ready").exists().then_some(()));
    let images: Vec<_> = (0..3).map(|i| tempdir(&format!("tracking-{i}"))).collect();
    let path = |i: usize| images[i].path().to_str().unwrap().to_owned();
    let holder_of = |r: &util::Run| {
        let report = r.json();
        let holder = report["tracking"]["holder"].as_i64().unwrap_or_else(|| panic!("no holder\n{}", r.dump()));
        let state = Path::new("/run/stasis/tracking").join(format!("{holder}.json"));
        assert!(is_alive(holder as i32), "holder {holder} is not running\n{}", r.dump());
        assert!(state.exists(), "holder {holder} wrote no {}", state.display());
        (holder as i32, report)
    };
    // Kept for a process left running only.
    let r = util::run(["dump", "--pid", &p.pid.to_string(), "--images", &path(0), "--keep-tracking"]).expect_code(2);
    assert!(r.stderr.contains("--leave-running"), "{}", r.dump());
    let r = dump_ok(p.pid, images[0].path(), &["--leave-running", "--keep-tracking", "--json"]);
    let (first_holder, _) = holder_of(&r);

    order(&p.dir, b"c");
    p.wait_for(Duration::from_secs(30), "DIR/changed", || p.dir.join("changed").exists().then_some(()));
    order(&p.dir, b"d");
    p.wait_for(Duration::from_secs(30), "DIR/dropped", || p.dir.join("dropped").exists().then_some(()));
    let r = dump_ok(p.pid, images[1].path(), &["--leave-running", "--keep-tracking", "--parent", &path(0), "--json"]);
    let (second_holder, report) = holder_of(&r);
    assert!(wait_gone(first_holder, Duration::from_secs(10)), "the first holder still runs");
    let pre = &report["pre_copy"];
    assert_eq!(pre["resumed"], 1, "the tracking was not taken back\n{}", r.dump());
    // 1% of 64 MiB written (the interpreter's own writes besides): not
    // the whole of it read again.
    let read = pre["bytes_read"].as_u64().unwrap();
    assert!(read < 8 << 20, "the second dump read {read} bytes ahead\n{}", r.dump());

    fs::remove_file(p.dir.join("changed")).unwrap();
    order(&p.dir, b"c");
    p.wait_for(Duration::from_secs(30), "DIR/changed", || p.dir.join("changed").exists().then_some(()));
    let r = dump_ok(p.pid, images[2].path(), &["--parent", &path(1), "--json"]);
    assert!(wait_gone(second_holder, Duration::from_secs(10)), "the second holder still runs");
    assert_eq!(r.json()["pre_copy"]["resumed"], 1, "the tracking was not taken back\n{}", r.dump());
    p.wait_exit(Duration::from_secs(30));
    restore_ok(p.pid, images[2].path());
    order(&p.dir, b"k");
    let result = p.wait_for(Duration::from_secs(60), "DIR/result", || fs::read_to_string(p.dir.join("result")).ok());
    assert_eq!(result.trim(), "ok 328", "{}", p.log());
}

/// A program that runs another (exec) between two dumps: the second
/// dump finds the tracking the first kept is of the old address space,
/// starts anew (copies the new program's memory ahead, takes nothing of
/// the parent for it), and the restored process has the new program's
/// memory.
const EXEC_SCRIPT: &str = r#"
import mmap, os, random, sys
d, stage = sys.argv[1], sys.argv[2]
pages = 4096
page = lambda k: random.Random(k * 7 + len(stage)).randbytes(4096)
buf = mmap.mmap(-1, pages * 4096, flags=mmap.MAP_PRIVATE)
for k in range(pages):
    buf[k * 4096:(k + 1) * 4096] = page(k)
fifo = os.path.join(d, "ctl")
if not os.path.exists(fifo):
    os.mkfifo(fifo, 0o600)
ctl = os.open(fifo, os.O_RDWR)
open(os.path.join(d, stage), "w").close()
while True:
    order = os.read(ctl, 1)
    if order == b"e":
        os.close(ctl)
        os.execv(sys.executable, [sys.executable, "-I", sys.argv[0], d, "second"])
    elif order == b"k":
        break
bad = [k for k in range(pages) if buf[k * 4096:(k + 1) * 4096] != page(k)]
with open(os.path.join(d, "result.tmp"), "w") as f:
    f.write("ok %s\n" % stage if not bad else "fail: pages %r\n" % bad[:5])
os.replace(os.path.join(d, "result.tmp"), os.path.join(d, "result"))
"#;

#[test]
fn tracking_kept_across_an_exec_starts_anew() {
    let mut p = python_script("tracking-exec", EXEC_SCRIPT, &["first"]);
    p.wait_for(Duration::from_secs(60), "DIR/first", || p.dir.join("first").exists().then_some(()));
    let (first, second) = (tempdir("tracking-exec-0"), tempdir("tracking-exec-1"));
    let r = dump_ok(p.pid, first.path(), &["--leave-running", "--keep-tracking", "--json"]);
    assert!(r.json()["tracking"]["holder"].is_i64(), "the tracking was not kept\n{}", r.dump());
    order(&p.dir, b"e");
    p.wait_for(Duration::from_secs(60), "DIR/second", || p.dir.join("second").exists().then_some(()));
    let r = dump_ok(p.pid, second.path(), &["--parent", first.path().to_str().unwrap(), "--json"]);
    let pre = &r.json()["pre_copy"];
    assert_eq!(pre["resumed"], 0, "the old address space's tracking was used\n{}", r.dump());
    let read = pre["bytes_read"].as_u64().unwrap_or(0);
    assert!(read >= 16 << 20, "the new program's memory was not copied ahead ({read} bytes)\n{}", r.dump());
    p.wait_exit(Duration::from_secs(30));
    restore_ok(p.pid, second.path());
    order(&p.dir, b"k");
    let result = p.wait_for(Duration::from_secs(60), "DIR/result", || fs::read_to_string(p.dir.join("result")).ok());
    assert_eq!(result.trim(), "ok second", "{}", p.log());
}

/// Ignores SIGTRAP (argument "ignore") or catches it ("catch"), and once
/// DIR/go exists sends itself one and writes what came of it to
/// DIR/result. A dump runs its injected calls as one batch ending in an
/// int3, whose SIGTRAP the kernel forces: it resets an ignored SIGTRAP to
/// the default action (which kills), so the dump must ignore it again.
const TRAP_SCRIPT: &str = r#"
import os, signal, sys, time
d, mode = sys.argv[1], sys.argv[2]
caught = []
signal.signal(signal.SIGTRAP, signal.SIG_IGN if mode == "ignore" else (lambda s, f: caught.append(s)))
open(os.path.join(d, "ready"), "w").close()
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGTRAP)
time.sleep(0.05)
with open(os.path.join(d, "result.tmp"), "w") as f:
    f.write("%s caught %d\n" % (mode, len(caught)))
os.replace(os.path.join(d, "result.tmp"), os.path.join(d, "result"))
"#;

/// A process that ignores or catches SIGTRAP does so still after a
/// `--leave-running` dump, and so does the copy restored from a second
/// dump (which would have recorded the default action, had the first
/// left it).
#[test]
fn sigtrap_ignored_or_caught_stays_so_through_dumps() {
    for (mode, want) in [("ignore", "ignore caught 0"), ("catch", "catch caught 1")] {
        let mut p = python_script(&format!("trap-{mode}"), TRAP_SCRIPT, &[mode]);
        p.wait_for(Duration::from_secs(30), "ready", || p.dir.join("ready").exists().then_some(()));
        let first = tempdir(&format!("trap-{mode}-lr"));
        dump_ok(p.pid, first.path(), &["--leave-running"]);
        let second = tempdir(&format!("trap-{mode}-img"));
        dump_ok(p.pid, second.path(), &[]);
        p.wait_exit(Duration::from_secs(30));
        restore_ok(p.pid, second.path());
        fs::write(p.dir.join("go"), b"").unwrap();
        let result = p.wait_for(Duration::from_secs(30), "the restored process's result", || {
            fs::read_to_string(p.dir.join("result")).ok()
        });
        assert_eq!(result.trim(), want, "{mode}: SIGTRAP's disposition changed through the dumps\n{}", p.log());
        p.kill();
    }
}
