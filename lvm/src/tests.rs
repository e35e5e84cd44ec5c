//! The backend against recorded LVM outputs: a [`Replay`] runner checks
//! each command line the backend builds and answers with a recording from
//! `tests/fixtures/` (lvm2 2.03.16 in a VM, by
//! vm-tests/scenarios/record-lvm-fixtures.sh; its README lists the cases).
//! mount, umount and a few outputs made from the recordings (a VG with no
//! room, a snapshot whose device is a temporary file) are written here.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;

const LVS: &str = "lvm lvs -a --reportformat json --units b --nosuffix -o";
const VGS: &str = "lvm vgs --reportformat json --units b --nosuffix -o";
const MOUNTINFO: &str = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                         40 22 253:0 / /mnt/origin rw,relatime shared:20 - ext4 /dev/mapper/vg0-origin rw\n\
                         41 22 253:8 / /mnt/thin1 rw,relatime shared:21 - xfs /dev/mapper/vg0-thin1 \
                         rw,attr2,inode64,logbufs=8,logbsize=32k,noquota\n";

/// A recorded command's output.
fn fixture(name: &str) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let read = |ext: &str| {
        let file = path.with_extension(ext);
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("fixture {}: {e}", file.display()))
    };
    Output { status: read("status").trim().parse().ok(), stdout: read("json"), stderr: read("stderr") }
}

fn ok(stdout: &str) -> Output {
    Output { status: Some(0), stdout: stdout.to_owned(), stderr: String::new() }
}

fn failed(status: i32, stderr: &str) -> Output {
    Output { status: Some(status), stdout: String::new(), stderr: stderr.to_owned() }
}

/// A fixture's lvs report with the rows `edit` changes (or drops: None).
fn edited(name: &str, edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>) -> bool) -> Output {
    let mut json: serde_json::Value = serde_json::from_str(&fixture(name).stdout).unwrap();
    for section in json["report"].as_array_mut().unwrap() {
        if let Some(rows) = section.get_mut("lv").and_then(|r| r.as_array_mut()) {
            rows.retain_mut(|row| edit(row.as_object_mut().unwrap()));
        }
    }
    ok(&json.to_string())
}

/// One expected command: its words ("*" matches any one), and the answer.
#[derive(Debug)]
struct Step {
    command: String,
    answer: io::Result<Output>,
}

/// Replays a script of commands and answers, failing the test on a command
/// other than the next one expected.
#[derive(Debug, Default)]
struct Replay {
    steps: Mutex<VecDeque<Step>>,
    ran: Mutex<Vec<String>>,
}

impl Replay {
    fn new(steps: Vec<(String, Output)>) -> Arc<Replay> {
        let steps = steps.into_iter().map(|(command, out)| Step { command, answer: Ok(out) }).collect();
        Arc::new(Replay { steps: Mutex::new(steps), ran: Mutex::default() })
    }

    fn next(&self, command: String) -> io::Result<Output> {
        self.ran.lock().unwrap().push(command.clone());
        let step = self.steps.lock().unwrap().pop_front();
        let Some(step) = step else {
            panic!("unexpected command {command:?}, after:\n{}", self.ran.lock().unwrap().join("\n"));
        };
        let words: Vec<&str> = command.split(' ').collect();
        let want: Vec<&str> = step.command.split(' ').collect();
        let matches = words.len() == want.len() && words.iter().zip(&want).all(|(w, e)| e == &"*" || w == e);
        assert!(matches, "ran {command:?}\nexpected {:?}", step.command);
        step.answer
    }

    /// Asserts every expected command ran.
    fn done(&self) {
        let left: Vec<String> = self.steps.lock().unwrap().iter().map(|s| s.command.clone()).collect();
        assert!(left.is_empty(), "commands never run: {left:#?}");
    }
}

impl Runner for Replay {
    fn run(&self, program: &str, args: &[String]) -> io::Result<Output> {
        self.next(std::iter::once(program.to_owned()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" "))
    }

    fn sync_fs(&self, path: &Path) -> io::Result<()> {
        self.next(format!("syncfs {}", path.display())).map(drop)
    }

    fn mountinfo(&self) -> io::Result<String> {
        Ok(MOUNTINFO.to_owned())
    }
}

