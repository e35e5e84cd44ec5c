//! /proc/PID/pagemap: per-page state of a process, entry by entry
//! (Documentation/admin-guide/mm/pagemap.rst) or range by range with the
//! `PAGEMAP_SCAN` ioctl (Linux 6.7, include/uapi/linux/fs.h,
//! fs/proc/task_mmu.c `do_pagemap_scan`).
//!
//! The dumper uses `PAGEMAP_SCAN` to find the pages worth copying in one
//! ioctl per many ranges instead of reading 8 bytes per page, and, with
//! userfaultfd's `UFFD_FEATURE_WP_ASYNC`, to find and re-protect the pages
//! written since the last pass (`PM_SCAN_WP_MATCHING`): the dirty tracking
//! that soft-dirty would give, on kernels built without it.
//!
//! Soft-dirty itself (Documentation/admin-guide/mm/soft-dirty.rst) is reset by
//! writing "4" to /proc/PID/clear_refs; the kernel accepts that write even
//! when built without `CONFIG_MEM_SOFT_DIRTY` and then simply never sets bit
//! 55, so only a written page shows whether it works.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::{BitOr, Range};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::unistd::Pid;

/// Errors of pagemap access.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /proc/PID/pagemap could not be opened.
    #[error("cannot open /proc/{pid}/pagemap")]
    Open {
        /// The process.
        pid: Pid,
        /// The open error.
        #[source]
        source: io::Error,
    },
    /// Reading entries failed.
    #[error("cannot read pagemap entries of process {pid} at {addr:#x}")]
    Read {
        /// The process.
        pid: Pid,
        /// The first virtual address.
        addr: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The PAGEMAP_SCAN ioctl failed (ENOTTY: kernel before 6.7; EINVAL: a
    /// flag or category this kernel does not know; EPERM: WP_MATCHING on
    /// memory not registered for userfaultfd async write-protect).
    #[error("PAGEMAP_SCAN of process {pid} over {start:#x}..{end:#x} failed")]
    Scan {
        /// The process.
        pid: Pid,
        /// Where this call started.
        start: u64,
        /// The end of the range.
        end: u64,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// The kernel reported no progress, which would loop forever.
    #[error("PAGEMAP_SCAN of process {pid} made no progress at {at:#x}")]
    NoProgress {
        /// The process.
        pid: Pid,
        /// Where the walk was stuck.
        at: u64,
    },
    /// Writing /proc/PID/clear_refs failed.
    #[error("cannot write {value:?} to /proc/{pid}/clear_refs")]
    ClearRefs {
        /// The process.
        pid: Pid,
        /// The value written.
        value: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// One 64-bit /proc/PID/pagemap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    /// Bit 63: the page is present in RAM.
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }
    /// Bit 62: the page is swapped out.
    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }
    /// Bit 61: file-backed page or shared anonymous page.
    pub fn file_or_shared(self) -> bool {
        self.0 & (1 << 61) != 0
    }
    /// Bit 57: write-protected by userfaultfd.
    pub fn uffd_wp(self) -> bool {
        self.0 & (1 << 57) != 0
    }
    /// Bit 56: mapped exclusively by this process.
    pub fn exclusive(self) -> bool {
        self.0 & (1 << 56) != 0
    }
    /// Bit 55: soft-dirty (written since the last clear_refs "4").
    pub fn soft_dirty(self) -> bool {
        self.0 & (1 << 55) != 0
    }
    /// Bits 0-54: the page frame number when present (zero without
    /// CAP_SYS_ADMIN).
    pub fn pfn(self) -> Option<u64> {
        self.present().then_some(self.0 & ((1 << 55) - 1))
    }
    /// A userfaultfd write-protect marker: a page never populated (or
    /// dropped) in a range write-protected with `WP_UNPOPULATED`, which
    /// holds nothing. It shows as a swap entry of the kernel's marker type
    /// (`SWP_PTE_MARKER`: the last of the 32 types, above any swap file's)
    /// with the uffd-wp bit. Telling it from a page really swapped out
    /// needs the swap type, which pagemap shows only to CAP_SYS_ADMIN:
    /// without it no entry counts as a marker.
    pub fn uffd_wp_marker(self) -> bool {
        const SWAP_TYPE_BITS: u64 = 5;
        const PTE_MARKER_TYPE: u64 = (1 << SWAP_TYPE_BITS) - 1;
        self.swapped() && self.uffd_wp() && self.0 & PTE_MARKER_TYPE == PTE_MARKER_TYPE
    }
}

/// PAGEMAP_SCAN page categories (`PAGE_IS_*` in include/uapi/linux/fs.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Categories(pub u64);

impl Categories {
    /// No category.
    pub const NONE: Categories = Categories(0);
    /// The VMA is registered for userfaultfd async write-protect.
    pub const WPALLOWED: Categories = Categories(1 << 0);
    /// Written since write-protected (not uffd-wp).
    pub const WRITTEN: Categories = Categories(1 << 1);
    /// File-backed.
    pub const FILE: Categories = Categories(1 << 2);
    /// Present in RAM.
    pub const PRESENT: Categories = Categories(1 << 3);
    /// Swapped out.
    pub const SWAPPED: Categories = Categories(1 << 4);
    /// The shared zero page.
    pub const PFNZERO: Categories = Categories(1 << 5);
    /// Part of a huge page.
    pub const HUGE: Categories = Categories(1 << 6);
    /// Soft-dirty (always clear without CONFIG_MEM_SOFT_DIRTY).
    pub const SOFT_DIRTY: Categories = Categories(1 << 7);
    /// A guard region (MADV_GUARD_INSTALL; reported since Linux 6.14).
    pub const GUARD: Categories = Categories(1 << 8);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Categories) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Categories {
    type Output = Categories;
    fn bitor(self, rhs: Categories) -> Categories {
        Categories(self.0 | rhs.0)
    }
}

/// `PM_SCAN_WP_MATCHING`: write-protect the matching pages as they are
/// reported (atomically per page table).
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail unless every VMA walked is registered for
/// async write-protect.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// What to look for: a page matches when
/// `(categories ^ inverted) & required == required` and, if `any_of` is not
/// empty, `(categories ^ inverted) & any_of != 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRequest {
    /// The virtual address range of the target to walk.
    pub range: Range<u64>,
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// Categories that must all be set (after inversion).
    pub required: Categories,
    /// Categories of which at least one must be set (after inversion).
    pub any_of: Categories,
    /// Categories tested for being clear instead of set.
    pub inverted: Categories,
    /// Categories reported for each region; adjacent pages merge into one
    /// region when these agree.
    pub report: Categories,
}

