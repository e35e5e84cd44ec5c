//! The golden image: a version 1 image checked into the repository. Every
//! build must read it, so a change that breaks reading old images fails here.
//!
//! It was written by this test with `STASIS_WRITE_GOLDEN=1`; do that only
//! when the format version changes, and keep the old golden image too.

mod common;

use std::path::PathBuf;

use common::{sample_regions, small_chunks};
use stasis_image::Image;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1")
}

#[test]
fn golden_v1_image_reads_and_verifies() {
    let dir = golden_dir();
    if std::env::var_os("STASIS_WRITE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        common::write(&dir, &sample_regions(), small_chunks());
    }
    let image = Image::open(&dir).expect("the golden image must open");
    let report = image.verify().expect("the golden image must verify");
    assert_eq!(report.chunks_checked, 8);
    // Written before images held frame checks: a restore's check of it
    // decompresses and hashes every chunk, as verify does.
    assert_eq!(image.verify_frames().expect("the golden image's frames must check"), report);
    let regions = sample_regions();
    assert_eq!(image.memory().len(), regions.len());
    for (r, (mm, start, data)) in image.memory().iter().zip(&regions) {
        assert_eq!((r.mm, r.start), (*mm, *start));
        assert_eq!(&image.read_region(r).unwrap(), data);
    }
    let i = image.inspect();
    assert_eq!(i.format_version, 1);
    assert_eq!(i.chunk_size, 16 * 1024);
    assert_eq!(i.memory.address_spaces, 2);
    assert_eq!(i.memory.logical_bytes, (96 + 128 + 64 + 96) * 1024);
    assert!(i.parent.is_none());
}
