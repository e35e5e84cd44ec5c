//! Which cgroups a process is in, and putting a restored process back into
//! them.
//!
//! A dump records every line of /proc/PID/cgroup: one cgroup per mounted
//! hierarchy (the v2 one, `0::/path`, and on hybrid hosts each v1 one,
//! `N:controllers:/path`). A restore writes each rebuilt process into the
//! same cgroup of every hierarchy mounted here, before its threads exist
//! (they follow it), making a missing cgroup first (after a migration, or
//! once the killed tree's cgroup was removed). Trouble here costs a warning,
//! not the restore: the process runs on in stasis's cgroup of that
//! hierarchy, and the warning names both.

use std::path::{Path, PathBuf};

use stasis_image::records::CgroupPlace;

use crate::freezer::{cgroup2_mount, parse_mountinfo, Mount};

/// The lines of /proc/PID/cgroup (`ID:CONTROLLERS:PATH`; the v2 one has no
/// controllers).
pub fn parse(text: &str) -> Vec<CgroupPlace> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_owned();
            let path = parts.next()?.to_owned();
            Some(CgroupPlace { controllers, path })
        })
        .collect()
}

/// The cgroup namespace of process `pid` when it is not stasis's own: its
/// inode, and its root in each hierarchy (the cgroup the process that made
/// it was in), as paths seen here. Read from inside it, the process's
/// cgroups are relative to that root, so the root is what the path seen
/// here has before it. A process moved above its namespace's root (its
/// path inside starts with "/..") is refused.
pub fn namespace(pid: i32) -> Result<Option<(u64, Vec<CgroupPlace>)>, String> {
    use std::os::unix::fs::MetadataExt;
    let link = format!("/proc/{pid}/ns/cgroup");
    let theirs = std::fs::metadata(&link).map_err(|e| format!("{link}: {e}"))?.ino();
    let ours = std::fs::metadata("/proc/self/ns/cgroup").map_err(|e| format!("/proc/self/ns/cgroup: {e}"))?.ino();
    if theirs == ours {
        return Ok(None);
    }
    let cgroup = format!("/proc/{pid}/cgroup");
    let read = || std::fs::read_to_string(&cgroup).map_err(|e| format!("{cgroup}: {e}"));
    let outside = parse(&read()?);
    let ns = std::fs::File::open(&link).map_err(|e| format!("{link}: {e}"))?;
    // In a thread of its own: a namespace is a thread's, and this one
    // ends with the thread.
    let inside = std::thread::scope(|s| {
        s.spawn(|| {
            stasis_sys::nix::sched::setns(&ns, stasis_sys::nix::sched::CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| format!("setns into the cgroup namespace of process {pid}: {e}"))?;
            read()
        })
        .join()
        .map_err(|_| "the thread reading the cgroup namespace panicked".to_string())?
    })?;
    let roots = parse(&inside)
        .into_iter()
        .map(|i| {
            let o = outside
                .iter()
                .find(|o| o.controllers == i.controllers)
                .ok_or_else(|| format!("hierarchy {:?} is seen from its cgroup namespace only", i.controllers))?;
            let root = root_of(&o.path, &i.path).ok_or_else(|| {
                format!("its cgroup {} is outside its cgroup namespace's root (seen there as {})", o.path, i.path)
            })?;
            Ok(CgroupPlace { controllers: i.controllers, path: root })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Some((theirs, roots)))
}

/// The root of a cgroup namespace in which cgroup `outside` (as seen here)
/// is `inside`.
fn root_of(outside: &str, inside: &str) -> Option<String> {
    if inside == "/" {
        return Some(outside.to_owned());
    }
    if inside.starts_with("/..") {
        return None;
    }
    let root = outside.strip_suffix(inside)?;
    Some(if root.is_empty() { "/".to_owned() } else { root.to_owned() })
}

/// Where `place`'s hierarchy is mounted here: the cgroup2 mount for the
/// v2 hierarchy, else the v1 mount with exactly its controllers (of the
/// `known` ones, or a `name=`; its other options are not controllers).
fn mount_of<'m>(mounts: &'m [Mount], known: &[String], place: &CgroupPlace) -> Option<&'m Mount> {
    if place.controllers.is_empty() {
        return cgroup2_mount(mounts);
    }
    let mut want: Vec<&str> = place.controllers.split(',').collect();
    want.sort_unstable();
    mounts.iter().find(|m| {
        let mut have: Vec<&str> = m
            .super_options
            .iter()
            .map(String::as_str)
            .filter(|o| o.starts_with("name=") || known.iter().any(|k| k == o))
            .collect();
        have.sort_unstable();
        m.fstype == "cgroup" && have == want
    })
}

/// The controllers this kernel has: the first column of /proc/cgroups.
fn controllers() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The cgroups stasis itself is in.
#[derive(Debug)]
pub struct Host {
    mounts: Vec<Mount>,
    known: Vec<String>,
    own: Vec<CgroupPlace>,
}

