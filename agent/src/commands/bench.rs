//! `stasis bench`: time dumps and restores of a process holding memory of a
//! given size and kind, and check every restore.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use stasis_checkpoint::dump;
use stasis_checkpoint::restore;
use stasis_sys::nix::sys::prctl;
use stasis_volume::Volume;

use crate::output::{bytes, json};
use crate::workload::{self, dir_bytes, Cancel, Pattern, Workload};
use crate::Outcome;

/// Time dump and restore of a process holding N MiB of memory, filled with
/// random or with compressible data, and check each restore.
///
/// For each size and pattern, --runs times: start a workload (stasis
/// itself) that fills its memory and records its checksum, dump it (which
/// kills it) into a fresh image, restore it, and have it check its memory.
/// Prints, per case, the median (and min-max) of: the time the process was
/// frozen, the whole dump, the dump's throughput (memory / dump time), the
/// image's size on disk and the restore. Images are removed after each run.
///
/// With --volume, each dump is a coherent snapshot (`stasis snapshot`):
/// the workload's files are on that volume, which is snapshotted while the
/// process is frozen, and each restore first rolls the volume back
/// (`--rollback-volume`). The table then also shows how much of the freeze
/// the volume snapshot took, and the rollback's time.
///
/// Without --volume, each image is then restored a second time with
/// `restore --lazy` and checked again: the table shows how soon the process
/// ran (its memory loading after) and how long until all of it was in.
///
/// With --live, each dump is a live snapshot, as `stasis dump
/// --leave-running` does by default: memory is copied while the workload
/// runs, only what it wrote since is copied frozen, and the workload runs
/// on (it is killed before the restore); the table then also shows the
/// time of that copy ahead. Without it, all memory is copied frozen
/// (`--no-pre-copy`), which shows the raw throughput.
///
/// With --writer, the workload does not sleep while it is dumped: it
/// writes 1% of its pages every 10 ms (a busy in-memory service), and
/// its check also finds any page whose copy is older or newer than the
/// rest of the image.
///
/// With --incremental, each workload is dumped first and let run
/// (untimed), then changes 1% of its pages (every 100th), and the dump
/// timed is an incremental one with the first as `--parent`; the table
/// adds the first image's size and the second's share of it, and each
/// restore reads through both images. With --keep-tracking too, the first
/// dump keeps tracking the workload's writes and the dump timed (a live
/// snapshot) reads only the pages written since.
///
/// With CRIU (`--criu PATH`, or a `criu` found on PATH that passes `criu
/// check`), each case is also run through it, as many times, on the same
/// workload: `criu dump --shell-job` (with --live: `criu pre-dump
/// --track-mem`, then `criu dump --leave-running` on top of it, CRIU's own
/// copy ahead; where CRIU cannot track written memory, as without
/// soft-dirty bits, the dump alone), `criu restore --shell-job
/// --restore-detached`, and the same
/// check of the restored memory. CRIU's frozen time is its own figure
/// (--display-stats); its dump and restore times are those of its
/// commands. The table then adds a row for CRIU and one of ratios
/// (stasis / CRIU: below 1 is stasis faster or smaller). stasis's image is
/// on disk (synced) when its dump returns, CRIU's may still be in the page
/// cache: each CRIU image is then synced (fsync of its files and
/// directories), and a last row gives CRIU's dump time with that sync, and
/// stasis's over it (the time to an image that survives a crash).
///
/// These are figures, not a pass/fail test of speed. Exit status: 0 when
/// every restore verified, 1 otherwise, 2 for bad arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Memory sizes, in MiB (at least 1).
    #[arg(long, value_name = "MIB,...", value_delimiter = ',', default_values_t = [256, 1024],
          value_parser = clap::value_parser!(u64).range(1..))]
    mib: Vec<u64>,
    /// What fills the memory.
    #[arg(long, value_name = "PATTERN,...", value_enum, value_delimiter = ',', default_values_t = [Pattern::Random, Pattern::Compressible])]
    pattern: Vec<Pattern>,
    /// Runs per size and pattern.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Where to write the images and the workloads' files (a new directory
    /// is made inside, and removed at the end).
    #[arg(long, value_name = "PATH", default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// A path on a btrfs subvolume or an LVM logical volume: take a
    /// snapshot of it in each dump and roll back to it before each restore
    /// (a directory is made there for the workloads' files and removed at
    /// the end, as are the snapshots).
    #[arg(long, value_name = "PATH")]
    volume: Option<PathBuf>,
    /// With --volume: MiB written to a file on the volume, not synced, just
    /// before each dump, so the volume snapshot has that much dirty data to
    /// take along (a workload's unsynced writes).
    #[arg(long, value_name = "MIB", default_value_t = 0, requires = "volume")]
    dirty_mib: u64,
    /// Dump as a live snapshot (copy memory ahead while the workload runs).
    #[arg(long)]
    live: bool,
    /// The workload writes 1% of its pages every 10 ms instead of sleeping.
    #[arg(long)]
    writer: bool,
    /// Time incremental dumps: each workload is dumped once and let run
    /// (untimed), changes 1% of its pages (every 100th), and the dump timed
    /// is then an incremental one (`--parent` the first): the table shows
    /// the first image's size too, and restores read through both. CRIU is
    /// not run (its incremental dumps need soft-dirty bits).
    #[arg(long, conflicts_with_all = ["writer", "volume"])]
    incremental: bool,
    /// With --incremental: the first dump keeps tracking what the workload
    /// writes (`dump --keep-tracking`), and the dump timed, a live snapshot
    /// (killing the workload after, unless --live), reads only the pages
    /// written since instead of every page.
    #[arg(long, requires = "incremental")]
    keep_tracking: bool,
    /// How the dumps compress memory, as `stasis dump --compress`: lz4
    /// (the default) or zstd.
    #[arg(long, value_name = "CODEC", value_enum, default_value_t = super::dump::Codec::Lz4)]
    compress: super::dump::Codec,
    /// The CRIU binary to run each case through too; without it, `criu`
    /// on PATH is used when it passes `criu check`.
    #[arg(long, value_name = "PATH")]
    criu: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Figures of one dump and restore.
