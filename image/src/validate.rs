//! Validation of the process records: every count, size, number and
//! reference in them, so that restore can use them without re-checking.
//! An image is untrusted input; these checks turn a hostile or damaged
//! record into an error naming it, before any process is created.

use std::collections::{HashMap, HashSet};

use crate::records::{fd, FileRef, InetSocket, ProcessTree, UnixSocket, VmaKind};
use crate::PAGE_SIZE;

/// The kernel's highest possible pid (PID_MAX_LIMIT on 64-bit).
pub const MAX_PID: i32 = 4 * 1024 * 1024;
/// More processes than any tree we restore; bounds the work of a check.
pub const MAX_PROCESSES: usize = 1 << 16;
/// Larger than any x86 XSAVE area (AVX-512 with AMX is under 12 KiB).
pub const MAX_XSTATE: usize = 64 * 1024;
/// PATH_MAX.
pub const MAX_PATH: usize = 4096;
/// Pipe capacities beyond this need a sysctl no sane host sets.
pub const MAX_PIPE: u32 = 64 << 20;
/// `struct user_regs_struct` on x86_64.
pub const GPREGS_LEN: usize = 27 * 8;
/// `siginfo_t`.
pub const SIGINFO_LEN: usize = 128;
/// Highest user address with 5-level paging.
const MAX_ADDRESS: u64 = 1 << 57;