/// A run of pages with the same reported categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRegion {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The reported categories of these pages.
    pub categories: Categories,
}

/// `struct page_region` of include/uapi/linux/fs.h.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RawPageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` of include/uapi/linux/fs.h.
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

nix::ioctl_readwrite!(pagemap_scan_ioctl, b'f', 16, PmScanArg);

/// Regions fetched per ioctl; the walk resumes at `walk_end` when full.
const REGIONS_PER_CALL: usize = 512;

/// An open /proc/PID/pagemap.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    pid: Pid,
}

impl Pagemap {
    /// Opens /proc/PID/pagemap (needs `PTRACE_MODE_READ` over the target).
    pub fn open(pid: Pid) -> Result<Self, Error> {
        let file = File::open(format!("/proc/{pid}/pagemap")).map_err(|source| Error::Open { pid, source })?;
        Ok(Pagemap { file, pid })
    }

    /// The entries of the pages covering `range`, one per page.
    pub fn entries(&self, range: Range<u64>) -> Result<Vec<PagemapEntry>, Error> {
        let page = crate::mman::page_size() as u64;
        let first = range.start / page;
        let last = range.end.div_ceil(page);
        let count = last.saturating_sub(first) as usize;
        let mut raw = vec![0u8; count * 8];
        self.file.read_exact_at(&mut raw, first * 8).map_err(|source| Error::Read {
            pid: self.pid,
            addr: range.start,
            source,
        })?;
        Ok(raw
            .chunks_exact(8)
            .map(|b| {
                let mut word = [0u8; 8];
                word.copy_from_slice(b);
                PagemapEntry(u64::from_ne_bytes(word))
            })
            .collect())
    }