#[derive(Clone, Debug, serde::Serialize)]
struct Run {
    frozen_us: u64,
    dump_us: u64,
    /// Memory described by the image, over the whole dump time.
    dump_mib_per_s: f64,
    /// Memory described by the image.
    logical_bytes: u64,
    /// Files of the image directory (pack and manifest).
    image_bytes: u64,
    restore_us: u64,
    /// With --volume: the volume snapshot, inside the freeze.
    volume_us: Option<u64>,
    /// With --volume: the rollback before the restore.
    rollback_us: Option<u64>,
    /// With --live (or --keep-tracking): the copy ahead, before the
    /// freeze, and the bytes it read.
    pre_copy_us: Option<u64>,
    read_ahead_bytes: Option<u64>,
    /// With --incremental: the first image's files (the parent).
    first_image_bytes: Option<u64>,
    /// The same image restored with --lazy (not with --volume): until the
    /// process ran, and from then until its memory was all in.
    lazy_running_us: Option<u64>,
    lazy_loaded_us: Option<u64>,
    /// CRIU's: its dump and then the sync of its image (stasis's dump
    /// includes that sync).
    synced_dump_us: Option<u64>,
    /// The workload's verdict on its memory after the restore.
    verdict: String,
    verified: bool,
    /// stasis's own phases (name, microseconds) of the dump and of the
    /// (eager) restore, as `dump --json` and `restore --json` show them:
    /// where a slow run spent its time. Empty for CRIU.
    dump_phases: Vec<(String, u64)>,
    restore_phases: Vec<(String, u64)>,
}

/// Median, min and max of one figure over the runs.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Spread { median, min: v[0], max: v[n - 1] }
    }
}

/// The figures of a case's runs, by one tool: median, min and max of each.
#[derive(Debug, serde::Serialize)]
struct Figures {
    frozen_ms: Spread,
    dump_ms: Spread,
    dump_mib_per_s: Spread,
    image_bytes: Spread,
    restore_ms: Spread,
    volume_ms: Option<Spread>,
    rollback_ms: Option<Spread>,
    /// With --live: the copy ahead (CRIU's pre-dump), before the freeze.
    pre_copy_ms: Option<Spread>,
    /// With --incremental: the first image (the parent), in bytes.
    first_image_bytes: Option<Spread>,
    lazy_running_ms: Option<Spread>,
    lazy_loaded_ms: Option<Spread>,
    /// CRIU's dump time with the sync of its image.
    synced_dump_ms: Option<Spread>,
    verified: bool,
    runs: Vec<Run>,
}

