//! The btrfs volume backend: a volume is one btrfs subvolume, its
//! snapshots are read-only subvolumes, all through the kernel's own ioctls
//! (`stasis_sys::btrfs`), except import, which is `btrfs receive`.
//!
//! Where snapshots live: for a subvolume that is a directory of a mounted
//! btrfs (`/mnt/pool/data`), in `.stasis-snapshots/data/` beside it
//! (`/mnt/pool/.stasis-snapshots/data/NAME`), so they are outside the volume
//! and its rollback; for a subvolume that is itself a mount point, in
//! `.stasis-snapshots/` inside it (a snapshot never contains the subvolumes
//! nested in its source, so they do not nest).
//!
//! - snapshot: `BTRFS_IOC_SNAP_CREATE_V2` with `BTRFS_SUBVOL_RDONLY`. btrfs
//!   writes the subvolume's dirty data out as part of making the snapshot,
//!   so everything written before the call is in it (no sync needed, and no
//!   freeze of the filesystem);
//! - list: every read-only subvolume in the snapshot directory
//!   (`BTRFS_IOC_GET_SUBVOL_INFO`: uuid, creation time), oldest first;
//! - delete: `BTRFS_IOC_SNAP_DESTROY_V2`;
//! - rollback (a subvolume that is a directory): a writable snapshot of the
//!   snapshot is made beside the volume, the volume is renamed aside, the
//!   new subvolume renamed into its place, and the old one deleted (the
//!   rename is atomic for anyone opening paths; a process still holding a
//!   file or directory of the old volume would keep the old contents, so
//!   the rollback is refused while any process uses the subvolume). A
//!   subvolume that is a mount point is unmounted, swapped the same way
//!   through the filesystem's top level mounted aside, its snapshots moved
//!   into the new one, and mounted again (`mounted.rs`); the top-level
//!   subvolume itself cannot be rolled back;
//! - open: the snapshot's directory, read-only already;
//! - export: `BTRFS_IOC_SEND` into a pipe drained to the output, whole or
//!   against a parent snapshot (only the changes);
//! - import: `btrfs receive` into the snapshot directory, which makes a
//!   read-only subvolume named as the exported one.

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use stasis_sys::btrfs;
use stasis_sys::Errno;
use stasis_volume::{Directory, Error, Kind, Opened, Snapshot, Volume};

mod mounted;
pub mod scratch;

/// The directory holding stasis's snapshots, named so in every case.
pub const SNAPSHOT_DIR: &str = ".stasis-snapshots";
/// The inode of a subvolume's root directory.
const SUBVOLUME_ROOT_INO: u64 = 256;

/// A btrfs subvolume.
#[derive(Debug)]
pub struct BtrfsVolume {
    /// Its root directory (canonical).
    root: PathBuf,
    /// Where its snapshots go.
    snapshots: PathBuf,
    /// The subvolume is a mount point (no rollback by rename).
    mount_root: bool,
}

fn errno(what: String) -> impl FnOnce(Errno) -> Error {
    move |e| Error::Io { what, source: std::io::Error::from_raw_os_error(e as i32) }
}

fn open_dir(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(Error::io(format!("cannot open {}", path.display())))
}

impl BtrfsVolume {
    /// The volume whose root directory is `subvolume` (as
    /// `stasis_volume::Detected::Btrfs` names it).
    pub fn open(subvolume: &Path) -> Result<BtrfsVolume, Error> {
        let root = subvolume.canonicalize().map_err(Error::io(format!("cannot resolve {}", subvolume.display())))?;
        let meta = std::fs::metadata(&root).map_err(Error::io(format!("stat {}", root.display())))?;
        if !meta.is_dir() || meta.ino() != SUBVOLUME_ROOT_INO {
            return Err(Error::Unsupported {
                path: root.clone(),
                what: "a directory of a btrfs filesystem, not the root of a subvolume".into(),
            });
        }
        btrfs::subvol_info(open_dir(&root)?.as_fd()).map_err(errno(format!("{}: subvolume info", root.display())))?;
        let mount_root = stasis_volume::is_mount_point(&root) || root.parent().is_none();
        let snapshots = if mount_root {
            root.join(SNAPSHOT_DIR)
        } else {
            let name = root.file_name().unwrap_or(OsStr::new("volume"));
            root.parent().unwrap_or(&root).join(SNAPSHOT_DIR).join(name)
        };
        Ok(BtrfsVolume { root, snapshots, mount_root })
    }

