//! VG and LV names: from a device-mapper name, and which names stasis lets
//! through to an LVM command line.

use stasis_volume::Error;

/// The VG and LV of an LVM device-mapper name. LVM names its dm devices
/// `VG-LV` with every dash inside either name doubled (`my--vg-my--lv` is
/// VG `my-vg`, LV `my-lv`); a third part (`-real`, `-cow`, `-tpool`) names a
/// hidden layer, which is no volume to snapshot.
pub fn split_dm_name(dm_name: &str) -> Result<(String, String), Error> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut chars = dm_name.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '-' {
            part.push(c);
        } else if chars.next_if_eq(&'-').is_some() {
            part.push('-');
        } else {
            parts.push(std::mem::take(&mut part));
        }
    }
    parts.push(part);
    match <[String; 2]>::try_from(parts) {
        Ok([vg, lv]) if !vg.is_empty() && !lv.is_empty() => Ok((vg, lv)),
        _ => Err(Error::Other(format!(
            "device-mapper device {dm_name:?} is not named like an LVM logical volume (VG-LV, dashes doubled)"
        ))),
    }
}

/// Whether LVM would take `name` as an LV name (lvm(8) "VALID NAMES":
/// a-z A-Z 0-9 + _ . -, not starting with a dash, not `.` or `..`, and not
/// the prefixes and parts it reserves), checked here first because a name is
/// put on a command line and into `/dev/VG/NAME`.
pub fn check_lv_name(volume: &str, name: &str) -> Result<(), Error> {
    const RESERVED_PARTS: [&str; 11] = [
        "_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta",
        "_vorigin",
    ];
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 127 {
        Some("it is longer than 127 bytes")
    } else if name.starts_with('-') {
        Some("it starts with a dash")
    } else if name == "." || name == ".." {
        Some("it is . or ..")
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c)) {
        Some("LVM names hold only letters, digits, + _ . and -")
    } else if name.starts_with("snapshot") || name.starts_with("pvmove") {
        Some("LVM reserves names starting with snapshot and pvmove")
    } else if RESERVED_PARTS.iter().any(|p| name.contains(p)) {
        Some("LVM reserves names containing _mlog, _mimage, _rimage, _tdata and the like")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::Other(format!("{name:?} cannot name a snapshot of {volume}: {why}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_names_are_unescaped() {
        let split = |s: &str| split_dm_name(s).ok();
        let pair = |vg: &str, lv: &str| Some((vg.to_owned(), lv.to_owned()));
        assert_eq!(split("vg0-data"), pair("vg0", "data"));
        assert_eq!(split("my--vg-my--lv"), pair("my-vg", "my-lv"));
        assert_eq!(split("vg-a----b"), pair("vg", "a--b"));
        assert_eq!(split("vg_0-lv.1+x"), pair("vg_0", "lv.1+x"));
        assert_eq!(split("vg0-data-real"), None);
        assert_eq!(split("vg0"), None);
        assert_eq!(split("-data"), None);
        assert_eq!(split("vg0-"), None);
    }

    #[test]
    fn names_lvm_would_refuse_are_refused_first() {
        for good in ["before-upgrade", "nightly.2024_11_21", "a+b", "x"] {
            assert!(check_lv_name("vg0/data", good).is_ok(), "{good}");
        }
        for bad in ["", "-y", ".", "..", "a/b", "a b", "snapshot1", "pvmove0", "x_tmeta", "é", &"a".repeat(128)] {
            let err = check_lv_name("vg0/data", bad).unwrap_err().to_string();
            assert!(err.contains("cannot name a snapshot of vg0/data"), "{bad}: {err}");
        }
    }
}
