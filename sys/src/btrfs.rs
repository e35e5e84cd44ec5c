//! btrfs: whether this kernel has it, asked through /dev/btrfs-control with
//! `BTRFS_IOC_GET_SUPPORTED_FEATURES` (include/uapi/linux/btrfs.h,
//! fs/btrfs/super.c `btrfs_control_ioctl`), which answers without any btrfs
//! filesystem mounted; and the subvolume ioctls the btrfs volume backend is
//! built on: `BTRFS_IOC_SNAP_CREATE_V2` (a snapshot, read-only or not),
//! `BTRFS_IOC_SNAP_DESTROY_V2`, `BTRFS_IOC_GET_SUBVOL_INFO` and
//! `BTRFS_IOC_SEND` (the send stream `btrfs receive` takes).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

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

/// `struct btrfs_ioctl_vol_args_v2` (4096 bytes): the source subvolume's
/// fd, flags, and the new (or doomed) subvolume's name.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; VOL_NAME_LEN],
}

/// BTRFS_SUBVOL_NAME_MAX + 1 in the union of vol_args_v2.
const VOL_NAME_LEN: usize = 4040;
/// BTRFS_SUBVOL_RDONLY.
pub const SUBVOL_RDONLY: u64 = 1 << 1;

nix::ioctl_write_ptr!(snap_create_v2, 0x94, 23, VolArgsV2);
nix::ioctl_write_ptr!(snap_destroy_v2, 0x94, 63, VolArgsV2);

fn vol_args(fd: i64, flags: u64, name: &str) -> Result<Box<VolArgsV2>, Errno> {
    // A name is one path component, at most 255 bytes (BTRFS_NAME_LEN).
    if name.is_empty() || name.len() > 255 || name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(Errno::EINVAL);
    }
    let mut args = Box::new(VolArgsV2 { fd, transid: 0, flags, unused: [0; 4], name: [0; VOL_NAME_LEN] });
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(args)
}

/// Snapshot the subvolume `source` (an fd of its root directory) as `name`
/// inside the directory `dir`, read-only if asked.
pub fn snapshot(source: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &str, read_only: bool) -> Result<(), Errno> {
    let args = vol_args(i64::from(source.as_raw_fd()), if read_only { SUBVOL_RDONLY } else { 0 }, name)?;
    // SAFETY: `args` is a whole btrfs_ioctl_vol_args_v2 the kernel only
    // reads; the fds are borrowed for the call.
    unsafe { snap_create_v2(dir.as_raw_fd(), &*args) }.map(drop)
}

/// Delete the subvolume `name` inside the directory `dir`.
pub fn destroy(dir: BorrowedFd<'_>, name: &str) -> Result<(), Errno> {
    let args = vol_args(0, 0, name)?;
    // SAFETY: as in `snapshot`.
    unsafe { snap_destroy_v2(dir.as_raw_fd(), &*args) }.map(drop)
}

nix::ioctl_write_ptr!(subvol_setflags, 0x94, 26, u64);

/// `BTRFS_ROOT_SUBVOL_RDONLY` (include/uapi/linux/btrfs_tree.h): the root
/// item's flag that GET_SUBVOL_INFO reports, not the ioctls' own
/// `BTRFS_SUBVOL_RDONLY` (1 << 1).
const ROOT_SUBVOL_RDONLY: u64 = 1 << 0;

/// Make the subvolume `subvol` (an fd of its root directory) read-only or
/// writable (`BTRFS_IOC_SUBVOL_SETFLAGS`; EPERM while a send reads it).
/// The kernel leaves its uuid and received uuid as they are.
pub fn set_read_only(subvol: BorrowedFd<'_>, read_only: bool) -> Result<(), Errno> {
    let flags: u64 = if read_only { SUBVOL_RDONLY } else { 0 };
    // SAFETY: the kernel reads one u64 from the pointer, which lives for
    // the call; the fd is borrowed.
    unsafe { subvol_setflags(subvol.as_raw_fd(), &flags) }.map(drop)
}