    /// The runs of pages of `range` that are userfaultfd write-protect
    /// markers ([`PagemapEntry::uffd_wp_marker`]), in address order.
    /// Reads the entries in parts, so memory stays bounded however large
    /// the range.
    pub fn uffd_wp_markers(&self, range: Range<u64>) -> Result<Vec<Range<u64>>, Error> {
        let page = crate::mman::page_size() as u64;
        let mut out: Vec<Range<u64>> = Vec::new();
        self.each_entry(range, |start, entry| {
            if entry.uffd_wp_marker() {
                match out.last_mut() {
                    Some(last) if last.end == start => last.end = start + page,
                    _ => out.push(start..start + page),
                }
            }
        })?;
        Ok(out)
    }

    /// Hands `f` the address and entry of each page of `range`, reading
    /// the entries in parts so memory stays bounded however large it is.
    fn each_entry(&self, range: Range<u64>, mut f: impl FnMut(u64, PagemapEntry)) -> Result<(), Error> {
        const ENTRIES_PER_READ: u64 = 64 * 1024;
        let page = crate::mman::page_size() as u64;
        let mut at = range.start / page * page;
        while at < range.end {
            let end = (at + ENTRIES_PER_READ * page).min(range.end);
            for (i, entry) in self.entries(at..end)?.into_iter().enumerate() {
                f(at + i as u64 * page, entry);
            }
            at = end.div_ceil(page) * page;
        }
        Ok(())
    }

    /// The entry of the page holding `addr`.
    pub fn entry(&self, addr: u64) -> Result<PagemapEntry, Error> {
        Ok(self.entries(addr..addr + 1)?[0])
    }

    /// Walks all of `req.range` and returns the matching regions in address
    /// order, adjacent equal regions merged: with PAGEMAP_SCAN, or, on a
    /// kernel without it (before 6.7: ENOTTY), by reading the entries
    /// ([`Pagemap::scan_entries`]) when the request needs nothing only the
    /// ioctl can do.
    pub fn scan(&self, req: &ScanRequest) -> Result<Vec<PageRegion>, Error> {
        static NO_IOCTL: AtomicBool = AtomicBool::new(false);
        if NO_IOCTL.load(Ordering::Relaxed) && emulable(req) {
            return self.scan_entries(req);
        }
        match self.scan_ioctl(req) {
            Err(Error::Scan { errno: Errno::ENOTTY, .. }) if emulable(req) => {
                NO_IOCTL.store(true, Ordering::Relaxed);
                self.scan_entries(req)
            }
            other => other,
        }
    }

    /// [`Pagemap::scan`] without the ioctl: reads the entries of
    /// `req.range` (in pieces, so memory stays bounded) and derives the
    /// categories PRESENT (bit 63), SWAPPED (62), FILE (61), SOFT_DIRTY (55)
    /// and PFNZERO (the page frame is the shared zero page's, which needs
    /// CAP_SYS_ADMIN to see; without it no page counts as the zero page).
    /// Unlike the ioctl it does not skip the holes between mappings (they
    /// read as entries with no category): callers walk one mapping at a
    /// time. Refuses (ENOTTY) a request for categories or flags only the
    /// ioctl knows (WPALLOWED, WRITTEN, HUGE, write-protection).
    pub fn scan_entries(&self, req: &ScanRequest) -> Result<Vec<PageRegion>, Error> {
        if !emulable(req) {
            return Err(Error::Scan {
                pid: self.pid,
                start: req.range.start,
                end: req.range.end,
                errno: Errno::ENOTTY,
            });
        }
        let page = crate::mman::page_size() as u64;
        let zero = zero_pfn();
        let mut out: Vec<PageRegion> = Vec::new();
        self.each_entry(req.range.clone(), |start, entry| {
            let mut cat = 0;
            for (set, c) in [
                (entry.present(), Categories::PRESENT),
                (entry.swapped(), Categories::SWAPPED),
                (entry.file_or_shared(), Categories::FILE),
                (entry.soft_dirty(), Categories::SOFT_DIRTY),
                (zero.is_some() && entry.pfn() == zero, Categories::PFNZERO),
            ] {
                if set {
                    cat |= c.0;
                }
            }
            let seen = cat ^ req.inverted.0;
            if seen & req.required.0 != req.required.0 || (req.any_of.0 != 0 && seen & req.any_of.0 == 0) {
                return;
            }
            let region = PageRegion { start, end: start + page, categories: Categories(cat & req.report.0) };
            match out.last_mut() {
                Some(last) if last.end == region.start && last.categories == region.categories => last.end = region.end,
                _ => out.push(region),
            }
        })?;
        Ok(out)
    }

