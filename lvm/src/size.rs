//! How much copy-on-write space a classic snapshot gets.
//!
//! A classic snapshot keeps the old copy of every chunk the origin
//! overwrites while it exists, in a COW area of fixed size taken from the
//! VG's free space. When that fills, the kernel drops the snapshot (it
//! becomes invalid, lvs attr 4 `I`): the size is a bet on how much of the
//! origin changes before the snapshot is deleted or rolled back to.

use stasis_volume::Error;

/// The default COW space: this share of the origin's size.
pub const DEFAULT_PERCENT: u64 = 20;

/// No classic snapshot gets fewer extents than this (4 MiB extents, the
/// default, make it 16 MiB).
pub const MIN_EXTENTS: u64 = 4;

/// How big a classic snapshot's COW space is. Thin snapshots have none:
/// they share their pool's free space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotSize {
    /// This percentage of the origin's size, at least [`MIN_EXTENTS`], and
    /// lowered to the VG's free space when that is less.
    Percent(u64),
    /// This many bytes, rounded up to whole extents; more than the VG's free
    /// space is an error.
    Bytes(u64),
}

impl Default for SnapshotSize {
    fn default() -> SnapshotSize {
        SnapshotSize::Percent(DEFAULT_PERCENT)
    }
}

/// What [`choose`] settled on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cow {
    /// For `lvcreate -l`.
    pub extents: u64,
    /// Things the caller should be told (the snapshot may fill, the size
    /// was lowered).
    pub warnings: Vec<String>,
}

/// The COW extents for a classic snapshot of `volume` (in VG `vg`), whose
/// origin is `origin` bytes, in a VG of `extent`-byte extents with `free`
/// bytes free.
pub fn choose(volume: &str, vg: &str, origin: u64, extent: u64, free: u64, size: SnapshotSize) -> Result<Cow, Error> {
    let extent = extent.max(1);
    let free_extents = free / extent;
    let origin_extents = origin.div_ceil(extent);
    let mut warnings = Vec::new();
    let no_room = |need: u64| {
        Error::Other(format!(
            "volume group {vg} has {} bytes free ({free_extents} extents of {extent} bytes): a classic snapshot of \
             {volume} needs {} ({need} extents); free space in {vg} (vgextend) or ask for a smaller snapshot",
            free_extents * extent,
            need * extent
        ))
    };
    let extents = match size {
        SnapshotSize::Percent(percent) => {
            let wanted = (origin_extents * percent).div_ceil(100).max(MIN_EXTENTS);
            if wanted <= free_extents {
                wanted
            } else if free_extents >= MIN_EXTENTS {
                warnings.push(format!(
                    "volume group {vg} has room for {} bytes of COW space, not the {} ({percent}% of {volume}) \
                     wanted: the snapshot gets them all",
                    free_extents * extent,
                    wanted * extent
                ));
                free_extents
            } else {
                return Err(no_room(MIN_EXTENTS));
            }
        }
        SnapshotSize::Bytes(bytes) => {
            let wanted = bytes.div_ceil(extent).max(1);
            if wanted > free_extents {
                return Err(no_room(wanted));
            }
            wanted
        }
    };
    if extents * extent < origin {
        warnings.push(format!(
            "the classic snapshot of {volume} has {} bytes of COW space for a {origin}-byte origin: if more than \
             that of the origin is overwritten while the snapshot exists, the snapshot becomes invalid",
            extents * extent
        ));
    }
    Ok(Cow { extents, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const EXTENT: u64 = 4 * MIB;

    fn pick(origin: u64, free: u64, size: SnapshotSize) -> Result<Cow, Error> {
        choose("vg0/data", "vg0", origin, EXTENT, free, size)
    }

    #[test]
    fn the_default_is_a_fifth_of_the_origin_with_a_warning() {
        let cow = pick(128 * MIB, 1024 * MIB, SnapshotSize::default()).unwrap();
        // 32 extents * 20% = 6.4, rounded up.
        assert_eq!(cow.extents, 7);
        assert_eq!(cow.warnings.len(), 1);
        assert!(cow.warnings[0].contains("becomes invalid"), "{:?}", cow.warnings);
    }

    #[test]
    fn small_origins_get_the_minimum() {
        let cow = pick(8 * MIB, 1024 * MIB, SnapshotSize::default()).unwrap();
        assert_eq!(cow.extents, MIN_EXTENTS);
        // 16 MiB of COW space for an 8 MiB origin: it cannot fill.
        assert!(cow.warnings.is_empty(), "{:?}", cow.warnings);
    }

    #[test]
    fn the_default_is_capped_at_the_free_space() {
        let cow = pick(1024 * MIB, 40 * MIB, SnapshotSize::default()).unwrap();
        assert_eq!(cow.extents, 10);
        assert_eq!(cow.warnings.len(), 2);
        assert!(cow.warnings[0].contains("gets them all"), "{:?}", cow.warnings);
    }

    #[test]
    fn too_little_free_space_is_an_error() {
        let err = pick(1024 * MIB, 12 * MIB, SnapshotSize::default()).unwrap_err().to_string();
        assert!(err.contains("volume group vg0 has 12582912 bytes free"), "{err}");
        let err = pick(128 * MIB, 64 * MIB, SnapshotSize::Bytes(100 * MIB)).unwrap_err().to_string();
        assert!(err.contains("needs 104857600 (25 extents)"), "{err}");
    }

    #[test]
    fn an_explicit_size_is_rounded_up_to_extents() {
        let cow = pick(128 * MIB, 1024 * MIB, SnapshotSize::Bytes(130 * MIB)).unwrap();
        assert_eq!(cow.extents, 33);
        assert!(cow.warnings.is_empty(), "{:?}", cow.warnings);
        let cow = pick(128 * MIB, 1024 * MIB, SnapshotSize::Percent(100)).unwrap();
        assert_eq!(cow.extents, 32);
    }
}