/// `struct btrfs_ioctl_timespec`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Timespec {
    sec: u64,
    nsec: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args`.
#[repr(C)]
struct SubvolInfoArgs {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: Timespec,
    otime: Timespec,
    stime: Timespec,
    rtime: Timespec,
    reserved: [u64; 8],
}

nix::ioctl_read!(get_subvol_info, 0x94, 60, SubvolInfoArgs);

/// What the kernel tells of one subvolume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubvolInfo {
    /// Its tree id (subvolume id); 5 is the top level.
    pub id: u64,
    /// Its name in its parent directory.
    pub name: String,
    /// The subvolume holding it.
    pub parent_id: u64,
    pub read_only: bool,
    pub uuid: [u8; 16],
    /// The subvolume it is a snapshot of (zero: none).
    pub parent_uuid: [u8; 16],
    /// Set by `btrfs receive` on what it made.
    pub received_uuid: [u8; 16],
    /// When it was made (seconds since the epoch).
    pub created: u64,
}

/// BTRFS_IOC_GET_SUBVOL_INFO on the root directory of a subvolume (any
/// directory of it: the subvolume holding it).
pub fn subvol_info(fd: BorrowedFd<'_>) -> Result<SubvolInfo, Errno> {
    let mut args = std::mem::MaybeUninit::<SubvolInfoArgs>::zeroed();
    // SAFETY: the kernel fills the whole struct, of the size the ioctl
    // number encodes.
    unsafe { get_subvol_info(fd.as_raw_fd(), args.as_mut_ptr()) }?;
    // SAFETY: zeroed, then filled by the kernel: every field is an integer
    // or an array of them, for which any bytes are valid.
    let a = unsafe { args.assume_init() };
    let end = a.name.iter().position(|&b| b == 0).unwrap_or(a.name.len());
    Ok(SubvolInfo {
        id: a.treeid,
        name: String::from_utf8_lossy(&a.name[..end]).into_owned(),
        parent_id: a.parent_id,
        read_only: a.flags & ROOT_SUBVOL_RDONLY != 0,
        uuid: a.uuid,
        parent_uuid: a.parent_uuid,
        received_uuid: a.received_uuid,
        created: a.otime.sec,
    })
}

/// `struct btrfs_ioctl_send_args`.
#[repr(C)]
struct SendArgs {
    send_fd: i64,
    clone_sources_count: u64,
    clone_sources: *const u64,
    parent_root: u64,
    flags: u64,
    version: u32,
    reserved: [u8; 28],
}

nix::ioctl_write_ptr!(send_ioctl, 0x94, 38, SendArgs);

/// BTRFS_IOC_SEND: write the send stream of the read-only subvolume
/// `snapshot` to `out` (a pipe or file), whole or, with `parent` (a
/// read-only subvolume id of the same filesystem), as the changes since it.
/// Blocks until the stream is written: a pipe must be drained meanwhile.
pub fn send(snapshot: BorrowedFd<'_>, out: BorrowedFd<'_>, parent: Option<u64>) -> Result<(), Errno> {
    let sources = parent.map(|p| [p]);
    let args = SendArgs {
        send_fd: i64::from(out.as_raw_fd()),
        clone_sources_count: u64::from(sources.is_some()),
        clone_sources: sources.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
        parent_root: parent.unwrap_or(0),
        flags: 0,
        version: 0,
        reserved: [0; 28],
    };
    // SAFETY: `args` and the clone source array it points to live until the
    // call returns; the kernel only reads them and writes to `out`.
    unsafe { send_ioctl(snapshot.as_raw_fd(), &args) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_structs_have_the_kernels_sizes() {
        assert_eq!(size_of::<VolArgsV2>(), 4096);
        assert_eq!(size_of::<SubvolInfoArgs>(), 504);
        assert_eq!(size_of::<SendArgs>(), 72);
    }

    #[test]
    fn kernel_reports_btrfs_features() {
        assert!(in_proc_filesystems(), "btrfs missing from /proc/filesystems");
        let features = supported_features().expect("BTRFS_IOC_GET_SUPPORTED_FEATURES");
        // Every btrfs since 3.14 supports at least MIXED_BACKREF (incompat bit 0).
        assert_ne!(features.supported.incompat & 1, 0, "{features:?}");
    }
}
