//! inotify instances. /proc/PID/fdinfo lists each watch (fs/notify/fdinfo.c
//! `inotify_fdinfo`) with its watch descriptor, event mask and a file
//! handle of the watched inode; the handle is opened (open_by_handle_at,
//! on a mount of the same device) to learn the path to watch again.
//!
//! Restore makes the instance in stasis and adds the watches in order of
//! their descriptors, which the kernel hands out one after the other:
//! where the process had removed watches, placeholder watches are added and
//! removed again so every watch gets its old number (an application keys
//! its watches by them), and the IN_IGNORED events that leaves are read
//! away. Events queued at dump time are not kept.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use stasis_image::records::{fd::Kind, Inotify, InotifyWatch};
use stasis_sys::nix::libc;
use stasis_sys::{fhandle, Pid};

use super::{Extra, Seen};
use crate::proc;

/// The bits of a watch mask that inotify_add_watch takes back.
const USER_MASK: u32 = 0x0000_0fff | 0x0100_0000 | 0x0200_0000 | 0x0400_0000 | 0x8000_0000;

/// One `inotify wd:...` line: (wd, mask, device, handle type, handle).
type Line = (i32, u32, u64, i32, Vec<u8>);

pub fn parse(text: &str) -> Result<Vec<Line>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("inotify ")) {
        let hex = |name| hex_field(line, name);
        out.push((hex("wd")? as i32, hex("mask")? as u32, hex("sdev")?, hex("fhandle-type")? as i32, handle(line)?));
    }
    Ok(out)
}

/// The `name:value` field of an fdinfo line (inotify, fanotify).
fn field<'l>(line: &'l str, name: &str) -> Result<&'l str, String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
        .ok_or_else(|| format!("no {name} in {line:?}"))
}

/// A field in hex.
pub(super) fn hex_field(line: &str, name: &str) -> Result<u64, String> {
    u64::from_str_radix(field(line, name)?, 16).map_err(|_| format!("bad {name} in {line:?}"))
}

/// The file handle (`f_handle:` in hex) of an fdinfo line.
pub(super) fn handle(line: &str) -> Result<Vec<u8>, String> {
    let hex = field(line, "f_handle")?;
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("bad f_handle in {line:?}"))
}

/// The instance's watches; a watched file that was deleted (and is still
/// open, else the kernel would have dropped the watch) is recorded with its
/// contents, in [`Extra::watched`], to be made again.
pub fn dump(pid: Pid, seen: &Seen) -> Result<(Kind, Extra), String> {
    let text = proc::read(pid, &format!("fdinfo/{}", seen.fd)).map_err(|e| format!("fdinfo: {e}"))?;
    let mut watches = Vec::new();
    for (wd, mask, sdev, handle_type, handle) in parse(&text)? {
        let err = |e: String| format!("inotify watch {wd}: {e}");
        let (fd, path) = open_watched(sdev, handle_type, &handle).map_err(err)?;
        let mut watch = InotifyWatch { wd, mask: mask & USER_MASK, path, deleted: None };
        if let Some(path) = watch.path.strip_suffix(" (deleted)") {
            let file = super::file::file_ref(path, &fd).map_err(err)?;
            if file.mode & libc::S_IFMT != libc::S_IFREG {
                return Err(err(format!("deleted {path} is not a regular file")));
            }
            // The handle opened for reading this time.
            let reader = fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| err(e.to_string()))?;
            let data = super::file::read_all(&reader.into(), file.size).map_err(err)?;
            watch.path = path.to_owned();
            watch.deleted = Some(file);
            watches.push((watch, Some(data)));
        } else {
            watches.push((watch, None));
        }
    }
    watches.sort_by_key(|(w, _)| w.wd);
    let watched = watches.iter_mut().filter_map(|(_, data)| data.take()).collect();
    let watches = watches.into_iter().map(|(w, _)| w).collect();
    Ok((Kind::Inotify(Inotify { watches }), Extra { watched, ..Extra::default() }))
}

