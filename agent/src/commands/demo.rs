//! `stasis demo`: dump a running process, kill it, bring it back, and let
//! it check that it lost nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stasis_checkpoint::dump;
use stasis_checkpoint::restore::{self, describe_fd};
use stasis_image::records::fd::Kind as FdKind;
use stasis_image::Image;

use crate::output::bytes;
use crate::workload::{self, parse_tick, Cancel, Workload};
use crate::Outcome;

/// Show a checkpoint and restore end to end, with nothing to set up.
///
/// Starts a small process (stasis itself, as a counter that appends a tick
/// with a running checksum to a log file five times a second), dumps it to
/// an image (which kills it), shows what the image holds, restores it at
/// the same pid, shows it carry on from the tick where it stopped, and asks
/// it to check its in-memory counter and checksum against its log.
///
/// Everything goes in a new directory under --dir, removed at the end
/// unless --keep. Exit status: 0 when the restored process verified itself,
/// 1 otherwise, 2 for bad arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the directory with the image and the workload's files, and
    /// print its path.
    #[arg(long)]
    keep: bool,
    /// Where to make the demo's directory.
    #[arg(long, value_name = "PATH", default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// How long to let the process run before the dump, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    run_for: f64,
}

/// Time between ticks of the counter.
const TICK: Duration = Duration::from_millis(200);

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let cancel = workload::cancel_on_signals()?;
    let root = workload::fresh_dir(&args.dir, "stasis-demo")?;
    let result = demo(&root, &args, &cancel);
    if args.keep {
        println!("kept {} (image in image/, the workload's files in work/)", root.display());
    } else if let Err(e) = fs::remove_dir_all(&root) {
        eprintln!("stasis: cannot remove {}: {e}", root.display());
    }
    let outcome = result?;
    match outcome {
        Outcome::Success => println!("demo passed: the restored process found its state intact"),
        Outcome::Failure => println!("demo FAILED: the restored process did not verify"),
    }
    Ok(outcome)
}

fn demo(root: &Path, args: &Args, cancel: &Cancel) -> anyhow::Result<Outcome> {
    let work = root.join("work");
    let images = root.join("image");
    let log_path = work.join("counter.log");
    let mut tail = Tail::new(work.join("stdout.log"));

    println!("stasis demo: checkpoint a running process, kill it, and bring it back");
    println!();
    let wl_args = vec![
        "counter".to_owned(),
        "--dir".to_owned(),
        work.display().to_string(),
        "--interval-ms".to_owned(),
        TICK.as_millis().to_string(),
    ];
    let exe = workload::stasis_exe()?;
    println!("[1/6] Starting the workload: {}", Workload::command_line(&exe, &wl_args));
    let mut wl = Workload::spawn(&exe, &work, &wl_args)?;
    wl.wait_ready(Duration::from_secs(30), cancel)?;
    println!(
        "      pid {}: every {} ms it appends \"tick N checksum X\" to {} (X chains a hash over every tick, kept in memory)",
        wl.pid,
        TICK.as_millis(),
        log_path.display()
    );
    println!("      its output:");
    let run_for = Duration::from_secs_f64(args.run_for.max(0.0));
    let until = Instant::now() + run_for;
    while Instant::now() < until {
        tail.show();
        workload_alive(&wl)?;
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("interrupted");
        }
        sleep(Duration::from_millis(50));
    }
    tail.show();

    println!();
    println!("[2/6] Dumping process {} to {}", wl.pid, images.display());
    println!("      (it is frozen while captured, and killed once the image is verified on disk)");
    let opts = workload::dump_options(wl.pid, &images, cancel);
    let report = dump::dump(&opts).with_context(|| format!("dump of process {} failed", wl.pid))?;
    println!(
        "      frozen {:.1} ms, dump took {:.1} ms in all; {} of memory, stored in {} ({} pack + {} manifest)",
        report.frozen_us as f64 / 1000.0,
        report.total_us as f64 / 1000.0,
        bytes(report.write.logical_bytes),
        bytes(report.write.stored_bytes + report.write.manifest_bytes),
        bytes(report.write.stored_bytes),
        bytes(report.write.manifest_bytes),
    );
    let before = last_tick(&log_path)?;
    println!("      before dump: tick {} checksum {:016x}", before.0, before.1);

    println!();
    println!("[3/6] What the image holds");
    describe_image(&images)?;

    println!();
    println!("[4/6] Reaping the dumped process, so that its pid {} is free for the restore", wl.pid);
    let how = wl.reap_killed()?;
    println!("      it ended: {how}");

    println!();
    println!("[5/6] Restoring from {}", images.display());
    let opts = workload::restore_options(&images, cancel);
    let report = restore::restore(&opts).with_context(|| format!("restore from {} failed", images.display()))?;
    wl.restored(report.pid);
    println!(
        "      process {} runs again ({} thread{}), restore took {:.1} ms",
        report.pid,
        report.threads,
        if report.threads == 1 { "" } else { "s" },
        report.total_us as f64 / 1000.0
    );
    let after = next_tick(&log_path, before.0, Duration::from_secs(10), cancel)?;
    println!("      after restore: tick {} checksum {:016x}", after.0, after.1);
    println!("      its output goes on where it was:");
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        tail.show();
        sleep(Duration::from_millis(50));
    }
    tail.show();

    println!();
    println!("[6/6] Asking it to check itself: counter and checksum in memory against counter.log");
    let verdict = wl.check(Duration::from_secs(30), cancel)?;
    tail.show();
    println!("      verdict: {verdict}");
    println!();
    Ok(if verdict.starts_with("ok") { Outcome::Success } else { Outcome::Failure })
}

