//! A journal of cgroups stasis froze, so that a stasis killed with SIGKILL
//! (which no guard survives) does not leave a workload frozen: every stasis
//! invocation first thaws what a dead stasis left (see [`recover`]).
//!
//! Each entry is a file `/run/stasis/journal/<agent-pid>-<n>.json` written
//! (and synced) before the freeze and removed after the thaw. A ptrace
//! freeze needs no entry: the kernel detaches the tracees of an exiting
//! tracer, and a seized task resumes (kernel/ptrace.c `exit_ptrace`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::freezer::{CgroupFreezer, Kind};

/// Where entries live; /run is a tmpfs, so a reboot (which thaws
/// everything) also clears the journal.
pub const DIR: &str = "/run/stasis/journal";

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    agent: i32,
    cgroup: PathBuf,
    v2: bool,
    /// Whether the cgroup was frozen before stasis froze it: then that is
    /// the state to leave it in.
    was_frozen: bool,
}

/// A journal entry; removed on drop.
#[derive(Debug)]
pub struct Recorded {
    path: PathBuf,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Record that this process is about to freeze `cgroup`.
pub fn record_freeze(freezer: &CgroupFreezer, was_frozen: bool) -> std::io::Result<Recorded> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    fs::create_dir_all(DIR)?;
    let agent = std::process::id() as i32;
    let path = Path::new(DIR).join(format!("{agent}-{}.json", SEQ.fetch_add(1, Ordering::Relaxed)));
    let entry = Entry { agent, cgroup: freezer.dir().to_owned(), v2: freezer.kind() == Kind::V2, was_frozen };
    let mut f = fs::File::create(&path)?;
    f.write_all(&serde_json::to_vec(&entry).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    Ok(Recorded { path })
}

/// Thaw every cgroup that a stasis which is no longer running froze, and
/// drop its entries. Returns the cgroups thawed. Errors are logged, never
/// fatal: this runs before every command.
pub fn recover() -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir(DIR) else { return Vec::new() };
    let mut thawed = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(text) = fs::read(&path) else { continue };
        let Ok(e) = serde_json::from_slice::<Entry>(&text) else {
            tracing::warn!("removing unreadable journal entry {}", path.display());
            let _ = fs::remove_file(&path);
            continue;
        };
        if Path::new(&format!("/proc/{}", e.agent)).exists() && e.agent != std::process::id() as i32 {
            continue; // its stasis is still at work
        }
        let freezer = CgroupFreezer::new(&e.cgroup, if e.v2 { Kind::V2 } else { Kind::V1 });
        if e.was_frozen && e.cgroup.exists() {
            // It was frozen before stasis thawed it to work: freeze it again.
            if let Err(err) = freezer.freeze(Duration::from_secs(5)) {
                tracing::error!("cannot freeze {} again for stasis {}: {err}", e.cgroup.display(), e.agent);
                continue;
            }
        }
        if !e.was_frozen && e.cgroup.exists() {
            match freezer.thaw(Duration::from_secs(5)) {
                Ok(()) => {
                    tracing::warn!(
                        "thawed {}, left frozen by stasis {} which did not finish",
                        e.cgroup.display(),
                        e.agent
                    );
                    thawed.push(e.cgroup.clone());
                }
                Err(err) => {
                    tracing::error!("cannot thaw {} left frozen by stasis {}: {err}", e.cgroup.display(), e.agent);
                    continue;
                }
            }
        }
        let _ = fs::remove_file(&path);
    }
    thawed
}