    /// The directory its snapshots are in.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshots
    }

    fn no_snapshot(&self, name: &str) -> Error {
        Error::NoSnapshot { volume: self.describe(), name: name.to_owned() }
    }

    fn describe_snapshot(&self, name: &str) -> Result<Snapshot, Error> {
        let location = self.snapshots.join(name);
        let dir = match File::open(&location) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(self.no_snapshot(name)),
            Err(e) => return Err(Error::io(format!("cannot open {}", location.display()))(e)),
        };
        let meta = dir.metadata().map_err(Error::io(format!("stat {}", location.display())))?;
        if meta.ino() != SUBVOLUME_ROOT_INO {
            return Err(self.no_snapshot(name));
        }
        let info = btrfs::subvol_info(dir.as_fd()).map_err(errno(format!("{}: subvolume info", location.display())))?;
        let mut detail = if info.read_only { "read-only".to_owned() } else { "writable".to_owned() };
        if info.received_uuid != [0; 16] {
            detail.push_str(", received");
        }
        Ok(Snapshot { name: name.to_owned(), id: uuid(&info.uuid), location, created: info.created, detail })
    }
}

/// Rolls the subvolume at `volume` (a path whose parent directory is in
/// another subvolume or the same filesystem) back to the snapshot at
/// `snapshot`: a writable snapshot of it is made beside `volume`, `volume`
/// is renamed aside, the copy renamed into its place and the old contents
/// deleted. Returns the path of the old contents when they could not be
/// deleted (a subvolume nested in them), after a warning.
fn swap(volume: &Path, snapshot: &Path) -> Result<Option<PathBuf>, Error> {
    let parent = volume.parent().ok_or_else(|| Error::Other(format!("{} has no parent", volume.display())))?;
    let base = volume.file_name().unwrap_or(OsStr::new("volume")).as_bytes().to_vec();
    let side = |what: &str| {
        let mut n = b".".to_vec();
        n.extend_from_slice(&base);
        n.extend_from_slice(format!(".stasis-{what}-{}", std::process::id()).as_bytes());
        String::from_utf8_lossy(&n).into_owned()
    };
    let (fresh, old) = (side("rollback"), side("old"));
    let parent_dir = open_dir(parent)?;
    let source = open_dir(snapshot)?;
    btrfs::snapshot(source.as_fd(), parent_dir.as_fd(), &fresh, false).map_err(errno(format!(
        "a writable copy of {} in {}",
        snapshot.display(),
        parent.display()
    )))?;
    // Snapshots kept inside the volume (that of a mount point) move to the
    // copy, where they show as empty directories (a snapshot does not hold
    // the subvolumes nested in its source).
    if let Err(e) = move_snapshots(&volume.join(SNAPSHOT_DIR), &parent.join(&fresh).join(SNAPSHOT_DIR)) {
        let _ = move_snapshots(&parent.join(&fresh).join(SNAPSHOT_DIR), &volume.join(SNAPSHOT_DIR));
        let _ = btrfs::destroy(parent_dir.as_fd(), &fresh);
        return Err(e);
    }
    let undo = |e: Error| {
        let _ = move_snapshots(&parent.join(&fresh).join(SNAPSHOT_DIR), &volume.join(SNAPSHOT_DIR));
        let _ = btrfs::destroy(parent_dir.as_fd(), &fresh);
        e
    };
    if let Err(e) = std::fs::rename(volume, parent.join(&old)) {
        return Err(undo(Error::io(format!("moving {} aside", volume.display()))(e)));
    }
    if let Err(e) = std::fs::rename(parent.join(&fresh), volume) {
        let _ = std::fs::rename(parent.join(&old), volume);
        return Err(undo(Error::io(format!("moving the copy of {} into {}", snapshot.display(), volume.display()))(e)));
    }
    if let Err(e) = btrfs::destroy(parent_dir.as_fd(), &old) {
        let left = parent.join(&old);
        tracing::warn!(
            "the rolled-back contents of {} are left at {} (deleting them failed: {e}; a subvolume inside?)",
            volume.display(),
            left.display()
        );
        return Ok(Some(left));
    }
    Ok(None)
}

