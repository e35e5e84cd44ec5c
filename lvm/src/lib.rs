//! The LVM volume backend.
//!
//! This crate will implement the volume trait of `stasis-volume` for LVM
//! logical volumes by driving the LVM command-line tools with
//! `--reportformat json --units b --nosuffix` and `LC_ALL=C` (liblvm2app was
//! removed from LVM2 in 2.03 and no maintained binding exists): classic and
//! thin snapshots, rollback with `lvconvert --merge`, listing, with exit codes
//! and stderr mapped to typed errors. It never freezes a filesystem before
//! `lvcreate -s`, which freezes it itself (doing both fails with EBUSY).
//!
//! Nothing is implemented yet: volumes are the subject of the volume snapshot
//! issue.
#![forbid(unsafe_code)]
