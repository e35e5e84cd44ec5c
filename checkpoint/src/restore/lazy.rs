//! Lazy restore (`restore --lazy`): the tree runs before its private
//! anonymous memory is back. Those mappings are registered with a
//! userfaultfd of each process (missing-page mode, kernel-mode faults
//! included); a thread of the agent answers each fault with the page's
//! chunk from the image (UFFDIO_COPY), or the zero page where the image has
//! none, while another copies every page still missing in the background.
//! Once all are in, the userfaultfds are closed, which unregisters them.
//!
//! The process may change its mappings meanwhile; the kernel tells it
//! (fork, mremap, MADV_DONTNEED, munmap events) and holds the process until
//! the event is read, and a copy fails with EAGAIN while one is unread. The
//! pages still to load of each address space are kept by address, and an
//! event is read and applied with that table locked, so no copy acts on a
//! stale one: a forked child gets a table of its own (a copy of its
//! parent's: the same pages are missing in both), a moved range moves,
//! dropped or unmapped pages are forgotten (zeros from then on).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stasis_image::{ChunkId, Image};
use stasis_sys::nix::errno::Errno;
use stasis_sys::nix::sys::eventfd::{EfdFlags, EventFd};
use stasis_sys::uffd::{self, Event, Userfaultfd};

const PAGE: u64 = 4096;

/// The features a lazy restore's userfaultfds are made with: every change
/// of the mappings is told.
pub const FEATURES: u64 = uffd::FEATURE_EVENT_FORK
    | uffd::FEATURE_EVENT_REMAP
    | uffd::FEATURE_EVENT_REMOVE
    | uffd::FEATURE_EVENT_UNMAP
    | uffd::FEATURE_THREAD_ID;

/// Pages still missing at consecutive addresses that hold consecutive
/// pages of one chunk (an index into the table of chunks), from `page`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    chunk: u32,
    page: u16,
    pages: u16,
}

impl Run {
    fn len(&self) -> u64 {
        u64::from(self.pages) * PAGE
    }
}

/// The pages of one address space still missing that the image holds, as
/// runs by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Missing(BTreeMap<u64, Run>);

impl Missing {
    /// The run holding `addr`, with its start.
    fn run_at(&self, addr: u64) -> Option<(u64, Run)> {
        let (&at, &run) = self.0.range(..=addr).next_back()?;
        (addr < at + run.len()).then_some((at, run))
    }

    /// Splits the run holding `addr` (page aligned) there.
    fn split_at(&mut self, addr: u64) {
        if let Some((at, run)) = self.run_at(addr).filter(|(at, _)| *at < addr) {
            let head = ((addr - at) / PAGE) as u16;
            self.0.insert(at, Run { pages: head, ..run });
            self.0.insert(addr, Run { page: run.page + head, pages: run.pages - head, ..run });
        }
    }

    /// Takes out the runs within `range`, split at its ends.
    fn take(&mut self, range: std::ops::Range<u64>) -> Vec<(u64, Run)> {
        self.split_at(range.start);
        self.split_at(range.end);
        let inside: Vec<u64> = self.0.range(range).map(|(at, _)| *at).collect();
        inside.into_iter().map(|at| (at, self.0.remove(&at).expect("listed"))).collect()
    }

    /// The pages of `from..from + len` moved to `to`.
    fn remap(&mut self, from: u64, to: u64, len: u64) {
        for (at, run) in self.take(from..from + len) {
            self.0.insert(at - from + to, run);
        }
    }
}

/// The address space of one process being loaded.
struct Space {
    /// Whose (a pid, or "a child of" one).
    name: String,
    uffd: Userfaultfd,
    /// The pages still missing that the image holds, by address.
    missing: Mutex<Missing>,
}