fn lvs(what: &str) -> String {
    format!("{LVS} {} {what}", report::LV_FIELDS)
}

fn vgs(what: &str) -> String {
    format!("{VGS} {} {what}", report::VG_FIELDS)
}

fn detected(lv: &str, minor: u32) -> Detected {
    Detected::Lvm { mount_point: format!("/mnt/{lv}").into(), dm_name: format!("vg0-{lv}"), device: (253, minor) }
}

/// The volume of `lv` with the confirming lvs answered, then `steps`.
fn volume(lv: &str, minor: u32, steps: Vec<(String, Output)>) -> (LvmVolume, Arc<Replay>) {
    let mut all = vec![(lvs(&format!("vg0/{lv}")), fixture("lvs-origin-snapshot-thin"))];
    all.extend(steps);
    let replay = Replay::new(all);
    let runner: Arc<dyn Runner> = replay.clone();
    let volume = LvmVolume::with_runner(&detected(lv, minor), runner).unwrap();
    (volume.with_merge_wait(Duration::ZERO, Duration::from_secs(5)), replay)
}

fn classic(steps: Vec<(String, Output)>) -> (LvmVolume, Arc<Replay>) {
    volume("origin", 0, steps)
}

fn thin(steps: Vec<(String, Output)>) -> (LvmVolume, Arc<Replay>) {
    volume("thin1", 8, steps)
}

#[test]
fn lvs_reports_are_read() {
    let rows = report::parse_lvs(&fixture("lvs-origin-snapshot-thin").stdout).unwrap();
    let row = |name: &str| rows.iter().find(|r| r.lv_name == name).unwrap_or_else(|| panic!("no {name}"));
    let (origin, snap, thin1, thin_snap) = (row("origin"), row("snap"), row("thin1"), row("thin1_snap"));
    assert!(!origin.is_thin() && !origin.is_snapshot() && origin.is_active());
    assert_eq!(origin.size(), Ok(64 << 20));
    assert!(snap.is_snapshot() && !snap.is_thin() && !snap.is_invalid() && !snap.is_merging());
    assert_eq!(snap.origin, "origin");
    assert!(snap.percent().is_some_and(|p| p < 10.0), "{:?}", snap.percent());
    assert!(snap.created() > 1_700_000_000, "{}", snap.lv_time);
    assert!(thin1.is_thin() && !thin1.is_snapshot());
    assert_eq!(thin1.pool_lv, "pool");
    assert!(thin_snap.is_thin() && thin_snap.is_snapshot() && !thin_snap.is_active());
    assert_eq!(thin_snap.origin, "thin1");
    assert_eq!(thin_snap.lv_path, "/dev/vg0/thin1_snap");

    let vgs = report::parse_vgs(&fixture("vgs-vg0").stdout).unwrap();
    assert_eq!(vgs.len(), 1);
    assert_eq!(vgs[0].extent_size(), Ok(4 << 20));
    assert!(vgs[0].free().unwrap() > 0);
}

#[test]
fn invalid_and_merging_snapshots_are_seen() {
    let rows = report::parse_lvs(&fixture("lvs-snapshot-invalid").stdout).unwrap();
    let row = |rows: &[Lv], name: &str| rows.iter().find(|r| r.lv_name == name).cloned().unwrap();
    assert!(row(&rows, "small").is_invalid());
    // lv_snapshot_invalid is "unknown" on what is no classic snapshot.
    assert!(!row(&rows, "snap").is_invalid() && !row(&rows, "thin1_snap").is_invalid());
    // A classic snapshot being merged is hidden: `[snap]` with lvs -a.
    let rows = report::parse_lvs(&fixture("lvs-merge-pending").stdout).unwrap();
    assert!(row(&rows, "snap").is_merging() && !row(&rows, "thin1_snap").is_merging());
    let rows = report::parse_lvs(&fixture("lvs-merge-pending-thin").stdout).unwrap();
    assert!(row(&rows, "thin1_snap").is_merging());
    let rows = report::parse_lvs(&fixture("lvs-after-merge").stdout).unwrap();
    assert!(rows.iter().all(|r| r.origin.is_empty() && !r.is_snapshot()));
}

