//! Real servers from Debian (redis-server, nginx, PostgreSQL) started by the
//! tests, with small clients to load them and to check what they hold.
//!
//! Each server is a child of the test (its main process is a [`Spawned`]):
//! in the foreground, bound to 127.0.0.1 only on a free port, every file in
//! its temp directory `DIR`, stdin /dev/null, stdout and stderr `DIR/log`, and
//! no fd of the test process inherited beyond 0, 1 and 2. Its command line
//! holds `DIR` (redis through `proc-title-template`), which is how it is
//! recognised as ours once a restore made it no longer our child.
//!
//! The server's tree is its main process (redis-server, the nginx master, the
//! postmaster) and every descendant of it, found through the parent links in
//! /proc. Dropping a server kills that whole tree (the main process stopped
//! first, so it cannot fork while its children are killed) and removes `DIR`
//! (kept, with its path printed, when the test panics).
//!
//! Orphans are reaped by PID 1, on some machines a second or two late: after
//! [`Server::kill_tree`] or [`Server::wait_tree_gone`] every pid of the tree
//! is free again, so a restore can have it.
//!
//! A killed postmaster leaves its shared memory behind (a System V segment,
//! files in /dev/shm): [`Postgres::kill_tree`] keeps them, as a crash would,
//! and dropping the server removes them (after a fast shutdown, which
//! removes them itself when the server still can).

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

use super::spawned::{cloexec_inherited_fds, tempdir, tool, Spawned};
use super::workload::{is_alive, wait_gone};

/// How long a server may take to start (PostgreSQL's initdb not included).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the processes of a killed tree may take to be gone and reaped.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read timeout of the clients' connections.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(10);
/// Starting again on another port when the one picked was taken meanwhile.
const START_ATTEMPTS: usize = 3;

/// A port that was free on 127.0.0.1 a moment ago (bound to port 0, the
/// listener dropped). Another program may take it before the server binds
/// it: the servers' `start` try again on another port then.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address of a bound listener").port()
}

/// Fields 3 onwards of `/proc/PID/stat` (state, ppid, pgrp, session, ...),
/// or `None` when there is no such process.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field is in parentheses and may itself contain ')'.
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_string).collect())
}

/// The parent of PID, from `/proc/PID/stat`.
pub fn ppid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Every descendant of `pid` (not `pid` itself), parents before children,
/// from the parent links in /proc. Zombies are included.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut links = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Some(parent) = ppid(p) {
            links.push((parent, p));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        let mut kids: Vec<i32> = links.iter().filter(|(pp, _)| *pp == parent).map(|(_, p)| *p).collect();
        kids.sort_unstable();
        found.extend(kids);
        i += 1;
    }
    found.remove(0);
    found
}

/// The command line of PID with its NULs as spaces (what `ps` shows).
pub fn cmdline(pid: i32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ").trim_end().to_string()
}

/// Poll until `/proc/PID` is gone altogether (a zombie still holds its pid);
/// false on timeout.
pub fn wait_vanished(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL);
    }
    true
}

/// TCP state names (include/net/tcp_states.h), by number.
fn tcp_state_name(state: u8) -> &'static str {
    const NAMES: [&str; 13] = [
        "?",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    NAMES.get(usize::from(state)).copied().unwrap_or("?")
}

/// A TCP socket open in a process, from its fd and the tables of its
/// network namespace (`/proc/PID/net/tcp`, `tcp6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    pub pid: i32,
    pub fd: i32,
    /// `ESTABLISHED`, `LISTEN`, `CLOSE_WAIT`, ...
    pub state: &'static str,
    pub local_port: u16,
    pub remote_port: u16,
    /// Bytes in the send queue: not acknowledged yet (for a listener, the
    /// backlog).
    pub send_queue: u32,
    /// Bytes in the receive queue: not read yet (for a listener, the
    /// connections not accepted yet).
    pub recv_queue: u32,
}

