//! Files that were deleted while open or mapped (a temp file mapped then
//! unlinked, a library replaced by an upgrade), made again once for the
//! whole tree: with their contents from the image, owner and mode, at their
//! old path when that is free (so /proc shows the same name, "(deleted)"
//! after it) or beside it, then unlinked at once. The agent holds each open,
//! read-write if the tree writes to it (an fd open for writing, a shared
//! mapping), else read-only: the kernel will not make a file the exe link
//! of a process while anyone may write to it (ETXTBSY, reported as EACCES).
//! An fd on the file is a new description opened from the agent's, a
//! mapping maps it, so every fd and mapping of one file shares one inode
//! again (a write through one is seen by the others).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use stasis_image::records::{fd::Kind, FileRef, Process, ProcessTree};
use stasis_image::Image;
use stasis_sys::nix::libc;
use stasis_sys::nix::sys::stat::{fchmod, mknod, Mode, SFlag};
use stasis_sys::nix::unistd::{fchown, Gid, Uid};

use super::{step, RestoreError};

/// Every deleted file of the tree, by its contents' address space.
pub fn make_all(image: &Image, tree: &ProcessTree) -> Result<HashMap<u32, OwnedFd>, RestoreError> {
    let shared = libc::MAP_SHARED as u32;
    let mapped =
        tree.processes.iter().flat_map(|p| &p.vmas).filter_map(|v| Some((v.file.as_ref()?, v.flags & shared != 0)));
    let passed = tree.unix_sockets.iter().flat_map(|s| &s.passed).flat_map(|m| &m.fds);
    let fds = || tree.processes.iter().flat_map(|p| &p.fds).chain(passed.clone());
    let open = fds().filter_map(|f| match &f.kind {
        Some(Kind::File(file)) => Some((file, f.flags as i32 & libc::O_ACCMODE != libc::O_RDONLY)),
        _ => None,
    });
    let watched = fds().filter_map(|f| match &f.kind {
        Some(Kind::Inotify(n)) => Some(n.watches.iter().filter_map(|w| Some((w.deleted.as_ref()?, false)))),
        _ => None,
    });
    let mut files: HashMap<u32, (&FileRef, bool)> = HashMap::new();
    // Removed directories and symbolic links are made by their fds.
    let regular = |f: &FileRef| f.mode & libc::S_IFMT == libc::S_IFREG;
    for (f, writes) in mapped.chain(open).chain(watched.flatten()).filter(|(f, _)| f.deleted && regular(f)) {
        files.entry(f.contents_mm).or_insert((f, false)).1 |= writes;
    }
    let mut made = HashMap::new();
    for (mm, (f, writes)) in files {
        made.insert(mm, make(image, f, writes).map_err(step(&format!("deleted file {}", f.path)))?);
    }
    Ok(made)
}

/// Make an object at `path` with `make`, or beside it (`PATH.stasis-N`)
/// when a file has taken that name since; when its directory was removed
/// too, in the nearest directory above it that is still there (the name
/// only shows in /proc, with " (deleted)"). The name it was made at, and
/// what `make` gave.
fn made_at<T>(path: &str, make: impl Fn(&str) -> std::io::Result<T>) -> std::io::Result<(String, T)> {
    let beside = |path: &str| -> std::io::Result<(String, T)> {
        let mut name = path.to_owned();
        for n in 1..=100 {
            match make(&name) {
                Err(e) if e.kind() == ErrorKind::AlreadyExists && n < 100 => name = format!("{path}.stasis-{n}"),
                made => return made.map(|t| (name, t)),
            }
        }
        unreachable!("the last try returns")
    };
    match beside(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let at = std::path::Path::new(path);
            let name = at.file_name().ok_or(e)?;
            let dir = at.ancestors().skip(1).find(|d| d.is_dir()).unwrap_or(std::path::Path::new("/"));
            beside(&dir.join(name).to_string_lossy())
        }
        made => made,
    }
}