impl Figures {
    fn of(runs: Vec<Run>) -> Figures {
        let spread = |f: fn(&Run) -> f64| Spread::of(runs.iter().map(f).collect());
        let optional = |f: fn(&Run) -> Option<u64>| {
            runs.iter()
                .map(f)
                .collect::<Option<Vec<u64>>>()
                .map(|v| Spread::of(v.into_iter().map(|us| us as f64 / 1e3).collect()))
        };
        Figures {
            frozen_ms: spread(|r| r.frozen_us as f64 / 1e3),
            dump_ms: spread(|r| r.dump_us as f64 / 1e3),
            dump_mib_per_s: spread(|r| r.dump_mib_per_s),
            image_bytes: spread(|r| r.image_bytes as f64),
            restore_ms: spread(|r| r.restore_us as f64 / 1e3),
            volume_ms: optional(|r| r.volume_us),
            rollback_ms: optional(|r| r.rollback_us),
            pre_copy_ms: optional(|r| r.pre_copy_us),
            first_image_bytes: runs
                .iter()
                .map(|r| r.first_image_bytes.map(|b| b as f64))
                .collect::<Option<Vec<f64>>>()
                .map(Spread::of),
            lazy_running_ms: optional(|r| r.lazy_running_us),
            lazy_loaded_ms: optional(|r| r.lazy_loaded_us),
            synced_dump_ms: optional(|r| r.synced_dump_us),
            verified: runs.iter().all(|r| r.verified),
            runs,
        }
    }
}