/// Every recorded failure and the error it becomes.
#[test]
fn failures_become_typed_errors() {
    let about = |snapshot| About { volume: "vg0/origin", snapshot };
    let error = |name: &str, tool: &str, snapshot| {
        let out = fixture(name);
        assert!(!out.success(), "{name} succeeded");
        runner::tool_error(tool, about(snapshot), &out)
    };
    assert!(matches!(
        error("lvcreate-snapshot-exists", "lvcreate", Some("snap")),
        Error::Exists { volume, name } if volume == "vg0/origin" && name == "snap"
    ));
    assert!(matches!(
        error("lvs-no-such-lv", "lvs", Some("nosuchlv")),
        Error::NoSnapshot { name, .. } if name == "nosuchlv"
    ));
    // The origin is what is missing, not the snapshot being made.
    let e = error("lvcreate-missing-origin", "lvcreate", Some("snap"));
    assert!(
        matches!(&e, Error::Tool { tool, message } if tool == "lvcreate" && message.contains("origin LV missing not found")),
        "{e:?}"
    );
    let e = error("lvs-no-such-vg", "lvs", None);
    assert!(matches!(&e, Error::Tool { message, .. } if message.contains("nosuchvg")), "{e:?}");
    let e = error("lvcreate-snapshot-no-space", "lvcreate", Some("big"));
    assert!(
        matches!(&e, Error::NoSpace { volume, what } if volume == "vg0/origin" && what.contains("\"big\"") && what.contains("insufficient free space")),
        "{e:?}"
    );
    let e = error("lvremove-mounted", "lvremove", Some("thin1"));
    assert!(matches!(&e, Error::Busy { what, .. } if what.contains("in use")), "{e:?}");
    let e = error("lvconvert-merge-invalid", "lvconvert", Some("small"));
    assert!(matches!(&e, Error::Invalid { name, .. } if name == "small"), "{e:?}");
    let e = error("lvconvert-merge-not-snapshot", "lvconvert", None);
    assert!(matches!(&e, Error::Tool { message, .. } if message.starts_with("vg0/origin: ")), "{e:?}");
    assert!(e.to_string().contains("exit status"), "{e}");
}

#[derive(Debug)]
struct NoLvm;

impl Runner for NoLvm {
    fn run(&self, _: &str, _: &[String]) -> io::Result<Output> {
        Err(io::Error::from(io::ErrorKind::NotFound))
    }

    fn sync_fs(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }

    fn mountinfo(&self) -> io::Result<String> {
        Ok(String::new())
    }
}

#[test]
fn missing_lvm_tools_are_named() {
    let err = LvmVolume::with_runner(&detected("origin", 2), Arc::new(NoLvm)).unwrap_err().to_string();
    assert!(err.contains("LVM tools are not installed") && err.contains("lvm2"), "{err}");
}

#[test]
fn the_detected_device_is_confirmed_with_lvs() {
    let (v, replay) = classic(vec![]);
    assert_eq!((v.vg(), v.lv(), v.thin_pool()), ("vg0", "origin", None));
    assert_eq!(v.describe(), "LVM volume vg0/origin");
    replay.done();
    let (v, replay) = thin(vec![]);
    assert_eq!(v.thin_pool(), Some("pool"));
    assert_eq!(v.describe(), "LVM volume vg0/thin1 (thin, pool pool)");
    replay.done();

    // (the recorded minors: snap 253:3, pool 253:6)
    let refused = |lv: &str, minor: u32, out: Output| {
        let replay = Replay::new(vec![(lvs(&format!("vg0/{lv}")), out)]);
        let err = LvmVolume::with_runner(&detected(lv, minor), replay.clone()).unwrap_err();
        replay.done();
        err
    };
    let err = refused("snap", 3, fixture("lvs-origin-snapshot-thin"));
    assert!(matches!(&err, Error::Unsupported { what, .. } if what.contains("itself a snapshot of origin")), "{err:?}");
    let err = refused("nosuchlv", 9, fixture("lvs-no-such-lv"));
    assert!(matches!(&err, Error::Unsupported { what, .. } if what.contains("no logical volume")), "{err:?}");
    let err = refused("pool", 6, fixture("lvs-origin-snapshot-thin"));
    assert!(matches!(&err, Error::Unsupported { what, .. } if what.contains("is the pool")), "{err:?}");
    let err = refused("origin", 9, fixture("lvs-origin-snapshot-thin"));
    assert!(matches!(&err, Error::Unsupported { what, .. } if what.contains("which lvs says is 253:0")), "{err:?}");

    let replay = Replay::new(vec![]);
    let plain = Detected::Lvm { mount_point: "/mnt".into(), dm_name: "plain".into(), device: (253, 0) };
    assert!(LvmVolume::with_runner(&plain, replay).is_err());
}