pub(crate) fn validate_processes(tree: &ProcessTree) -> Result<(), String> {
    if tree.processes.len() > MAX_PROCESSES {
        return Err(format!("{} processes is more than {MAX_PROCESSES}", tree.processes.len()));
    }
    let mut pipes = HashSet::new();
    for p in &tree.pipes {
        if !pipes.insert(p.id) {
            return Err(format!("pipe {} appears twice", p.id));
        }
        if p.capacity > MAX_PIPE || p.data.len() > p.capacity as usize {
            return Err(format!("pipe {} holds {} bytes in a capacity of {}", p.id, p.data.len(), p.capacity));
        }
        if crate::records::PipeEnds::try_from(p.ends).is_err() {
            return Err(format!("pipe {} has unknown ends {}", p.id, p.ends));
        }
    }
    let mut ptys = HashSet::new();
    for t in &tree.ptys {
        if !ptys.insert(t.index) {
            return Err(format!("pseudo-terminal {} appears twice", t.index));
        }
        if !t.termios.is_empty() && t.termios.len() != 44 {
            return Err(format!("pseudo-terminal {}: termios of {} bytes", t.index, t.termios.len()));
        }
        if !t.winsize.is_empty() && (t.winsize.len() != 4 || t.winsize.iter().any(|v| *v > u32::from(u16::MAX))) {
            return Err(format!("pseudo-terminal {}: malformed window size", t.index));
        }
        if t.to_master.len() > MAX_PIPE as usize || t.to_slave.len() > MAX_PIPE as usize {
            return Err(format!("pseudo-terminal {}: too many queued bytes", t.index));
        }
    }
    let mut unix = HashSet::new();
    for u in &tree.unix_sockets {
        check_unix(u)?;
        if !unix.insert(u.id) {
            return Err(format!("unix socket {} appears twice", u.id));
        }
    }
    if let Some(u) = tree.unix_sockets.iter().find(|u| u.peer != 0 && !unix.contains(&u.peer)) {
        return Err(format!("unix socket {} is connected to unknown socket {}", u.id, u.peer));
    }
    let mut ids = HashSet::new();
    for p in &tree.processes {
        let at = |what: String| format!("process {}: {what}", p.pid);
        if !(1..=MAX_PID).contains(&p.pid) || !ids.insert(p.pid) {
            return Err(at("pid is out of range or repeated".into()));
        }
        if p.threads.is_empty() || p.threads[0].tid != p.pid {
            return Err(at("the main thread must come first".into()));
        }
        for t in &p.threads {
            if !(1..=MAX_PID).contains(&t.tid) || (t.tid != p.pid && !ids.insert(t.tid)) {
                return Err(at(format!("thread id {} is out of range or repeated", t.tid)));
            }
            if t.gpregs.len() != GPREGS_LEN {
                return Err(at(format!(
                    "thread {} has {} bytes of registers, not {GPREGS_LEN}",
                    t.tid,
                    t.gpregs.len()
                )));
            }
            if t.xstate.len() > MAX_XSTATE || t.xstate.len() < 576 {
                return Err(at(format!("thread {} has an xstate of {} bytes", t.tid, t.xstate.len())));
            }
            if t.pending.iter().any(|s| s.raw.len() != SIGINFO_LEN) {
                return Err(at(format!("thread {} has a malformed pending signal", t.tid)));
            }
            check_str(&t.comm, 16).map_err(|e| at(format!("thread {} name {e}", t.tid)))?;
            // BPF_MAXINSNS instructions of 8 bytes at most.
            if t.seccomp.iter().any(|f| f.program.is_empty() || f.program.len() % 8 != 0 || f.program.len() > 4096 * 8)
            {
                return Err(at(format!("thread {} has a malformed seccomp filter", t.tid)));
            }
        }
        if p.shared_pending.iter().any(|s| s.raw.len() != SIGINFO_LEN) {
            return Err(at("malformed pending signal".into()));
        }
        if p.sigactions.iter().any(|a| !(1..=64).contains(&a.signal)) {
            return Err(at("signal action for a signal outside 1..=64".into()));
        }
        let mut end = 0;
        for v in &p.vmas {
            let ok = v.start % PAGE_SIZE == 0 && v.end % PAGE_SIZE == 0 && v.start < v.end && v.end <= MAX_ADDRESS;
            if !ok || v.start < end {
                return Err(at(format!("mapping {:#x}-{:#x} is malformed or out of order", v.start, v.end)));
            }
            end = v.end;
            if VmaKind::try_from(v.kind).is_err() {
                return Err(at(format!("mapping {:#x}-{:#x} has unknown kind {}", v.start, v.end, v.kind)));
            }
            if let Some(f) = &v.file {
                check_file(f).map_err(|e| at(format!("mapping {:#x}: {e}", v.start)))?;
            }
        }
        let mut fds = HashSet::new();
        for f in &p.fds {
            if !(0..1 << 20).contains(&f.fd) || !fds.insert(f.fd) {
                return Err(at(format!("fd {} is out of range or repeated", f.fd)));
            }
            check_fd(f, &p.fds, &pipes, &unix, tree).map_err(|e| at(format!("fd {}: {e}", f.fd)))?;
        }
        check_str(&p.cwd, MAX_PATH).map_err(|e| at(format!("cwd {e}")))?;
        check_str(&p.root, MAX_PATH).map_err(|e| at(format!("root {e}")))?;
        if let Some(exe) = &p.exe {
            check_file(exe).map_err(|e| at(format!("exe: {e}")))?;
        }
        if p.mm_fields.as_ref().is_some_and(|m| m.auxv.len() > 1024) {
            return Err(at("auxiliary vector is too long".into()));
        }
    }
    for u in &tree.unix_sockets {
        for m in &u.passed {
            let at = |what: String| format!("unix socket {}: message {}: {what}", u.id, m.message);
            if m.message as usize >= u.queue.len() || m.fds.is_empty() || m.fds.len() > MAX_PASSED_FDS {
                return Err(at("malformed passed fds".into()));
            }
            for (i, f) in m.fds.iter().enumerate() {
                if f.fd != i as i32 || f.same_as.is_some() {
                    return Err(at(format!("passed fd {} is out of place", f.fd)));
                }
                if let Some(r) = &f.shared_with {
                    let holder = tree.processes.iter().find(|p| p.pid == r.pid);
                    if !holder.is_some_and(|p| p.fds.iter().any(|g| g.fd == r.fd)) {
                        return Err(at(format!(
                            "passed fd {i} shares fd {} of process {}, which is not in the image",
                            r.fd, r.pid
                        )));
                    }
                    continue;
                }
                // One passed before it, which restore makes first.
                if let Some(r) = &f.in_flight_as {
                    let earlier = tree.unix_sockets.iter().find(|s| s.id == r.socket).and_then(|s| {
                        s.passed.iter().find(|p| p.message == r.message).map(|p| p.fds.len() > r.index as usize)
                    });
                    let before = (r.socket, r.message) != (u.id, m.message) || (r.index as usize) < i;
                    if earlier != Some(true) || !before {
                        return Err(at(format!("passed fd {i} is one passed before that is not in the image")));
                    }
                }
                check_fd(f, &m.fds, &pipes, &unix, tree).map_err(|e| at(format!("passed fd {i}: {e}")))?;
            }
        }
    }
    validate_tree(tree)
}