/// The same case run through CRIU.
#[derive(Debug, serde::Serialize)]
struct CriuCase {
    #[serde(flatten)]
    figures: Figures,
    /// stasis's medians over CRIU's: frozen, dump, image, restore.
    ratios: Ratios,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Ratios {
    frozen: f64,
    dump: f64,
    image: f64,
    restore: f64,
    /// stasis's dump over CRIU's dump and the sync of its image.
    synced_dump: f64,
}

#[derive(Debug, serde::Serialize)]
struct Case {
    mib: u64,
    pattern: Pattern,
    #[serde(flatten)]
    figures: Figures,
    /// The same workloads through CRIU, when it runs here.
    criu: Option<CriuCase>,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    command: String,
    /// Whether the workloads wrote 1% of their pages every 10 ms.
    writer: bool,
    /// Whether incremental dumps went on from the first's write tracking.
    keep_tracking: bool,
    kernel: String,
    cpus: usize,
    /// CRIU's version (`criu --version`), when it was run too.
    criu: Option<String>,
    cases: Vec<Case>,
    all_verified: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let cancel = workload::cancel_on_signals()?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let root = workload::fresh_dir(&args.dir, "stasis-bench")?;
    let volume = match &args.volume {
        None => Ok(None),
        Some(path) => BenchVolume::new(path).map(Some),
    };
    let criu = match args.incremental {
        // Its incremental dumps need soft-dirty bits; its full ones would
        // not compare.
        true => {
            if args.criu.is_some() {
                eprintln!("stasis bench: note: --incremental runs stasis alone; --criu is not used");
            }
            None
        }
        false => Criu::find(args.criu.as_deref(), args.volume.is_some())?,
    };
    let result = volume.and_then(|v| bench(&args, &root, v.as_ref(), criu.as_ref(), &cancel));
    if let Err(e) = fs::remove_dir_all(&root) {
        eprintln!("stasis: cannot remove {}: {e}", root.display());
    }
    let cases = result?;
    let report = Report {
        command,
        writer: args.writer,
        keep_tracking: args.keep_tracking,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        criu: criu.map(|c| c.version),
        all_verified: cases.iter().all(|c| c.figures.verified && c.criu.as_ref().is_none_or(|k| k.figures.verified)),
        cases,
    };
    if args.json {
        json(&report)?;
    } else {
        print_table(&report);
    }
    Ok(if report.all_verified { Outcome::Success } else { Outcome::Failure })
}

/// The volume of `--volume`, and the directory made on it for the
/// workloads' files (removed on drop).
struct BenchVolume {
    volume: Arc<dyn Volume>,
    dir: PathBuf,
}

impl BenchVolume {
    fn new(path: &Path) -> anyhow::Result<BenchVolume> {
        let volume: Arc<dyn Volume> = Arc::from(super::volume::open(path)?);
        let dir = workload::fresh_dir(path, "stasis-bench")?;
        Ok(BenchVolume { volume, dir })
    }
}

impl Drop for BenchVolume {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("stasis: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// A run's volume snapshot, deleted when dropped.
struct BenchSnapshot {
    volume: Arc<dyn Volume>,
    name: String,
}

impl Drop for BenchSnapshot {
    fn drop(&mut self) {
        match self.volume.delete(&self.name) {
            Ok(()) | Err(stasis_volume::Error::NoSnapshot { .. }) => {}
            Err(e) => eprintln!("stasis: cannot delete snapshot {:?} of {}: {e}", self.name, self.volume.describe()),
        }
    }
}

fn bench(
    args: &Args,
    root: &Path,
    volume: Option<&BenchVolume>,
    criu: Option<&Criu>,
    cancel: &Cancel,
) -> anyhow::Result<Vec<Case>> {
    let exe = workload::stasis_exe()?;
    let mut cases = Vec::new();
    for &mib in &args.mib {
        for &pattern in &args.pattern {
            let mut runs = Vec::new();
            for n in 1..=args.runs {
                let case = format!("{mib}-{}-{n}", pattern.name());
                let dir = root.join(&case);
                let on_volume = volume.map(|v| (v, case.as_str()));
                let run = one_run(&exe, (mib, pattern), &dir, on_volume, args, cancel)
                    .with_context(|| format!("run {n} of {mib} MiB {} failed", pattern.name()))?;
                say(&format!("{mib} MiB {} run {n}/{}", pattern.name(), args.runs), &run);
                fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
                runs.push(run);
            }
            let mut criu_runs = Vec::new();
            for n in 1..=args.runs {
                let Some(criu) = criu else { break };
                let dir = root.join(format!("{mib}-{}-criu-{n}", pattern.name()));
                let run = criu
                    .one_run(&exe, (mib, pattern), &dir, args, cancel)
                    .with_context(|| format!("run {n} of {mib} MiB {} through CRIU failed", pattern.name()))?;
                say(&format!("{mib} MiB {} run {n}/{} through CRIU", pattern.name(), args.runs), &run);
                fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
                criu_runs.push(run);
            }
            let figures = Figures::of(runs);
            let criu = (!criu_runs.is_empty()).then(|| {
                let criu = Figures::of(criu_runs);
                let ratio = |ours: Spread, theirs: Spread| ours.median / theirs.median.max(f64::MIN_POSITIVE);
                let ratios = Ratios {
                    frozen: ratio(figures.frozen_ms, criu.frozen_ms),
                    dump: ratio(figures.dump_ms, criu.dump_ms),
                    image: ratio(figures.image_bytes, criu.image_bytes),
                    restore: ratio(figures.restore_ms, criu.restore_ms),
                    synced_dump: ratio(figures.dump_ms, criu.synced_dump_ms.unwrap_or(criu.dump_ms)),
                };
                CriuCase { figures: criu, ratios }
            });
            cases.push(Case { mib, pattern, figures, criu });
        }
    }
    Ok(cases)
}

/// One line on stderr for one run, `what` being which.
fn say(what: &str, run: &Run) {
    let ms = |us: u64| us as f64 / 1e3;
    let ahead = run.pre_copy_us.map_or(String::new(), |us| format!("copied ahead in {:.1} ms, ", ms(us)));
    let volume = match (run.volume_us, run.rollback_us) {
        (Some(v), Some(r)) => format!(" (volume snapshot {:.1} ms), rollback {:.1} ms", ms(v), ms(r)),
        _ => String::new(),
    };
    let lazy = match (run.lazy_running_us, run.lazy_loaded_us) {
        (Some(r), Some(l)) => format!(", lazy restore running in {:.1} ms (loaded {:.1} ms after)", ms(r), ms(l)),
        _ => String::new(),
    };
    let first = run.first_image_bytes.map_or(String::new(), |b| format!(" (the first: {})", bytes(b)));
    eprintln!(
        "stasis bench: {what}: {ahead}frozen {:.1} ms{volume}, dump {:.1} ms, image {}{first}, restore {:.1} ms{lazy}, {}",
        ms(run.frozen_us),
        ms(run.dump_us),
        bytes(run.image_bytes),
        ms(run.restore_us),
        run.verdict
    );
}

/// The memory workload of a run, started in `work` and ready; and how
/// long to wait for it at most.
fn memory_workload(
    exe: &Path,
    (mib, pattern): (u64, Pattern),
    work: &Path,
    writer: bool,
    cancel: &Cancel,
) -> anyhow::Result<(Workload, Duration)> {
    let mut args: Vec<String> =
        ["memory", "--mib", &mib.to_string(), "--pattern", pattern.name(), "--dir", &work.display().to_string()]
            .map(str::to_owned)
            .to_vec();
    if writer {
        args.push("--dirty".to_owned());
    }
    // Filling and checksumming take about a second per GiB in a debug
    // build; allow far more.
    let slack = Duration::from_secs(30 + mib / 16);
    let mut wl = Workload::spawn(exe, work, &args)?;
    wl.wait_ready(slack, cancel)?;
    Ok((wl, slack))
}

/// One dump and restore of `mib` MiB of `pattern`; with `volume` (and the
/// run's snapshot name), the workload's files are on it and the dump
/// snapshots it.
fn one_run(
    exe: &Path,
    (mib, pattern): (u64, Pattern),
    dir: &Path,
    volume: Option<(&BenchVolume, &str)>,
    args: &Args,
    cancel: &Cancel,
) -> anyhow::Result<Run> {
    let (dirty_mib, live) = (args.dirty_mib, args.live);
    let work = match volume {
        Some((v, name)) => v.dir.join(name),
        None => dir.join("work"),
    };
    let images = dir.join("image");
    let (mut wl, slack) = memory_workload(exe, (mib, pattern), &work, args.writer, cancel)?;

    let mut opts = workload::dump_options(wl.pid, &images, cancel);
    let mut first_image_bytes = None;
    if args.incremental {
        let first = dir.join("first");
        let mut first_opts = workload::dump_options(wl.pid, &first, cancel);
        (first_opts.pre_copy, first_opts.leave_running) = (true, true);
        first_opts.write.compression = args.compress.into();
        first_opts.keep_tracking = args.keep_tracking;
        let (_, kept) =
            dump::dump_keeping(&first_opts).with_context(|| format!("first dump of process {} failed", wl.pid))?;
        if args.keep_tracking {
            dump::tracking::hand_over(kept, exe).map_err(|why| anyhow::anyhow!("the tracking was not kept: {why}"))?;
        }
        first_image_bytes = Some(dir_bytes(&first));
        wl.change(slack, cancel)?;
        opts.write.parent = Some(first);
    }
    // A live snapshot lets the workload run on (its frozen time is then
    // the freeze alone, not the image's write); it is killed after.
    // Kept tracking is taken back by a live snapshot's copy ahead.
    let pre_copy = live || args.keep_tracking;
    opts.pre_copy = pre_copy;
    opts.leave_running = live;
    opts.write.compression = args.compress.into();
    // Deleted when the run ends, whichever way.
    let mut _snapshot = None;
    if let Some((v, name)) = volume {
        if dirty_mib > 0 {
            write_unsynced(&v.dir.join(format!("{name}.dirty")), dirty_mib)?;
        }
        let name = format!("stasis-bench-{}-{name}", std::process::id());
        opts.while_frozen = Some(super::snapshot::while_frozen(Arc::clone(&v.volume), name.clone())?);
        _snapshot = Some(BenchSnapshot { volume: Arc::clone(&v.volume), name });
    }
    let dumped = dump::dump(&opts).with_context(|| format!("dump of process {} failed", wl.pid))?;
    let image_bytes = dir_bytes(&images);
    match live {
        true => wl.kill_and_reap()?,
        false => wl.reap_killed()?,
    };

    let mut opts = workload::restore_options(&images, cancel);
    let mut rollback_us = None;
    if volume.is_some() {
        let started = Instant::now();
        opts.moved_devices = super::restore::volume_first(&images, true, false, &[], false)?;
        rollback_us = Some(started.elapsed().as_micros() as u64);
    }
    let restored = restore::restore(&opts).with_context(|| format!("restore from {} failed", images.display()))?;
    wl.restored(restored.pid);
    let mut verdict = wl.check(slack, cancel)?;
    // Once more, lazily (the volume is as the first restore left it: not
    // with --volume).
    let mut lazy = None;
    if volume.is_none() && verdict.starts_with("ok") {
        let failed = || format!("lazy restore from {} failed", images.display());
        // Restored, it must wait for a check of its own.
        let _ = fs::remove_file(wl.dir.join("check"));
        let (report, loading) = restore::restore_lazy(&opts).with_context(failed)?;
        wl.restored(report.pid);
        let loaded = loading.wait().map_err(|e| anyhow::anyhow!("{e}")).with_context(failed)?;
        lazy = Some((report.total_us, loaded.loading_us));
        let again = wl.check(slack, cancel)?;
        if !again.starts_with("ok") {
            verdict = format!("after the lazy restore: {again}");
        }
    }

    let logical = dumped.write.logical_bytes;
    let phase_us = |name: &str| dumped.phases.iter().find(|(n, _)| n == name).map_or(0, |(_, us)| *us);
    Ok(Run {
        frozen_us: dumped.frozen_us,
        dump_us: dumped.total_us,
        dump_mib_per_s: logical as f64 / (1 << 20) as f64 / (dumped.total_us.max(1) as f64 / 1e6),
        logical_bytes: logical,
        image_bytes,
        restore_us: restored.total_us,
        volume_us: volume.map(|_| phase_us("volume snapshot")),
        rollback_us,
        pre_copy_us: pre_copy.then(|| phase_us("pre-copy")),
        read_ahead_bytes: dumped.pre_copy.as_ref().map(|p| p.bytes_read),
        first_image_bytes,
        lazy_running_us: lazy.map(|(r, _)| r),
        lazy_loaded_us: lazy.map(|(_, l)| l),
        synced_dump_us: None,
        verified: verdict.starts_with("ok"),
        verdict,
        dump_phases: dumped.phases.clone(),
        restore_phases: restored.phases.clone(),
    })
}

/// fsync every file and directory under `dir`, and `dir`: what makes an
/// image written there survive a crash.
fn sync_tree(dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", path.display()))?;
        }
    }
    fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))
}

