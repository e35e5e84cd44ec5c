//! userfaultfd(2): user-space handling of page faults, used by stasis for
//! write-protect dirty tracking (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7) and,
//! later, lazy restore (include/uapi/linux/userfaultfd.h,
//! Documentation/admin-guide/mm/userfaultfd.rst).
//!
//! With `WP_ASYNC` the kernel resolves write-protect faults itself by just
//! clearing the uffd-wp bit, so no thread has to read fault events and the
//! tracked process never blocks; PAGEMAP_SCAN then reports the pages whose
//! bit was cleared as `PAGE_IS_WRITTEN` ([`crate::pagemap`]).
//! `WP_UNPOPULATED` makes write-protecting a range also mark pages that were
//! never touched, so a first write to them counts as well.
//!
//! Creation: the userfaultfd syscall honours `vm.unprivileged_userfaultfd`
//! and otherwise needs CAP_SYS_PTRACE; /dev/userfaultfd (Linux 6.1) with
//! `USERFAULTFD_IOC_NEW` is the fallback when the syscall is filtered
//! (seccomp) but the device is accessible. The `UFFDIO_API` handshake may be
//! done once per descriptor; asking for a feature the kernel lacks fails with
//! EINVAL, so [`supported_features`] asks on a separate descriptor first.

use std::fs::OpenOptions;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `UFFD_API` of include/uapi/linux/userfaultfd.h.
const UFFD_API: u64 = 0xaa;

/// `UFFD_FEATURE_WP_UNPOPULATED` (Linux 6.4).
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC` (Linux 6.7).
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `UFFD_FEATURE_MOVE` (Linux 6.8).
pub const FEATURE_MOVE: u64 = 1 << 16;

/// `UFFD_FEATURE_EVENT_FORK`: a fork of a registered process hands the
/// reader a userfaultfd of the child ([`Event::Fork`]).
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
/// `UFFD_FEATURE_EVENT_REMAP`: mremap of a registered range is told.
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// `UFFD_FEATURE_EVENT_REMOVE`: MADV_DONTNEED/MADV_REMOVE is told.
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// `UFFD_FEATURE_EVENT_UNMAP`: munmap of a registered range is told.
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// `UFFD_FEATURE_THREAD_ID`: a page fault names the faulting thread.
pub const FEATURE_THREAD_ID: u64 = 1 << 8;

/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_REGISTER_MODE_MINOR`.
pub const REGISTER_MODE_MINOR: u64 = 1 << 2;

/// `UFFDIO_WRITEPROTECT_MODE_WP`.
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// `UFFD_USER_MODE_ONLY`: only faults from user mode are handled, which is
/// all an unprivileged caller may ask for.
pub const USER_MODE_ONLY: libc::c_int = 1;

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

nix::ioctl_readwrite!(uffdio_api, 0xaa, 0x3f, UffdioApi);
nix::ioctl_read!(uffdio_wake, 0xaa, 0x02, UffdioRange);
nix::ioctl_readwrite!(uffdio_copy, 0xaa, 0x03, UffdioCopy);
nix::ioctl_readwrite!(uffdio_zeropage, 0xaa, 0x04, UffdioZeropage);
nix::ioctl_readwrite!(uffdio_register, 0xaa, 0x00, UffdioRegister);
// The header declares UNREGISTER as _IOR although the kernel reads the range.
nix::ioctl_read!(uffdio_unregister, 0xaa, 0x01, UffdioRange);
nix::ioctl_readwrite!(uffdio_writeprotect, 0xaa, 0x06, UffdioWriteprotect);
nix::ioctl_write_int_bad!(userfaultfd_ioc_new, nix::request_code_none!(0xaa, 0x00));

