//! Real servers from Debian (`tests/util/servers.rs`) dumped and restored
//! on the same host, with their clients' TCP connections: redis-server
//! holding 100,000 keys, and nginx (a master and two workers) with a
//! keep-alive client. Each is dumped killing the tree (then restored at the
//! same pids), and dumped with `--leave-running` (the server carries on;
//! the image restores the state at dump time once the original is killed).
//!
//! A client connection opened before the dump is the very same socket of
//! the test after the restore (the same fd; the harness clients never
//! reconnect): the restored server must carry it on.
//!
//! PostgreSQL is not checkpointed here yet (stasis's System V shared memory
//! support is under way): only the harness is checked for it. Its tests will follow
//! the same pattern: start, settle ([`Server::wait_tcp_settled`]), record,
//! [`dump`], [`Server::wait_tree_gone`], [`restore`], compare,
//! [`drop_cleanly`].
//!
//! Each server is also restored while other processes hold its pids: into
//! a new PID namespace, where it has them, under stasis's init.
//!
//! Between dump and restore, a new connection to a server is refused (its
//! listener is gone); a connection that was established is held by the
//! network lock, and a request sent on it meanwhile is answered after the
//! restore.
//!
//! Each dump and restore prints one line of figures on stderr, never
//! asserted on, for benchmark scripts to pick up:
//!
//! ```text
//! stasis-timing test=redis_round_trip op=dump wall_ms=812.3 frozen_ms=640.1 total_ms=790.2 processes=1
//! stasis-timing test=redis_round_trip op=restore wall_ms=301.4 total_ms=280.0 processes=1
//! ```

mod util;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use util::pidns::{ns_ids, squat, NamespaceInit, Squatters};
use util::servers::{
    cmdline, descendants, nginx_big_body, redis_value, Nginx, Postgres, Redis, RedisClient, Reply, Server, NGINX_BIG,
    NGINX_HELLO, NGINX_WORKERS, PGBENCH_TABLES,
};
use util::workload::is_alive;

// ---------------------------------------------------------------- helpers

/// An image directory, removed afterwards; kept (its path printed) when
/// the test fails.
struct Images(Option<tempfile::TempDir>);

impl Images {
    fn new(test: &str) -> Images {
        let dir = tempfile::Builder::new().prefix(&format!("stasis-img-{test}-")).tempdir().expect("temp dir");
        Images(Some(dir))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().expect("images dir").path()
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!("image kept: {}", dir.keep().display());
            }
        }
    }
}

fn ms(us: &Value) -> String {
    us.as_u64().map_or_else(|| "?".into(), |us| format!("{:.1}", us as f64 / 1000.0))
}

/// `stasis dump --json --pid SERVER --images DIR [--leave-running]`,
/// asserting success; prints its figures. Its JSON report.
fn dump(test: &str, server: &Server, images: &Path, leave_running: bool) -> Value {
    let pid = server.pid().to_string();
    let mut args = vec!["dump", "--json", "--pid", &pid, "--images", images.to_str().unwrap()];
    if leave_running {
        args.push("--leave-running");
    }
    let start = Instant::now();
    let r = util::run(&args);
    let wall = start.elapsed();
    if r.code != Some(0) {
        server.fail(&format!("dump failed\n{}", r.dump()));
    }
    let report = r.json();
    eprintln!(
        "stasis-timing test={test} op=dump wall_ms={:.1} frozen_ms={} total_ms={} processes={}",
        wall.as_secs_f64() * 1000.0,
        ms(&report["frozen_us"]),
        ms(&report["total_us"]),
        report["processes"],
    );
    assert_eq!(report["killed"], !leave_running, "{}", r.dump());
    report
}

/// `stasis restore --json --images DIR`, asserting success at the server's
/// pid; prints its figures. Its JSON report.
fn restore(test: &str, server: &Server, images: &Path) -> Value {
    let (r, report) = run_restore(test, server, images);
    assert_eq!(report["pid"], server.pid(), "restored at another pid\n{}", r.dump());
    report
}

