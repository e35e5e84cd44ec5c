//! A throwaway btrfs filesystem on a loop device, for tests and the demo:
//! a sparse file formatted with `mkfs.btrfs` and mounted with
//! `mount -o loop` (the loop device is freed when it is unmounted). Dropping
//! it unmounts (lazily if something still holds it) and removes the file.

use std::path::PathBuf;
use std::process::Command;

/// A mounted scratch btrfs.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
    mounted: bool,
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Scratch {
    /// A new btrfs of `size_mib` MiB (at least 256), mounted in a fresh
    /// temporary directory. Fails naming what is missing (mkfs.btrfs from
    /// btrfs-progs, loop devices).
    pub fn new(size_mib: u64) -> Result<Scratch, String> {
        let dir = tempfile::Builder::new().prefix("stasis-btrfs-").tempdir().map_err(|e| e.to_string())?;
        let image = dir.path().join("disk.img");
        let file = std::fs::File::create(&image).map_err(|e| format!("{}: {e}", image.display()))?;
        file.set_len(size_mib.max(256) << 20).map_err(|e| format!("{}: {e}", image.display()))?;
        drop(file);
        run(Command::new("mkfs.btrfs").arg("-q").arg(&image), "mkfs.btrfs (package btrfs-progs)")?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        run(Command::new("mount").arg("-o").arg("loop").arg(&image).arg(&mnt), "mount -o loop (a loop device)")?;
        Ok(Scratch { dir, mounted: true })
    }

    /// Where it is mounted.
    pub fn mount_point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Make a subvolume `name` at its top level (`btrfs subvolume create`).
    pub fn subvolume(&self, name: &str) -> Result<PathBuf, String> {
        let path = self.mount_point().join(name);
        run(Command::new("btrfs").arg("subvolume").arg("create").arg(&path), "btrfs subvolume create")?;
        Ok(path)
    }

    /// Mount subvolume `name` (made with [`Scratch::subvolume`]) on a
    /// fresh directory by itself (`-o subvol=NAME`), as distributions mount
    /// `@home`. Unmounted when the guard is dropped (declare it after the
    /// `Scratch`, so that it goes first).
    pub fn mount_subvolume(&self, name: &str) -> Result<SubvolumeMount, String> {
        let mounts = stasis_sys::mountinfo::own().map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        let point = self.mount_point().canonicalize().map_err(|e| e.to_string())?;
        let device = mounts
            .iter()
            .find(|m| m.mount_point == point)
            .map(|m| m.source.clone())
            .ok_or_else(|| format!("{} is not mounted", point.display()))?;
        let dir = tempfile::Builder::new().prefix("stasis-btrfs-sub-").tempdir().map_err(|e| e.to_string())?;
        run(
            Command::new("mount").arg("-o").arg(format!("subvol={name}")).arg(&device).arg(dir.path()),
            "mount -o subvol",
        )?;
        Ok(SubvolumeMount { dir })
    }

    /// The backing file.
    pub fn image(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    /// Unmount now (the drop would too), reporting failure.
    pub fn unmount(&mut self) -> Result<(), String> {
        if self.mounted {
            run(Command::new("umount").arg(self.mount_point()), "umount")?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted && self.unmount().is_err() {
            // Something still holds it: detach it, the kernel frees it later.
            let _ = Command::new("umount").arg("-l").arg(self.mount_point()).status();
        }
    }
}

/// A subvolume of a [`Scratch`] mounted by itself.
#[derive(Debug)]
pub struct SubvolumeMount {
    dir: tempfile::TempDir,
}

impl SubvolumeMount {
    /// Where it is mounted.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for SubvolumeMount {
    fn drop(&mut self) {
        if !Command::new("umount").arg(self.dir.path()).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}
