//! Failure paths of dump and restore: each must end with exit 1 and one
//! clear line on stderr naming what is wrong, and leave the target running
//! and unchanged (shown by the workload's own self-check, or by its progress
//! and its still working sockets).

mod util;

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use util::spawned::{dump_ok, python3, python_script, tempdir, tool, Spawned};
use util::workload::{is_alive, Workload};
use util::{run, Run};

/// The single `stasis: error: ...` line of a failed command (exit 1).
fn error_line(r: &Run) -> String {
    assert_eq!(r.code, Some(1), "expected exit 1\n{}", r.dump());
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr\n{}", r.dump());
    assert!(lines[0].starts_with("stasis: error: "), "{}", r.dump());
    lines[0].to_string()
}

fn dump(pid: i32, images: &Path, extra: &[&str]) -> Run {
    let p = pid.to_string();
    let mut args = vec!["dump", "--pid", &p, "--images", images.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

/// The tracer pid in /proc/PID/status (0: not traced).
fn tracer_of(pid: i32) -> i32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no TracerPid in /proc/{pid}/status"))
}

/// The mappings of `pid` registered with a userfaultfd (VmFlags `um`,
/// `uw` or `ui` in /proc/PID/smaps): a live snapshot registers the tree's
/// private memory for write-protection while it copies it.
fn uffd_registered(pid: i32) -> Vec<String> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut range = "";
    let mut found = Vec::new();
    for line in smaps.lines() {
        match line.strip_prefix("VmFlags:") {
            Some(flags) if flags.split_whitespace().any(|f| matches!(f, "um" | "uw" | "ui")) => {
                found.push(format!("{range} ({})", flags.trim()))
            }
            Some(_) => {}
            None if line.split_whitespace().next().is_some_and(|w| w.contains('-') && !w.ends_with(':')) => {
                range = line.split_whitespace().next().unwrap_or("")
            }
            None => {}
        }
    }
    found
}

/// A workload that checks itself and went on computing: the failed command
/// left it running and unchanged.
fn assert_unchanged(w: &Workload) {
    assert!(is_alive(w.pid), "workload {} (pid {}) is gone\n{}", w.name, w.pid, w.log());
    assert_eq!(tracer_of(w.pid), 0, "workload {} is still traced", w.name);
    assert_eq!(uffd_registered(w.pid), Vec::<String>::new(), "workload {} is left with userfaultfd ranges", w.name);
    let past = w.progress().unwrap_or(0);
    w.wait_progress(past, Duration::from_secs(30));
    w.check_ok();
}

#[test]
fn dump_of_missing_pid_names_it() {
    let pid_max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let pid = (300..pid_max).rev().find(|p| !Path::new(&format!("/proc/{p}")).exists()).expect("a free pid");
    let images = tempdir("missing-pid");
    let line = error_line(&dump(pid, &images.path().join("img"), &[]));
    assert!(line.contains(&format!("no process {pid}")), "{line}");
    assert!(!images.path().join("img").exists(), "a refused dump created its image directory");
}

/// Listens on 127.0.0.1 and holds an eventfd, an established TCP connection
/// (to itself), and two userfaultfds; every ~20 ms it adds 1 to the
/// eventfd and publishes its iteration (as a symlink, DIR/progress); each
/// connection is answered with the eventfd's count.
const SOCKET_SCRIPT: &str = r#"
import os, socket, sys, time
d = sys.argv[1]
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
conn = socket.create_connection(s.getsockname())
accepted, _ = s.accept()
import ctypes
uffds = [ctypes.CDLL(None).syscall(323, os.O_CLOEXEC) for _ in range(2)]
assert min(uffds) >= 0, "userfaultfd"
s.setblocking(False)
e = os.eventfd(0)
with open(os.path.join(d, "port.tmp"), "w") as f:
    f.write(str(s.getsockname()[1]))
os.replace(os.path.join(d, "port.tmp"), os.path.join(d, "port"))
i = 0
while True:
    i += 1
    os.eventfd_write(e, 1)
    os.symlink(str(i), os.path.join(d, "progress.tmp"))
    os.replace(os.path.join(d, "progress.tmp"), os.path.join(d, "progress"))
    try:
        c, _ = s.accept()
        c.setblocking(True)
        n = os.eventfd_read(e)
        c.sendall(b"%d\n" % n)
        c.close()
    except BlockingIOError:
        pass
    time.sleep(0.02)
"#;

#[test]
fn dump_refuses_unsupported_objects_in_one_error() {
    let p = python_script("socket", SOCKET_SCRIPT, &[]);
    let progress = |d: &Path| fs::read_link(d.join("progress")).ok()?.to_str()?.parse::<u64>().ok();
    let port: u16 =
        p.wait_for(Duration::from_secs(30), "DIR/port", || fs::read_to_string(p.dir.join("port")).ok()?.parse().ok());
    p.wait_for(Duration::from_secs(30), "progress", || progress(&p.dir));

    let images = tempdir("socket-img");
    let line = error_line(&dump(p.pid, &images.path().join("img"), &[]));
    assert!(line.contains(&format!("process {}", p.pid)), "{line}");
    // The two userfaultfds, named by kind; the listening socket, the
    // connection and the eventfd are supported and not listed.
    assert_eq!(line.matches("is a userfaultfd (anon_inode:[userfaultfd])").count(), 2, "{line}");
    assert!(!line.contains("eventfd") && !line.contains("listening") && !line.contains("TCP"), "{line}");
    assert!(!images.path().join("img").join("stasis.img").exists());

    // It runs on, untraced, and both objects still work.
    assert_eq!(tracer_of(p.pid), 0);
    let now = progress(&p.dir).unwrap();
    p.wait_for(Duration::from_secs(30), "progress after the refused dump", || progress(&p.dir).filter(|&i| i > now));
    let mut answer = String::new();
    let mut conn =
        TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to port {port}: {e}\n{}", p.log()));
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    conn.read_to_string(&mut answer).unwrap();
    let count: u64 = answer.trim().parse().unwrap_or_else(|_| panic!("answer {answer:?}\n{}", p.log()));
    assert!(count >= 1, "eventfd count {count}");
    assert!(p.alive(), "{}", p.log());
}