/// The TCP sockets open in PID.
pub fn tcp_sockets(pid: i32) -> Vec<TcpSocket> {
    // inode -> (state, local port, remote port, send queue, receive queue).
    let mut rows = std::collections::HashMap::new();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit_once(':')?.1, 16).ok();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for row in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let cols: Vec<&str> = row.split_whitespace().collect();
            let (Some(local), Some(remote), Some(st), Some(queues), Some(ino)) =
                (cols.get(1), cols.get(2), cols.get(3), cols.get(4), cols.get(9))
            else {
                continue;
            };
            let Some((tx, rx)) = queues.split_once(':') else { continue };
            let (Some(local), Some(remote), Ok(st), Ok(tx), Ok(rx), Ok(ino)) = (
                port(local),
                port(remote),
                u8::from_str_radix(st, 16),
                u32::from_str_radix(tx, 16),
                u32::from_str_radix(rx, 16),
                ino.parse::<u64>(),
            ) else {
                continue;
            };
            rows.insert(ino, (tcp_state_name(st), local, remote, tx, rx));
        }
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        let target = target.display().to_string();
        let Some(ino) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) else { continue };
        let Some(&(state, local_port, remote_port, send_queue, recv_queue)) =
            ino.parse::<u64>().ok().and_then(|ino| rows.get(&ino))
        else {
            continue;
        };
        found.push(TcpSocket { pid, fd, state, local_port, remote_port, send_queue, recv_queue });
    }
    found.sort_by_key(|s| s.fd);
    found
}