/// The pages of a restored tree still loading, and the threads loading
/// them. [`Loading::wait`] returns once all are in.
pub struct Loading {
    shared: Arc<Shared>,
    /// When the tree was let run.
    started: Instant,
    prefetch: Option<std::thread::JoinHandle<()>>,
    faults: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    image: Arc<Image>,
    /// Every chunk of every region of the image, in order.
    chunks: Vec<ChunkId>,
    spaces: Mutex<Vec<Arc<Space>>>,
    /// Written when a space is added, to wake the fault thread's poll.
    added: EventFd,
    /// The fault thread stops when set.
    stop: AtomicBool,
    /// Bytes copied on a fault, and in the background.
    on_fault: AtomicU64,
    ahead: AtomicU64,
    /// The first error, if any.
    error: Mutex<Option<String>>,
    /// Set when a chunk turned out damaged: the tree is killed, nothing
    /// more is loaded, and a thread faulting still is killed too.
    broken: AtomicBool,
    /// The restored processes (host pids), killed with every descendant
    /// when a chunk is damaged.
    tree: Mutex<Vec<i32>>,
}

/// What a lazy restore loaded, once done.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Loaded {
    /// Bytes copied when a thread touched a missing page.
    pub on_fault: u64,
    /// Bytes copied in the background.
    pub ahead: u64,
    /// From the restore's end to the last page in, in microseconds.
    pub loading_us: u64,
}

/// Builder of a [`Loading`]: the address spaces registered one by one as
/// the restore builds them, then started once the tree runs.
pub struct Lazy {
    shared: Arc<Shared>,
    /// Where each region's chunks start in [`Shared::chunks`].
    regions: Vec<u32>,
    faults: Option<std::thread::JoinHandle<()>>,
}

impl Lazy {
    /// Ready for the address spaces of `image`; the fault thread runs from
    /// now on.
    pub fn new(image: Arc<Image>) -> Result<Self, String> {
        let mut chunks = Vec::new();
        let mut regions = Vec::with_capacity(image.memory().len());
        for r in image.memory() {
            regions.push(chunks.len() as u32);
            chunks.extend(image.region_chunks(r).map(|(_, _, id)| id));
        }
        let shared = Arc::new(Shared {
            image,
            chunks,
            spaces: Mutex::new(Vec::new()),
            added: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| format!("eventfd: {e}"))?,
            stop: AtomicBool::new(false),
            on_fault: AtomicU64::new(0),
            ahead: AtomicU64::new(0),
            error: Mutex::new(None),
            broken: AtomicBool::new(false),
            tree: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let faults = Some(std::thread::spawn(move || s.answer_faults()));
        Ok(Lazy { shared, regions, faults })
    }

    /// Adds the address space `uffd` is of (of the image's address space
    /// `mm`, named `name`): its pages the image holds in `lazy` ranges
    /// (those registered) are missing. Faults are answered from now on, so
    /// restore may go on touching the process.
    pub fn add(&mut self, name: String, uffd: Userfaultfd, mm: u32, lazy: &[std::ops::Range<u64>]) {
        let image = &self.shared.image;
        let mut missing = Missing::default();
        for (r, &first) in image.memory().iter().zip(&self.regions).filter(|(r, _)| r.mm == mm) {
            for (k, (at, len, _)) in image.region_chunks(r).enumerate() {
                let run = Run { chunk: first + k as u32, page: 0, pages: len.div_ceil(PAGE) as u16 };
                missing.0.insert(at, run);
            }
        }
        // Only what is registered is loaded lazily (the rest is written).
        let mut registered = Missing::default();
        for l in lazy {
            registered.0.extend(missing.take(l.clone()));
        }
        let missing = registered;
        let space = Arc::new(Space { name, uffd, missing: Mutex::new(missing) });
        self.shared.spaces.lock().expect("not poisoned").push(space);
        let _ = self.shared.added.write(1);
    }

    /// Starts copying every missing page in the background (the tree,
    /// processes `tree` by their pids here, is running now).
    pub fn start(mut self, tree: Vec<i32>) -> Loading {
        *self.shared.tree.lock().expect("not poisoned") = tree;
        let s = self.shared.clone();
        let prefetch = std::thread::spawn(move || s.copy_ahead());
        Loading {
            shared: self.shared.clone(),
            started: Instant::now(),
            prefetch: Some(prefetch),
            faults: self.faults.take(),
        }
    }
}

impl Drop for Lazy {
    /// A restore that failed before starting: the fault thread stops and
    /// the userfaultfds close (the tree is killed by the restore).
    fn drop(&mut self) {
        if let Some(t) = self.faults.take() {
            self.shared.stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy").field("spaces", &self.shared.spaces().len()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Loading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loading").field("spaces", &self.shared.spaces().len()).finish_non_exhaustive()
    }
}

impl Loading {
    /// Waits until every page is in, then closes the userfaultfds. The
    /// first error, if any, is returned once all that could be loaded is.
    pub fn wait(mut self) -> Result<Loaded, String> {
        self.finish();
        let loaded = Loaded {
            on_fault: self.shared.on_fault.load(Ordering::Relaxed),
            ahead: self.shared.ahead.load(Ordering::Relaxed),
            loading_us: self.started.elapsed().as_micros() as u64,
        };
        match self.shared.error.lock().expect("not poisoned").take() {
            Some(e) => Err(e),
            None => Ok(loaded),
        }
    }
}

impl Loading {
    fn finish(&mut self) {
        if let Some(t) = self.prefetch.take() {
            let _ = t.join();
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.faults.take() {
            let _ = t.join();
        }
        // Closing them unregisters every range: faults are the kernel's
        // again (nothing is missing that the image holds).
        self.shared.spaces.lock().expect("not poisoned").clear();
    }
}

impl Drop for Loading {
    /// Dropped unwaited for: all the same loaded first, as the tree needs.
    fn drop(&mut self) {
        self.finish();
    }
}

/// What became of one attempt to copy pages.
enum Outcome {
    Done,
    /// The mappings are changing: try again once the event is read.
    Again,
}

impl Shared {
    fn fail(&self, e: String) {
        tracing::error!("lazy restore: {e}");
        self.error.lock().expect("not poisoned").get_or_insert(e);
    }

