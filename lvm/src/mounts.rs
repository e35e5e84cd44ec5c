//! The mounts of an LV, read from /proc/self/mountinfo (proc(5)), so that a
//! rollback can put the origin back where and how it was mounted.

use std::path::PathBuf;

/// One mountinfo line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub device: (u32, u32),
    /// The directory of the filesystem mounted here ("/" for a whole one,
    /// another for a bind mount of part of it).
    pub root: String,
    pub point: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The per-mount options (rw, nosuid, relatime...) followed by the
    /// filesystem's own (errors=remount-ro, inode64...), for `mount -o`.
    pub options: String,
}

/// Every mount in a mountinfo text.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|&f| f == "-")?;
    let (major, minor) = fields.get(2)?.split_once(':')?;
    let mut options: Vec<&str> = Vec::new();
    let super_options = fields.get(sep + 3).copied().unwrap_or_default();
    for option in fields.get(5)?.split(',').chain(super_options.split(',')) {
        // rw/ro come from the per-mount options; seclabel is shown, not set.
        let shown = option.is_empty() || option == "seclabel";
        let again = options.contains(&option) || (matches!(option, "rw" | "ro") && !options.is_empty());
        if !shown && !again {
            options.push(option);
        }
    }
    Some(Mount {
        device: (major.parse().ok()?, minor.parse().ok()?),
        root: unescape(fields.get(3)?),
        point: PathBuf::from(unescape(fields.get(4)?)),
        fstype: fields.get(sep + 1)?.to_string(),
        source: unescape(fields.get(sep + 2)?),
        options: options.join(","),
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
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
    fn mountinfo_gives_where_and_how() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    40 22 253:3 / /srv/my\\040data rw,nosuid,relatime shared:20 - xfs /dev/mapper/vg0-data \
                    rw,seclabel,attr2,inode64,logbufs=8,logbsize=32k,noquota\n\
                    41 22 253:3 /sub /srv/bind ro,relatime - xfs /dev/mapper/vg0-data rw,attr2\n";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(
            mounts[1],
            Mount {
                device: (253, 3),
                root: "/".into(),
                point: "/srv/my data".into(),
                fstype: "xfs".into(),
                source: "/dev/mapper/vg0-data".into(),
                options: "rw,nosuid,relatime,attr2,inode64,logbufs=8,logbsize=32k,noquota".into(),
            }
        );
        assert_eq!(mounts[2].root, "/sub");
        assert_eq!(mounts[2].options, "ro,relatime,attr2");
    }
}