/// Run `cmd` to completion (stdin /dev/null, output captured); stdout on
/// success, else everything it printed.
fn output(mut cmd: Command) -> Result<String, String> {
    cloexec_inherited_fds();
    cmd.stdin(Stdio::null());
    let what = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("{what}: cannot run: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{what}: {}\n--- stdout:\n{stdout}\n--- stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What the three servers have in common: the main process, the port, the
/// logs.
#[derive(Debug)]
pub struct Server {
    /// The main process (redis-server, nginx master, postmaster) and `DIR`.
    pub spawned: Spawned,
    /// The TCP port it listens on, on 127.0.0.1.
    pub port: u16,
    /// Log files besides `DIR/log`, shown when something fails.
    logs: Vec<PathBuf>,
}

impl Server {
    /// The main process.
    pub fn pid(&self) -> i32 {
        self.spawned.pid
    }

    /// The main process, then its descendants (parents before children).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = vec![self.pid()];
        pids.extend(descendants(self.pid()));
        pids
    }

    /// The server's temp directory.
    pub fn dir(&self) -> &Path {
        &self.spawned.dir
    }

    /// `DIR/log` and the server's other log files.
    pub fn log(&self) -> String {
        let mut text = self.spawned.log();
        for path in &self.logs {
            let more = fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})\n"));
            text.push_str(&format!("--- {}:\n{more}", path.display()));
        }
        text
    }

    /// Panics with the server's logs.
    pub fn fail(&self, what: &str) -> ! {
        panic!("{} (pid {}, port {}): {what}\n--- log:\n{}", self.spawned.name, self.pid(), self.port, self.log())
    }

    /// Poll `ready` until it returns Some. Err (with the logs) when the main
    /// process is gone first; panics on timeout.
    fn poll<T>(&self, timeout: Duration, desc: &str, mut ready: impl FnMut() -> Option<T>) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let gone = !is_alive(self.pid());
            if let Some(v) = ready() {
                return Ok(v);
            }
            if gone {
                return Err(self.log());
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no {desc} after {timeout:?}"));
            }
            sleep(POLL);
        }
    }

    /// [`Server::poll`], panicking when the main process is gone.
    pub fn wait_for<T>(&self, timeout: Duration, desc: &str, ready: impl FnMut() -> Option<T>) -> T {
        self.poll(timeout, desc, ready).unwrap_or_else(|_| self.fail(&format!("gone while waiting for {desc}")))
    }

    /// The TCP sockets open in the tree's processes.
    pub fn tcp_sockets(&self) -> Vec<TcpSocket> {
        self.pids().into_iter().flat_map(tcp_sockets).collect()
    }

    /// Wait until every TCP socket of the tree is listening or established:
    /// the connections the clients closed (e.g. the readiness probes) are
    /// closed by the server too. A dump refuses a half-closed connection.
    pub fn wait_tcp_settled(&self) {
        self.wait_for(START_TIMEOUT, "TCP sockets all listening or established", || {
            self.tcp_sockets().iter().all(|s| matches!(s.state, "LISTEN" | "ESTABLISHED")).then_some(())
        })
    }

    /// Wait until no process of the tree holds the connection of the
    /// client at `client_port` (closed by the client, then by the server).
    pub fn wait_connection_closed(&self, client_port: u16) {
        self.wait_for(START_TIMEOUT, &format!("the connection of client port {client_port} closed"), || {
            self.tcp_sockets().iter().all(|s| s.remote_port != client_port).then_some(())
        })
    }

    /// Stop the main process (so it cannot fork), SIGKILL it and every
    /// descendant; the pids killed. Nothing when the main process is no
    /// longer ours.
    fn kill_all(&self) -> Vec<i32> {
        if !(self.spawned.alive() && self.spawned.is_ours()) {
            return Vec::new();
        }
        let main = self.pid();
        let _ = kill(Pid::from_raw(main), Signal::SIGSTOP);
        let mut pids = vec![main];
        pids.extend(descendants(main));
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        pids
    }

    /// SIGKILL the whole tree and wait until every one of its pids is free.
    pub fn kill_tree(&mut self) {
        let pids = self.kill_all();
        self.wait_tree_gone(&pids);
    }

    /// Wait until every pid of `pids` (e.g. [`Server::pids`] taken before a
    /// `stasis dump` killed the tree) is free: the main process reaped if it
    /// is our child, the others reaped by PID 1. Panics on timeout.
    pub fn wait_tree_gone(&mut self, pids: &[i32]) {
        self.spawned.wait_exit(GONE_TIMEOUT);
        for &pid in pids {
            if !wait_vanished(pid, GONE_TIMEOUT) {
                self.fail(&format!("pid {pid} of the tree ({}) still exists {GONE_TIMEOUT:?} later", cmdline(pid)));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for pid in self.kill_all() {
            wait_gone(pid, Duration::from_secs(10));
        }
        // Then `spawned` reaps the main process and removes (or keeps) DIR.
    }
}

/// Start a server up to [`START_ATTEMPTS`] times: `attempt(port)` starts
/// one and waits until it is ready, Err with its logs when it exited; it is
/// started again on another port when its port was taken meanwhile.
fn start_on_free_port<T>(name: &str, mut attempt: impl FnMut(u16) -> Result<T, String>) -> T {
    for n in 1..=START_ATTEMPTS {
        match attempt(free_port()) {
            Ok(server) => return server,
            Err(log) if n < START_ATTEMPTS && log.contains("in use") => continue,
            Err(log) => panic!("{name} exited before it was ready\n--- log:\n{log}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

// ---------------------------------------------------------------- redis

/// A redis-server, without persistence (no RDB, no AOF), DEBUG allowed
/// from 127.0.0.1.
#[derive(Debug)]
pub struct Redis {
    pub server: Server,
}

impl Deref for Redis {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl DerefMut for Redis {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

impl Redis {
    /// Start redis-server and wait until it answers PING.
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// [`Redis::start`] with more `redis.conf` lines (later lines win).
    pub fn start_with(extra_conf: &[&str]) -> Redis {
        let bin = tool("redis-server");
        start_on_free_port("redis-server", |port| {
            let dir = tempdir("redis");
            let d = dir.path().display().to_string();
            let conf = dir.path().join("redis.conf");
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode yes\ndaemonize no\nsupervised no\n\
                 save \"\"\nappendonly no\ndir {d}\nlogfile \"\"\nloglevel notice\nio-threads 1\n\
                 enable-debug-command local\nproc-title-template \"{{title}} {{listen-addr}} {{config-file}}\"\n"
            );
            for line in extra_conf {
                text.push_str(line);
                text.push('\n');
            }
            fs::write(&conf, text).expect("write redis.conf");
            let mut cmd = Command::new(&bin);
            cmd.arg(&conf).current_dir(dir.path());
            let redis =
                Redis { server: Server { spawned: Spawned::start("redis-server", cmd, dir), port, logs: vec![] } };
            redis.poll(START_TIMEOUT, "PONG", || redis.ping())?;
            Ok(redis)
        })
    }

    /// Whether the server answers PING on a new connection.
    fn ping(&self) -> Option<()> {
        let mut client = RedisClient::connect(self.port).ok()?;
        matches!(client.try_command(&["PING"]), Ok(Reply::Simple(s)) if s == "PONG").then_some(())
    }

    /// Wait until the server answers PING (e.g. after a restore).
    pub fn wait_ready(&self) {
        self.wait_for(START_TIMEOUT, "PONG", || self.ping())
    }

    /// A new connection.
    pub fn client(&self) -> RedisClient {
        RedisClient::connect(self.port).unwrap_or_else(|e| self.fail(&format!("connect: {e}")))
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// A simple or bulk string as text; panics on anything else.
    pub fn text(&self) -> String {
        match self {
            Reply::Simple(s) => s.clone(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }

    /// An integer reply; panics on anything else.
    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }
}

/// A minimal redis client over one TCP connection.
#[derive(Debug)]
pub struct RedisClient {
    stream: BufReader<TcpStream>,
}

/// The value [`RedisClient::load_keys`] stores at `key:{i}`.
pub fn redis_value(i: usize) -> String {
    format!("value:{i}")
}

impl RedisClient {
    pub fn connect(port: u16) -> io::Result<RedisClient> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(RedisClient { stream: BufReader::new(stream) })
    }

    /// The client's own port: the same before and after proves the same
    /// connection (the client never reconnects).
    pub fn local_port(&self) -> u16 {
        self.stream.get_ref().local_addr().expect("local address").port()
    }

    /// Close the connection (both directions).
    pub fn close(self) {
        let _ = self.stream.get_ref().shutdown(Shutdown::Both);
    }

    fn encode(out: &mut Vec<u8>, args: &[&str]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        let mut line = Vec::new();
        self.stream.read_until(b'\n', &mut line)?;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        if line.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by redis"));
        }
        let line = line.strip_suffix(b"\r\n").ok_or_else(|| bad("reply line without CRLF"))?;
        let (kind, rest) = line.split_first().ok_or_else(|| bad("empty reply line"))?;
        let rest = String::from_utf8_lossy(rest).into_owned();
        let number = || rest.parse::<i64>().map_err(|_| bad(&format!("bad number {rest:?}")));
        Ok(match kind {
            b'+' => Reply::Simple(rest),
            b'-' => Reply::Error(rest),
            b':' => Reply::Int(number()?),
            b'$' => match usize::try_from(number()?) {
                Err(_) => Reply::Bulk(None),
                Ok(len) => {
                    let mut data = vec![0; len + 2];
                    self.stream.read_exact(&mut data)?;
                    data.truncate(len);
                    Reply::Bulk(Some(data))
                }
            },
            b'*' => match usize::try_from(number()?) {
                Err(_) => Reply::Array(None),
                Ok(n) => Reply::Array(Some((0..n).map(|_| self.read_reply()).collect::<io::Result<_>>()?)),
            },
            other => return Err(bad(&format!("unknown reply type {:?}", *other as char))),
        })
    }

    /// Send several commands at once, then read their replies.
    pub fn try_pipeline(&mut self, commands: &[Vec<&str>]) -> io::Result<Vec<Reply>> {
        let mut out = Vec::new();
        for args in commands {
            Self::encode(&mut out, args);
        }
        self.stream.get_mut().write_all(&out)?;
        commands.iter().map(|_| self.read_reply()).collect()
    }

    pub fn try_command(&mut self, args: &[&str]) -> io::Result<Reply> {
        Ok(self.try_pipeline(&[args.to_vec()])?.remove(0))
    }

    /// Send one command and read its reply (an error reply is a reply);
    /// panics when the connection fails.
    pub fn command(&mut self, args: &[&str]) -> Reply {
        self.try_command(args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// `SET key:{i} value:{i}` for i in 0..n, pipelined 1000 at a time.
    pub fn load_keys(&mut self, n: usize) {
        const BATCH: usize = 1000;
        for start in (0..n).step_by(BATCH) {
            let items: Vec<(String, String)> =
                (start..n.min(start + BATCH)).map(|i| (format!("key:{i}"), redis_value(i))).collect();
            let commands: Vec<Vec<&str>> = items.iter().map(|(k, v)| vec!["SET", k.as_str(), v.as_str()]).collect();
            let replies = self.try_pipeline(&commands).unwrap_or_else(|e| panic!("redis SET key:{start}..: {e}"));
            if let Some(bad) = replies.iter().find(|r| **r != Reply::Simple("OK".into())) {
                panic!("redis SET key:{start}.. replied {bad:?}");
            }
        }
    }

    /// GET KEY.
    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        match self.command(&["GET", key]) {
            Reply::Bulk(value) => value,
            other => panic!("redis GET {key}: {other:?}"),
        }
    }

    /// DBSIZE.
    pub fn dbsize(&mut self) -> i64 {
        self.command(&["DBSIZE"]).int()
    }

    /// DEBUG DIGEST: a hash of the whole data set (40 hex digits, all zeros
    /// when it is empty).
    pub fn digest(&mut self) -> String {
        let digest = self.command(&["DEBUG", "DIGEST"]).text();
        assert_eq!(digest.len(), 40, "DEBUG DIGEST replied {digest:?}");
        digest
    }
}

// ---------------------------------------------------------------- nginx

/// A file [`Nginx`] serves, and its contents.
pub const NGINX_HELLO: (&str, &str) = ("/hello.txt", "hello from stasis nginx\n");
/// A larger file nginx serves (sendfile), see [`nginx_big_body`].
pub const NGINX_BIG: &str = "/big.bin";
/// The nginx worker processes.
pub const NGINX_WORKERS: usize = 2;

/// The 1 MiB contents of [`NGINX_BIG`] (no two 8-byte words alike).
pub fn nginx_big_body() -> Vec<u8> {
    (0u64..128 * 1024).flat_map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes()).collect()
}

/// An nginx master with [`NGINX_WORKERS`] workers (running as www-data, as
/// Debian's own configuration has them), serving `DIR/www`.
#[derive(Debug)]
pub struct Nginx {
    pub server: Server,
}

impl Deref for Nginx {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl DerefMut for Nginx {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

impl Nginx {
    /// Start nginx and wait until both workers run and it serves
    /// [`NGINX_HELLO`].
    pub fn start() -> Nginx {
        Nginx::start_with(&[])
    }

    /// [`Nginx::start`] with more directives in the `http` block.
    pub fn start_with(extra_http: &[&str]) -> Nginx {
        // /usr/sbin may be missing from a non-root PATH.
        let sbin = Path::new("/usr/sbin/nginx");
        let bin = if sbin.is_file() { sbin.to_path_buf() } else { tool("nginx") };
        start_on_free_port("nginx", |port| {
            let dir = tempdir("nginx");
            let d = dir.path().display().to_string();
            // The workers (www-data) read DIR/www.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod DIR");
            let www = dir.path().join("www");
            fs::create_dir(&www).expect("create DIR/www");
            fs::write(www.join(NGINX_HELLO.0.trim_start_matches('/')), NGINX_HELLO.1).unwrap();
            fs::write(www.join(NGINX_BIG.trim_start_matches('/')), nginx_big_body()).unwrap();
            let extra = extra_http.join("\n    ");
            let conf = format!(
                "user www-data;
worker_processes {NGINX_WORKERS};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    {extra}
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
    }}
}}
"
            );
            fs::create_dir(dir.path().join("tmp")).expect("create DIR/tmp");
            let conf_path = dir.path().join("nginx.conf");
            fs::write(&conf_path, conf).expect("write nginx.conf");
            let mut cmd = Command::new(&bin);
            // -e: where errors go before the configuration is read.
            cmd.arg("-p").arg(dir.path()).arg("-c").arg(&conf_path).arg("-e").arg("stderr");
            cmd.current_dir(dir.path());
            let logs = vec![dir.path().join("error.log")];
            let nginx = Nginx { server: Server { spawned: Spawned::start("nginx", cmd, dir), port, logs } };
            nginx.poll(START_TIMEOUT, "workers", || (nginx.workers().len() == NGINX_WORKERS).then_some(()))?;
            nginx.poll(START_TIMEOUT, "hello.txt", || nginx.serves_hello())?;
            Ok(nginx)
        })
    }

    /// The worker processes (children of the master).
    pub fn workers(&self) -> Vec<i32> {
        descendants(self.pid()).into_iter().filter(|&p| cmdline(p).starts_with("nginx: worker process")).collect()
    }

    fn serves_hello(&self) -> Option<()> {
        let mut client = HttpClient::connect(self.port).ok()?;
        let (status, body) = client.try_get(NGINX_HELLO.0).ok()?;
        (status == 200 && body == NGINX_HELLO.1.as_bytes()).then_some(())
    }

    /// Wait until nginx serves [`NGINX_HELLO`] (e.g. after a restore).
    pub fn wait_ready(&self) {
        self.wait_for(START_TIMEOUT, "hello.txt", || self.serves_hello())
    }

    /// A new keep-alive connection.
    pub fn client(&self) -> HttpClient {
        HttpClient::connect(self.port).unwrap_or_else(|e| self.fail(&format!("connect: {e}")))
    }
}

/// An HTTP/1.1 client keeping one connection alive across requests.
#[derive(Debug)]
pub struct HttpClient {
    stream: BufReader<TcpStream>,
    /// The server said `Connection: close` (or closed): no more requests.
    pub closed: bool,
}

impl HttpClient {
    pub fn connect(port: u16) -> io::Result<HttpClient> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(HttpClient { stream: BufReader::new(stream), closed: false })
    }

    /// The client's own port: the same before and after proves the same
    /// connection.
    pub fn local_port(&self) -> u16 {
        self.stream.get_ref().local_addr().expect("local address").port()
    }

    /// GET PATH on this connection: the status and the body (which must
    /// have a Content-Length).
    pub fn try_get(&mut self, path: &str) -> io::Result<(u16, Vec<u8>)> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "the server closed this connection"));
        }
        self.stream.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            self.closed = true;
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the status line"));
        }
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let mut length = None;
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 {
                self.closed = true;
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the headers"));
            }
            let header = line.trim_end_matches(['\r', '\n']);
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').ok_or_else(|| bad(format!("bad header {header:?}")))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().map_err(|_| bad(format!("bad {header:?}")))?);
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                self.closed = true;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad(format!("{header:?} is not supported by this client")));
            }
        }
        let length = length.ok_or_else(|| bad("response without Content-Length".into()))?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        Ok((status, body))
    }

    /// [`HttpClient::try_get`], panicking when the connection fails.
    pub fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        self.try_get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Close the connection (both directions).
    pub fn close(self) {
        let _ = self.stream.get_ref().shutdown(Shutdown::Both);
    }
}