/// Errors of userfaultfd operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither the syscall nor /dev/userfaultfd gave a descriptor.
    #[error("cannot create a userfaultfd (syscall: {syscall}; /dev/userfaultfd: {device})")]
    Create {
        /// What the userfaultfd syscall returned.
        syscall: Errno,
        /// What opening /dev/userfaultfd + USERFAULTFD_IOC_NEW returned.
        device: Errno,
    },
    /// UFFDIO_API failed; EINVAL means a requested feature is unsupported.
    #[error("UFFDIO_API handshake with features {features:#x} failed")]
    Api {
        /// The features asked for.
        features: u64,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// The kernel granted fewer features than requested.
    #[error("userfaultfd features {missing:#x} are not supported")]
    Unsupported {
        /// The requested features the kernel lacks.
        missing: u64,
    },
    /// UFFDIO_REGISTER failed.
    #[error("UFFDIO_REGISTER of {start:#x}..{end:#x} with mode {mode:#x} failed")]
    Register {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// The register mode.
        mode: u64,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// UFFDIO_UNREGISTER failed.
    #[error("UFFDIO_UNREGISTER of {start:#x}..{end:#x} failed")]
    Unregister {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
    /// Making a userfaultfd in another process (injected) or taking it from
    /// there failed.
    #[error("cannot make a userfaultfd in process {pid}: {what}")]
    InProcess {
        /// The process.
        pid: nix::unistd::Pid,
        /// What went wrong.
        what: String,
    },
    /// UFFDIO_WRITEPROTECT failed.
    #[error("UFFDIO_WRITEPROTECT (protect: {protect}) of {start:#x}..{end:#x} failed")]
    WriteProtect {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// Whether protecting (true) or unprotecting.
        protect: bool,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },
}

/// What a userfaultfd tells its reader (struct uffd_msg).
#[derive(Debug)]
pub enum Event {
    /// A thread faulted on a missing page at `address` and waits for it.
    Pagefault {
        /// The faulting address (not rounded to its page).
        address: u64,
        /// The faulting thread (with [`FEATURE_THREAD_ID`]; else 0).
        tid: u32,
    },
    /// The process forked: `uffd` is the child's (same features, same
    /// registered ranges, the same pages missing).
    Fork {
        /// The child's userfaultfd, now this process's.
        uffd: Userfaultfd,
    },
    /// `len` bytes moved from `from` to `to` (mremap).
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Bytes moved.
        len: u64,
    },
    /// The pages of `start..end` were dropped (MADV_DONTNEED, MADV_REMOVE):
    /// they read as zeros now.
    Remove {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
    },
    /// `start..end` was unmapped.
    Unmap {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
    },
}

/// A userfaultfd after a successful `UFFDIO_API` handshake; closing it (on
/// drop) unregisters every range it had registered.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    features: u64,
}

fn create(flags: libc::c_int) -> Result<OwnedFd, Error> {
    // SAFETY: the userfaultfd syscall takes one flags word by value.
    let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if ret >= 0 {
        // SAFETY: the syscall returned a new descriptor nobody else owns; fds
        // fit in c_int.
        return Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) });
    }
    let syscall = Errno::last();
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        .and_then(|dev| {
            // SAFETY: USERFAULTFD_IOC_NEW takes its flags as the ioctl
            // argument by value and returns a new descriptor.
            unsafe { userfaultfd_ioc_new(dev.as_raw_fd(), flags) }
        });
    match device {
        // SAFETY: the ioctl returned a new descriptor nobody else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(device) => Err(Error::Create { syscall, device }),
    }
}

fn handshake(fd: &OwnedFd, features: u64) -> Result<UffdioApi, Error> {
    let mut api = UffdioApi { api: UFFD_API, features, ioctls: 0 };
    // SAFETY: api is a valid uffdio_api the kernel reads and writes back,
    // and fd is a live userfaultfd.
    unsafe { uffdio_api(fd.as_raw_fd(), &mut api) }.map_err(|errno| Error::Api { features, errno })?;
    Ok(api)
}

