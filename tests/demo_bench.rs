//! `stasis demo`, `stasis bench` and the hidden `stasis workload` they run.
//! Demo and bench dump and restore real processes: run as root.

mod util;

use util::run;

/// The N of the first "LABEL tick N checksum X" line of the demo's output.
fn narrated_tick(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"));
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("tick"), "{line:?}");
    words.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no tick number in {line:?}"))
}

#[test]
fn demo_restored_counter_carries_on_from_the_dump() {
    let r = run(["demo"]).success();
    let before = narrated_tick(&r.stdout, "before dump:");
    let after = narrated_tick(&r.stdout, "after restore:");
    assert!(before >= 2, "the workload ran before the dump\n{}", r.dump());
    assert_eq!(after, before + 1, "the first tick after restore follows the last one before\n{}", r.dump());
    assert!(r.stdout.contains("verdict: ok "), "{}", r.dump());
    assert!(r.stdout.contains("demo passed"), "{}", r.dump());
}

#[test]
fn demo_keep_leaves_the_image() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().to_str().expect("temp dir is UTF-8");
    let r = run(["demo", "--keep", "--run-for", "0.5", "--dir", dir]).success();
    let kept: Vec<_> = std::fs::read_dir(base.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(kept.len(), 1, "{}", r.dump());
    let image = kept[0].join("image");
    run(["verify".as_ref(), image.as_os_str()]).success();
    assert!(r.stdout.contains(&format!("kept {}", kept[0].display())), "{}", r.dump());
}

#[test]
fn bench_json_has_both_patterns_and_compressible_images_are_smaller() {
    let r = run(["bench", "--mib", "16", "--pattern", "random,compressible", "--runs", "1", "--json"]).success();
    let v = r.json();
    assert_eq!(v["all_verified"], true, "{}", r.dump());
    assert!(v["command"].as_str().unwrap().contains("bench --mib 16"), "{}", r.dump());
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "{}", r.dump());
    let case = |pattern: &str| {
        cases.iter().find(|c| c["pattern"] == pattern).unwrap_or_else(|| panic!("no {pattern} case\n{}", r.dump()))
    };
    for c in cases {
        assert_eq!(c["mib"], 16);
        assert_eq!(c["verified"], true, "{}", r.dump());
        let runs = c["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1);
        assert!(runs[0]["verdict"].as_str().unwrap().starts_with("ok"), "{}", r.dump());
        assert!(runs[0]["logical_bytes"].as_u64().unwrap() >= 16 << 20, "{}", r.dump());
        // Where the time went, phase by phase.
        let phases = |what: &str| -> Vec<String> {
            runs[0][what].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap().to_owned()).collect()
        };
        assert!(phases("dump_phases").iter().any(|p| p == "memory"), "{}", r.dump());
        assert!(phases("restore_phases").iter().any(|p| p == "memory"), "{}", r.dump());
        // The lazy restore of each image ran, and its check too.
        for figure in
            ["frozen_ms", "dump_ms", "dump_mib_per_s", "image_bytes", "restore_ms", "lazy_running_ms", "lazy_loaded_ms"]
        {
            let s = &c[figure];
            let (min, median, max) =
                (s["min"].as_f64().unwrap(), s["median"].as_f64().unwrap(), s["max"].as_f64().unwrap());
            assert!(0.0 < min && min <= median && median <= max, "{figure}: {s}\n{}", r.dump());
        }
    }
    let random = case("random")["image_bytes"]["median"].as_f64().unwrap();
    let compressible = case("compressible")["image_bytes"]["median"].as_f64().unwrap();
    assert!(random >= (16 << 20) as f64, "random memory does not compress: {random}\n{}", r.dump());
    assert!(
        compressible < random * 0.5,
        "compressible image {compressible} bytes, random {random} bytes\n{}",
        r.dump()
    );
}