// ---------------------------------------------------------------- PostgreSQL

/// `/usr/lib/postgresql/VERSION/bin` of the newest PostgreSQL installed.
pub fn postgres_bin_dir() -> PathBuf {
    let versions = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").is_file() && bin.join("initdb").is_file());
    versions.max_by_key(|(v, _)| *v).map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("this test needs PostgreSQL (Debian package postgresql): no /usr/lib/postgresql/*/bin/postgres")
    })
}

/// The tables `pgbench -i` makes.
pub const PGBENCH_TABLES: [&str; 4] = ["pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers"];

/// A PostgreSQL server (a postmaster and its children) running as the
/// `postgres` user on a fresh cluster in `DIR/data`: TCP on 127.0.0.1
/// only (no unix socket), trust authentication, user `postgres`, database
/// `postgres`; fsync off.
#[derive(Debug)]
pub struct Postgres {
    pub server: Server,
    /// The cluster's data directory, `DIR/data`.
    pub data: PathBuf,
    bin: PathBuf,
    runs: usize,
    /// The System V segment the postmaster made (key and id, from
    /// postmaster.pid), and the POSIX shared memory files (/dev/shm) seen
    /// mapped in the tree: a killed postmaster leaves them behind, so
    /// dropping the server removes them.
    shm_segment: Option<(String, String)>,
    shm_files: Vec<PathBuf>,
}