    /// The PAGEMAP_SCAN walk.
    fn scan_ioctl(&self, req: &ScanRequest) -> Result<Vec<PageRegion>, Error> {
        let mut out: Vec<PageRegion> = Vec::new();
        let mut buf = vec![RawPageRegion::default(); REGIONS_PER_CALL];
        let mut start = req.range.start;
        while start < req.range.end {
            let mut arg = PmScanArg {
                size: size_of::<PmScanArg>() as u64,
                flags: req.flags,
                start,
                end: req.range.end,
                walk_end: 0,
                vec: buf.as_mut_ptr() as u64,
                vec_len: buf.len() as u64,
                max_pages: 0,
                category_inverted: req.inverted.0,
                category_mask: req.required.0,
                category_anyof_mask: req.any_of.0,
                return_mask: req.report.0,
            };
            // SAFETY: arg is a pm_scan_arg of the size it declares; vec and
            // vec_len describe `buf`, which is writable and outlives the
            // call; the kernel writes at most vec_len regions into it.
            let filled = unsafe { pagemap_scan_ioctl(self.file.as_raw_fd(), &mut arg) }
                .map_err(|errno| Error::Scan { pid: self.pid, start, end: req.range.end, errno })?;
            for raw in &buf[..(filled as usize).min(buf.len())] {
                let region = PageRegion { start: raw.start, end: raw.end, categories: Categories(raw.categories) };
                match out.last_mut() {
                    Some(last) if last.end == region.start && last.categories == region.categories => {
                        last.end = region.end
                    }
                    _ => out.push(region),
                }
            }
            if arg.walk_end <= start {
                return Err(Error::NoProgress { pid: self.pid, at: start });
            }
            start = arg.walk_end;
        }
        Ok(out)
    }
}

/// Whether [`Pagemap::scan_entries`] can answer `req`.
fn emulable(req: &ScanRequest) -> bool {
    let known =
        Categories::PRESENT | Categories::SWAPPED | Categories::FILE | Categories::SOFT_DIRTY | Categories::PFNZERO;
    let asked = req.required.0 | req.any_of.0 | req.inverted.0 | req.report.0;
    req.flags == 0 && asked & !known.0 == 0
}

/// The page frame number of the shared zero page, found once by reading a
/// fresh anonymous page (the kernel maps the zero page for the read) and
/// looking at this process's own pagemap entry. `None` when frame numbers
/// are hidden (no CAP_SYS_ADMIN) or the read did not map it.
fn zero_pfn() -> Option<u64> {
    static ZERO: OnceLock<Option<u64>> = OnceLock::new();
    *ZERO.get_or_init(|| {
        let map = crate::mman::AnonMapping::new(1).ok()?;
        // The load (kept by black_box) is what maps the zero page.
        std::hint::black_box(std::hint::black_box(map.as_slice())[0]);
        let pfn = Pagemap::open(nix::unistd::getpid()).ok()?.entry(map.addr()).ok()?.pfn()?;
        (pfn != 0).then_some(pfn)
    })
}

