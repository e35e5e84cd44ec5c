//! Rollback of a subvolume that is itself a mount point (`/home` mounted
//! with `subvol=@home`, the usual layout of distributions on btrfs).
//!
//! A mount point cannot be renamed, and the mount holds on to the subvolume
//! it was made from, not to its path. So the rollback:
//!
//! 1. refuses the filesystem's top-level subvolume (it has no parent
//!    directory to swap it in) and a subvolume also mounted elsewhere (bind
//!    mounts would go on showing the old contents);
//! 2. mounts the filesystem's top level (`subvolid=5`) on a temporary
//!    directory, where the subvolume is a directory like any other, and
//!    checks it is the same subvolume (by id);
//! 3. unmounts the subvolume (refused, unchanged, when it is busy);
//! 4. swaps it there, as for a subvolume below a mount point, the snapshots
//!    kept inside it moved into the new one;
//! 5. mounts the new one where the old one was, by path (`subvol=`), with
//!    the old mount's flags;
//! 6. unmounts the top level.
//!
//! A failure after step 3 still mounts the subvolume again (the old one or
//! the new one, whichever is in place) and reports both failures.

use std::os::fd::AsFd;
use std::path::Path;

use stasis_sys::btrfs;
use stasis_sys::mountinfo::{self, Mount};
use stasis_sys::nix::mount::{mount, umount, umount2, MntFlags, MsFlags};
use stasis_volume::{Error, Volume};

use crate::{errno, open_dir, swap, BtrfsVolume, SNAPSHOT_DIR};

/// The top level of a btrfs filesystem mounted on a temporary directory,
/// unmounted when dropped.
struct TopLevel {
    dir: tempfile::TempDir,
}

impl TopLevel {
    fn mount(source: &str) -> Result<TopLevel, Error> {
        let dir = tempfile::Builder::new()
            .prefix("stasis-btrfs-top-")
            .tempdir()
            .map_err(Error::io("making a directory to mount the top level on"))?;
        mount(Some(source), dir.path(), Some("btrfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("subvolid=5"))
            .map_err(errno(format!("mounting the top level of {source} on {}", dir.path().display())))?;
        Ok(TopLevel { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TopLevel {
    fn drop(&mut self) {
        if umount(self.dir.path()).is_err() {
            let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
        }
    }
}

/// The flags of mount(2) that the per-mount options of `m` show.
fn flags(m: &Mount) -> MsFlags {
    let mut flags = MsFlags::empty();
    for option in m.mount_options.split(',') {
        flags |= match option {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            "sync" => MsFlags::MS_SYNCHRONOUS,
            "dirsync" => MsFlags::MS_DIRSYNC,
            _ => MsFlags::empty(),
        };
    }
    flags
}

impl BtrfsVolume {
    pub(crate) fn rollback_mounted(&self, name: &str) -> Result<(), Error> {
        let busy = |what: String| Error::Busy { volume: self.describe(), what };
        let mounts = mountinfo::own().map_err(Error::io("reading /proc/self/mountinfo"))?;
        let here = mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == self.root)
            .ok_or_else(|| Error::Other(format!("{} is not in /proc/self/mountinfo", self.root.display())))?;
        if here.fstype != "btrfs" {
            return Err(Error::Other(format!("{} is a {} mount", self.root.display(), here.fstype)));
        }
        let info = btrfs::subvol_info(open_dir(&self.root)?.as_fd())
            .map_err(errno(format!("{}: subvolume info", self.root.display())))?;
        if info.id == 5 || here.root == "/" {
            return Err(Error::Unsupported {
                path: self.root.clone(),
                what: "the top-level subvolume of its btrfs filesystem, which cannot be rolled back (it has no \
                       parent directory to swap it in): keep the data in a subvolume"
                    .into(),
            });
        }
        let elsewhere: Vec<String> = mounts
            .iter()
            .filter(|m| m.device == here.device && m.mount_point != self.root)
            .filter(|m| m.root == here.root || m.root.starts_with(&format!("{}/", here.root)))
            .map(|m| m.mount_point.display().to_string())
            .collect();
        if !elsewhere.is_empty() {
            return Err(busy(format!(
                "it is also mounted at {}: unmount it there to roll back to {name:?}",
                elsewhere.join(", ")
            )));
        }

        let top = TopLevel::mount(&here.source)?;
        let inside = top.path().join(here.root.trim_start_matches('/'));
        let same =
            open_dir(&inside).ok().and_then(|d| btrfs::subvol_info(d.as_fd()).ok()).is_some_and(|i| i.id == info.id);
        if !same {
            return Err(Error::Other(format!(
                "{} (subvolume {}) is not at {} in the top level of {}, as mountinfo says",
                self.root.display(),
                info.id,
                here.root,
                here.source
            )));
        }
        let snapshot = inside.join(SNAPSHOT_DIR).join(name);

        if let Err(e) = umount(&self.root) {
            return Err(busy(format!(
                "cannot unmount {} to roll back to {name:?}: {e} (files are open on it?)",
                self.root.display()
            )));
        }
        let swapped = swap(&inside, &snapshot);
        let remount = self.remount(here);
        match (swapped, remount) {
            (Ok(_), Ok(())) => Ok(()),
            (Err(e), Ok(())) => Err(e),
            (Ok(_), Err(e)) => Err(Error::Other(format!(
                "{} was rolled back to {name:?} but not mounted again at {}: {e}",
                self.describe(),
                self.root.display()
            ))),
            (Err(swap), Err(mount)) => Err(Error::Other(format!(
                "rolling {} back to {name:?} failed: {swap}; and mounting it again at {} failed too: {mount}",
                self.describe(),
                self.root.display()
            ))),
        }
    }

    /// Mounts the subvolume at `was.root` (by path: whichever subvolume is
    /// there now) where `was` was, with its flags.
    fn remount(&self, was: &Mount) -> Result<(), Error> {
        let data = format!("subvol={}", was.root);
        mount(Some(was.source.as_str()), &self.root, Some("btrfs"), flags(was), Some(data.as_str()))
            .map_err(errno(format!("mounting {} ({data}) on {} again", was.source, self.root.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_mount_options_become_flags() {
        let m = mountinfo::parse(
            "90 30 0:45 /data /mnt/data ro,nosuid,noatime shared:50 - btrfs /dev/loop3 \
             ro,ssd,space_cache=v2,subvolid=256,subvol=/data\n",
        );
        assert_eq!(flags(&m[0]), MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOATIME);
    }
}