/// The features this kernel offers, asked on a throwaway descriptor.
pub fn supported_features() -> Result<u64, Error> {
    let fd = create(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
    Ok(handshake(&fd, 0)?.features)
}

fn range_of(range: &Range<u64>) -> UffdioRange {
    UffdioRange { start: range.start, len: range.end.saturating_sub(range.start) }
}

impl Userfaultfd {
    /// Creates a non-blocking, close-on-exec userfaultfd and enables exactly
    /// `features`; fails with [`Error::Unsupported`] naming what is missing.
    pub fn new(features: u64) -> Result<Self, Error> {
        let available = supported_features()?;
        if features & !available != 0 {
            return Err(Error::Unsupported { missing: features & !available });
        }
        let fd = create(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
        let api = handshake(&fd, features)?;
        Ok(Userfaultfd { fd, features: api.features })
    }

    /// A userfaultfd of the address space of the stopped process `inj`
    /// runs in (a userfaultfd belongs to the memory of the process that
    /// made it): made there by an injected userfaultfd(2), taken with
    /// pidfd_getfd through `pidfd`, closed there again, and handshaken here
    /// with exactly `features`. Its ioctls then act on that process's
    /// mappings (UFFDIO_REGISTER takes the context's memory, not the
    /// caller's); dropping it unregisters them. Only user-mode faults are
    /// asked for (`UFFD_USER_MODE_ONLY`), which lets an unprivileged process
    /// have one whatever `vm.unprivileged_userfaultfd` says; the kernel
    /// resolves WP_ASYNC write faults, of user or kernel mode, by itself.
    pub fn in_process(
        inj: &mut crate::inject::Injection<'_>,
        pidfd: &crate::pidfd::PidFd,
        features: u64,
    ) -> Result<Self, Error> {
        Self::in_process_with(inj, pidfd, features, USER_MODE_ONLY)
    }

    /// [`Userfaultfd::in_process`] handling faults of kernel mode too
    /// (`user_mode_only` 0: a read(2) into a missing page waits for it
    /// instead of failing with EFAULT), which needs CAP_SYS_PTRACE of the
    /// process or `vm.unprivileged_userfaultfd`.
    pub fn in_process_with(
        inj: &mut crate::inject::Injection<'_>,
        pidfd: &crate::pidfd::PidFd,
        features: u64,
        user_mode_only: libc::c_int,
    ) -> Result<Self, Error> {
        let pid = inj.tid();
        let fail = |what: String| Error::InProcess { pid, what };
        let available = supported_features()?;
        if features & !available != 0 {
            return Err(Error::Unsupported { missing: features & !available });
        }
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK | user_mode_only) as u64;
        let there = inj
            .syscall_ok(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])
            .map_err(|e| fail(format!("userfaultfd: {e}")))?;
        let taken = pidfd.get_fd(there as RawFd).map_err(|e| fail(format!("pidfd_getfd: {e}")));
        inj.syscall_ok(libc::SYS_close, [there, 0, 0, 0, 0, 0]).map_err(|e| fail(format!("close: {e}")))?;
        let fd = taken?;
        let api = handshake(&fd, features)?;
        Ok(Userfaultfd { fd, features: api.features })
    }

    /// A userfaultfd handshaken before, with `features`, by whoever passed
    /// `fd` on (another process holding it, whose copy was taken with
    /// pidfd_getfd): a second `UFFDIO_API` would be refused. An `fd` that is
    /// no userfaultfd makes every later call fail; it is never unsafe.
    pub fn adopt(fd: OwnedFd, features: u64) -> Self {
        Userfaultfd { fd, features }
    }

    /// Another descriptor of the same userfaultfd (dup): the ranges stay
    /// registered while any of the two is open.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Userfaultfd { fd: self.fd.try_clone()?, features: self.features })
    }

    /// The features the handshake enabled.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Registers `range` (page-aligned, within this process's mappings)
    /// with `mode` (`REGISTER_MODE_*`); returns the ioctls now allowed on it.
    pub fn register(&self, range: Range<u64>, mode: u64) -> Result<u64, Error> {
        let mut reg = UffdioRegister { range: range_of(&range), mode, ioctls: 0 };
        // SAFETY: reg is a valid uffdio_register; the kernel validates the
        // range against our own VMAs and touches no Rust object.
        unsafe { uffdio_register(self.fd.as_raw_fd(), &mut reg) }.map_err(|errno| Error::Register {
            start: range.start,
            end: range.end,
            mode,
            errno,
        })?;
        Ok(reg.ioctls)
    }

    /// Unregisters `range`.
    pub fn unregister(&self, range: Range<u64>) -> Result<(), Error> {
        let mut r = range_of(&range);
        // SAFETY: r is a valid uffdio_range the kernel only reads.
        unsafe { uffdio_unregister(self.fd.as_raw_fd(), &mut r) }.map_err(|errno| Error::Unregister {
            start: range.start,
            end: range.end,
            errno,
        })?;
        Ok(())
    }

    /// Write-protects (`protect`) or unprotects `range`, which must be
    /// registered with `REGISTER_MODE_WP`.
    pub fn write_protect(&self, range: Range<u64>, protect: bool) -> Result<(), Error> {
        let mut wp =
            UffdioWriteprotect { range: range_of(&range), mode: if protect { WRITEPROTECT_MODE_WP } else { 0 } };
        // SAFETY: wp is a valid uffdio_writeprotect; the kernel changes page
        // table bits of our own registered range, which Rust code observes
        // only as (possibly resolved-by-kernel) write faults.
        unsafe { uffdio_writeprotect(self.fd.as_raw_fd(), &mut wp) }.map_err(|errno| Error::WriteProtect {
            start: range.start,
            end: range.end,
            protect,
            errno,
        })?;
        Ok(())
    }
}

