//! The JSON reports of `lvs` and `vgs` (`--reportformat json`: every value
//! a string, `--units b --nosuffix`: sizes in bytes without a unit), and
//! what stasis reads in them. lvs(8) documents the fields and `lv_attr`.

use serde::Deserialize;

/// The `lvs -o` fields stasis asks for, in the order of [`Lv`].
pub const LV_FIELDS: &str = "lv_name,vg_name,lv_uuid,lv_path,lv_attr,lv_size,segtype,pool_lv,origin,\
                             data_percent,snap_percent,lv_time,lv_tags,lv_kernel_major,lv_kernel_minor,\
                             lv_merging,lv_snapshot_invalid";

/// The `vgs -o` fields stasis asks for.
pub const VG_FIELDS: &str = "vg_name,vg_size,vg_free,vg_extent_size";

/// The tag an imported LV carries to be listed with the snapshots of the
/// origin it was imported into (it is a plain LV: `origin` is empty).
pub fn import_tag(origin: &str) -> String {
    format!("stasis_import_of_{origin}")
}

/// The tag of a snapshot made again by a rollback (the merge consumed the
/// one rolled back to), followed by the id of the one it stands for: the
/// snapshot keeps its id, so an image taken with it can be restored again.
pub const ID_TAG: &str = "stasis_id_";

/// One row of `lvs`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Lv {
    pub lv_name: String,
    pub vg_name: String,
    pub lv_uuid: String,
    /// `/dev/VG/LV`.
    pub lv_path: String,
    /// Ten characters, lvs(8) "lv_attr bits".
    pub lv_attr: String,
    pub lv_size: String,
    /// "linear", "striped", "thin", "thin-pool", "snapshot", ...
    pub segtype: String,
    /// The thin pool of a thin LV.
    pub pool_lv: String,
    /// The origin of a snapshot, classic or thin.
    pub origin: String,
    /// How full a classic snapshot's COW space (or a thin LV) is, as
    /// "12.50"; empty when the LV is inactive.
    pub data_percent: String,
    /// The older name of data_percent for snapshots.
    pub snap_percent: String,
    /// When it was made: "2024-11-21 20:42:01 +0000" (lvm.conf
    /// report/time_format's default, "%Y-%m-%d %T %z").
    pub lv_time: String,
    /// Comma-separated.
    pub lv_tags: String,
    /// The dm device's numbers, "-1" when inactive.
    pub lv_kernel_major: String,
    pub lv_kernel_minor: String,
    /// "merging" (or "1" with report/binary_values_as_numeric) for a
    /// snapshot merging into its origin.
    pub lv_merging: String,
    /// "snapshot invalid" for a classic snapshot whose COW space filled.
    pub lv_snapshot_invalid: String,
}

/// A binary lvs field: its own name when set (lv_merging "merging"),
/// "" when not, "unknown" when it does not apply; "1"/"0" when lvm.conf
/// says report/binary_values_as_numeric.
fn set(field: &str, name: &str) -> bool {
    matches!(field.trim(), "1") || field.trim() == name
}

impl Lv {
    fn attr(&self, i: usize) -> char {
        self.lv_attr.chars().nth(i).unwrap_or('-')
    }

    pub fn is_thin(&self) -> bool {
        self.segtype == "thin"
    }

    /// Attr 0 's' (snapshot), 'S' (merging snapshot), or a thin LV with an
    /// origin (a thin snapshot).
    pub fn is_snapshot(&self) -> bool {
        matches!(self.attr(0), 's' | 'S') || (self.is_thin() && !self.origin.is_empty())
    }

    /// A classic snapshot whose COW space filled up: attr 4 'I' (invalid)
    /// or 'S' (invalid suspended).
    pub fn is_invalid(&self) -> bool {
        matches!(self.attr(4), 'I' | 'S') || set(&self.lv_snapshot_invalid, "snapshot invalid")
    }

    /// A snapshot merging into its origin (attr 0 'S'), classic or thin,
    /// started or waiting for the origin's next activation.
    pub fn is_merging(&self) -> bool {
        self.attr(0) == 'S' || set(&self.lv_merging, "merging")
    }

    /// Attr 4 'a': its dm device is there with a live table.
    pub fn is_active(&self) -> bool {
        self.attr(4) == 'a'
    }

    pub fn size(&self) -> Result<u64, String> {
        number(&self.lv_size, "lv_size", &self.lv_name)
    }

