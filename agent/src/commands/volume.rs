//! `stasis volume`: the copy-on-write snapshots of a volume, by hand.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use stasis_volume::{Detected, Snapshot, Volume};

use crate::output::json;
use crate::Outcome;

/// Snapshots of the volume a path is on: a btrfs subvolume or an LVM
/// logical volume, found from the path (btrfs by its filesystem type, LVM
/// by the device-mapper device behind the mount, confirmed with `lvs`).
///
/// btrfs snapshots are read-only subvolumes in `.stasis-snapshots/` beside
/// the subvolume (inside it when it is a mount point); LVM snapshots are
/// thin snapshots of a thin volume, or classic snapshots with a COW area of
/// their own. See docs/volumes.md.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Make a read-only snapshot of the volume, now.
    Snapshot {
        /// A path on the volume (its mount point, or any file in it).
        volume: PathBuf,
        /// The snapshot's name (one path component).
        name: String,
        /// Print the snapshot made as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the volume's snapshots, oldest first.
    List {
        /// A path on the volume (its mount point, or any file in it).
        volume: PathBuf,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot.
    Delete {
        /// A path on the volume (its mount point, or any file in it).
        volume: PathBuf,
        /// The snapshot's name.
        name: String,
    },
    /// Make the volume's contents those of a snapshot again. Everything
    /// written to the volume since is lost. Refused, naming them, while
    /// processes use the volume (open files, mappings, working directory):
    /// stop them first. A volume that is a mount point (an LVM volume, a
    /// btrfs subvolume mounted by itself) is unmounted and mounted again.
    /// The snapshot stays (with its id), to roll back to again.
    Rollback {
        /// A path on the volume (its mount point, or any file in it).
        volume: PathBuf,
        /// The snapshot's name.
        name: String,
    },
    /// Write a snapshot to a file (or stdout: -) as a stream `import`
    /// takes; with --parent, only what changed since that snapshot (btrfs).
    Export {
        /// A path on the volume (its mount point, or any file in it).
        volume: PathBuf,
        /// The snapshot to export.
        name: String,
        /// Where to write ("-": stdout).
        #[arg(short, long)]
        output: PathBuf,
        /// An older snapshot the receiving side has already.
        #[arg(long)]
        parent: Option<String>,
    },
    /// Read a stream `export` wrote (from a file, or stdin: -) and make it a
    /// snapshot of this volume.
    Import {
        /// A path on the volume (its mount point, or any file in it).
        volume: PathBuf,
        /// Where to read ("-": stdin).
        #[arg(short, long)]
        input: PathBuf,
        /// Print the snapshot made as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The volume `path` is on, with the backend that handles it.
pub fn open(path: &Path) -> anyhow::Result<Box<dyn Volume>> {
    match stasis_volume::detect(path)? {
        Detected::Btrfs { subvolume } => Ok(Box::new(stasis_btrfs::BtrfsVolume::open(&subvolume)?)),
        detected @ Detected::Lvm { .. } => Ok(Box::new(stasis_lvm::LvmVolume::from_detected(&detected)?)),
    }
}

#[derive(serde::Serialize)]
struct Shown<'a> {
    name: &'a str,
    id: &'a str,
    location: String,
    created: u64,
    detail: &'a str,
}

fn shown(s: &Snapshot) -> Shown<'_> {
    Shown {
        name: &s.name,
        id: &s.id,
        location: s.location.display().to_string(),
        created: s.created,
        detail: &s.detail,
    }
}

fn line(s: &Snapshot) -> String {
    let when = if s.created > 0 {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.created)).to_string()
    } else {
        "-".to_owned()
    };
    format!("{:<24} {when:<20} {:<36} {} ({})", s.name, s.id, s.location.display(), s.detail)
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    match args.action {
        Action::Snapshot { volume, name, json: as_json } => {
            let v = open(&volume)?;
            let s = v.snapshot(&name)?;
            if as_json {
                json(&shown(&s))?;
            } else {
                println!("{}: snapshot {} at {}", v.describe(), s.name, s.location.display());
            }
        }
        Action::List { volume, json: as_json } => {
            let v = open(&volume)?;
            let list = v.list()?;
            if as_json {
                json(&list.iter().map(shown).collect::<Vec<_>>())?;
            } else if list.is_empty() {
                println!("{}: no snapshots", v.describe());
            } else {
                for s in &list {
                    println!("{}", line(s));
                }
            }
        }
        Action::Delete { volume, name } => {
            let v = open(&volume)?;
            v.delete(&name)?;
            println!("{}: deleted snapshot {name}", v.describe());
        }
        Action::Rollback { volume, name } => {
            let v = open(&volume)?;
            v.rollback(&name)?;
            println!("{}: rolled back to snapshot {name}", v.describe());
        }
        Action::Export { volume, name, output, parent } => {
            let v = open(&volume)?;
            let mut out: Box<dyn Write> = if output == Path::new("-") {
                Box::new(BufWriter::new(std::io::stdout().lock()))
            } else {
                let f = File::create(&output).with_context(|| format!("cannot create {}", output.display()))?;
                Box::new(BufWriter::new(f))
            };
            v.export(&name, parent.as_deref(), &mut out)?;
            out.flush().context("writing the export")?;
        }
        Action::Import { volume, input, json: as_json } => {
            let v = open(&volume)?;
            let s = if input == Path::new("-") {
                v.import(&mut std::io::stdin().lock())?
            } else {
                let f = File::open(&input).with_context(|| format!("cannot open {}", input.display()))?;
                v.import(&mut BufReader::new(f))?
            };
            if as_json {
                json(&shown(&s))?;
            } else {
                println!("{}: imported snapshot {} at {}", v.describe(), s.name, s.location.display());
            }
        }
    }
    Ok(Outcome::Success)
}
