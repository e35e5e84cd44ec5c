//! `stasis snapshot`: the coherent snapshot of a workload, its processes
//! and the volume it writes to at one instant.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use stasis_checkpoint::dump::WhileFrozen;
use stasis_image::records::VolumeSnapshot;
use stasis_sys::nix::unistd::syncfs;
use stasis_volume::Volume;

use crate::Outcome;

/// Capture a process tree and a copy-on-write snapshot of the volume it
/// writes to, at the same instant: the tree is frozen, the volume snapshot
/// taken, the processes captured, and the tree thawed (or killed, without
/// --leave-running, once the image is verified). Every file offset and
/// in-memory record in the image then matches the files in the snapshot.
///
/// The image records the snapshot's identity (`stasis inspect` shows it);
/// `stasis restore --rollback-volume` rolls the volume back to it before
/// bringing the processes back. Only this volume is coherent with the
/// processes: files on other filesystems are as they are at restore.
///
/// The volume is a btrfs subvolume (snapshot in .stasis-snapshots/ beside
/// it) or an LVM logical volume; see `stasis volume --help`.
#[derive(Debug, clap::Args)]
#[group(id = "coherent")]
pub struct Args {
    #[command(flatten)]
    dump: super::dump::Args,
    /// A path on the volume the workload writes to.
    #[arg(long, value_name = "PATH")]
    volume: PathBuf,
    /// The volume snapshot's name (default: the image directory's name).
    #[arg(long)]
    name: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let volume = super::volume::open(&args.volume)?;
    let name = match args.name {
        Some(n) => n,
        None => args
            .dump
            .images()
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .context("name the volume snapshot with --name (the image directory has no usable name)")?,
    };
    // Refused before anything is frozen.
    if volume.find(&name).is_ok() {
        anyhow::bail!("{} already has a snapshot named {name:?}; choose another with --name", volume.describe());
    }
    let hook = while_frozen(Arc::from(volume), name)?;
    super::dump::run_with(args.dump, Some(hook))
}

/// The dump's hook that snapshots `volume` as `name` once the tree is
/// frozen, and what the image records of it. Called just before the dump:
/// it flushes the volume's dirty data now (syncfs), while the tree still
/// runs, so that the snapshot inside the freeze, which must write out what
/// is dirty (btrfs) or syncs first (LVM), has only what is written after.
pub fn while_frozen(volume: Arc<dyn Volume>, name: String) -> anyhow::Result<WhileFrozen> {
    let root = volume.mount_point().to_path_buf();
    let dir = std::fs::File::open(&root).with_context(|| format!("open {}", root.display()))?;
    let started = std::time::Instant::now();
    syncfs(&dir).with_context(|| format!("syncfs {}", root.display()))?;
    tracing::debug!(volume = %root.display(), ms = started.elapsed().as_secs_f64() * 1e3, "flushed before the freeze");
    let dev = dir.metadata().with_context(|| format!("stat {}", root.display()))?.dev();
    let kind = volume.kind().name().to_owned();
    Ok(WhileFrozen(Arc::new(move || {
        let s = volume
            .snapshot(&name)
            .map_err(|e| format!("snapshot {name:?} of {}: {:#}", volume.describe(), anyhow::Error::new(e)))?;
        Ok(VolumeSnapshot {
            kind: kind.clone(),
            volume: root.display().to_string(),
            name: s.name,
            id: s.id,
            location: s.location.display().to_string(),
            snapshot_us: 0,
            dev,
        })
    })))
}
