//! What volume a path is on: btrfs by its filesystem magic (statfs), LVM by
//! the block device behind the mount (a device-mapper device whose uuid
//! starts with `LVM-`, which the LVM backend then confirms through `lvs`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stasis_sys::nix::sys::stat::{major, minor};
use stasis_sys::nix::sys::statfs::{statfs, FsType};

use crate::Error;

/// BTRFS_SUPER_MAGIC.
const BTRFS_MAGIC: i64 = 0x9123_683e;
/// The inode number of every btrfs subvolume's root directory
/// (BTRFS_FIRST_FREE_OBJECTID).
const SUBVOLUME_ROOT_INO: u64 = 256;

/// What a path is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detected {
    /// A btrfs filesystem: `subvolume` is the root directory of the
    /// subvolume holding the path.
    Btrfs { subvolume: PathBuf },
    /// A device-mapper device made by LVM, mounted at `mount_point`:
    /// `dm_name` is its /dev/mapper name (`VG-LV`, dashes in either doubled).
    Lvm { mount_point: PathBuf, dm_name: String, device: (u32, u32) },
}

/// Find what `path` is on, or say what it is instead.
pub fn detect(path: &Path) -> Result<Detected, Error> {
    let path = path.canonicalize().map_err(Error::io(format!("cannot resolve {}", path.display())))?;
    let fs = statfs(&path).map_err(|e| Error::Io {
        what: format!("statfs {}", path.display()),
        source: std::io::Error::from_raw_os_error(e as i32),
    })?;
    let FsType(magic) = fs.filesystem_type();
    if magic == BTRFS_MAGIC {
        return Ok(Detected::Btrfs { subvolume: subvolume_root(&path)? });
    }
    let meta = std::fs::metadata(&path).map_err(Error::io(format!("stat {}", path.display())))?;
    let (major, minor) = (major(meta.dev()) as u32, minor(meta.dev()) as u32);
    let mounts = stasis_sys::mountinfo::own().map_err(Error::io("reading /proc/self/mountinfo"))?;
    let mount = mounts
        .into_iter()
        .filter(|m| m.device == (major, minor) && path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len());
    let unsupported = |what: String| Error::Unsupported { path: path.clone(), what };
    let Some(mount) = mount else {
        return Err(unsupported(format!("no mount of device {major}:{minor} holds it")));
    };
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/dm"));
    let uuid = std::fs::read_to_string(sys.join("uuid")).unwrap_or_default();
    if uuid.starts_with("LVM-") {
        let dm_name = std::fs::read_to_string(sys.join("name")).unwrap_or_default().trim().to_owned();
        return Ok(Detected::Lvm { mount_point: mount.mount_point, dm_name, device: (major, minor) });
    }
    Err(unsupported(format!("{} on {}, mounted at {}", mount.fstype, mount.source, mount.mount_point.display())))
}

/// Whether `path` (canonical) is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    stasis_sys::mountinfo::own().unwrap_or_default().iter().any(|m| m.mount_point == path)
}

/// The root directory of the btrfs subvolume holding `path`: the nearest
/// directory at or above it with inode 256 on the same device.
fn subvolume_root(path: &Path) -> Result<PathBuf, Error> {
    let dev = std::fs::metadata(path).map_err(Error::io(format!("stat {}", path.display())))?.dev();
    let mut at = if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(path).to_path_buf() };
    loop {
        let meta = std::fs::metadata(&at).map_err(Error::io(format!("stat {}", at.display())))?;
        if meta.dev() == dev && meta.ino() == SUBVOLUME_ROOT_INO {
            return Ok(at);
        }
        match at.parent() {
            Some(up) => at = up.to_path_buf(),
            None => return Err(Error::Other(format!("no btrfs subvolume root above {}", path.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_named_with_its_filesystem() {
        let dir = std::env::temp_dir();
        match detect(&dir) {
            Err(Error::Unsupported { what, .. }) => assert!(what.contains("mounted at"), "{what}"),
            other => panic!("{} detected as {other:?}", dir.display()),
        }
    }
}
