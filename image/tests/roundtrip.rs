//! Writing and reading images: contents, dedup, incremental parents.

mod common;

use std::fs;
use std::path::Path;

use common::{noise, sample_regions, small_chunks, write};
use stasis_image::{ChunkId, Compression, Image, ImageWriter, ReadError, WriteError, WriteOptions, PACK_NAME};

#[test]
fn contents_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let regions = sample_regions();
    let summary = write(dir.path(), &regions, small_chunks());
    let image = Image::open(dir.path()).unwrap();
    assert_eq!(image.manifest_hash(), &summary.manifest_hash);
    assert_eq!(image.memory().len(), regions.len());
    for (r, (mm, start, data)) in image.memory().iter().zip(&regions) {
        assert_eq!((r.mm, r.start, r.len), (*mm, *start, data.len() as u64));
        assert_eq!(&image.read_region(r).unwrap(), data);
    }
    let report = image.verify().unwrap();
    assert_eq!(report.images, 1);
    assert_eq!(report.chunks_checked, image.chunks().len() as u64);
}

#[test]
fn identical_chunks_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let summary = write(dir.path(), &sample_regions(), small_chunks());
    let s = &summary.stats;
    // 96 KiB of noise = 6 chunks (stored once, referenced twice), 128 KiB of
    // zeros = 8 references to one chunk, 64 KiB of pattern = 4 references to
    // one chunk.
    assert_eq!(s.chunks_stored, 6 + 1 + 1);
    assert_eq!(s.chunks_deduplicated, 6 + 7 + 3);
    let pack = fs::metadata(dir.path().join(PACK_NAME)).unwrap().len();
    assert_eq!(pack, s.stored_bytes);
    // Six incompressible 16 KiB chunks and two tiny frames.
    assert!(pack < 6 * 16 * 1024 + 1024, "pack is {pack} bytes");
    assert_eq!(s.logical_bytes, (96 + 128 + 64 + 96) * 1024);
}

#[test]
fn incremental_image_stores_only_new_chunks() {
    let root = tempfile::tempdir().unwrap();
    let (base, child) = (root.path().join("base"), root.path().join("child"));
    let mut data = noise(7, 1024 * 1024);
    let base_summary = write(&base, &[(1, 0x1000_0000, data.clone())], small_chunks());
    let base_pack = fs::metadata(base.join(PACK_NAME)).unwrap().len();
    assert!(base_pack >= 1024 * 1024, "noise should not compress");

    // Change three pages, in three different 16 KiB chunks.
    for page in [0usize, 20, 200] {
        data[page * 4096..(page + 1) * 4096].copy_from_slice(&noise(100 + page as u64, 4096));
    }
    let opts = WriteOptions { parent: Some(base.clone()), ..small_chunks() };
    let child_summary = write(&child, &[(1, 0x1000_0000, data.clone())], opts);
    assert_eq!(child_summary.stats.chunks_stored, 3);
    assert_eq!(child_summary.stats.chunks_from_parent, 64 - 3);
    let child_pack = fs::metadata(child.join(PACK_NAME)).unwrap().len();
    assert!(child_pack <= 3 * (16 * 1024 + 64), "child pack is {child_pack} bytes");
    assert!(child_pack * 20 < base_pack);

    let image = Image::open(&child).unwrap();
    assert_eq!(image.parent().unwrap().manifest_hash(), &base_summary.manifest_hash);
    assert_eq!(image.read_region(&image.memory()[0]).unwrap(), data);
    let report = image.verify().unwrap();
    assert_eq!(report.images, 2);
    let inspection = image.inspect();
    assert_eq!(inspection.chunks.from_parent, 61);
    assert_eq!(inspection.parent.unwrap().path, "../base");

    // The pair can move together: the parent is named relative to the child.
    let moved = tempfile::tempdir().unwrap();
    fs::rename(&base, moved.path().join("base")).unwrap();
    fs::rename(&child, moved.path().join("child")).unwrap();
    let image = Image::open(&moved.path().join("child")).unwrap();
    assert_eq!(image.read_region(&image.memory()[0]).unwrap(), data);
}

#[test]
fn replaced_parent_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (base, child) = (root.path().join("base"), root.path().join("child"));
    write(&base, &[(1, 0, noise(1, 64 * 1024))], small_chunks());
    write(&child, &[(1, 0, noise(1, 64 * 1024))], WriteOptions { parent: Some(base.clone()), ..small_chunks() });
    fs::remove_dir_all(&base).unwrap();
    write(&base, &[(1, 0, noise(1, 64 * 1024))], small_chunks());
    let err = Image::open(&child).unwrap_err();
    assert!(matches!(err, ReadError::ParentMismatch { .. }), "{err}");
    fs::remove_dir_all(&base).unwrap();
    let err = Image::open(&child).unwrap_err();
    assert!(matches!(err, ReadError::Parent { .. }), "{err}");
}