#[test]
fn list_shows_the_snapshots_of_this_origin_only() {
    let (v, replay) = classic(vec![(lvs("vg0"), fixture("lvs-origin-snapshot-thin"))]);
    let list = v.list().unwrap();
    assert_eq!(list.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["snap"]);
    assert_eq!(list[0].location, Path::new("/dev/vg0/snap"));
    assert!(list[0].detail.starts_with("classic, ") && list[0].detail.ends_with("% of its COW space used"));
    assert!(!list[0].id.is_empty());
    replay.done();

    let (v, replay) = thin(vec![(lvs("vg0"), fixture("lvs-origin-snapshot-thin"))]);
    let list = v.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].detail.as_str()), ("thin1_snap", "thin"));
    replay.done();

    let (v, replay) = classic(vec![(lvs("vg0"), fixture("lvs-snapshot-invalid"))]);
    let list = v.list().unwrap();
    let small = list.iter().find(|s| s.name == "small").unwrap();
    assert_eq!(small.detail, "classic, invalid: its COW space filled up");
    // Oldest first.
    assert!(list.windows(2).all(|w| w[0].created <= w[1].created));
    replay.done();
}

#[test]
fn a_classic_snapshot_gets_a_fifth_of_the_origin() {
    let (v, replay) = classic(vec![
        (lvs("vg0/origin"), fixture("lvs-origin-snapshot-thin")),
        (vgs("vg0"), fixture("vgs-vg0")),
        ("syncfs /mnt/origin".into(), ok("")),
        // 64 MiB origin, 4 MiB extents: 20% is 3.2 extents, the minimum 4.
        ("lvm lvcreate -s -l 4 -n snap vg0/origin".into(), ok("")),
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
    ]);
    let snap = v.snapshot("snap").unwrap();
    assert_eq!(snap.name, "snap");
    replay.done();

    let (v, replay) = classic(vec![
        (lvs("vg0/origin"), fixture("lvs-origin-snapshot-thin")),
        (vgs("vg0"), fixture("vgs-vg0")),
        ("syncfs /mnt/origin".into(), ok("")),
        ("lvm lvcreate -s -l 16 -n snap vg0/origin".into(), ok("")),
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
    ]);
    v.with_snapshot_size(SnapshotSize::Percent(100)).snapshot("snap").unwrap();
    replay.done();
}

#[test]
fn a_thin_snapshot_has_no_size() {
    let (v, replay) = thin(vec![
        ("syncfs /mnt/thin1".into(), ok("")),
        ("lvm lvcreate -s -n thin1_snap vg0/thin1".into(), ok("")),
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
    ]);
    assert_eq!(v.snapshot("thin1_snap").unwrap().detail, "thin");
    replay.done();
}

#[test]
fn snapshot_failures_name_the_snapshot() {
    let (v, replay) = thin(vec![
        ("syncfs /mnt/thin1".into(), ok("")),
        ("lvm lvcreate -s -n snap vg0/thin1".into(), fixture("lvcreate-snapshot-exists")),
    ]);
    assert!(matches!(v.snapshot("snap"), Err(Error::Exists { name, .. }) if name == "snap"));
    replay.done();

    let (v, replay) = classic(vec![
        (lvs("vg0/origin"), fixture("lvs-origin-snapshot-thin")),
        (vgs("vg0"), ok(&fixture("vgs-vg0").stdout.replace(&format!("\"{}\"", 788 << 20), "\"8388608\""))),
    ]);
    let err = v.snapshot("big").unwrap_err().to_string();
    assert!(err.contains("volume group vg0 has 8388608 bytes free"), "{err}");
    replay.done();

    // Refused before any command: it would be an option to lvcreate.
    let (v, replay) = thin(vec![]);
    assert!(v.snapshot("-y").unwrap_err().to_string().contains("starts with a dash"));
    replay.done();
}

