//! Memory character devices (major 1): /dev/null, /dev/zero, /dev/full,
//! /dev/random, /dev/urandom. They have no state; restore opens the same
//! device node again.

use stasis_image::records::{fd::Kind, Device};

use super::Seen;

pub fn dump(seen: &Seen) -> Kind {
    let (path, deleted) = match seen.target.strip_suffix(" (deleted)") {
        Some(path) => (path.to_owned(), true),
        None => (seen.target.clone(), false),
    };
    Kind::Device(Device { path, rdev: seen.rdev, deleted })
}