#[test]
fn existing_image_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let first = write(dir.path(), &sample_regions(), small_chunks());
    let err = ImageWriter::create(dir.path(), small_chunks()).unwrap_err();
    assert!(matches!(err, WriteError::AlreadyExists { .. }), "{err}");
    assert_eq!(Image::open(dir.path()).unwrap().manifest_hash(), &first.manifest_hash);
}

#[test]
fn bad_regions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ImageWriter::create(dir.path(), WriteOptions::default()).unwrap();
    assert!(matches!(w.add_memory(1, 0x1001, &[0; 4096]), Err(WriteError::Unaligned { .. })));
    assert!(matches!(w.add_memory(1, 0x1000, &[0; 100]), Err(WriteError::Unaligned { .. })));
    w.add_memory(1, 0x10000, &[1; 8192]).unwrap();
    assert!(matches!(w.add_memory(1, 0x11000, &[0; 4096]), Err(WriteError::Overlap { .. })));
    assert!(matches!(w.add_memory(1, 0xf000, &[0; 8192]), Err(WriteError::Overlap { .. })));
    // Another address space may use the same addresses.
    w.add_memory(2, 0x10000, &[1; 8192]).unwrap();
    w.finish().unwrap();
    assert!(ImageWriter::create(
        tempfile::tempdir().unwrap().path(),
        WriteOptions { chunk_size: 5000, ..Default::default() }
    )
    .is_err());
}

#[test]
fn unfinished_write_leaves_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ImageWriter::create(dir.path(), small_chunks()).unwrap();
    w.add_memory(1, 0, &noise(3, 256 * 1024)).unwrap();
    drop(w);
    let err = Image::open(dir.path()).unwrap_err();
    assert!(matches!(err, ReadError::Missing { .. }), "{err}");
    assert!(!dir.path().join(PACK_NAME).exists());
}

#[test]
fn parallel_and_serial_writes_agree() {
    let data = noise(9, 3 * 1024 * 1024);
    let mut hashes = Vec::new();
    for threads in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        let s = write(dir.path(), &[(1, 0x10000, data.clone())], WriteOptions { threads, ..Default::default() });
        let image = Image::open(dir.path()).unwrap();
        assert_eq!(image.read_region(&image.memory()[0]).unwrap(), data);
        hashes.push((s.stats.chunks_stored, s.stats.stored_bytes, image.chunks().entries().to_vec()));
    }
    assert_eq!(hashes[0], hashes[1]);
}

/// Chunks stored ahead (a pre-copy) and put in regions later read back as
/// what was stored; a region that is not one whole window, or names a
/// chunk not stored, is refused.
#[test]
fn chunks_stored_ahead_make_regions() {
    for replaced in [1, 4] {
        stored_ahead(replaced);
    }
}