/// Moves the snapshots (subvolumes) in directory `from` into `to`,
/// replacing the empty directories a snapshot shows in their place.
fn move_snapshots(from: &Path, to: &Path) -> Result<(), Error> {
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot read {}", from.display()))(e)),
    };
    std::fs::create_dir_all(to).map_err(Error::io(format!("cannot make {}", to.display())))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("cannot read {}", from.display())))?;
        let path = entry.path();
        if std::fs::metadata(&path).map(|m| m.ino()).ok() != Some(SUBVOLUME_ROOT_INO) {
            continue;
        }
        let target = to.join(entry.file_name());
        // The placeholder: an empty directory, or nothing.
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot make room for a snapshot at {}", target.display()))(e)),
        }
        move_subvolume(&path, &target)?;
    }
    Ok(())
}

/// Renames the subvolume at `from` to `to`. btrfs refuses to move a
/// read-only subvolume to another directory (its `..` changes: EROFS), so
/// a read-only one is made writable for the rename and read-only again
/// after; its uuid, and so its id as a snapshot, stay.
fn move_subvolume(from: &Path, to: &Path) -> Result<(), Error> {
    let what = || format!("moving snapshot {} to {}", from.display(), to.display());
    let dir = open_dir(from)?;
    let read_only =
        btrfs::subvol_info(dir.as_fd()).map_err(errno(format!("{}: subvolume info", from.display())))?.read_only;
    if read_only {
        btrfs::set_read_only(dir.as_fd(), false).map_err(errno(format!("{}: making it writable", what())))?;
    }
    let moved = std::fs::rename(from, to).map_err(Error::io(what()));
    if read_only {
        // The same subvolume, wherever it now is.
        btrfs::set_read_only(dir.as_fd(), true)
            .map_err(errno(format!("{}: making it read-only again (it is writable now!)", what())))?;
    }
    moved
}

/// A UUID in its usual written form.
pub fn uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

impl Volume for BtrfsVolume {
    fn kind(&self) -> Kind {
        Kind::Btrfs
    }

    fn describe(&self) -> String {
        format!("btrfs subvolume {}", self.root.display())
    }

    fn mount_point(&self) -> &Path {
        &self.root
    }

    fn snapshot(&self, name: &str) -> Result<Snapshot, Error> {
        if self.snapshots.join(name).exists() {
            return Err(Error::Exists { volume: self.describe(), name: name.to_owned() });
        }
        std::fs::create_dir_all(&self.snapshots)
            .map_err(Error::io(format!("cannot make {}", self.snapshots.display())))?;
        let (source, dir) = (open_dir(&self.root)?, open_dir(&self.snapshots)?);
        btrfs::snapshot(source.as_fd(), dir.as_fd(), name, true).map_err(|e| match e {
            Errno::EEXIST => Error::Exists { volume: self.describe(), name: name.to_owned() },
            Errno::EINVAL => Error::Other(format!("{name:?} is not a valid snapshot name")),
            Errno::ENOSPC | Errno::EDQUOT => {
                Error::NoSpace { volume: self.describe(), what: format!("snapshot {name:?} ({e})") }
            }
            e => errno(format!("snapshot {name:?} of {}", self.describe()))(e),
        })?;
        self.describe_snapshot(name)
    }

