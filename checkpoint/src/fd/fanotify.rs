//! fanotify groups. /proc/PID/fdinfo shows the group's fanotify_init flags
//! and each mark (fs/notify/fdinfo.c `fanotify_fdinfo`): an inode mark
//! with a file handle of the inode (opened, as for inotify, to learn its
//! path), a mount mark with the mount's id (its mount point in the
//! process's mountinfo), a filesystem mark with the device (a mount point
//! of it); each with its event mask, ignore mask and mark flags.
//!
//! Restore makes the group in stasis with the same flags and adds each
//! mark again: the event mask with one fanotify_mark call, the ignore mask
//! with another. Events queued at dump time are not kept (as for inotify).

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

use stasis_image::records::{fd::Kind, Fanotify, FanotifyMark};
use stasis_sys::Pid;

use super::Seen;
use crate::proc;

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_EVICTABLE: u32 = 0x200;
/// FAN_MARK_IGNORE (Linux 6.0) includes the FAN_MARK_IGNORED_MASK bit.
const FAN_MARK_IGNORE: u32 = 0x400 | FAN_MARK_IGNORED_MASK;

use super::inotify::{handle, hex_field as hex};

/// The group's flags and its marks, each with what names its object.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    pub flags: u32,
    pub event_flags: u32,
    pub marks: Vec<(Object, FanotifyMark)>,
}

/// What a mark is on, as fdinfo names it.
#[derive(Debug, PartialEq, Eq)]
pub enum Object {
    /// An inode: its device (major << 20 | minor) and file handle.
    Inode { sdev: u64, handle_type: i32, handle: Vec<u8> },
    /// A mount, by mount id.
    Mount(u64),
    /// A filesystem, by device.
    Filesystem(u64),
}

pub fn parse(text: &str) -> Result<Parsed, String> {
    let mut parsed = Parsed { flags: 0, event_flags: 0, marks: Vec::new() };
    for line in text.lines().filter(|l| l.starts_with("fanotify ")) {
        if line.contains(" flags:") && line.contains(" event-flags:") {
            parsed.flags = hex(line, "flags")? as u32;
            parsed.event_flags = hex(line, "event-flags")? as u32;
            continue;
        }
        let mut mark = FanotifyMark {
            flags: hex(line, "mflags")? as u32,
            mask: hex(line, "mask")?,
            ignored_mask: hex(line, "ignored_mask")?,
            ..FanotifyMark::default()
        };
        let object = if line.contains(" ino:") {
            Object::Inode {
                sdev: hex(line, "sdev")?,
                handle_type: hex(line, "fhandle-type")? as i32,
                handle: handle(line)?,
            }
        } else if line.contains(" mnt_id:") {
            mark.kind = FAN_MARK_MOUNT;
            Object::Mount(hex(line, "mnt_id")?)
        } else {
            mark.kind = FAN_MARK_FILESYSTEM;
            Object::Filesystem(hex(line, "sdev")?)
        };
        parsed.marks.push((object, mark));
    }
    Ok(parsed)
}

pub fn dump(pid: Pid, seen: &Seen) -> Result<Kind, String> {
    let text = proc::read(pid, &format!("fdinfo/{}", seen.fd)).map_err(|e| format!("fdinfo: {e}"))?;
    let parsed = parse(&text)?;
    let mountinfo = || proc::read(pid, "mountinfo").map_err(|e| format!("mountinfo: {e}"));
    let mut marks = Vec::new();
    for (object, mut mark) in parsed.marks {
        mark.path = match object {
            Object::Inode { sdev, handle_type, handle } => {
                super::inotify::path_of(sdev, handle_type, &handle).map_err(|e| format!("fanotify mark: {e}"))?
            }
            Object::Mount(id) => mount_point(&mountinfo()?, |mid, _| mid == id)
                .ok_or_else(|| format!("fanotify mark on mount {id}, which is not in the process's mountinfo"))?,
            Object::Filesystem(sdev) => {
                let dev = format!("{}:{}", sdev >> 20, sdev & 0xf_ffff);
                mount_point(&mountinfo()?, |_, d| d == dev)
                    .ok_or_else(|| format!("fanotify mark on filesystem {dev}, which has no mount here"))?
            }
        };
        marks.push(mark);
    }
    Ok(Kind::Fanotify(Fanotify { flags: parsed.flags, event_flags: parsed.event_flags, marks }))
}

/// The mount point of the first mountinfo line whose mount id and device
/// (`major:minor`) `want` accepts.
fn mount_point(mountinfo: &str, want: impl Fn(u64, &str) -> bool) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let id = f.first()?.parse().ok()?;
        want(id, f.get(2)?).then(|| f.get(4).map(|p| p.to_string())).flatten()
    })
}

/// A new group with the same flags and marks (its description's status
/// flags are the caller's to set).
pub fn restore(n: &Fanotify) -> Result<OwnedFd, String> {
    use stasis_sys::inotify::{fanotify_init, fanotify_mark};
    let fd = fanotify_init(n.flags, n.event_flags).map_err(|e| format!("fanotify_init({:#x}): {e}", n.flags))?;
    for m in &n.marks {
        let path = CString::new(m.path.as_bytes()).map_err(|e| e.to_string())?;
        // An inode mark is on the inode the path names itself.
        let on = m.kind | if m.kind == 0 { FAN_MARK_DONT_FOLLOW } else { 0 };
        let add = FAN_MARK_ADD | on | (m.flags & FAN_MARK_EVICTABLE);
        let mark = |flags: u32, mask: u64, what: &str| {
            fanotify_mark(fd.as_fd(), flags, mask, &path)
                .map_err(|e| format!("fanotify mark on {} ({what} {mask:#x}): {e}", m.path))
        };
        if m.mask != 0 {
            mark(add, m.mask, "mask")?;
        }
        if m.ignored_mask != 0 {
            let ignore =
                if m.flags & FAN_MARK_IGNORE == FAN_MARK_IGNORE { FAN_MARK_IGNORE } else { FAN_MARK_IGNORED_MASK };
            mark(add | ignore | (m.flags & FAN_MARK_IGNORED_SURV_MODIFY), m.ignored_mask, "ignore mask")?;
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fixture() {
        let p = parse(
            "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\n\
             fanotify flags:10 event-flags:0\n\
             fanotify mnt_id:20 mflags:0 mask:3b ignored_mask:0\n\
             fanotify ino:3c4a7 sdev:fe00000 mflags:40 mask:2 ignored_mask:8 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000\n\
             fanotify sdev:800001 mflags:0 mask:20 ignored_mask:0\n",
        )
        .unwrap();
        assert_eq!((p.flags, p.event_flags), (0x10, 0));
        assert_eq!(p.marks.len(), 3);
        assert_eq!(p.marks[0].0, Object::Mount(0x20));
        assert_eq!((p.marks[0].1.kind, p.marks[0].1.mask), (FAN_MARK_MOUNT, 0x3b));
        assert_eq!(
            p.marks[1].0,
            Object::Inode { sdev: 0xfe0_0000, handle_type: 1, handle: vec![0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0] }
        );
        assert_eq!((p.marks[1].1.kind, p.marks[1].1.flags, p.marks[1].1.ignored_mask), (0, 0x40, 8));
        assert_eq!(p.marks[2].0, Object::Filesystem(0x80_0001));
        assert_eq!(p.marks[2].1.kind, FAN_MARK_FILESYSTEM);
    }
}