/// One fd record: what it names exists, its fields are in range. `fds` are
/// the fds it sits among (an epoll's targets must be one of them).
fn check_fd(
    f: &crate::records::Fd,
    fds: &[crate::records::Fd],
    pipes: &HashSet<u64>,
    unix: &HashSet<u64>,
    tree: &ProcessTree,
) -> Result<(), String> {
    if f.filter.len() > 4096 {
        return Err(format!("a socket filter of {} instructions", f.filter.len()));
    }
    match &f.kind {
        None => return Err("has no kind".into()),
        Some(fd::Kind::File(file)) => check_file(file)?,
        Some(fd::Kind::Pipe(id)) if !pipes.contains(id) => return Err(format!("names unknown pipe {id}")),
        Some(fd::Kind::Pipe(_)) => {}
        Some(fd::Kind::Fifo(fifo)) => {
            if !pipes.contains(&fifo.pipe) {
                return Err(format!("names unknown pipe {}", fifo.pipe));
            }
            check_file(fifo.file.as_ref().ok_or_else(|| "FIFO without a path".to_string())?)?;
        }
        Some(fd::Kind::Device(d)) => check_str(&d.path, MAX_PATH)?,
        Some(fd::Kind::Tty(t)) => check_str(&t.path, MAX_PATH)?,
        Some(fd::Kind::PtyMaster(n)) | Some(fd::Kind::PtySlave(n)) if !tree.ptys.iter().any(|t| t.index == *n) => {
            return Err(format!("names unknown pseudo-terminal {n}"));
        }
        Some(fd::Kind::PtyMaster(_)) | Some(fd::Kind::PtySlave(_)) => {}
        Some(fd::Kind::Eventfd(_)) | Some(fd::Kind::Timerfd(_)) | Some(fd::Kind::Signalfd(_)) => {}
        Some(fd::Kind::Pidfd(pf)) if !(1..=MAX_PID).contains(&pf.pid) && pf.pid != -1 => {
            return Err(format!("pidfd names pid {}", pf.pid));
        }
        Some(fd::Kind::Pidfd(_)) => {}
        Some(fd::Kind::Memfd(id)) if !tree.shmem.iter().any(|m| m.id == *id && m.memfd) => {
            return Err(format!("names unknown memfd {id}"));
        }
        Some(fd::Kind::Memfd(_)) => {}
        Some(fd::Kind::Unix(id)) if !unix.contains(id) => {
            return Err(format!("names unknown unix socket {id}"));
        }
        Some(fd::Kind::Unix(_)) => {}
        // Made again from its fields alone; every value is one a socket may have.
        Some(fd::Kind::Netlink(_)) | Some(fd::Kind::Packet(_)) => {}
        Some(fd::Kind::Inotify(n)) => {
            for w in &n.watches {
                if w.wd <= 0 {
                    return Err(format!("inotify watch descriptor {}", w.wd));
                }
                check_str(&w.path, MAX_PATH)?;
                if let Some(f) = &w.deleted {
                    check_file(f)?;
                }
            }
        }
        Some(fd::Kind::Fanotify(n)) => {
            for m in &n.marks {
                check_str(&m.path, MAX_PATH)?;
            }
        }
        Some(fd::Kind::ProcEntry(e)) => {
            check_str(&e.path, MAX_PATH)?;
            // Opened under /proc/PID at restore: nothing may lead out of it.
            if e.pid <= 0 || e.path.starts_with('/') || e.path.split('/').any(|c| c == "..") {
                return Err(format!("/proc entry {} {:?}", e.pid, e.path));
            }
        }
        Some(fd::Kind::TcpListen(s)) | Some(fd::Kind::Udp(s)) | Some(fd::Kind::TcpUnconnected(s)) => check_inet(s)?,
        Some(fd::Kind::Tcp(c)) => {
            let s = c.socket.as_ref().ok_or_else(|| "TCP connection without addresses".to_string())?;
            check_inet(s)?;
            if s.local.is_none() || s.peer.is_none() {
                return Err("TCP connection without addresses".into());
            }
            if c.unsent as usize > c.send_queue.len() || c.snd_wscale > 14 || c.rcv_wscale > 14 {
                return Err("malformed TCP connection state".into());
            }
        }
        Some(fd::Kind::Epoll(e)) => {
            // One in flight names, for each registration, the fd of a
            // process that holds its file.
            for h in e.targets.iter().filter_map(|t| t.holder.as_ref()) {
                let holder = tree.processes.iter().find(|p| p.pid == h.pid);
                if !holder.is_some_and(|p| p.fds.iter().any(|f| f.fd == h.fd)) {
                    return Err(format!("epoll watches fd {} of process {}, which does not exist", h.fd, h.pid));
                }
            }
            // A registration whose fd was closed names the fd that holds
            // its file now.
            let own = e.targets.iter().filter(|t| t.holder.is_none());
            if let Some(t) = own.clone().find(|t| !fds.iter().any(|f| f.fd == t.via.unwrap_or(t.fd))) {
                return Err(format!("epoll watches fd {}, which the process does not have", t.via.unwrap_or(t.fd)));
            }
        }
    }
    Ok(())
}