impl Deref for Postgres {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl DerefMut for Postgres {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

/// Make `cmd` run as the `postgres` user (postgres refuses root).
fn as_postgres(cmd: &mut Command, user: &User) {
    cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw()).env("HOME", &user.dir).env("USER", "postgres");
}

impl Postgres {
    /// initdb a cluster, start postgres and wait until it accepts
    /// connections.
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// [`Postgres::start`] with more `postgresql.conf` lines (later lines
    /// win), e.g. `"dynamic_shared_memory_type = mmap"`.
    pub fn start_with(extra_conf: &[&str]) -> Postgres {
        let bin = postgres_bin_dir();
        let user = User::from_name("postgres")
            .expect("look up user postgres")
            .unwrap_or_else(|| panic!("this test needs the user `postgres` (made by the Debian package postgresql)"));
        start_on_free_port("postgres", |port| {
            let dir = tempdir("postgres");
            // The postgres user must reach DIR: it owns it, and the
            // directories above it must let it through.
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw())).expect("chown DIR");
            for up in dir.path().ancestors().skip(1) {
                let mode = fs::metadata(up).map(|m| m.permissions().mode()).unwrap_or(0);
                assert!(
                    mode & 0o001 != 0,
                    "the postgres user cannot reach {}: {} has mode {mode:o} (set TMPDIR elsewhere)",
                    dir.path().display(),
                    up.display()
                );
            }
            let data = dir.path().join("data");
            let mut initdb = Command::new(bin.join("initdb"));
            initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "--no-sync", "--no-instructions"]);
            initdb.args(["-E", "UTF8", "--locale=C"]).current_dir(dir.path()).env("LC_ALL", "C");
            as_postgres(&mut initdb, &user);
            if let Err(e) = output(initdb) {
                panic!("initdb failed: {e}");
            }
            let mut conf = format!(
                "\n# stasis tests\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n\
                 fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 16MB\n\
                 max_connections = 20\nmax_wal_size = 1GB\nhuge_pages = off\nlogging_collector = off\n\
                 log_destination = 'stderr'\n"
            );
            for line in extra_conf {
                conf.push_str(line);
                conf.push('\n');
            }
            let mut f = fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).expect("open conf");
            f.write_all(conf.as_bytes()).expect("append to postgresql.conf");

            let mut cmd = Command::new(bin.join("postgres"));
            cmd.arg("-D").arg(&data).current_dir(&data).env("LC_ALL", "C");
            as_postgres(&mut cmd, &user);
            let server = Server { spawned: Spawned::start("postgres", cmd, dir), port, logs: vec![] };
            let mut pg = Postgres { server, data, bin: bin.clone(), runs: 0, shm_segment: None, shm_files: Vec::new() };
            pg.poll(START_TIMEOUT, "postmaster.pid saying ready", || pg.pidfile_ready())?;
            pg.poll(START_TIMEOUT, "select 1", || (pg.try_psql("select 1").ok()?.trim() == "1").then_some(()))?;
            pg.note_shm();
            Ok(pg)
        })
    }

    /// Whether postmaster.pid says "ready" (its 8th line, the postmaster's
    /// status).
    fn pidfile_ready(&self) -> Option<()> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        (text.lines().nth(7)?.trim() == "ready").then_some(())
    }

    /// Wait until the server answers a query (e.g. after a restore).
    pub fn wait_ready(&self) {
        self.wait_for(START_TIMEOUT, "select 1", || (self.try_psql("select 1").ok()?.trim() == "1").then_some(()))
    }

    /// Remember the shared memory the server uses (see `shm_segment`).
    fn note_shm(&mut self) {
        if self.shm_segment.is_none() {
            // postmaster.pid line 7: "KEY SHMID" of the System V segment.
            let text = fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
            let fields: Vec<&str> = text.lines().nth(6).unwrap_or("").split_whitespace().collect();
            if let [key, id] = fields[..] {
                self.shm_segment = Some((key.to_string(), id.to_string()));
            }
        }
        for pid in self.pids() {
            let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            for line in maps.lines() {
                let Some(at) = line.find("/dev/shm/PostgreSQL.") else { continue };
                let path = PathBuf::from(line[at..].trim_end_matches(" (deleted)"));
                if !self.shm_files.contains(&path) {
                    self.shm_files.push(path);
                }
            }
        }
    }

    /// Remove the shared memory a killed server left behind (once nothing
    /// of the tree runs).
    fn remove_shm(&self) {
        for path in &self.shm_files {
            let _ = fs::remove_file(path);
        }
        let Some((key, id)) = &self.shm_segment else { return };
        // /proc/sysvipc/shm: key shmid perms size cpid lpid nattch ...
        let table = fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
        let unused = table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 6 && f[0] == key && f[1] == id && f[6] == "0"
        });
        if unused {
            let _ = Command::new("ipcrm").args(["-m", id]).stdin(Stdio::null()).output();
        }
    }

    /// SIGKILL the whole tree (as a crash would: its shared memory is left
    /// for a restore) and wait until every one of its pids is free.
    pub fn kill_tree(&mut self) {
        self.note_shm();
        self.server.kill_tree();
    }

    /// A program of this PostgreSQL version (`psql`, `pgbench`, ...).
    pub fn program(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        cmd.env("PGCONNECT_TIMEOUT", "10").env_remove("PGPASSWORD").env_remove("PGSERVICE");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"]);
        cmd
    }

    /// `psql -X -At -c SQL` in database postgres: its output, or Err with
    /// everything it printed.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let mut cmd = self.program("psql");
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql]);
        output(cmd)
    }

    /// [`Postgres::try_psql`], trimmed, panicking (with the server's log)
    /// when it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| self.fail(&e)).trim().to_string()
    }

    /// `pgbench -i -s SCALE`: 100000 × SCALE accounts, with primary keys.
    pub fn pgbench_init(&self, scale: u32) {
        let mut cmd = self.program("pgbench");
        cmd.args(["-i", "-q", "-s", &scale.to_string(), "postgres"]);
        if let Err(e) = output(cmd) {
            self.fail(&e);
        }
    }

    /// Start `pgbench -T SECS -c CLIENTS` (TPC-B-like transactions) in the
    /// background, a child of the test (not of the server), its output in
    /// `DIR/pgbench-N.log`.
    pub fn pgbench(&mut self, secs: u32, clients: u32) -> PgBench {
        self.runs += 1;
        let log_path = self.dir().join(format!("pgbench-{}.log", self.runs));
        let log = fs::File::create(&log_path).expect("create pgbench log");
        let log2 = log.try_clone().expect("dup log fd");
        let mut cmd = self.program("pgbench");
        cmd.args(["-n", "-T", &secs.to_string(), "-c", &clients.to_string(), "-j", "1", "postgres"]);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        cloexec_inherited_fds();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        PgBench { pid: i32::try_from(child.id()).expect("pid fits i32"), child: Some(child), log: log_path }
    }

    /// For each pgbench table, `TABLE ROWS MD5` (the md5 of every row as
    /// text, sorted), one line each: equal before and after means the same
    /// data.
    pub fn pgbench_checksum(&self) -> String {
        let parts: Vec<String> = PGBENCH_TABLES
            .iter()
            .map(|t| {
                format!(
                    "select '{t}' || ' ' || count(*) || ' ' || coalesce(md5(string_agg(x.r, E'\\n' order by x.r)), '-') \
                     from (select t::text r from {t} t) x"
                )
            })
            .collect();
        self.psql(&parts.join(" union all "))
    }

    /// The server's own consistency checks (the amcheck extension):
    /// `bt_index_check(index, heapallindexed => true)` on every B-tree index
    /// of the database and `verify_heapam` on every table, catalogs
    /// included. Ok with what was checked, Err with what is wrong.
    pub fn amcheck(&self) -> Result<String, String> {
        self.try_psql("create extension if not exists amcheck")?;
        let indexes = self.try_psql(
            "select count(bt_index_check(c.oid, true)) from pg_index i \
             join pg_class c on c.oid = i.indexrelid join pg_am a on a.oid = c.relam \
             where a.amname = 'btree' and c.relpersistence <> 't' and i.indisready and i.indisvalid",
        )?;
        let heaps =
            self.try_psql("select count(*) from pg_class where relkind in ('r', 'm', 't') and relpersistence <> 't'")?;
        let problems = self.try_psql(
            "select format('%s block %s offset %s attribute %s: %s', r.relname, v.blkno, v.offnum, v.attnum, v.msg) \
             from pg_class r cross join lateral verify_heapam(r.oid, check_toast => true) v \
             where r.relkind in ('r', 'm', 't') and r.relpersistence <> 't'",
        )?;
        if !problems.trim().is_empty() {
            return Err(format!("verify_heapam:\n{problems}"));
        }
        Ok(format!("{} B-tree indexes and {} tables checked", indexes.trim(), heaps.trim()))
    }

    /// [`Postgres::amcheck`], panicking with the server's log on a problem.
    pub fn amcheck_ok(&self) -> String {
        self.amcheck().unwrap_or_else(|e| self.fail(&format!("amcheck: {e}")))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.note_shm();
        // A fast shutdown (SIGINT) removes the server's shared memory; what
        // still runs after it is killed, and what it left behind removed.
        if self.spawned.alive() && self.spawned.is_ours() {
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGINT);
            wait_gone(self.pid(), Duration::from_secs(5));
        }
        for pid in self.server.kill_all() {
            wait_gone(pid, Duration::from_secs(10));
        }
        self.remove_shm();
    }
}

