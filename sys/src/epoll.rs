//! Registering files in an epoll instance under fd numbers of the caller's
//! choosing, which need not be free (or even below its fd limit's use) in
//! the caller: an epoll registration is keyed by its file and the number it
//! was added under, and the restore of an epoll passed in flight must add
//! each file under the number the process once had it at.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// One registration: `file` added under fd number `fd` with `events`
/// (EPOLLIN, EPOLLET, ...) and `data`.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub fd: i32,
    pub file: BorrowedFd<'a>,
    pub events: u32,
    pub data: u64,
}

/// Add each of `regs`, in order, to epoll `ep`, from a thread of the
/// caller's with an fd table of its own (unshare CLONE_FILES), where each
/// file is put at its number for the call and the caller's table is left
/// alone. An error names the index of the registration that failed.
pub fn add_at_numbers(ep: BorrowedFd<'_>, regs: &[Registration<'_>]) -> Result<(), (usize, Errno)> {
    let above = regs.iter().map(|r| r.fd).max().unwrap_or(0).saturating_add(1);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare takes flags only; CLONE_FILES gives this
                // thread a copy of the fd table, which it alone changes
                // below and which is closed with it when it ends.
                Errno::result(unsafe { libc::unshare(libc::CLONE_FILES) }).map_err(|e| (0, e))?;
                // Every fd used, moved above the numbers to fill first.
                let high = |fd: i32| -> Result<i32, Errno> {
                    // SAFETY: fcntl F_DUPFD_CLOEXEC takes integers only.
                    Errno::result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) })
                };
                let ep = high(ep.as_raw_fd()).map_err(|e| (0, e))?;
                let files: Vec<i32> = regs
                    .iter()
                    .enumerate()
                    .map(|(i, r)| high(r.file.as_raw_fd()).map_err(|e| (i, e)))
                    .collect::<Result<_, _>>()?;
                for (i, (r, &file)) in regs.iter().zip(&files).enumerate() {
                    // SAFETY: dup2 takes integers only; `r.fd` in this
                    // thread's own table may be replaced.
                    Errno::result(unsafe { libc::dup2(file, r.fd) }).map_err(|e| (i, e))?;
                    let mut ev = libc::epoll_event { events: r.events, u64: r.data };
                    // SAFETY: ev is a valid epoll_event for the call.
                    Errno::result(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, r.fd, &raw mut ev) })
                        .map_err(|e| (i, e))?;
                }
                Ok(())
            })
            .join()
            .unwrap_or(Err((0, Errno::EINTR)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    #[test]
    fn registered_under_the_numbers_given_and_the_table_untouched() {
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollTimeout};
        let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        // 900: a number nothing here has; the pipe's own, 0 below, too.
        let regs = [
            Registration { fd: 900, file: r.as_fd(), events: libc::EPOLLIN as u32, data: 7 },
            Registration { fd: r.as_raw_fd(), file: w.as_fd(), events: libc::EPOLLOUT as u32, data: 8 },
        ];
        add_at_numbers(ep.0.as_fd(), &regs).unwrap();
        // SAFETY: fd 900 is only asked about, never used as a file.
        let unused = unsafe { BorrowedFd::borrow_raw(900) };
        assert_eq!(nix::fcntl::fcntl(unused, nix::fcntl::FcntlArg::F_GETFD), Err(Errno::EBADF), "900 in our table");
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ep.0.as_raw_fd())).unwrap();
        assert!(info.contains("tfd:      900"), "{info}");
        nix::unistd::write(&w, b"x").unwrap();
        let mut events = [EpollEvent::empty(); 4];
        let n = ep.wait(&mut events, EpollTimeout::ZERO).unwrap();
        let mut got: Vec<u64> = events[..n].iter().map(|e| e.data()).collect();
        got.sort();
        assert_eq!(got, vec![7, 8]);
    }
}
