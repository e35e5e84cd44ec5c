//! Dumps that freeze through a cgroup freezer (`--cgroup`, v2 and v1), and
//! the journal that lets any later stasis thaw what a killed stasis left
//! frozen. Each test makes its own cgroup, named after the test process,
//! and removes it when done (even on panic).

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use util::spawned::{dump_ok, restore_ok, tempdir, tool};
use util::workload::{is_alive, Workload};
use util::{run, Run};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    V2,
    V1,
}

/// Where the hierarchy is mounted, from /proc/self/mountinfo.
fn hierarchy(kind: Kind) -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split(' ');
            let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
            let hit = match kind {
                Kind::V2 => fstype == "cgroup2",
                Kind::V1 => fstype == "cgroup" && options.split(',').any(|o| o == "freezer"),
            };
            hit.then(|| PathBuf::from(left.split(' ').nth(4).unwrap()))
        })
        .unwrap_or_else(|| match kind {
            Kind::V2 => {
                panic!("this test needs a cgroup2 hierarchy mounted, and there is none in /proc/self/mountinfo")
            }
            Kind::V1 => {
                panic!("this test needs the cgroup v1 freezer mounted, and there is none in /proc/self/mountinfo")
            }
        })
}

/// A cgroup made for one test; on drop it is thawed and removed (rmdir is
/// retried while its killed processes are still leaving it).
struct Cgroup {
    dir: PathBuf,
    kind: Kind,
}