    fn spaces(&self) -> Vec<Arc<Space>> {
        self.spaces.lock().expect("not poisoned").clone()
    }

    /// Reads every space's events and answers its faults, until stopped.
    fn answer_faults(&self) {
        use stasis_sys::nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut pending: Vec<(Arc<Space>, u64)> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let spaces = self.spaces();
            let mut fds: Vec<PollFd<'_>> =
                spaces.iter().map(|s| PollFd::new(s.uffd.as_fd(), PollFlags::POLLIN)).collect();
            fds.push(PollFd::new(self.added.as_fd(), PollFlags::POLLIN));
            let timeout = if pending.is_empty() { 50u16 } else { 1 };
            match poll(&mut fds, PollTimeout::from(timeout)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return self.fail(format!("poll: {e}")),
            }
            let ready: Vec<bool> =
                fds.iter().map(|f| f.revents().is_some_and(|r| r.intersects(PollFlags::POLLIN))).collect();
            drop(fds);
            if ready.last() == Some(&true) {
                let _ = self.added.read();
            }
            for (space, ready) in spaces.iter().zip(ready) {
                if ready {
                    self.read_events(space, &mut pending);
                }
            }
            // Faults whose copy met a change of the mappings (its event
            // read since, or about to be).
            pending.retain(|(space, address)| {
                let mut missing = space.missing.lock().expect("not poisoned");
                matches!(self.fault(space, &mut missing, *address), Outcome::Again)
            });
        }
    }

