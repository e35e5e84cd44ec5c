//! An image is untrusted input: every flipped byte and every truncation must
//! be caught by open or verify, as an error and never a panic.

mod common;

use std::fs;
use std::path::Path;

use common::{noise, sample_regions, small_chunks, write};
use stasis_image::format::{self, SECTION_REQUIRED};
use stasis_image::{
    ChunkId, FrameChecks, Image, ImageWriter, Manifest, ReadError, SectionKind, WriteOptions, MANIFEST_NAME, PACK_NAME,
};

fn open_and_verify(dir: &Path) -> Result<(), ReadError> {
    Image::open(dir)?.verify().map(drop)
}

#[test]
fn every_flipped_manifest_byte_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &sample_regions(), small_chunks());
    let path = dir.path().join(MANIFEST_NAME);
    let good = fs::read(&path).unwrap();
    let (_, sections) = format::decode(&path, &good).unwrap();
    let mut seen_kinds = std::collections::BTreeSet::new();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        fs::write(&path, &bad).unwrap();
        let err = open_and_verify(dir.path()).expect_err(&format!("flip of manifest byte {i} not caught"));
        if let ReadError::SectionChecksum { kind, .. } = err {
            let s = sections.iter().find(|s| s.kind == kind).unwrap();
            assert!((s.offset..s.offset + s.len).contains(&(i as u64)), "byte {i} blamed on section {kind}");
            seen_kinds.insert(kind.to_string());
        }
    }
    // Every section was hit, and each error named the section it was in.
    assert_eq!(seen_kinds.into_iter().collect::<Vec<_>>(), ["chunks", "frame checks", "info", "memory"]);
    fs::write(&path, &good).unwrap();
    open_and_verify(dir.path()).unwrap();
}

#[test]
fn every_truncated_manifest_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &sample_regions(), small_chunks());
    let path = dir.path().join(MANIFEST_NAME);
    let good = fs::read(&path).unwrap();
    for n in 0..good.len() {
        fs::write(&path, &good[..n]).unwrap();
        assert!(open_and_verify(dir.path()).is_err(), "truncation to {n} bytes not caught");
    }
    let mut longer = good.clone();
    longer.push(0);
    fs::write(&path, &longer).unwrap();
    assert!(open_and_verify(dir.path()).is_err(), "appended byte not caught");
}

#[test]
fn flipped_chunk_bytes_are_caught_and_named() {
    flips_caught_and_named(|dir, _| open_and_verify(dir));
}

/// The check of an image just written, its frames against the checksums
/// its writer took of them (the one a dump makes before its kill), catches
/// the same flips and names the same chunks.
#[test]
fn flipped_chunk_bytes_are_caught_by_the_writers_checks() {
    flips_caught_and_named(|dir, checks| Image::open(dir)?.verify_written(checks).map(drop));
}

/// The check a restore makes before it starts anything, every frame
/// against the check stored with the image, catches the same flips and
/// names the same chunks.
#[test]
fn flipped_chunk_bytes_are_caught_by_the_stored_frame_checks() {
    flips_caught_and_named(|dir, _| Image::open(dir)?.verify_frames().map(drop));
}

/// An image written without frame checks (by an older stasis: the section
/// is optional) has its chunks decompressed and hashed by the restore's
/// check instead, which still catches every flip.
#[test]
fn images_without_frame_checks_are_checked_whole() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &sample_regions(), small_chunks());
    rewrite_sections(dir.path(), |sections| sections.retain(|s| s.0 != SectionKind::FrameChecks));
    let image = Image::open(dir.path()).unwrap();
    assert_eq!(image.verify_frames().unwrap(), image.verify().unwrap(), "not checked as verify checks");
    flips_caught_and_named(|dir, _| {
        rewrite_sections(dir, |sections| sections.retain(|s| s.0 != SectionKind::FrameChecks));
        Image::open(dir)?.verify_frames().map(drop)
    });
}

