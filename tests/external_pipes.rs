//! Processes holding one end of a pipe whose other end is outside the tree,
//! as they are found under a shell pipeline or a supervisor: stdout piped
//! to a logger, stdin fed by another program. Here the test itself is that
//! outside process. Each program checks its own state after the restore:
//! the writer goes on counting from where it was, the reader gets exactly
//! the bytes that were queued and not yet read.

mod util;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use util::spawned::{dump_ok, python3, restore_ok, tempdir, Spawned};

/// Writes 1, 2, 3, ... a line each to stdout, every few ms. When a write
/// fails with EPIPE (python ignores SIGPIPE) it records the number it
/// could not write in DIR/broken and exits.
const COUNTER: &str = r#"
import os, sys, time
d = sys.argv[1]
i = 0
while True:
    i += 1
    try:
        os.write(1, b"%d\n" % i)
    except BrokenPipeError:
        with open(os.path.join(d, "broken.tmp"), "w") as f:
            f.write("%d\n" % i)
        os.replace(os.path.join(d, "broken.tmp"), os.path.join(d, "broken"))
        os._exit(0)
    time.sleep(0.005)
"#;

/// Reads the first line of stdin, says so in DIR/ready, waits for DIR/go,
/// then reads stdin to its end and writes what it read to DIR/got.
const READER: &str = r#"
import os, sys, time
d = sys.argv[1]
first = b""
while not first.endswith(b"\n"):
    first += os.read(0, 1)
# Whole or not at all: a reader of DIR/ready never sees it empty.
with open(os.path.join(d, "ready.tmp"), "wb") as f:
    f.write(first)
os.replace(os.path.join(d, "ready.tmp"), os.path.join(d, "ready"))
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.01)
rest = b""
while True:
    b = os.read(0, 65536)
    if not b:
        break
    rest += b
with open(os.path.join(d, "got.tmp"), "wb") as f:
    f.write(rest)
os.replace(os.path.join(d, "got.tmp"), os.path.join(d, "got"))
"#;

fn script(name: &str, text: &str) -> (tempfile::TempDir, Command) {
    let dir = tempdir(name);
    let path = dir.path().join(format!("{name}.py"));
    fs::write(&path, text).unwrap();
    let mut cmd = Command::new(python3());
    cmd.arg("-I").arg(&path).arg(dir.path()).current_dir(dir.path());
    (dir, cmd)
}

/// The counter with its stdout a pipe whose read end only the test holds.
fn start_counter(name: &str) -> (Spawned, BufReader<ChildStdout>) {
    let (dir, mut cmd) = script(name, COUNTER);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut p = Spawned::start_with_stdio(name, cmd, dir);
    let out = p.take_stdout();
    (p, BufReader::new(out))
}

/// The reader with its stdin a pipe whose write end only the test holds.
fn start_reader(name: &str) -> (Spawned, ChildStdin) {
    let (dir, mut cmd) = script(name, READER);
    cmd.stdin(Stdio::piped()).stdout(Stdio::null());
    let mut p = Spawned::start_with_stdio(name, cmd, dir);
    let input = p.take_stdin();
    (p, input)
}

/// The pipe's inode, as /proc/PID/fd shows it (`pipe:[N]`).
fn pipe_of(pid: i32, fd: i32) -> u64 {
    let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    let target = target.to_str().unwrap();
    target.strip_prefix("pipe:[").and_then(|t| t.strip_suffix(']')).unwrap().parse().unwrap()
}

/// Read the next `n` lines from the counter's pipe.
fn read_lines(out: &mut BufReader<ChildStdout>, n: usize) -> Vec<u64> {
    let mut text = String::new();
    for _ in 0..n {
        let got = out.read_line(&mut text).expect("read the counter's pipe");
        assert!(got > 0 && text.ends_with('\n'), "the counter's pipe ended after {text:?}");
    }
    numbers(&text)
}

/// The numbers of complete lines.
fn numbers(text: &str) -> Vec<u64> {
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().map(|l| l.parse().unwrap_or_else(|_| panic!("bad line {l:?} in {text:?}"))).collect()
}