/// `stasis restore --json --images DIR`, asserting success; prints its
/// figures. The run and its JSON report.
fn run_restore(test: &str, server: &Server, images: &Path) -> (util::Run, Value) {
    let start = Instant::now();
    let r = util::run(["restore", "--json", "--images", images.to_str().unwrap()]);
    let wall = start.elapsed();
    if r.code != Some(0) {
        server.fail(&format!("restore failed\n{}", r.dump()));
    }
    let report = r.json();
    eprintln!(
        "stasis-timing test={test} op=restore wall_ms={:.1} total_ms={} processes={}",
        wall.as_secs_f64() * 1000.0,
        ms(&report["total_us"]),
        report["processes"],
    );
    (r, report)
}

/// Parent, process group and session of PID, from /proc.
fn links(pid: i32) -> Option<(i32, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<i32> =
        stat.rsplit_once(')')?.1.split_whitespace().skip(1).take(3).filter_map(|v| v.parse().ok()).collect();
    (f.len() == 3).then(|| (f[0], f[1], f[2]))
}

/// The start time of PID (field 22 of /proc/PID/stat, in clock ticks since
/// boot): another value means another process, even at the same pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// The tree as it is linked: each pid (main process first) with its parent
/// (0 for the main process, whose parent is the test before a restore and
/// not after), group and session.
fn tree_links(server: &Server) -> Vec<(i32, (i32, i32, i32))> {
    server
        .pids()
        .into_iter()
        .map(|pid| {
            let (ppid, pgrp, sid) = links(pid).unwrap_or_else(|| server.fail(&format!("pid {pid} vanished")));
            (pid, (if pid == server.pid() { 0 } else { ppid }, pgrp, sid))
        })
        .collect()
}

/// No file of the test (a pipe or socket of the test runner) is open in
/// the server's processes: stasis would refuse a pipe whose other end is
/// outside the tree.
fn assert_no_test_fds(server: &Server) {
    let ours: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with("pipe:") || p.starts_with("socket:"))
        .collect();
    for pid in server.pids() {
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else { continue };
            let target = target.display().to_string();
            assert!(!ours.contains(&target), "pid {pid} fd {:?} is the test's {target}", entry.file_name());
        }
    }
}

/// The network locks (nftables tables `stasis_ROOT_*`) of dumps of ROOT
/// still in place: none once a restore is done or a dump let the tree run
/// on.
fn locks_of(root: i32) -> Vec<String> {
    let all = stasis_checkpoint::netlock::locks().unwrap_or_else(|e| panic!("list the network locks: {e}"));
    all.into_iter().filter(|name| name.starts_with(&format!("{root}_"))).collect()
}

fn assert_no_lock(root: i32) {
    let left = locks_of(root);
    assert!(left.is_empty(), "network locks of {root} left in place: {left:?}");
}

/// A pseudo-random sample of `n` distinct numbers below `below` (seeded
/// from the clock, printed so a failure can be replayed).
fn sample(n: usize, below: usize) -> Vec<usize> {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("sample seed {seed}");
    let mut x = seed;
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < n.min(below) {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        picked.insert((x % below as u64) as usize);
    }
    picked.into_iter().collect()
}

/// After a `--leave-running` dump, wait until the connection the client
/// at `client_port` closed is closed by the server too, before the
/// original server is killed. Killed with the connection open, the
/// original's socket closes with a FIN and lingers on the connection's
/// addresses (FIN_WAIT1 until the client acknowledges the FIN, then
/// FIN_WAIT2 for tcp_fin_timeout); a restore meanwhile fails to re-create
/// the connection from the image ("connect to 127.0.0.1:PORT in repair
/// mode: EADDRNOTAVAIL"). And the image's copy of the connection is stale
/// anyway: the original went on using it after the dump.
fn wait_closed_before_kill(server: &Server, client_port: u16) {
    server.wait_connection_closed(client_port);
}

