//! A tree living in a PID namespace below stasis's (one a restore put into
//! a new namespace, or a container's) is dumped with the pids it has in its
//! own namespace: those are the pids its processes know (getpid, their
//! children's pids, pids kept in memory), and a restore into a new
//! namespace gives them back. stasis itself sees other, outer pids, and
//! dumps with them; [`PidMap`] then rewrites every pid of the records into
//! the tree's namespace.
//!
//! A pid of a process outside the tree becomes the one it has in the tree's
//! namespace (its init, 1), or 0 where it has none there (a process of an
//! ancestor namespace), as the tree's own processes see it: a group or
//! session led from outside, the sender of a pending signal.

use std::collections::HashMap;
use std::fs;

use stasis_image::records::{self, fd::Kind, ProcessTree};
use stasis_sys::Pid;

use super::DumpError;
use crate::proc;

/// Outer pid to pid in the tree's namespace.
pub(super) struct PidMap {
    /// The tree's PID namespace (the target of /proc/PID/ns/pid).
    ns: std::path::PathBuf,
    inner: HashMap<i32, i32>,
}

/// The last (innermost) number of a status line such as `NSpid: 40 2`.
fn innermost(status: &str, key: &str) -> Option<i32> {
    let line = status.lines().find_map(|l| l.strip_prefix(key))?;
    line.split_whitespace().last()?.parse().ok()
}

