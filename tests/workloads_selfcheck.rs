//! The self-checking workloads pass their own verification when nothing
//! happened to them, and detect damage done to them from outside. No
//! checkpoint is involved: these tests make sure that a failing workload after
//! `stasis restore` means a restore bug, not a workload bug.

mod util;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Duration;

use util::workload::Workload;

/// Start `name`, see it make progress, ask it to check itself: must be ok.
fn selfcheck(name: &str, args: &[&str]) {
    let w = Workload::start(name, args);
    let seen = w.wait_running();
    let outcome = w.check_ok();
    assert!(outcome.generation >= seen, "generation {} went back from progress {seen}", outcome.generation);
}

#[test]
fn mem_dense() {
    selfcheck("mem_dense", &["16"]);
}

#[test]
fn mem_dense_default_size() {
    selfcheck("mem_dense", &[]);
}

#[test]
fn mem_writer() {
    selfcheck("mem_writer", &["16", "64"]);
}

#[test]
fn mem_layout() {
    selfcheck("mem_layout", &[]);
}

#[test]
fn mem_filemap() {
    selfcheck("mem_filemap", &[]);
}

#[test]
fn threads() {
    selfcheck("threads", &[]);
}

#[test]
fn signals() {
    selfcheck("signals", &[]);
}

#[test]
fn vectors_spin() {
    selfcheck("vectors", &["spin"]);
}

#[test]
fn vectors_sleep() {
    selfcheck("vectors", &["sleep"]);
}

#[test]
fn pipes() {
    selfcheck("pipes", &[]);
}

#[test]
fn files() {
    selfcheck("files", &[]);
}

#[test]
fn attrs() {
    selfcheck("attrs", &[]);
}

#[test]
fn eventfds() {
    selfcheck("eventfds", &[]);
}

#[test]
fn timers() {
    selfcheck("timers", &[]);
}

#[test]
fn sockets() {
    selfcheck("sockets", &[]);
}

#[test]
fn unix_sockets() {
    selfcheck("unix_sockets", &[]);
}

#[test]
fn tcp_pair() {
    selfcheck("tcp_pair", &[]);
}

#[test]
fn tree() {
    selfcheck("tree", &[]);
}

#[test]
fn session() {
    selfcheck("session", &[]);
}

#[test]
fn shared_mem() {
    selfcheck("shared_mem", &[]);
}

/// Ask `w` to check itself: it must report a failure mentioning `needle`.
fn expect_failure(w: &Workload, needle: &str) {
    let outcome = w.check_fails();
    eprintln!("{} reported: fail: {}", w.name, outcome.message);
    assert!(outcome.message.contains(needle), "expected a failure about {needle:?}, got {outcome:?}");
}

/// Overwrite `bytes` at `addr` in the memory of `pid` (root may write any
/// process's memory through /proc/PID/mem, read-only pages included).
fn poke(pid: i32, addr: u64, bytes: &[u8]) {
    let mem = OpenOptions::new().write(true).open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    mem.write_all_at(bytes, addr).expect("write /proc/PID/mem");
}

#[test]
fn mem_dense_detects_changed_memory() {
    let w = Workload::start("mem_dense", &["16"]);
    let addr = w.info_u64("dense_addr") + 3 * 4096 + 8;
    poke(w.pid, addr, &[0xde, 0xad, 0xbe, 0xef]);
    expect_failure(&w, &format!("first difference at byte {}", 3 * 4096 + 8));
}

#[test]
fn mem_writer_detects_a_page_left_behind() {
    let w = Workload::start("mem_writer", &["16", "64"]);
    w.wait_running();
    // Page 5 as it was before it was first written: its setup pattern is
    // not all zeros, so a zeroed page is behind any generation.
    poke(w.pid, w.info_u64("addr") + 5 * 4096, &[0; 4096]);
    expect_failure(&w, "page 5 ");
}

#[test]
fn mem_layout_detects_changed_read_only_region() {
    let w = Workload::start("mem_layout", &[]);
    poke(w.pid, w.info_u64("ro_addr") + 100, b"xyz");
    expect_failure(&w, "read-only region");
}