/// The last number the counter wrote into its first pipe: the last of
/// what was left in it after the dump, or of what was read before.
fn last_written(before: &[u64], rest: &str) -> u64 {
    let mut all = before.to_vec();
    all.extend(numbers(rest));
    assert_counts_on(&all, 1, "the counter up to the dump");
    *all.last().unwrap()
}

fn assert_counts_on(numbers: &[u64], from: u64, what: &str) {
    assert!(!numbers.is_empty(), "{what}: no numbers");
    let want: Vec<u64> = (from..from + numbers.len() as u64).collect();
    assert_eq!(numbers, want, "{what}: the count did not go on one by one from {from}");
}

/// A process whose stdout is a pipe to a reader outside the tree is dumped
/// and restored. The bytes queued in the pipe stay with the outside reader
/// (they are its, in its pipe); the restored process goes on counting from
/// where it was and, with the reader gone, its next write fails with EPIPE,
/// as when the reader exits. `inspect` shows the pipe as external, and an
/// --inherit-fd naming no pipe of the image is refused, naming the pipe.
#[test]
fn stdout_pipe_to_an_outside_reader_round_trip() {
    let (mut p, mut out) = start_counter("ext-writer");
    let before = read_lines(&mut out, 3);
    let ino = pipe_of(p.pid, 1);
    let images = tempdir("ext-writer-img");
    dump_ok(p.pid, images.path(), &[]);
    let status = p.wait_exit(Duration::from_secs(30)).expect("our child");
    assert_eq!(status.signal(), Some(9), "the dump should have killed the counter: {status}");

    // What the counter had written before the dump is all still there for
    // the reader, up to the end of the file its writer's death made.
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let last = last_written(&before, &rest);

    let shown = util::run(["inspect", images.path().to_str().unwrap()]).success();
    assert!(
        shown.stdout.contains(&format!("pipe:[{ino}] (external: its reader was outside)")),
        "inspect does not show the external pipe\n{}",
        shown.dump()
    );

    let wrong = util::run(["restore", "--images", images.path().to_str().unwrap(), "--inherit-fd", "fd[1]:pipe:[1]"])
        .expect_code(1);
    assert!(
        wrong.stderr.contains("the image has no pipe:[1]") && wrong.stderr.contains(&format!("pipe:[{ino}]")),
        "the refusal does not name the image's external pipe\n{}",
        wrong.dump()
    );
    assert!(!util::workload::is_alive(p.pid), "a refused restore left a process at {}", p.pid);

    restore_ok(p.pid, images.path());
    let mut p = Spawned::adopt("ext-writer (restored)", p.pid, &p.dir);
    let broken = p.wait_for(Duration::from_secs(30), "DIR/broken", || fs::read_to_string(p.dir.join("broken")).ok());
    assert_eq!(
        broken.trim(),
        (last + 1).to_string(),
        "the restored counter should fail to write the number after the last one it wrote\n{}",
        p.log()
    );
    p.wait_exit(Duration::from_secs(30));
}

