//! `stasis dump`: capture a running process into an image.

use std::path::PathBuf;

use anyhow::Context;
use stasis_checkpoint::dump::{self, DumpOptions};
use stasis_image::WriteOptions;
use stasis_sys::Pid;

use crate::output::{bytes, json};
use crate::Outcome;

/// Capture a running process (all its threads, memory, registers, signal
/// state and open files) into an image directory.
///
/// The process is stopped while it is captured. Without --leave-running it
/// is killed once the image is complete and verified on disk; with it, it
/// runs on unchanged. If anything fails, or stasis is interrupted, the
/// process is let go unchanged. Before stopping the process, stasis checks
/// it for anything it cannot capture (unix sockets, established TCP
/// connections, child processes, ...) and lists them all.
///
/// Exit status: 0 when the image was written (and the process killed, unless
/// --leave-running), 1 otherwise, 2 for bad arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The process to capture.
    #[arg(long)]
    pid: i32,
    /// Directory to write the image to (created; must not hold an image).
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Let the process run on after the dump instead of killing it.
    #[arg(long)]
    leave_running: bool,
    /// Freeze through this cgroup's freezer (v2 cgroup.freeze or v1
    /// freezer.state); the process must be in it.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Store only the memory chunks this earlier image does not hold.
    #[arg(long, value_name = "DIR")]
    parent: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let bar = crate::output::Progress::new("dumping memory");
    let cancel = crate::cancel::cancel_on_signals()?;
    let opts = DumpOptions {
        pid: Pid::from_raw(args.pid),
        images: args.images.clone(),
        leave_running: args.leave_running,
        cgroup: args.cgroup,
        write: WriteOptions { parent: args.parent, ..WriteOptions::default() },
        cancel: Some(cancel),
        progress: bar.as_ref().map(|(_, f)| f.clone()),
    };
    let result = dump::dump(&opts);
    drop(bar);
    let report = result.with_context(|| format!("dump of process {} failed", args.pid))?;
    if args.json {
        json(&report)?;
    } else {
        println!(
            "dumped process {} ({} thread{}) to {}: {} of memory in {} stored; frozen {:.1} ms, total {:.1} ms; {}",
            report.pid,
            report.threads,
            if report.threads == 1 { "" } else { "s" },
            report.images.display(),
            bytes(report.write.logical_bytes),
            bytes(report.write.stored_bytes + report.write.manifest_bytes),
            report.frozen_us as f64 / 1000.0,
            report.total_us as f64 / 1000.0,
            if report.killed { "process killed" } else { "process left running" },
        );
    }
    Ok(Outcome::Success)
}