/// Drop the server (killing its tree, restored or not) and check that
/// nothing of it is left: no process, no directory.
fn drop_cleanly<S: std::ops::Deref<Target = Server>>(server: S) {
    let pids = server.pids();
    let dir = server.dir().to_path_buf();
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(pid) = pids.iter().find(|&&p| is_alive(p)) {
        assert!(Instant::now() < deadline, "pid {pid} ({}) still runs after the drop", cmdline(*pid));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

// ---------------------------------------------------------------- redis

/// DBSIZE and DEBUG DIGEST through one connection.
fn redis_state(c: &mut RedisClient) -> (i64, String) {
    (c.dbsize(), c.digest())
}

/// Every key of `keys` holds value:i (GETs pipelined on a new connection),
/// and `key:N` (one past the last loaded) does not exist.
fn assert_redis_keys(redis: &Redis, keys: &[usize], loaded: usize) {
    let names: Vec<String> = keys.iter().map(|i| format!("key:{i}")).chain([format!("key:{loaded}")]).collect();
    let commands: Vec<Vec<&str>> = names.iter().map(|k| vec!["GET", k.as_str()]).collect();
    let replies = redis.client().try_pipeline(&commands).unwrap_or_else(|e| redis.fail(&format!("GET sample: {e}")));
    for (i, reply) in keys.iter().zip(&replies) {
        assert_eq!(*reply, Reply::Bulk(Some(redis_value(*i).into_bytes())), "GET key:{i}");
    }
    assert_eq!(replies.last(), Some(&Reply::Bulk(None)), "GET key:{loaded}");
}

/// Start redis with `keys` keys (loaded through a connection closed
/// since), and a client C1 that has SET probe 1.
fn redis_with_client(keys: usize) -> (Redis, RedisClient) {
    let redis = Redis::start();
    assert_eq!(redis.pids(), vec![redis.pid()], "redis-server forks no child");
    assert!(cmdline(redis.pid()).contains(redis.dir().to_str().unwrap()), "DIR not in redis's command line");
    assert_no_test_fds(&redis);
    let mut loader = redis.client();
    loader.load_keys(keys);
    drop(loader);
    let mut c1 = redis.client();
    assert_eq!(c1.command(&["SET", "probe", "1"]), Reply::Simple("OK".into()));
    assert_eq!(c1.get("probe"), Some(b"1".to_vec()));
    // The loader's and the readiness probes' connections closed on the
    // server's side too: only C1 is left.
    redis.wait_tcp_settled();
    redis.wait_for(Duration::from_secs(30), "C1 as the only client", || {
        (c1.command(&["CLIENT", "LIST"]).text().lines().count() == 1).then_some(())
    });
    (redis, c1)
}

#[test]
fn redis_round_trip_keeps_data_and_client() {
    const TEST: &str = "redis_round_trip";
    const KEYS: usize = 100_000;
    let (mut redis, mut c1) = redis_with_client(KEYS);
    let port = c1.local_port();
    let id = c1.command(&["CLIENT", "ID"]).int();
    let before = redis_state(&mut c1);
    assert_eq!(before.0, KEYS as i64 + 1, "the keys and probe");
    assert_ne!(before.1, "0".repeat(40));
    let pids = redis.pids();

    let images = Images::new(TEST);
    let report = dump(TEST, &redis, images.path(), false);
    assert_eq!(report["processes"], 1);
    redis.wait_tree_gone(&pids);
    restore(TEST, &redis, images.path());
    assert_no_lock(redis.pid());
    assert!(redis.spawned.is_ours(), "pid {} runs {:?}", redis.pid(), cmdline(redis.pid()));

    // C1: the same connection, opened before the dump.
    assert_eq!(c1.local_port(), port);
    assert_eq!(c1.command(&["CLIENT", "ID"]).int(), id, "C1 is another client of redis");
    let after = redis_state(&mut c1);
    assert_eq!(after, before, "DBSIZE and DEBUG DIGEST through C1");
    assert_eq!(c1.get("probe"), Some(b"1".to_vec()));
    assert_eq!(c1.command(&["SET", "probe", "2"]), Reply::Simple("OK".into()));
    assert_eq!(c1.get("probe"), Some(b"2".to_vec()));
    // A new connection.
    let mut c2 = redis.client();
    assert_eq!(c2.get("probe"), Some(b"2".to_vec()));
    assert_eq!(c2.command(&["SET", "probe", "1"]), Reply::Simple("OK".into()));
    assert_eq!(redis_state(&mut c2), before, "DBSIZE and DEBUG DIGEST through a new connection");
    assert_redis_keys(&redis, &sample(500, KEYS), KEYS);
    let clients = c1.command(&["CLIENT", "LIST"]).text();
    assert!(clients.contains(&format!(" addr=127.0.0.1:{port} ")), "C1 is not among redis's clients:\n{clients}");
    drop_cleanly(redis);
}

#[test]
fn redis_leave_running_keeps_client() {
    const TEST: &str = "redis_leave_running";
    const KEYS: usize = 1000;
    let (mut redis, mut c1) = redis_with_client(KEYS);
    let started = start_time(redis.pid());
    let at_dump = redis_state(&mut c1);
    assert_eq!(at_dump.0, KEYS as i64 + 1);

    let images = Images::new(TEST);
    dump(TEST, &redis, images.path(), true);
    assert_no_lock(redis.pid());
    // The same server (same process, still the test's child), going on
    // with C1 at once.
    assert!(is_alive(redis.pid()), "redis is gone after --leave-running\n{}", redis.log());
    assert_eq!(start_time(redis.pid()), started, "another process at pid {}", redis.pid());
    assert_eq!(links(redis.pid()).map(|l| l.0), Some(std::process::id() as i32), "redis is no longer our child");
    assert_eq!(c1.get("probe"), Some(b"1".to_vec()));
    assert_eq!(c1.command(&["SET", "probe", "after-dump"]), Reply::Simple("OK".into()));
    assert_eq!(c1.get("probe"), Some(b"after-dump".to_vec()));
    assert_eq!(c1.dbsize(), at_dump.0);
    assert_ne!(c1.digest(), at_dump.1, "SET probe changed the digest");

    // The image holds the state at dump time.
    let port = c1.local_port();
    c1.close();
    wait_closed_before_kill(&redis, port);
    redis.kill_tree();
    restore(TEST, &redis, images.path());
    assert_no_lock(redis.pid());
    let mut c2 = redis.client();
    assert_eq!(redis_state(&mut c2), at_dump, "DBSIZE and DEBUG DIGEST of the restored server");
    assert_eq!(c2.get("probe"), Some(b"1".to_vec()));
    assert_redis_keys(&redis, &sample(100, KEYS), KEYS);
    drop_cleanly(redis);
}

// ---------------------------------------------------------------- nginx

/// GET hello.txt and big.bin through `k`, asserting both intact.
fn assert_serves(what: &str, k: &mut util::servers::HttpClient) {
    let (status, body) = k.get(NGINX_HELLO.0);
    assert_eq!((status, String::from_utf8_lossy(&body).as_ref()), (200, NGINX_HELLO.1), "{what}: hello.txt");
    let (status, body) = k.get(NGINX_BIG);
    assert_eq!(status, 200, "{what}: big.bin");
    assert_eq!(body.len(), nginx_big_body().len(), "{what}: big.bin length");
    assert!(body == nginx_big_body(), "{what}: big.bin differs");
    assert!(!k.closed, "{what}: nginx closed the keep-alive connection");
}

/// Start nginx, check its tree (a master and its workers, nothing of the
/// test open in them), open a keep-alive client K and GET hello.txt once.
fn nginx_with_client() -> (Nginx, util::servers::HttpClient) {
    let nginx = Nginx::start();
    let pids = nginx.pids();
    assert_eq!(pids.len(), 1 + NGINX_WORKERS, "master and workers: {pids:?}");
    assert_eq!(nginx.workers().len(), NGINX_WORKERS);
    assert_no_test_fds(&nginx);
    let mut k = nginx.client();
    let (status, body) = k.get(NGINX_HELLO.0);
    assert_eq!((status, body.as_slice()), (200, NGINX_HELLO.1.as_bytes()));
    nginx.wait_tcp_settled();
    (nginx, k)
}

#[test]
fn nginx_round_trip_serves_and_keeps_keepalive() {
    const TEST: &str = "nginx_round_trip";
    let (mut nginx, mut k) = nginx_with_client();
    let port = k.local_port();
    let workers = nginx.workers();
    let links_before = tree_links(&nginx);
    let pids = nginx.pids();

    let images = Images::new(TEST);
    let report = dump(TEST, &nginx, images.path(), false);
    assert_eq!(report["processes"], pids.len());
    nginx.wait_tree_gone(&pids);
    restore(TEST, &nginx, images.path());
    assert_no_lock(nginx.pid());

    // The master and both workers, at their pids, linked as before.
    assert!(nginx.spawned.is_ours(), "pid {} runs {:?}", nginx.pid(), cmdline(nginx.pid()));
    assert_eq!(nginx.workers(), workers, "the workers");
    assert_eq!(tree_links(&nginx), links_before, "(pid, (parent, group, session)) of the tree");
    assert_eq!(descendants(nginx.pid()).len(), NGINX_WORKERS);

    // K: the same connection (the same local port; HttpClient never
    // reconnects).
    assert_eq!(k.local_port(), port);
    assert_serves("K after the restore", &mut k);
    assert_eq!(k.local_port(), port);
    let mut fresh = nginx.client();
    assert_serves("a new connection", &mut fresh);
    assert_eq!(fresh.get("/missing").0, 404);
    drop_cleanly(nginx);
}

#[test]
fn nginx_leave_running() {
    const TEST: &str = "nginx_leave_running";
    let (mut nginx, mut k) = nginx_with_client();
    let port = k.local_port();
    let started: Vec<_> = nginx.pids().into_iter().map(|p| (p, start_time(p))).collect();
    let links_before = tree_links(&nginx);

    let images = Images::new(TEST);
    dump(TEST, &nginx, images.path(), true);
    assert_no_lock(nginx.pid());
    assert_serves("K after the dump", &mut k);
    assert_eq!(k.local_port(), port);
    let now: Vec<_> = nginx.pids().into_iter().map(|p| (p, start_time(p))).collect();
    assert_eq!(now, started, "the same processes run on");

    // Then the original is killed and the image restored.
    k.close();
    wait_closed_before_kill(&nginx, port);
    nginx.kill_tree();
    restore(TEST, &nginx, images.path());
    assert_no_lock(nginx.pid());
    assert_eq!(tree_links(&nginx), links_before, "(pid, (parent, group, session)) of the tree");
    let mut fresh = nginx.client();
    assert_serves("a new connection", &mut fresh);
    drop_cleanly(nginx);
}

/// A request K sends while nginx is dumped (killed, not restored yet) is
/// held by the network lock: not refused, not acknowledged, and answered
/// once the restore is done.
#[test]
fn nginx_request_sent_while_dumped_is_answered_after_restore() {
    const TEST: &str = "nginx_request_while_dumped";
    let (mut nginx, mut k) = nginx_with_client();
    let port = k.local_port();
    let pids = nginx.pids();

    let images = Images::new(TEST);
    dump(TEST, &nginx, images.path(), false);
    nginx.wait_tree_gone(&pids);
    assert_eq!(locks_of(nginx.pid()).len(), 1, "the network lock of the dump");

    // K sends GET hello.txt (and waits for the answer) in another thread.
    let asking = std::thread::spawn(move || {
        let answer = k.try_get(NGINX_HELLO.0);
        (answer, k)
    });
    let me = std::process::id() as i32;
    let held = |s: &util::servers::TcpSocket| s.local_port == port && s.remote_port == nginx.port;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let k_socket = util::servers::tcp_sockets(me).into_iter().find(held);
        let k_socket = k_socket.unwrap_or_else(|| panic!("K's socket (port {port}) is gone"));
        assert_eq!(k_socket.state, "ESTABLISHED", "K while nginx is dumped");
        if k_socket.send_queue > 0 {
            break; // Sent, and not acknowledged.
        }
        assert!(Instant::now() < deadline, "K's request is not sent 30 s later");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!asking.is_finished(), "K got an answer while nginx is dumped: {:?}", asking.join().unwrap().0);

    restore(TEST, &nginx, images.path());
    assert_no_lock(nginx.pid());
    let (answer, mut k) = asking.join().expect("the thread of K");
    let (status, body) = answer.unwrap_or_else(|e| nginx.fail(&format!("K's request sent while dumped: {e}")));
    assert_eq!((status, String::from_utf8_lossy(&body).as_ref()), (200, NGINX_HELLO.1));
    assert_eq!(k.local_port(), port);
    assert_serves("K after the restore", &mut k);
    drop_cleanly(nginx);
}

// ---------------------------------------------------------------- PostgreSQL

// Not checkpointed here yet: stasis's support of System V shared memory
// (the postmaster's main segment) is under way. The round trip will be:
// `pgbench_init`, `pgbench_checksum` before the dump equal to it after the
// restore, `amcheck_ok`, and pgbench running again on the restored server.
// Until then, the harness itself is checked here: the server it starts,
// the checks it runs, and the clean-up of a killed server's shared memory
// (which a dump that kills the tree leaves behind too).

#[test]
fn postgres_harness_pgbench_checksum_amcheck_and_clean_up() {
    let t = Instant::now();
    let mut pg = Postgres::start();
    let started = t.elapsed();
    let pids = pg.pids();
    assert!(pids.len() >= 5, "postmaster and its background processes: {pids:?}");
    assert_no_test_fds(&pg);
    pg.pgbench_init(1);
    let before = pg.pgbench_checksum();
    assert_eq!(before.lines().count(), PGBENCH_TABLES.len(), "{before}");
    assert!(before.contains("pgbench_accounts 100000 "), "{before}");
    assert_eq!(pg.pgbench_checksum(), before, "checksum differs between two calls");

    let transactions = pg.pgbench(1, 2).wait_ok(Duration::from_secs(60));
    assert!(transactions > 0);
    let after = pg.pgbench_checksum();
    assert_ne!(after, before, "pgbench changed nothing");
    assert!(after.contains(&format!("pgbench_history {transactions} ")), "{after}");
    eprintln!("amcheck: {}", pg.amcheck_ok());

    // Killed (as by a dump), the server leaves its shared memory for a
    // restore; dropped, nothing of it is left.
    let shm = shm_of(pg.pid());
    assert!(!shm.is_empty(), "the postmaster maps no /dev/shm file nor System V segment");
    let pids = pg.pids();
    pg.kill_tree();
    for pid in &pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still exists after kill_tree");
    }
    for (what, exists) in &shm {
        assert!(exists(), "{what} is gone after a SIGKILL, before the drop");
    }
    drop_cleanly(pg);
    for (what, exists) in &shm {
        assert!(!exists(), "{what} is left behind");
    }
    eprintln!("postgres: started in {started:?}, total {:?}", t.elapsed());
}

