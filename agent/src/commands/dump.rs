//! `stasis dump`: capture a running process into an image.

use std::path::PathBuf;

use anyhow::Context;
use stasis_checkpoint::dump::{self, DumpOptions};
use stasis_checkpoint::freeze::Target;
use stasis_image::{Compression, WriteOptions};
use stasis_sys::Pid;

use crate::output::{bytes, json};
use crate::Outcome;

/// Capture a running process tree (every process's threads, memory,
/// registers, signal state and open files, and the links between them)
/// into an image directory.
///
/// What is captured is the process given by --pid and all its descendants
/// (zombies too): the whole tree, always. With --cgroup alone, it is every
/// process of that cgroup (and of the cgroups below it) with their
/// descendants.
///
/// The processes are stopped while they are captured, briefly: their
/// private memory is first copied while they run (write-protected through
/// userfaultfd, so the kernel tracks what they write), and only what they
/// wrote since is copied while they are stopped. Shared memory is copied
/// stopped. On a kernel without userfaultfd WP_ASYNC (Linux 6.7), all of it
/// is (said on stderr). Without
/// --leave-running they are killed once the image is complete and verified
/// on disk; with it, they run on unchanged. If anything fails, or stasis is
/// interrupted, they are let go unchanged. Before stopping anything, stasis
/// checks the tree for what it cannot capture (netlink sockets, io_uring,
/// POSIX message queues, ...) and lists it all.
///
/// Established TCP connections are captured through TCP_REPAIR. While the
/// dump reads them, and from a dump that kills the tree until its restore,
/// an nftables table of stasis's (stasis_<pid>_<time>) drops their incoming
/// packets, so peers retransmit instead of being reset; restore removes it.
///
/// Exit status: 0 when the image was written (and the processes killed,
/// unless --leave-running), 1 otherwise, 2 for bad arguments.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").args(["pid", "cgroup"]).required(true).multiple(true)))]
pub struct Args {
    /// The process to capture, with all its descendants.
    #[arg(long)]
    pid: Option<i32>,
    /// Accepted for clarity: a process is always captured with its
    /// descendants.
    #[arg(long)]
    tree: bool,
    /// Directory to write the image to (created; must not hold an image).
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Let the processes run on after the dump instead of killing them.
    #[arg(long)]
    leave_running: bool,
    /// Freeze through this cgroup's freezer (v2 cgroup.freeze or v1
    /// freezer.state): nothing in it can fork while the tree is stopped.
    /// With --pid, that process must be in it; without, every process of
    /// the cgroup is captured.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Copy all memory with the processes stopped, instead of first
    /// copying it while they run (the default live snapshot, which stops
    /// them only to copy what they wrote since).
    #[arg(long)]
    no_pre_copy: bool,
    /// Keep copying memory ahead, in rounds, until what the tree wrote
    /// since the last round should take no longer than MS milliseconds to
    /// copy frozen; if the tree writes faster than stasis copies, so that
    /// this cannot be reached, the dump is refused and the tree runs on.
    /// Stopping the threads and reading their state come on top (a few
    /// ms); memory that cannot be tracked is copied frozen too.
    #[arg(long, value_name = "MS", conflicts_with = "no_pre_copy", value_parser = positive_ms)]
    max_freeze: Option<f64>,
    /// Keep tracking what the processes write after this dump, so that
    /// the next dump of them with --parent this image reads only the
    /// memory written since (a dump of 1 GiB with 1% written since reads
    /// 1% of it instead of all). Their userfaultfds are kept by a small
    /// process of stasis's, `stasis hold-tracking` (its pid is printed),
    /// which the next dump of them stops, and which exits with them.
    /// Killing it ends the tracking: nothing is lost, the next dump reads
    /// everything. Needs --leave-running and the live snapshot.
    #[arg(long, requires = "leave_running", conflicts_with = "no_pre_copy")]
    keep_tracking: bool,
    /// Dump a TCP listener that has connections waiting to be accepted,
    /// leaving them out (their clients see the connection reset after the
    /// restore), instead of refusing it.
    #[arg(long)]
    skip_in_flight: bool,
    /// Store only the memory chunks this earlier image does not hold: an
    /// incremental image, restored with the parent beside it (its path is
    /// recorded relative to this image). Chunks are cut as the parent's
    /// were (its --chunk-size).
    #[arg(long, value_name = "DIR")]
    parent: Option<PathBuf>,
    /// Size of the chunks memory is cut into (a multiple of 4 KiB, from
    /// 4K to 4M; default 64K). A chunk changed in part is stored whole in
    /// an incremental image: smaller chunks make those smaller when a
    /// process writes here and there between dumps (16K: 1% of pages
    /// written, spread out, is about 4% of the memory stored again; 64K,
    /// 16%), at the cost of a larger index.
    #[arg(long, value_name = "SIZE", value_parser = chunk_size)]
    chunk_size: Option<u32>,
    /// How memory chunks are compressed: lz4 (the default) writes about
    /// twice as fast as zstd and restores three times as fast; zstd, at
    /// level 1, makes images about half as large (memory of text: 17% of
    /// its size against 30%). A killed tree stays frozen until its image is
    /// written. Chunks that do not shrink are stored as they are either
    /// way.
    #[arg(long, value_name = "CODEC", value_enum, default_value_t = Codec::Lz4)]
    compress: Codec,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// How memory chunks are compressed (`--compress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Codec {
    Lz4,
    Zstd,
}