#[test]
fn delete_removes_only_a_snapshot_of_this_volume() {
    let (v, replay) =
        classic(vec![(lvs("vg0"), fixture("lvs-origin-snapshot-thin")), ("lvm lvremove -y vg0/snap".into(), ok(""))]);
    v.delete("snap").unwrap();
    replay.done();

    // thin1 is an LV of the VG, but no snapshot of vg0/origin.
    let (v, replay) = classic(vec![(lvs("vg0"), fixture("lvs-origin-snapshot-thin"))]);
    assert!(matches!(v.delete("thin1"), Err(Error::NoSnapshot { name, .. }) if name == "thin1"));
    replay.done();

    let (v, replay) = thin(vec![
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
        ("lvm lvremove -y vg0/thin1_snap".into(), fixture("lvremove-mounted")),
    ]);
    assert!(matches!(v.delete("thin1_snap"), Err(Error::Busy { .. })));
    replay.done();
}

#[test]
fn a_classic_rollback_unmounts_merges_remounts_and_snapshots_again() {
    let (v, replay) = classic(vec![
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
        (lvs("vg0/origin"), fixture("lvs-origin-snapshot-thin")),
        ("umount /mnt/origin".into(), ok("")),
        ("lvm lvconvert --merge -i 1 vg0/snap".into(), fixture("lvconvert-merge-deferred")),
        // Still there, waiting for the next activation: make it happen.
        (lvs("vg0"), fixture("lvs-merge-pending")),
        ("lvm lvchange -an vg0/origin".into(), ok("")),
        ("lvm lvchange -ay vg0/origin".into(), ok("")),
        (lvs("vg0"), fixture("lvs-merge-pending")),
        (lvs("vg0"), fixture("lvs-after-merge")),
        ("mount -t ext4 -o rw,relatime /dev/mapper/vg0-origin /mnt/origin".into(), ok("")),
        // The same name again, with the old one's 32 MiB.
        (lvs("vg0/origin"), fixture("lvs-after-merge")),
        (vgs("vg0"), fixture("vgs-vg0")),
        ("syncfs /mnt/origin".into(), ok("")),
        // Tagged with the id of the snapshot the merge consumed.
        (format!("lvm lvcreate -s -l 8 -n snap --addtag stasis_id_{} vg0/origin", uuid("snap")), ok("")),
        (lvs("vg0"), fixture("lvs-snapshot-again")),
    ]);
    v.rollback("snap").unwrap();
    replay.done();
}

/// The UUID of `lv` in the recording of the VG with every snapshot.
fn uuid(lv: &str) -> String {
    let rows = report::parse_lvs(&fixture("lvs-origin-snapshot-thin").stdout).unwrap();
    rows.into_iter().find(|r| r.lv_name == lv).unwrap_or_else(|| panic!("no {lv}")).lv_uuid
}

/// A snapshot made again by a rollback keeps the id of the first: an image
/// taken with it can be restored more than once.
#[test]
fn a_snapshot_made_again_keeps_its_id() {
    let (v, replay) = classic(vec![(lvs("vg0"), fixture("lvs-snapshot-again"))]);
    let again = v.find("snap").unwrap();
    let rows = report::parse_lvs(&fixture("lvs-snapshot-again").stdout).unwrap();
    let row = rows.iter().find(|r| r.lv_name == "snap").unwrap();
    assert_ne!(row.lv_uuid, uuid("snap"), "a new LV");
    assert_eq!(again.id, uuid("snap"));
    replay.done();
}

