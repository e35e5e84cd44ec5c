//! Write tracking kept between dumps (`dump --keep-tracking`).
//!
//! A live snapshot knows, through each process's userfaultfd (WP_ASYNC),
//! which pages were written since it protected them. Asked to keep that,
//! it protects the pages again in the freeze (what they hold then is what
//! the image stores) instead of unregistering, and the userfaultfds go to
//! a holder: a small process of stasis's own (`stasis hold-tracking`) that
//! takes them with pidfd_getfd from the dump, writes what it holds to a
//! state file under [`STATE_DIR`] and waits for its processes to exit.
//!
//! The next dump of those processes ([`take_back`]) takes the
//! userfaultfds back the same way and stops the holder. With `--parent`
//! the image they were kept for, it copies ahead only the pages written
//! since (and those of mappings made since): the parent's chunks are the
//! first copy of the rest ([`super::precopy`]). With another parent, or
//! none, it protects and copies everything, as a first dump would.
//!
//! A page that is still protected holds what the image stores for it: the
//! kernel clears the bit on the first write to it (by the process, by a
//! read(2) into it, through /proc/PID/mem alike), a page dropped and
//! faulted in again comes back unprotected, and so does every page of a
//! mapping moved, or made anew, at those addresses. What it cannot see is
//! a device writing into memory pinned before (a long-term pinned buffer,
//! as RDMA's or io_uring's registered buffers), the same as for the
//! rounds of one live snapshot.
//!
//! Nothing is lost when the holder goes (killed, the machine rebooted):
//! the next dump reads everything. The protection bits it leaves cost each
//! page one write fault that the kernel resolves by itself.

use std::io::{BufRead, Read, Write};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use stasis_sys::nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use stasis_sys::pidfd::PidFd;
use stasis_sys::uffd::Userfaultfd;
use stasis_sys::{Pid, Signal};

use crate::proc;

/// Where holders write what they hold, one file each (named by the
/// holder's pid).
pub const STATE_DIR: &str = "/run/stasis/tracking";

/// The write tracking of one process, kept after a dump: every page of
/// `registered` still write-protected holds what image `image` stores
/// for it. Dropping it unregisters the ranges (the tracking ends).
#[derive(Debug)]
pub struct Kept {
    pub pid: Pid,
    /// When the process started (ticks after boot): a pid used again is
    /// another process.
    pub start_time: u64,
    /// Where its stack, arguments and environment start: an exec since
    /// (a new address space, which the userfaultfd is not of) moves them.
    pub marks: [u64; 3],
    /// The process's address space number in `image`.
    pub mm: u32,
    /// The manifest hash of the image the protected pages are stored in.
    pub image: [u8; 32],
    /// That image's chunk size.
    pub chunk_size: u32,
    uffd: Option<Userfaultfd>,
    registered: Vec<Range<u64>>,
}

impl Kept {
    /// The tracking of `pid` (as it is now: its start time and marks)
    /// through `uffd`, for address space `mm` of image `image`; none for a
    /// process gone.
    pub(crate) fn now(
        pid: Pid,
        mm: u32,
        (image, chunk_size): ([u8; 32], u32),
        uffd: Userfaultfd,
        registered: Vec<Range<u64>>,
    ) -> Option<Kept> {
        let stat = proc::stat(pid).ok()?;
        let (start_time, marks) = (stat.start_time, marks(&stat));
        Some(Kept { pid, start_time, marks, mm, image, chunk_size, uffd: Some(uffd), registered })
    }

    /// The userfaultfd and the ranges registered with it, for the next
    /// dump to go on with (which unregisters them when done).
    pub(crate) fn into_parts(mut self) -> (Userfaultfd, Vec<Range<u64>>) {
        let uffd = self.uffd.take().expect("held until taken");
        (uffd, std::mem::take(&mut self.registered))
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(uffd) = &self.uffd {
            for r in &self.registered {
                let _ = uffd.unregister(r.clone());
            }
        }
    }
}

/// What became of the write tracking a dump was asked to keep.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KeptReport {
    /// Processes whose tracking is kept.
    pub processes: usize,
    /// The holder keeping it.
    pub holder: Option<i32>,
    /// Why it is not kept, when it is not.
    pub not_kept: Option<String>,
}