impl PidMap {
    /// The map for a tree of `processes` (each with its threads) and
    /// `zombies`, all in `ns`; their groups and sessions too, as their
    /// status shows them inside (NSpgid, NSsid).
    pub(super) fn build(ns: std::path::PathBuf, processes: &[Pid], zombies: &[Pid]) -> Result<PidMap, DumpError> {
        let mut map = PidMap { ns, inner: HashMap::new() };
        for &pid in processes.iter().chain(zombies) {
            let err = |what: &str| {
                let what = what.to_owned();
                move |source| DumpError::Proc { pid, what, source }
            };
            let status = proc::read(pid, "status").map_err(err("status"))?;
            let stat = proc::stat(pid).map_err(err("stat"))?;
            let missing = || err("status")(std::io::Error::other("no NSpid, NSpgid or NSsid line"));
            map.inner.insert(pid.as_raw(), innermost(&status, "NSpid:").ok_or_else(missing)?);
            // A group or session led from outside the namespace is 0 there.
            map.inner.entry(stat.pgrp).or_insert(innermost(&status, "NSpgid:").ok_or_else(missing)?);
            map.inner.entry(stat.session).or_insert(innermost(&status, "NSsid:").ok_or_else(missing)?);
            let tasks = fs::read_dir(proc::path(pid, "task")).map_err(err("task"))?;
            for t in tasks.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else { continue };
                if tid == pid.as_raw() {
                    continue;
                }
                let status = fs::read_to_string(t.path().join("status")).map_err(err("thread status"))?;
                map.inner.insert(tid, innermost(&status, "NSpid:").ok_or_else(missing)?);
            }
        }
        Ok(map)
    }

    /// The pid `outer` has in the tree's namespace; 0 where it has none.
    pub(super) fn inner(&self, outer: i32) -> i32 {
        if outer <= 0 {
            return outer;
        }
        if let Some(&inner) = self.inner.get(&outer) {
            return inner;
        }
        // A live process outside the tree: its number in the tree's
        // namespace, if it is in it (its init).
        let path = format!("/proc/{outer}");
        match fs::read_link(format!("{path}/ns/pid")) {
            Ok(ns) if ns == self.ns => {
                fs::read_to_string(format!("{path}/status")).ok().and_then(|s| innermost(&s, "NSpid:")).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Rewrite every pid of `tree` (dumped with outer pids).
    pub(super) fn translate(&self, tree: &mut ProcessTree) -> Result<(), String> {
        let m = |p: &mut i32| *p = self.inner(*p);
        for p in &mut tree.processes {
            let at = p.pid;
            for pid in [&mut p.pid, &mut p.ppid, &mut p.pgid, &mut p.sid] {
                m(pid);
            }
            for t in &mut p.threads {
                m(&mut t.tid);
                t.pending.iter_mut().for_each(|s| self.signal_sender(s));
            }
            p.shared_pending.iter_mut().for_each(|s| self.signal_sender(s));
            for t in &mut p.posix_timers {
                m(&mut t.tid);
            }
            for f in &mut p.fds {
                self.fd(f).map_err(|e| format!("process {at}: fd {}: {e}", f.fd))?;
            }
        }
        for z in &mut tree.zombies {
            for pid in [&mut z.pid, &mut z.ppid, &mut z.pgid, &mut z.sid] {
                m(pid);
            }
        }
        for t in &mut tree.ptys {
            m(&mut t.session);
            m(&mut t.foreground);
        }
        tree.leaderless_sessions.iter_mut().for_each(m);
        tree.leaderless_groups.iter_mut().for_each(m);
        for f in tree.unix_sockets.iter_mut().flat_map(|s| &mut s.passed).flat_map(|p| &mut p.fds) {
            self.fd(f).map_err(|e| format!("an fd in flight: {e}"))?;
        }
        tree.pid_namespace = true;
        Ok(())
    }

    fn fd(&self, f: &mut records::Fd) -> Result<(), String> {
        if let Some(s) = &mut f.shared_with {
            s.pid = self.inner(s.pid);
        }
        if let Some(o) = &mut f.owner {
            o.pid = self.inner(o.pid);
        }
        if let Some(Kind::Tty(t)) = &mut f.kind {
            t.session = self.inner(t.session);
        }
        if let Some(Kind::Pidfd(pf)) = &mut f.kind {
            let outer = pf.pid;
            pf.pid = self.inner(outer);
            if pf.pid == 0 {
                return Err(format!(
                    "a pidfd of process {outer}, which is outside the tree's PID namespace (not supported)"
                ));
            }
        }
        Ok(())
    }

    /// The sender's pid in a pending signal's siginfo (si_pid, at byte 16,
    /// for kill, sigqueue, tgkill and SIGCHLD), as the tree sees it.
    fn signal_sender(&self, s: &mut records::SigInfo) {
        const SI_USER: i32 = 0;
        const SI_QUEUE: i32 = -1;
        const SI_TKILL: i32 = -6;
        let word = |at: usize| s.raw.get(at..at + 4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")));
        let (Some(signo), Some(code), Some(pid)) = (word(0), word(8), word(16)) else { return };
        let sender =
            matches!(code, SI_USER | SI_QUEUE | SI_TKILL) || (signo == stasis_sys::nix::libc::SIGCHLD && code > 0);
        if sender {
            s.raw[16..20].copy_from_slice(&self.inner(pid).to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn innermost_takes_the_last_number() {
        let status = "Name:\tx\nNSpid:\t4040\t7\nNSpgid:\t4000\t0\nNSsid:\t12\n";
        assert_eq!(innermost(status, "NSpid:"), Some(7));
        assert_eq!(innermost(status, "NSpgid:"), Some(0));
        assert_eq!(innermost(status, "NSsid:"), Some(12));
        assert_eq!(innermost(status, "Tgid:"), None);
    }

    #[test]
    fn signal_senders_are_rewritten_by_code() {
        let map = PidMap { ns: "pid:[0]".into(), inner: HashMap::from([(4040, 7)]) };
        let info = |signo: i32, code: i32, pid: i32| {
            let mut raw = vec![0u8; 128];
            raw[0..4].copy_from_slice(&signo.to_le_bytes());
            raw[8..12].copy_from_slice(&code.to_le_bytes());
            raw[16..20].copy_from_slice(&pid.to_le_bytes());
            records::SigInfo { raw }
        };
        let sender = |mut s: records::SigInfo| {
            map.signal_sender(&mut s);
            i32::from_le_bytes(s.raw[16..20].try_into().unwrap())
        };
        assert_eq!(sender(info(stasis_sys::nix::libc::SIGUSR1, 0, 4040)), 7);
        assert_eq!(sender(info(stasis_sys::nix::libc::SIGCHLD, 1, 4040)), 7);
        // A timer's overrun id is no pid.
        assert_eq!(sender(info(stasis_sys::nix::libc::SIGALRM, -2, 4040)), 4040);
    }
}
