//! btrfs: whether this kernel has it, asked through /dev/btrfs-control with
//! `BTRFS_IOC_GET_SUPPORTED_FEATURES` (include/uapi/linux/btrfs.h,
//! fs/btrfs/super.c `btrfs_control_ioctl`), which answers without any btrfs
//! filesystem mounted. Snapshot ioctls (BTRFS_IOC_SNAP_CREATE_V2, ...) belong
//! here too once the btrfs backend needs them.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

/// The control node.
pub const CONTROL: &str = "/dev/btrfs-control";

/// `struct btrfs_ioctl_feature_flags`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeatureFlags {
    /// `compat_flags`.
    pub compat: u64,
    /// `compat_ro_flags`.
    pub compat_ro: u64,
    /// `incompat_flags`.
    pub incompat: u64,
}

/// What the kernel reports: supported, safe to set online, safe to clear
/// online (the three array entries of the ioctl).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SupportedFeatures {
    /// Features the kernel supports.
    pub supported: FeatureFlags,
    /// Features that can be set on a mounted filesystem.
    pub safe_set: FeatureFlags,
    /// Features that can be cleared on a mounted filesystem.
    pub safe_clear: FeatureFlags,
}

nix::ioctl_read!(get_supported_features, 0x94, 57, [FeatureFlags; 3]);

/// Errors of btrfs control access.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/btrfs-control could not be opened.
    #[error("cannot open {CONTROL}")]
    Open(#[source] io::Error),
    /// The ioctl failed.
    #[error("BTRFS_IOC_GET_SUPPORTED_FEATURES failed")]
    Features(#[source] Errno),
}

/// Whether "btrfs" is listed in /proc/filesystems.
pub fn in_proc_filesystems() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.split_whitespace().last() == Some("btrfs")))
        .unwrap_or(false)
}

/// Asks the kernel's btrfs module which features it supports.
pub fn supported_features() -> Result<SupportedFeatures, Error> {
    let control = OpenOptions::new().read(true).write(true).open(CONTROL).map_err(Error::Open)?;
    let mut flags = [FeatureFlags::default(); 3];
    // SAFETY: the ioctl writes exactly three btrfs_ioctl_feature_flags,
    // which is the size of `flags`.
    unsafe { get_supported_features(control.as_raw_fd(), &mut flags) }.map_err(Error::Features)?;
    Ok(SupportedFeatures { supported: flags[0], safe_set: flags[1], safe_clear: flags[2] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_reports_btrfs_features() {
        assert!(in_proc_filesystems(), "btrfs missing from /proc/filesystems");
        let features = supported_features().expect("BTRFS_IOC_GET_SUPPORTED_FEATURES");
        // Every btrfs since 3.14 supports at least MIXED_BACKREF (incompat bit 0).
        assert_ne!(features.supported.incompat & 1, 0, "{features:?}");
    }
}