#[test]
fn pipes_detects_lost_byte() {
    let w = Workload::start("pipes", &[]);
    let fd = w.info_u64("pipe_a_read");
    let mut pipe = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(format!("/proc/{}/fd/{fd}", w.pid))
        .expect("open the workload's pipe");
    let mut byte = [0u8; 1];
    assert_eq!(pipe.read(&mut byte).expect("read one byte of pipe A"), 1);
    expect_failure(&w, "pipe A");
}

#[test]
fn files_detects_changed_deleted_file() {
    let w = Workload::start("files", &[]);
    let fd = w.info_u64("deleted_fd");
    let file: File = OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/fd/{fd}", w.pid))
        .expect("open the workload's deleted file");
    file.write_all_at(b"garbage", 50_000).expect("write into the deleted file");
    expect_failure(&w, "deleted file");
}

#[test]
fn vectors_detects_changed_register() {
    use nix::sys::ptrace;
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;

    let w = Workload::start("vectors", &["spin"]);
    w.wait_running();
    // The main thread (tid == pid) holds the patterns while it spins.
    let tid = Pid::from_raw(w.pid);
    ptrace::seize(tid, ptrace::Options::empty()).expect("PTRACE_SEIZE");
    ptrace::interrupt(tid).expect("PTRACE_INTERRUPT");
    waitpid(tid, Some(WaitPidFlag::__WALL)).expect("wait for the interrupt stop");
    let mut regs = ptrace::getregs(tid).expect("PTRACE_GETREGS");
    regs.r12 ^= 1;
    ptrace::setregs(tid, regs).expect("PTRACE_SETREGS");
    ptrace::detach(tid, None).expect("PTRACE_DETACH");
    expect_failure(&w, "r12");
}

#[test]
fn workload_gone_is_reported() {
    let mut w = Workload::start("mem_dense", &["16"]);
    w.kill();
    assert!(!util::workload::is_alive(w.pid));
    assert!(util::workload::wait_gone(w.pid, Duration::from_secs(1)));
}

/// After `stasis restore` the workload is not our child: start one through a
/// shell that exits at once, so it is reparented, and drive it by its PID.
#[test]
fn adopted_workload_is_checked_and_killed() {
    let bin = util::workload::build("mem_dense");
    let start = |dir: &std::path::Path| {
        let script = format!("{} {} 16 </dev/null >>{}/log 2>&1 &", bin.display(), dir.display(), dir.display());
        let status = std::process::Command::new("sh").arg("-c").arg(script).status().expect("run sh");
        assert!(status.success());
        let ready = dir.join("ready");
        for _ in 0..3000 {
            if let Ok(pid) = std::fs::read_to_string(&ready) {
                return pid.trim().parse::<i32>().expect("pid in DIR/ready");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} never became ready", dir.display());
    };

    let dir = tempfile::tempdir().unwrap();
    let pid = start(dir.path());
    let w = Workload::adopt("mem_dense", pid, dir);
    w.wait_running();
    w.check_ok();

    let dir = tempfile::tempdir().unwrap();
    let pid = start(dir.path());
    let mut w = Workload::adopt("mem_dense", pid, dir);
    w.wait_running();
    w.kill();
    assert!(!util::workload::is_alive(pid));
}

#[test]
fn deleted() {
    selfcheck("deleted", &[]);
}

/// Bytes and a mode changed from outside in a deleted file it holds are
/// seen.
#[test]
fn deleted_detects_changed_file_and_mode() {
    let w = Workload::start("deleted", &[]);
    w.wait_running();
    let file: File = OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/fd/62", w.pid))
        .expect("open the workload's deleted ro.dat");
    file.write_all_at(b"garbage", 100).expect("write into the deleted file");
    nix::sys::stat::fchmod(&file, nix::sys::stat::Mode::from_bits_truncate(0o444)).expect("chmod the deleted file");
    let outcome = w.check_fails();
    let message = &outcome.message;
    assert!(message.contains("ro.dat: mode 444"), "no failure about the mode: {message}");
    assert_eq!(message.matches("ro.dat").count(), 2, "no failure about the bytes: {message}");
}

#[test]
fn status_attrs() {
    selfcheck("status_attrs", &[]);
}

#[test]
fn locks() {
    selfcheck("locks", &[]);
}

#[test]
fn clone_files() {
    selfcheck("clone_files", &[]);
}
