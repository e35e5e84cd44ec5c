//! The LVM volume backend: [`LvmVolume`], the [`Volume`] of an LVM logical
//! volume, made from what [`stasis_volume::detect()`] found.
//!
//! # Why the command-line tools
//!
//! LVM keeps its metadata on the physical volumes and changes it under its
//! own locks; the only supported interface is its tools (liblvm2app was
//! removed in LVM2 2.03 and nothing maintained replaced it; the D-Bus
//! service, lvmdbusd, runs these same tools). Every command goes through
//! one [`Runner`] (`lvm SUBCOMMAND ...`, `mount`, `umount`, syncfs(2) and
//! /proc/self/mountinfo), so the tests replay recorded outputs without LVM.
//! Reports are asked for with `--reportformat json` (every value a string),
//! `--units b --nosuffix` (sizes in bytes) and explicit `-o` fields
//! ([`report::LV_FIELDS`], [`report::VG_FIELDS`]): lv_attr for the state
//! (lvs(8): attr 0 `s` snapshot, `S` merging snapshot, attr 4 `a` active,
//! `I` invalid), origin and pool_lv for what a snapshot belongs to,
//! data_percent for how full a classic snapshot is, lv_time for when it was
//! made. Commands run with `LC_ALL=C`, and a failure's stderr is mapped to
//! the typed errors of `stasis-volume` (an LV that exists, one that does
//! not, an invalid snapshot, an LV in use) with LVM's message kept
//! ([`runner::tool_error`]).
//!
//! # Classic and thin
//!
//! The volume is the LV behind the detected dm device (`VG-LV`, dashes
//! doubled), confirmed with `lvs` (same major:minor). Its segment type
//! decides how it is snapshotted:
//!
//! - a thin LV (segtype `thin`) gets thin snapshots: `lvcreate -s -n NAME
//!   VG/LV`, sharing the pool's space. LVM gives them the activation-skip
//!   flag, so reading one needs `lvchange -ay -K`;
//! - any other LV (linear, striped, raid) gets classic snapshots, which
//!   need a copy-on-write area of their own: `lvcreate -s -l EXTENTS -n NAME
//!   VG/LV`, by default 20% of the origin, at least 4 extents, lowered to the
//!   VG's free space ([`SnapshotSize`], set with
//!   [`LvmVolume::with_snapshot_size`]). A warning says when the area is
//!   smaller than the origin: a snapshot whose area fills becomes invalid.
//!
//! The filesystem is synced first (syncfs(2)), and never frozen:
//! `lvcreate -s` suspends the origin, which freezes the filesystem itself,
//! and a filesystem userspace froze first makes it fail with EBUSY (6.1).
//!
//! A snapshot's name is its LV name, in the origin's VG; `list` shows the
//! LVs whose origin is this one, oldest first. `delete` is `lvremove -y`.
//!
//! # Rollback
//!
//! `lvconvert --merge` puts the snapshot's contents back into the origin
//! and consumes the snapshot, but only once the origin is not open: on a
//! mounted origin it waits for the next activation. So a rollback:
//!
//! 1. refuses an invalid snapshot, one already merging, and an origin
//!    mounted anywhere else than its mount point (a bind mount, another
//!    namespace's view it can see);
//! 2. unmounts the origin (Busy, naming the mount point, when files are
//!    open on it);
//! 3. runs `lvconvert --merge -i 1 VG/NAME` (a thin snapshot left active is
//!    deactivated first), which merges now and waits;
//! 4. if the snapshot is still there, merging, deactivates and activates
//!    the origin (`lvchange -an`, `lvchange -ay`) to start the merge, and
//!    waits for the snapshot to go, giving up when its COW use stops going
//!    down for a while;
//! 5. mounts the origin again where it was, with the options mountinfo
//!    shows (per-mount and filesystem ones);
//! 6. makes a new snapshot of the same name (a classic one with the old
//!    one's size), since the trait promises the snapshot stays, tagged
//!    `stasis_id_<id>` ([`report::ID_TAG`]) with the id of the one it
//!    replaces, which it then reports as its own: an image that names the
//!    snapshot by id can be restored again after a rollback.
//!
//! A process that keeps the origin busy makes step 2 fail; the error names
//! the processes ([`stasis_volume::users`]).
//!
//! A failure after step 2 still tries step 5 and reports both failures.
//!
//! # Opening, export and import
//!
//! `open` activates the snapshot if it is not (and deactivates it again
//! when done) and mounts it read-only on a temporary directory: XFS with
//! `nouuid` (the snapshot has the origin's UUID), ext3/4 with `noload` (no
//! journal replay on a read-only device). The [`Opened`] unmounts it and
//! removes the directory when dropped.
//!
//! `export` writes the snapshot's block device whole (to its end: a classic
//! snapshot's lv_size is its COW area's, its device the origin's size), in
//! the format of
//! [`stream`] (magic, version, size, name, the bytes, a BLAKE3 checksum);
//! incremental export needs btrfs. `import` checks the header, makes a
//! plain LV of that size (in the origin's thin pool for a thin volume),
//! copies the bytes in, checks the checksum (removing the LV when it does
//! not match), and makes it read-only. It is tagged
//! `stasis_import_of_ORIGIN` so that `list` shows it with the snapshots;
//! being no copy-on-write snapshot, it cannot be rolled back to.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stasis_volume::{Detected, Error, Kind, Opened, Snapshot, Volume};