/// Writes `value` to /proc/PID/clear_refs: "4" clears the soft-dirty bits
/// (and write-protects the pages so the next write sets them again).
pub fn clear_refs(pid: Pid, value: &'static str) -> Result<(), Error> {
    OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/clear_refs"))
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| Error::ClearRefs { pid, value, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mman::{page_size, AnonMapping};

    #[test]
    fn entries_show_touched_pages_present() {
        let mut map = AnonMapping::new(4).unwrap();
        map.touch_page(1, 1);
        map.touch_page(3, 1);
        let pm = Pagemap::open(nix::unistd::getpid()).unwrap();
        let present: Vec<bool> = pm.entries(map.range()).unwrap().iter().map(|e| e.present()).collect();
        assert_eq!(present, [false, true, false, true]);
        assert!(pm.entry(map.addr() + page_size() as u64).unwrap().exclusive());
    }

    #[test]
    fn scan_reports_present_regions() {
        let mut map = AnonMapping::new(8).unwrap();
        for i in [0, 1, 2, 6] {
            map.touch_page(i, 1);
        }
        let pm = Pagemap::open(nix::unistd::getpid()).unwrap();
        let regions = pm
            .scan(&ScanRequest {
                range: map.range(),
                flags: 0,
                required: Categories::PRESENT,
                any_of: Categories::NONE,
                inverted: Categories::NONE,
                report: Categories::PRESENT,
            })
            .expect("PAGEMAP_SCAN (Linux 6.7+) failed");
        let p = page_size() as u64;
        let a = map.addr();
        assert_eq!(
            regions,
            [
                PageRegion { start: a, end: a + 3 * p, categories: Categories::PRESENT },
                PageRegion { start: a + 6 * p, end: a + 7 * p, categories: Categories::PRESENT },
            ]
        );
    }

    /// The requests the dumper makes (checkpoint/src/dump/memory.rs),
    /// answered alike by the ioctl and by reading entries.
    #[test]
    fn entries_answer_as_the_ioctl_does() {
        let mut private = AnonMapping::new(16).unwrap();
        for i in [0, 1, 2, 9, 15] {
            private.touch_page(i, 7);
        }
        // Reads map the shared zero page.
        for i in [4, 5, 10] {
            std::hint::black_box(std::hint::black_box(private.as_slice())[i * page_size()]);
        }
        let mut shared = AnonMapping::shared(6).unwrap();
        shared.touch_page(1, 3);
        shared.touch_page(2, 3);
        let pm = Pagemap::open(nix::unistd::getpid()).unwrap();
        let all = |range| ScanRequest {
            range,
            flags: 0,
            required: Categories::PFNZERO,
            any_of: Categories::PRESENT | Categories::SWAPPED,
            inverted: Categories::PFNZERO,
            report: Categories::PRESENT,
        };
        let anonymous = |range| ScanRequest {
            required: Categories::PFNZERO | Categories::FILE,
            inverted: Categories::PFNZERO | Categories::FILE,
            ..all(range)
        };
        let everything = |range| ScanRequest {
            required: Categories::NONE,
            any_of: Categories::NONE,
            inverted: Categories::NONE,
            report: Categories::PRESENT | Categories::FILE | Categories::PFNZERO | Categories::SWAPPED,
            ..all(range)
        };
        let p = page_size() as u64;
        let a = private.addr();
        let via_entries = pm.scan_entries(&all(private.range())).unwrap();
        assert_eq!(
            via_entries,
            [
                PageRegion { start: a, end: a + 3 * p, categories: Categories::PRESENT },
                PageRegion { start: a + 9 * p, end: a + 10 * p, categories: Categories::PRESENT },
                PageRegion { start: a + 15 * p, end: a + 16 * p, categories: Categories::PRESENT },
            ],
            "the zero pages read are not stored"
        );
        for req in [
            all(private.range()),
            anonymous(private.range()),
            everything(private.range()),
            all(shared.range()),
            anonymous(shared.range()),
            everything(shared.range()),
        ] {
            let ioctl = pm.scan_ioctl(&req).expect("PAGEMAP_SCAN (Linux 6.7+) failed");
            assert_eq!(pm.scan_entries(&req).unwrap(), ioctl, "{req:?}");
        }
        assert!(pm.scan_entries(&anonymous(shared.range())).unwrap().is_empty(), "shared memory counts as a file");
        let wp = ScanRequest { flags: PM_SCAN_WP_MATCHING, ..all(private.range()) };
        assert!(matches!(pm.scan_entries(&wp), Err(Error::Scan { errno: Errno::ENOTTY, .. })));
    }

    #[test]
    fn scan_walks_past_a_full_buffer() {
        // Every other page present: more regions than one ioctl returns.
        let pages = REGIONS_PER_CALL * 2 + 10;
        let mut map = AnonMapping::new(pages * 2).unwrap();
        for i in 0..pages {
            map.touch_page(i * 2, 1);
        }
        let pm = Pagemap::open(nix::unistd::getpid()).unwrap();
        let regions = pm
            .scan(&ScanRequest {
                range: map.range(),
                flags: 0,
                required: Categories::PRESENT,
                any_of: Categories::NONE,
                inverted: Categories::NONE,
                report: Categories::PRESENT,
            })
            .unwrap();
        assert_eq!(regions.len(), pages);
    }
}