/// [`chunks_stored_ahead_make_regions`] with `replaced` chunks of 16 KiB
/// stored ahead and used by no region: out of the table either way; one
/// (fewer bytes than those kept) punched out of the pack, four (more)
/// left behind in a pack made again of the chunks kept.
fn stored_ahead(replaced: u64) {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let mut w = ImageWriter::create(dir.path(), small_chunks()).unwrap();
    let windows: Vec<(u64, u64)> = w.windows(0x3000, 0x9000).collect();
    assert_eq!(windows, [(0x3000, 0x1000), (0x4000, 0x4000), (0x8000, 0x4000)]);
    let first = noise(7, 0x1000);
    let second = noise(8, 0x4000);
    let id1 = w.store_chunk(&first).unwrap();
    let id2 = w.store_chunk(&second).unwrap();
    let unused = w.store_chunk(&noise(9, 0x4000)).unwrap();
    for k in 1..replaced {
        w.store_chunk(&noise(20 + k, 0x4000)).unwrap();
    }
    w.add_stored_memory(1, 0x3000, 0x1000, id1).unwrap();
    w.add_stored_memory(1, 0x4000, 0x4000, id2).unwrap();
    w.add_memory(1, 0x8000, &noise(10, 0x4000)).unwrap();
    assert!(matches!(w.add_stored_memory(1, 0x4000, 0x4000, id2), Err(WriteError::Overlap { .. })));
    assert!(matches!(w.add_stored_memory(1, 0x10000, 0x8000, unused), Err(WriteError::NotAWindow { .. })));
    assert!(matches!(w.add_stored_memory(1, 0x20000, 0x1000, id2), Err(WriteError::NotAWindow { .. })));
    let stored_with_unused = w.stats().stored_bytes;
    // A dump's figures, taken before the unused chunks went.
    let stats = stasis_image::records::DumpStats { bytes_stored: stored_with_unused, ..Default::default() };
    w.set_processes(stasis_image::records::ProcessTree { stats: Some(stats), ..Default::default() });
    let summary = w.finish().unwrap();
    let image = Image::open(dir.path()).unwrap();
    let read: Vec<(u64, Vec<u8>)> = image.memory().iter().map(|r| (r.start, image.read_region(r).unwrap())).collect();
    assert_eq!(read[0], (0x3000, first));
    assert_eq!(read[1], (0x4000, second));
    image.verify().unwrap();
    // The chunk no region took is not in the image: not in its table, and
    // its bytes are gone from the pack.
    assert!(image.find_chunk(&unused).is_none(), "an unused chunk stayed in the table");
    assert_eq!(image.chunks().len(), 3);
    assert_eq!(summary.stats.chunks_stored, 3);
    assert_eq!(summary.stats.stored_bytes, stored_with_unused - replaced * 0x4000, "random chunks are stored raw");
    let pack = fs::metadata(dir.path().join(PACK_NAME)).unwrap();
    let allocated = pack.blocks() * 512;
    match replaced {
        // Punched: the same length, less space.
        1 => {
            assert_eq!(pack.len(), stored_with_unused);
            assert!(
                allocated <= stored_with_unused - 0x3000,
                "{allocated} bytes allocated to a pack of {}",
                pack.len()
            );
        }
        // Made again: only the chunks kept.
        _ => assert_eq!(pack.len(), summary.stats.stored_bytes),
    }
    Image::open(dir.path()).unwrap().verify_written(&summary.checks).unwrap();
    // What inspect and the dump's figures say is stored: the frames kept.
    let image = Image::open(dir.path()).unwrap();
    let i = image.inspect();
    assert_eq!((i.chunks.stored_bytes, i.chunks.pack_bytes), (summary.stats.stored_bytes, pack.len()));
    let dump = image.processes().and_then(|t| t.stats.clone()).unwrap();
    assert_eq!(dump.bytes_stored, summary.stats.stored_bytes, "the dump's figure counts chunks no longer stored");
}

/// Memory zstd cannot shrink is stored raw, without a pass of zstd over
/// all of it (the image then sets the raw-chunks feature bit); memory that
/// shrinks, even only in part of a chunk, is stored as a frame.
#[test]
fn incompressible_chunks_are_stored_raw() {
    let dir = tempfile::tempdir().unwrap();
    let mut half = noise(7, 32 * 1024);
    half.resize(64 * 1024, 0);
    let regions = vec![(1, 0x40_0000, noise(3, 128 * 1024)), (1, 0x80_0000, half.clone())];
    let opts = WriteOptions { chunk_size: 64 * 1024, ..WriteOptions::default() };
    write(dir.path(), &regions, opts.clone());
    let image = Image::open(dir.path()).unwrap();
    assert_eq!(image.header().incompat & stasis_image::format::INCOMPAT_RAW_CHUNKS, 0x10);
    let entry = |id| *image.chunks().entries().iter().find(|e| e.id == id).unwrap();
    let ids: Vec<_> = image.memory().iter().flat_map(|r| image.region_chunks(r)).map(|(_, _, id)| id).collect();
    let (random, mixed) = (&ids[..2], ids[2]);
    for id in random {
        assert_eq!(entry(*id).stored_len, entry(*id).raw_len, "random chunk {id} not stored raw");
    }
    assert!(entry(mixed).stored_len < 40 * 1024, "a half-zero chunk stored as {} bytes", entry(mixed).stored_len);
    for (r, (_, _, data)) in image.memory().iter().zip(&regions) {
        assert_eq!(&image.read_region(r).unwrap(), data);
    }
    image.verify().unwrap();

    // Nothing raw: no bit.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[(1, 0x40_0000, b"stasis!\n".repeat(16 * 1024))], opts.clone());
    assert_eq!(Image::open(dir.path()).unwrap().header().incompat & 0x10, 0);

    // Random memory right after text (which the writer then compresses
    // without trying a sample first) is still stored raw, by either way
    // of writing: whole regions, or pieces prepared on other threads.
    let text = |seed: u8| (0..64 * 1024).map(|i| b"log line "[i % 9] ^ (seed & (i % 2) as u8)).collect::<Vec<u8>>();
    let mixed: Vec<u8> = [text(0), noise(11, 64 * 1024), text(1), noise(12, 64 * 1024)].concat();
    for prepared in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ImageWriter::create(dir.path(), opts.clone()).unwrap();
        match prepared {
            false => w.add_memory(1, 0x40_0000, &mixed).unwrap(),
            true => {
                let p = w.chunker().prepare(0x40_0000, &mixed).unwrap();
                w.add_prepared(1, 0x40_0000, &mixed, p).unwrap();
            }
        }
        w.finish().unwrap();
        let image = Image::open(dir.path()).unwrap();
        let ids: Vec<_> = image.memory().iter().flat_map(|r| image.region_chunks(r)).map(|(_, _, id)| id).collect();
        let stored: Vec<bool> = ids.iter().map(|id| image.chunks().get(id).unwrap().stored_len < 64 * 1024).collect();
        assert_eq!(stored, [true, false, true, false], "which chunks were compressed (prepared: {prepared})");
        assert_eq!(image.read_region(&image.memory()[0]).unwrap(), mixed);
        image.verify().unwrap();
    }
}