pub mod mounts;
pub mod names;
pub mod report;
pub mod runner;
pub mod size;
pub mod stream;

#[cfg(test)]
mod tests;

pub use runner::{Output, Runner, System};
pub use size::SnapshotSize;

use report::Lv;
use runner::About;

/// How often a rollback looks at a merge in progress.
const MERGE_POLL: Duration = Duration::from_secs(1);
/// How long a merge may go without progress before a rollback gives up.
const MERGE_STALL: Duration = Duration::from_secs(120);

/// An LVM logical volume with a mounted filesystem.
#[derive(Debug)]
pub struct LvmVolume {
    runner: Arc<dyn Runner>,
    vg: String,
    lv: String,
    /// "VG/LV", how LVM and errors name it.
    full_name: String,
    mount_point: PathBuf,
    /// The dm device it was detected as.
    device: (u32, u32),
    /// The thin pool of a thin LV; None for a classic one.
    pool: Option<String>,
    snapshot_size: SnapshotSize,
    merge_poll: Duration,
    merge_stall: Duration,
}

/// `lvs` of `what` (a VG, or VG/LV): hidden LVs too (`-a`), since a
/// classic snapshot being merged is one.
fn lvs_args(what: &str) -> Vec<String> {
    args(&["-a", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", report::LV_FIELDS, what])
}

fn vgs_args(vg: &str) -> Vec<String> {
    args(&["--reportformat", "json", "--units", "b", "--nosuffix", "-o", report::VG_FIELDS, vg])
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn unreadable(tool: &str) -> impl FnOnce(String) -> Error + '_ {
    move |message| Error::Tool { tool: tool.to_owned(), message }
}

impl LvmVolume {
    /// The LV behind `detected`, confirmed with `lvs`, driving the real
    /// LVM tools.
    pub fn from_detected(detected: &Detected) -> Result<LvmVolume, Error> {
        LvmVolume::with_runner(detected, Arc::new(System))
    }

    /// The same with the commands run by `runner`.
    pub fn with_runner(detected: &Detected, runner: Arc<dyn Runner>) -> Result<LvmVolume, Error> {
        let Detected::Lvm { mount_point, dm_name, device } = detected else {
            return Err(Error::Other(format!("{detected:?} is not an LVM volume")));
        };
        let (vg, lv) = names::split_dm_name(dm_name)?;
        let full_name = format!("{vg}/{lv}");
        let not_lvm = |why: String| Error::Unsupported {
            path: mount_point.clone(),
            what: format!("device-mapper device {dm_name} ({}:{}) {why}", device.0, device.1),
        };
        let about = About { volume: &full_name, snapshot: None };
        let json = runner::lvm(&*runner, "lvs", &lvs_args(&full_name), about).map_err(|e| match e {
            Error::Tool { message, .. } if message.contains("not found") || message.contains("Failed to find") => {
                not_lvm(format!("is no logical volume lvs knows: {message}"))
            }
            e => e,
        })?;
        let rows = report::parse_lvs(&json).map_err(unreadable("lvs"))?;
        let Some(row) = rows.into_iter().find(|r| r.vg_name == vg && r.lv_name == lv) else {
            return Err(not_lvm(format!("is not listed by lvs {full_name}")));
        };
        if let Some((major, minor)) = row.device().filter(|d| d != device) {
            return Err(not_lvm(format!("is not LV {full_name}, which lvs says is {major}:{minor}")));
        }
        if row.is_snapshot() {
            return Err(not_lvm(format!("is LV {full_name}, itself a snapshot of {}", row.origin)));
        }
        if row.segtype.starts_with("thin-pool") || row.segtype == "cache-pool" {
            return Err(not_lvm(format!("is the pool {full_name}, not a volume")));
        }
        let pool = row.is_thin().then(|| row.pool_lv.clone());
        Ok(LvmVolume {
            runner,
            vg,
            lv,
            full_name,
            mount_point: mount_point.clone(),
            device: *device,
            pool,
            snapshot_size: SnapshotSize::default(),
            merge_poll: MERGE_POLL,
            merge_stall: MERGE_STALL,
        })
    }

    /// How big classic snapshots are (thin ones have no size of their own).
    pub fn with_snapshot_size(mut self, size: SnapshotSize) -> LvmVolume {
        self.snapshot_size = size;
        self
    }

    /// How often a rollback polls a merge, and how long it waits for a merge
    /// that makes no progress.
    pub fn with_merge_wait(mut self, poll: Duration, stall: Duration) -> LvmVolume {
        self.merge_poll = poll;
        self.merge_stall = stall;
        self
    }

    pub fn vg(&self) -> &str {
        &self.vg
    }

    pub fn lv(&self) -> &str {
        &self.lv
    }

    /// The thin pool of a thin volume.
    pub fn thin_pool(&self) -> Option<&str> {
        self.pool.as_deref()
    }

    fn about<'a>(&'a self, snapshot: Option<&'a str>) -> About<'a> {
        About { volume: &self.full_name, snapshot }
    }

    fn lvm(&self, command: &str, args: &[String], snapshot: Option<&str>) -> Result<String, Error> {
        runner::lvm(&*self.runner, command, args, self.about(snapshot))
    }

    /// The rows of `lvs` for `what` (the VG, or VG/LV).
    fn lvs(&self, what: &str) -> Result<Vec<Lv>, Error> {
        let json = self.lvm("lvs", &lvs_args(what), None)?;
        report::parse_lvs(&json).map_err(unreadable("lvs"))
    }

    /// The LVs of the VG that are snapshots of this volume (or imported
    /// into it), oldest first.
    fn snapshot_lvs(&self) -> Result<Vec<Lv>, Error> {
        let tag = report::import_tag(&self.lv);
        let mut rows: Vec<Lv> = self
            .lvs(&self.vg)?
            .into_iter()
            .filter(|r| r.vg_name == self.vg && (r.origin == self.lv || r.tags().any(|t| t == tag)))
            .collect();
        rows.sort_by_key(Lv::created);
        Ok(rows)
    }

    fn snapshot_lv(&self, name: &str) -> Result<Lv, Error> {
        names::check_lv_name(&self.full_name, name)?;
        self.snapshot_lvs()?
            .into_iter()
            .find(|r| r.lv_name == name)
            .ok_or_else(|| Error::NoSnapshot { volume: self.full_name.clone(), name: name.to_owned() })
    }

    fn is_import(&self, row: &Lv) -> bool {
        let tag = report::import_tag(&self.lv);
        row.tags().any(|t| t == tag)
    }

    fn to_snapshot(&self, row: &Lv) -> Snapshot {
        let mut detail = if self.is_import(row) {
            "imported: a plain LV, not copy-on-write".to_owned()
        } else if row.is_thin() {
            "thin".to_owned()
        } else if row.is_invalid() {
            "classic, invalid: its COW space filled up".to_owned()
        } else {
            match row.percent() {
                Some(p) => format!("classic, {p:.0}% of its COW space used"),
                None => "classic, inactive".to_owned(),
            }
        };
        if row.is_merging() {
            detail.push_str(&format!(", merging into {}", self.full_name));
        }
        Snapshot {
            name: row.lv_name.clone(),
            id: row.id().to_owned(),
            location: PathBuf::from(&row.lv_path),
            created: row.created(),
            detail,
        }
    }

    fn invalid(&self, row: &Lv) -> Error {
        Error::Invalid {
            volume: self.full_name.clone(),
            name: row.lv_name.clone(),
            why: "its copy-on-write space filled up, so it no longer holds the origin's old contents".into(),
        }
    }

    /// A snapshot that can be read: not invalid, not being merged away.
    fn readable(&self, name: &str) -> Result<Lv, Error> {
        let row = self.snapshot_lv(name)?;
        if row.is_invalid() {
            return Err(self.invalid(&row));
        }
        if row.is_merging() {
            return Err(Error::Busy {
                volume: self.full_name.clone(),
                what: format!("snapshot {name:?} is being merged into it and cannot be read"),
            });
        }
        Ok(row)
    }

    /// Makes the snapshot; a classic one gets `size`; `id`: the id of the
    /// snapshot this one stands for (see [`report::ID_TAG`]).
    fn create(&self, name: &str, size: SnapshotSize, id: Option<&str>) -> Result<Snapshot, Error> {
        names::check_lv_name(&self.full_name, name)?;
        let mut create = args(&["-s"]);
        if self.pool.is_none() {
            let origin = self.lvs(&self.full_name)?;
            let origin = origin.iter().find(|r| r.lv_name == self.lv).ok_or_else(|| Error::Tool {
                tool: "lvs".into(),
                message: format!("lvs {} did not list it", self.full_name),
            })?;
            let vgs = self.lvm("vgs", &vgs_args(&self.vg), None)?;
            let vgs = report::parse_vgs(&vgs).map_err(unreadable("vgs"))?;
            let vg = vgs.iter().find(|v| v.vg_name == self.vg).ok_or_else(|| Error::Tool {
                tool: "vgs".into(),
                message: format!("vgs {} did not list it", self.vg),
            })?;
            let (origin_size, extent, free) = (
                origin.size().map_err(unreadable("lvs"))?,
                vg.extent_size().map_err(unreadable("vgs"))?,
                vg.free().map_err(unreadable("vgs"))?,
            );
            let cow = size::choose(&self.full_name, &self.vg, origin_size, extent, free, size)?;
            for warning in &cow.warnings {
                tracing::warn!(volume = %self.full_name, snapshot = name, "{warning}");
            }
            create.extend(args(&["-l", &cow.extents.to_string()]));
        }
        create.extend(args(&["-n", name]));
        if let Some(id) = id {
            create.extend(args(&["--addtag", &format!("{}{id}", report::ID_TAG)]));
        }
        create.push(self.full_name.clone());
        self.runner
            .sync_fs(&self.mount_point)
            .map_err(Error::io(format!("syncing the filesystem at {}", self.mount_point.display())))?;
        self.lvm("lvcreate", &create, Some(name))?;
        let made = self.snapshot_lv(name)?;
        Ok(self.to_snapshot(&made))
    }

    /// Activates a snapshot that is not active, undone when the guard goes.
    fn activate(&self, row: &Lv) -> Result<Activation, Error> {
        let lv = format!("{}/{}", self.vg, row.lv_name);
        if row.is_active() {
            return Ok(Activation { runner: Arc::clone(&self.runner), volume: self.full_name.clone(), lv: None });
        }
        if row.is_thin() {
            // Thin snapshots carry the activation-skip flag: -K overrides it.
            self.lvm("lvchange", &args(&["-ay", "-K", &lv]), Some(&row.lv_name))?;
            return Ok(Activation { runner: Arc::clone(&self.runner), volume: self.full_name.clone(), lv: Some(lv) });
        }
        // A classic snapshot is active with its origin (inactive: so is the
        // origin). Activating it activates the origin, and deactivating it
        // would take the origin down too: it stays active.
        self.lvm("lvchange", &args(&["-ay", &lv]), Some(&row.lv_name))?;
        Ok(Activation { runner: Arc::clone(&self.runner), volume: self.full_name.clone(), lv: None })
    }

    fn run(&self, program: &str, args: &[String]) -> Result<Output, Error> {
        self.runner.run(program, args).map_err(|e| Error::Tool { tool: program.to_owned(), message: e.to_string() })
    }

    fn mount(&self, mount: &mounts::Mount) -> Result<(), Error> {
        let point = mount.point.to_string_lossy();
        let out = self.run("mount", &args(&["-t", &mount.fstype, "-o", &mount.options, &mount.source, &point]))?;
        if !out.success() {
            return Err(Error::Tool {
                tool: "mount".into(),
                message: format!("mounting {} at {point} again: {}", mount.source, out.stderr.trim()),
            });
        }
        Ok(())
    }

    /// The mounts of the origin, where it is mounted now.
    fn origin_mounts(&self) -> Result<Vec<mounts::Mount>, Error> {
        let origin = self.lvs(&self.full_name)?;
        let Some(origin) = origin.iter().find(|r| r.lv_name == self.lv && r.is_active()) else {
            return Ok(Vec::new());
        };
        // Reports without lv_kernel_major/minor: the detected numbers.
        let device = origin.device().unwrap_or(self.device);
        let text = self.runner.mountinfo().map_err(Error::io("reading /proc/self/mountinfo"))?;
        Ok(mounts::parse(&text).into_iter().filter(|m| m.device == device).collect())
    }

    /// Steps 3 and 4 of a rollback: merge, and wait until the snapshot is
    /// gone.
    fn merge(&self, row: &Lv) -> Result<(), Error> {
        let name = row.lv_name.as_str();
        let snapshot = format!("{}/{name}", self.vg);
        if row.is_thin() && row.is_active() {
            // A thin snapshot merges when neither it nor its origin is
            // active (open() may have left it on): in use, this fails Busy.
            self.lvm("lvchange", &args(&["-an", &snapshot]), Some(name))?;
        }
        self.lvm("lvconvert", &args(&["--merge", "-i", "1", &snapshot]), Some(name))?;
        let pending = |rows: Vec<Lv>| rows.into_iter().find(|r| r.lv_name == name && r.origin == self.lv);
        let Some(left) = pending(self.lvs(&self.vg)?) else {
            return Ok(());
        };
        if left.is_merging() {
            // The merge waits for the origin's next activation.
            self.lvm("lvchange", &args(&["-an", &self.full_name]), None)?;
            self.lvm("lvchange", &args(&["-ay", &self.full_name]), None)?;
        }
        let mut last = None;
        let mut progress = Instant::now();
        while let Some(left) = pending(self.lvs(&self.vg)?) {
            if !left.is_merging() {
                return Err(Error::Other(format!(
                    "snapshot {name:?} of {} is still there and not merging after lvconvert --merge ({})",
                    self.full_name, left.lv_attr
                )));
            }
            let percent = left.percent();
            if percent != last {
                last = percent;
                progress = Instant::now();
            } else if progress.elapsed() > self.merge_stall {
                return Err(Error::Busy {
                    volume: self.full_name.clone(),
                    what: format!(
                        "the merge of snapshot {name:?} made no progress in {} s ({}% of its COW space left \
                         to merge); LVM goes on with it in the background",
                        self.merge_stall.as_secs(),
                        left.data_percent
                    ),
                });
            }
            std::thread::sleep(self.merge_poll);
        }
        Ok(())
    }
}

/// A snapshot activated for reading, deactivated when dropped.
#[derive(Debug)]
struct Activation {
    runner: Arc<dyn Runner>,
    volume: String,
    /// VG/LV when this activated it.
    lv: Option<String>,
}

impl Drop for Activation {
    fn drop(&mut self) {
        if let Some(lv) = self.lv.take() {
            let about = About { volume: &self.volume, snapshot: None };
            if let Err(e) = runner::lvm(&*self.runner, "lvchange", &args(&["-an", &lv]), about) {
                tracing::warn!("cannot deactivate {lv} again: {e}");
            }
        }
    }
}

/// A snapshot mounted read-only on a temporary directory.
#[derive(Debug)]
pub struct Mounted {
    runner: Arc<dyn Runner>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    // Dropped after the unmount (fields drop after Drop::drop).
    _activation: Activation,
}

impl Opened for Mounted {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let unmounted = self.runner.run("umount", &args(&[&self.path.to_string_lossy()]));
        match unmounted {
            Ok(out) if out.success() => {}
            failed => {
                let why = match failed {
                    Ok(out) => out.stderr.trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!("cannot unmount the snapshot at {}: {why}; leaving it", self.path.display());
                // Removing the directory would descend into the mount.
                self.dir.take().map(tempfile::TempDir::keep);
            }
        }
    }
}

impl Volume for LvmVolume {
    fn kind(&self) -> Kind {
        Kind::Lvm
    }

    fn describe(&self) -> String {
        match &self.pool {
            Some(pool) => format!("LVM volume {} (thin, pool {pool})", self.full_name),
            None => format!("LVM volume {}", self.full_name),
        }
    }

    fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    fn snapshot(&self, name: &str) -> Result<Snapshot, Error> {
        self.create(name, self.snapshot_size, None)
    }

    fn list(&self) -> Result<Vec<Snapshot>, Error> {
        Ok(self.snapshot_lvs()?.iter().map(|r| self.to_snapshot(r)).collect())
    }

    fn find(&self, name: &str) -> Result<Snapshot, Error> {
        Ok(self.to_snapshot(&self.snapshot_lv(name)?))
    }

    fn delete(&self, name: &str) -> Result<(), Error> {
        // Only a snapshot of this volume: never another LV of that name.
        let row = self.snapshot_lv(name)?;
        self.lvm("lvremove", &args(&["-y", &format!("{}/{}", self.vg, row.lv_name)]), Some(name))?;
        Ok(())
    }

    fn rollback(&self, name: &str) -> Result<(), Error> {
        let row = self.snapshot_lv(name)?;
        if self.is_import(&row) {
            return Err(Error::Other(format!(
                "{name:?} was imported into {} as a plain LV: only a copy-on-write snapshot can be merged back",
                self.full_name
            )));
        }
        if row.is_invalid() {
            return Err(self.invalid(&row));
        }
        if row.is_merging() {
            return Err(Error::Busy {
                volume: self.full_name.clone(),
                what: format!("snapshot {name:?} is already merging into it (it finishes on its next activation)"),
            });
        }
        // A classic snapshot made again gets the size this one had.
        let size = if row.is_thin() {
            self.snapshot_size
        } else {
            SnapshotSize::Bytes(row.size().map_err(unreadable("lvs"))?)
        };
        let mounted = self.origin_mounts()?;
        let elsewhere: Vec<String> =
            mounted.iter().filter(|m| m.point != self.mount_point).map(|m| m.point.display().to_string()).collect();
        if !elsewhere.is_empty() {
            return Err(Error::Busy {
                volume: self.full_name.clone(),
                what: format!(
                    "it is also mounted at {}: unmount it there to roll back to {name:?}",
                    elsewhere.join(", ")
                ),
            });
        }
        let mount = mounted.into_iter().next();
        if let Some(mount) = &mount {
            let point = mount.point.display().to_string();
            let out = self.run("umount", &args(&[&point]))?;
            if !out.success() {
                let why = out.stderr.trim();
                if why.contains("busy") {
                    let dev = stasis_sys::nix::sys::stat::makedev(self.device.0.into(), self.device.1.into());
                    let users = stasis_volume::users::users(dev).unwrap_or_default();
                    let users = if users.is_empty() {
                        String::new()
                    } else {
                        format!("; used by {}", stasis_volume::users::listed(&users))
                    };
                    return Err(Error::Busy {
                        volume: self.full_name.clone(),
                        what: format!(
                            "cannot unmount {point} to roll back to {name:?}: files are open on it ({why}{users})"
                        ),
                    });
                }
                return Err(Error::Tool { tool: "umount".into(), message: format!("{point}: {why}") });
            }
        }
        let merged = self.merge(&row);
        let remounted = mount.as_ref().map_or(Ok(()), |m| self.mount(m));
        match (merged, remounted) {
            (Ok(()), Ok(())) => {}
            (Err(e), Ok(())) => return Err(e),
            (Ok(()), Err(e)) => {
                return Err(Error::Other(format!(
                    "{} was rolled back to {name:?} but not mounted again at {}: {e}",
                    self.full_name,
                    self.mount_point.display()
                )))
            }
            (Err(merge), Err(mount)) => {
                return Err(Error::Other(format!(
                    "rolling {} back to {name:?} failed: {merge}; and mounting it again at {} failed too: {mount}",
                    self.full_name,
                    self.mount_point.display()
                )))
            }
        }
        self.create(name, size, Some(row.id())).map(drop).map_err(|e| {
            Error::Other(format!(
                "{} was rolled back to {name:?}, which the merge consumed, and the snapshot could not be made \
                 again: {e}",
                self.full_name
            ))
        })
    }

    fn open(&self, name: &str) -> Result<Box<dyn Opened>, Error> {
        let row = self.readable(name)?;
        let text = self.runner.mountinfo().map_err(Error::io("reading /proc/self/mountinfo"))?;
        let fstype = mounts::parse(&text).into_iter().find(|m| m.point == self.mount_point).map(|m| m.fstype);
        let options = match fstype.as_deref() {
            // The snapshot has the origin's filesystem UUID.
            Some("xfs") => "ro,nouuid",
            // No journal replay: the device may be read-only.
            Some("ext3" | "ext4") => "ro,noload",
            _ => "ro",
        };
        let activation = self.activate(&row)?;
        let dir = tempfile::Builder::new()
            .prefix("stasis-lvm-")
            .tempdir()
            .map_err(Error::io("making a directory to mount the snapshot on"))?;
        let path = dir.path().to_path_buf();
        let mut mount = Vec::new();
        if let Some(fstype) = &fstype {
            mount.extend(args(&["-t", fstype]));
        }
        mount.extend(args(&["-o", options, &row.lv_path, &path.to_string_lossy()]));
        let out = self.run("mount", &mount)?;
        if !out.success() {
            return Err(Error::Tool {
                tool: "mount".into(),
                message: format!("mounting snapshot {name:?} ({}): {}", row.lv_path, out.stderr.trim()),
            });
        }
        Ok(Box::new(Mounted { runner: Arc::clone(&self.runner), dir: Some(dir), path, _activation: activation }))
    }

    fn export(&self, name: &str, parent: Option<&str>, out: &mut dyn Write) -> Result<(), Error> {
        if let Some(parent) = parent {
            return Err(Error::Other(format!(
                "incremental export (against {parent:?}) needs btrfs: an LVM snapshot is exported whole, \
                 export {name:?} without a parent"
            )));
        }
        let row = self.readable(name)?;
        let _activation = self.activate(&row)?;
        let mut device = File::open(&row.lv_path).map_err(Error::io(format!("opening {}", row.lv_path)))?;
        // The device's own size: a classic snapshot's lv_size is that of its
        // COW area, its device is as big as the origin.
        let size = device
            .seek(SeekFrom::End(0))
            .and_then(|size| device.rewind().map(|()| size))
            .map_err(Error::io(format!("finding the size of {}", row.lv_path)))?;
        stream::write(name, size, &mut device, out)
    }

    fn import(&self, input: &mut dyn Read) -> Result<Snapshot, Error> {
        let reader = stream::Reader::new(input)?;
        let name = reader.name.clone();
        names::check_lv_name(&self.full_name, &name)?;
        if self.lvs(&self.vg)?.iter().any(|r| r.lv_name == name) {
            return Err(Error::Exists { volume: self.full_name.clone(), name });
        }
        let size = format!("{}b", reader.size);
        let tag = report::import_tag(&self.lv);
        let create = match &self.pool {
            Some(pool) => {
                args(&["-y", "-V", &size, "-T", &format!("{}/{pool}", self.vg), "-n", &name, "--addtag", &tag])
            }
            None => args(&["-y", "-L", &size, "-n", &name, "--addtag", &tag, &self.vg]),
        };
        self.lvm("lvcreate", &create, Some(&name))?;
        let lv = format!("{}/{name}", self.vg);
        let copied = (|| {
            let row = self.snapshot_lv(&name)?;
            let mut device = std::fs::OpenOptions::new()
                .write(true)
                .open(&row.lv_path)
                .map_err(Error::io(format!("opening {}", row.lv_path)))?;
            reader.copy_to(&mut device)?;
            device.sync_all().map_err(Error::io(format!("syncing {}", row.lv_path)))?;
            self.lvm("lvchange", &args(&["-p", "r", &lv]), Some(&name))?;
            self.snapshot_lv(&name)
        })();
        match copied {
            Ok(row) => Ok(self.to_snapshot(&row)),
            Err(e) => match self.lvm("lvremove", &args(&["-y", &lv]), Some(&name)) {
                Ok(_) => Err(e),
                Err(undo) => Err(Error::Other(format!("{e}; and removing the half-imported LV {lv} failed: {undo}"))),
            },
        }
    }
}