/// Whether the nearest directory still there above `path` is in a
/// filesystem the kernel makes (proc, sysfs), where nothing can be made
/// again: a working directory in the /proc directory of a process that has
/// exited, say.
pub fn in_kernel_filesystem(path: &str) -> bool {
    use stasis_sys::nix::sys::statfs::statfs;
    let at = std::path::Path::new(path);
    let Some(dir) = at.ancestors().skip(1).find(|d| d.is_dir()) else { return false };
    statfs(dir).is_ok_and(|s| {
        let ty = s.filesystem_type().0;
        ty == libc::PROC_SUPER_MAGIC || ty == libc::SYSFS_MAGIC
    })
}

/// A directory removed while open, made again (at its path, beside it, or
/// in the nearest directory still there) with its owner and mode, opened
/// with `flags`, and removed. Returns the open fd.
pub fn directory(f: &FileRef, flags: i32) -> Result<OwnedFd, String> {
    let (made, ()) = made_at(&f.path, |p| std::fs::create_dir(p))
        .map_err(|e| format!("cannot make the removed directory {} again: {e}", f.path))?;
    let opened = OpenOptions::new().read(true).custom_flags(flags & !libc::O_ACCMODE).open(&made);
    let removed = std::fs::remove_dir(&made);
    let dir = opened.map_err(|e| format!("cannot open {made}: {e}"))?;
    removed.map_err(|e| format!("removing {made}: {e}"))?;
    set_owner_and_mode(&dir, f.uid, f.gid, f.mode)?;
    Ok(dir.into())
}

/// A symbolic link removed while an O_PATH fd held it, made again with its
/// target and owner (at its path, or beside it), opened with `flags`
/// (O_PATH|O_NOFOLLOW), and removed. Returns the open fd.
pub fn symlink(f: &FileRef, flags: i32) -> Result<OwnedFd, String> {
    let (made, ()) = made_at(&f.path, |p| std::os::unix::fs::symlink(&f.link_target, p))
        .map_err(|e| format!("cannot make the removed symbolic link {} again: {e}", f.path))?;
    let owned = std::os::unix::fs::lchown(&made, Some(f.uid), Some(f.gid));
    let opened = OpenOptions::new().read(true).custom_flags(flags & !libc::O_ACCMODE).open(&made);
    let removed = std::fs::remove_file(&made);
    let link = opened.map_err(|e| format!("cannot open {made}: {e}"))?;
    removed.map_err(|e| format!("removing {made}: {e}"))?;
    owned.map_err(|e| format!("chown {made} to {}:{}: {e}", f.uid, f.gid))?;
    Ok(link.into())
}

/// Give the file of `fd` owner `uid`:`gid`, then the permission bits of
/// `mode` (chown first: it clears the set-user-ID and set-group-ID bits).
pub(super) fn set_owner_and_mode(fd: impl AsFd, uid: u32, gid: u32, mode: u32) -> Result<(), String> {
    fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| format!("chown to {uid}:{gid}: {e}"))?;
    fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777)).map_err(|e| format!("chmod {:o}: {e}", mode & 0o7777))
}

/// One deleted file, made, filled and unlinked; held read-write if the
/// tree `writes` to it.
fn make(image: &Image, f: &FileRef, writes: bool) -> Result<OwnedFd, String> {
    let mut data = Vec::new();
    if f.size > 0 {
        let region =
            image.memory().iter().find(|r| r.mm == f.contents_mm).ok_or("its contents are missing from the image")?;
        data = image.read_region(region).map_err(|e| e.to_string())?;
        data.truncate(f.size as usize);
    }
    let create = |path: &str| OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path);
    // Its name is taken by a file made since: a name beside it.
    let (path, file) = made_at(&f.path, create).map_err(|e| format!("cannot create it again: {e}"))?;
    let unlinked = std::fs::remove_file(&path);
    // Blocks of zeros are left as holes: a sparse file stays sparse.
    use std::os::unix::fs::FileExt;
    file.set_len(data.len() as u64).map_err(|e| format!("ftruncate to {} bytes: {e}", data.len()))?;
    for (i, block) in data.chunks(4096).enumerate() {
        if block.iter().any(|b| *b != 0) {
            file.write_all_at(block, i as u64 * 4096).map_err(|e| format!("writing {} bytes: {e}", data.len()))?;
        }
    }
    unlinked.map_err(|e| format!("unlinking {path}: {e}"))?;
    // Its modification time, as it was (the access time is now's).
    let mtime = stasis_sys::nix::sys::time::TimeSpec::new(
        f.mtime_ns.div_euclid(1_000_000_000),
        f.mtime_ns.rem_euclid(1_000_000_000),
    );
    stasis_sys::nix::sys::stat::futimens(&file, &stasis_sys::nix::sys::time::TimeSpec::UTIME_NOW, &mtime)
        .map_err(|e| format!("futimens: {e}"))?;
    set_owner_and_mode(&file, f.uid, f.gid, f.mode)?;
    if writes {
        return Ok(file.into());
    }
    let reader = std::fs::File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| format!("reopening it read-only: {e}"))?;
    Ok(reader.into())
}