    /// How full the COW space (or the thin LV) is, if LVM knows (active).
    pub fn percent(&self) -> Option<f64> {
        [&self.data_percent, &self.snap_percent].into_iter().find_map(|p| p.trim().parse().ok())
    }

    pub fn device(&self) -> Option<(u32, u32)> {
        Some((self.lv_kernel_major.parse().ok()?, self.lv_kernel_minor.parse().ok()?))
    }

    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.lv_tags.split(',').filter(|t| !t.is_empty())
    }

    /// The snapshot's id: the id its [`ID_TAG`] carries, else its UUID.
    pub fn id(&self) -> &str {
        self.tags().find_map(|t| t.strip_prefix(ID_TAG)).unwrap_or(&self.lv_uuid)
    }

    /// Seconds since the epoch, 0 when lv_time is missing or unreadable.
    pub fn created(&self) -> u64 {
        parse_time(&self.lv_time).unwrap_or(0)
    }
}

/// One row of `vgs`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Vg {
    pub vg_name: String,
    pub vg_size: String,
    pub vg_free: String,
    pub vg_extent_size: String,
}

impl Vg {
    pub fn free(&self) -> Result<u64, String> {
        number(&self.vg_free, "vg_free", &self.vg_name)
    }

    pub fn extent_size(&self) -> Result<u64, String> {
        number(&self.vg_extent_size, "vg_extent_size", &self.vg_name)
    }
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<T>,
}

#[derive(Deserialize)]
struct LvSection {
    #[serde(default)]
    lv: Vec<Lv>,
}

#[derive(Deserialize)]
struct VgSection {
    #[serde(default)]
    vg: Vec<Vg>,
}

/// The rows of an `lvs --reportformat json` output. `lvs -a` shows hidden
/// LVs in brackets, a classic snapshot being merged among them (`[snap]`):
/// the names are given without.
pub fn parse_lvs(json: &str) -> Result<Vec<Lv>, String> {
    let report: Report<LvSection> = serde_json::from_str(json).map_err(|e| format!("unreadable lvs report: {e}"))?;
    let mut rows: Vec<Lv> = report.report.into_iter().flat_map(|s| s.lv).collect();
    for row in &mut rows {
        if let Some(name) = row.lv_name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            row.lv_name = name.to_owned();
        }
    }
    Ok(rows)
}

/// The rows of a `vgs --reportformat json` output.
pub fn parse_vgs(json: &str) -> Result<Vec<Vg>, String> {
    let report: Report<VgSection> = serde_json::from_str(json).map_err(|e| format!("unreadable vgs report: {e}"))?;
    Ok(report.report.into_iter().flat_map(|s| s.vg).collect())
}

fn number(text: &str, field: &str, of: &str) -> Result<u64, String> {
    text.trim().parse().map_err(|_| format!("{field} of {of} is {text:?}, not a number of bytes"))
}

/// "2024-11-21 20:42:01 +0000" (or "-0130") as seconds since the epoch.
pub fn parse_time(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let (date, time, zone) = (parts.next()?, parts.next()?, parts.next()?);
    let d: Vec<i64> = date.split('-').map(|n| n.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<i64> = time.split(':').map(|n| n.parse().ok()).collect::<Option<_>>()?;
    let (&[year, month, day], &[hour, minute, second]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    let (sign, digits) = match zone.split_at_checked(1)? {
        ("+", d) => (1, d),
        ("-", d) => (-1, d),
        _ => return None,
    };
    if digits.len() != 4 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let offset: i64 = digits[..2].parse::<i64>().ok()? * 3600 + digits[2..].parse::<i64>().ok()? * 60;
    let local = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    u64::try_from(local - sign * offset).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days_from_civil).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lv_time_is_read_with_its_zone() {
        assert_eq!(parse_time("1970-01-01 00:00:00 +0000"), Some(0));
        assert_eq!(parse_time("2024-11-21 20:42:01 +0000"), Some(1_732_221_721));
        assert_eq!(parse_time("2024-11-21 21:42:01 +0100"), Some(1_732_221_721));
        assert_eq!(parse_time("2024-11-21 19:12:01 -0130"), Some(1_732_221_721));
        assert_eq!(parse_time("2000-02-29 12:00:00 +0000"), Some(951_825_600));
        assert_eq!(parse_time(""), None);
        assert_eq!(parse_time("2024-11-21 20:42:01"), None);
        assert_eq!(parse_time("yesterday at noon +0000"), None);
    }
}
