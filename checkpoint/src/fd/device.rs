//! Memory character devices (major 1): /dev/null, /dev/zero, /dev/full,
//! /dev/random, /dev/urandom. They have no state; restore opens the same
//! device node again.

use std::os::unix::fs::MetadataExt;

use stasis_image::records::{fd::Kind, Device};

use super::Seen;

pub fn dump(pid: stasis_sys::Pid, seen: &Seen) -> Kind {
    let (path, deleted) = match seen.target.strip_suffix(" (deleted)") {
        Some(path) => (path.to_owned(), true),
        None => (seen.target.clone(), false),
    };
    let meta = std::fs::metadata(crate::proc::path(pid, &format!("fd/{}", seen.fd))).ok();
    let (mode, uid, gid) = meta.map_or((0, 0, 0), |m| (m.mode() & 0o7777, m.uid(), m.gid()));
    Kind::Device(Device { path, rdev: seen.rdev, deleted, mode, uid, gid })
}