/// A CRIU binary that works here, to compare with.
struct Criu {
    exe: PathBuf,
    version: String,
    /// Whether it can track memory written (soft-dirty bits), which its
    /// copy ahead (pre-dump) needs.
    track_mem: bool,
}

impl Criu {
    /// `exe`, or `criu` on PATH; one given that does not work is an error,
    /// one found that does not is left out with a word on stderr.
    fn find(exe: Option<&Path>, with_volume: bool) -> anyhow::Result<Option<Criu>> {
        let (exe, given) = match exe {
            Some(e) => (e.to_path_buf(), true),
            None => match std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .map(|d| d.join("criu"))
                .find(|p| p.is_file())
            {
                Some(p) => (p, false),
                None => return Ok(None),
            },
        };
        let works = || -> anyhow::Result<String> {
            anyhow::ensure!(!with_volume, "--volume snapshots are stasis's alone");
            let out = std::process::Command::new(&exe)
                .arg("check")
                .output()
                .with_context(|| format!("cannot run {}", exe.display()))?;
            let said = String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_owned();
            anyhow::ensure!(out.status.success(), "`criu check` failed: {said}");
            let version = std::process::Command::new(&exe).arg("--version").output()?;
            // "Version: 4.2" -> "4.2".
            let first = String::from_utf8_lossy(&version.stdout).lines().next().unwrap_or("").trim().to_owned();
            Ok(first.strip_prefix("Version:").map_or(first.clone(), |v| v.trim().to_owned()))
        };
        match works() {
            Ok(version) => {
                let track = std::process::Command::new(&exe).args(["check", "--feature", "mem_dirty_track"]).output();
                let track_mem = track.is_ok_and(|o| o.status.success());
                if !track_mem {
                    eprintln!(
                        "stasis bench: CRIU cannot track written memory here (no soft-dirty bits): its dumps with \
                         --live copy all memory frozen, without a pre-dump"
                    );
                }
                Ok(Some(Criu { exe, version, track_mem }))
            }
            Err(e) if given => Err(e.context(format!("cannot compare with {}", exe.display()))),
            Err(e) => {
                eprintln!("stasis bench: not comparing with {}: {e:#}", exe.display());
                Ok(None)
            }
        }
    }

