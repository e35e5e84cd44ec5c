//! The coherent snapshot on btrfs: a process appending records to a file
//! on a subvolume, captured with `stasis snapshot`, whose image and volume
//! snapshot agree (the fd's offset in the image is the file's size in the
//! snapshot, and the snapshot holds exactly the records written); restored
//! with `--rollback-volume` it goes on from that state, and without it the
//! restore is refused, the file having moved on.

mod util;

use std::time::Duration;

use stasis_btrfs::scratch::Scratch;
use util::run;
use util::workload::Workload;

#[test]
fn snapshot_records_the_volume_snapshot_taken_while_frozen() {
    let fs = Scratch::new(256).unwrap_or_else(|e| panic!("a scratch btrfs on a loop device is needed: {e}"));
    let vol = fs.subvolume("data").unwrap();
    let file = vol.join("records");
    let w = Workload::start("appender", &[file.to_str().unwrap()]);
    let before = w.wait_progress(20, Duration::from_secs(60));
    let images = tempfile::tempdir().unwrap();
    let img = images.path().join("first");
    let pid = w.pid.to_string();
    let r = run([
        "snapshot",
        "--pid",
        &pid,
        "--volume",
        vol.to_str().unwrap(),
        "--images",
        img.to_str().unwrap(),
        "--leave-running",
    ]);
    assert_eq!(r.code, Some(0), "{}\n{}", r.dump(), w.log());
    assert!(r.stdout.contains("volume snapshot taken while the tree was frozen"), "{}", r.dump());

    let shown = run(["inspect", img.to_str().unwrap(), "--json"]).success().json();
    let volume = &shown["volume"];
    assert_eq!(volume["kind"], "btrfs", "{shown}");
    assert_eq!(volume["name"], "first", "{shown}");
    let location = std::path::PathBuf::from(volume["location"].as_str().unwrap());
    let in_snapshot = std::fs::read(location.join("records")).unwrap();
    let fds = shown["processes"][0]["fds"].as_array().unwrap();
    let fd =
        fds.iter().find(|f| f.to_string().contains("records")).unwrap_or_else(|| panic!("no fd on records: {fds:?}"));
    let pos = fd["pos"].as_u64().unwrap_or_else(|| panic!("no pos in {fd}"));
    assert_eq!(in_snapshot.len() as u64, pos, "the snapshot's file is not where the image's fd offset is");
    assert_eq!(in_snapshot.len() % 11, 0);
    let records = in_snapshot.len() / 11;
    assert!(records as u64 >= before, "{records} records, progress was {before}");
    let last = std::str::from_utf8(&in_snapshot[in_snapshot.len() - 11..in_snapshot.len() - 1]).unwrap();
    assert_eq!(last.parse::<usize>().unwrap(), records, "the snapshot holds a torn or out-of-order file");

    // The original ran on, unharmed, and its own file moved past the snapshot.
    let later = w.wait_progress(before + 30, Duration::from_secs(60));
    assert!(std::fs::metadata(&file).unwrap().len() > pos, "progress {later}");
    w.check_ok();
    let listed = run(["volume", "list", vol.to_str().unwrap(), "--json"]).success().json();
    assert_eq!(listed[0]["name"], "first");
}

#[test]
fn restore_with_rollback_matches_memory_and_file() {
    let fs = Scratch::new(256).unwrap_or_else(|e| panic!("a scratch btrfs on a loop device is needed: {e}"));
    coherent_restore(&fs.subvolume("data").unwrap());
}

/// The same on a subvolume mounted by itself (as `/home` with
/// `subvol=@home`): the rollback unmounts it, swaps it through the
/// filesystem's top level and mounts it again.
#[test]
fn restore_with_rollback_of_a_subvolume_mounted_by_itself() {
    let fs = Scratch::new(256).unwrap_or_else(|e| panic!("a scratch btrfs on a loop device is needed: {e}"));
    fs.subvolume("home").unwrap();
    let mounted = fs.mount_subvolume("home").unwrap();
    coherent_restore(&mounted.path());
}

/// An `appender` writing to `vol/records`, captured with
/// `stasis snapshot --leave-running` into image `name`, then left to write
/// on past the snapshot and killed.
struct MovedOn {
    w: Workload,
    file: std::path::PathBuf,
    _images: tempfile::TempDir,
    img: std::path::PathBuf,
    /// Its progress before the snapshot.
    before: u64,
    /// The file's size once it was killed.
    grown: u64,
}

fn snapshot_then_write_on(vol: &std::path::Path, name: &str) -> MovedOn {
    let file = vol.join("records");
    let mut w = Workload::start("appender", &[file.to_str().unwrap()]);
    let before = w.wait_progress(20, Duration::from_secs(60));
    let images = tempfile::tempdir().unwrap();
    let img = images.path().join(name);
    let pid = w.pid.to_string();
    let (v, i) = (vol.to_str().unwrap(), img.to_str().unwrap());
    let r = run(["snapshot", "--pid", &pid, "--volume", v, "--images", i, "--leave-running"]);
    assert_eq!(r.code, Some(0), "{}\n{}", r.dump(), w.log());
    w.wait_progress(before + 30, Duration::from_secs(60));
    w.kill();
    let grown = std::fs::metadata(&file).unwrap().len();
    MovedOn { w, file, _images: images, img, before, grown }
}