#[test]
fn dump_refuses_tree_whose_child_holds_what_is_unsupported() {
    let dir = tempdir("parent");
    // The child's last argument holds our directory, to find and kill it by
    // pid. It holds a userfaultfd, which a dump cannot capture yet.
    let mut cmd = Command::new(tool("bash"));
    let child = r#"import socket, sys, time
import ctypes
assert ctypes.CDLL(None).syscall(323, 0) == 3, "userfaultfd"
open(sys.argv[1] + "-ready", "w").close()
time.sleep(100)"#;
    cmd.arg("-c").arg(r#"python3 -c "$2" "$1/child" & wait"#).arg("parent").arg(dir.path()).arg(child);
    let mut p = Spawned::start("parent", cmd, dir);
    let marker = p.dir.join("child");
    let ready = p.dir.join("child-ready");
    let find_child = || -> Option<i32> {
        if !ready.exists() {
            return None;
        }
        fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            cmdline.split(|&b| b == 0).any(|a| a == marker.as_os_str().as_encoded_bytes()).then_some(pid)
        })
    };
    let child = p.wait_for(Duration::from_secs(30), "the child python", find_child);
    struct KillChild(i32);
    impl Drop for KillChild {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _kill_child = KillChild(child);

    let images = tempdir("parent-img");
    let line = error_line(&dump(p.pid, &images.path().join("img"), &[]));
    assert!(line.contains(&format!("process {child}: fd 3 is a userfaultfd")), "{line}");
    for pid in [p.pid, child] {
        assert!(is_alive(pid), "pid {pid} is gone after the refused dump");
        assert_eq!(tracer_of(pid), 0, "pid {pid} is traced after the refused dump");
    }
    // The parent still waits for its child: it exits when the child does.
    drop(_kill_child);
    p.wait_exit(Duration::from_secs(30));
}

/// An epoll instance in flight on a unix socket that its sender still
/// holds too cannot be dumped (one passed and closed is restored:
/// state::epoll_passed_in_flight): refused after the freeze (it is seen
/// only then), naming the socket, its holder and the passed fd; the tree
/// runs on, its messages untouched.
#[test]
fn dump_refuses_an_epoll_passed_in_flight_and_leaves_the_tree_running() {
    let w = Workload::start("passed_fds", &["epoll"]);
    w.wait_running();
    let images = tempfile::tempdir().unwrap();
    let line = error_line(&dump(w.pid, &images.path().join("img"), &[]));
    assert!(line.contains("passed with queued message 3") && line.contains("an epoll instance process"), "{line}");
    assert!(line.contains("holds too"), "{line}");
    assert!(line.contains(&format!("process {}", w.pid)), "{line}");
    let child: i32 = w.info("pid_c").parse().unwrap();
    assert!(is_alive(child) && tracer_of(child) == 0, "the child {child} was harmed");
    assert_unchanged(&w);
}

/// A tmpfs mounted for one test, unmounted on drop (even on panic).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempdir("tmpfs");
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount a {size} tmpfs on {}: {e}", dir.path().display()));
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cannot unmount {}: {e}", self.0.path().display());
        }
    }
}