/// Frame checks that do not belong to the pack (two swapped, the
/// manifest's own checksums made right) are refused by both checks, naming
/// a chunk: `stasis verify` never passes an image its restore refuses.
#[test]
fn frame_checks_that_do_not_match_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &sample_regions(), small_chunks());
    rewrite_sections(dir.path(), |sections| {
        let checks = &mut sections.iter_mut().find(|s| s.0 == SectionKind::FrameChecks).unwrap().2;
        let (a, b) = checks.split_at_mut(8);
        a.swap_with_slice(&mut b[..8]);
    });
    let image = Image::open(dir.path()).unwrap();
    let first_two: Vec<_> = image.chunks().entries()[..2].iter().map(|e| e.id).collect();
    for err in [image.verify_frames().unwrap_err(), image.verify().unwrap_err()] {
        match err {
            ReadError::Chunk { id, what, .. } => {
                assert!(first_two.contains(&id), "blamed chunk {id}");
                assert!(what.contains("frame check"), "{what}");
            }
            other => panic!("swapped frame checks: {other}"),
        }
    }
    // And a section of the wrong length is refused as malformed, by name.
    rewrite_sections(dir.path(), |sections| {
        sections.iter_mut().find(|s| s.0 == SectionKind::FrameChecks).unwrap().2.pop();
    });
    let err = Image::open(dir.path()).unwrap_err();
    assert!(matches!(err, ReadError::Section { kind: SectionKind::FrameChecks, .. }), "{err}");
}

/// A writer that syncs the pack as it grows (`flush_early`, as a dump
/// does) reads back and checks each part once its sync is done: a frame
/// that changed in the pack after it was written fails the write, naming
/// its chunk, and leaves no image. One that did not change passes, and
/// the image verifies.
#[test]
fn frames_read_back_after_each_early_sync() {
    let opts = || WriteOptions { flush_early: true, ..WriteOptions::default() };
    // Past FLUSH_EVERY (64 MiB), for the flusher to run once at least.
    let (first, rest) = (noise(7, 4 << 20), noise(8, 72 << 20));
    let good = tempfile::tempdir().unwrap();
    let summary = write(good.path(), &[(1, 0x40_0000, first.clone()), (1, 0x1000_0000, rest.clone())], opts());
    Image::open(good.path()).unwrap().verify_written(&summary.checks).unwrap();
    Image::open(good.path()).unwrap().verify().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut w = ImageWriter::create(dir.path(), opts()).unwrap();
    w.add_memory(1, 0x40_0000, &first).unwrap();
    // The first chunk's frame (raw: noise) starts the pack; change a byte
    // of it behind the writer's back, before any sync.
    let pack = fs::OpenOptions::new().write(true).open(dir.path().join(PACK_NAME)).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&pack, &[first[100] ^ 0x10], 100).unwrap();
    let err = w.add_memory(1, 0x1000_0000, &rest).and_then(|()| w.finish().map(drop)).unwrap_err();
    let first_chunk = ChunkId::of(&first[..64 * 1024]);
    let cause = std::error::Error::source(&err).map(|e| e.to_string()).unwrap_or_default();
    assert!(err.to_string().contains(PACK_NAME), "{err}");
    assert!(cause.contains(&format!("chunk {first_chunk} reads back other than it was written")), "{err}: {cause}");
    assert!(!dir.path().join(MANIFEST_NAME).exists(), "a failed write left a manifest");
}

/// An image's frames checked against another writer's checksums: no frame
/// passes for one it did not write.
#[test]
fn another_writers_checks_are_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ours = write(a.path(), &sample_regions(), small_chunks());
    let report = Image::open(a.path()).unwrap().verify_written(&ours.checks).unwrap();
    assert_eq!(report.chunks_checked, ours.stats.chunks_stored);
    let theirs = write(b.path(), &[(1, 0x40_0000, noise(2, 64 * 1024))], small_chunks());
    match Image::open(a.path()).unwrap().verify_written(&theirs.checks) {
        Err(ReadError::Chunk { what, .. }) => assert_eq!(what, "was not written by this writer"),
        other => panic!("another writer's checks: {other:?}"),
    }
}

fn flips_caught_and_named(check: impl Fn(&Path, &FrameChecks) -> Result<(), ReadError>) {
    let dir = tempfile::tempdir().unwrap();
    let written = write(dir.path(), &sample_regions(), small_chunks());
    check(dir.path(), &written.checks).unwrap();
    let entries = Image::open(dir.path()).unwrap().chunks().entries().to_vec();
    let path = dir.path().join(PACK_NAME);
    let good = fs::read(&path).unwrap();
    // First, last and middle byte of every frame, and every 61st byte.
    let mut offsets: Vec<usize> = entries
        .iter()
        .flat_map(|e| {
            let (s, l) = (e.offset as usize, e.stored_len as usize);
            [s, s + l / 2, s + l - 1]
        })
        .chain((0..good.len()).step_by(61))
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    for i in offsets {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        fs::write(&path, &bad).unwrap();
        let err = check(dir.path(), &written.checks).expect_err(&format!("flip of pack byte {i} not caught"));
        let owner =
            entries.iter().find(|e| (e.offset..e.offset + u64::from(e.stored_len)).contains(&(i as u64))).unwrap();
        match err {
            ReadError::Chunk { id, .. } => assert_eq!(id, owner.id, "byte {i} blamed on the wrong chunk"),
            other => panic!("flip of pack byte {i}: unexpected error {other}"),
        }
    }
}