/// A FIFO or device node unlinked while open, made again: `kind` (S_IFIFO
/// or S_IFCHR) with `rdev` and `mode` at `path` (or beside it when that
/// name is taken), opened with `flags`, and unlinked. Returns the open fd.
pub fn node(path: &str, kind: SFlag, rdev: u64, mode: u32, owner: (u32, u32), flags: i32) -> Result<OwnedFd, String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let (made, ()) =
        made_at(path, |p| mknod(p, kind, Mode::from_bits_truncate(mode & 0o7777), rdev).map_err(std::io::Error::from))
            .map_err(|e| format!("cannot make {path} again: {e}"))?;
    // Its mode as it was, not as stasis's umask leaves it; its owner.
    std::fs::set_permissions(&made, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| format!("chmod {made}: {e}"))?;
    std::os::unix::fs::lchown(&made, Some(owner.0), Some(owner.1)).map_err(|e| format!("chown {made}: {e}"))?;
    let opened = OpenOptions::new()
        .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
        .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
        .custom_flags(flags & !libc::O_ACCMODE)
        .open(&made);
    let unlinked = std::fs::remove_file(&made);
    let file = opened.map_err(|e| format!("cannot open {made}: {e}"))?;
    unlinked.map_err(|e| format!("unlinking {made}: {e}"))?;
    Ok(file.into())
}

/// Directories that were removed while processes were in them or held
/// them open, made again for the restore (at their path, or beside it
/// when that is taken; with their owner and mode), once each: a working
/// directory and fds on one removed directory are one directory again.
/// They are removed again when this is dropped, once every process has
/// entered its own and every fd is open: the processes are then in
/// removed directories, as before.
#[derive(Debug, Default)]
pub struct Directories {
    /// By the directory's identity, the path it was made at.
    made: HashMap<DirKey, String>,
    /// Working directories in the /proc directory of a process that had
    /// exited: that of a helper process (at the same pid when it is free),
    /// held open, the process entering it through this fd (its path may
    /// not be there in the process's own /proc). The helper is killed and
    /// reaped when this is dropped, which removes its directory from /proc.
    proc_dirs: HashMap<DirKey, (OwnedFd, stasis_sys::child::Child)>,
}

/// A removed directory: by device and inode, or by the working directory's
/// name ("PATH (deleted)") in an image that did not record them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DirKey {
    Inode(u64, u64),
    Named(String),
}

impl DirKey {
    /// The key of the working directory of `p`.
    fn cwd_of(p: &Process) -> DirKey {
        match &p.removed_cwd {
            Some(f) => DirKey::Inode(f.dev, f.ino),
            None => DirKey::Named(p.cwd.clone()),
        }
    }
}

impl Directories {
    /// The directory made for the working directory of `p`, if removed.
    pub fn cwd(&self, p: &Process) -> Option<&str> {
        self.made.get(&DirKey::cwd_of(p)).map(String::as_str)
    }

    /// The /proc directory of a helper that stands for the /proc directory
    /// of an exited process `p` was in ([`dead_proc_dir`]), held open.
    pub fn cwd_in_proc(&self, p: &Process) -> Option<&OwnedFd> {
        self.proc_dirs.get(&DirKey::cwd_of(p)).map(|(fd, _)| fd)
    }