/// PostgreSQL (postmaster, background processes, System V and anonymous
/// shared memory) dumped while pgbench runs against it, and restored:
/// pgbench goes on through the same connections and finishes without a
/// failed transaction, every transaction it counted is in pgbench_history
/// exactly once, and amcheck finds nothing wrong. Then an idle round trip:
/// every table's rows and checksum equal those at dump time.
#[test]
fn postgres_round_trip_under_pgbench_load() {
    const TEST: &str = "postgres_under_load";
    let mut pg = Postgres::start();
    assert_no_test_fds(&pg);
    pg.pgbench_init(1);
    let mut bench = pg.pgbench(8, 2);
    let history = |pg: &Postgres| pg.try_psql("select count(*) from pgbench_history").ok()?.trim().parse::<u64>().ok();
    pg.wait_for(Duration::from_secs(60), "pgbench transactions", || history(&pg).filter(|&n| n > 200));
    let pids = pg.pids();
    let images = Images::new(TEST);
    let report = dump(TEST, &pg, images.path(), false);
    assert!(report["processes"].as_u64().unwrap() >= 7, "postmaster, background processes, 2 backends: {report}");
    pg.wait_tree_gone(&pids);
    restore(TEST, &pg, images.path());
    assert_no_lock(pg.pid());
    let run = bench.wait(Duration::from_secs(120));
    assert!(run.status.success(), "pgbench failed across the dump and restore: {}\n{}", run.status, run.output);
    assert!(run.output.contains("number of failed transactions: 0 "), "{}", run.output);
    let transactions = run.transactions.expect("pgbench's transaction count");
    let sums = pg.pgbench_checksum();
    assert!(
        sums.contains(&format!("pgbench_history {transactions} ")),
        "pgbench counted {transactions} transactions:\n{sums}"
    );
    eprintln!("amcheck after the restore under load: {}", pg.amcheck_ok());

    let test = "postgres_idle";
    let pids = pg.pids();
    let images = Images::new(test);
    dump(test, &pg, images.path(), false);
    pg.wait_tree_gone(&pids);
    restore(test, &pg, images.path());
    assert_eq!(pg.pgbench_checksum(), sums, "tables differ from those at dump time");
    eprintln!("amcheck after the idle round trip: {}", pg.amcheck_ok());
    drop_cleanly(pg);
}