    fn list(&self) -> Result<Vec<Snapshot>, Error> {
        let entries = match std::fs::read_dir(&self.snapshots) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("cannot read {}", self.snapshots.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io(format!("cannot read {}", self.snapshots.display())))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            match self.describe_snapshot(&name) {
                Ok(s) => out.push(s),
                Err(Error::NoSnapshot { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), Error> {
        self.describe_snapshot(name)?;
        let dir = open_dir(&self.snapshots)?;
        btrfs::destroy(dir.as_fd(), name).map_err(errno(format!("delete snapshot {name:?} of {}", self.describe())))
    }

    fn rollback(&self, name: &str) -> Result<(), Error> {
        self.describe_snapshot(name)?;
        // A process with a file, mapping or directory of the volume would
        // go on using the old contents after the swap: what it writes
        // would be lost with them.
        let dev = std::fs::metadata(&self.root).map_err(Error::io(format!("stat {}", self.root.display())))?.dev();
        let users = stasis_volume::users::users(dev).map_err(Error::io("listing the processes in /proc"))?;
        if !users.is_empty() {
            return Err(Error::Busy {
                volume: self.describe(),
                what: format!(
                    "it is in use ({}): stop them before rolling back to {name:?}, or they would go on writing to \
                     contents that are then deleted",
                    stasis_volume::users::listed(&users)
                ),
            });
        }
        if self.mount_root {
            return self.rollback_mounted(name);
        }
        swap(&self.root, &self.snapshots.join(name))?;
        Ok(())
    }

    fn open(&self, name: &str) -> Result<Box<dyn Opened>, Error> {
        Ok(Box::new(Directory(self.describe_snapshot(name)?.location)))
    }

    fn export(&self, name: &str, parent: Option<&str>, out: &mut dyn Write) -> Result<(), Error> {
        let snap = self.describe_snapshot(name)?;
        let parent_id = match parent {
            Some(p) => {
                let location = self.describe_snapshot(p)?.location;
                let info = btrfs::subvol_info(open_dir(&location)?.as_fd())
                    .map_err(errno(format!("{}: subvolume info", location.display())))?;
                Some(info.id)
            }
            None => None,
        };
        let dir = open_dir(&snap.location)?;
        let (rd, wr) =
            stasis_sys::nix::unistd::pipe2(stasis_sys::nix::fcntl::OFlag::O_CLOEXEC).map_err(errno("pipe".into()))?;
        let mut rd = File::from(rd);
        let sender = std::thread::spawn(move || {
            let r = btrfs::send(dir.as_fd(), wr.as_fd(), parent_id);
            drop(wr);
            r
        });
        let copied = std::io::copy(&mut rd, out);
        drop(rd);
        let sent = sender.join().map_err(|_| Error::Other("the send thread panicked".into()))?;
        sent.map_err(errno(format!("BTRFS_IOC_SEND of snapshot {name:?}")))?;
        copied.map(drop).map_err(Error::io(format!("writing the export of {name:?}")))
    }

    fn import(&self, input: &mut dyn Read) -> Result<Snapshot, Error> {
        std::fs::create_dir_all(&self.snapshots)
            .map_err(Error::io(format!("cannot make {}", self.snapshots.display())))?;
        let before: Vec<String> = self.list()?.into_iter().map(|s| s.name).collect();
        let tool = |message: String| Error::Tool { tool: "btrfs receive".into(), message };
        let mut child = Command::new("btrfs")
            .arg("receive")
            .arg(&self.snapshots)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| tool(format!("cannot run btrfs ({e}); is btrfs-progs installed?")))?;
        let mut stdin = child.stdin.take().expect("piped");
        let copied = std::io::copy(input, &mut stdin);
        drop(stdin);
        let output = child.wait_with_output().map_err(|e| tool(e.to_string()))?;
        if !output.status.success() {
            let message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            return Err(tool(if message.is_empty() { format!("exit status {}", output.status) } else { message }));
        }
        copied.map_err(Error::io("reading the import stream"))?;
        let after = self.list()?;
        after
            .into_iter()
            .find(|s| !before.contains(&s.name))
            .ok_or_else(|| Error::Other("btrfs receive made no new snapshot".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_written_the_usual_way() {
        let b: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(uuid(&b), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }
}
