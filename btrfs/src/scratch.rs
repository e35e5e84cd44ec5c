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