impl From<Codec> for Compression {
    fn from(codec: Codec) -> Self {
        match codec {
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd { level: 1 },
        }
    }
}

/// A size in bytes, with an optional K or M suffix (powers of 1024).
fn chunk_size(s: &str) -> Result<u32, String> {
    let (digits, unit) = match s.strip_suffix(['K', 'k']) {
        Some(d) => (d, 1024),
        None => match s.strip_suffix(['M', 'm']) {
            Some(d) => (d, 1 << 20),
            None => (s, 1),
        },
    };
    match digits.parse::<u32>().ok().and_then(|n| n.checked_mul(unit)) {
        Some(n) if n % 4096 == 0 && (4096..=4 << 20).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a multiple of 4K from 4K to 4M")),
    }
}

/// A duration in milliseconds, above zero.
fn positive_ms(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(ms) if ms > 0.0 && ms.is_finite() => Ok(ms),
        _ => Err(format!("{s:?} is not a number of milliseconds above zero")),
    }
}

/// The image's chunk size: the one asked for, else the parent's, else the
/// default; one that differs from the parent's is refused (nothing would
/// be shared with it).
fn write_options(parent: Option<PathBuf>, asked: Option<u32>, compress: Codec) -> anyhow::Result<WriteOptions> {
    let defaults = WriteOptions::default();
    let of_parent = match &parent {
        Some(p) => Some(
            stasis_image::Image::open(p)
                .with_context(|| format!("cannot use {} as the parent image", p.display()))?
                .info()
                .chunk_size,
        ),
        None => None,
    };
    let chunk_size = match (asked, of_parent) {
        (Some(a), Some(p)) if a != p => anyhow::bail!(
            "--chunk-size {a} differs from the parent image's chunk size, {p}: no chunk of it would be shared"
        ),
        (Some(a), _) => a,
        (None, Some(p)) => p,
        (None, None) => defaults.chunk_size,
    };
    Ok(WriteOptions { parent, chunk_size, compression: compress.into(), ..defaults })
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    run_with(args, None)
}

impl Args {
    /// The image directory asked for.
    pub fn images(&self) -> &std::path::Path {
        &self.images
    }
}

