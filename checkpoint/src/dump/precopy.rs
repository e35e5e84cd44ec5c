//! Live snapshot: the tree's private memory is copied while it runs, so the
//! freeze only has to copy what was written since (pre-copy).
//!
//! Each process gets a userfaultfd of its own address space, made in it by
//! injection ([`Userfaultfd::in_process`]) with `UFFD_FEATURE_WP_ASYNC`:
//! its private mappings are registered and write-protected, the kernel
//! resolves each first write to a page by itself (the process never
//! waits), and PAGEMAP_SCAN reports those pages as `PAGE_IS_WRITTEN`. The
//! pages are then read (through /proc/PID/mem, which takes no pins) and
//! stored as chunks ahead of their regions ([`ImageWriter::store_chunks`]).
//! At the freeze, [`super::memory::store`] takes every window copied ahead
//! whose pages were not written and still form the same run, and reads
//! the rest. Whatever cannot be tracked (a process that cannot be stopped
//! for the injection, a mapping that refuses registration, one mapped
//! after) shows as written and is read in the freeze; shared memory is
//! always read then.
//!
//! Dropping a [`PreCopy`] unregisters everything; a killed agent's
//! descriptors close and do the same, so no process is left protected.

use std::collections::HashMap;
use std::time::Duration;

use stasis_image::{ChunkId, ImageWriter};
use stasis_sys::inject::find_syscall_site;
use stasis_sys::pagemap::Pagemap;
use stasis_sys::pidfd::PidFd;
use stasis_sys::ptrace::Seized;
use stasis_sys::uffd::{self, Userfaultfd};
use stasis_sys::Pid;

use super::memory::{self, MemoryError, Pages, Planned};
use crate::proc;

/// How long a process may take to stop for the injection that makes its
/// userfaultfd; one that does not is copied in the freeze instead.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// Memory of one process copied while it ran, and the userfaultfd that
/// tells which of it was written since.
#[derive(Debug)]
pub struct Copied {
    uffd: Userfaultfd,
    registered: Vec<std::ops::Range<u64>>,
    /// Chunks by window start: (window length, chunk).
    chunks: HashMap<u64, (u64, ChunkId)>,
}

impl Copied {
    /// The chunk copied ahead for the window at `start` of `len` bytes.
    pub fn chunk(&self, start: u64, len: u64) -> Option<ChunkId> {
        self.chunks.get(&start).filter(|(l, _)| *l == len).map(|(_, id)| *id)
    }
}

impl Drop for Copied {
    fn drop(&mut self) {
        // Unregistering takes the write protection off the pages too, so
        // the process does not fault once more on each (closing the
        // descriptor alone leaves the bits).
        for r in &self.registered {
            let _ = self.uffd.unregister(r.clone());
        }
    }
}

/// The memory of a tree copied ahead, by process (as stasis sees its pid).
#[derive(Debug, Default)]
pub struct PreCopy {
    by_pid: HashMap<Pid, Copied>,
    /// Bytes read while the tree ran.
    pub bytes_read: u64,
    /// Why processes or mappings could not be tracked, one line each.
    pub untracked: Vec<String>,
}

impl PreCopy {
    /// What was copied ahead of process `pid`.
    pub fn of(&self, pid: Pid) -> Option<&Copied> {
        self.by_pid.get(&pid)
    }
}

/// Why this kernel cannot track writes for a live snapshot, if it cannot.
pub fn unavailable() -> Option<String> {
    match uffd::supported_features() {
        Ok(f) if f & uffd::FEATURE_WP_ASYNC != 0 => None,
        Ok(_) => Some("this kernel lacks userfaultfd WP_ASYNC (Linux 6.7)".into()),
        Err(e) => Some(format!("no userfaultfd: {}", crate::chain(&e))),
    }
}

