//! The btrfs volume backend.
//!
//! This crate will implement the volume trait of `stasis-volume` for btrfs
//! subvolumes through the kernel's own ioctls (read-only snapshots with
//! `BTRFS_IOC_SNAP_CREATE_V2`, `BTRFS_IOC_SNAP_DESTROY_V2`, subvolume info and
//! listing, export with `BTRFS_IOC_SEND`, optionally against a parent), the
//! ioctls themselves living in `stasis-sys`. Import goes through
//! `btrfs receive`.
//!
//! Nothing is implemented yet: volumes are the subject of the volume snapshot
//! issue.
#![forbid(unsafe_code)]
