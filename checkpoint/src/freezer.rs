//! Freezing a whole cgroup: cgroup v2 `cgroup.freeze` / `cgroup.events`
//! (Documentation/admin-guide/cgroup-v2.rst, "Core Interface Files") and the
//! cgroup v1 freezer's `freezer.state`
//! (Documentation/admin-guide/cgroup-v1/freezer-subsystem.rst).
//!
//! Both are asynchronous: the write returns at once and the kernel reports
//! completion later (`frozen 1` in cgroup.events; `FROZEN` instead of
//! `FREEZING` in freezer.state), so [`CgroupFreezer::freeze`] polls with a
//! deadline and names the group that did not freeze. The two differ in what
//! frozen tasks look like: a v2-frozen task waits in a signal-delivery trap
//! (state `S`) and still dies on SIGKILL; a v1-frozen task sits in the
//! refrigerator (`D`) and ignores even SIGKILL until thawed, so thaw before
//! killing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// Which freezer interface a cgroup directory offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// cgroup v2: `cgroup.freeze` and `cgroup.events`.
    V2,
    /// cgroup v1 freezer controller: `freezer.state`.
    V1,
}

/// Errors of freezer operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A control file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The group did not reach the wanted state in time.
    #[error("cgroup {dir} did not become {wanted} within {timeout:?}")]
    Timeout {
        /// The cgroup directory.
        dir: PathBuf,
        /// "frozen" or "thawed".
        wanted: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
}

/// The freezer of one cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFreezer {
    dir: PathBuf,
    kind: Kind,
}

impl CgroupFreezer {
    /// The freezer of `dir`, a directory of a hierarchy of `kind`.
    pub fn new(dir: impl Into<PathBuf>, kind: Kind) -> Self {
        CgroupFreezer { dir: dir.into(), kind }
    }

    /// The cgroup directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The interface.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn write(&self, file: &str, value: &str) -> Result<(), Error> {
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(|source| Error::Io { path, source })
    }

    fn read(&self, file: &str) -> Result<String, Error> {
        let path = self.dir.join(file);
        fs::read_to_string(&path).map_err(|source| Error::Io { path, source })
    }

    /// Whether the kernel reports the whole group frozen.
    pub fn is_frozen(&self) -> Result<bool, Error> {
        Ok(match self.kind {
            Kind::V2 => parse_events_frozen(&self.read("cgroup.events")?),
            Kind::V1 => self.read("freezer.state")?.trim() == "FROZEN",
        })
    }

    /// Asks the kernel to freeze the group and waits at most `timeout` until
    /// it reports every task frozen.
    pub fn freeze(&self, timeout: Duration) -> Result<(), Error> {
        match self.kind {
            Kind::V2 => self.write("cgroup.freeze", "1")?,
            Kind::V1 => self.write("freezer.state", "FROZEN")?,
        }
        self.wait_for(true, timeout)
    }

    /// Thaws the group and waits at most `timeout` until it is thawed.
    pub fn thaw(&self, timeout: Duration) -> Result<(), Error> {
        match self.kind {
            Kind::V2 => self.write("cgroup.freeze", "0")?,
            Kind::V1 => self.write("freezer.state", "THAWED")?,
        }
        self.wait_for(false, timeout)
    }

    fn wait_for(&self, frozen: bool, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            if self.is_frozen()? == frozen {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    dir: self.dir.clone(),
                    wanted: if frozen { "frozen" } else { "thawed" },
                    timeout,
                });
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

fn parse_events_frozen(events: &str) -> bool {
    events.lines().any(|l| l.split_whitespace().eq(["frozen", "1"].iter().copied()))
}

/// The mounts, parsed by stasis-sys (one parser for every caller).
pub use stasis_sys::mountinfo::{parse as parse_mountinfo, Mount};

/// Where the cgroup v2 hierarchy is mounted, if anywhere.
pub fn cgroup2_mount(mounts: &[Mount]) -> Option<&Mount> {
    mounts.iter().find(|m| m.fstype == "cgroup2")
}

/// Where the cgroup v1 hierarchy holding the freezer controller is mounted.
pub fn freezer_v1_mount(mounts: &[Mount]) -> Option<&Mount> {
    mounts.iter().find(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == "freezer"))
}

/// The cgroup of the process in the hierarchy `want` from the text of
/// /proc/PID/cgroup: `None` selects the v2 line (`0::/path`), `Some(c)` the
/// v1 line whose controller list holds `c`.
pub fn own_cgroup(proc_cgroup: &str, want: Option<&str>) -> Option<PathBuf> {
    crate::cgroups::parse(proc_cgroup).into_iter().find_map(|place| {
        let hit = match want {
            None => place.controllers.is_empty(),
            Some(c) => place.controllers.split(',').any(|x| x == c),
        };
        hit.then(|| PathBuf::from(place.path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime shared:5 - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/with\\040space rw - btrfs /dev/loop0 rw,ssd
";

    #[test]
    fn finds_both_hierarchies_in_mountinfo() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(cgroup2_mount(&mounts).unwrap().mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(freezer_v1_mount(&mounts).unwrap().mount_point, Path::new("/sys/fs/cgroup/freezer"));
        assert_eq!(mounts[4].mount_point, Path::new("/mnt/with space"));
    }

    #[test]
    fn finds_own_cgroups() {
        let text = "12:freezer:/a/b\n3:cpu,cpuacct:/c\n0::/user.slice\n";
        assert_eq!(own_cgroup(text, None), Some(PathBuf::from("/user.slice")));
        assert_eq!(own_cgroup(text, Some("freezer")), Some(PathBuf::from("/a/b")));
        assert_eq!(own_cgroup(text, Some("cpuacct")), Some(PathBuf::from("/c")));
        assert_eq!(own_cgroup(text, Some("pids")), None);
    }

    #[test]
    fn reads_frozen_state_from_recorded_files() {
        let dir = std::env::temp_dir().join(format!("stasis-freezer-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        fs::write(dir.join("freezer.state"), "FREEZING\n").unwrap();
        assert!(CgroupFreezer::new(&dir, Kind::V2).is_frozen().unwrap());
        assert!(!CgroupFreezer::new(&dir, Kind::V1).is_frozen().unwrap());
        let err = CgroupFreezer::new(&dir, Kind::V1).wait_for(true, Duration::from_millis(30)).unwrap_err();
        assert!(matches!(err, Error::Timeout { wanted: "frozen", .. }));
        fs::remove_dir_all(&dir).unwrap();
    }
}