    /// Reads the events of `space` with its table locked and applies them;
    /// faults are answered at once, or left in `pending`.
    fn read_events(&self, space: &Arc<Space>, pending: &mut Vec<(Arc<Space>, u64)>) {
        let mut missing = space.missing.lock().expect("not poisoned");
        let events = match space.uffd.read_events() {
            Ok(events) => events,
            Err(e) => return self.fail(format!("{}: reading its userfaultfd: {e}", space.name)),
        };
        for event in events {
            match event {
                Event::Pagefault { address, tid } => {
                    if self.broken.load(Ordering::Relaxed) {
                        kill(tid as i32);
                        continue;
                    }
                    if let Outcome::Again = self.fault(space, &mut missing, address) {
                        pending.push((space.clone(), address));
                    }
                }
                Event::Fork { uffd } => {
                    let child = Space {
                        name: format!("a child of {}", space.name),
                        uffd,
                        missing: Mutex::new(missing.clone()),
                    };
                    self.spaces.lock().expect("not poisoned").push(Arc::new(child));
                }
                Event::Remap { from, to, len } => missing.remap(from, to, len),
                Event::Remove { start, end } | Event::Unmap { start, end } => {
                    missing.take(start..end);
                }
            }
        }
    }

    /// Answers a fault at `address`: its page's chunk (the run of its
    /// pages still missing around it), or the zero page.
    fn fault(&self, space: &Space, missing: &mut Missing, address: u64) -> Outcome {
        let page = address & !(PAGE - 1);
        if missing.run_at(page).is_some() {
            if let Outcome::Again = self.copy(space, missing, page, &self.on_fault) {
                return Outcome::Again;
            }
        } else if let Err(c) = space.uffd.zeropage(page..page + PAGE) {
            if c.errno == Errno::EAGAIN {
                return Outcome::Again;
            }
        }
        // A copy wakes the threads waiting on the page; this wakes them too
        // when it was present already or its mapping is gone (they retry,
        // and find it, or fault as the kernel says).
        let _ = space.uffd.wake(page..page + PAGE);
        Outcome::Done
    }