impl Cgroup {
    fn create(kind: Kind, tag: &str) -> Cgroup {
        let dir = hierarchy(kind).join(format!("stasis-test-{}-{tag}", std::process::id()));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup { dir, kind }
    }

    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn add(&self, pid: i32) {
        let procs = self.dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).unwrap_or_else(|e| panic!("move {pid} into {}: {e}", procs.display()));
    }

    fn holds(&self, pid: i32) -> bool {
        fs::read_to_string(self.dir.join("cgroup.procs")).unwrap().lines().any(|l| l.trim() == pid.to_string())
    }

    /// The kernel's own report: cgroup.events (v2) or freezer.state (v1).
    fn state(&self) -> String {
        match self.kind {
            Kind::V2 => fs::read_to_string(self.dir.join("cgroup.events")).unwrap(),
            Kind::V1 => fs::read_to_string(self.dir.join("freezer.state")).unwrap(),
        }
    }

    fn frozen(&self) -> bool {
        match self.kind {
            Kind::V2 => self.state().lines().any(|l| l.trim() == "frozen 1"),
            Kind::V1 => self.state().trim() == "FROZEN",
        }
    }

    fn thawed(&self) -> bool {
        match self.kind {
            Kind::V2 => self.state().lines().any(|l| l.trim() == "frozen 0"),
            Kind::V1 => self.state().trim() == "THAWED",
        }
    }

    fn set_frozen(&self, frozen: bool) {
        let (file, value) = match (self.kind, frozen) {
            (Kind::V2, true) => ("cgroup.freeze", "1"),
            (Kind::V2, false) => ("cgroup.freeze", "0"),
            (Kind::V1, true) => ("freezer.state", "FROZEN"),
            (Kind::V1, false) => ("freezer.state", "THAWED"),
        };
        fs::write(self.dir.join(file), value).unwrap_or_else(|e| panic!("write {value} to {file}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while if frozen { !self.frozen() } else { !self.thawed() } {
            assert!(
                Instant::now() < deadline,
                "{} did not become frozen={frozen}: {}",
                self.dir.display(),
                self.state()
            );
            sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let file = if self.kind == Kind::V2 { "cgroup.freeze" } else { "freezer.state" };
        let _ = fs::write(self.dir.join(file), if self.kind == Kind::V2 { "0" } else { "THAWED" });
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Err(e) = fs::remove_dir(&self.dir) {
            if e.kind() == std::io::ErrorKind::NotFound || Instant::now() >= deadline {
                eprintln!("cannot remove cgroup {}: {e}", self.dir.display());
                break;
            }
            sleep(Duration::from_millis(20));
        }
    }
}

fn dump(pid: i32, images: &Path, extra: &[&str]) -> Run {
    let p = pid.to_string();
    let mut args = vec!["dump", "--pid", &p, "--images", images.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

/// Dump through the cgroup, leaving it running: the group is thawed
/// after, the workload computes on; then the image restores and checks out.
fn dump_through(kind: Kind) {
    let cg = Cgroup::create(kind, "dump");
    let mut w = Workload::start("threads", &[]);
    cg.add(w.pid);
    w.wait_running();
    let images = tempdir("cgroup-img");
    dump_ok(w.pid, images.path(), &["--cgroup", cg.path(), "--leave-running"]);
    assert!(cg.thawed(), "{} is not thawed after the dump: {}", cg.dir.display(), cg.state());
    assert!(cg.holds(w.pid), "the workload left {}", cg.dir.display());
    let at_dump = w.progress().unwrap_or(0);
    w.wait_progress(at_dump + 2, Duration::from_secs(30));
    w.kill();
    restore_ok(w.pid, images.path());
    assert!(cg.holds(w.pid), "the restored workload is not back in {}", cg.dir.display());
    w.check_ok();
}

/// A tree whose processes are in cgroups of their own (v2, and the v1
/// freezer hierarchy's) is restored into them, each process into its own;
/// a cgroup removed since the dump (as systemd removes an empty one) is
/// made again.
#[test]
fn restored_tree_goes_back_into_its_cgroups() {
    let v2 = Cgroup::create(Kind::V2, "home");
    let v2_child = Cgroup::create(Kind::V2, "home-child");
    let v1 = Cgroup::create(Kind::V1, "home");
    let mut w = Workload::start("tree", &[]);
    w.wait_running();
    let members: Vec<i32> = w.info("pids").split_whitespace().map(|p| p.parse().unwrap()).collect();
    let (first, rest) = members.split_first().expect("the tree has children");
    for &p in std::iter::once(&w.pid).chain(rest) {
        v2.add(p);
        v1.add(p);
    }
    v2_child.add(*first);
    v1.add(*first);
    let images = tempdir("cgroup-home-img");
    dump_ok(w.pid, images.path(), &[]);
    w.wait_exit(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = fs::remove_dir(&v2_child.dir) {
        assert!(Instant::now() < deadline, "cannot remove {}: {e}", v2_child.dir.display());
        sleep(Duration::from_millis(20));
    }
    let r = restore_ok(w.pid, images.path());
    assert!(v2_child.dir.is_dir(), "the removed cgroup was not made again\n{}", r.dump());
    for &p in std::iter::once(&w.pid).chain(rest) {
        assert!(v2.holds(p), "process {p} is not back in {}", v2.dir.display());
        assert!(v1.holds(p), "process {p} is not back in {}", v1.dir.display());
    }
    assert!(v2_child.holds(*first), "process {first} is not back in {}", v2_child.dir.display());
    assert!(v1.holds(*first), "process {first} is not back in {}", v1.dir.display());
    w.check_ok();
    w.kill();
    for p in members {
        util::workload::wait_gone(p, Duration::from_secs(10));
    }
}

#[test]
fn dump_through_cgroup_v2_freezer() {
    dump_through(Kind::V2);
}

#[test]
fn dump_through_cgroup_v1_freezer() {
    dump_through(Kind::V1);
}

/// A group the user froze before the dump is not thawed by it, whether the
/// dump succeeds or not; if it fails, it says so in one line and the
/// workload, once the user thaws the group, is unchanged; if it succeeds,
/// the image restores.
fn dump_in_frozen_group(kind: Kind, workload: &str) -> Run {
    let cg = Cgroup::create(kind, "frozen");
    let mut w = Workload::start(workload, &[]);
    cg.add(w.pid);
    w.wait_running();
    cg.set_frozen(true);
    let images = tempdir("frozen-img");
    let r = dump(w.pid, images.path(), &["--cgroup", cg.path(), "--leave-running"]);
    eprintln!("dump in a frozen {kind:?} group:\n{}", r.dump());
    // Let go after the dump, the tasks go back into the freezer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cg.frozen() {
        assert!(Instant::now() < deadline, "the dump thawed a group frozen before it: {}\n{}", cg.state(), r.dump());
        sleep(Duration::from_millis(10));
    }
    let frozen_at = w.progress();
    sleep(Duration::from_millis(300));
    assert_eq!(w.progress(), frozen_at, "the workload runs in a frozen group");
    cg.set_frozen(false);
    w.wait_progress(frozen_at.unwrap_or(0), Duration::from_secs(30));
    match r.code {
        Some(0) => {
            w.kill();
            restore_ok(w.pid, images.path());
            w.check_ok();
        }
        Some(1) => {
            assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.dump());
            assert!(r.stderr.starts_with("stasis: error: ") && r.stderr.contains(&w.pid.to_string()), "{}", r.dump());
            assert!(!images.path().join("stasis.img").exists(), "a failed dump left an image");
            w.check_ok();
        }
        _ => panic!("{}", r.dump()),
    }
    r
}

#[test]
fn dump_in_already_frozen_v2_cgroup_keeps_it_frozen() {
    let r = dump_in_frozen_group(Kind::V2, "threads");
    assert_eq!(r.code, Some(0), "{}", r.dump());
}

/// A v1-frozen task sits in the refrigerator and cannot enter a ptrace stop
/// until thawed: the dump cannot stop it, and must say so and let it be.
/// (Single-threaded: each thread costs stasis another stop timeout.)
#[test]
fn dump_in_already_frozen_v1_cgroup_keeps_it_frozen() {
    let r = dump_in_frozen_group(Kind::V1, "threads");
    assert_eq!(r.code, Some(0), "{}", r.dump());
}

#[test]
fn cgroup_without_the_process_is_refused() {
    let cg = Cgroup::create(Kind::V2, "empty");
    let w = Workload::start("threads", &[]);
    w.wait_running();
    let images = tempdir("elsewhere-img");
    let r = dump(w.pid, &images.path().join("img"), &["--cgroup", cg.path()]);
    assert_eq!(r.code, Some(1), "{}", r.dump());
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.dump());
    assert!(
        r.stderr.starts_with("stasis: error: ")
            && r.stderr.contains(&format!("process {} is not in cgroup {}", w.pid, cg.path())),
        "{}",
        r.dump()
    );
    assert!(cg.thawed(), "{}", cg.state());
    assert!(!images.path().join("img").join("stasis.img").exists());
    let past = w.progress().unwrap_or(0);
    w.wait_progress(past, Duration::from_secs(30));
    w.check_ok();
}

/// A pid that no process has: a child that exited and was reaped.
fn dead_pid() -> i32 {
    let mut child = Command::new(tool("true")).spawn().expect("run true");
    let pid = child.id() as i32;
    child.wait().unwrap();
    assert!(!is_alive(pid));
    pid
}

/// Journal entries left by stasis runs: one by a stasis that died with the
/// group frozen (thawed and dropped), one by a stasis that died but found
/// its group already frozen (kept frozen, dropped), one by a stasis still
/// at work (left alone). The commands run in a private mount namespace with
/// their own /run/stasis, so that the stasis runs of tests in parallel
/// neither see these entries nor leave theirs here.
#[test]
fn journal_thaws_what_a_dead_stasis_left_frozen() {
    let unshare = tool("unshare");
    tool("mount");
    let left = Cgroup::create(Kind::V2, "journal-left");
    let was = Cgroup::create(Kind::V2, "journal-was");
    let busy = Cgroup::create(Kind::V2, "journal-busy");
    for cg in [&left, &was, &busy] {
        cg.set_frozen(true);
    }
    let dead = dead_pid();
    let alive = std::process::id();
    let entries = tempdir("journal");
    let entry = |name: &str, agent: i64, cg: &Cgroup, was_frozen: bool| {
        let json = serde_json::json!({"agent": agent, "cgroup": cg.dir, "v2": true, "was_frozen": was_frozen});
        fs::write(entries.path().join(name), json.to_string()).unwrap();
    };
    entry(&format!("{dead}-0.json"), dead.into(), &left, false);
    entry(&format!("{dead}-1.json"), dead.into(), &was, true);
    entry(&format!("{alive}-0.json"), alive.into(), &busy, false);

    fs::create_dir_all("/run/stasis").unwrap();
    let listing = entries.path().join("after");
    let script = r#"set -e
mount -t tmpfs stasis-test-journal /run/stasis
mkdir /run/stasis/journal
cp "$1"/*.json /run/stasis/journal/
rc=0; "$2" verify "$3" || rc=$?
ls /run/stasis/journal > "$4"
exit $rc"#;
    let out = Command::new(unshare)
        .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(entries.path())
        .arg(env!("CARGO_BIN_EXE_stasis"))
        .arg(util::golden_image())
        .arg(&listing)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let what = format!(
        "--- status {}\n--- stdout:\n{}\n--- stderr:\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.status.success(), "{what}");

    let said = format!("stasis: thawed {}, left frozen by a stasis that did not finish", left.path());
    assert!(stderr.lines().any(|l| l == said), "stasis did not say it thawed {}\n{what}", left.path());
    assert!(left.thawed(), "{} is still frozen: {}\n{what}", left.path(), left.state());
    assert!(was.frozen(), "{} was frozen before the dead stasis, and is thawed now\n{what}", was.path());
    assert!(busy.frozen(), "{} belongs to a running stasis, and was thawed\n{what}", busy.path());
    assert!(!stderr.contains(was.path()) && !stderr.contains(busy.path()), "{what}");
    let remaining = fs::read_to_string(&listing).unwrap();
    let remaining: Vec<&str> = remaining.lines().collect();
    assert_eq!(remaining, vec![format!("{alive}-0.json")], "journal entries after recovery\n{what}");
}

/// A directory that already holds an image is refused before the target is
/// even looked at: a target in a frozen group, dumped without --cgroup,
/// would otherwise be refused for that (see
/// `frozen_group_without_cgroup_option_is_refused_with_advice`), so the
/// error shows which check came first.
#[test]
fn frozen_group_without_cgroup_option_is_refused_with_advice() {
    let cg = Cgroup::create(Kind::V2, "advice");
    let w = Workload::start("threads", &[]);
    cg.add(w.pid);
    w.wait_running();
    cg.set_frozen(true);
    let images = tempdir("advice-img");
    let r = dump(w.pid, images.path(), &["--leave-running"]);
    assert!(cg.frozen(), "the refused dump thawed the group");
    cg.set_frozen(false);
    assert_eq!(r.code, Some(1), "{}", r.dump());
    assert!(r.stderr.contains(&format!("pass --cgroup {}", cg.path())), "{}", r.dump());
    w.check_ok();
}

#[test]
fn existing_image_is_refused_before_the_target_is_touched() {
    let cg = Cgroup::create(Kind::V2, "existing");
    let w = Workload::start("threads", &[]);
    cg.add(w.pid);
    w.wait_running();
    let images = tempdir("existing-img");
    dump_ok(w.pid, images.path(), &["--leave-running"]);
    cg.set_frozen(true);
    let r = dump(w.pid, images.path(), &["--leave-running"]);
    cg.set_frozen(false);
    assert_eq!(r.code, Some(1), "{}", r.dump());
    assert!(
        r.stderr.contains("already holds an image"),
        "the dump touched the target before refusing the directory that holds an image\n{}",
        r.dump()
    );
    run(["verify", images.path().to_str().unwrap()]).success();
    w.check_ok();
}

/// `--cgroup` alone captures every process of the cgroup: here a whole
/// fork tree (its zombies too, found as children of its processes), which
/// restores and checks itself.
#[test]
fn dump_of_a_whole_cgroup_takes_its_tree() {
    let cg = Cgroup::create(Kind::V2, "tree");
    let mut w = Workload::start("tree", &[]);
    let members: Vec<i32> = w.info("pids").split_whitespace().map(|p| p.parse().unwrap()).collect();
    for &p in std::iter::once(&w.pid).chain(&members) {
        cg.add(p);
    }
    w.wait_running();
    let images = tempdir("cgroup-tree-img");
    let r = run(["dump", "--cgroup", cg.path(), "--images", images.path().join("img").to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.dump());
    assert!(r.stdout.contains(&format!("{} processes and 2 zombies", members.len() + 1)), "{}", r.dump());
    assert!(cg.thawed(), "{} is not thawed after the dump: {}", cg.dir.display(), cg.state());
    w.wait_exit(Duration::from_secs(30));
    restore_ok(w.pid, &images.path().join("img"));
    w.check_ok();
}