impl Userfaultfd {
    /// Copies `data` into the registered missing pages at `dst` (page
    /// aligned, whole pages) and wakes the threads waiting on them; returns
    /// the bytes copied. EEXIST: a page there is present already (the
    /// bytes before it were copied: the count is in the error's place, see
    /// [`Copied`]); EAGAIN: the mappings are changing (an event is still
    /// to be read); ESRCH/ENOENT: the process or the mapping is gone.
    pub fn copy(&self, dst: u64, data: &[u8]) -> Result<u64, Copied> {
        let mut c = UffdioCopy { dst, src: data.as_ptr() as u64, len: data.len() as u64, mode: 0, copy: 0 };
        // SAFETY: c is a valid uffdio_copy; the kernel reads data.len()
        // bytes at src, which data holds, and writes back only c.copy.
        match unsafe { uffdio_copy(self.fd.as_raw_fd(), &mut c) } {
            Ok(_) => Ok(c.copy as u64),
            Err(errno) => Err(Copied { copied: c.copy.max(0) as u64, errno }),
        }
    }

    /// Maps the zero page at the registered missing pages of `range` and
    /// wakes the threads waiting on them.
    pub fn zeropage(&self, range: Range<u64>) -> Result<u64, Copied> {
        let mut z = UffdioZeropage { range: range_of(&range), mode: 0, zeropage: 0 };
        // SAFETY: z is a valid uffdio_zeropage the kernel reads and writes
        // back.
        match unsafe { uffdio_zeropage(self.fd.as_raw_fd(), &mut z) } {
            Ok(_) => Ok(z.zeropage as u64),
            Err(errno) => Err(Copied { copied: z.zeropage.max(0) as u64, errno }),
        }
    }

    /// Wakes the threads waiting on pages of `range` (present by now).
    pub fn wake(&self, range: Range<u64>) -> Result<(), Errno> {
        let mut r = range_of(&range);
        // SAFETY: r is a valid uffdio_range the kernel only reads.
        unsafe { uffdio_wake(self.fd.as_raw_fd(), &mut r) }.map(drop)
    }