fn workload_alive(wl: &Workload) -> anyhow::Result<()> {
    if !Path::new(&format!("/proc/{}", wl.pid)).exists() {
        bail!("the workload exited; see {}/stdout.log", wl.dir.display());
    }
    Ok(())
}

/// The last `tick N checksum X` of the log.
fn last_tick(log: &Path) -> anyhow::Result<(u64, u64)> {
    let text = fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    text.lines().rev().find_map(parse_tick).with_context(|| format!("no tick in {}", log.display()))
}

/// Wait for the tick after tick `after` to appear in the log.
fn next_tick(log: &Path, after: u64, timeout: Duration, cancel: &Cancel) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
        if let Some(t) = text.lines().filter_map(parse_tick).find(|t| t.0 > after) {
            return Ok(t);
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("interrupted");
        }
        if Instant::now() >= deadline {
            bail!("the restored process wrote no tick after tick {after} in {timeout:?}");
        }
        sleep(Duration::from_millis(20));
    }
}

/// A few lines on the image, like `stasis inspect`.
fn describe_image(dir: &Path) -> anyhow::Result<()> {
    let image = Image::open(dir).with_context(|| format!("cannot read image {}", dir.display()))?;
    let i = image.inspect();
    println!(
        "      memory  {} in {} regions; {} chunks stored, {} packed",
        bytes(i.memory.logical_bytes),
        i.memory.regions.len(),
        i.chunks.stored,
        bytes(i.chunks.stored_bytes)
    );
    let Some(tree) = image.processes() else { bail!("image {} holds no process", dir.display()) };
    for p in &tree.processes {
        let tids: Vec<String> = p.threads.iter().map(|t| t.tid.to_string()).collect();
        println!(
            "      process {} (parent {}): {} thread{} [{}], {} mappings, {} fds",
            p.pid,
            p.ppid,
            p.threads.len(),
            if p.threads.len() == 1 { "" } else { "s" },
            tids.join(" "),
            p.vmas.len(),
            p.fds.len()
        );
        for f in &p.fds {
            let what = match &f.kind {
                Some(kind) => {
                    let path = match kind {
                        FdKind::File(r) => r.path.as_str(),
                        FdKind::Device(d) => d.path.as_str(),
                        FdKind::Tty(t) => t.path.as_str(),
                        _ => "",
                    };
                    format!("{} {path}", describe_fd(kind))
                }
                None => "?".into(),
            };
            let dup = f.same_as.map(|of| format!(" (same file description as fd {of})")).unwrap_or_default();
            println!("        fd {:>2}  {}{dup}", f.fd, what.trim_end());
        }
    }
    Ok(())
}

/// Shows the lines a file gains, indented.
struct Tail {
    path: PathBuf,
    shown: usize,
}

impl Tail {
    fn new(path: PathBuf) -> Self {
        Tail { path, shown: 0 }
    }

    fn show(&mut self) {
        let Ok(text) = fs::read_to_string(&self.path) else { return };
        // Only whole lines: the writer may be half-way through one.
        let Some(end) = text.rfind('\n') else { return };
        if end < self.shown {
            return;
        }
        for line in text[self.shown..end].lines() {
            println!("        | {line}");
        }
        self.shown = end + 1;
    }
}