/// The same counter restored with `--inherit-fd`: the caller hands in a
/// pipe to a new logger (a `cat` of a shell's process substitution) and
/// the restored process writes on into it, from the next number.
#[test]
fn stdout_pipe_handed_to_a_new_logger_with_inherit_fd() {
    let (mut p, mut out) = start_counter("ext-inherit");
    let before = read_lines(&mut out, 3);
    let ino = pipe_of(p.pid, 1);
    let images = tempdir("ext-inherit-img");
    dump_ok(p.pid, images.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let last = last_written(&before, &rest);

    let logged = p.dir.join("logged");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"exec "$0" restore --images "$1" --inherit-fd "fd[3]:pipe:[$2]" 3> >(exec cat >>"$3" 2>/dev/null)"#)
        .arg(env!("CARGO_BIN_EXE_stasis"))
        .arg(images.path())
        .arg(ino.to_string())
        .arg(&logged)
        .stdin(Stdio::null());
    let r = util::run_command(cmd).success();
    assert_eq!(r.stdout.trim(), p.pid.to_string(), "restored at another pid\n{}", r.dump());
    let mut p = Spawned::adopt("ext-inherit (restored)", p.pid, &p.dir);
    let logged_numbers = p.wait_for(Duration::from_secs(30), "20 lines in the new logger's file", || {
        let n = numbers(&fs::read_to_string(&logged).ok()?);
        (n.len() >= 20).then_some(n)
    });
    assert_counts_on(&logged_numbers, last + 1, "the restored counter, into the inherited pipe");
    assert!(!p.dir.join("broken").exists(), "the restored counter met a broken pipe\n{}", p.log());
    p.kill();
}

/// --leave-running: the counter is not disturbed by the dump (no number
/// lost or repeated in the pipe across it), and the image names the pipe
/// as external.
#[test]
fn stdout_pipe_to_an_outside_reader_leave_running() {
    let (mut p, mut out) = start_counter("ext-writer-lr");
    let before = read_lines(&mut out, 3);
    let images = tempdir("ext-writer-lr-img");
    dump_ok(p.pid, images.path(), &["--leave-running"]);
    let mut all = before;
    all.extend(read_lines(&mut out, 50));
    assert_counts_on(&all, 1, "the counter across a --leave-running dump");
    assert!(p.alive(), "the counter died\n{}", p.log());
    p.kill();
}

/// A process whose stdin is a pipe fed from outside the tree, part read:
/// after the restore it reads exactly the bytes that were queued (not the
/// line it had already read), then end of file, as when the writer exits.
#[test]
fn stdin_pipe_from_an_outside_writer_round_trip() {
    let (mut p, mut input) = start_reader("ext-reader");
    let queued: Vec<u8> = (0..2000).flat_map(|i| format!("queued line {i}\n").into_bytes()).collect();
    input.write_all(b"first\n").unwrap();
    input.write_all(&queued).unwrap();
    let first = p.wait_for(Duration::from_secs(30), "DIR/ready", || fs::read(p.dir.join("ready")).ok());
    assert_eq!(first, b"first\n");
    let images = tempdir("ext-reader-img");
    dump_ok(p.pid, images.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    // The old pipe is gone with its reader; the test's end now leads nowhere.
    drop(input);

    restore_ok(p.pid, images.path());
    let mut p = Spawned::adopt("ext-reader (restored)", p.pid, &p.dir);
    fs::write(p.dir.join("go"), "").unwrap();
    let got = p.wait_for(Duration::from_secs(30), "DIR/got", || fs::read(p.dir.join("got")).ok());
    assert!(
        got == queued,
        "the restored reader read {} bytes, not the {} queued\n{}",
        got.len(),
        queued.len(),
        p.log()
    );
    p.wait_exit(Duration::from_secs(30));
}

/// --leave-running leaves the queued bytes in the pipe: the original reads
/// them, and what is written after, to the end.
#[test]
fn stdin_pipe_from_an_outside_writer_leave_running() {
    let (mut p, mut input) = start_reader("ext-reader-lr");
    input.write_all(b"first\nsecond\n").unwrap();
    p.wait_for(Duration::from_secs(30), "DIR/ready", || fs::read(p.dir.join("ready")).ok());
    let images = tempdir("ext-reader-lr-img");
    dump_ok(p.pid, images.path(), &["--leave-running"]);
    input.write_all(b"third\n").unwrap();
    drop(input);
    fs::write(p.dir.join("go"), "").unwrap();
    let got = p.wait_for(Duration::from_secs(30), "DIR/got", || fs::read(p.dir.join("got")).ok());
    assert_eq!(String::from_utf8_lossy(&got), "second\nthird\n", "{}", p.log());
    p.wait_exit(Duration::from_secs(30));
}

/// The counter as a shell pipeline starts it, `python3 counter.py | cat >
/// FILE`, and only the python process dumped: the pipe's reader is its
/// sibling `cat`. After the restore the count goes on from the last number
/// `cat` got, and the first write meets the broken pipe.
#[test]
fn process_in_a_shell_pipeline() {
    let (dir, _) = script("ext-pipeline", COUNTER);
    let piped = dir.path().join("piped");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#""$0" -I "$1/ext-pipeline.py" "$1" | cat >"$2"; echo ended >"$1/pipeline""#)
        .arg(python3())
        .arg(dir.path())
        .arg(&piped);
    let mut shell = Spawned::start("ext-pipeline (bash)", cmd, dir);
    // An argument that is the script's path: the shell's children have the
    // shell's command line (with "$1/ext-pipeline.py" unexpanded) until they
    // exec, and the one for cat must not be taken for python.
    let script_path = shell.dir.join("ext-pipeline.py");
    let python = shell.wait_for(Duration::from_secs(30), "the pipeline's python", || {
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", shell.pid)).ok()?;
        children.split_whitespace().map(|c| c.parse::<i32>().unwrap()).find(|c| {
            fs::read(format!("/proc/{c}/cmdline"))
                .is_ok_and(|l| l.split(|&b| b == 0).any(|arg| arg == script_path.as_os_str().as_encoded_bytes()))
        })
    });
    shell.wait_for(Duration::from_secs(30), "3 numbers through cat", || {
        (numbers(&fs::read_to_string(&piped).ok()?).len() >= 3).then_some(())
    });
    let images = tempdir("ext-pipeline-img");
    dump_ok(python, images.path(), &[]);
    // cat reads the rest and ends with the pipe, and the shell with it.
    shell.wait_exit(Duration::from_secs(30));
    assert!(shell.dir.join("pipeline").exists(), "the pipeline did not end\n{}", shell.log());
    let last = *numbers(&fs::read_to_string(&piped).unwrap()).last().unwrap();

    restore_ok(python, images.path());
    let mut p = Spawned::adopt("ext-pipeline (restored)", python, &shell.dir);
    let broken = p.wait_for(Duration::from_secs(30), "DIR/broken", || fs::read_to_string(p.dir.join("broken")).ok());
    assert_eq!(broken.trim(), (last + 1).to_string(), "{}", p.log());
    p.wait_exit(Duration::from_secs(30));
}

/// A supervisor's status pipe, as the shell stasis runs in hands every
/// child one: fd 251, the write end of a pipe whose reader (here the test)
/// is outside, never written to. The counter, writing to a file, is dumped
/// and restored, goes on counting in its file from where it was, and still
/// holds fd 251 as a pipe's write end.
#[test]
fn inherited_status_pipe_on_a_high_fd() {
    let (dir, _) = script("ext-status", COUNTER);
    let out = dir.path().join("out");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"exec 251>&1 1>"$2"; exec "$0" -I "$1/ext-status.py" "$1""#)
        .arg(python3())
        .arg(dir.path())
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut p = Spawned::start_with_stdio("ext-status", cmd, dir);
    let _status_pipe = p.take_stdout();
    let counted = |p: &Spawned, at_least: usize| {
        p.wait_for(Duration::from_secs(30), "numbers in the counter's file", || {
            let n = numbers(&fs::read_to_string(&out).ok()?);
            (n.len() >= at_least).then_some(n)
        })
    };
    counted(&p, 3);
    let link = |pid: i32| fs::read_link(format!("/proc/{pid}/fd/251")).unwrap().to_string_lossy().into_owned();
    assert!(link(p.pid).starts_with("pipe:["), "fd 251 is {}", link(p.pid));
    let images = tempdir("ext-status-img");
    dump_ok(p.pid, images.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    let at_dump = numbers(&fs::read_to_string(&out).unwrap()).len();
    restore_ok(p.pid, images.path());
    let mut p = Spawned::adopt("ext-status (restored)", p.pid, &p.dir);
    assert!(link(p.pid).starts_with("pipe:["), "fd 251 of the restored counter is {}", link(p.pid));
    let all = counted(&p, at_dump + 20);
    assert_counts_on(&all, 1, "the counter's file across the dump and restore");
    p.kill();
}