/// `bench --compress zstd` dumps with zstd frames: every restore still
/// verifies, and the compressible image is smaller than with LZ4, the
/// default.
#[test]
fn bench_with_zstd_makes_smaller_compressible_images() {
    let image = |codec: &str| {
        let r =
            run(["bench", "--mib", "16", "--pattern", "compressible", "--runs", "1", "--json", "--compress", codec])
                .success();
        let v = r.json();
        let case = &v["cases"][0];
        assert_eq!(case["verified"], true, "{}", r.dump());
        case["image_bytes"]["median"].as_f64().unwrap()
    };
    let (lz4, zstd) = (image("lz4"), image("zstd"));
    assert!(zstd < lz4 * 0.8, "zstd image {zstd} bytes, lz4 {lz4}");
}

/// `bench --live`: each dump copies the memory ahead while the workload
/// runs (its time is in the figures), restores verify, and the table says
/// so.
#[test]
fn bench_live_copies_ahead_and_verifies() {
    let r = run(["bench", "--mib", "16", "--pattern", "random", "--runs", "1", "--live", "--json"]).success();
    let v = r.json();
    assert_eq!(v["all_verified"], true, "{}", r.dump());
    let case = &v["cases"][0];
    assert!(case["pre_copy_ms"]["median"].as_f64().unwrap_or(0.0) > 0.0, "no copy ahead\n{}", r.dump());
    assert!(case["runs"][0]["pre_copy_us"].as_u64().unwrap_or(0) > 0, "{}", r.dump());
    let r = run(["bench", "--mib", "8", "--pattern", "compressible", "--runs", "1", "--live"]).success();
    assert!(r.stdout.contains("copied ahead ms"), "{}", r.dump());
}