/// What a finished pgbench run printed.
#[derive(Debug)]
pub struct PgBenchRun {
    pub status: ExitStatus,
    pub output: String,
    /// "number of transactions actually processed".
    pub transactions: Option<u64>,
}

/// A pgbench load running in the background; killed when dropped.
#[derive(Debug)]
pub struct PgBench {
    pub pid: i32,
    child: Option<Child>,
    log: PathBuf,
}

impl PgBench {
    /// Wait until pgbench exits (panics after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> PgBenchRun {
        let mut child = self.child.take().expect("pgbench was already waited for");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait pgbench") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pgbench still runs {timeout:?} later\n{}", fs::read_to_string(&self.log).unwrap_or_default());
            }
            sleep(POLL);
        };
        let output = fs::read_to_string(&self.log).unwrap_or_default();
        let transactions = output
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.split('/').next()?.trim().parse().ok());
        PgBenchRun { status, output, transactions }
    }

    /// Wait for pgbench, panicking unless it succeeded; the transactions.
    pub fn wait_ok(&mut self, timeout: Duration) -> u64 {
        let run = self.wait(timeout);
        assert!(run.status.success(), "pgbench failed: {}\n{}", run.status, run.output);
        run.transactions.unwrap_or_else(|| panic!("no transaction count in pgbench's output:\n{}", run.output))
    }

    /// SIGKILL pgbench (if still running) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgBench {
    fn drop(&mut self) {
        self.kill();
    }
}