#[test]
fn dump_into_full_disk_leaves_target_running() {
    let w = Workload::start("mem_dense", &["16"]);
    w.wait_running();
    let disk = Tmpfs::mount("1m");
    let images = disk.path().join("img");
    let line = error_line(&dump(w.pid, &images, &[]));
    assert!(
        line.contains(&format!("cannot write {}", images.display())),
        "the error does not say which image file could not be written: {line}"
    );
    assert!(line.contains("No space left on device"), "the error does not say why: {line}");
    assert!(!images.join("stasis.img").exists(), "a failed dump left a manifest in {}", images.display());
    let left: Vec<_> = fs::read_dir(&images).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a failed dump left {left:?} in {}", images.display());
    assert_unchanged(&w);
    let r = run(["verify", images.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "a half-written image verifies\n{}", r.dump());
}

/// A stasis killed (SIGKILL, nothing of it left to clean up) while it
/// copies a tree's memory ahead, the memory registered for
/// write-protection: the tree runs on, untraced, with no userfaultfd
/// range left (the descriptor was the agent's alone, and its release
/// unregisters everything), and its memory as it should be.
#[test]
fn agent_killed_during_the_live_copy_leaves_the_tree_unprotected() {
    let w = Workload::start("mem_dense", &["512"]);
    w.wait_running();
    let images = tempdir("killed-agent-img");
    let pid = w.pid.to_string();
    let mut stasis = util::stasis()
        .args(["dump", "--pid", &pid, "--images", images.path().to_str().unwrap(), "--leave-running"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until the live copy has registered the memory.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while uffd_registered(w.pid).is_empty() {
        assert!(stasis.try_wait().unwrap().is_none(), "the dump ended before it registered any memory");
        assert!(std::time::Instant::now() < deadline, "no userfaultfd range appeared in 30 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    stasis.kill().unwrap();
    let status = stasis.wait().unwrap();
    assert!(!status.success(), "the dump finished before it was killed: nothing was tested");
    assert!(!images.path().join("stasis.img").exists(), "a killed dump left a manifest");
    assert_unchanged(&w);
}

#[test]
fn dump_into_directory_holding_an_image_is_refused() {
    let w = Workload::start("threads", &[]);
    w.wait_running();
    let images = tempdir("existing-img");
    dump_ok(w.pid, images.path(), &["--leave-running"]);
    let read = |name: &str| fs::read(images.path().join(name)).unwrap();
    let (manifest, pack) = (read("stasis.img"), read("chunks.pack"));

    let line = error_line(&dump(w.pid, images.path(), &["--leave-running"]));
    assert!(line.contains("already holds an image") && line.contains(images.path().to_str().unwrap()), "{line}");
    let line = error_line(&dump(w.pid, images.path(), &[]));
    assert!(line.contains("already holds an image"), "{line}");
    assert!(read("stasis.img") == manifest && read("chunks.pack") == pack, "the refused dump changed the old image");
    run(["verify", images.path().to_str().unwrap()]).success();
    assert_unchanged(&w);
}

#[test]
fn restore_of_corrupt_chunk_names_it_and_creates_nothing() {
    let mut w = Workload::start("mem_dense", &["16"]);
    w.wait_running();
    let images = tempdir("corrupt-img");
    dump_ok(w.pid, images.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    let pack = images.path().join("chunks.pack");
    let mut bytes = fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(&pack, &bytes).unwrap();

    // verify names the chunk; restore must refuse with the same chunk.
    let v = run(["verify", images.path().to_str().unwrap()]);
    assert_eq!(v.code, Some(1), "{}", v.dump());
    let chunk = v
        .stdout
        .split_whitespace()
        .chain(v.stderr.split_whitespace())
        .skip_while(|w| *w != "chunk")
        .nth(1)
        .unwrap_or_else(|| panic!("verify names no chunk\n{}", v.dump()))
        .trim_end_matches(':')
        .to_string();
    let line = error_line(&run(["restore", "--images", images.path().to_str().unwrap()]));
    assert!(
        line.contains(&format!("chunk {chunk}")) && line.contains("corrupt"),
        "the error does not name chunk {chunk}: {line}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!is_alive(w.pid), "a refused restore left pid {} running", w.pid);
}

/// A lazy restore reads a chunk only when it loads it, the tree running
/// by then: a damaged one kills the tree (rather than let it run with
/// memory that is not its own), and the error names the chunk.
#[test]
fn lazy_restore_of_corrupt_chunk_names_it_and_kills_the_tree() {
    let mut w = Workload::start("mem_dense", &["16"]);
    w.wait_running();
    let images = tempdir("lazy-corrupt-img");
    dump_ok(w.pid, images.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    let pack = images.path().join("chunks.pack");
    let mut bytes = fs::read(&pack).unwrap();
    // In the dense region, most of the pack (loaded lazily).
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(&pack, &bytes).unwrap();
    let v = run(["verify", images.path().to_str().unwrap()]);
    let chunk = v
        .stdout
        .split_whitespace()
        .chain(v.stderr.split_whitespace())
        .skip_while(|w| *w != "chunk")
        .nth(1)
        .unwrap_or_else(|| panic!("verify names no chunk\n{}", v.dump()))
        .trim_end_matches(':')
        .to_string();
    let r = run(["restore", "--images", images.path().to_str().unwrap(), "--lazy"]);
    assert_eq!(r.stdout.trim(), w.pid.to_string(), "the tree did not run before its memory loaded\n{}", r.dump());
    assert_eq!(r.code, Some(1), "{}", r.dump());
    let line = r.stderr.lines().find(|l| l.starts_with("stasis: error: ")).unwrap_or_else(|| panic!("{}", r.dump()));
    assert!(
        line.contains(&format!("chunk {chunk}")) && line.contains("corrupt"),
        "the error does not name chunk {chunk}: {line}"
    );
    assert!(line.contains("killed"), "the error does not say the tree was killed: {line}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!is_alive(w.pid), "pid {} runs on with a damaged chunk of its memory", w.pid);
}

/// mem_dense with 768 MiB, dumped (killed) into `images` and restored with
/// `restore --lazy`, still loading: the workload, the restoring stasis
/// (stderr piped, stdout closed once it said the pid), and the image.
fn restored_lazily(images: &str) -> (Workload, std::process::Child, tempfile::TempDir) {
    use std::io::BufRead;
    let mut w = Workload::start("mem_dense", &["768"]);
    w.wait_running();
    let images = tempdir(images);
    dump_ok(w.pid, images.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    let mut restore = util::stasis()
        .args(["restore", "--images", images.path().to_str().unwrap(), "--lazy"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pid = String::new();
    std::io::BufReader::new(restore.stdout.take().unwrap()).read_line(&mut pid).unwrap();
    assert_eq!(pid.trim(), w.pid.to_string(), "restored at another pid");
    (w, restore, images)
}

/// A process still loading its memory after `restore --lazy` is refused by
/// a dump (the pages not loaded yet are not in it to read), naming the
/// cause, and runs on; once loaded, it dumps.
#[test]
fn dump_while_a_lazy_restore_loads_is_refused() {
    let (w, mut restore, _images) = restored_lazily("lazy-loading-img");
    let again = tempdir("lazy-loading-img2");
    let r = dump(w.pid, again.path(), &["--leave-running"]);
    let loading = restore.try_wait().unwrap().is_none();
    let status = restore.wait().unwrap();
    assert!(status.success(), "the lazy restore failed: {status}");
    assert!(loading, "the restore had loaded all 768 MiB before the dump looked: nothing was tested");
    let line = error_line(&r);
    assert!(line.contains("registered with a userfaultfd") && line.contains("restore --lazy"), "{line}");
    assert!(is_alive(w.pid), "the refused dump left pid {} dead", w.pid);
    dump_ok(w.pid, again.path(), &["--leave-running"]);
    w.check_ok();
}

/// A lazy restore goes on loading through SIGINT, SIGTERM and SIGHUP (a
/// closed terminal) and with its output gone: the pages it had not loaded
/// yet would read as zeros without it. The process then has all its
/// memory.
#[test]
fn lazy_restore_loads_on_through_signals_and_a_closed_output() {
    let (w, mut restore, _images) = restored_lazily("lazy-signals-img");
    // Its terminal closes: no one reads what it says any more.
    drop(restore.stderr.take());
    let stasis = nix::unistd::Pid::from_raw(restore.id() as i32);
    for signal in [nix::sys::signal::SIGHUP, nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
        nix::sys::signal::kill(stasis, signal).unwrap();
    }
    let loading = restore.try_wait().unwrap().is_none();
    let status = restore.wait().unwrap();
    assert!(loading, "the restore had loaded all 768 MiB before the signals: nothing was tested");
    assert!(status.success(), "the lazy restore ended on the signals: {status}");
    w.check_ok();
}

/// Writes all over 64 MiB without pause (byte 8 of page k takes the low
/// byte of the write's number), until DIR/stop; then checks every page
/// holds its last write and says so in DIR/result.
const WRITER_SCRIPT: &str = r#"
import os, sys
d = sys.argv[1]
pages = 16384
buf = bytearray(pages * 4096)
open(os.path.join(d, "ready"), "w").close()
i = 0
while not os.path.exists(os.path.join(d, "stop")):
    for _ in range(65536):
        buf[(i % pages) * 4096 + 8] = i & 255
        i += 1
bad = [k for k in range(pages) if i > k and buf[k * 4096 + 8] != ((i - 1 - (i - 1 - k) % pages) & 255)]
with open(os.path.join(d, "result.tmp"), "w") as f:
    f.write("ok\n" if not bad else "fail: pages %r\n" % bad[:5])
os.replace(os.path.join(d, "result.tmp"), os.path.join(d, "result"))
"#;

/// `--max-freeze`: a process writing its memory without pause, faster than
/// a 10 µs freeze could copy, is not dumped (the error says why) and runs
/// on unharmed; with a bound it can fit, it is dumped, the report saying
/// what the freeze was expected to copy. On a machine busy enough that the
/// writer does not run during two rounds in a row, nothing was written
/// then, and a dump may fit: each such dump is a good one, and the refusal
/// is asked again, up to 5 times.
#[test]
fn max_freeze_refuses_a_freeze_it_cannot_fit() {
    let mut p = python_script("max-freeze", WRITER_SCRIPT, &[]);
    p.wait_for(Duration::from_secs(30), "DIR/ready", || p.dir.join("ready").exists().then_some(()));
    let mut refused = None;
    for _ in 0..5 {
        let images = tempdir("max-freeze-img");
        let r = dump(p.pid, images.path(), &["--leave-running", "--max-freeze", "0.01"]);
        if r.code == Some(0) {
            run(["verify", images.path().to_str().unwrap()]).success();
            continue;
        }
        refused = Some(error_line(&r));
        break;
    }
    let line = refused.expect("a process writing without pause was dumped within --max-freeze 0.01 five times");
    assert!(line.contains("--max-freeze 0.010 ms") && line.contains("runs on"), "{line}");
    assert!(is_alive(p.pid), "the refused dump left pid {} dead", p.pid);
    let images = tempdir("max-freeze-img");
    let r = dump(p.pid, images.path(), &["--leave-running", "--max-freeze", "10000", "--json"]);
    assert_eq!(r.code, Some(0), "{}", r.dump());
    let pre = &r.json()["pre_copy"];
    let predicted = pre["predicted_freeze_us"].as_u64().unwrap_or_else(|| panic!("no prediction: {pre}"));
    assert!(predicted <= 10_000_000, "{pre}");
    fs::write(p.dir.join("stop"), "").unwrap();
    let result = p.wait_for(Duration::from_secs(60), "DIR/result", || fs::read_to_string(p.dir.join("result")).ok());
    assert_eq!(result.trim(), "ok", "{}", p.log());
    p.wait_exit(Duration::from_secs(30));
}

#[test]
fn restore_without_namespace_while_pid_taken_names_it_and_leaves_original() {
    let w = Workload::start("mem_dense", &["16"]);
    w.wait_running();
    let images = tempdir("taken-img");
    dump_ok(w.pid, images.path(), &["--leave-running"]);
    let images = images.path().to_str().unwrap();
    let line = error_line(&run(["restore", "--images", images, "--pid-timeout", "1", "--no-pid-namespace"]));
    assert!(line.contains(&w.pid.to_string()), "the error does not name pid {}: {line}", w.pid);
    assert!(line.contains("new PID namespace"), "the error does not say what else to do: {line}");
    assert_unchanged(&w);
}

/// PTRACE_SEIZEs the pid in argv[2] (without stopping it), says so in
/// DIR/seized, then sleeps until killed.
const TRACER_SCRIPT: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_SEIZE = 0x4206
if libc.ptrace(PTRACE_SEIZE, int(sys.argv[2]), None, None) != 0:
    sys.exit("PTRACE_SEIZE: " + os.strerror(ctypes.get_errno()))
open(os.path.join(sys.argv[1], "seized"), "w").close()
while True:
    time.sleep(1)
"#;

#[test]
fn dump_of_traced_process_names_the_tracer() {
    let w = Workload::start("mem_dense", &["16"]);
    w.wait_running();
    let mut tracer = python_script("tracer", TRACER_SCRIPT, &[&w.pid.to_string()]);
    let seized: PathBuf = tracer.dir.join("seized");
    tracer.wait_for(Duration::from_secs(30), "DIR/seized", || seized.exists().then_some(()));
    assert_eq!(tracer_of(w.pid), tracer.pid);

    let images = tempdir("traced-img");
    let line = error_line(&dump(w.pid, &images.path().join("img"), &[]));
    assert!(line.contains(&format!("traced by process {}", tracer.pid)), "{line}");
    assert_eq!(tracer_of(w.pid), tracer.pid, "the refused dump changed the tracer");
    // Still runs while traced, and once the tracer is gone it checks out.
    let past = w.progress().unwrap_or(0);
    w.wait_progress(past, Duration::from_secs(30));
    tracer.kill();
    assert_unchanged(&w);
}

/// A parent suspended in vfork with its child running on the parent's
/// memory is refused (one address space, two processes), and both go on:
/// the child's writes still land in the parent's memory.
#[test]
fn dump_refuses_processes_sharing_an_address_space() {
    let w = Workload::start("vfork", &[]);
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", w.pid)).unwrap();
    let child: i32 = children.split_whitespace().next().expect("the vfork child").parse().unwrap();
    let images = tempdir("vfork-img");
    let line = error_line(&dump(w.pid, &images.path().join("img"), &[]));
    assert!(line.contains(&format!("processes {} and {child} share one address space", w.pid)), "{line}");
    for pid in [w.pid, child] {
        assert_eq!(tracer_of(pid), 0, "pid {pid} is traced after the refused dump");
    }
    assert!(is_alive(child), "the vfork child is gone after the refused dump");
    w.check_ok();
}

/// Holds an established TCP connection (to itself, fds 4 and 5: dumped
/// before the socketpair) and a unix socketpair with a file descriptor in
/// flight; every ~20 ms it sends a byte over the
/// connection, reads it back at the other end, and publishes the round
/// trips done (as a symlink, DIR/progress).
const IN_FLIGHT_SCRIPT: &str = r#"
import os, socket, sys, time
d = sys.argv[1]
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
conn = socket.create_connection(s.getsockname())
accepted, _ = s.accept()
a, b = socket.socketpair()
socket.send_fds(a, [b"x"], [conn.fileno()])
accepted.settimeout(60)
i = 0
while True:
    conn.sendall(b"p")
    if accepted.recv(1) != b"p":
        sys.exit("lost the byte")
    i += 1
    os.symlink(str(i), os.path.join(d, "progress.tmp"))
    os.replace(os.path.join(d, "progress.tmp"), os.path.join(d, "progress"))
    time.sleep(0.02)
"#;

/// A dump that fails after it has locked the network and put a TCP
/// connection in repair mode (the same connection passed in flight on a
/// unix socket, which cannot be, is found later) gives the connection back: no lock is left and the process goes
/// on using it.
#[test]
fn failed_dump_gives_tcp_connections_back() {
    let p = python_script("in-flight", IN_FLIGHT_SCRIPT, &[]);
    let progress = |d: &Path| fs::read_link(d.join("progress")).ok()?.to_str()?.parse::<u64>().ok();
    p.wait_for(Duration::from_secs(30), "progress", || progress(&p.dir));

    let images = tempdir("in-flight-img");
    let line = error_line(&dump(p.pid, &images.path().join("img"), &[]));
    assert!(line.contains("passed with queued message 1: it is an established TCP connection"), "{line}");
    let locks = stasis_checkpoint::netlock::locks().unwrap();
    assert!(!locks.iter().any(|l| l.starts_with(&format!("{}_", p.pid))), "a lock is left: {locks:?}");
    assert_eq!(tracer_of(p.pid), 0);
    let now = progress(&p.dir).unwrap();
    p.wait_for(Duration::from_secs(30), "round trips over the connection after the failed dump", || {
        progress(&p.dir).filter(|&i| i > now + 5)
    });
    assert!(p.alive(), "{}", p.log());
}

/// `flock FILE sleep`: flock(1) takes the lock and runs the job, which
/// inherits the locked description. Dumping the job alone is refused,
/// naming the lock and flock's pid (restoring it would take a lock flock
/// still holds), and the job runs on with the lock.
#[test]
fn dump_refuses_a_flock_shared_with_a_process_outside_the_tree() {
    let dir = tempdir("flock-job");
    let lock = dir.path().join("lockfile");
    let mut cmd = Command::new(tool("flock"));
    cmd.arg(&lock).arg(tool("sleep")).arg("1000");
    let mut flock = Spawned::start("flock", cmd, dir);
    let job = flock.wait_for(Duration::from_secs(30), "flock's job", || {
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", flock.pid)).ok()?;
        children.split_whitespace().next()?.parse::<i32>().ok()
    });
    // The job has exec'd sleep with the locked fd.
    flock.wait_for(Duration::from_secs(30), "sleep with the lock", || {
        let comm = fs::read_to_string(format!("/proc/{job}/comm")).ok()?;
        (comm.trim() == "sleep").then_some(())
    });
    let images = tempdir("flock-job-img");
    let line = error_line(&dump(job, images.path(), &[]));
    assert!(
        line.contains(&format!("holds a flock taken by process {} outside the tree", flock.pid))
            && line.contains("lockfile"),
        "{line}"
    );
    assert!(is_alive(job) && tracer_of(job) == 0, "the job was harmed");
    let holder = fs::read_to_string("/proc/locks").unwrap();
    assert!(holder.lines().any(|l| l.contains("FLOCK") && l.contains(&format!(" {} ", flock.pid))), "{holder}");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(job), nix::sys::signal::Signal::SIGKILL);
    flock.wait_exit(Duration::from_secs(30));
}

/// What a restore finds again by name must be what was dumped, checked
/// before anything is made: a device node now of another device (a plain
/// one, or a virtual console's, opened again by its path), a unix
/// socket name another process has bound, a FIFO replaced by a regular
/// file or by another FIFO are each refused naming the fd and the object,
/// and no process is left; once all is as it was (a new FIFO allowed with
/// --allow-changed-files) the restore goes through.
#[test]
fn restore_refuses_named_objects_that_changed() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempdir("named");
    let script = dir.path().join("named.py");
    fs::write(
        &script,
        "import os, socket, stat, sys, time\nd = sys.argv[1]\n\
         os.mkfifo(os.path.join(d, 'fifo'))\nfifo = os.open(os.path.join(d, 'fifo'), os.O_RDWR)\n\
         os.mknod(os.path.join(d, 'null'), stat.S_IFCHR | 0o666, os.makedev(1, 3))\n\
         null = os.open(os.path.join(d, 'null'), os.O_RDWR)\n\
         os.mknod(os.path.join(d, 'tty5'), stat.S_IFCHR | 0o600, os.makedev(4, 5))\n\
         vt = os.open(os.path.join(d, 'tty5'), os.O_RDONLY | os.O_NOCTTY)\n\
         s = socket.socket(socket.AF_UNIX)\ns.bind(os.path.join(d, 'sock'))\ns.listen(4)\n\
         open(os.path.join(d, 'ready'), 'w').close()\nwhile True:\n    time.sleep(0.05)\n",
    )
    .unwrap();
    let mut cmd = Command::new(python3());
    cmd.arg("-I").arg(&script).arg(dir.path());
    let mut p = Spawned::start("named", cmd, dir);
    p.wait_for(Duration::from_secs(30), "DIR/ready", || p.dir.join("ready").exists().then_some(()));
    let fd_of = |name: &str| {
        let path = p.dir.join(name);
        fs::read_dir(format!("/proc/{}/fd", p.pid))
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| fs::read_link(e.path()).is_ok_and(|l| l == path))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .unwrap_or_else(|| panic!("{name} is not open"))
    };
    let (fifo_fd, null_fd, vt_fd) = (fd_of("fifo"), fd_of("null"), fd_of("tty5"));
    let images = tempdir("named-img");
    dump_ok(p.pid, images.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    let img = images.path().to_str().unwrap();
    let refused = |extra: &[&str], want: &[&str]| {
        let mut args = vec!["restore", "--images", img];
        args.extend_from_slice(extra);
        let line = error_line(&run(&args));
        for w in want {
            assert!(line.contains(w), "{w:?} not in: {line}");
        }
        assert!(!is_alive(p.pid), "a refused restore left a process at {}", p.pid);
    };
    let (fifo, null, sock) = (p.dir.join("fifo"), p.dir.join("null"), p.dir.join("sock"));
    let node = |rdev_minor: u64| {
        let _ = fs::remove_file(&null);
        nix::sys::stat::mknod(
            &null,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, rdev_minor),
        )
        .unwrap();
    };

    let vt = p.dir.join("tty5");
    let vt_node = |minor: u64| {
        let _ = fs::remove_file(&vt);
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
        nix::sys::stat::mknod(&vt, nix::sys::stat::SFlag::S_IFCHR, mode, nix::sys::stat::makedev(4, minor)).unwrap();
    };
    vt_node(6);
    refused(&[], &[&format!("fd {vt_fd} of process {}", p.pid), "tty5 (tty:[4:5])", "has device 4:6 now"]);
    vt_node(5);

    node(5);
    refused(&[], &[&format!("fd {null_fd} of process {}", p.pid), "is the device", "(1:3)", "device 1:5 now"]);
    node(3);

    let _ = fs::remove_file(&sock);
    let squatter = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    refused(&[], &["unix stream socket", "sock", "a socket in use holds now"]);
    drop(squatter);

    // The dumped FIFO stays linked aside, so a new one cannot get its inode.
    fs::rename(&fifo, p.dir.join("fifo.dumped")).unwrap();
    fs::write(&fifo, "not a fifo").unwrap();
    refused(&[], &[&format!("fd {fifo_fd} of process {}", p.pid), "is the FIFO", "no FIFO now"]);
    fs::rename(&fifo, p.dir.join("fifo.file")).unwrap();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    refused(&[], &["is the FIFO", "another FIFO now", "--allow-changed-files"]);

    let r = run(["restore", "--images", img, "--allow-changed-files"]).success();
    assert_eq!(r.stdout.trim(), p.pid.to_string(), "{}", r.dump());
    let mut p = Spawned::adopt("named (restored)", p.pid, &p.dir);
    assert!(p.alive());
    p.kill();
}

/// With --skip-in-flight, a TCP listener's connections waiting to be
/// accepted are left out, with a warning saying how many: the dump goes
/// through, the client that waited sees its connection end, and the
/// restored listener accepts a new one.
#[test]
fn dump_with_skip_in_flight_leaves_waiting_connections_out() {
    use std::io::Write;
    let dir = tempdir("inflight");
    let script = dir.path().join("listen.py");
    fs::write(
        &script,
        "import os, socket, sys, time\nd = sys.argv[1]\n\
         l = socket.socket()\nl.bind(('127.0.0.1', 0))\nl.listen(4)\n\
         open(os.path.join(d, 'port'), 'w').write(str(l.getsockname()[1]))\n\
         while not os.path.exists(os.path.join(d, 'accept')):\n    time.sleep(0.02)\n\
         c, _ = l.accept()\nc.sendall(c.recv(16).upper())\ntime.sleep(60)\n",
    )
    .unwrap();
    let mut cmd = Command::new(python3());
    cmd.arg("-I").arg(&script).arg(dir.path());
    let mut p = Spawned::start("inflight", cmd, dir);
    let port: u16 =
        p.wait_for(Duration::from_secs(30), "DIR/port", || fs::read_to_string(p.dir.join("port")).ok()?.parse().ok());
    let waiting = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let images = tempdir("inflight-img");
    let refused = error_line(&dump(p.pid, images.path(), &[]));
    assert!(refused.contains("1 connection(s) waiting to be accepted"), "{refused}");
    assert!(p.alive() && tracer_of(p.pid) == 0, "the refused dump harmed the process");
    let r = dump(p.pid, images.path(), &["--skip-in-flight"]).success();
    assert!(r.stderr.contains("1 connection(s) waiting to be accepted; left out (--skip-in-flight)"), "{}", r.dump());
    p.wait_exit(Duration::from_secs(30));
    util::spawned::restore_ok(p.pid, images.path());
    let mut p = Spawned::adopt("inflight (restored)", p.pid, &p.dir);
    waiting.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 16];
    let ended = matches!((&waiting).read(&mut buf), Ok(0) | Err(_));
    assert!(ended, "the connection left out still answers");
    fs::write(p.dir.join("accept"), "").unwrap();
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).unwrap();
    fresh.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    fresh.write_all(b"hello").unwrap();
    let n = fresh.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"HELLO", "the restored listener did not answer a new connection");
    p.kill();
}

/// A kill-mode dump never kills a tree its image could not bring back:
/// a file of a thread's /proc directory (threads are made after the fds),
/// or of a process that has exited, a working directory in the /proc
/// directory of a thread of a process that has exited (that of the
/// process itself is restored: state::working_directory_in_proc_of_an_exited_process),
/// are refused before anything is written, naming them, and the process
/// runs on.
#[test]
fn dump_refuses_what_a_restore_could_not_find_again() {
    let cases = [
        (
            "proc-thread",
            "import threading\n\
             ev = threading.Event()\n\
             t = threading.Thread(target=ev.wait, daemon=True)\n\
             t.start()\n\
             keep = open('/proc/self/task/%d/stat' % t.native_id)",
            "a file of thread",
        ),
        (
            "proc-exited",
            "pid = os.fork()\n\
             if pid == 0:\n    os._exit(0)\n\
             keep = open('/proc/%d/status' % pid)\n\
             os.waitpid(pid, 0)",
            "which has exited",
        ),
        (
            "removed-console-node",
            "path = os.path.join(d, 'tty5')\n\
             os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(4, 5))\n\
             keep = os.open(path, os.O_RDONLY | os.O_NOCTTY)\n\
             os.unlink(path)",
            "its node was removed",
        ),
        (
            "foreign-namespace",
            "import ctypes\n\
             r, w = os.pipe()\n\
             pid = os.fork()\n\
             if pid == 0:\n    assert ctypes.CDLL(None).unshare(0x04000000) == 0, 'unshare(CLONE_NEWUTS)'\n    os.write(w, b'x')\n    time.sleep(60)\n\
             os.read(r, 1)\n\
             keep = os.open('/proc/%d/ns/uts' % pid, os.O_RDONLY)\n\
             os.kill(pid, signal.SIGKILL)\n\
             os.waitpid(pid, 0)",
            "a namespace neither its process nor that one's parent is in",
        ),
        (
            "dead-proc-cwd",
            "r, w = os.pipe()\n\
             pid = os.fork()\n\
             if pid == 0:\n    os.read(r, 1)\n    os._exit(0)\n\
             os.chdir('/proc/%d/task/%d' % (pid, pid))\n\
             os.write(w, b'x')\n\
             os.waitpid(pid, 0)",
            "cannot be made again",
        ),
    ];
    refused_at_dump("gone", &cases);
}

/// State a restore cannot make again faithfully is refused at dump by
/// name, and the process runs on: a pending SIGTRAP (a debugger's trap), a
/// time namespace made for the children, a corked UDP socket, an eBPF
/// socket program, a TCP listener with a connection waiting to be
/// accepted (from the process itself), a child left in stasis's cgroup
/// namespace by a parent that made one of its own, a mapping of a TCP
/// socket (zero-copy receive), part of a packet socket's rings mapped, an
/// epoll passed in flight watching a file only fds in flight hold.
#[test]
fn dump_refuses_state_it_cannot_make_again() {
    let cases = [
        (
            "sigtrap",
            "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTRAP]); os.kill(os.getpid(), signal.SIGTRAP)",
            "a SIGTRAP is pending",
        ),
        (
            "timens",
            "import ctypes; assert ctypes.CDLL(None, use_errno=True).unshare(0x80) == 0, 'unshare(CLONE_NEWTIME)'",
            "made a time namespace for its children",
        ),
        (
            "cork",
            "import socket; u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0)); \
             u.setsockopt(socket.IPPROTO_UDP, 1, 1)",
            "is corked (UDP_CORK",
        ),
        (
            "ebpf-filter",
            "import ctypes, socket, struct\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             # BPF_PROG_TYPE_SOCKET_FILTER: r0 = 0; exit (drops every packet)\n\
             insns = ctypes.create_string_buffer(bytes([0xb7] + [0] * 7 + [0x95] + [0] * 7))\n\
             gpl = ctypes.create_string_buffer(b'GPL')\n\
             attr = ctypes.create_string_buffer(\n\
                     struct.pack('=IIQQIIQI', 1, 2, ctypes.addressof(insns), ctypes.addressof(gpl), 0, 0, 0, 0), 128)\n\
             prog = libc.syscall(321, 5, attr, 128)\n\
             assert prog >= 0, 'BPF_PROG_LOAD: errno %d' % ctypes.get_errno()\n\
             u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             u.setsockopt(socket.SOL_SOCKET, 50, prog)\n\
             os.close(prog)",
            "eBPF socket program attached (SO_ATTACH_BPF)",
        ),
        (
            "tcp-in-flight",
            "import socket\n\
             l = socket.socket()\n\
             l.bind(('127.0.0.1', 0))\n\
             l.listen(4)\n\
             c = socket.socket()\n\
             c.connect(l.getsockname())",
            "has 1 connection(s) waiting to be accepted, which an image cannot hold; let it accept them first, or \
             pass --skip-in-flight",
        ),
        (
            "epoll-of-a-file-in-flight",
            "import socket, select\n\
             a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
             r, w = os.pipe()\n\
             ep = select.epoll()\n\
             ep.register(r, select.EPOLLIN)\n\
             socket.send_fds(a, [b'x'], [ep.fileno(), r])\n\
             ep.close()\n\
             os.close(r)",
            "no process of the tree holds an fd on",
        ),
        (
            "tcp-mapped",
            "import socket, mmap\n\
             l = socket.socket()\n\
             l.bind(('127.0.0.1', 0))\n\
             l.listen(4)\n\
             c = socket.create_connection(l.getsockname())\n\
             a, _ = l.accept()\n\
             m = mmap.mmap(c.fileno(), 4096, prot=mmap.PROT_READ)",
            "only the rings of a packet socket are mapped again",
        ),
        (
            "part-of-a-ring",
            "import socket, mmap, ctypes, struct\n\
             s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)\n\
             s.setsockopt(263, 5, struct.pack('IIII', 4096, 2, 2048, 4))\n\
             m = mmap.mmap(s.fileno(), 8192)\n\
             at = ctypes.addressof(ctypes.c_char.from_buffer(m))\n\
             assert ctypes.CDLL(None).munmap(ctypes.c_void_p(at + 4096), 4096) == 0",
            "it maps part of the socket's rings (8192 bytes",
        ),
        (
            "cgroupns-split",
            "import ctypes\n\
             r, w = os.pipe()\n\
             child = os.fork()\n\
             if child == 0:\n    os.close(w)\n    os.read(r, 1)\n    os._exit(0)\n\
             assert ctypes.CDLL(None).unshare(0x02000000) == 0, 'unshare(CLONE_NEWCGROUP)'",
            "and its parent",
        ),
    ];
    refused_at_dump("state", &cases);
}

/// Unix connections not accepted yet that a restore could not make again
/// are refused by name, and the process runs on: one whose connecting end
/// has sent bytes (they sit in the end not accepted yet, which cannot be
/// read), one whose connecting end sent bytes and closed, and one waiting
/// on a listener outside the tree.
#[test]
fn dump_refuses_unix_connections_waiting_that_it_cannot_make_again() {
    let outside = tempdir("waiting-outside");
    let path = outside.path().join("l.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let to_outside =
        format!("import socket; c = socket.socket(socket.AF_UNIX); c.connect({:?})", path.to_str().unwrap());
    // A listener of the process and a connection it has not accepted.
    let waiting = "import socket\n\
         l = socket.socket(socket.AF_UNIX)\n\
         l.bind(os.path.join(d, 'l.sock'))\n\
         l.listen()\n\
         c = socket.socket(socket.AF_UNIX)\n\
         c.connect(os.path.join(d, 'l.sock'))\n";
    let sent = format!("{waiting}c.send(b'before the accept')");
    let closed = format!("{waiting}c.send(b'sent, then closed')\nc.close()");
    let cases = [
        ("sent", sent.as_str(), "with bytes sent on its connection"),
        ("outside", to_outside.as_str(), "outside the dump"),
        ("closed", closed.as_str(), "was closed by the socket that made it"),
    ];
    refused_at_dump("waiting", &cases);
}

/// Two processes sharing one fd table that is not their parent's (it
/// unshared its own after forking both with CLONE_FILES) are refused: a
/// restore makes shared tables by forking with CLONE_FILES. The tree runs
/// on.
#[test]
fn dump_refuses_an_fd_table_shared_by_siblings_only() {
    let setup = "import ctypes\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        for _ in range(2):\n    \
            pid = libc.syscall(56, 0x400 | signal.SIGCHLD, 0, 0, 0, 0)\n    \
            if pid == 0:\n        \
                libc.prctl(1, signal.SIGKILL)\n        \
                while True:\n            time.sleep(1)\n    \
            assert pid > 0, ctypes.get_errno()\n\
        assert libc.unshare(0x400) == 0, ctypes.get_errno()";
    refused_at_dump("files", &[("siblings", setup, "share one fd table, but not as a parent and the children")]);
}

/// For each (name, python setup, wanted words) case: a python program that
/// runs the setup (with `os`, `signal`, `stat`, `sys`, `time` imported and
/// `d` its directory), whose kill-mode dump is refused with the words in
/// the error; the program runs on, untraced, and no image is left.
fn refused_at_dump(prefix: &str, cases: &[(&str, &str, &str)]) {
    for &(name, setup, want) in cases {
        let dir = tempdir(&format!("{prefix}-{name}"));
        let script = dir.path().join("case.py");
        fs::write(
            &script,
            format!(
                "import os, signal, stat, sys, time\nd = sys.argv[1]\n{setup}\nopen(os.path.join(d, 'ready'), 'w').close()\n\
                 while True:\n    time.sleep(0.05)\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(python3());
        cmd.arg("-I").arg(&script).arg(dir.path());
        let p = Spawned::start(name, cmd, dir);
        p.wait_for(Duration::from_secs(30), "DIR/ready", || p.dir.join("ready").exists().then_some(()));
        let images = tempdir(&format!("{prefix}-{name}-img"));
        let line = error_line(&dump(p.pid, images.path(), &[]));
        assert!(line.contains(want), "{name}: {want:?} not in: {line}");
        assert!(p.alive() && tracer_of(p.pid) == 0, "{name}: the process was harmed");
        assert!(!images.path().join("stasis.img").exists(), "{name}: an image was left");
    }
}