/// The links between processes: parents come before their children, every
/// zombie's parent is a live process of the tree, shared fds and shared
/// memory name what exists.
fn validate_tree(tree: &ProcessTree) -> Result<(), String> {
    let mut seen: HashMap<i32, usize> = HashMap::new();
    for (i, p) in tree.processes.iter().enumerate() {
        if let Some(&parent) = seen.get(&p.ppid) {
            debug_assert!(parent < i);
        } else if tree.processes[i..].iter().any(|q| q.pid == p.ppid) {
            return Err(format!("process {} comes before its parent {}", p.pid, p.ppid));
        }
        for f in &p.fds {
            let Some(r) = &f.shared_with else { continue };
            let earlier = seen.get(&r.pid).map(|&j| &tree.processes[j]);
            if !earlier.is_some_and(|q| q.fds.iter().any(|g| g.fd == r.fd)) {
                return Err(format!(
                    "process {}: fd {} shares fd {} of process {}, which no earlier process has",
                    p.pid, f.fd, r.fd, r.pid
                ));
            }
        }
        seen.insert(p.pid, i);
    }
    if tree.zombies.len() > MAX_PROCESSES {
        return Err(format!("{} zombies is more than {MAX_PROCESSES}", tree.zombies.len()));
    }
    for z in &tree.zombies {
        if !(1..=MAX_PID).contains(&z.pid) || seen.insert(z.pid, usize::MAX).is_some() {
            return Err(format!("zombie {}: pid is out of range or repeated", z.pid));
        }
        if !tree.processes.iter().any(|p| p.pid == z.ppid) {
            return Err(format!("zombie {}: its parent {} is not a process of the image", z.pid, z.ppid));
        }
        check_str(&z.comm, 16).map_err(|e| format!("zombie {}: name {e}", z.pid))?;
        if !(0..=64).contains(&z.exit_signal) {
            return Err(format!("zombie {}: exit signal {}", z.pid, z.exit_signal));
        }
    }
    let leaderless = tree.leaderless_sessions.iter().chain(&tree.leaderless_groups);
    if tree.leaderless_sessions.len() + tree.leaderless_groups.len() > 2 * MAX_PROCESSES {
        return Err("too many leaderless sessions and groups".into());
    }
    for &id in leaderless {
        if !(1..=MAX_PID).contains(&id) || seen.contains_key(&id) {
            return Err(format!(
                "leaderless session or group {id}: out of range, or the pid of a process of the image"
            ));
        }
    }
    let mut shmem = HashSet::new();
    for m in &tree.shmem {
        check_str(&m.name, 249).map_err(|e| format!("shared memory object {}: name {e}", m.id))?;
        if m.id == 0 || m.size > MAX_ADDRESS || !shmem.insert(m.id) {
            return Err(format!("shared memory object {} is malformed or repeated", m.id));
        }
    }
    for p in &tree.processes {
        for v in p.vmas.iter().filter(|v| v.shmem != 0) {
            // A mapping may reach past the object's end, as mmap lets it
            // (a touch there is SIGBUS): only where it starts is checked.
            let end = v.offset.checked_add(v.end - v.start).filter(|&e| e <= i64::MAX as u64);
            if !shmem.contains(&v.shmem) || v.offset % PAGE_SIZE != 0 || end.is_none() {
                return Err(format!(
                    "process {}: mapping {:#x}-{:#x} at offset {:#x} of shared memory object {}: no such object, or an offset no mapping has",
                    p.pid, v.start, v.end, v.offset, v.shmem
                ));
            }
        }
    }
    Ok(())
}