/// Either compression reads back byte-exact, the LZ4 one (the default)
/// marked with its feature bit and frames an `lz4` tool reads, zstd's
/// without the bit and about half as large on text; an image mixing
/// both in a chain (a zstd parent, an LZ4 child) reads back too.
#[test]
fn lz4_and_zstd_chunks_round_trip() {
    let text: Vec<u8> =
        (0..20_000u32).flat_map(|i| format!("{i:08} GET /api/v1/orders/{} 200 OK\n", i % 977).into_bytes()).collect();
    let text = text[..512 * 1024].to_vec();
    let regions = vec![(1, 0x40_0000, text.clone()), (1, 0x80_0000, noise(5, 128 * 1024))];
    let lz4_bit = stasis_image::format::INCOMPAT_LZ4_CHUNKS;
    let mut sizes = Vec::new();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for (dir, compression) in dirs.iter().zip([Compression::Zstd { level: 1 }, Compression::Lz4]) {
        let opts = WriteOptions { compression, ..small_chunks() };
        write(dir.path(), &regions, opts);
        let image = Image::open(dir.path()).unwrap();
        assert_eq!(image.header().incompat & lz4_bit != 0, compression == Compression::Lz4, "{compression:?}");
        for (r, (_, _, data)) in image.memory().iter().zip(&regions) {
            assert_eq!(&image.read_region(r).unwrap(), data, "{compression:?}");
        }
        image.verify().unwrap();
        sizes.push(fs::metadata(dir.path().join(PACK_NAME)).unwrap().len());
    }
    let (zstd, lz4) = (sizes[0], sizes[1]);
    // The random half is stored raw by both.
    let raw = 128 * 1024;
    assert!(lz4 - raw < (512 * 1024) / 2 && zstd - raw < (lz4 - raw) * 3 / 4, "zstd {zstd} bytes, lz4 {lz4}");

    // An LZ4 child of a zstd parent: text changed in one chunk.
    let child = tempfile::tempdir().unwrap();
    let mut changed = text.clone();
    changed[100_000..100_010].copy_from_slice(b"0123456789");
    let child_regions = vec![(1, 0x40_0000, changed), regions[1].clone()];
    let opts = WriteOptions { parent: Some(dirs[0].path().to_owned()), ..small_chunks() };
    write(child.path(), &child_regions, opts);
    let image = Image::open(child.path()).unwrap();
    for (r, (_, _, data)) in image.memory().iter().zip(&child_regions) {
        assert_eq!(&image.read_region(r).unwrap(), data);
    }
    image.verify().unwrap();
}