/// A process appending to a file on `vol` snapshotted with the volume,
/// left to write on and killed; restored without rollback: refused; with
/// it: the process's memory and the file agree.
fn coherent_restore(vol: &std::path::Path) {
    let MovedOn { w, file, _images, img, before, grown } = snapshot_then_write_on(vol, "coherent");
    let i = img.to_str().unwrap();

    let refused = run(["restore", "--images", i]);
    assert_eq!(refused.code, Some(1), "{}", refused.dump());
    assert!(refused.stderr.contains("without --rollback-volume"), "{}", refused.dump());
    assert!(refused.stderr.contains("changed since the dump"), "{}", refused.dump());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), grown, "a refused restore touched the volume");

    let r = run(["restore", "--images", i, "--rollback-volume"]);
    assert_eq!(r.code, Some(0), "{}\n{}", r.dump(), w.log());
    assert!(r.stderr.contains("rolled btrfs subvolume"), "{}", r.dump());
    assert!(std::fs::metadata(&file).unwrap().len() < grown, "the volume was not rolled back");
    // In memory: the last record and the offset; on disk: the same.
    let outcome = w.check_ok();
    assert!(outcome.generation >= before, "generation went back from {before} to {}", outcome.generation);
}

/// The volume snapshot fails inside the freeze (here: the filesystem is
/// mounted read-only, so btrfs refuses the snapshot with EROFS): the
/// command fails naming the volume, leaves no image, and the tree is thawed
/// and runs on unharmed.
#[test]
fn a_volume_snapshot_failing_in_the_freeze_leaves_the_tree_running() {
    let fs = Scratch::new(256).unwrap_or_else(|e| panic!("a scratch btrfs on a loop device is needed: {e}"));
    let vol = fs.subvolume("data").unwrap();
    let remount = std::process::Command::new("mount").args(["-o", "remount,ro"]).arg(fs.mount_point()).status();
    assert!(remount.is_ok_and(|s| s.success()), "mount -o remount,ro {}", fs.mount_point().display());
    // The workload writes elsewhere: only the snapshot fails.
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("records");
    let w = Workload::start("appender", &[file.to_str().unwrap()]);
    let before = w.wait_progress(20, Duration::from_secs(60));
    let images = tempfile::tempdir().unwrap();
    let img = images.path().join("failed");
    let pid = w.pid.to_string();
    let r = run(["snapshot", "--pid", &pid, "--volume", vol.to_str().unwrap(), "--images", img.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{}", r.dump());
    assert!(r.stderr.contains("btrfs subvolume") && r.stderr.contains(vol.to_str().unwrap()), "{}", r.dump());
    assert!(r.stderr.contains("Read-only file system"), "{}", r.dump());
    assert!(!img.join(stasis_image::MANIFEST_NAME).exists(), "an image was left in {}", img.display());
    let later = w.wait_progress(before + 20, Duration::from_secs(60));
    assert!(later > before);
    assert_ne!(util::workload::proc_state(w.pid), Some('t'), "the workload is still stopped");
    w.check_ok();
}

/// A restore that would fail (a file outside the volume changed: here the
/// workload's log, its stdout, cut short: one that only grew would be
/// taken, as it is open for appending) is refused before the volume is
/// rolled back: what was written to the volume since the snapshot is still
/// there.
#[test]
fn a_restore_bound_to_fail_rolls_nothing_back() {
    let fs = Scratch::new(256).unwrap_or_else(|e| panic!("a scratch btrfs on a loop device is needed: {e}"));
    let vol = fs.subvolume("data").unwrap();
    let MovedOn { w, file, _images, img, grown, .. } = snapshot_then_write_on(&vol, "bound-to-fail");
    let (v, i) = (vol.to_str().unwrap(), img.to_str().unwrap());
    let log = w.dir.join("log");
    assert!(std::fs::metadata(&log).unwrap().len() > 1, "the workload logged nothing");
    std::fs::write(&log, "x").unwrap();

    let r = run(["restore", "--images", i, "--rollback-volume"]);
    assert_eq!(r.code, Some(1), "{}", r.dump());
    assert!(r.stderr.contains("not rolling btrfs subvolume"), "{}", r.dump());
    assert!(r.stderr.contains(log.to_str().unwrap()) && r.stderr.contains("changed since the dump"), "{}", r.dump());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), grown, "the volume was rolled back all the same");
    let listed = run(["volume", "list", v, "--json"]).success().json();
    assert_eq!(listed[0]["name"], "bound-to-fail", "{listed}");
}
