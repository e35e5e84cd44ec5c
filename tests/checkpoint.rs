//! Dump and restore of the self-checking workloads (tests/workloads/): each
//! is started, dumped, killed, restored at its pid, and then verifies its
//! own state (memory, registers, fds, signals, ...) and reports.

mod util;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::time::Duration;

use util::run;
use util::workload::Workload;

fn dump(w: &Workload, images: &Path, extra: &[&str]) -> util::Run {
    let pid = w.pid.to_string();
    let mut args = vec!["dump", "--pid", &pid, "--images", images.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = run(&args);
    assert_eq!(r.code, Some(0), "dump of {} failed\n{}\n--- workload log:\n{}", w.name, r.dump(), w.log());
    r
}

/// [`dump`] with `--json`: its report.
fn dump_json(w: &Workload, images: &Path, extra: &[&str]) -> serde_json::Value {
    dump(w, images, &[extra, &["--json"]].concat()).json()
}

/// Whether a mapping of process `pid` is registered with a userfaultfd.
fn registered(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap().contains(" uw")
}

fn restore(w: &Workload, images: &Path) {
    restore_with(w, images, &[]);
}

fn restore_with(w: &Workload, images: &Path, extra: &[&str]) {
    let mut args = vec!["restore", "--images", images.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = run(&args);
    assert_eq!(r.code, Some(0), "restore of {} failed\n{}", w.name, r.dump());
    assert_eq!(r.stdout.trim(), w.pid.to_string(), "restored at another pid\n{}", r.dump());
}

/// Dump (killing the process), restore, and have it check itself.
fn round_trip(name: &str, args: &[&str]) {
    round_trip_with(name, args, &[]);
}

/// [`round_trip`], restoring with `restore_args` (`--lazy`: the state
/// compared once all memory is in).
fn round_trip_with(name: &str, args: &[&str], restore_args: &[&str]) {
    let mut w = Workload::start(name, args);
    let before = w.wait_running();
    let images = tempfile::tempdir().unwrap();
    let state = settled_state(w.pid);
    dump(&w, images.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    restore_with(&w, images.path(), restore_args);
    // Settled too: a thread restored in a restarted sigwaitinfo shows its
    // real mask until it is back in the call (which lifts the waited set).
    assert_same_state(&state, &settled_state(w.pid));
    let outcome = w.check_ok();
    assert!(outcome.generation >= before, "generation went back from {before} to {}", outcome.generation);
}

/// Dump with --leave-running: the original runs on; then it is killed, and
/// the restored copy holds the state at dump time, not later.
fn leave_running(name: &str, args: &[&str]) {
    let mut w = Workload::start(name, args);
    w.wait_running();
    let images = tempfile::tempdir().unwrap();
    dump(&w, images.path(), &["--leave-running"]);
    // The original goes on computing well past the dump (a generation is
    // about 10 ms; 150 is far more than a restore and check take)...
    let at_dump = w.progress().unwrap_or(0);
    let last = w.wait_progress(at_dump + 150, Duration::from_secs(60));
    w.kill();
    restore(&w, images.path());
    let outcome = w.check_ok();
    // ...but the restored copy starts from the dump, so it is behind.
    assert!(
        outcome.generation < last,
        "restored at generation {}, but the original had reached {last} after the dump",
        outcome.generation
    );
}

/// A live snapshot of memory written all over while it is copied: the
/// dump copies it while the process runs (and says so), then only what
/// was written since with the process frozen; the original runs on, and
/// the restored copy holds exactly the memory of the freeze (mem_writer
/// checks every page against the writes it had done).
#[test]
fn live_snapshot_of_memory_written_while_it_is_copied() {
    let mut w = Workload::start("mem_writer", &["64"]);
    w.wait_running();
    let images = tempfile::tempdir().unwrap();
    let report = dump_json(&w, images.path(), &["--leave-running"]);
    let pre = &report["pre_copy"];
    let (read, used) = (pre["bytes_read"].as_u64().unwrap_or(0), pre["bytes_used"].as_u64().unwrap_or(0));
    let logical = report["write"]["logical_bytes"].as_u64().unwrap();
    assert!(read >= 64 << 20, "the dump did not copy the memory while the process ran: {pre}");
    assert!(used > 0 && used < logical, "expected some of the memory copied ahead to be used, not all: {pre}");
    assert!(logical < 2 * (64 << 20), "{logical} bytes of memory counted for 64 MiB: {report}");
    let pid = w.pid;
    restored_copy_is_behind(&mut w, images.path(), || assert!(!registered(pid), "left registered"));
}

/// A live snapshot of memory most of which was never touched (a sparse
/// mem_writer: a page reads as zeros until its first write, as most of a
/// thread's stack or of a malloc arena does), while pages are written for
/// the first time all along: the pages never populated are neither read
/// ahead nor stored, those first written during the copy or the rounds
/// are, and the restored copy holds exactly the memory of the freeze
/// (every page written before it holds its last write; every other, zeros).
#[test]
fn live_snapshot_skips_pages_never_populated_and_keeps_those_written_meanwhile() {
    // 16 pages of 16384 a generation: a tenth of them is written in 10 s.
    let mut w = Workload::start("mem_writer", &["64", "16", "sparse"]);
    w.wait_running();
    let images = tempfile::tempdir().unwrap();
    let report = dump_json(&w, images.path(), &["--leave-running"]);
    let (read, logical) =
        (report["pre_copy"]["bytes_read"].as_u64().unwrap(), report["write"]["logical_bytes"].as_u64().unwrap());
    assert!(read > 0 && read < 16 << 20, "{read} bytes read ahead of a 64 MiB mapping mostly never touched: {report}");
    assert!(logical < 16 << 20, "{logical} bytes stored of a 64 MiB mapping mostly never touched: {report}");
    let pid = w.pid;
    restored_copy_is_behind(&mut w, images.path(), || assert!(!registered(pid), "left registered"));
}

/// [`live_snapshot_skips_pages_never_populated_and_keeps_those_written_meanwhile`]
/// with the write tracking kept between two dumps: the second, going on
/// with it, again neither reads nor stores the pages never populated, and
/// the copy restored through both images holds exactly the memory of the
/// second freeze (pages first written between the dumps included).
#[test]
fn kept_tracking_skips_pages_never_populated_and_keeps_those_written_since() {
    let mut w = Workload::start("mem_writer", &["64", "16", "sparse"]);
    w.wait_running();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    dump(&w, first.path(), &["--leave-running", "--keep-tracking"]);
    let at = w.progress().unwrap_or(0);
    w.wait_progress(at + 20, Duration::from_secs(60));
    let parent = first.path().to_str().unwrap();
    let report = dump_json(&w, second.path(), &["--leave-running", "--parent", parent]);
    assert_eq!(report["pre_copy"]["resumed"], 1, "the tracking was not taken back: {report}");
    let logical = report["write"]["logical_bytes"].as_u64().unwrap();
    assert!(logical < 16 << 20, "{logical} bytes stored of a 64 MiB mapping mostly never touched: {report}");
    let pid = w.pid;
    restored_copy_is_behind(&mut w, second.path(), || assert!(!registered(pid), "left registered"));
}

/// A live snapshot of a process whose memory is the start of 64 GiB of
/// address space reserved PROT_NONE (a JVM's heap, a V8 cage): the
/// reservation is not write-protected, so the dump makes no page tables
/// in the process for it (marking each page never touched took 131 MB of
/// them, left behind), and the restored copy holds exactly the memory of
/// the freeze, in the same reservation.
#[test]
fn live_snapshot_of_memory_in_a_large_reservation_leaves_no_page_tables_behind() {
    let (mut w, images, report) = live_snapshot_in_64_gib("reserved");
    let read = report["pre_copy"]["bytes_read"].as_u64().unwrap();
    assert!((64 << 20..80 << 20).contains(&read), "{read} bytes read ahead of 64 MiB in use: {report}");
    let pid = w.pid;
    // mem_writer's check includes the rest of the reservation, PROT_NONE.
    restored_copy_is_behind(&mut w, images.path(), || assert!(!registered(pid), "left registered"));
}

/// A live snapshot of a process whose memory is the start of 64 GiB mapped
/// read-write and never touched past it (a sanitizer's shadow memory, an
/// arena mapped with MAP_NORESERVE): marking its untouched pages would
/// take 128 MiB of page tables, so that mapping is not tracked, and says
/// so; it is copied frozen, and the restored copy holds exactly the memory
/// of the freeze, in the same 64 GiB mapping.
#[test]
fn live_snapshot_leaves_a_mostly_empty_huge_mapping_to_the_freeze() {
    let (mut w, images, report) = live_snapshot_in_64_gib("arena");
    let untracked = report["pre_copy"]["untracked"].to_string();
    assert!(untracked.contains("is copied frozen"), "the 64 GiB mapping is not said to be copied frozen: {report}");
    let pid = w.pid;
    // mem_writer's check includes the rest of the mapping, read-write.
    restored_copy_is_behind(&mut w, images.path(), || assert!(!registered(pid), "left registered"));
}

/// A `--leave-running` dump of mem_writer using 64 MiB at the start of a
/// 64 GiB mapping (`mode`: "reserved" or "arena"), checked to leave the
/// process's page tables (VmPTE) as they were: the workload, the image
/// and the report.
fn live_snapshot_in_64_gib(mode: &str) -> (Workload, tempfile::TempDir, serde_json::Value) {
    let page_tables = |pid: i32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmPTE:")).expect("VmPTE in status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let w = Workload::start("mem_writer", &["64", "16", mode]);
    w.wait_running();
    let before = page_tables(w.pid);
    let images = tempfile::tempdir().unwrap();
    let report = dump_json(&w, images.path(), &["--leave-running"]);
    let after = page_tables(w.pid);
    assert!(after < before + 4096, "page tables grew from {before} to {after} KiB through the dump");
    (w, images, report)
}

/// Once the original (left running by a live snapshot) has gone on well
/// past the dump (`meanwhile` looked at it then), kill it and restore
/// from `images`: the restored copy starts from the dump, so it is behind.
fn restored_copy_is_behind(w: &mut Workload, images: &Path, meanwhile: impl FnOnce()) {
    let at_dump = w.progress().unwrap_or(0);
    let last = w.wait_progress(at_dump + 150, Duration::from_secs(60));
    meanwhile();
    w.kill();
    restore(w, images);
    let outcome = w.check_ok();
    assert!(outcome.generation < last, "restored at generation {}, after the dump ({last})", outcome.generation);
}

/// An incremental live snapshot of memory written all over while it is
/// copied: the second dump (`--parent` the first) copies ahead against the
/// first's chunks and puts together what was written again meanwhile; the
/// restored copy (reading through both images) holds exactly the memory
/// of the second freeze.
#[test]
fn live_incremental_snapshot_of_memory_written_while_it_is_copied() {
    let mut w = Workload::start("mem_writer", &["64"]);
    w.wait_running();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    dump(&w, first.path(), &["--leave-running"]);
    let at = w.progress().unwrap_or(0);
    w.wait_progress(at + 20, Duration::from_secs(60));
    let (parent, images) = (first.path().to_str().unwrap(), second.path().to_str().unwrap());
    let report = dump_json(&w, second.path(), &["--leave-running", "--parent", parent]);
    assert!(report["pre_copy"]["bytes_used"].as_u64().unwrap_or(0) > 0, "nothing copied ahead was used: {report}");
    let shown = run(["inspect", "--json", images]).success().json();
    assert!(shown["parent"]["path"].is_string(), "not an incremental image: {shown}");
    restored_copy_is_behind(&mut w, second.path(), || {});
}

/// Write tracking kept between live snapshots (`--keep-tracking`) of
/// memory written all the time: each dump takes the tracking back from the
/// last one's holder and copies ahead only what was written since, on the
/// parent's chunks; the third, which does not keep it, leaves nothing
/// registered; restored through the three images, the copy holds exactly
/// the memory of the third freeze (mem_writer checks every page against
/// the writes it had done).
#[test]
fn write_tracking_kept_between_live_snapshots_of_memory_written_meanwhile() {
    let mut w = Workload::start("mem_writer", &["64"]);
    w.wait_running();
    let images: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Each dump, then 20 generations of writes.
    let dump_json = |i: usize, extra: &[&str]| {
        let report = dump_json(&w, images[i].path(), extra);
        let at = w.progress().unwrap_or(0);
        w.wait_progress(at + 20, Duration::from_secs(60));
        report
    };
    let first = dump_json(0, &["--leave-running", "--keep-tracking"]);
    assert!(first["tracking"]["holder"].is_i64(), "the tracking was not kept: {first}");
    let parent = images[0].path().to_str().unwrap().to_owned();
    let second = dump_json(1, &["--leave-running", "--keep-tracking", "--parent", &parent]);
    assert_eq!(second["pre_copy"]["resumed"], 1, "the tracking was not taken back: {second}");
    assert!(second["tracking"]["holder"].is_i64(), "the tracking was not kept again: {second}");
    let parent = images[1].path().to_str().unwrap().to_owned();
    let third = dump_json(2, &["--leave-running", "--parent", &parent]);
    assert_eq!(third["pre_copy"]["resumed"], 1, "the tracking was not taken back: {third}");
    let pid = w.pid;
    restored_copy_is_behind(&mut w, images[2].path(), || assert!(!registered(pid), "left registered"));
}

/// Tracking kept for one image, taken back by a dump that is not
/// incremental on it (no --parent): that dump uses the userfaultfd as a
/// fresh one (everything protected anew and read), keeps it again for its
/// own image, and the next dump, `--parent` that one, goes on from it; the
/// copy restored through the last two images holds exactly the memory of
/// the last freeze.
#[test]
fn tracking_taken_back_by_a_dump_of_another_parent_starts_anew() {
    let mut w = Workload::start("mem_writer", &["64"]);
    w.wait_running();
    let images: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dump_json = |i: usize, extra: &[&str]| dump_json(&w, images[i].path(), &[&["--leave-running"], extra].concat());
    let first = dump_json(0, &["--keep-tracking"]);
    let holder = first["tracking"]["holder"].as_i64().expect("a holder") as i32;
    let second = dump_json(1, &["--keep-tracking"]);
    assert!(util::workload::wait_gone(holder, Duration::from_secs(10)), "the first holder still runs");
    let pre = &second["pre_copy"];
    assert_eq!(pre["resumed"], 0, "{second}");
    assert!(pre["bytes_read"].as_u64().unwrap() >= 64 << 20, "not everything was read: {second}");
    let parent = images[1].path().to_str().unwrap().to_owned();
    let third = dump_json(2, &["--parent", &parent]);
    assert_eq!(third["pre_copy"]["resumed"], 1, "the tracking was not taken back: {third}");
    let pid = w.pid;
    restored_copy_is_behind(&mut w, images[2].path(), || assert!(!registered(pid), "left registered"));
}

/// A holder killed ends the tracking it kept, and loses nothing: the
/// process is left with nothing registered, the holder's state file is
/// taken away by the next dump, which reads all the memory again (nothing
/// taken back) and restores exactly.
#[test]
fn killed_holder_ends_the_tracking_and_the_next_dump_reads_everything() {
    let mut w = Workload::start("mem_writer", &["64"]);
    w.wait_running();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let report = dump_json(&w, first.path(), &["--leave-running", "--keep-tracking"]);
    let holder = report["tracking"]["holder"].as_i64().expect("a holder") as i32;
    let state = Path::new("/run/stasis/tracking").join(format!("{holder}.json"));
    assert!(state.exists(), "no {}", state.display());
    assert!(registered(w.pid), "nothing registered");
    kill(Pid::from_raw(holder), Signal::SIGKILL).unwrap();
    assert!(util::workload::wait_gone(holder, Duration::from_secs(10)), "holder {holder} still runs");
    assert!(!registered(w.pid), "left registered");
    let parent = first.path().to_str().unwrap().to_owned();
    let report = dump_json(&w, second.path(), &["--leave-running", "--parent", &parent]);
    assert!(!state.exists(), "the state file of the killed holder is still there");
    let pre = &report["pre_copy"];
    assert_eq!(pre["resumed"], 0, "{report}");
    assert!(pre["bytes_read"].as_u64().unwrap() >= 64 << 20, "not everything was read again: {report}");
    restored_copy_is_behind(&mut w, second.path(), || {});
}

/// A workload that keeps writing to its files: after a --leave-running dump
/// the files move on, and a restore that would pair the old process with the
/// new files is refused, naming the file, with nothing left running.
fn leave_running_then_files_change(name: &str, file: &str) {
    let mut w = Workload::start(name, &[]);
    w.wait_running();
    let images = tempfile::tempdir().unwrap();
    dump(&w, images.path(), &["--leave-running"]);
    let at_dump = w.progress().unwrap_or(0);
    w.wait_progress(at_dump + 2, Duration::from_secs(30));
    w.kill();
    let r = run(["restore", "--images", images.path().to_str().unwrap()]).expect_code(1);
    assert!(r.stderr.contains(file) && r.stderr.contains("changed since the dump"), "{}", r.dump());
    assert!(!util::workload::is_alive(w.pid), "a refused restore left pid {} running", w.pid);
}

#[test]
fn leave_running_then_appended_file_is_refused() {
    leave_running_then_files_change("files", "gen.dat");
}

#[test]
fn leave_running_then_file_written_through_shared_mapping_is_refused() {
    leave_running_then_files_change("mem_filemap", "shared.dat");
}

macro_rules! workload_tests {
    (both: [$($name:ident: $workload:literal $(, $arg:literal)*;)*] round_trip_only: [$($rname:ident: $rworkload:literal;)*]) => {
        mod round_trip {
            use super::*;
            $(#[test] fn $name() { round_trip($workload, &[$($arg),*]); })*
            $(#[test] fn $rname() { round_trip($rworkload, &[]); })*
        }
        mod leave_running {
            use super::*;
            $(#[test] fn $name() { leave_running($workload, &[$($arg),*]); })*
        }
        mod lazy {
            use super::*;
            $(#[test] fn $name() { round_trip_with($workload, &[$($arg),*], &["--lazy"]); })*
            $(#[test] fn $rname() { round_trip_with($rworkload, &[], &["--lazy"]); })*
        }
    };
}

workload_tests! {
    both: [
    mem_dense_16m: "mem_dense", "16";
    mem_writer: "mem_writer", "16", "32";
    mem_layout: "mem_layout";
    threads: "threads";
    signals: "signals";
    vectors_spin: "vectors", "spin";
    vectors_sleep: "vectors", "sleep";
    pipes: "pipes";
    attrs: "attrs";
    eventfds: "eventfds";
    timers: "timers";
    sockets: "sockets";
    deleted: "deleted";
    status_attrs: "status_attrs";
    locks: "locks";
    novdso: "novdso";
    seccomp_strict: "seccomp_strict";
    ]
    round_trip_only: [
    mem_filemap: "mem_filemap";
    files: "files";
    ]
}

/// After a restore, the listening sockets take connections from outside the
/// process (into their accept queue, whether or not it accepts), and the
/// bound UDP socket receives; then the workload checks and uses its sockets.
#[test]
fn restored_sockets_take_connections_from_outside() {
    use std::net::{Ipv6Addr, TcpStream, UdpSocket};
    let mut w = Workload::start("sockets", &[]);
    w.wait_running();
    let port = |key: &str| u16::try_from(w.info_u64(key)).unwrap();
    let (tcp, tcp6, udp, nonblock) = (port("tcp_port"), port("tcp6_port"), port("udp_port"), port("nonblock_port"));
    let images = tempfile::tempdir().unwrap();
    dump(&w, images.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    // Its ports are free while it is not running.
    drop(std::net::TcpListener::bind(("127.0.0.1", tcp)).expect("the dumped process's port is free again"));
    restore(&w, images.path());
    let connect = |addr: std::net::SocketAddr| {
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to restored listener {addr}: {e}\n{}", w.log()))
    };
    let _a = connect(([127, 0, 0, 1], tcp).into());
    let _b = connect((Ipv6Addr::LOCALHOST, tcp6).into());
    let _c = connect(([127, 0, 0, 1], nonblock).into());
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(b"hello", ("127.0.0.1", udp)).expect("send to the restored UDP socket");
    w.check_ok();
}

#[test]
fn dense_256m_round_trip() {
    round_trip("mem_dense", &["256"]);
}

/// What a process can set about itself and /proc shows: each thread's
/// status (less the counters and the links to the outside: parent, session
/// and group, which the restore documents), its timer slack and scheduling
/// fields of stat, the process's oom_score_adj, and every mapping's range,
/// name and VmFlags.
fn settable_state(pid: i32) -> std::collections::BTreeMap<String, String> {
    const CHANGING: &[&str] = &[
        "State",
        "PPid",
        "TracerPid",
        "FDSize",
        "NSpgid",
        "NSsid",
        "SigQ",
        "voluntary_ctxt_switches",
        "nonvoluntary_ctxt_switches",
        "CoreDumping",
    ];
    let mut state = std::collections::BTreeMap::new();
    let read = |path: String| std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    tids.sort();
    for tid in tids {
        for line in read(format!("/proc/{pid}/task/{tid}/status")).lines() {
            let (key, value) = line.split_once(':').unwrap();
            if !CHANGING.contains(&key) && !key.starts_with("Vm") && !key.starts_with("Rss") && key != "HugetlbPages" {
                state.insert(format!("thread {tid} {key}"), value.trim().to_owned());
            }
        }
        let stat = read(format!("/proc/{pid}/task/{tid}/stat"));
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        // priority, nice, rt_priority, policy (fields 18, 19, 40, 41 of proc(5)).
        for (name, i) in [("priority", 18), ("nice", 19), ("rt_priority", 40), ("policy", 41)] {
            state.insert(format!("thread {tid} stat {name}"), fields[i - 3].to_owned());
        }
        state.insert(format!("thread {tid} timerslack"), read(format!("/proc/{tid}/timerslack_ns")).trim().to_owned());
    }
    state.insert("oom_score_adj".into(), read(format!("/proc/{pid}/oom_score_adj")).trim().to_owned());
    let mut mapping = String::new();
    for line in read(format!("/proc/{pid}/smaps")).lines() {
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let fields: Vec<&str> = line.split_whitespace().collect();
            mapping = format!("mapping {} {}", fields[0], fields.get(5).unwrap_or(&""));
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            state.insert(mapping.clone(), flags.trim().to_owned());
        }
    }
    state
}

/// Everything a process set about itself that /proc shows comes back equal
/// (the workload that sets the most of it: status_attrs).
#[test]
fn status_and_smaps_come_back_equal() {
    let mut w = Workload::start("status_attrs", &[]);
    w.wait_running();
    let images = tempfile::tempdir().unwrap();
    let before = settled_state(w.pid);
    dump(&w, images.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    restore(&w, images.path());
    assert_same_state(&before, &settled_state(w.pid));
    w.check_ok();
}

/// [`settable_state`] once it stops changing: a workload's threads may
/// still be settling (masks, names) just after it said it is ready.
fn settled_state(pid: i32) -> std::collections::BTreeMap<String, String> {
    let mut last = settable_state(pid);
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        let now = settable_state(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

fn assert_same_state(
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
) {
    let differ: Vec<String> = before
        .keys()
        .chain(after.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{k}: {:?} -> {:?}", before.get(k), after.get(k)))
        .collect();
    assert!(differ.is_empty(), "changed by the dump and restore:\n{}", differ.join("\n"));
}

/// One frozen time: what `dump` prints (and --json holds) is what the image
/// holds for `inspect`, for a killed tree (stopped until the kill, after
/// the image is written and verified) and for one left running.
#[test]
fn dump_and_inspect_show_one_frozen_time() {
    for extra in [&[][..], &["--leave-running"][..]] {
        let mut w = Workload::start("mem_dense", &["16"]);
        w.wait_running();
        let images = tempfile::tempdir().unwrap();
        let pid = w.pid.to_string();
        let mut args = vec!["dump", "--pid", &pid, "--images", images.path().to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let dumped = run(&args).success().json();
        let shown = run(["inspect", "--json", images.path().to_str().unwrap()]).success().json();
        let frozen = dumped["frozen_us"].as_u64().unwrap_or_else(|| panic!("no frozen_us in {dumped}"));
        assert!(frozen > 0, "{dumped}");
        assert_eq!(
            shown["dump"]["frozen_us"].as_u64(),
            Some(frozen),
            "{extra:?}: dump said {dumped}\ninspect says {shown}"
        );
        w.kill();
    }
}

/// `restore --lazy`: the tree runs before its memory is back, and a
/// process writing all over its memory (mem_writer checks each page before
/// it writes it, and every page at the check) finds each page as it was at
/// the freeze, loaded on its faults and in the background; all of its
/// region went that way.
#[test]
fn lazy_restore_of_a_process_writing_all_over_its_memory() {
    let mut w = Workload::start("mem_writer", &["128"]);
    let before = w.wait_running();
    let images = tempfile::tempdir().unwrap();
    dump(&w, images.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    let r = run(["restore", "--images", images.path().to_str().unwrap(), "--lazy", "--json"]);
    assert_eq!(r.code, Some(0), "lazy restore failed\n{}", r.dump());
    let report = r.json();
    assert_eq!(report["pid"].as_i64(), Some(i64::from(w.pid)), "{report}");
    let lazy = &report["lazy"];
    let loaded = lazy["ahead"].as_u64().unwrap_or(0) + lazy["on_fault"].as_u64().unwrap_or(0);
    assert!(loaded >= 128 << 20, "only {loaded} bytes loaded lazily: {report}");
    let outcome = w.check_ok();
    assert!(outcome.generation >= before, "generation went back from {before} to {}", outcome.generation);
}
