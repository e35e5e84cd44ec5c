//! device-mapper control: the `DM_VERSION` ioctl on /dev/mapper/control
//! (include/uapi/linux/dm-ioctl.h), which answers only when the kernel has
//! CONFIG_BLK_DEV_DM built in or dm-mod loaded. LVM snapshots, the second
//! volume backend, need it.
//!
//! When the control node is missing, [`KernelSupport`] says whether the
//! kernel registered device-mapper at all (/proc/misc lists
//! "device-mapper", /proc/devices a "device-mapper" block major), which
//! separates "no device node (no udev, run `dmsetup mknodes`)" from "not in
//! this kernel".

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

/// The control node.
pub const CONTROL: &str = "/dev/mapper/control";

/// `struct dm_ioctl` of include/uapi/linux/dm-ioctl.h (312 bytes).
#[repr(C)]
#[derive(Debug)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; 128],
    uuid: [u8; 129],
    data: [u8; 7],
}

nix::ioctl_readwrite!(dm_version_ioctl, 0xfd, 0, DmIoctl);

/// The ioctl interface version userspace speaks (`DM_VERSION_MAJOR` 4).
const DM_VERSION_MAJOR: u32 = 4;

/// Errors of device-mapper access.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/mapper/control could not be opened.
    #[error("cannot open {CONTROL}")]
    Open(#[source] io::Error),
    /// DM_VERSION failed.
    #[error("DM_VERSION ioctl failed")]
    Version(#[source] Errno),
}

/// Whether the running kernel registered device-mapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSupport {
    /// "device-mapper" in /proc/misc (the control device).
    pub misc_device: bool,
    /// "device-mapper" in the block section of /proc/devices.
    pub block_major: bool,
}

/// Reads /proc/misc and /proc/devices.
pub fn kernel_support() -> KernelSupport {
    let has = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.lines().any(|l| l.split_whitespace().nth(1) == Some("device-mapper")))
            .unwrap_or(false)
    };
    KernelSupport { misc_device: has("/proc/misc"), block_major: has("/proc/devices") }
}

/// Issues DM_VERSION and returns the kernel's ioctl interface version.
pub fn version() -> Result<[u32; 3], Error> {
    let control = OpenOptions::new().read(true).write(true).open(CONTROL).map_err(Error::Open)?;
    let mut io = DmIoctl {
        version: [DM_VERSION_MAJOR, 0, 0],
        data_size: size_of::<DmIoctl>() as u32,
        data_start: size_of::<DmIoctl>() as u32,
        target_count: 0,
        open_count: 0,
        flags: 0,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; 128],
        uuid: [0; 129],
        data: [0; 7],
    };
    // SAFETY: io is a dm_ioctl whose data_size is exactly its own size, so
    // the kernel reads and writes only within it.
    unsafe { dm_version_ioctl(control.as_raw_fd(), &mut io) }.map_err(Error::Version)?;
    Ok(io.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_matches_the_uapi_size() {
        assert_eq!(size_of::<DmIoctl>(), 312);
    }

    /// This kernel has no device-mapper (MACHINE.md): the probe must say
    /// so without failing in any other way. On a kernel with it, DM_VERSION
    /// must answer with interface 4.
    #[test]
    fn version_agrees_with_kernel_support() {
        let support = kernel_support();
        match version() {
            Ok(v) => assert_eq!(v[0], DM_VERSION_MAJOR),
            Err(Error::Open(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
                assert!(!support.misc_device || !std::path::Path::new(CONTROL).exists(), "{support:?}");
            }
            Err(e) => panic!("DM_VERSION: {e}"),
        }
    }
}