/// `bench --incremental`: the dump timed is a second one, after the
/// workload changed 1% of its pages (every 100th) since a first: its image
/// is under 5% of the first's (the target), both patterns, and each
/// restore, eager and lazy, reads through both images to the memory the
/// workload had after its change (its check expects the new checksum).
#[test]
fn bench_incremental_images_are_small_and_restore() {
    let r = run(["bench", "--mib", "64", "--pattern", "random,compressible", "--runs", "1", "--incremental", "--json"])
        .success();
    let v = r.json();
    assert_eq!(v["all_verified"], true, "{}", r.dump());
    for case in v["cases"].as_array().expect("cases") {
        let run = &case["runs"][0];
        let (first, second) = (run["first_image_bytes"].as_f64().unwrap_or(0.0), run["image_bytes"].as_f64().unwrap());
        assert!(
            first > 0.0 && second * 20.0 <= first,
            "image {second} bytes, the first {first}: over 5%\n{}",
            r.dump()
        );
        assert!(run["lazy_running_us"].as_u64().is_some(), "no lazy restore\n{}", r.dump());
    }
    let r = run(["bench", "--mib", "8", "--pattern", "random", "--runs", "1", "--incremental"]).success();
    assert!(r.stdout.contains("image/first") && r.stdout.contains("incremental"), "{}", r.dump());
    // Going on from the first dump's write tracking, the dump timed reads
    // ahead only the pages written since (1% of 16 MiB, and the
    // workload's own few), and restores the same.
    let args = ["bench", "--mib", "16", "--pattern", "random", "--runs", "1", "--incremental", "--keep-tracking"];
    let r = run(args.into_iter().chain(["--json"])).success();
    let v = r.json();
    assert_eq!((&v["all_verified"], &v["keep_tracking"]), (&true.into(), &true.into()), "{}", r.dump());
    let read = v["cases"][0]["runs"][0]["read_ahead_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(read < 2 << 20, "the dump read {read} bytes ahead of 16 MiB\n{}", r.dump());
    let r = run(["bench", "--mib", "8", "--runs", "1", "--incremental", "--writer"]).expect_code(2);
    assert!(r.stderr.contains("cannot be used with"), "{}", r.dump());
}

/// `bench --criu PATH` with a CRIU that does not work here (`criu check`
/// fails) stops before any run, naming it; CRIU's side of the figures is
/// measured by hand (docs/checkpoint.md), as CI machines have no CRIU.
#[test]
fn bench_refuses_a_criu_that_does_not_work() {
    let r = run(["bench", "--mib", "8", "--runs", "1", "--criu", "/bin/false"]).expect_code(1);
    assert!(r.stderr.contains("cannot compare with /bin/false") && r.stderr.contains("criu check"), "{}", r.dump());
    assert!(!r.stderr.contains("run 1/1"), "it ran anyway\n{}", r.dump());
}

/// `bench --live --writer`: the workload writes 1% of its pages every
/// 10 ms while it is copied ahead; its restored copy has, page for page,
/// what it had at the freeze (its check finds a page from before or after
/// it), and it goes on writing after the restore.
#[test]
fn bench_live_with_a_writer_restores_the_pages_of_the_freeze() {
    let r =
        run(["bench", "--mib", "64", "--pattern", "random", "--runs", "2", "--live", "--writer", "--json"]).success();
    let v = r.json();
    assert_eq!(v["writer"], true, "{}", r.dump());
    assert_eq!(v["all_verified"], true, "{}", r.dump());
    for run in v["cases"][0]["runs"].as_array().expect("runs") {
        let verdict = run["verdict"].as_str().unwrap_or_default();
        let writes: u64 = verdict.split(", ").find_map(|p| p.strip_suffix(" page writes")?.parse().ok()).unwrap_or(0);
        // 1% of 16384 pages per 10 ms: at least a few rounds of writing
        // while it was copied ahead.
        assert!(writes > 3 * 163, "the workload hardly wrote: {verdict}\n{}", r.dump());
    }
    let r = run(["bench", "--mib", "16", "--pattern", "compressible", "--runs", "1", "--live", "--writer"]).success();
    assert!(r.stdout.contains("writes 1% of its pages every 10 ms"), "{}", r.dump());
}

/// `bench --volume` on a btrfs subvolume: each dump snapshots the volume
/// (with unsynced writes on it) and each restore rolls it back first; the
/// figures include both, and the snapshots and files are gone afterwards.
#[test]
fn bench_with_a_volume_snapshots_and_rolls_back_each_run() {
    let fs = stasis_btrfs::scratch::Scratch::new(256)
        .unwrap_or_else(|e| panic!("a scratch btrfs on a loop device is needed: {e}"));
    let vol = fs.subvolume("data").unwrap();
    let volume = vol.to_str().unwrap();
    let r = run(["bench", "--mib", "8", "--pattern", "random", "--runs", "2", "--volume", volume, "--dirty-mib", "4"])
        .success();
    assert!(r.stdout.contains("of it volume ms") && r.stdout.contains("rollback ms"), "{}", r.dump());
    // The first restore's memory is checked; a lazy one would meet the
    // volume as that restore left it: none.
    assert!(!r.stdout.contains("lazy"), "{}", r.dump());
    assert!(r.stderr.contains("rolled btrfs subvolume"), "{}", r.dump());
    let r = run(["bench", "--mib", "8", "--pattern", "random", "--runs", "1", "--volume", volume, "--json"]).success();
    let v = r.json();
    let case = &v["cases"][0];
    assert_eq!(case["verified"], true, "{}", r.dump());
    for figure in ["volume_ms", "rollback_ms"] {
        assert!(case[figure]["median"].as_f64().is_some_and(|ms| ms > 0.0), "{figure}\n{}", r.dump());
    }
    assert!(
        case["volume_ms"]["median"].as_f64() <= case["frozen_ms"]["median"].as_f64(),
        "the volume snapshot is part of the freeze\n{}",
        r.dump()
    );
    let listed = run(["volume", "list", volume, "--json"]).success().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    assert_eq!(std::fs::read_dir(&vol).unwrap().count(), 0, "the bench left files on the volume");
}

#[test]
fn workload_is_hidden_from_help() {
    let r = run(["--help"]).success();
    assert!(r.stdout.contains("demo") && r.stdout.contains("bench"), "{}", r.dump());
    assert!(!r.stdout.lines().any(|l| l.trim_start().starts_with("workload")), "{}", r.dump());
    // Hidden, but there.
    run(["workload", "--help"]).success();
}