/// What a holder holds, as its state file says (the descriptors its own),
/// and as it is told by the dump (the descriptors the dump's).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Held {
    /// The holder, and when it started (0 until it writes the file).
    pub holder: i32,
    pub holder_start_time: u64,
    pub processes: Vec<HeldProcess>,
}

/// One process's tracking in a [`Held`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct HeldProcess {
    pub pid: i32,
    pub start_time: u64,
    pub marks: [u64; 3],
    pub mm: u32,
    /// The image's manifest hash, in hex.
    pub image: String,
    pub chunk_size: u32,
    /// The userfaultfd's features, and its descriptor number.
    pub features: u64,
    pub fd: i32,
    /// The registered ranges, as `[start, end]` pairs.
    pub ranges: Vec<[u64; 2]>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn start_time(pid: Pid) -> Option<u64> {
    proc::stat(pid).ok().map(|s| s.start_time)
}

/// Where the stack, arguments and environment of a process start
/// ([`Kept::marks`]).
fn marks(stat: &proc::Stat) -> [u64; 3] {
    [stat.start_stack, stat.arg_start, stat.env_start]
}

/// Hand `kept` to a holder: `program` (stasis itself) run as `program
/// hold-tracking --from PID`, which takes the userfaultfds from this
/// process and answers once its state file is written. Returns the
/// holder's pid. On failure `kept` is dropped: the tracking ends.
pub fn hand_over(kept: Vec<Kept>, program: &Path) -> Result<i32, String> {
    if kept.is_empty() {
        return Err("no process's writes were tracked".into());
    }
    let told = Held {
        holder: 0,
        holder_start_time: 0,
        processes: kept
            .iter()
            .map(|k| {
                let uffd = k.uffd.as_ref().expect("held until taken");
                HeldProcess {
                    pid: k.pid.as_raw(),
                    start_time: k.start_time,
                    marks: k.marks,
                    mm: k.mm,
                    image: hex(&k.image),
                    chunk_size: k.chunk_size,
                    features: uffd.features(),
                    fd: uffd.as_fd().as_raw_fd(),
                    ranges: k.registered.iter().map(|r| [r.start, r.end]).collect(),
                }
            })
            .collect(),
    };
    let mut child = Command::new(program)
        .args(["hold-tracking", "--from", &std::process::id().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {} hold-tracking: {e}", program.display()))?;
    let json = serde_json::to_vec(&told).map_err(|e| e.to_string())?;
    let mut stdin = child.stdin.take().expect("piped");
    let sent = stdin.write_all(&json);
    drop(stdin);
    let mut answer = String::new();
    let stdout = child.stdout.take().expect("piped");
    let read = std::io::BufReader::new(stdout).read_line(&mut answer);
    let ready = sent.is_ok() && read.is_ok() && answer.trim() == "ready";
    if !ready {
        let _ = child.kill();
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        return Err(format!("the holder did not take the write tracking ({status})"));
    }
    // The holder has its own descriptors of the same userfaultfds: this
    // process's close without unregistering anything.
    for k in kept {
        drop(k.into_parts());
    }
    Ok(child.id() as i32)
}

/// The holder's work (`stasis hold-tracking`): take the userfaultfds
/// `input` names from process `from`, write the state file, say "ready"
/// on `out`, then wait until every process held has exited and take the
/// state file away. Never unregisters anything: the next dump goes on
/// with what it holds.
pub fn hold(from: Pid, input: impl Read, mut out: impl Write) -> Result<(), String> {
    let mut held: Held = serde_json::from_reader(input).map_err(|e| format!("what to hold: {e}"))?;
    // Its own session: a signal to the dump's terminal is not for it.
    let _ = stasis_sys::nix::unistd::setsid();
    let me = Pid::from_raw(std::process::id() as i32);
    let dumper = PidFd::open(from).map_err(|e| crate::chain(&e))?;
    let mut fds = Vec::new();
    let mut watched = Vec::new();
    for p in &mut held.processes {
        let fd = dumper.get_fd(p.fd).map_err(|e| crate::chain(&e))?;
        p.fd = fd.as_raw_fd();
        fds.push(fd);
        let pid = Pid::from_raw(p.pid);
        // Opened before its start time is checked: the pidfd is of that
        // process, whatever the pid is later.
        let pidfd = PidFd::open(pid).map_err(|e| crate::chain(&e))?;
        if start_time(pid) != Some(p.start_time) {
            return Err(format!("process {pid} is gone"));
        }
        watched.push(pidfd);
    }
    held.holder = me.as_raw();
    held.holder_start_time = start_time(me).ok_or("cannot read its own start time")?;
    let path = state_path(me.as_raw());
    write_state(&path, &held)?;
    writeln!(out, "ready").and_then(|()| out.flush()).map_err(|e| e.to_string())?;
    drop(out);
    // A pidfd polls readable once its process has exited.
    while !watched.is_empty() {
        let mut polled: Vec<PollFd> = watched.iter().map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN)).collect();
        match poll(&mut polled, PollTimeout::NONE) {
            Ok(_) => {}
            Err(stasis_sys::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        let gone: Vec<bool> = polled.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(polled);
        let mut i = 0;
        watched.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
    }
    // Taken back meanwhile (renamed): not this holder's to remove.
    let _ = std::fs::remove_file(&path);
    drop(fds);
    Ok(())
}

fn state_path(holder: i32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{holder}.json"))
}

fn write_state(path: &Path, held: &Held) -> Result<(), String> {
    let dir = path.parent().expect("in STATE_DIR");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(held).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Take back the write tracking kept for any of `pids` (the processes of
/// a dump about to start), stopping its holders. A holder that holds
/// other processes too gives them all up: their tracking ends. State
/// files of holders that are gone are removed. Whatever cannot be taken
/// is left (logged): the dump then tracks from nothing.
pub fn take_back(pids: &[Pid]) -> Vec<Kept> {
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else { return Vec::new() };
    let mine: Vec<(Pid, Option<u64>)> = pids.iter().map(|&p| (p, start_time(p))).collect();
    let ours = |pid: i32, start: u64| mine.iter().any(|&(p, st)| p.as_raw() == pid && st == Some(start));
    let mut kept = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Ok(held) =
            std::fs::read(&path).map_err(drop).and_then(|b| serde_json::from_slice::<Held>(&b).map_err(drop))
        else {
            continue;
        };
        let holder = Pid::from_raw(held.holder);
        let Ok(pidfd) = PidFd::open(holder) else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        if start_time(holder) != Some(held.holder_start_time) {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if !held.processes.iter().any(|p| ours(p.pid, p.start_time)) {
            continue;
        }
        // Claimed by renaming: of two dumps at once, one takes it.
        let claimed = path.with_extension(format!("taken-{}", std::process::id()));
        if std::fs::rename(&path, &claimed).is_err() {
            continue;
        }
        for p in &held.processes {
            let (Some(image), Ok(fd)) = (unhex(&p.image), pidfd.get_fd(p.fd)) else {
                tracing::info!("the write tracking of process {} could not be taken from holder {holder}", p.pid);
                continue;
            };
            let registered = p.ranges.iter().map(|&[s, e]| s..e).collect();
            let uffd = Userfaultfd::adopt(fd, p.features);
            let pid = Pid::from_raw(p.pid);
            let (start_time, marks_then, mm, chunk_size) = (p.start_time, p.marks, p.mm, p.chunk_size);
            let k = Kept { pid, start_time, marks: marks_then, mm, image, chunk_size, uffd: Some(uffd), registered };
            // After an exec the userfaultfd is of the old address space:
            // of no use (nothing of the new one is registered).
            match proc::stat(pid).map(|s| marks(&s) == p.marks) {
                Ok(true) => kept.push(k),
                _ => tracing::info!("process {pid} ran another program since its tracking was kept: tracked anew"),
            }
        }
        let _ = pidfd.send_signal(Signal::SIGKILL);
        let _ = std::fs::remove_file(&claimed);
    }
    // Those of processes not in this dump end here (dropped).
    kept.retain(|k| ours(k.pid.as_raw(), k.start_time));
    kept
}