type ShmCheck = (String, Box<dyn Fn() -> bool>);

/// The /dev/shm files and System V segments PID maps, each with a check
/// that it still exists.
fn shm_of(pid: i32) -> Vec<ShmCheck> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut found: Vec<ShmCheck> = Vec::new();
    for line in maps.lines() {
        if let Some(at) = line.find("/dev/shm/") {
            let path = line[at..].trim_end_matches(" (deleted)").to_string();
            let p = path.clone();
            found.push((path, Box::new(move || Path::new(&p).exists())));
        } else if let Some(at) = line.find("/SYSV") {
            let key = u64::from_str_radix(&line[at + 5..at + 13], 16).unwrap();
            let exists = move || {
                let table = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
                table.lines().skip(1).any(|l| l.split_whitespace().next() == Some(&key.to_string()))
            };
            found.push((format!("System V segment key {key}"), Box::new(exists)));
        }
    }
    found
}

// ---------------------------------------------------------------- PID namespaces

/// A server restored into a new PID namespace: what must live as long as
/// it (the processes holding its original pids, the namespace's init).
struct InNamespace {
    _taken: Squatters,
    init: NamespaceInit,
}

impl InNamespace {
    /// Once the server is dropped: the init exits with the last process of
    /// its namespace.
    fn assert_init_gone(&self) {
        assert!(self.init.wait_gone(Duration::from_secs(10)), "the namespace's init {} outlived its tree", self.init.0);
    }
}

