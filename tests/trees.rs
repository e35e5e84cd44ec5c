//! Process trees: a fork tree with zombies and pipes, a session with two
//! process groups, processes sharing memory, fds and a pipe, unix sockets
//! of every type between two processes, and a TCP connection between them. Each is
//! dumped (killed, or left running), restored at its pids, and checks
//! itself: parents, sessions, groups, data in flight, shared writes.

mod util;

use std::path::Path;
use std::time::Duration;

use util::pidns::{ns_ids, squat, NamespaceInit};
use util::run;
use util::workload::{proc_state, Workload};

fn dump(w: &Workload, images: &Path, extra: &[&str]) -> String {
    let pid = w.pid.to_string();
    let mut args = vec!["dump", "--pid", &pid, "--images", images.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = run(&args);
    assert_eq!(r.code, Some(0), "dump of {} failed\n{}\n--- workload log:\n{}", w.name, r.dump(), w.log());
    r.stdout
}

fn restore(w: &Workload, images: &Path) {
    restore_with(w, images, &[]);
}

fn restore_with(w: &Workload, images: &Path, extra: &[&str]) {
    let mut args = vec!["restore", "--images", images.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = run(&args);
    assert_eq!(r.code, Some(0), "restore of {} failed\n{}\n--- workload log:\n{}", w.name, r.dump(), w.log());
    assert_eq!(r.stdout.trim(), w.pid.to_string(), "restored at another pid\n{}", r.dump());
}

/// Parent, process group and session of a process, from /proc.
fn links(pid: i32) -> (i32, i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<i32> = after.split_whitespace().skip(1).take(3).map(|v| v.parse().unwrap_or(0)).collect();
    (f[0], f[1], f[2])
}

fn pids(w: &Workload) -> Vec<i32> {
    w.info("pids").split_whitespace().map(|p| p.parse().unwrap()).collect()
}

/// The System V segment a workload created (DIR/info "sysv_key", in hex:
/// shared_mem), removed when dropped if a failed or killed run left it
/// behind. Declared before the [`Workload`], so it is dropped after it:
/// it waits for the tree's processes to be gone, then removes the segment
/// of that key if nothing is attached to it any more.
#[derive(Debug, Default)]
struct SysvLeftover {
    key: Option<i32>,
    pids: Vec<i32>,
}

impl SysvLeftover {
    fn watch(&mut self, w: &Workload) {
        let info = std::fs::read_to_string(w.dir.join("info")).unwrap_or_default();
        let value = |key: &str| info.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ').map(str::to_owned));
        self.key =
            value("sysv_key").and_then(|k| u32::from_str_radix(k.trim_start_matches("0x"), 16).ok()).map(|k| k as i32);
        let members = value("pids").unwrap_or_default();
        self.pids = std::iter::once(w.pid).chain(members.split_whitespace().filter_map(|p| p.parse().ok())).collect();
    }
}

impl Drop for SysvLeftover {
    fn drop(&mut self) {
        use stasis_sys::sysv;
        let Some(key) = self.key else { return };
        for &pid in &self.pids {
            util::workload::wait_gone(pid, Duration::from_secs(10));
        }
        let Ok(Some(id)) = sysv::find(key) else { return };
        if sysv::stat(id).is_ok_and(|s| s.nattch == 0) && sysv::remove(id).is_ok() {
            eprintln!("removed System V segment {id} (key {key:#x}) that the workload left behind");
        }
    }
}

/// Dump killing the tree, restore, and compare the links of every process
/// with those before; the workload then checks itself.
fn round_trip(name: &str) {
    round_trip_with(name, &[]);
}

/// [`round_trip`], restoring with `restore_args`.
fn round_trip_with(name: &str, restore_args: &[&str]) {
    let mut sysv = SysvLeftover::default();
    let mut w = Workload::start(name, &[]);
    sysv.watch(&w);
    let before = w.wait_running();
    let members = pids(&w);
    let links_before: Vec<_> = members.iter().map(|&p| links(p)).collect();
    let images = tempfile::tempdir().unwrap();
    let out = dump(&w, images.path(), &[]);
    assert!(out.contains(&format!("{} processes", members.len() + 1)), "{out}");
    w.wait_exit(Duration::from_secs(30));
    restore_with(&w, images.path(), restore_args);
    for (&p, l) in members.iter().zip(&links_before) {
        assert_eq!(links(p), *l, "process {p}: (parent, group, session) changed\n{}", w.log());
    }
    let outcome = w.check_ok();
    assert!(outcome.generation >= before, "generation went back from {before} to {}", outcome.generation);
}

/// Dump leaving the tree running; the original goes on, is killed, and the
/// restored tree starts from the dump.
fn leave_running(name: &str) {
    let mut sysv = SysvLeftover::default();
    let mut w = Workload::start(name, &[]);
    sysv.watch(&w);
    w.wait_running();
    let images = tempfile::tempdir().unwrap();
    dump(&w, images.path(), &["--leave-running"]);
    restored_copy_is_behind(&mut w, images.path());
}

/// Once the original (left running by a dump) has gone on well past it,
/// kill it and restore from `images`: the restored tree starts from the
/// dump, so it is behind.
fn restored_copy_is_behind(w: &mut Workload, images: &Path) {
    let at_dump = w.progress().unwrap_or(0);
    let last = w.wait_progress(at_dump + 150, Duration::from_secs(60));
    w.kill();
    restore(w, images);
    let outcome = w.check_ok();
    assert!(outcome.generation < last, "restored at generation {}, the original reached {last}", outcome.generation);
}

/// Dump killing the tree, take every pid it had with other processes, and
/// restore: into a new PID namespace (by itself, or as asked), where each
/// process has its pid, group and session; the workload checks itself.
fn round_trip_in_new_pid_namespace(name: &str, extra: &[&str]) {
    let mut sysv = SysvLeftover::default();
    let mut w = Workload::start(name, &[]);
    sysv.watch(&w);
    let before = w.wait_running();
    let members = pids(&w);
    let original = w.pid;
    let all: Vec<i32> = std::iter::once(original).chain(members.iter().copied()).collect();
    let links_before: Vec<_> = all.iter().map(|&p| links(p)).collect();
    let images = tempfile::tempdir().unwrap();
    dump(&w, images.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    let _taken = squat(&all);
    let mut args = vec!["restore", "--images", images.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = run(&args);
    assert_eq!(r.code, Some(0), "restore of {name} failed\n{}\n--- workload log:\n{}", r.dump(), w.log());
    assert!(r.stderr.contains("new PID namespace"), "no notice of the namespace\n{}", r.dump());
    let host: i32 = r.stdout.trim().parse().unwrap_or_else(|_| panic!("no pid printed\n{}", r.dump()));
    assert_ne!(host, original, "{}", r.dump());
    let init = links(host).0;
    let _init = NamespaceInit(init);
    // Groups and sessions led from outside the tree show as 0 inside.
    let outside = |id: i32| if all.contains(&id) { id } else { 0 };
    let want: Vec<(i32, i32, i32)> =
        all.iter().zip(&links_before).map(|(&p, l)| (p, outside(l.1), outside(l.2))).collect();
    assert_in_namespace(host, &want, &w);
    w.pid = host;
    let at_first = w.progress().unwrap_or(0);

    // Hibernate again: the tree in its namespace is dumped with the pids
    // it has there, and restored into a new namespace (it must be: those
    // pids are still taken here), each process at its pid, in its group and
    // session, as before.
    let again = tempfile::tempdir().unwrap();
    let out = dump(&w, again.path(), &[]);
    assert!(out.contains(&format!("{} processes", all.len())), "{out}");
    assert!(util::workload::wait_gone(host, Duration::from_secs(30)), "the tree outlived its second dump");
    let shown = run(["inspect", again.path().to_str().unwrap(), "--json"]).success().json();
    let mut inside: Vec<i64> =
        shown["processes"].as_array().unwrap().iter().map(|p| p["pid"].as_i64().unwrap()).collect();
    inside.sort();
    let mut want_pids: Vec<i64> = all.iter().map(|&p| i64::from(p)).collect();
    want_pids.sort();
    assert_eq!(inside, want_pids, "the second image does not hold the pids the tree had in its namespace");
    let r = run(["restore", "--images", again.path().to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "second restore of {name} failed\n{}\n--- workload log:\n{}", r.dump(), w.log());
    assert!(r.stderr.contains("PID namespace of its own"), "no notice of the namespace\n{}", r.dump());
    let host2: i32 = r.stdout.trim().parse().unwrap_or_else(|_| panic!("no pid printed\n{}", r.dump()));
    let _init2 = NamespaceInit(links(host2).0);
    assert_in_namespace(host2, &want, &w);
    w.pid = host2;
    let refused = run(["restore", "--images", again.path().to_str().unwrap(), "--no-pid-namespace"]);
    assert!(refused.code == Some(1) && refused.stderr.contains("new PID namespace"), "{}", refused.dump());
    let outcome = w.check_ok();
    assert!(outcome.generation >= at_first.max(before), "generation went back to {}", outcome.generation);
}

/// The processes under `host` (a restored root, seen from here) are, in
/// their PID namespace, exactly `want` (pid, group, session), under the
/// namespace's init, with a /proc of their own.
fn assert_in_namespace(host: i32, want: &[(i32, i32, i32)], w: &Workload) {
    assert_eq!(ns_ids(links(host).0).0, 1, "the root's parent is not the namespace's init");
    let found: Vec<i32> = std::iter::once(host).chain(util::servers::descendants(host)).collect();
    for &(p, pgid, sid) in want {
        let Some(&h) = found.iter().find(|&&h| ns_ids(h).0 == p) else {
            panic!("process {p} is not in the namespace (found {found:?})\n{}", w.log());
        };
        assert_eq!(ns_ids(h), (p, pgid, sid), "process {p} (host pid {h})\n{}", w.log());
    }
    // Its /proc is the namespace's: /proc/N there is its own process N.
    let root = want[0].0;
    let own = std::fs::read_to_string(format!("/proc/{host}/root/proc/{root}/stat")).unwrap_or_default();
    assert!(own.starts_with(&format!("{root} (")), "/proc/{root} inside the namespace shows {own:?}");
}

#[test]
fn fork_tree_in_a_new_pid_namespace_when_its_pids_are_taken() {
    round_trip_in_new_pid_namespace("tree", &[]);
}

#[test]
fn session_in_a_new_pid_namespace_when_asked() {
    round_trip_in_new_pid_namespace("session", &["--pid-namespace"]);
}

#[test]
fn fork_tree_with_zombies_round_trip() {
    let mut w = Workload::start("tree", &[]);
    w.wait_running();
    let zombies = [w.info("zombie"), w.info("zombie_a2")];
    let images = tempfile::tempdir().unwrap();
    let out = dump(&w, images.path(), &[]);
    assert!(out.contains("2 zombies"), "{out}");
    let shown = run(["inspect", images.path().to_str().unwrap()]).success().stdout;
    for z in &zombies {
        assert!(shown.contains(&format!("zombie     {z} (parent ")), "zombie {z} not shown:\n{shown}");
    }
    assert!(shown.contains("exited with 7") && shown.contains("exited with 3"), "{shown}");
    w.wait_exit(Duration::from_secs(30));
    restore(&w, images.path());
    for z in &zombies {
        let pid: i32 = z.parse().unwrap();
        assert_eq!(proc_state(pid), Some('Z'), "zombie {pid} is not a zombie after restore");
    }
    // The parents reap them with their exit codes (checked by the workload).
    w.check_ok();
}

#[test]
fn fork_tree_links_are_restored() {
    round_trip("tree");
}

#[test]
fn fork_tree_leave_running() {
    leave_running("tree");
}

/// Write tracking kept for a whole tree (`--keep-tracking`): the second
/// dump, `--parent` the first, goes on from the tracking of each of its
/// five live processes; the tree restored from it (through both images)
/// checks itself, every process's counters against the beats its parent
/// read, and is behind the original.
#[test]
fn fork_tree_with_write_tracking_kept_between_dumps() {
    let mut w = Workload::start("tree", &[]);
    w.wait_running();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = dump(&w, first.path(), &["--leave-running", "--keep-tracking", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("the dump's JSON");
    assert_eq!(report["tracking"]["processes"], 5, "{report}");
    let at = w.progress().unwrap_or(0);
    w.wait_progress(at + 20, Duration::from_secs(60));
    let parent = first.path().to_str().unwrap().to_owned();
    let out = dump(&w, second.path(), &["--leave-running", "--parent", &parent, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("the dump's JSON");
    assert_eq!(report["pre_copy"]["resumed"], 5, "{report}");
    restored_copy_is_behind(&mut w, second.path());
}

/// A child forked with CLONE_FILES shares its parent's fd table again
/// after the restore (an fd the parent opens then is in the child's table).
#[test]
fn shared_fd_table_round_trip() {
    round_trip("clone_files");
}

#[test]
fn shared_fd_table_leave_running() {
    leave_running("clone_files");
}

#[test]
fn session_with_two_process_groups_round_trip() {
    round_trip("session");
}

/// `restore --lazy` of trees: each process's memory loads after the tree
/// runs (a parent whose child still shares pages with it has its memory
/// written before the child is forked from it); the processes check their
/// memory, shared objects and links as after an eager restore.
#[test]
fn trees_restored_lazily() {
    for name in ["tree", "session", "shared_mem", "unix_sockets", "passed_fds", "clone_files"] {
        round_trip_with(name, &["--lazy"]);
    }
}

#[test]
fn shared_memory_round_trip() {
    round_trip("shared_mem");
}

#[test]
fn shared_memory_leave_running() {
    leave_running("shared_mem");
}

#[test]
fn unix_sockets_round_trip() {
    round_trip("unix_sockets");
}

#[test]
fn unix_sockets_leave_running() {
    leave_running("unix_sockets");
}

/// A process in a group whose leader exited while another member, outside
/// the tree, still runs (a shell job whose first process ended): the group
/// is not the tree's to re-make (its id is still in use), so restore puts
/// the process in stasis's group, as for any group led from outside.
#[test]
fn group_whose_leader_exited_but_not_its_other_members() {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut leader = Command::new("sleep").arg("1000").process_group(0).spawn().unwrap();
    let group = leader.id() as i32;
    let _member = Reap(Command::new("sleep").arg("1000").process_group(group).spawn().unwrap());
    let bin = util::workload::build("mem_dense");
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = Command::new(&bin)
        .arg(dir.path())
        .arg("16")
        .process_group(group)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    leader.kill().unwrap();
    leader.wait().unwrap();
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !dir.path().join("ready").exists() {
        assert!(std::time::Instant::now() < deadline, "mem_dense never became ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut w = Workload::adopt("mem_dense", pid, dir);
    let before = w.wait_running();
    assert_eq!(links(pid).1, group, "not in the leaderless group");
    let images = tempfile::tempdir().unwrap();
    let out = dump(&w, images.path(), &[]);
    let shown = run(["inspect", images.path().to_str().unwrap()]).success().stdout;
    assert!(!shown.contains("leaderless groups"), "a group with a member outside is not leaderless\n{shown}\n{out}");
    child.wait().unwrap();
    restore(&w, images.path());
    w.pid = pid;
    let outcome = w.check_ok();
    assert!(outcome.generation >= before);
}

/// Fds in flight: sent with SCM_RIGHTS on a stream and a datagram socket
/// and not yet received (a file, a pipe end, an eventfd, a unix socket with
/// data queued on it, and a file description the sender still holds).
#[test]
fn passed_fds_in_flight_round_trip() {
    round_trip("passed_fds");
}

#[test]
fn passed_fds_in_flight_leave_running() {
    leave_running("passed_fds");
}

#[test]
fn tcp_connection_inside_the_tree_round_trip() {
    round_trip("tcp_pair");
}

#[test]
fn tcp_connection_inside_the_tree_leave_running() {
    leave_running("tcp_pair");
}

/// Start the `daemon` workload and follow its daemon: the process the
/// harness started exits once the daemon is set up.
fn start_daemon() -> (Workload, i32) {
    let mut w = Workload::start("daemon", &[]);
    w.wait_exit(Duration::from_secs(30));
    w.pid = w.info("pid_d").parse().unwrap();
    let e = w.info("pid_e").parse().unwrap();
    let session: i32 = w.info("pid_a").parse().unwrap();
    let group: i32 = w.info("pid_c").parse().unwrap();
    assert_eq!(links(w.pid).1, session, "the daemon does not lead group {session}\n{}", w.log());
    assert_eq!(links(e).1, group, "E is not in group {group}\n{}", w.log());
    for gone in [session, group] {
        assert!(!util::workload::is_alive(gone), "leader {gone} is still running\n{}", w.log());
    }
    (w, e)
}

/// A daemon made by a double fork: its session and group, and its child's
/// group, lost their leaders. The dump records them as leaderless, the
/// restore makes them again through helpers at the leaders' pids (and
/// lets the helpers go); the daemon's child, reparented to it (a child
/// subreaper), is its child again.
#[test]
fn daemon_whose_session_leader_exited_round_trip() {
    let (mut w, e) = start_daemon();
    let before = w.wait_running();
    let links_before = [links(w.pid), links(e)];
    let images = tempfile::tempdir().unwrap();
    dump(&w, images.path(), &[]);
    let shown = run(["inspect", images.path().to_str().unwrap()]).success().stdout;
    let (session, group) = (w.info("pid_a"), w.info("pid_c"));
    assert!(shown.contains(&format!("leaderless sessions {session} ")), "{shown}");
    let mut groups: Vec<i32> = [&session, &group].iter().map(|g| g.parse().unwrap()).collect();
    groups.sort();
    assert!(shown.contains(&format!("leaderless groups   {}, {} ", groups[0], groups[1])), "{shown}");
    w.wait_exit(Duration::from_secs(30));
    restore(&w, images.path());
    assert_eq!([links(w.pid), links(e)], links_before, "(parent, group, session) of D and E changed\n{}", w.log());
    for helper in [w.info("pid_a"), w.info("pid_c")] {
        let pid: i32 = helper.parse().unwrap();
        assert!(!util::workload::is_alive(pid), "the restore's helper {pid} is still running");
    }
    let outcome = w.check_ok();
    assert!(outcome.generation >= before, "generation went back from {before} to {}", outcome.generation);
}

/// The same daemon into a new PID namespace: the session and both groups
/// have their ids inside, and the daemon is the one the init serves.
#[test]
fn daemon_whose_session_leader_exited_in_a_new_pid_namespace() {
    let (mut w, e) = start_daemon();
    let before = w.wait_running();
    let (d, session, group) = (w.pid, w.info("pid_a").parse().unwrap(), w.info("pid_c").parse().unwrap());
    let images = tempfile::tempdir().unwrap();
    dump(&w, images.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    let r = run(["restore", "--images", images.path().to_str().unwrap(), "--pid-namespace"]);
    assert_eq!(r.code, Some(0), "restore failed\n{}\n--- workload log:\n{}", r.dump(), w.log());
    let host: i32 = r.stdout.trim().parse().unwrap_or_else(|_| panic!("no pid printed\n{}", r.dump()));
    let init = links(host).0;
    let _init = NamespaceInit(init);
    assert_eq!(ns_ids(init).0, 1, "the daemon's parent is not the namespace's init\n{}", r.dump());
    assert_eq!(ns_ids(host), (d, session, session), "the daemon inside\n{}", w.log());
    let kids = util::servers::descendants(host);
    let Some(&child) = kids.iter().find(|&&h| ns_ids(h).0 == e) else {
        panic!("E ({e}) is not the daemon's child in the namespace: {kids:?}\n{}", w.log())
    };
    assert_eq!(ns_ids(child), (e, group, session), "E inside\n{}", w.log());
    assert_eq!(kids.len(), 1, "the daemon has other descendants than E: {kids:?}");
    w.pid = host;
    // Again from inside the namespace: the session and group whose leaders
    // exited are recorded with their ids there, and made again there.
    let again = tempfile::tempdir().unwrap();
    dump(&w, again.path(), &[]);
    assert!(_init.wait_gone(Duration::from_secs(10)), "the namespace's init outlived the dumped daemon");
    let r = run(["restore", "--images", again.path().to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "second restore failed\n{}\n--- workload log:\n{}", r.dump(), w.log());
    let host: i32 = r.stdout.trim().parse().unwrap_or_else(|_| panic!("no pid printed\n{}", r.dump()));
    let _init = NamespaceInit(links(host).0);
    assert_eq!(ns_ids(host), (d, session, session), "the daemon inside, restored again\n{}", w.log());
    let kids = util::servers::descendants(host);
    let Some(&child) = kids.iter().find(|&&h| ns_ids(h).0 == e) else {
        panic!("E ({e}) is not the daemon's child in the new namespace: {kids:?}\n{}", w.log())
    };
    assert_eq!(ns_ids(child), (e, group, session), "E inside, restored again\n{}", w.log());
    w.pid = host;
    let outcome = w.check_ok();
    assert!(outcome.generation >= before, "generation went back from {before} to {}", outcome.generation);
    assert!(_init.wait_gone(Duration::from_secs(10)), "the namespace's init outlived the daemon");
}

/// A restore that fails half-way through a tree (the child's working
/// directory is gone; the root is rebuilt by then) leaves no process of
/// the tree running, and says which process failed.
#[test]
fn failed_tree_restore_leaves_nothing_running() {
    failed_tree_restore(&[]);
}

/// The same into a new PID namespace: no process of it is left either,
/// not even its init (a copy of the `stasis restore`, whose command line
/// names the image).
#[test]
fn failed_tree_restore_in_a_new_pid_namespace_leaves_nothing_running() {
    failed_tree_restore(&["--pid-namespace"]);
}

fn failed_tree_restore(extra: &[&str]) {
    use std::process::Command;
    use util::spawned::{tempdir, tool, Spawned};
    let dir = tempdir("tree-fail");
    let mut cmd = Command::new(tool("bash"));
    cmd.arg("-c")
        .arg(r#"mkdir "$1/sub" && cd "$1/sub" && { sleep 1000 & } && cd / && echo $! > "$1/child.tmp" && mv "$1/child.tmp" "$1/child" && wait"#)
        .arg("tree-fail")
        .arg(dir.path());
    let mut p = Spawned::start("tree-fail", cmd, dir);
    let child: i32 = p.wait_for(Duration::from_secs(30), "the child's pid", || {
        std::fs::read_to_string(p.dir.join("child")).ok()?.trim().parse().ok()
    });
    let images = tempfile::tempdir().unwrap();
    let r = run(["dump", "--pid", &p.pid.to_string(), "--images", images.path().to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.dump());
    p.wait_exit(Duration::from_secs(30));
    std::fs::remove_dir(p.dir.join("sub")).unwrap();
    let mut args = vec!["restore", "--images", images.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = run(&args).expect_code(1);
    assert!(r.stderr.contains(&format!("process {child}")) && r.stderr.contains("cwd"), "{}", r.dump());
    for pid in [p.pid, child] {
        assert!(util::workload::wait_gone(pid, Duration::from_secs(10)), "pid {pid} runs after a failed restore");
    }
    let named = images.path().to_str().unwrap().as_bytes().to_vec();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<i32>().is_ok()))
            .filter(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.windows(named.len()).any(|w| w == named))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "processes of the failed restore left: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tree in a PID namespace of its own dumped with --leave-running: it
/// runs on; once its namespace is gone, the image restores into a new
/// namespace at the state of the dump, behind where the original got.
#[test]
fn tree_in_a_pid_namespace_leave_running() {
    let mut sysv = SysvLeftover::default();
    let mut w = Workload::start("tree", &[]);
    sysv.watch(&w);
    w.wait_running();
    let images = tempfile::tempdir().unwrap();
    dump(&w, images.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    let r = run(["restore", "--images", images.path().to_str().unwrap(), "--pid-namespace"]);
    assert_eq!(r.code, Some(0), "restore failed\n{}\n--- workload log:\n{}", r.dump(), w.log());
    w.pid = r.stdout.trim().parse().unwrap_or_else(|_| panic!("no pid printed\n{}", r.dump()));
    let first = NamespaceInit(links(w.pid).0);
    let again = tempfile::tempdir().unwrap();
    dump(&w, again.path(), &["--leave-running"]);
    let at_dump = w.progress().unwrap_or(0);
    let last = w.wait_progress(at_dump + 150, Duration::from_secs(60));
    drop(first);
    assert!(util::workload::wait_gone(w.pid, Duration::from_secs(30)), "the tree outlived its namespace's init");
    let r = run(["restore", "--images", again.path().to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "second restore failed\n{}\n--- workload log:\n{}", r.dump(), w.log());
    w.pid = r.stdout.trim().parse().unwrap_or_else(|_| panic!("no pid printed\n{}", r.dump()));
    let _init = NamespaceInit(links(w.pid).0);
    let outcome = w.check_ok();
    assert!(outcome.generation < last, "restored at generation {}, the original reached {last}", outcome.generation);
}