/// A child image of memory that changed in a few pages stores each changed
/// window as those pages (a delta frame on the parent's chunk of the
/// window, by process), reads back byte-exact, and so does a grandchild
/// whose delta's base is a delta itself; a damaged delta frame is caught
/// and named.
#[test]
fn changed_windows_are_stored_as_deltas() {
    use stasis_image::records::{Process, ProcessTree, Thread};
    let thread = Thread { tid: 42, gpregs: vec![0; 216], xstate: vec![0; 576], ..Default::default() };
    let process = Process { pid: 42, mm: 1, threads: vec![thread], ..Default::default() };
    let tree = || ProcessTree { processes: vec![process.clone()], ..Default::default() };
    let opts = |parent: Option<&Path>| WriteOptions {
        chunk_size: 64 * 1024,
        parent: parent.map(Path::to_path_buf),
        ..WriteOptions::default()
    };
    let write_with = |dir: &Path, parent: Option<&Path>, data: &[u8]| {
        let mut w = ImageWriter::create(dir, opts(parent)).unwrap();
        let prepared = w.chunker_for(42).prepare(0x40_0000, data).unwrap();
        w.add_prepared(1, 0x40_0000, data, prepared).unwrap();
        // What a live snapshot puts windows together from: each read back
        // from the writer (a delta frame through its base).
        for window in data.chunks(64 * 1024) {
            assert_eq!(w.read_chunk(&ChunkId::of(window)).unwrap(), window);
        }
        w.set_processes(tree());
        w.finish().unwrap()
    };
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut data = noise(5, 4 * 64 * 1024);
    write_with(a.path(), None, &data);
    // One page changed in two of the four windows.
    data[3 * 4096 + 17] ^= 1;
    data[2 * 64 * 1024 + 9 * 4096] ^= 1;
    let child = write_with(b.path(), Some(a.path()), &data);
    assert_eq!(child.stats.chunks_stored, 2);
    assert!(child.stats.stored_bytes < 2 * (4096 + 64), "deltas of one page each: {} bytes", child.stats.stored_bytes);
    // The same window changed again: a delta on a delta.
    data[3 * 4096 + 18] ^= 1;
    let grandchild = write_with(c.path(), Some(b.path()), &data);
    assert_eq!(grandchild.stats.chunks_stored, 1);
    for dir in [b.path(), c.path()] {
        let image = Image::open(dir).unwrap();
        assert_ne!(image.header().incompat & stasis_image::format::INCOMPAT_DELTA_CHUNKS, 0);
        image.verify().unwrap();
        image.verify_frames().unwrap();
    }
    let image = Image::open(c.path()).unwrap();
    assert_eq!(image.read_region(&image.memory()[0]).unwrap(), data);
    // A page of the grandchild's delta damaged: caught, that chunk named.
    let pack = c.path().join(PACK_NAME);
    let mut bytes = fs::read(&pack).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    fs::write(&pack, &bytes).unwrap();
    let id = Image::open(c.path()).unwrap().chunks().entries()[0].id;
    match Image::open(c.path()).unwrap().verify() {
        Err(ReadError::Chunk { id: blamed, .. }) => assert_eq!(blamed, id),
        other => panic!("a damaged delta frame: {other:?}"),
    }
}

/// `start_writeback` starts writing the frames of the chunks named to
/// disk, and only theirs: the others' pages stay dirty until the image
/// is finished (and synced).
#[test]
fn writeback_starts_for_the_chunks_named() {
    use std::os::fd::AsFd;
    let dir = tempfile::tempdir().unwrap();
    let opts = WriteOptions { chunk_size: 64 * 1024, ..WriteOptions::default() };
    let mut w = ImageWriter::create(dir.path(), opts).unwrap();
    let windows: Vec<Vec<u8>> = (0..4).map(|k| noise(20 + k, 64 * 1024)).collect();
    let ids = w.store_chunks(&windows.iter().map(|v| &v[..]).collect::<Vec<_>>()).unwrap();
    w.start_writeback(&[ids[1], ids[3]]).unwrap();
    let pack = fs::File::open(dir.path().join(PACK_NAME)).unwrap();
    let dirty = |k: u64| stasis_sys::writeback::dirty_pages(pack.as_fd(), k * 65536, 65536).unwrap();
    // Random windows are stored raw, in order, 64 KiB each.
    assert_eq!([dirty(0), dirty(1), dirty(2), dirty(3)], [16, 0, 16, 0], "dirty pages of each frame");
    for (k, id) in ids.iter().enumerate() {
        w.add_stored_memory(1, 0x40_0000 + k as u64 * 65536, 65536, *id).unwrap();
    }
    w.finish().unwrap();
    let image = Image::open(dir.path()).unwrap();
    let offsets: Vec<u64> = ids.iter().map(|id| image.chunks().get(id).unwrap().offset).collect();
    assert_eq!(offsets, [0, 65536, 2 * 65536, 3 * 65536]);
    let read: Vec<u8> = image.memory().iter().flat_map(|r| image.read_region(r).unwrap()).collect();
    assert!(read == windows.concat(), "the image reads back other than written");
    assert_eq!((0..4).map(dirty).sum::<u64>(), 0, "finish synced the pack");
}