/// Take every pid of the image's (killed) tree with other processes, then
/// `stasis restore --json` with no option: stasis says it restores into a
/// new PID namespace, where every process has its pid, process group and
/// session of the image, the main process a child of the namespace's init. The server's main process
/// is then its new pid on this host.
fn restore_in_namespace(test: &str, server: &mut Server, images: &Path) -> InNamespace {
    // The processes of the image, with their group and session as a
    // namespace of the tree's own sees them (0: led from outside).
    let shown = util::run(["inspect", "--json", images.to_str().unwrap()]).success().json();
    let id = |p: &Value, key: &str| p[key].as_i64().unwrap() as i32;
    let processes = shown["processes"].as_array().expect("processes in the image").clone();
    let pids: Vec<i32> = processes.iter().map(|p| id(p, "pid")).collect();
    let outside = |v: i32| if pids.contains(&v) { v } else { 0 };
    let mut before: Vec<(i32, i32, i32)> =
        processes.iter().map(|p| (id(p, "pid"), outside(id(p, "pgid")), outside(id(p, "sid")))).collect();
    before.sort();
    let taken = squat(&pids);
    let (r, report) = run_restore(test, server, images);
    assert!(r.stderr.contains("new PID namespace"), "no notice of the namespace\n{}", r.dump());
    let ns = &report["namespace"];
    assert_eq!(ns["pid_inside"], pids[0], "{}", r.dump());
    let host = report["pid"].as_i64().unwrap() as i32;
    assert_ne!(host, pids[0], "{}", r.dump());
    let init = NamespaceInit(ns["init"].as_i64().unwrap() as i32);
    assert!(init.alive(), "the init {} is not pid 1 of a namespace", init.0);
    assert_eq!(util::servers::ppid(host), Some(init.0), "the main process is not the init's child");
    server.spawned.pid = host;
    assert!(server.spawned.is_ours(), "pid {host} runs {:?}", cmdline(host));
    let mut inside: Vec<(i32, i32, i32)> = server.pids().into_iter().map(ns_ids).collect();
    inside.sort();
    assert_eq!(inside, before, "(pid, group, session) inside the namespace");
    InNamespace { _taken: taken, init }
}

