//! Copy-on-write volumes, independent of the backend.
//!
//! This crate will own the volume trait that the coherent snapshot is built
//! on (create a read-only snapshot with a name, list, delete, roll back, open
//! a snapshot read-only, export and import a snapshot as a stream), the types
//! shared by the backends (snapshot identity, sizes), backend detection from a
//! path (statfs magic, the block device behind a mount), the rules for when a
//! filesystem may be frozen, and an in-memory backend for testing the
//! orchestration without disks. The concrete backends live in `stasis-btrfs`
//! and `stasis-lvm`; nothing above this crate names them except the binary.
//!
//! Nothing is implemented yet: volumes are the subject of the volume snapshot
//! issue.
#![forbid(unsafe_code)]