    /// One dump and restore through CRIU, of the same workload as
    /// [`one_run`], checked the same way.
    fn one_run(
        &self,
        exe: &Path,
        (mib, pattern): (u64, Pattern),
        dir: &Path,
        args: &Args,
        cancel: &Cancel,
    ) -> anyhow::Result<Run> {
        let work = dir.join("work");
        let images = dir.join("image");
        fs::create_dir_all(&images).with_context(|| format!("cannot create {}", images.display()))?;
        let (mut wl, slack) = memory_workload(exe, (mib, pattern), &work, args.writer, cancel)?;
        let pid = wl.pid.to_string();
        let mut pre_copy_us = None;
        let mut dump: Vec<&str> = vec!["dump", "-t", &pid, "--shell-job", "--display-stats"];
        let parent = dir.join("pre");
        if args.live && !self.track_mem {
            dump.push("--leave-running");
        } else if args.live {
            fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
            let started = Instant::now();
            self.command(&["pre-dump", "-t", &pid, "--track-mem", "-D"], &parent)?;
            pre_copy_us = Some(started.elapsed().as_micros() as u64);
            dump.extend(["--track-mem", "--leave-running", "--prev-images-dir", "../pre"]);
        }
        dump.push("-D");
        let started = Instant::now();
        let said = self.command(&dump, &images)?;
        let dump_us = started.elapsed().as_micros() as u64;
        let frozen_us = said
            .lines()
            .find_map(|l| l.strip_prefix("Frozen time:")?.trim().strip_suffix("us")?.trim().parse().ok())
            .context("`criu dump --display-stats` gave no frozen time")?;
        let image_bytes = dir_bytes(&images) + dir_bytes(&parent);
        let syncing = Instant::now();
        sync_tree(&images).and_then(|()| if parent.exists() { sync_tree(&parent) } else { Ok(()) })?;
        let synced_dump_us = dump_us + syncing.elapsed().as_micros() as u64;
        match args.live {
            true => wl.kill_and_reap()?,
            false => wl.reap_killed()?,
        };
        // The restored process is CRIU's child until CRIU exits, then this
        // one's, which waits for it after its check.
        prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
        let started = Instant::now();
        self.command(&["restore", "--shell-job", "--restore-detached", "-D"], &images)?;
        let restore_us = started.elapsed().as_micros() as u64;
        wl.restored(wl.pid);
        let verdict = wl.check(slack, cancel)?;
        let logical = mib << 20;
        Ok(Run {
            frozen_us,
            dump_us,
            dump_mib_per_s: logical as f64 / (1 << 20) as f64 / (dump_us.max(1) as f64 / 1e6),
            logical_bytes: logical,
            image_bytes,
            restore_us,
            volume_us: None,
            rollback_us: None,
            pre_copy_us,
            read_ahead_bytes: None,
            first_image_bytes: None,
            lazy_running_us: None,
            lazy_loaded_us: None,
            synced_dump_us: Some(synced_dump_us),
            verified: verdict.starts_with("ok"),
            verdict,
            dump_phases: Vec::new(),
            restore_phases: Vec::new(),
        })
    }