#[test]
fn redis_restored_into_a_new_pid_namespace_while_its_pid_is_taken() {
    const TEST: &str = "redis_pid_namespace";
    const KEYS: usize = 100_000;
    let (mut redis, mut c1) = redis_with_client(KEYS);
    let id = c1.command(&["CLIENT", "ID"]).int();
    let before = redis_state(&mut c1);
    let pids = redis.pids();
    let original = redis.pid();

    let images = Images::new(TEST);
    dump(TEST, &redis, images.path(), false);
    redis.wait_tree_gone(&pids);
    let ns = restore_in_namespace(TEST, &mut redis, images.path());
    assert_no_lock(original);

    assert_eq!(c1.command(&["CLIENT", "ID"]).int(), id, "C1 is another client of redis");
    assert_eq!(redis_state(&mut c1), before, "DBSIZE and DEBUG DIGEST through C1");
    assert_eq!(c1.command(&["SET", "probe", "2"]), Reply::Simple("OK".into()));
    let mut c2 = redis.client();
    assert_eq!(c2.get("probe"), Some(b"2".to_vec()));
    assert_redis_keys(&redis, &sample(200, KEYS), KEYS);
    drop_cleanly(redis);
    ns.assert_init_gone();
}

#[test]
fn nginx_restored_into_a_new_pid_namespace_while_its_pids_are_taken() {
    const TEST: &str = "nginx_pid_namespace";
    let (mut nginx, mut k) = nginx_with_client();
    let pids = nginx.pids();
    let workers = nginx.workers();

    let images = Images::new(TEST);
    dump(TEST, &nginx, images.path(), false);
    nginx.wait_tree_gone(&pids);
    let ns = restore_in_namespace(TEST, &mut nginx, images.path());
    assert_no_lock(pids[0]);
    let mut inside: Vec<i32> = nginx.workers().into_iter().map(|w| ns_ids(w).0).collect();
    inside.sort();
    let mut expected = workers.clone();
    expected.sort();
    assert_eq!(inside, expected, "the workers at their pids inside");

    assert_serves("K after the restore", &mut k);
    let mut fresh = nginx.client();
    assert_serves("a new connection", &mut fresh);
    drop_cleanly(nginx);
    ns.assert_init_gone();
}