    /// Copies the run of missing pages `page` is in, counting them in
    /// `count`; each page copied, or found present or gone, leaves the
    /// table.
    fn copy(&self, space: &Space, missing: &mut Missing, page: u64, count: &AtomicU64) -> Outcome {
        let Some((start, run)) = missing.run_at(page) else { return Outcome::Done };
        let id = self.chunks[run.chunk as usize];
        let data = match self.image.read_chunk(&id) {
            Ok(d) => d,
            Err(e) => {
                self.damaged(format!("{}: page {page:#x}: {}", space.name, crate::chain(&e)));
                return Outcome::Done;
            }
        };
        // Offset in the chunk of the run's first page.
        let offset = u64::from(run.page) * PAGE;
        let end = start + run.len();
        if offset + run.len() > data.len() as u64 {
            self.fail(format!("{}: chunk {id} has no bytes for the pages at {start:#x}", space.name));
            missing.take(start..end);
            return Outcome::Done;
        }
        let mut at = start;
        while at < end {
            let bytes = &data[(offset + at - start) as usize..(offset + end - start) as usize];
            match space.uffd.copy(at, bytes) {
                Ok(n) => {
                    count.fetch_add(n, Ordering::Relaxed);
                    let n = n.max(PAGE);
                    missing.take(at..at + n);
                    at += n;
                }
                Err(c) if c.copied > 0 => {
                    count.fetch_add(c.copied, Ordering::Relaxed);
                    missing.take(at..at + c.copied);
                    at += c.copied;
                }
                Err(c) if c.errno == Errno::EAGAIN => return Outcome::Again,
                // The process is gone: nothing of it is missing any more.
                Err(c) if c.errno == Errno::ESRCH => {
                    missing.0.clear();
                    return Outcome::Done;
                }
                // A page present (EEXIST), or not in one registered mapping
                // (ENOENT: gone, or the run crosses into another): that
                // page on its own, then the rest.
                Err(c) if matches!(c.errno, Errno::EEXIST | Errno::ENOENT) => {
                    if bytes.len() as u64 > PAGE {
                        match space.uffd.copy(at, &bytes[..PAGE as usize]) {
                            Ok(n) => {
                                count.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(c) if c.errno == Errno::EAGAIN => return Outcome::Again,
                            Err(_) => {}
                        }
                    }
                    missing.take(at..at + PAGE);
                    at += PAGE;
                }
                Err(c) => {
                    self.fail(format!("{}: UFFDIO_COPY at {at:#x}: {}", space.name, c.errno));
                    missing.take(at..end);
                    return Outcome::Done;
                }
            }
        }
        Outcome::Done
    }

    /// A chunk could not be read or is not what its hash says: rather than
    /// let the tree run with memory that is not its own, every process of
    /// it is killed (and any thread faulting after), and loading stops.
    fn damaged(&self, what: String) {
        self.fail(format!("{what}; the restored tree was killed rather than left to run with wrong memory"));
        self.broken.store(true, Ordering::Relaxed);
        let tree = self.tree.lock().expect("not poisoned").clone();
        for pid in descendants(&tree) {
            kill(pid);
        }
    }

    /// Copies every missing page of every space (of forked children too)
    /// until none is left.
    fn copy_ahead(&self) {
        loop {
            let mut left = false;
            for space in self.spaces() {
                loop {
                    if self.broken.load(Ordering::Relaxed) {
                        return;
                    }
                    let mut missing = space.missing.lock().expect("not poisoned");
                    let Some(&page) = missing.0.keys().next() else { break };
                    left = true;
                    if let Outcome::Again = self.copy(&space, &mut missing, page, &self.ahead) {
                        // The fault thread reads the event; then the table
                        // is right again.
                        drop(missing);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            if !left {
                return;
            }
        }
    }
}

/// SIGKILL to the process of thread `tid`.
fn kill(tid: i32) {
    if tid > 0 {
        let _ = stasis_sys::nix::sys::signal::kill(
            stasis_sys::nix::unistd::Pid::from_raw(tid),
            stasis_sys::nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `roots` and every process descending from them now.
fn descendants(roots: &[i32]) -> Vec<i32> {
    let mut all = roots.to_vec();
    let mut k = 0;
    while k < all.len() {
        let children = crate::proc::children(stasis_sys::nix::unistd::Pid::from_raw(all[k])).unwrap_or_default();
        all.extend(children.iter().map(|c| c.as_raw()));
        k += 1;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunk: u32, page: u16, pages: u16) -> Run {
        Run { chunk, page, pages }
    }

    #[test]
    fn runs_split_move_and_go() {
        let mut m = Missing::default();
        m.0.insert(0x10000, run(0, 0, 16));
        m.0.insert(0x20000, run(1, 0, 16));
        assert_eq!(m.run_at(0x13000), Some((0x10000, run(0, 0, 16))));
        assert_eq!(m.run_at(0x30000), None);
        // Pages 2..4 of the first chunk dropped.
        assert_eq!(m.take(0x12000..0x14000), vec![(0x12000, run(0, 2, 2))]);
        assert_eq!(m.run_at(0x12000), None);
        assert_eq!(m.run_at(0x14000), Some((0x14000, run(0, 4, 12))));
        // The second half of the first chunk and the first page of the
        // second moved up by 1 MiB.
        m.remap(0x18000, 0x118000, 0x9000);
        assert_eq!(m.run_at(0x118000), Some((0x118000, run(0, 8, 8))));
        assert_eq!(m.run_at(0x120000), Some((0x120000, run(1, 0, 1))));
        assert_eq!(m.run_at(0x21000), Some((0x21000, run(1, 1, 15))));
        assert_eq!(m.run_at(0x17000), Some((0x14000, run(0, 4, 4))));
        let pages: u64 = m.0.values().map(|r| u64::from(r.pages)).sum();
        assert_eq!(pages, 32 - 2);
    }
}