impl Host {
    pub fn here() -> Host {
        let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        let own = parse(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
        Host { mounts, known: controllers(), own }
    }

    /// Put process `pid` (this host's pid; `was` in the image) into the
    /// cgroups of `places`; returns what could not be done, a line each.
    pub fn place(&self, pid: i32, was: i32, places: &[CgroupPlace]) -> Vec<String> {
        self.enter_each(pid, was, places, Member::Process)
    }

    /// As [`Host::place`], into stasis's own cgroups too (where a process
    /// forked by another puppet is not).
    pub fn place_exactly(&self, pid: i32, was: i32, places: &[CgroupPlace]) -> Vec<String> {
        self.enter_each(pid, was, places, Member::Exactly)
    }

    /// Put thread `tid` (this host's; `was` in the image) of a process
    /// placed already into the cgroups of `places`, those it was in apart
    /// from its process: a v1 hierarchy's `tasks` file, a v2 threaded
    /// subtree's `cgroup.threads`.
    pub fn place_thread(&self, tid: i32, was: i32, places: &[CgroupPlace]) -> Vec<String> {
        self.enter_each(tid, was, places, Member::Thread)
    }

    fn enter_each(&self, pid: i32, was: i32, places: &[CgroupPlace], member: Member) -> Vec<String> {
        let mut warnings = Vec::new();
        let who = match member {
            Member::Thread => format!("thread {was}"),
            _ => format!("process {was}"),
        };
        for place in places {
            if member == Member::Process && self.own.contains(place) {
                continue;
            }
            let hierarchy =
                if place.controllers.is_empty() { "v2".to_owned() } else { format!("v1 {}", place.controllers) };
            let Some(mount) = mount_of(&self.mounts, &self.known, place) else {
                warnings.push(format!(
                    "{who} stays in stasis's cgroup: the cgroup {hierarchy} hierarchy of {} is not mounted here",
                    place.path
                ));
                continue;
            };
            let dir = mount.mount_point.join(place.path.trim_start_matches('/'));
            let file = match member {
                Member::Thread if place.controllers.is_empty() => "cgroup.threads",
                Member::Thread => "tasks",
                _ => "cgroup.procs",
            };
            if let Err(e) = enter(&dir, pid, file) {
                let whose = if member == Member::Thread { "its process's" } else { "stasis's" };
                warnings.push(format!("{who} stays in {whose} cgroup: {}: {e}", dir.display()));
            }
        }
        warnings
    }
}

/// What [`Host::enter_each`] moves: a process (into stasis's own cgroups
/// too, `Exactly`, or not) or a thread.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Member {
    Process,
    Exactly,
    Thread,
}

/// Make `dir` if missing, and move `pid` into it by writing to `file`,
/// unless it is frozen (a puppet frozen half-way could not be finished).
fn enter(dir: &Path, pid: i32, file: &str) -> Result<(), String> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make it: {e}"))?;
        tracing::info!("made cgroup {}", dir.display());
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    if read("cgroup.events").lines().any(|l| l.trim() == "frozen 1")
        || matches!(read("freezer.state").trim(), "FROZEN" | "FREEZING")
    {
        return Err("it is frozen".into());
    }
    let procs: PathBuf = dir.join(file);
    std::fs::write(&procs, pid.to_string()).map_err(|e| format!("cannot write to {file}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_namespace_root_from_both_views() {
        assert_eq!(root_of("/a/b", "/").as_deref(), Some("/a/b"));
        assert_eq!(root_of("/a/b/c", "/c").as_deref(), Some("/a/b"));
        assert_eq!(root_of("/c", "/c").as_deref(), Some("/"));
        assert_eq!(root_of("/a/x", "/../x"), None);
        assert_eq!(root_of("/a/b", "/c"), None);
    }

    #[test]
    fn parses_hybrid_and_v2_lines() {
        let places = parse("9:name=systemd:/\n4:memory:/a/b\n2:cpu,cpuacct:/\n0::/user.slice/x\n");
        assert_eq!(places.len(), 4);
        assert_eq!(places[1], CgroupPlace { controllers: "memory".into(), path: "/a/b".into() });
        assert_eq!(places[3], CgroupPlace { controllers: String::new(), path: "/user.slice/x".into() });
    }

    #[test]
    fn finds_each_hierarchy_by_its_controllers() {
        let mounts = parse_mountinfo(
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
             35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
             40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        let at = |controllers: &str| {
            let place = CgroupPlace { controllers: controllers.into(), path: "/".into() };
            let known: Vec<String> = ["cpu", "cpuacct", "memory", "pids"].map(String::from).to_vec();
            mount_of(&mounts, &known, &place).map(|m| m.mount_point.display().to_string())
        };
        assert_eq!(at("").as_deref(), Some("/sys/fs/cgroup/unified"));
        assert_eq!(at("memory").as_deref(), Some("/sys/fs/cgroup/memory"));
        assert_eq!(at("cpu,cpuacct").as_deref(), Some("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(at("name=systemd").as_deref(), Some("/sys/fs/cgroup/systemd"), "xattr is not a controller");
        assert_eq!(at("cpu"), None, "cpu is mounted with cpuacct");
        assert_eq!(at("pids"), None);
    }
}