#[test]
fn truncated_or_missing_pack_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &sample_regions(), small_chunks());
    let path = dir.path().join(PACK_NAME);
    let good = fs::read(&path).unwrap();
    for n in (0..good.len()).step_by(997).chain([good.len() - 1]) {
        fs::write(&path, &good[..n]).unwrap();
        assert!(Image::open(dir.path()).is_err(), "truncation of pack to {n} bytes not caught at open");
    }
    fs::remove_file(&path).unwrap();
    assert!(matches!(Image::open(dir.path()), Err(ReadError::Missing { what: PACK_NAME, .. })));
}

#[test]
fn missing_parent_chunk_is_caught() {
    let root = tempfile::tempdir().unwrap();
    let (base, child) = (root.path().join("base"), root.path().join("child"));
    write(&base, &[(1, 0, noise(5, 64 * 1024))], small_chunks());
    let opts = WriteOptions { parent: Some(base.clone()), ..small_chunks() };
    write(&child, &[(1, 0, noise(5, 64 * 1024))], opts);
    // Corrupt a chunk the child only references through its parent.
    let pack = base.join(PACK_NAME);
    let mut bytes = fs::read(&pack).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&pack, &bytes).unwrap();
    let err = open_and_verify(&child).unwrap_err();
    assert!(matches!(err, ReadError::Chunk { ref path, .. } if path.starts_with(&base)), "{err}");
}

/// Rebuild the manifest of `dir` (its checksums right) with its sections
/// (kind, flags, bytes) as `change` leaves them.
fn rewrite_sections(dir: &Path, change: impl FnOnce(&mut Vec<(SectionKind, u32, Vec<u8>)>)) {
    let path = dir.join(MANIFEST_NAME);
    let bytes = fs::read(&path).unwrap();
    let (header, sections) = format::decode(&path, &bytes).unwrap();
    let mut parts: Vec<_> = sections
        .iter()
        .map(|s| (s.kind, s.flags, bytes[s.offset as usize..(s.offset + s.len) as usize].to_vec()))
        .collect();
    change(&mut parts);
    fs::write(&path, format::encode(&header, &parts)).unwrap();
}

/// Rebuild the manifest of `dir` with one more section.
fn add_section(dir: &Path, kind: u32, flags: u32) {
    rewrite_sections(dir, |parts| parts.push((SectionKind::from_code(kind), flags, b"from the future".to_vec())));
}

#[test]
fn unknown_optional_section_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &sample_regions(), small_chunks());
    add_section(dir.path(), 900, 0);
    open_and_verify(dir.path()).unwrap();
}

#[test]
fn unknown_required_section_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &sample_regions(), small_chunks());
    add_section(dir.path(), 901, SECTION_REQUIRED);
    let err = Image::open(dir.path()).unwrap_err();
    assert!(matches!(err, ReadError::UnknownRequiredSection { kind: SectionKind::Unknown(901), .. }), "{err}");
    assert!(err.to_string().contains("newer stasis"));
}

#[test]
fn garbage_manifests_are_errors() {
    let path = Path::new("garbage");
    for seed in 0..2000u64 {
        let mut bytes = noise(seed, (seed % 300) as usize);
        if seed % 2 == 0 && bytes.len() >= 8 {
            bytes[..8].copy_from_slice(&format::MAGIC);
        }
        assert!(Manifest::decode(path, &bytes).is_err());
    }
}

#[test]
fn full_disk_leaves_no_image() {
    // A 512 KiB tmpfs: the 2 MiB of noise below cannot fit.
    let mnt = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(mnt.path())
        .status()
        .expect("run mount (this test needs root and the mount command)");
    assert!(status.success(), "mounting a tmpfs failed: this test needs root");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt.path());

    let dir = mnt.path().join("img");
    let result = (|| {
        let mut w = ImageWriter::create(&dir, small_chunks())?;
        w.add_memory(1, 0, &noise(11, 2 * 1024 * 1024))?;
        w.finish()
    })();
    let err = result.expect_err("writing 2 MiB into 512 KiB succeeded");
    assert!(err.to_string().contains("cannot write"), "{err}");
    assert!(!dir.join(MANIFEST_NAME).exists());
    assert!(!dir.join(PACK_NAME).exists(), "the partial pack was left behind");
    assert!(matches!(Image::open(&dir), Err(ReadError::Missing { .. })));
}
