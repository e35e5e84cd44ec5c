//! What volume a path is on: btrfs by its filesystem magic (statfs), LVM by
//! the block device behind the mount (a device-mapper device whose uuid
//! starts with `LVM-`, which the LVM backend then confirms through `lvs`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
    let (major, minor) = (dev_major(meta.dev()), dev_minor(meta.dev()));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(Error::io("reading /proc/self/mountinfo"))?;
    let mount = mounts_of(&mounts, major, minor)
        .into_iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len());
    let unsupported = |what: String| Error::Unsupported { path: path.clone(), what };
    let Some(mount) = mount else {
        return Err(unsupported(format!("no mount of device {major}:{minor} holds it")));
    };
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/dm"));
    let uuid = std::fs::read_to_string(sys.join("uuid")).unwrap_or_default();
    if uuid.starts_with("LVM-") {
        let dm_name = std::fs::read_to_string(sys.join("name")).unwrap_or_default().trim().to_owned();
        return Ok(Detected::Lvm { mount_point: mount.point, dm_name, device: (major, minor) });
    }
    Err(unsupported(format!("{} on {}, mounted at {}", mount.fstype, mount.source, mount.point.display())))
}

/// Whether `path` (canonical) is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts.lines().any(|l| l.split(' ').nth(4).is_some_and(|p| Path::new(&unescape(p)) == path))
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

#[derive(Debug, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    fstype: String,
    source: String,
}

/// The mounts of device `major:minor` in a /proc/PID/mountinfo text.
fn mounts_of(text: &str, major: u32, minor: u32) -> Vec<Mount> {
    let want = format!("{major}:{minor}");
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|&f| f == "-")?;
            if fields.get(2) != Some(&want.as_str()) {
                return None;
            }
            Some(Mount {
                point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fields.get(sep + 1)?.to_string(),
                source: unescape(fields.get(sep + 2)?),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn dev_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

fn dev_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_matched_by_device() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    40 22 253:3 / /srv/my\\040data rw,relatime shared:20 - xfs /dev/mapper/vg0-data rw,attr2\n";
        assert_eq!(
            mounts_of(text, 253, 3),
            vec![Mount { point: "/srv/my data".into(), fstype: "xfs".into(), source: "/dev/mapper/vg0-data".into() }]
        );
        assert!(mounts_of(text, 8, 1).is_empty());
    }

    #[test]
    fn a_plain_directory_is_named_with_its_filesystem() {
        let dir = std::env::temp_dir();
        match detect(&dir) {
            Err(Error::Unsupported { what, .. }) => assert!(what.contains("mounted at"), "{what}"),
            other => panic!("{} detected as {other:?}", dir.display()),
        }
    }
}