#[test]
fn postgres_restored_into_a_new_pid_namespace_while_its_pids_are_taken() {
    const TEST: &str = "postgres_pid_namespace";
    let mut pg = Postgres::start();
    assert_no_test_fds(&pg);
    pg.pgbench_init(1);
    let first = pg.pgbench(1, 2).wait_ok(Duration::from_secs(60));
    let sums = pg.pgbench_checksum();
    assert!(sums.contains(&format!("pgbench_history {first} ")), "{sums}");
    // The backends of pgbench and psql end a moment after their clients.
    let pids = pg.wait_for(Duration::from_secs(30), "no client backend left", || {
        let pids = pg.pids();
        let backends = pids.iter().any(|&p| cmdline(p).contains("[local]") || cmdline(p).contains("127.0.0.1"));
        (!backends).then_some(pids)
    });

    let images = Images::new(TEST);
    dump(TEST, &pg, images.path(), false);
    pg.wait_tree_gone(&pids);
    let ns = restore_in_namespace(TEST, &mut pg, images.path());
    assert_no_lock(pids[0]);
    assert_eq!(pg.pgbench_checksum(), sums, "tables differ from those at dump time");
    eprintln!("amcheck after the restore into a namespace: {}", pg.amcheck_ok());
    // New backends are forked inside the namespace, and work.
    let second = pg.pgbench(1, 2).wait_ok(Duration::from_secs(60));
    let now = pg.pgbench_checksum();
    assert!(now.contains(&format!("pgbench_history {} ", first + second)), "{first} + {second} transactions:\n{now}");
    drop_cleanly(pg);
    ns.assert_init_gone();
}