#[test]
fn a_thin_rollback_merges_on_the_next_activation() {
    let (v, replay) = thin(vec![
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
        (lvs("vg0/thin1"), fixture("lvs-origin-snapshot-thin")),
        ("umount /mnt/thin1".into(), ok("")),
        ("lvm lvconvert --merge -i 1 vg0/thin1_snap".into(), fixture("lvconvert-merge-thin-deferred")),
        (lvs("vg0"), fixture("lvs-merge-pending-thin")),
        ("lvm lvchange -an vg0/thin1".into(), ok("")),
        ("lvm lvchange -ay vg0/thin1".into(), ok("")),
        (lvs("vg0"), fixture("lvs-after-merge")),
        (
            "mount -t xfs -o rw,relatime,attr2,inode64,logbufs=8,logbsize=32k,noquota /dev/mapper/vg0-thin1 /mnt/thin1"
                .into(),
            ok(""),
        ),
        ("syncfs /mnt/thin1".into(), ok("")),
        (format!("lvm lvcreate -s -n thin1_snap --addtag stasis_id_{} vg0/thin1", uuid("thin1_snap")), ok("")),
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
    ]);
    v.rollback("thin1_snap").unwrap();
    replay.done();
}

#[test]
fn rollback_refusals() {
    let (v, replay) = classic(vec![(lvs("vg0"), fixture("lvs-snapshot-invalid"))]);
    assert!(matches!(v.rollback("small"), Err(Error::Invalid { name, .. }) if name == "small"));
    replay.done();

    let (v, replay) = classic(vec![(lvs("vg0"), fixture("lvs-merge-pending"))]);
    assert!(matches!(v.rollback("snap"), Err(Error::Busy { what, .. }) if what.contains("already merging")));
    replay.done();

    let (v, replay) = classic(vec![
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
        (lvs("vg0/origin"), fixture("lvs-origin-snapshot-thin")),
        ("umount /mnt/origin".into(), failed(32, "umount: /mnt/origin: target is busy.\n")),
    ]);
    let err = v.rollback("snap").unwrap_err();
    assert!(
        matches!(&err, Error::Busy { what, .. } if what.contains("/mnt/origin") && what.contains("files are open"))
    );
    replay.done();
}

#[test]
fn a_failed_merge_mounts_the_origin_again() {
    let (v, replay) = classic(vec![
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
        (lvs("vg0/origin"), fixture("lvs-origin-snapshot-thin")),
        ("umount /mnt/origin".into(), ok("")),
        ("lvm lvconvert --merge -i 1 vg0/snap".into(), fixture("lvconvert-merge-invalid")),
        ("mount -t ext4 -o rw,relatime /dev/mapper/vg0-origin /mnt/origin".into(), ok("")),
    ]);
    assert!(matches!(v.rollback("snap"), Err(Error::Tool { .. } | Error::Invalid { .. })));
    replay.done();

    let (v, replay) = classic(vec![
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
        (lvs("vg0/origin"), fixture("lvs-origin-snapshot-thin")),
        ("umount /mnt/origin".into(), ok("")),
        ("lvm lvconvert --merge -i 1 vg0/snap".into(), failed(5, "  Internal error: no.\n")),
        ("mount -t ext4 -o rw,relatime /dev/mapper/vg0-origin /mnt/origin".into(), failed(32, "mount: wrong fs type")),
    ]);
    let err = v.rollback("snap").unwrap_err().to_string();
    assert!(err.contains("Internal error: no.") && err.contains("wrong fs type"), "{err}");
    replay.done();
}

#[test]
fn open_mounts_a_thin_snapshot_read_only_and_undoes_it() {
    let (v, replay) = thin(vec![
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
        ("lvm lvchange -ay -K vg0/thin1_snap".into(), ok("")),
        ("mount -t xfs -o ro,nouuid /dev/vg0/thin1_snap *".into(), ok("")),
        ("umount *".into(), ok("")),
        ("lvm lvchange -an vg0/thin1_snap".into(), ok("")),
    ]);
    let opened = v.open("thin1_snap").unwrap();
    let dir = opened.path().to_path_buf();
    assert!(dir.is_dir());
    drop(opened);
    assert!(!dir.exists());
    replay.done();

    let (v, replay) = classic(vec![
        (lvs("vg0"), fixture("lvs-origin-snapshot-thin")),
        ("mount -t ext4 -o ro,noload /dev/vg0/snap *".into(), ok("")),
        ("umount *".into(), ok("")),
    ]);
    drop(v.open("snap").unwrap());
    replay.done();

    let (v, replay) = classic(vec![(lvs("vg0"), fixture("lvs-merge-pending"))]);
    assert!(matches!(v.open("snap"), Err(Error::Busy { what, .. }) if what.contains("being merged")));
    replay.done();
    let (v, replay) = classic(vec![(lvs("vg0"), fixture("lvs-snapshot-invalid"))]);
    assert!(matches!(v.open("small"), Err(Error::Invalid { .. })));
    replay.done();
}

