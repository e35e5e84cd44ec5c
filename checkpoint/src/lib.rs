//! Process checkpoint and restore: freezing, tree discovery, dumping tasks,
//! threads, registers, memory and file descriptors into an image, and
//! restoring them.
//!
//! For now it holds [`host`], the probe of the facilities this kernel offers,
//! which every later operation consults before it touches a process, and
//! [`freezer`], the cgroup v2 / v1 freezers the dump will freeze trees with.
#![forbid(unsafe_code)]

pub mod cgroups;
pub mod dump;
pub mod fd;
pub mod freeze;
pub mod freezer;
pub mod host;
pub mod journal;
pub mod netlock;
pub mod proc;
pub mod restore;
mod workers;

/// Told the bytes done so far, and the total, during a long phase (memory
/// of a dump or a restore).
#[derive(Clone)]
pub struct ProgressFn(pub std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressFn")
    }
}

/// The CPUs this process may use, asked once: `available_parallelism`
/// reads the cgroup's cpu.max and the affinity mask each time.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// An error and its causes as one line, for errors that are flattened into a
/// message (the typed source would otherwise be lost).
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
