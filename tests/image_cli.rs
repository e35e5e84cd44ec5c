//! `stasis inspect` and `stasis verify` on real images.

mod util;

use std::fs;

use util::{copy_image, golden_image, run};

#[test]
fn inspect_shows_the_golden_image() {
    let r = run([golden_image()]).expect_code(2);
    assert!(r.stderr.contains("Usage"), "{}", r.dump());

    let r = run(["inspect".as_ref(), golden_image().as_os_str()]).success();
    for expected in
        ["format     version 1", "parent     none", "384.0 KiB in 4 regions of 2 address spaces", "8 stored here"]
    {
        assert!(r.stdout.contains(expected), "missing {expected:?}\n{}", r.dump());
    }
    assert!(
        r.stdout.contains("0x00400000000000-0x00400000000000") || r.stdout.contains("0x00000000400000"),
        "{}",
        r.dump()
    );
}

#[test]
fn inspect_json_is_complete() {
    let v = run(["inspect".as_ref(), "--json".as_ref(), golden_image().as_os_str()]).success().json();
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["chunk_size"], 16384);
    assert_eq!(v["memory"]["logical_bytes"], 384 * 1024);
    assert_eq!(v["memory"]["regions"].as_array().unwrap().len(), 4);
    assert_eq!(v["chunks"]["stored"], 8);
    assert_eq!(v["chunks"]["referenced"], 8);
    assert_eq!(v["sections"].as_array().unwrap().len(), 3);
    assert!(v["parent"].is_null());
}

#[test]
fn verify_accepts_the_golden_image() {
    let r = run(["verify".as_ref(), golden_image().as_os_str()]).success();
    assert!(r.stdout.contains("valid (1 image, 8 chunks"), "{}", r.dump());
    let v = run(["verify".as_ref(), "--json".as_ref(), golden_image().as_os_str()]).success().json();
    assert_eq!(v["valid"], true);
    assert_eq!(v["chunks_checked"], 8);
}

#[test]
fn verify_names_the_corrupt_section() {
    let tmp = tempfile::tempdir().unwrap();
    copy_image(&golden_image(), tmp.path());
    let manifest = tmp.path().join("stasis.img");
    let mut bytes = fs::read(&manifest).unwrap();
    // The last byte belongs to the last section, the memory index.
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&manifest, &bytes).unwrap();
    let r = run(["verify".as_ref(), tmp.path().as_os_str()]).expect_code(1);
    assert!(r.stderr.contains("section memory checksum mismatch"), "{}", r.dump());
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.dump());
    let v = run(["verify".as_ref(), "--json".as_ref(), tmp.path().as_os_str()]).expect_code(1).json();
    assert_eq!(v["valid"], false);
    assert!(v["error"].as_str().unwrap().contains("section memory"));
}

#[test]
fn verify_names_the_corrupt_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    copy_image(&golden_image(), tmp.path());
    let pack = tmp.path().join("chunks.pack");
    let mut bytes = fs::read(&pack).unwrap();
    bytes[5000] ^= 0x80;
    fs::write(&pack, &bytes).unwrap();
    // inspect does not read chunks; verify does.
    run(["inspect".as_ref(), tmp.path().as_os_str()]).success();
    let r = run(["verify".as_ref(), tmp.path().as_os_str()]).expect_code(1);
    assert!(r.stderr.contains("chunks.pack: chunk ") && r.stderr.contains("is corrupt"), "{}", r.dump());
}

#[test]
fn not_an_image_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(["verify".as_ref(), tmp.path().as_os_str()]).expect_code(1);
    assert!(r.stderr.contains("is not a stasis image: stasis.img is missing"), "{}", r.dump());
    let r = run(["inspect".as_ref(), tmp.path().join("nope").as_os_str()]).expect_code(1);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.dump());
    assert!(r.stderr.starts_with("stasis: error: cannot read image "), "{}", r.dump());
}
