//! Which processes use a filesystem: the ones that hold a file of it open,
//! map one, or have their working or root directory on it. A rollback that
//! swaps a volume's contents under such a process would leave it writing to
//! the old contents, and the writes lost: the backends refuse instead.

use std::fs;
use std::os::unix::fs::MetadataExt;

/// One use of the filesystem by a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Use {
    pub pid: i32,
    /// The process's name (`/proc/PID/comm`).
    pub comm: String,
    /// "cwd", "root", "fd 3", "mapping", with the path.
    pub what: String,
}

impl std::fmt::Display for Use {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} ({}): {}", self.pid, self.comm, self.what)
    }
}

/// The uses of device `dev` (an `st_dev`: each btrfs subvolume has its
/// own) by processes other than this one, at most one per process, in pid
/// order. Processes that vanish while they are looked at are skipped.
pub fn users(dev: u64) -> std::io::Result<Vec<Use>> {
    let me = std::process::id() as i32;
    let mut pids: Vec<i32> = fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| pid != me)
        .collect();
    pids.sort_unstable();
    Ok(pids.into_iter().filter_map(|pid| first_use(pid, dev)).collect())
}

/// `users` for an error message: the first five, and how many more.
pub fn listed(users: &[Use]) -> String {
    let mut listed: Vec<String> = users.iter().take(5).map(ToString::to_string).collect();
    if users.len() > 5 {
        listed.push(format!("and {} more", users.len() - 5));
    }
    listed.join("; ")
}

fn first_use(pid: i32, dev: u64) -> Option<Use> {
    let base = format!("/proc/{pid}");
    let on = |link: &str| fs::metadata(format!("{base}/{link}")).is_ok_and(|m| m.dev() == dev);
    let target =
        |link: &str| fs::read_link(format!("{base}/{link}")).map(|p| p.display().to_string()).unwrap_or_default();
    let what = if on("cwd") {
        Some(format!("cwd {}", target("cwd")))
    } else if on("root") {
        Some(format!("root {}", target("root")))
    } else {
        fds(&base, &on, &target).or_else(|| mapping(&base, dev))
    }?;
    let comm = fs::read_to_string(format!("{base}/comm")).unwrap_or_default().trim().to_owned();
    Some(Use { pid, comm, what })
}

fn fds(base: &str, on: &dyn Fn(&str) -> bool, target: &dyn Fn(&str) -> String) -> Option<String> {
    let dir = fs::read_dir(format!("{base}/fd")).ok()?;
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|fd| on(&format!("fd/{fd}")))
        .map(|fd| format!("fd {fd} {}", target(&format!("fd/{fd}"))))
}

/// A file mapping on `dev`: /proc/PID/maps names each mapping's device as
/// hexadecimal `major:minor`.
fn mapping(base: &str, dev: u64) -> Option<String> {
    let (major, minor) = (stasis_sys::nix::sys::stat::major(dev), stasis_sys::nix::sys::stat::minor(dev));
    let want = format!("{major:02x}:{minor:02x}");
    let maps = fs::read_to_string(format!("{base}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let device = fields.nth(3)?;
        let inode = fields.next()?;
        let path = fields.collect::<Vec<_>>().join(" ");
        (device == want && inode != "0").then(|| format!("mapping {path}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_process_with_its_cwd_or_a_file_on_the_device_is_found() {
        // On a filesystem of its own (tmpfs), not the root's, which every
        // process's root directory is on.
        let shm = std::path::Path::new("/dev/shm");
        assert!(shm.is_dir(), "the test needs /dev/shm (a tmpfs)");
        let dir = shm.join(format!("stasis-users-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let dev = fs::metadata(&dir).unwrap().dev();
        let mut cwd = Command::new("sleep").arg("30").current_dir(&dir).stdin(Stdio::null()).spawn().unwrap();
        let file = dir.join("held");
        fs::write(&file, b"x").unwrap();
        let mut holder =
            Command::new("sleep").arg("30").current_dir("/").stdin(fs::File::open(&file).unwrap()).spawn().unwrap();
        let found = users(dev).unwrap();
        let (c, h) = (cwd.id() as i32, holder.id() as i32);
        let _ = (cwd.kill(), holder.kill(), cwd.wait(), holder.wait());
        let _ = fs::remove_dir_all(&dir);
        let of = |pid| found.iter().find(|u| u.pid == pid).unwrap_or_else(|| panic!("{pid} not in {found:?}"));
        assert!(of(c).what.starts_with("cwd ") && of(c).what.contains("stasis-users"), "{:?}", of(c));
        assert_eq!(of(h).what, format!("fd 0 {}", file.display()));
        assert_eq!(of(h).comm, "sleep");
        assert!(found.iter().all(|u| u.pid != std::process::id() as i32));
    }
}
