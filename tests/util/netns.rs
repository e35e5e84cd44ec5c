//! Another host for network tests, as a network namespace joined to this
//! one by a veth pair: 10.201.N.1 here, 10.201.N.2 there.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

/// A network namespace with a veth pair to it, removed when dropped.
pub struct PeerHost {
    name: String,
    host_if: String,
    /// This host's address on the pair, and the peer's.
    pub here: Ipv4Addr,
    pub there: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip {}` ({e}): is iproute2 installed?", args.join(" ")));
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl PeerHost {
    pub fn create() -> PeerHost {
        let id = std::process::id() % 100_000;
        let net = id % 250 + 1;
        let name = format!("stasis-peer-{id}");
        let (host_if, peer_if) = (format!("sth{id}"), format!("stp{id}"));
        // Left over by a test run that was killed.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        let peer = PeerHost {
            name: name.clone(),
            host_if: host_if.clone(),
            here: Ipv4Addr::new(10, 201, net as u8, 1),
            there: Ipv4Addr::new(10, 201, net as u8, 2),
        };
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &name]);
        ip(&["addr", "add", &format!("{}/24", peer.here), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "addr", "add", &format!("{}/24", peer.there), "dev", &peer_if]);
        ip(&["-n", &name, "link", "set", &peer_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        peer
    }

    /// A TCP listener on the peer's address (any port), made in its
    /// namespace by a thread that joined it (a socket stays in the
    /// namespace it was made in).
    pub fn listen(&self) -> TcpListener {
        let (path, there) = (format!("/run/netns/{}", self.name), self.there);
        std::thread::spawn(move || {
            use stasis_sys::nix::sched::{setns, CloneFlags};
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(&ns, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            TcpListener::bind((there, 0)).unwrap_or_else(|e| panic!("bind {there}: {e}"))
        })
        .join()
        .expect("listener thread")
    }
}

impl Drop for PeerHost {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