    /// `criu ARGS DIR` (the image directory last, also its log's place);
    /// what it printed.
    fn command(&self, args: &[&str], dir: &Path) -> anyhow::Result<String> {
        let out = std::process::Command::new(&self.exe)
            .args(args)
            .arg(dir)
            .args(["-o", "criu.log", "-v4"])
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", self.exe.display()))?;
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(
            out.status.success(),
            "`criu {}` failed ({}); see {}/criu.log: {}",
            args.join(" "),
            out.status,
            dir.display(),
            said.lines().last().unwrap_or_default()
        );
        Ok(said)
    }
}

/// `mib` MiB of incompressible bytes written to `path` and not synced.
fn write_unsynced(path: &Path, mib: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut block = vec![0u8; 1 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    for _ in 0..mib {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_ne_bytes());
        }
        file.write_all(&block).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!("command: {}", r.command);
    println!("host:    kernel {}, {} CPUs", r.kernel, r.cpus);
    println!("figures: median (min-max) of {} run(s) each", r.cases.first().map_or(0, |c| c.figures.runs.len()));
    if r.writer {
        println!("writer:  each workload writes 1% of its pages every 10 ms");
    }
    if r.cases.iter().any(|c| c.figures.first_image_bytes.is_some()) {
        println!("dumps:   incremental, after the workload changed 1% of its pages since a first (untimed) dump");
        if r.keep_tracking {
            println!("         which kept tracking its writes: the dump timed reads only the pages written since");
        }
    }
    if let Some(v) = &r.criu {
        println!("CRIU:    {v}, the same workloads (stasis/CRIU below 1: stasis faster or smaller)");
    }
    println!();
    let with_volume = r.cases.iter().any(|c| c.figures.volume_ms.is_some());
    let mut header = vec![
        "memory",
        "pattern",
        "frozen ms",
        "dump ms",
        "dump MiB/s",
        "image",
        "image/memory",
        "restore ms",
        "verified",
    ];
    let live = r.cases.iter().any(|c| c.figures.pre_copy_ms.is_some());
    let lazy = r.cases.iter().any(|c| c.figures.lazy_running_ms.is_some());
    if lazy {
        header.splice(8..8, ["lazy: running ms", "loaded ms"]);
    }
    if with_volume {
        header.splice(3..3, ["of it volume ms"]);
        header.splice(9..9, ["rollback ms"]);
    }
    if live {
        header.insert(2, "copied ahead ms");
    }
    let incremental = r.cases.iter().any(|c| c.figures.first_image_bytes.is_some());
    let first_at = header.iter().position(|h| *h == "image/memory").expect("a column") + 1;
    let dump_at = header.iter().position(|h| *h == "dump ms").expect("a column");
    if incremental {
        header.splice(first_at..first_at, ["first image", "image/first"]);
    }
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    let ms = |s: Spread| format!("{:.1} ({:.1}-{:.1})", s.median, s.min, s.max);
    let or_dash = |s: Option<Spread>| s.map_or_else(|| "-".into(), ms);
    // A tool's row of a case, after its two labels.
    let row = |labels: [String; 2], f: &Figures, logical: u64| {
        let mut row = labels.to_vec();
        row.extend([
            ms(f.frozen_ms),
            ms(f.dump_ms),
            format!("{:.0} ({:.0}-{:.0})", f.dump_mib_per_s.median, f.dump_mib_per_s.min, f.dump_mib_per_s.max),
            bytes(f.image_bytes.median as u64),
            format!("{:.1}%", f.image_bytes.median / logical as f64 * 100.0),
            ms(f.restore_ms),
            if f.verified { "ok".into() } else { "FAILED".into() },
        ]);
        if lazy {
            row.splice(8..8, [or_dash(f.lazy_running_ms), or_dash(f.lazy_loaded_ms)]);
        }
        if with_volume {
            row.insert(3, or_dash(f.volume_ms));
            row.insert(9, or_dash(f.rollback_ms));
        }
        if live {
            row.insert(2, or_dash(f.pre_copy_ms));
        }
        if incremental {
            let (first, ratio) = match f.first_image_bytes {
                Some(b) => (bytes(b.median as u64), format!("{:.1}%", f.image_bytes.median / b.median * 100.0)),
                None => ("-".into(), "-".into()),
            };
            row.splice(first_at..first_at, [first, ratio]);
        }
        row
    };
    for c in &r.cases {
        let logical = c.figures.runs.iter().map(|r| r.logical_bytes).max().unwrap_or(0).max(1);
        rows.push(row([format!("{} MiB", c.mib), c.pattern.name().to_owned()], &c.figures, logical));
        // CRIU's figures, then stasis's over them (no volume with CRIU).
        if let Some(k) = &c.criu {
            rows.push(row([String::new(), "CRIU".to_owned()], &k.figures, logical));
            let x = |r: f64| format!("{r:.2}x");
            let mut ratios = vec![
                String::new(),
                "stasis/CRIU".to_owned(),
                x(k.ratios.frozen),
                x(k.ratios.dump),
                "-".into(),
                x(k.ratios.image),
                "-".into(),
                x(k.ratios.restore),
                "-".into(),
            ];
            if lazy {
                ratios.splice(8..8, ["-".to_owned(), "-".to_owned()]);
            }
            if live {
                ratios.insert(2, "-".into());
            }
            rows.push(ratios);
            if let Some(synced) = k.figures.synced_dump_ms {
                let mut rows_of = |label: &str, dump: String| {
                    let mut r = vec![String::new(), label.to_owned()];
                    r.resize(header.len(), "-".to_owned());
                    r[dump_at] = dump;
                    rows.push(r);
                };
                rows_of("CRIU + sync", ms(synced));
                rows_of("stasis/(CRIU + sync)", x(k.ratios.synced_dump));
            }
        }
    }
    let widths: Vec<usize> = (0..header.len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| if i < 2 { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_middle() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}
