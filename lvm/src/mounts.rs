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
    stasis_sys::mountinfo::parse(text).into_iter().map(Mount::from).collect()
}

impl From<stasis_sys::mountinfo::Mount> for Mount {
    fn from(m: stasis_sys::mountinfo::Mount) -> Mount {
        let mut options: Vec<&str> = Vec::new();
        for option in m.mount_options.split(',').chain(m.super_options.iter().map(String::as_str)) {
            // rw/ro come from the per-mount options; seclabel is shown, not set.
            let shown = option.is_empty() || option == "seclabel";
            let again = options.contains(&option) || (matches!(option, "rw" | "ro") && !options.is_empty());
            if !shown && !again {
                options.push(option);
            }
        }
        let options = options.join(",");
        Mount { device: m.device, root: m.root, point: m.mount_point, fstype: m.fstype, source: m.source, options }
    }
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