/// The dump, with a volume snapshot taken while the tree is frozen when
/// `volume` is given (`stasis snapshot`).
pub fn run_with(args: Args, volume: Option<dump::WhileFrozen>) -> anyhow::Result<Outcome> {
    let coherent = volume.is_some();
    let bar = crate::output::Progress::new("dumping memory");
    let cancel = crate::cancel::cancel_on_signals()?;
    let _ = args.tree;
    let target = match (args.pid, &args.cgroup) {
        (Some(pid), _) => Target::Tree(Pid::from_raw(pid)),
        (None, Some(dir)) => Target::Cgroup(dir.clone()),
        (None, None) => unreachable!("clap requires one"),
    };
    let what = match &target {
        Target::Tree(pid) => format!("process {pid}"),
        Target::Cgroup(dir) => format!("cgroup {}", dir.display()),
    };
    let opts = DumpOptions {
        target,
        images: args.images.clone(),
        leave_running: args.leave_running,
        cgroup: args.cgroup,
        write: write_options(args.parent, args.chunk_size, args.compress)?,
        cancel: Some(cancel),
        progress: bar.as_ref().map(|(_, f)| f.clone()),
        while_frozen: volume,
        pre_copy: !args.no_pre_copy,
        skip_in_flight: args.skip_in_flight,
        max_freeze: args.max_freeze.map(|ms| std::time::Duration::from_secs_f64(ms / 1e3)),
        keep_tracking: args.keep_tracking,
    };
    let result = dump::dump_keeping(&opts);
    drop(bar);
    let (mut report, kept) = result.with_context(|| format!("dump of {what} failed"))?;
    if args.keep_tracking {
        report.tracking = Some(keep_tracking(kept));
    }
    if args.json {
        json(&report)?;
    } else {
        if coherent {
            let us = report.phases.iter().find(|(n, _)| n == "volume snapshot").map_or(0, |(_, us)| *us);
            println!(
                "volume snapshot taken while the tree was frozen: {:.1} ms of the {:.1} ms frozen",
                us as f64 / 1000.0,
                report.frozen_us as f64 / 1000.0
            );
        }
        let what = if report.processes + report.zombies == 1 {
            format!("process {}", report.pid)
        } else {
            let zombies = match report.zombies {
                0 => String::new(),
                1 => " and 1 zombie".into(),
                n => format!(" and {n} zombies"),
            };
            format!("the tree of process {} ({} processes{zombies}", report.pid, report.processes)
                + &format!(", {} threads)", report.threads)
        };
        let threads = if report.processes + report.zombies == 1 {
            format!(" ({} thread{})", report.threads, if report.threads == 1 { "" } else { "s" })
        } else {
            String::new()
        };
        println!(
            "dumped {what}{threads} to {}: {} of memory in {} stored; frozen {:.1} ms, total {:.1} ms; {}",
            report.images.display(),
            bytes(report.write.logical_bytes),
            bytes(report.write.stored_bytes + report.write.manifest_bytes),
            report.frozen_us as f64 / 1000.0,
            report.total_us as f64 / 1000.0,
            match (report.killed, report.processes) {
                (true, 1) => "process killed",
                (true, _) => "processes killed",
                (false, 1) => "process left running",
                (false, _) => "processes left running",
            },
        );
        if let Some(pre) = report.pre_copy.as_ref().filter(|p| p.bytes_read > 0) {
            let predicted = pre.predicted_freeze_us.map_or(String::new(), |us| {
                format!(
                    " ({} written since, expected to take {:.1} ms frozen)",
                    bytes(pre.left_for_freeze),
                    us as f64 / 1e3
                )
            });
            println!(
                "live snapshot: {} copied while running in {} round{}, {} of it unchanged at the freeze{predicted}",
                bytes(pre.bytes_read),
                pre.rounds + 1,
                if pre.rounds == 0 { "" } else { "s" },
                bytes(pre.bytes_used)
            );
        }
    }
    if let Some(t) = &report.tracking {
        match (t.holder, &t.not_kept) {
            (Some(_), _) if args.json => {}
            (Some(holder), _) => println!(
                "write tracking kept by process {holder} ({} process{}): the next dump with --parent {} reads \
                 only what is written from now on",
                t.processes,
                if t.processes == 1 { "" } else { "es" },
                report.images.display()
            ),
            (None, why) => {
                eprintln!("stasis: warning: the write tracking is not kept: {}", why.as_deref().unwrap_or("unknown"))
            }
        }
    }
    Ok(Outcome::Success)
}

/// Hand the tracking a dump kept to a holder (this program, as `stasis
/// hold-tracking`).
fn keep_tracking(kept: Vec<dump::tracking::Kept>) -> dump::tracking::KeptReport {
    let processes = kept.len();
    let handed = std::env::current_exe()
        .map_err(|e| format!("cannot find the stasis program: {e}"))
        .and_then(|exe| dump::tracking::hand_over(kept, &exe));
    match handed {
        Ok(holder) => dump::tracking::KeptReport { processes, holder: Some(holder), not_kept: None },
        Err(why) => dump::tracking::KeptReport { processes: 0, holder: None, not_kept: Some(why) },
    }
}

/// Keep the write tracking a dump handed over (`dump --keep-tracking`),
/// until the processes exit or the next dump of them takes it back. Not
/// for use by hand.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// The dump handing it over.
    #[arg(long, value_name = "PID")]
    from: i32,
}

pub fn hold(args: HoldArgs) -> anyhow::Result<Outcome> {
    dump::tracking::hold(Pid::from_raw(args.from), std::io::stdin().lock(), std::io::stdout().lock())
        .map_err(|why| anyhow::anyhow!("cannot hold the write tracking: {why}"))?;
    Ok(Outcome::Success)
}