    /// The events waiting to be read, without blocking (none: an empty
    /// list). Reading an event of the mappings changing (fork, remap,
    /// remove, unmap) lets the process go on past it.
    pub fn read_events(&self) -> Result<Vec<Event>, Errno> {
        const MSG: usize = 32;
        let mut buf = [0u8; MSG * 16];
        let n = match nix::unistd::read(&self.fd, &mut buf) {
            Ok(n) => n,
            Err(Errno::EAGAIN) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let u64_at = |m: &[u8], at: usize| u64::from_ne_bytes(m[at..at + 8].try_into().expect("8 bytes"));
        let mut events = Vec::new();
        for m in buf[..n].chunks_exact(MSG) {
            // struct uffd_msg: event (u8), 7 reserved bytes, then the arg union.
            events.push(match m[0] {
                0x12 => Event::Pagefault {
                    address: u64_at(m, 16),
                    tid: u32::from_ne_bytes(m[24..28].try_into().expect("4 bytes")),
                },
                0x13 => {
                    let fd = u32::from_ne_bytes(m[8..12].try_into().expect("4 bytes")) as RawFd;
                    // SAFETY: the kernel installed this descriptor in our
                    // table for the reader; nobody else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    Event::Fork { uffd: Userfaultfd { fd, features: self.features } }
                }
                0x14 => Event::Remap { from: u64_at(m, 8), to: u64_at(m, 16), len: u64_at(m, 24) },
                0x15 => Event::Remove { start: u64_at(m, 8), end: u64_at(m, 16) },
                0x16 => Event::Unmap { start: u64_at(m, 8), end: u64_at(m, 16) },
                _ => continue,
            });
        }
        Ok(events)
    }
}

/// A [`Userfaultfd::copy`] or [`Userfaultfd::zeropage`] that stopped
/// short: what it did, and why it stopped.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    /// Bytes done before it stopped.
    pub copied: u64,
    /// Why it stopped.
    pub errno: Errno,
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mman::{page_size, AnonMapping};
    use crate::pagemap::{Categories, Pagemap, ScanRequest, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING};

    fn written(pm: &Pagemap, map: &AnonMapping, flags: u64) -> Vec<usize> {
        let regions = pm
            .scan(&ScanRequest {
                range: map.range(),
                flags,
                required: Categories::WRITTEN,
                any_of: Categories::NONE,
                inverted: Categories::NONE,
                report: Categories::WRITTEN,
            })
            .expect("PAGEMAP_SCAN");
        let p = page_size() as u64;
        regions
            .iter()
            .flat_map(|r| ((r.start - map.addr()) / p)..((r.end - map.addr()) / p))
            .map(|i| i as usize)
            .collect()
    }

    #[test]
    fn wp_async_tracks_exactly_the_written_pages() {
        let features = supported_features().expect("userfaultfd");
        assert!(features & FEATURE_WP_ASYNC != 0, "UFFD_FEATURE_WP_ASYNC missing (features {features:#x})");
        let mut map = AnonMapping::new(16).unwrap();
        let uffd = Userfaultfd::new(FEATURE_WP_ASYNC | FEATURE_WP_UNPOPULATED).expect("uffd");
        uffd.register(map.range(), REGISTER_MODE_WP).expect("register");
        uffd.write_protect(map.range(), true).expect("write-protect");
        for i in [2, 5, 11] {
            map.touch_page(i, 7);
        }
        let pm = Pagemap::open(nix::unistd::getpid()).unwrap();
        assert_eq!(written(&pm, &map, 0), [2, 5, 11]);
        // Report and re-protect at once, as a pre-copy round does.
        assert_eq!(written(&pm, &map, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC), [2, 5, 11]);
        assert_eq!(written(&pm, &map, 0), Vec::<usize>::new());
        map.touch_page(5, 8);
        assert_eq!(written(&pm, &map, 0), [5]);
        uffd.unregister(map.range()).expect("unregister");
    }

