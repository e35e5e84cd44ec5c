//! `stasis check`: can this host do what stasis needs?

use anyhow::bail;
use stasis_checkpoint::host::{self, Facility, HostReport, Need, Status};

use crate::output::json;
use crate::Outcome;

/// Probe this kernel for every facility stasis uses, by exercising each for
/// real (seizing a child with ptrace, creating a process at a chosen pid,
/// arming userfaultfd write-protection, freezing a cgroup, ...), and say for
/// each what is lost without it.
///
/// Exit status: 0 when everything dump and restore need is present (and
/// every facility named with --require), 1 otherwise, 2 for bad arguments.
/// Each probe cleans up after itself: no child, cgroup or mount is left.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also fail unless this optional facility is available (by its id, as
    /// shown by --json; e.g. device-mapper for LVM snapshots). Repeatable.
    #[arg(long, value_name = "ID")]
    require: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
struct Verdict<'a> {
    /// Whether dump and restore (and every --require) can work here.
    ready: bool,
    /// Ids of the facilities that are needed but missing.
    missing: Vec<&'a str>,
    #[serde(flatten)]
    report: &'a HostReport,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let report = host::probe();
    for id in &args.require {
        if !report.facilities.iter().any(|f| f.id == id) {
            let ids: Vec<_> = report.facilities.iter().map(|f| f.id).collect();
            bail!("--require {id}: no such facility; known ids are: {}", ids.join(", "));
        }
    }
    let needed = |f: &Facility| f.needed_for == Need::Required || args.require.iter().any(|r| r == f.id);
    let missing: Vec<&Facility> =
        report.facilities.iter().filter(|f| needed(f) && f.status != Status::Available).collect();
    let verdict =
        Verdict { ready: missing.is_empty(), missing: missing.iter().map(|f| f.id).collect(), report: &report };

    if args.json {
        json(&verdict)?;
    } else {
        print_text(&report, &needed);
        println!();
        if missing.is_empty() {
            println!("This host has everything stasis needs to dump and restore processes.");
        } else {
            let names: Vec<_> = missing.iter().map(|f| f.name).collect();
            println!("stasis cannot work fully here: {} missing.", names.join(", "));
        }
    }
    Ok(if verdict.ready { Outcome::Success } else { Outcome::Failure })
}

fn print_text(report: &HostReport, needed: &dyn Fn(&Facility) -> bool) {
    let k = &report.kernel;
    println!("kernel        {} {} ({})", k.release, k.machine, k.version);
    println!("vdso/vvar     {}", report.vdso_mappings.join(" "));
    if report.capabilities_missing.is_empty() {
        println!("capabilities  root has every capability");
    } else {
        println!("capabilities  root lacks {}", report.capabilities_missing.join(", "));
    }
    println!();
    let width = report.facilities.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for f in &report.facilities {
        let tag = match f.status {
            Status::Available => "yes",
            Status::Missing if needed(f) => "NO ",
            Status::Missing => "no ",
            Status::NotApplicable => "n/a",
        };
        let need = if needed(f) { "needed  " } else { "optional" };
        println!("  {tag}  {need}  {:width$}  {}", f.name, f.detail);
        if f.status != Status::Available {
            println!("       {:8}  {:width$}  without it: {}", "", "", f.without);
        }
    }
}
