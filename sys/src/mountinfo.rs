//! /proc/PID/mountinfo (proc(5)), parsed once for every caller: where each
//! filesystem is mounted, from which device, with which options.

use std::path::PathBuf;

/// One mountinfo line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The device (major, minor) as `st_dev` gives it.
    pub device: (u32, u32),
    /// The directory of the filesystem mounted here ("/" for a whole one,
    /// another for a bind mount or a btrfs subvolume).
    pub root: String,
    pub mount_point: PathBuf,
    /// The per-mount options (rw, nosuid, relatime, ...).
    pub mount_options: String,
    pub fstype: String,
    /// The mount source (a device path, or a name such as "cgroup").
    pub source: String,
    /// The filesystem's own options (for cgroup v1: the controllers).
    pub super_options: Vec<String>,
}

/// Every mount of a mountinfo text; the optional fields end at "-".
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// The calling process's mounts.
pub fn own() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|&f| f == "-")?;
    let (major, minor) = fields.get(2)?.split_once(':')?;
    let super_options = fields.get(sep + 3).copied().unwrap_or_default();
    Some(Mount {
        device: (major.parse().ok()?, minor.parse().ok()?),
        root: unescape(fields.get(3)?),
        mount_point: PathBuf::from(unescape(fields.get(4)?)),
        mount_options: fields.get(5)?.to_string(),
        fstype: fields.get(sep + 1)?.to_string(),
        source: unescape(fields.get(sep + 2)?),
        super_options: super_options.split(',').filter(|o| !o.is_empty()).map(str::to_owned).collect(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_optional_fields_and_escapes() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    40 22 253:3 /sub /srv/my\\040data rw,nosuid shared:20 master:2 - xfs /dev/mapper/vg0-data rw,attr2\n\
                    31 25 0:27 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n";
        let m = parse(text);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1],
            Mount {
                device: (253, 3),
                root: "/sub".into(),
                mount_point: "/srv/my data".into(),
                mount_options: "rw,nosuid".into(),
                fstype: "xfs".into(),
                source: "/dev/mapper/vg0-data".into(),
                super_options: vec!["rw".into(), "attr2".into()],
            }
        );
        assert_eq!(m[2].super_options, ["rw", "freezer"]);
        assert!(own().unwrap().iter().any(|m| m.mount_point == std::path::Path::new("/")));
    }
}
