//! The btrfs backend on real btrfs filesystems (loop devices): snapshot,
//! list, rollback, delete, export and import (whole and incremental), and
//! the errors that name what is wrong.

use std::fs;

use stasis_btrfs::scratch::Scratch;
use stasis_btrfs::BtrfsVolume;
use stasis_volume::{detect, Detected, Error, Volume};

fn scratch() -> Scratch {
    Scratch::new(256).unwrap_or_else(|e| panic!("a scratch btrfs on a loop device is needed: {e}"))
}

#[test]
fn snapshot_list_rollback_delete() {
    let fs = scratch();
    let data = fs.subvolume("data").unwrap();
    fs::write(data.join("log"), "1\n").unwrap();
    let Detected::Btrfs { subvolume } = detect(&data.join("log")).unwrap() else { panic!("not detected as btrfs") };
    assert_eq!(subvolume, data.canonicalize().unwrap());
    let v = BtrfsVolume::open(&subvolume).unwrap();
    let one = v.snapshot("one").unwrap();
    assert_eq!(fs::read_to_string(one.location.join("log")).unwrap(), "1\n");
    assert!(one.location.starts_with(fs.mount_point().join(".stasis-snapshots/data")), "{one:?}");
    assert!(fs::write(one.location.join("log"), "x").is_err(), "the snapshot is writable");
    assert_eq!(one.detail, "read-only");
    assert!(matches!(v.snapshot("one"), Err(Error::Exists { .. })));
    fs::write(data.join("log"), "1\n2\n").unwrap();
    fs::write(data.join("new"), "made after").unwrap();
    let two = v.snapshot("two").unwrap();
    let names: Vec<String> = v.list().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["one", "two"]);
    assert_ne!(one.id, two.id);

    v.rollback("one").unwrap();
    assert_eq!(fs::read_to_string(data.join("log")).unwrap(), "1\n");
    assert!(!data.join("new").exists(), "a file made after the snapshot survived the rollback");
    // The snapshots stay, and the volume goes on.
    assert_eq!(v.list().unwrap().len(), 2);
    fs::write(data.join("log"), "1\n3\n").unwrap();
    v.rollback("two").unwrap();
    assert_eq!(fs::read_to_string(data.join("log")).unwrap(), "1\n2\n");
    let left: Vec<_> = fs::read_dir(fs.mount_point()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "something was left beside the volume: {left:?}");

    v.delete("one").unwrap();
    assert!(matches!(v.find("one"), Err(Error::NoSnapshot { .. })));
    assert!(matches!(v.delete("one"), Err(Error::NoSnapshot { .. })));
    assert!(matches!(v.rollback("one"), Err(Error::NoSnapshot { .. })));
}

/// A process still using the volume (its working directory, or a file
/// open) would go on writing to the old contents, deleted by the rollback:
/// the rollback is refused, naming it, and nothing changes.
#[test]
fn rollback_is_refused_while_a_process_uses_the_volume() {
    use std::process::{Command, Stdio};
    let fs = scratch();
    let data = fs.subvolume("data").unwrap();
    fs::write(data.join("log"), "1\n").unwrap();
    let v = BtrfsVolume::open(&data).unwrap();
    v.snapshot("one").unwrap();
    fs::write(data.join("log"), "1\n2\n").unwrap();
    let sleeper = |cwd: &std::path::Path, stdin: Stdio| {
        Command::new("sleep").arg("60").current_dir(cwd).stdin(stdin).spawn().unwrap()
    };
    for mut user in [
        sleeper(&data, Stdio::null()),
        sleeper(std::path::Path::new("/"), fs::File::open(data.join("log")).unwrap().into()),
    ] {
        let err = v.rollback("one").unwrap_err();
        let _ = (user.kill(), user.wait());
        let Error::Busy { what, .. } = &err else { panic!("{err:?}") };
        assert!(what.contains(&format!("process {} (sleep)", user.id())), "{err}");
        assert_eq!(fs::read_to_string(data.join("log")).unwrap(), "1\n2\n", "a refused rollback changed the volume");
    }
    v.rollback("one").unwrap();
    assert_eq!(fs::read_to_string(data.join("log")).unwrap(), "1\n");
}