#[test]
fn export_and_import_copy_the_device_and_check_it() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("snap.dev");
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&device, &data).unwrap();
    let with_device = |name: &str, size: usize| {
        let device = device.to_string_lossy().into_owned();
        edited(name, move |row| {
            if row["lv_name"] == "snap" {
                row.insert("lv_path".into(), device.clone().into());
                row.insert("lv_size".into(), size.to_string().into());
            }
            true
        })
    };
    // lv_size is the COW area's: the device is read to its end.
    let (v, replay) = classic(vec![(lvs("vg0"), with_device("lvs-origin-snapshot-thin", 2048))]);
    let mut stream = Vec::new();
    v.export("snap", None, &mut stream).unwrap();
    assert_eq!(stream.len(), 22 + "snap".len() + data.len() + 32);
    replay.done();
    let err = v.export("snap", Some("older"), &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("needs btrfs"), "{err}");

    // Into a VG where it is not: a plain LV, tagged, filled, made read-only.
    let target = dir.path().join("imported.dev");
    std::fs::write(&target, vec![0; data.len()]).unwrap();
    let imported = {
        let target = target.to_string_lossy().into_owned();
        let mut json: serde_json::Value = serde_json::from_str(&fixture("lvs-after-merge").stdout).unwrap();
        let row = serde_json::json!({"lv_name": "snap", "vg_name": "vg0", "lv_uuid": "imported-uuid",
            "lv_attr": "-wi-a-----", "lv_size": data.len().to_string(), "segtype": "linear",
            "lv_path": target, "lv_tags": "stasis_import_of_origin", "lv_time": "2024-11-21 21:00:00 +0000"});
        json["report"][0]["lv"].as_array_mut().unwrap().push(row);
        ok(&json.to_string())
    };
    let import_steps = |last: (String, Output)| {
        vec![
            (lvs("vg0"), fixture("lvs-after-merge")),
            ("lvm lvcreate -y -L 8192b -n snap --addtag stasis_import_of_origin vg0".into(), ok("")),
            (lvs("vg0"), imported.clone()),
            last,
        ]
    };
    let mut steps = import_steps(("lvm lvchange -p r vg0/snap".into(), ok("")));
    steps.push((lvs("vg0"), imported.clone()));
    let (v, replay) = classic(steps);
    let snap = v.import(&mut stream.as_slice()).unwrap();
    assert_eq!((snap.name.as_str(), snap.id.as_str()), ("snap", "imported-uuid"));
    assert!(snap.detail.starts_with("imported"), "{}", snap.detail);
    assert_eq!(std::fs::read(&target).unwrap(), data);
    replay.done();

    // A damaged byte: the LV made for it is removed again.
    let mut damaged = stream.clone();
    damaged[22 + 4 + 100] ^= 0xff;
    let (v, replay) = classic(import_steps(("lvm lvremove -y vg0/snap".into(), ok(""))));
    let err = v.import(&mut damaged.as_slice()).unwrap_err().to_string();
    assert!(err.contains("corrupted"), "{err}");
    replay.done();
}

/// The recordings asked lvs and vgs for the fields the backend asks for:
/// a field missing from a recording would read as empty and hide the code
/// that uses it.
#[test]
fn the_recordings_have_the_fields_the_backend_reads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut reports = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "cmd") {
            continue;
        }
        let cmd = std::fs::read_to_string(&path).unwrap().replace("\\,", ",");
        let fields = match cmd.split(' ').next() {
            Some("lvs") => report::LV_FIELDS,
            Some("vgs") => report::VG_FIELDS,
            _ => continue,
        };
        reports += 1;
        assert!(
            cmd.contains(&format!(" -o {fields} ")) || cmd.trim_end().ends_with(&format!(" -o {fields}")),
            "{}: {cmd}",
            path.display()
        );
    }
    assert!(reports >= 10, "only {reports} lvs/vgs recordings in {}", dir.display());
}