/// AF_INET and AF_INET6.
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;

/// SCM_MAX_FD: the most fds one message can pass.
const MAX_PASSED_FDS: usize = 253;
/// A sun_path holds at most 108 bytes.
const MAX_SUN_PATH: usize = 108;
/// Queued data of one socket: far above any socket buffer the kernel allows.
const MAX_UNIX_QUEUE: usize = 1 << 30;

fn check_unix(u: &UnixSocket) -> Result<(), String> {
    let bad = |what: String| Err(format!("unix socket {}: {what}", u.id));
    if ![libc_sock::STREAM, libc_sock::DGRAM, libc_sock::SEQPACKET].contains(&u.ty) {
        return bad(format!("unknown type {}", u.ty));
    }
    if u.name.len() > MAX_SUN_PATH || u.peer_name.len() > MAX_SUN_PATH {
        return bad("name longer than a sun_path".into());
    }
    if u.listening && (u.ty == libc_sock::DGRAM || u.peer != 0) {
        return bad("listening, but a datagram socket or connected".into());
    }
    if u.queue.iter().map(Vec::len).sum::<usize>() > MAX_UNIX_QUEUE {
        return bad("more queued data than any socket can hold".into());
    }
    Ok(())
}

/// Socket types, as in <sys/socket.h>.
mod libc_sock {
    pub const STREAM: i32 = 1;
    pub const DGRAM: i32 = 2;
    pub const SEQPACKET: i32 = 5;
}

fn check_inet(s: &InetSocket) -> Result<(), String> {
    let len = match s.family {
        AF_INET => 4,
        AF_INET6 => 16,
        f => return Err(format!("socket of unknown address family {f}")),
    };
    // IFNAMSIZ, with its terminating zero.
    check_str(&s.device, 15)?;
    for (what, a) in [("local", &s.local), ("peer", &s.peer)] {
        if let Some(a) = a {
            if a.addr.len() != len || a.port > u32::from(u16::MAX) {
                return Err(format!(
                    "{what} address has {} bytes and port {} (family {})",
                    a.addr.len(),
                    a.port,
                    s.family
                ));
            }
        }
    }
    Ok(())
}

fn check_file(f: &FileRef) -> Result<(), String> {
    check_str(&f.path, MAX_PATH)?;
    if !f.path.starts_with('/') {
        return Err(format!("path {:?} is not absolute", f.path));
    }
    Ok(())
}

fn check_str(s: &str, max: usize) -> Result<(), String> {
    if s.len() > max || s.contains('\0') {
        return Err(format!("{:?} is too long or holds a NUL", s.chars().take(64).collect::<String>()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::InetAddr;

    #[test]
    fn inet_address_lengths() {
        let addr = |n: usize, port: u32| Some(InetAddr { addr: vec![0; n], port, scope_id: 0 });
        let ok = InetSocket { family: AF_INET, local: addr(4, 80), peer: addr(4, 53), ..Default::default() };
        assert_eq!(check_inet(&ok), Ok(()));
        assert_eq!(check_inet(&InetSocket { family: AF_INET6, local: addr(16, 80), ..Default::default() }), Ok(()));
        assert!(check_inet(&InetSocket { family: AF_INET6, ..ok.clone() }).is_err());
        assert!(check_inet(&InetSocket { peer: addr(5, 1), ..ok.clone() }).is_err());
        assert!(check_inet(&InetSocket { local: addr(4, 70000), ..ok.clone() }).is_err());
        assert!(check_inet(&InetSocket { family: 1, ..ok }).is_err());
    }

    #[test]
    fn a_leaderless_session_or_group_is_no_process_of_the_image() {
        use crate::records::{Process, ProcessTree};
        let p = Process { pid: 100, ppid: 1, pgid: 50, sid: 50, ..Default::default() };
        let tree = ProcessTree {
            processes: vec![p],
            leaderless_sessions: vec![50],
            leaderless_groups: vec![50],
            ..Default::default()
        };
        assert_eq!(validate_tree(&tree), Ok(()));
        let taken = ProcessTree { leaderless_groups: vec![100], ..tree.clone() };
        assert!(validate_tree(&taken).unwrap_err().contains("leaderless session or group 100"));
        let negative = ProcessTree { leaderless_sessions: vec![-3], ..tree };
        assert!(validate_tree(&negative).is_err());
    }
}