#[test]
fn export_and_import_whole_and_incremental() {
    let (a, b) = (scratch(), scratch());
    let data = a.subvolume("data").unwrap();
    fs::write(data.join("big"), vec![7u8; 3 << 20]).unwrap();
    let v = BtrfsVolume::open(&data).unwrap();
    v.snapshot("one").unwrap();
    fs::write(data.join("small"), "changed").unwrap();
    v.snapshot("two").unwrap();

    let target = BtrfsVolume::open(&b.subvolume("data").unwrap()).unwrap();
    let mut whole = Vec::new();
    v.export("one", None, &mut whole).unwrap();
    let mut incremental = Vec::new();
    v.export("two", Some("one"), &mut incremental).unwrap();
    assert!(incremental.len() < whole.len() / 10, "incremental {} bytes, whole {}", incremental.len(), whole.len());

    let one = target.import(&mut whole.as_slice()).unwrap();
    assert_eq!(one.name, "one");
    let two = target.import(&mut incremental.as_slice()).unwrap();
    assert_eq!(two.name, "two");
    assert_eq!(fs::read(two.location.join("big")).unwrap(), vec![7u8; 3 << 20]);
    assert_eq!(fs::read_to_string(two.location.join("small")).unwrap(), "changed");
    target.rollback("two").unwrap();
    assert_eq!(fs::read_to_string(target.mount_point().join("small")).unwrap(), "changed");

    let err = target.import(&mut &b"not a send stream"[..]).unwrap_err();
    assert!(matches!(err, Error::Tool { .. }), "{err}");
}

/// The filesystem's top-level subvolume (id 5) has no parent to be
/// swapped in: snapshots work, the rollback is refused, saying why.
#[test]
fn the_top_level_snapshots_but_refuses_rollback() {
    let fs = scratch();
    let v = BtrfsVolume::open(&fs.mount_point()).unwrap();
    fs::write(fs.mount_point().join("f"), "a").unwrap();
    let s = v.snapshot("one").unwrap();
    assert!(s.location.starts_with(fs.mount_point().join(".stasis-snapshots")));
    fs::write(fs.mount_point().join("f"), "b").unwrap();
    let err = v.rollback("one").unwrap_err();
    assert!(matches!(&err, Error::Unsupported { what, .. } if what.contains("top-level subvolume")), "{err}");
    assert_eq!(fs::read_to_string(fs.mount_point().join("f")).unwrap(), "b");
}

/// A subvolume mounted by itself (as `/home` with `subvol=@home`): its
/// snapshots are kept inside it; the rollback unmounts it, swaps it through
/// the filesystem's top level and mounts it again at the same place, the
/// snapshots moved along; twice; and it is refused while busy.
#[test]
fn a_subvolume_mounted_by_itself_rolls_back_and_stays_mounted() {
    let fs = scratch();
    fs.subvolume("data").unwrap();
    let mounted = fs.mount_subvolume("data").unwrap();
    let root = mounted.path().canonicalize().unwrap();
    let Detected::Btrfs { subvolume } = detect(&root).unwrap() else { panic!("not detected as btrfs") };
    assert_eq!(subvolume, root);
    let v = BtrfsVolume::open(&root).unwrap();
    fs::write(root.join("log"), "1\n").unwrap();
    let one = v.snapshot("one").unwrap();
    assert!(one.location.starts_with(root.join(".stasis-snapshots")), "{one:?}");
    fs::write(root.join("log"), "1\n2\n").unwrap();
    fs::write(root.join("new"), "made after").unwrap();
    let two = v.snapshot("two").unwrap();
    fs::write(root.join("log"), "1\n2\n3\n").unwrap();

    // Busy: a process with its working directory there.
    let mut user = std::process::Command::new("sleep").arg("60").current_dir(&root).spawn().unwrap();
    let err = v.rollback("one").unwrap_err();
    let _ = (user.kill(), user.wait());
    assert!(matches!(&err, Error::Busy { what, .. } if what.contains("(sleep)")), "{err}");
    assert_eq!(fs::read_to_string(root.join("log")).unwrap(), "1\n2\n3\n");

    v.rollback("one").unwrap();
    assert!(stasis_volume::is_mount_point(&root), "not mounted again");
    assert_eq!(fs::read_to_string(root.join("log")).unwrap(), "1\n");
    assert!(!root.join("new").exists(), "a file made after the snapshot survived the rollback");
    let listed = v.list().unwrap();
    assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), [one.id.as_str(), two.id.as_str()]);
    assert_eq!(fs::read_to_string(two.location.join("log")).unwrap(), "1\n2\n", "snapshot two lost its contents");

    v.rollback("two").unwrap();
    assert_eq!(fs::read_to_string(root.join("log")).unwrap(), "1\n2\n");
    assert_eq!(fs::read_to_string(root.join("new")).unwrap(), "made after");
    assert_eq!(v.list().unwrap().len(), 2);
    // Nothing left beside it at the top level; the volume still takes
    // snapshots and deletes them.
    let top: Vec<_> = fs::read_dir(fs.mount_point()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(top, ["data"], "left at the top level: {top:?}");
    v.snapshot("three").unwrap();
    for name in ["one", "two", "three"] {
        v.delete(name).unwrap();
    }
    assert!(v.list().unwrap().is_empty());
}

#[test]
fn a_plain_directory_is_not_a_volume() {
    let fs = scratch();
    let dir = fs.mount_point().join("dir");
    fs::create_dir(&dir).unwrap();
    let err = BtrfsVolume::open(&dir).unwrap_err();
    assert!(err.to_string().contains("not the root of a subvolume"), "{err}");
}