    /// The directory made for the removed directory `f` an fd was open on.
    pub fn opened(&self, f: &FileRef) -> Option<&str> {
        self.made.get(&DirKey::Inode(f.dev, f.ino)).map(String::as_str)
    }
}

impl Drop for Directories {
    fn drop(&mut self) {
        for dir in self.made.values() {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::warn!("cannot remove {dir} again, made for a restored removed directory: {e}");
            }
        }
    }
}

/// Make again every removed directory of the tree: working directories,
/// and directories fds (those in flight too) were open on.
pub fn removed_directories(tree: &ProcessTree) -> Result<Directories, RestoreError> {
    let passed = tree.unix_sockets.iter().flat_map(|s| &s.passed).flat_map(|m| &m.fds);
    let opened = tree.processes.iter().flat_map(|p| &p.fds).chain(passed).filter_map(|f| match &f.kind {
        Some(Kind::File(file)) if file.deleted && file.mode & libc::S_IFMT == libc::S_IFDIR => Some(file),
        _ => None,
    });
    let cwds = tree.processes.iter().filter_map(|p| {
        let dir = p.cwd.strip_suffix(" (deleted)")?;
        Some(match &p.removed_cwd {
            Some(f) => (DirKey::Inode(f.dev, f.ino), dir, Some(f)),
            None => (DirKey::Named(p.cwd.clone()), dir, None),
        })
    });
    let all = cwds.chain(opened.map(|f| (DirKey::Inode(f.dev, f.ino), f.path.as_str(), Some(f))));
    let mut dirs = Directories::default();
    for (key, dir, f) in all {
        if dirs.made.contains_key(&key) || dirs.proc_dirs.contains_key(&key) {
            continue;
        }
        let fail = |e: String| step(&format!("removed directory {dir}"))(e);
        if let Some((pid, rest)) = dead_proc_dir(dir) {
            dirs.proc_dirs.insert(key, proc_helper(pid, rest).map_err(fail)?);
            continue;
        }
        let (made, ()) =
            made_at(dir, |d| std::fs::create_dir(d)).map_err(|e| fail(format!("cannot make it again: {e}")))?;
        dirs.made.insert(key, made.clone());
        if let Some(f) = f {
            let opened = std::fs::File::open(&made).map_err(|e| fail(format!("cannot open {made}: {e}")))?;
            set_owner_and_mode(&opened, f.uid, f.gid, f.mode).map_err(fail)?;
        }
    }
    Ok(dirs)
}

/// The pid and the rest of a path in the /proc directory of a process
/// (`/proc/PID`, `/proc/PID/fd`...) that can stand for one of an exited
/// process: the rest names no thread (`task`), /proc is a proc here.
pub fn dead_proc_dir(path: &str) -> Option<(i32, &str)> {
    let after = path.strip_prefix("/proc/")?;
    let (pid, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
    let pid: i32 = pid.parse().ok().filter(|&p| p > 0)?;
    if rest.split('/').any(|c| c == "task" || c == "." || c == "..") {
        return None;
    }
    let proc = stasis_sys::nix::sys::statfs::statfs("/proc").ok()?;
    (proc.filesystem_type().0 == libc::PROC_SUPER_MAGIC).then_some((pid, rest))
}

/// A helper process at `pid` (any pid when that is taken) pausing, and
/// its directory `/proc/HELPER{rest}` opened.
fn proc_helper(pid: i32, rest: &str) -> Result<(OwnedFd, stasis_sys::child::Child), String> {
    use stasis_sys::child::ChildAction;
    use stasis_sys::Pid;
    let helper = match stasis_sys::clone3::spawn_with_tid(&[Pid::from_raw(pid)], ChildAction::Pause) {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(
                "pid {pid} is taken ({}): the working directory in the /proc directory of that exited process is \
                 another exited process's",
                crate::chain(&e)
            );
            stasis_sys::child::spawn(ChildAction::Pause)
                .map_err(|e| format!("a helper process: {}", crate::chain(&e)))?
        }
    };
    let at = format!("/proc/{}{rest}", helper.pid());
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
        .open(&at)
        .map_err(|e| format!("cannot open {at}, the helper's: {e}"))?;
    Ok((dir.into(), helper))
}