/// The path of the inode `handle` names on device `sdev` (the kernel's
/// encoding: major << 20 | minor); refused when it was deleted.
pub(super) fn path_of(sdev: u64, handle_type: i32, handle: &[u8]) -> Result<String, String> {
    let (_, path) = open_watched(sdev, handle_type, handle)?;
    if path.ends_with(" (deleted)") {
        return Err(format!("the watched file {path} was deleted"));
    }
    Ok(path)
}

/// The inode `handle` names on device `sdev`, opened O_PATH, and its path
/// (" (deleted)" at the end when it was).
fn open_watched(sdev: u64, handle_type: i32, handle: &[u8]) -> Result<(OwnedFd, String), String> {
    let want = format!("{}:{}", sdev >> 20, sdev & 0xf_ffff);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("mountinfo: {e}"))?;
    let mount_point = mountinfo
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let dev = f.nth(2)?;
            let point = f.nth(1)?;
            (dev == want).then(|| point.to_owned())
        })
        .ok_or_else(|| format!("no mount of device {want} to find the watched file on"))?;
    let mount = fs::File::open(&mount_point).map_err(|e| format!("cannot open {mount_point}: {e}"))?;
    let fd = fhandle::open_by_handle(mount.as_fd(), handle_type, handle, libc::O_PATH)
        .map_err(|e| format!("the watched file is gone ({e})"))?;
    let path = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| e.to_string())?;
    Ok((fd, path.to_string_lossy().into_owned()))
}

/// A new instance with the same watches at the same descriptors (its
/// status flags are the caller's to set); a deleted file is watched
/// through the agent's fd of the file made again (`deleted`, by contents).
pub fn restore(n: &Inotify, deleted: &HashMap<u32, OwnedFd>) -> Result<OwnedFd, String> {
    use stasis_sys::inotify::{add_watch, init, rm_watch};
    let fd = init(libc::IN_CLOEXEC | libc::IN_NONBLOCK).map_err(|e| format!("inotify_init1: {e}"))?;
    // Placeholders go on a directory of our own, so they never share an
    // inode (and so a descriptor) with a real watch.
    let holder = std::env::temp_dir().join(format!("stasis-inotify-{}", std::process::id()));
    let _ = fs::create_dir(&holder);
    let holder_c = CString::new(holder.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let result = (|| {
        let mut next = 1;
        for w in &n.watches {
            while next < w.wd {
                let wd = add_watch(fd.as_fd(), &holder_c, libc::IN_ACCESS).map_err(|e| format!("placeholder: {e}"))?;
                rm_watch(fd.as_fd(), wd).map_err(|e| format!("placeholder: {e}"))?;
                next = wd + 1;
            }
            let (path, mask) = match &w.deleted {
                Some(file) => {
                    let made =
                        deleted.get(&file.contents_mm).ok_or_else(|| format!("deleted {} was not made", file.path))?;
                    // The magic link is the file itself: followed.
                    (format!("/proc/self/fd/{}", made.as_raw_fd()), w.mask & !libc::IN_DONT_FOLLOW)
                }
                None => (w.path.clone(), w.mask),
            };
            let path = CString::new(path).map_err(|e| e.to_string())?;
            let wd = add_watch(fd.as_fd(), &path, mask).map_err(|e| format!("cannot watch {}: {e}", w.path))?;
            if wd != w.wd {
                return Err(format!("{} got watch descriptor {wd}, not {}", w.path, w.wd));
            }
            next = wd + 1;
        }
        Ok(())
    })();
    let _ = fs::remove_dir(&holder);
    result?;
    // Read away the IN_IGNORED events the placeholders left.
    let mut buf = [0u8; 4096];
    while stasis_sys::nix::unistd::read(&fd, &mut buf).is_ok_and(|n| n > 0) {}
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fixture() {
        let t = parse(
            "pos:\t0\nflags:\t00\ninotify wd:3 ino:3c4a7 sdev:fe00000 mask:8 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000\n",
        )
        .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].0, t[0].1, t[0].2, t[0].3), (3, 8, 0xfe0_0000, 1));
        assert_eq!(t[0].4, vec![0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0]);
    }
}