    /// Write-protecting with `WP_ASYNC` (which brings `WP_UNPOPULATED`)
    /// marks the pages never populated; pagemap tells those markers from
    /// pages with contents, and a page written or read since is no longer
    /// one.
    #[test]
    fn markers_are_the_pages_never_populated() {
        let mut map = AnonMapping::new(16).unwrap();
        for i in [0, 1] {
            map.touch_page(i, 3);
        }
        let uffd = Userfaultfd::new(FEATURE_WP_ASYNC).expect("uffd");
        uffd.register(map.range(), REGISTER_MODE_WP).expect("register");
        uffd.write_protect(map.range(), true).expect("write-protect");
        map.touch_page(5, 7);
        let p = page_size();
        assert_eq!(std::hint::black_box(map.as_slice()[7 * p]), 0);
        let pm = Pagemap::open(nix::unistd::getpid()).unwrap();
        let a = map.addr();
        let page = |i: u64| a + i * p as u64;
        let markers = pm.uffd_wp_markers(map.range()).expect("pagemap");
        assert_eq!(markers, [page(2)..page(5), page(6)..page(7), page(8)..page(16)]);
        // A swap entry that is no marker (a page swapped out) is not one.
        let entries = pm.entries(map.range()).unwrap();
        assert!(entries[0].present() && !entries[0].uffd_wp_marker());
        assert!(entries[3].swapped() && entries[3].uffd_wp() && entries[3].uffd_wp_marker());
        assert!(!crate::pagemap::PagemapEntry((1 << 62) | (1 << 57) | 3).uffd_wp_marker());
        uffd.unregister(map.range()).expect("unregister");
        assert_eq!(pm.uffd_wp_markers(map.range()).unwrap(), []);
    }

    /// A userfaultfd made in a child (by injection) tracks the child's
    /// writes: the pages it writes after being write-protected, and only
    /// those, show as written in its pagemap; the child keeps no fd of it,
    /// and dropping ours leaves its mapping unregistered.
    #[test]
    fn made_in_another_process_tracks_its_writes() {
        use crate::child::{spawn, ChildAction};
        use crate::inject::find_syscall_site;
        use crate::ptrace::{Options, Seized};
        use std::time::Duration;

        let map = AnonMapping::new(16).unwrap();
        let p = page_size() as u64;
        let mut child = spawn(ChildAction::Pause).expect("child");
        let pid = child.pid();
        let fds_before = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
        let mut seized =
            Seized::seize(pid, Options::PTRACE_O_TRACESYSGOOD | Options::PTRACE_O_EXITKILL).expect("seize");
        seized.interrupt(Duration::from_secs(10)).expect("interrupt");
        let pidfd = crate::pidfd::PidFd::open(pid).expect("pidfd");
        let site = find_syscall_site(pid).expect("syscall site");
        let mut inj = seized.begin_injection(site).expect("injection");
        let uffd = Userfaultfd::in_process(&mut inj, &pidfd, FEATURE_WP_ASYNC | FEATURE_WP_UNPOPULATED)
            .expect("userfaultfd in the child");
        uffd.register(map.range(), REGISTER_MODE_WP).expect("register the child's mapping");
        uffd.write_protect(map.range(), true).expect("write-protect");
        // The child writes (the kernel, for it: clock_gettime's result).
        for i in [3, 9] {
            let at = map.addr() + i * p + 64;
            inj.syscall_ok(libc::SYS_clock_gettime, [libc::CLOCK_MONOTONIC as u64, at, 0, 0, 0, 0])
                .expect("clock_gettime in the child");
        }
        inj.finish().expect("finish");
        let pm = Pagemap::open(pid).unwrap();
        assert_eq!(written(&pm, &map, 0), [3, 9]);
        assert_eq!(std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count(), fds_before);
        let registered = || {
            let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
            let start = format!("{:x}-", map.addr());
            let block = smaps.split_once(start.as_str()).expect("the mapping in smaps").1;
            let flags = block.lines().find(|l| l.starts_with("VmFlags:")).unwrap().to_string();
            flags.split_whitespace().any(|f| f == "uw")
        };
        assert!(registered(), "the child's mapping is not registered for WP");
        drop(uffd);
        assert!(!registered(), "the child's mapping is still registered after the userfaultfd was closed");
        drop(seized);
        child.kill_and_reap(Duration::from_secs(10)).expect("reap");
    }

    #[test]
    fn asking_for_an_unknown_feature_names_it() {
        let err = Userfaultfd::new(1 << 62).unwrap_err();
        assert!(matches!(err, Error::Unsupported { missing } if missing == 1 << 62));
    }
}
