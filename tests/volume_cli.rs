//! `stasis volume` on real btrfs filesystems (loop devices): snapshot,
//! list, rollback, export, import, delete, and the error for a path on no
//! volume stasis can snapshot.

mod util;

use std::fs;

use stasis_btrfs::scratch::Scratch;
use util::run;

fn scratch() -> Scratch {
    Scratch::new(256).unwrap_or_else(|e| panic!("a scratch btrfs on a loop device is needed: {e}"))
}

#[test]
fn volume_commands_on_btrfs() {
    let (a, b) = (scratch(), scratch());
    let data = a.subvolume("data").unwrap();
    let file = data.join("records");
    fs::write(&file, "1\n").unwrap();
    let vol = file.to_str().unwrap();
    let out = run(["volume", "snapshot", vol, "first"]).success().stdout;
    assert!(out.contains("snapshot first at"), "{out}");
    fs::write(&file, "1\n2\n").unwrap();
    run(["volume", "snapshot", vol, "second"]).success();
    let listed = run(["volume", "list", vol, "--json"]).success().json();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["first", "second"]);
    let again = run(["volume", "snapshot", vol, "first"]);
    assert_eq!(again.code, Some(1), "{}", again.dump());
    assert!(again.stderr.contains("already has a snapshot named \"first\""), "{}", again.dump());

    run(["volume", "rollback", vol, "first"]).success();
    assert_eq!(fs::read_to_string(&file).unwrap(), "1\n");

    let stream = a.mount_point().join("first.stream");
    run(["volume", "export", vol, "first", "-o", stream.to_str().unwrap()]).success();
    let inc = a.mount_point().join("second.stream");
    run(["volume", "export", vol, "second", "--parent", "first", "-o", inc.to_str().unwrap()]).success();
    let target = b.subvolume("data").unwrap();
    let t = target.to_str().unwrap();
    run(["volume", "import", t, "-i", stream.to_str().unwrap()]).success();
    run(["volume", "import", t, "-i", inc.to_str().unwrap()]).success();
    run(["volume", "rollback", t, "second"]).success();
    assert_eq!(fs::read_to_string(target.join("records")).unwrap(), "1\n2\n");

    run(["volume", "delete", vol, "first"]).success();
    let left = run(["volume", "list", vol]).success().stdout;
    assert!(left.contains("second") && !left.contains("first"), "{left}");
    let missing = run(["volume", "rollback", vol, "first"]);
    assert_eq!(missing.code, Some(1), "{}", missing.dump());
    assert!(missing.stderr.contains("has no snapshot named \"first\""), "{}", missing.dump());
}

#[test]
fn a_path_on_no_volume_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(["volume", "snapshot", dir.path().to_str().unwrap(), "x"]);
    assert_eq!(r.code, Some(1), "{}", r.dump());
    assert!(r.stderr.contains("is not on a btrfs subvolume or an LVM logical volume"), "{}", r.dump());
    assert!(r.stderr.contains("mounted at"), "{}", r.dump());
}