/// Track and copy the private memory of `pids` into `writer` while they
/// run. Only failing to write the image is an error: a process that
/// cannot be tracked is noted and copied in the freeze.
pub fn run(pids: &[Pid], writer: &mut ImageWriter) -> Result<PreCopy, MemoryError> {
    let mut pre = PreCopy::default();
    for &pid in pids {
        let (uffd, plans) = match track(pid) {
            Ok(t) => t,
            Err(why) => {
                pre.untracked.push(format!("process {pid}: {why}"));
                continue;
            }
        };
        let mut copied = Copied { uffd, registered: Vec::new(), chunks: HashMap::new() };
        let mut tracked = Vec::new();
        for plan in plans {
            let range = plan.vma.start..plan.vma.end;
            let protect = match copied.uffd.register(range.clone(), uffd::REGISTER_MODE_WP) {
                Ok(_) => {
                    copied.registered.push(range.clone());
                    copied.uffd.write_protect(range, true)
                }
                Err(e) => Err(e),
            };
            match protect {
                Ok(()) => tracked.push(plan),
                Err(e) => pre.untracked.push(format!("process {pid}: {}", crate::chain(&e))),
            }
        }
        pre.bytes_read += copy(pid, &tracked, writer, &mut copied)?;
        pre.by_pid.insert(pid, copied);
    }
    Ok(pre)
}

/// The mappings of `pid` whose pages a dump stores, and a userfaultfd of
/// its address space made by stopping it for a moment.
fn track(pid: Pid) -> Result<(Userfaultfd, Vec<Planned>), String> {
    // A process of a frozen cgroup cannot stop for ptrace (nor be let go).
    if let Some(cg) = crate::freeze::frozen_cgroup_of(pid) {
        return Err(format!("it is in frozen cgroup {}", cg.display()));
    }
    let maps = proc::parse_smaps(&proc::read(pid, "maps").map_err(|e| format!("reading its mappings: {e}"))?)?;
    let mut plans: Vec<Planned> =
        maps.iter().filter_map(|m| memory::plan(m).ok()).filter(|p| p.pages != Pages::None).collect();
    memory::find_guards(pid, &mut plans).map_err(|e| e.to_string())?;
    let pidfd = PidFd::open(pid).map_err(|e| crate::chain(&e))?;
    let mut seized = Seized::seize(pid, crate::freeze::seize_options()).map_err(|e| crate::chain(&e))?;
    seized.interrupt(STOP_TIMEOUT).map_err(|e| crate::chain(&e))?;
    let site = find_syscall_site(pid).map_err(|e| crate::chain(&e))?;
    let mut inj = seized.begin_injection(site).map_err(|e| crate::chain(&e))?;
    let made = Userfaultfd::in_process(&mut inj, &pidfd, uffd::FEATURE_WP_ASYNC);
    inj.finish().map_err(|e| crate::chain(&e))?;
    seized.detach().map_err(|e| crate::chain(&e))?;
    Ok((made.map_err(|e| crate::chain(&e))?, plans))
}

/// Read the pages of `plans` (write-protected before) and store them as
/// chunks of `copied`; returns the bytes read. A piece that cannot be read
/// (unmapped meanwhile) is left to the freeze.
fn copy(pid: Pid, plans: &[Planned], writer: &mut ImageWriter, copied: &mut Copied) -> Result<u64, MemoryError> {
    let pagemap = Pagemap::open(pid).map_err(|e| MemoryError::Scan { pid, start: 0, what: crate::chain(&e) })?;
    let runs = memory::runs(pid, &pagemap, plans, &[])?;
    let mut pieces = Vec::new();
    for (start, end) in runs {
        for (at, len) in writer.windows(start, end - start).collect::<Vec<_>>() {
            memory::add_to_pieces(&mut pieces, at, at + len);
        }
    }
    let mut bytes = 0;
    memory::read_pieces(pid, &pieces, |at, read| {
        let Ok(buf) = read else { return Ok(()) };
        let windows: Vec<(u64, u64)> = writer.windows(at, buf.len() as u64).collect();
        let slices: Vec<&[u8]> = windows.iter().map(|&(s, l)| &buf[(s - at) as usize..(s - at + l) as usize]).collect();
        let ids = writer.store_chunks(&slices).map_err(MemoryError::Write)?;
        for ((s, l), id) in windows.into_iter().zip(ids) {
            copied.chunks.insert(s, (l, id));
        }
        bytes += buf.len() as u64;
        Ok(())
    })?;
    Ok(bytes)
}
