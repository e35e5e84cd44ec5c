//! Pieces of process state that a restore must bring back equal (or a dump
//! refuse by name), each set by a small python program that checks it
//! itself once DIR/check shows up, after a round trip and after a
//! --leave-running dump.

mod util;

use std::fs;
use std::process::Command;
use std::time::Duration;

use util::spawned::{dump_ok, python3, restore_ok, tempdir, Spawned};

/// Runs `setup` (python, with `d` the directory), then waits for DIR/check
/// and runs `check`, which appends to `bad` what is wrong.
fn script(setup: &str, check: &str) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        r#"
import fcntl, os, signal, stat, struct, sys, time
d = sys.argv[1]
bad = []
def want(what, got, expected):
    if got != expected:
        bad.append('%s: %r, expected %r' % (what, got, expected))
def setup():
{}
    return locals()
env = setup()
open(os.path.join(d, 'ready'), 'w').close()
while not os.path.exists(os.path.join(d, 'check')):
    time.sleep(0.02)
def check(env):
    globals().update(env)
{}
check(env)
with open(os.path.join(d, 'result.tmp'), 'w') as f:
    f.write('ok\n' if not bad else 'fail: ' + '; '.join(bad) + '\n')
os.replace(os.path.join(d, 'result.tmp'), os.path.join(d, 'result'))
"#,
        indent(setup),
        indent(check)
    )
}

fn start(name: &str, setup: &str, check: &str) -> Spawned {
    start_with(name, setup, check, &[])
}

/// [`start`], with `env` (python -I ignores PYTHON* variables only).
fn start_with(name: &str, setup: &str, check: &str, env: &[(&str, String)]) -> Spawned {
    let dir = tempdir(name);
    let path = dir.path().join("state.py");
    fs::write(&path, script(setup, check)).unwrap();
    let mut cmd = Command::new(python3());
    cmd.arg("-I").arg(&path).arg(dir.path()).envs(env.iter().map(|(k, v)| (k, v)));
    let p = Spawned::start(name, cmd, dir);
    p.wait_for(Duration::from_secs(30), "DIR/ready", || p.dir.join("ready").exists().then_some(()));
    p
}

fn result(p: &Spawned) -> String {
    fs::write(p.dir.join("check"), "").unwrap();
    p.wait_for(Duration::from_secs(30), "DIR/result", || fs::read_to_string(p.dir.join("result")).ok())
}

/// Dump `p` and hand the process that goes on to `after`: `p` itself
/// with `leave_running`, else its restore (`p`, killed by the dump, keeps
/// the directory they share until `after` is done).
fn dump_then(name: &str, mut p: Spawned, leave_running: bool, after: impl FnOnce(Spawned)) {
    let images = tempdir(&format!("{name}-img"));
    if leave_running {
        dump_ok(p.pid, images.path(), &["--leave-running"]);
        return after(p);
    }
    dump_ok(p.pid, images.path(), &[]);
    p.wait_exit(Duration::from_secs(30));
    restore_ok(p.pid, images.path());
    after(Spawned::adopt(&format!("{name} (restored)"), p.pid, &p.dir));
}

/// Python for the state programs that map memory themselves: libc's
/// mmap(2) through ctypes, as `mmap(length, prot, flags, fd, offset)`,
/// failing the set-up with errno (and `what`) when it fails.
const MMAP: &str = "import ctypes\n\
    libc = ctypes.CDLL(None, use_errno=True)\n\
    libc.mmap.restype = ctypes.c_void_p\n\
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
    def mmap(length, prot, flags, fd=-1, offset=0, what='mmap'):\n    \
        at = libc.mmap(None, length, prot, flags, fd, offset)\n    \
        assert at not in (None, 2**64 - 1), '%s: errno %d' % (what, ctypes.get_errno())\n    \
        return at\n";

/// A prelude for state programs that set seccomp filters: `deny(nr, err,
/// flags)` sets one making call `nr` fail with errno `err` and returns what
/// seccomp(2) returned, `denied` the same asserting it worked, `errno_of(f)`
/// the errno a call fails with (0: none).
const SECCOMP: &str = "import ctypes, threading, queue, struct\n\
    libc = ctypes.CDLL(None, use_errno=True)\n\
    def deny(nr, err, flags=0):\n    \
        code = b''.join(struct.pack('HBBI', *i) for i in [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (6, 0, 0, 0x50000 | err), (6, 0, 0, 0x7fff0000)])\n    \
        insns = ctypes.create_string_buffer(code)\n    \
        prog = ctypes.create_string_buffer(struct.pack('HxxxxxxQ', 4, ctypes.addressof(insns)))\n    \
        return libc.syscall(317, 1, flags, prog)\n\
    def denied(nr, err, flags=0):\n    \
        assert deny(nr, err, flags) == 0, 'seccomp: errno %d' % ctypes.get_errno()\n\
    def errno_of(f):\n    \
        try:\n        f()\n        return 0\n    \
        except OSError as e:\n        return e.errno\n";

/// Round trip, then --leave-running: the state checks out each time.
fn both(name: &str, setup: &str, check: &str) {
    for (leave_running, name, after) in
        [(false, name.to_owned(), "a round trip"), (true, format!("{name}-lr"), "a --leave-running dump")]
    {
        dump_then(&name, start(&name, setup, check), leave_running, |mut p| {
            assert_eq!(result(&p).trim(), "ok", "{name} after {after}\n{}", p.log());
            p.wait_exit(Duration::from_secs(30));
        });
    }
}

/// The owner of an fd's signals (F_SETOWN_EX: the process, a thread's
/// group...) and the signal it sends (F_SETSIG), with O_ASYNC: bytes
/// written to the pipe still send it.
#[test]
fn fd_signal_owner_and_signal() {
    both(
        "fown",
        "got = []\n\
         signal.signal(signal.SIGUSR2, lambda *a: got.append(1))\n\
         r, w = os.pipe()\n\
         fl = fcntl.fcntl(r, fcntl.F_GETFL)\n\
         fcntl.fcntl(r, fcntl.F_SETFL, fl | os.O_ASYNC)\n\
         fcntl.fcntl(r, 15, struct.pack('ii', 1, os.getpid()))\n\
         fcntl.fcntl(r, 10, signal.SIGUSR2)\n\
         r2, w2 = os.pipe()\n\
         fcntl.fcntl(r2, 15, struct.pack('ii', 2, os.getpgrp()))\n\
         flags = [fcntl.fcntl(f, fcntl.F_GETFL) for f in (r, w, r2, w2)]",
        "want('owner', struct.unpack('ii', fcntl.fcntl(r, 16, b'\\0' * 8)), (1, os.getpid()))\n\
         want('signal', fcntl.fcntl(r, 11), signal.SIGUSR2)\n\
         want('O_ASYNC', bool(fcntl.fcntl(r, fcntl.F_GETFL) & os.O_ASYNC), True)\n\
         want('group owner', struct.unpack('ii', fcntl.fcntl(r2, 16, b'\\0' * 8)), (2, os.getpgrp()))\n\
         want('no signal set', fcntl.fcntl(r2, 11), 0)\n\
         want('status flags (no O_LARGEFILE a pipe never had)', [fcntl.fcntl(f, fcntl.F_GETFL) for f in (r, w, r2, w2)], flags)\n\
         del got[:]\n\
         os.write(w, b'x')\n\
         for _ in range(100):\n    if got:\n        break\n    time.sleep(0.01)\n\
         want('signals sent for bytes written', len(got), 1)",
    );
}

/// A memfd's mode and owner (fchmod, fchown), its contents and its fd's
/// offset (one open for appending too); the offsets are the original's
/// still after a --leave-running dump (which reads the pages through a
/// description of its own).
#[test]
fn memfd_mode_and_owner() {
    both(
        "memfd",
        "m = os.memfd_create('state')\n\
         os.write(m, b'contents')\n\
         os.fchown(m, 1234, 5678)\n\
         os.fchmod(m, 0o640)\n\
         os.lseek(m, 2, os.SEEK_SET)\n\
         a = os.memfd_create('append')\n\
         fcntl.fcntl(a, fcntl.F_SETFL, os.O_APPEND)\n\
         os.write(a, b'hello' + b'\\0' * 20000 + b'end')\n\
         os.lseek(a, 3, os.SEEK_SET)",
        "st = os.fstat(m)\n\
         want('mode', stat.S_IMODE(st.st_mode), 0o640)\n\
         want('owner', (st.st_uid, st.st_gid), (1234, 5678))\n\
         want('contents', os.pread(m, 100, 0), b'contents')\n\
         want('offsets', (os.lseek(m, 0, os.SEEK_CUR), os.lseek(a, 0, os.SEEK_CUR)), (2, 3))\n\
         want('appending', bool(fcntl.fcntl(a, fcntl.F_GETFL) & os.O_APPEND), True)\n\
         want('appended contents', os.pread(a, 30000, 0), b'hello' + b'\\0' * 20000 + b'end')",
    );
}

/// A memfd holding a script runs with execveat() after a restore too:
/// the fd memfd_create gave does not count as open for writing, which
/// would make exec fail with ETXTBSY (a read-only reopen and a shared
/// mapping of it beside).
#[test]
fn memfd_runs_with_execveat() {
    both(
        "memfd-exec",
        "import mmap\n\
         m = os.memfd_create('script', 0)\n\
         os.write(m, b'#!/bin/sh\\nexit 7\\n')\n\
         ro = os.open('/proc/self/fd/%d' % m, os.O_RDONLY)\n\
         shared = mmap.mmap(m, 16, mmap.MAP_SHARED)\n\
         def run():\n    \
             pid = os.fork()\n    \
             if pid == 0:\n        \
                 try:\n            os.execve(m, ['script'], {})\n        \
                 except OSError as e:\n            os._exit(100 + e.errno)\n    \
             return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n\
         assert run() == 7, run()",
        "want('exit status of the script', run(), 7)\n\
         want('read-only reopen', os.pread(ro, 9, 0), b'#!/bin/sh')\n\
         want('shared mapping', shared[0:9], b'#!/bin/sh')",
    );
}

/// A pseudo-terminal pair whose slave's node /dev/pts/N was given another
/// owner, group and mode: the new pair's node has them too, and the pair
/// carries bytes both ways.
#[test]
fn pty_slave_owner_and_mode() {
    both(
        "pty-owner",
        "import pty, tty\n\
         master, slave = pty.openpty()\n\
         tty.setraw(slave)\n\
         os.fchown(slave, 13333, 44444)\n\
         os.fchmod(slave, 0o604)",
        "st = os.fstat(slave)\n\
         want('owner and group', (st.st_uid, st.st_gid), (13333, 44444))\n\
         want('mode', stat.S_IMODE(st.st_mode), 0o604)\n\
         os.write(master, b'typed\\n')\n\
         want('typed', os.read(slave, 100), b'typed\\n')\n\
         os.write(slave, b'out')\n\
         want('output', os.read(master, 100), b'out')",
    );
}

/// A sparse file deleted while open keeps its holes: only its written
/// block takes space, and SEEK_DATA finds it.
#[test]
fn sparse_deleted_file_keeps_its_holes() {
    both(
        "sparse",
        "p = os.path.join(d, 'sparse')\n\
         f = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)\n\
         os.pwrite(f, b'x', 8 << 20)\n\
         os.unlink(p)",
        "st = os.fstat(f)\n\
         want('size', st.st_size, (8 << 20) + 1)\n\
         want('blocks at most a few', st.st_blocks <= 64, True)\n\
         want('data', os.lseek(f, 0, os.SEEK_DATA) >= (8 << 20) - 4096, True)\n\
         want('byte', os.pread(f, 1, 8 << 20), b'x')\n\
         want('zeros', os.pread(f, 16, 4096), b'\\0' * 16)",
    );
}

/// The audit login uid, which only the task itself may set.
#[test]
fn loginuid() {
    both(
        "loginuid",
        "with open('/proc/self/loginuid', 'w') as f:\n    f.write('4321')",
        "want('loginuid', open('/proc/self/loginuid').read().strip(), '4321')",
    );
}

/// An O_PATH fd (on a file and on a directory): it names the same object,
/// still O_PATH, and works as a dirfd. O_PATH|O_NOFOLLOW fds on symbolic
/// links, one still there and one removed since: each is that link (the
/// same inode for the first), with its target, the removed one removed
/// still and its name free.
#[test]
fn o_path_fds() {
    both(
        "opath",
        "p = os.path.join(d, 'f')\n\
         open(p, 'w').write('x')\n\
         f = os.open(p, os.O_PATH)\n\
         dfd = os.open(d, os.O_PATH | os.O_DIRECTORY)\n\
         import ctypes\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         def target(fd):\n    buf = ctypes.create_string_buffer(4096)\n    n = libc.readlinkat(fd, b'', buf, 4096)\n    return buf.raw[:n] if n >= 0 else 'errno %d' % ctypes.get_errno()\n\
         os.symlink(p, os.path.join(d, 'kept'))\n\
         os.symlink('f', os.path.join(d, 'gone'))\n\
         kept = os.open(os.path.join(d, 'kept'), os.O_PATH | os.O_NOFOLLOW)\n\
         gone = os.open(os.path.join(d, 'gone'), os.O_PATH | os.O_NOFOLLOW)\n\
         os.unlink(os.path.join(d, 'gone'))",
        "want('file', os.fstat(f).st_ino, os.stat(os.path.join(d, 'f')).st_ino)\n\
         want('O_PATH', bool(fcntl.fcntl(f, fcntl.F_GETFL) & os.O_PATH), True)\n\
         want('dirfd', os.stat('f', dir_fd=dfd).st_ino, os.stat(os.path.join(d, 'f')).st_ino)\n\
         want('the link itself', os.fstat(kept).st_ino, os.lstat(os.path.join(d, 'kept')).st_ino)\n\
         want('its target', target(kept), p.encode())\n\
         want('a removed link', (stat.S_ISLNK(os.fstat(gone).st_mode), os.fstat(gone).st_nlink), (True, 0))\n\
         want('the removed link\\'s target', target(gone), b'f')\n\
         want('its name is free', os.path.lexists(os.path.join(d, 'gone')), False)\n\
         want('as /proc shows it', os.readlink('/proc/self/fd/%d' % gone), os.path.join(d, 'gone') + ' (deleted)')",
    );
}

/// A UDP socket bound with IP_FREEBIND to an address this host does not
/// have (a service that starts before its address comes up): bound again
/// there, still with the option; and a UDP and a TCP socket bound so, that
/// turned the option off since (restores used to fail: EADDRNOTAVAIL).
#[test]
fn sockets_bound_with_freebind() {
    both(
        "freebind",
        "import socket\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         u.setsockopt(socket.IPPROTO_IP, 15, 1)\n\
         u.bind(('192.0.2.77', 0))\n\
         name = u.getsockname()\n\
         off = [socket.socket(socket.AF_INET, t) for t in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]\n\
         for o in off:\n    \
             o.setsockopt(socket.IPPROTO_IP, 15, 1)\n    \
             o.bind(('192.0.2.78', 0))\n    \
             o.setsockopt(socket.IPPROTO_IP, 15, 0)\n\
         names = [o.getsockname() for o in off]",
        "want('bound', u.getsockname(), name)\n\
         want('IP_FREEBIND', u.getsockopt(socket.IPPROTO_IP, 15), 1)\n\
         want('bound, IP_FREEBIND off since', [o.getsockname() for o in off], names)\n\
         want('IP_FREEBIND off', [o.getsockopt(socket.IPPROTO_IP, 15) for o in off], [0, 0])",
    );
}

/// A file deleted while open comes back with its modification time.
#[test]
fn deleted_file_keeps_its_mtime() {
    both(
        "mtime",
        "p = os.path.join(d, 'old')\n\
         f = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)\n\
         os.write(f, b'data')\n\
         os.utime(p, (1, 1234567890))\n\
         os.unlink(p)",
        "want('mtime', os.fstat(f).st_mtime, 1234567890)\n\
         want('data', os.pread(f, 10, 0), b'data')",
    );
}

/// A socket's classic BPF filter (SO_ATTACH_FILTER), here one that drops
/// every datagram: the same program is attached after the restore, and a
/// datagram sent to the socket is dropped.
#[test]
fn socket_filter() {
    both(
        "filter",
        "import socket, ctypes\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         u.bind(('127.0.0.1', 0))\n\
         prog = struct.pack('HBBI', 0x06, 0, 0, 0)\n\
         buf = ctypes.create_string_buffer(prog)\n\
         fprog = struct.pack('HL', 1, ctypes.addressof(buf))\n\
         u.setsockopt(socket.SOL_SOCKET, 26, fprog)\n\
         first = u.getsockopt(socket.SOL_SOCKET, 26)",
        "import socket\n\
         want('first word of the filter', u.getsockopt(socket.SOL_SOCKET, 26), first)\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.sendto(b'hello', u.getsockname())\n\
         u.settimeout(0.3)\n\
         try:\n    got = u.recv(10)\nexcept socket.timeout:\n    got = None\n\
         want('datagram through the filter', got, None)",
    );
}

/// A working directory removed while the process is in it: it is in a
/// removed directory again after the restore (made for the restore, then
/// removed), which files cannot be made in. Two fds opened on it and a
/// child in it are in that one directory too (one inode, its mode).
#[test]
fn removed_working_directory() {
    both(
        "rmcwd",
        "os.mkdir(os.path.join(d, 'sub'), 0o710)\n\
         os.chdir(os.path.join(d, 'sub'))\n\
         held = [os.open('.', os.O_RDONLY | os.O_DIRECTORY) for _ in range(2)]\n\
         r, w = os.pipe()\n\
         child = os.fork()\n\
         if child == 0:\n    os.close(w)\n    os.read(r, 1)\n    os._exit(0)\n\
         os.close(r)\n\
         os.rmdir(os.path.join(d, 'sub'))",
        "ino = os.stat('/proc/self/cwd').st_ino\n\
         want('fds on it are the working directory', [os.fstat(f).st_ino for f in held], [ino, ino])\n\
         want('the child is in it too', os.stat('/proc/%d/cwd' % child).st_ino, ino)\n\
         want('mode', stat.S_IMODE(os.stat('.').st_mode), 0o710)\n\
         want('cwd', os.readlink('/proc/self/cwd'), os.path.join(d, 'sub') + ' (deleted)')\n\
         want('links', os.stat('.').st_nlink, 0)\n\
         try:\n    open('x', 'w')\n    made = True\nexcept FileNotFoundError:\n    made = False\n\
         want('a file made in it', made, False)\n\
         want('the path is free', os.path.exists(os.path.join(d, 'sub')), False)",
    );
}

/// A FIFO unlinked while open, with bytes in it, and a device node
/// unlinked while open: both come back unlinked, the FIFO with its bytes.
#[test]
fn unlinked_fifo_and_device_node() {
    both(
        "unlinked",
        "p = os.path.join(d, 'fifo')\n\
         os.mkfifo(p)\n\
         f = os.open(p, os.O_RDWR)\n\
         os.write(f, b'queued')\n\
         os.unlink(p)\n\
         n = os.path.join(d, 'null')\n\
         os.mknod(n, stat.S_IFCHR | 0o666, os.makedev(1, 3))\n\
         dev = os.open(n, os.O_RDWR)\n\
         for fd, mode, owner in ((f, 0o604, 4244), (dev, 0o640, 4242)):\n    \
             os.fchmod(fd, mode)\n    \
             os.fchown(fd, owner, owner + 1)\n\
         os.unlink(n)",
        "want('fifo', stat.S_ISFIFO(os.fstat(f).st_mode), True)\n\
         want('fifo links', os.fstat(f).st_nlink, 0)\n\
         want('fifo name', os.readlink('/proc/self/fd/%d' % f), os.path.join(d, 'fifo') + ' (deleted)')\n\
         os.set_blocking(f, False)\n\
         want('fifo bytes', os.read(f, 100), b'queued')\n\
         want('device', os.fstat(dev).st_rdev, os.makedev(1, 3))\n\
         want('device links', os.fstat(dev).st_nlink, 0)\n\
         want('device writes', os.write(dev, b'x'), 1)\n\
         want('device reads', os.read(dev, 1), b'')\n\
         want('modes and owners', [(stat.S_IMODE(x.st_mode), x.st_uid, x.st_gid) for x in map(os.fstat, (f, dev))], [(0o604, 4244, 4245), (0o640, 4242, 4243)])",
    );
}

/// An epoll registration whose fd was closed after it was added (the file
/// lives on through a dup): it still reports, under its old number, and
/// that number stays closed. Three pipes registered in turn under one
/// number, closed each time (zdtm's epoll), report each its own data, in a
/// second epoll whose own number is the first one's closed target's.
#[test]
fn epoll_registration_of_a_closed_fd() {
    both(
        "epollclosed",
        "import select\n\
         r, w = os.pipe()\n\
         e = select.epoll()\n\
         e.register(r, select.EPOLLIN)\n\
         r2 = os.dup(r)\n\
         os.close(r)\n\
         import ctypes, struct\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         e3 = select.epoll()\n\
         pipes = [os.pipe() for _ in range(3)]\n\
         for i, (pr, pw) in enumerate(pipes):\n    \
             os.dup2(pr, 900)\n    \
             ev = ctypes.create_string_buffer(struct.pack('=IQ', select.EPOLLIN, 1000 + i))\n    \
             assert libc.epoll_ctl(e3.fileno(), 1, 900, ev) == 0, 'epoll_ctl: errno %d' % ctypes.get_errno()\n    \
             os.close(900)\n\
         reused = e3.fileno() == r",
        "import select\n\
         for i in (2, 0):\n    os.write(pipes[i][1], b'y')\n\
         want('three files under one number', sorted(d for d, _ in e3.poll(2)), [1000, 1002])\n\
         os.write(w, b'x')\n\
         want('events', e.poll(2), [(r, select.EPOLLIN)])\n\
         try:\n    os.fstat(r)\n    closed = False\nexcept OSError:\n    closed = True\n\
         want('old number closed, or the second epoll\\'s as before', closed or reused and os.fstat(r).st_ino == os.fstat(e3.fileno()).st_ino, True)\n\
         want('read through the dup', os.read(r2, 1), b'x')",
    );
}

/// A child killed by SIGKILL and not yet waited for: its parent gets that
/// status after the restore.
#[test]
fn zombie_killed_by_a_signal() {
    both(
        "zombie9",
        "pid = os.fork()\n\
         if pid == 0:\n    time.sleep(100)\n    os._exit(0)\n\
         os.kill(pid, signal.SIGKILL)\n\
         time.sleep(0.3)",
        "got, status = os.waitpid(pid, 0)\n\
         want('child', got, pid)\n\
         want('killed by', os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, signal.SIGKILL)",
    );
}

/// Seccomp filters: one set for every thread (SECCOMP_FILTER_FLAG_TSYNC),
/// one of a thread's own and one of the main thread's own, each making one
/// call fail with its own errno. After the restore each thread's calls
/// still fail as its filters say, and no other call does.
#[test]
fn seccomp_filters_of_each_thread() {
    both(
        "seccomp",
        &format!(
            "{SECCOMP}calls = lambda: [errno_of(lambda: os.getpriority(os.PRIO_PROCESS, 0)), errno_of(lambda: os.getpgid(0)), errno_of(lambda: os.getsid(0))]\n\
             denied(140, 77, flags=1)\n\
             asks, answers = queue.Queue(), queue.Queue()\n\
             def worker():\n    \
                 denied(124, 79)\n    \
                 answers.put('ready')\n    \
                 while True:\n        asks.get()\n        answers.put(calls())\n\
             threading.Thread(target=worker, daemon=True).start()\n\
             answers.get()\n\
             denied(121, 78)\n\
             status = lambda: [l for l in open('/proc/self/status').read().splitlines() if l.startswith('Seccomp')]\n\
             before = status()"
        ),
        "want('main thread: getpriority, getpgid, getsid', calls(), [77, 78, 0])\n\
         asks.put(1)\n\
         want('other thread', answers.get(timeout=10), [77, 0, 79])\n\
         want('status', status(), before)",
    );
}

/// A seccomp filter a thread inherited when it was made is one filter with
/// its maker's, as before the dump: a filter set after the restore with
/// SECCOMP_FILTER_FLAG_TSYNC, which needs every thread's chain to be the
/// caller's, is set for both threads.
#[test]
fn seccomp_filter_inherited_by_a_thread_stays_shared() {
    both(
        "seccomp-tsync",
        &format!(
            "{SECCOMP}denied(140, 77)\n\
             asks, answers = queue.Queue(), queue.Queue()\n\
             def worker():\n    \
                 while True:\n        asks.get()\n        answers.put([errno_of(lambda: os.getpriority(os.PRIO_PROCESS, 0)), errno_of(lambda: os.getpgid(0))])\n\
             threading.Thread(target=worker, daemon=True).start()"
        ),
        "want('TSYNC filter set for every thread', deny(121, 78, flags=1), 0)\n\
         asks.put(1)\n\
         want('the other thread: getpriority, getpgid', answers.get(timeout=10), [77, 78])",
    );
}

/// Sockets bound to a network device (SO_BINDTODEVICE, here loopback):
/// a TCP socket not yet connected, a listener, a UDP socket. They stay
/// bound to it, and sockets not bound to one stay unbound.
#[test]
fn sockets_bound_to_a_device() {
    both(
        "bindtodev",
        "import socket\n\
         dev = lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b'\\0')\n\
         t, l, u, free = socket.socket(), socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket()\n\
         for s in (t, l, u):\n    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'lo')\n\
         l.bind(('127.0.0.1', 0))\n\
         l.listen()\n\
         u.bind(('127.0.0.1', 0))",
        "want('devices', [dev(s) for s in (t, l, u, free)], [b'lo', b'lo', b'lo', b''])\n\
         t.connect(l.getsockname())\n\
         c, _ = l.accept()\n\
         t.sendall(b'hi')\n\
         want('data', c.recv(2), b'hi')",
    );
}

/// TCP sockets made but neither listening nor connected yet: one bound
/// with options set, one not bound at all. After the restore the bound one
/// has its address and options, and both can still connect.
#[test]
fn tcp_sockets_not_yet_connected() {
    both(
        "tcpnew",
        "import socket\n\
         b = socket.socket()\n\
         b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         b.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)\n\
         b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n\
         b.bind(('127.0.0.1', 0))\n\
         name = b.getsockname()\n\
         u = socket.socket()",
        "import socket\n\
         want('bound', b.getsockname(), name)\n\
         want('keepalive', b.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)\n\
         want('nodelay', b.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)\n\
         want('reuseaddr', b.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), 1)\n\
         want('unbound', u.getsockname()[1], 0)\n\
         l = socket.socket()\n\
         l.bind(('127.0.0.1', 0))\n\
         l.listen()\n\
         for s in (b, u):\n    s.connect(l.getsockname())\n    c, _ = l.accept()\n    s.sendall(b'hi')\n    want('data', c.recv(2), b'hi')",
    );
}

/// A pidfd of a child that has exited and was reaped: it still names an
/// exited process (readable, Pid -1 in fdinfo, no signal gets through);
/// a second pidfd of it names the same process (same pidfs inode), one of
/// another exited child another.
#[test]
fn pidfd_of_an_exited_process() {
    both(
        "pidfdexit",
        "pid = os.fork()\n\
         if pid == 0:\n    os._exit(0)\n\
         pfd = os.pidfd_open(pid)\n\
         again = os.pidfd_open(pid)\n\
         os.waitpid(pid, 0)\n\
         other = os.fork()\n\
         if other == 0:\n    os._exit(0)\n\
         ofd = os.pidfd_open(other)\n\
         os.waitpid(other, 0)\n\
         ino = lambda f: os.fstat(f).st_ino\n\
         assert ino(pfd) == ino(again) != ino(ofd), (ino(pfd), ino(again), ino(ofd))\n\
         import select\n\
         p = select.poll()\n\
         p.register(pfd, select.POLLIN)\n\
         events = [e for _, e in p.poll(1000)]",
        "want('readable as before', [e for _, e in p.poll(1000)], events)\n\
         want('readable', bool(events and events[0] & select.POLLIN), True)\n\
         info = open('/proc/self/fdinfo/%d' % pfd).read()\n\
         want('Pid', [l.split()[1] for l in info.splitlines() if l.startswith('Pid:')], ['-1'])\n\
         try:\n    signal.pidfd_send_signal(pfd, 0)\n    sent = True\nexcept ProcessLookupError:\n    sent = False\n\
         want('signal sent', sent, False)\n\
         want('one process for both pidfds', ino(pfd) == ino(again), True)\n\
         want('another for the other child', ino(pfd) != ino(ofd), True)",
    );
}

/// Files of /proc directories held open: the process's own (read part
/// way: it reads on from there), its directory, a child's, and that of
/// init, a process outside the tree. Each names the same process after
/// the restore and is the file a fresh open finds.
#[test]
fn proc_files_held_open() {
    both(
        "procfiles",
        "st = os.open('/proc/self/status', os.O_RDONLY)\n\
         head = os.read(st, 6)\n\
         pd = os.open('/proc/self', os.O_RDONLY | os.O_DIRECTORY)\n\
         r, w = os.pipe()\n\
         child = os.fork()\n\
         if child == 0:\n    os.close(w)\n    os.read(r, 1)\n    os._exit(0)\n\
         os.close(r)\n\
         cs = os.open('/proc/%d/stat' % child, os.O_RDONLY)\n\
         init = os.open('/proc/1/status', os.O_RDONLY)",
        "want('read on from where it was', os.read(st, 8), open('/proc/self/status', 'rb').read()[6:14])\n\
         want('own status', os.fstat(st).st_ino, os.stat('/proc/self/status').st_ino)\n\
         want('own directory', os.fstat(pd).st_ino, os.stat('/proc/%d' % os.getpid()).st_ino)\n\
         want('listed', 'status' in os.listdir(pd), True)\n\
         want('child stat', os.pread(cs, 100, 0).split()[0], str(child).encode())\n\
         want('init', [l for l in os.pread(init, 4096, 0).split(b'\\n') if l.startswith(b'Pid:')], [b'Pid:\\t1'])\n\
         want('init status', os.fstat(init).st_ino, os.stat('/proc/1/status').st_ino)",
    );
}

/// A virtual console and the system console held open (by nodes of their
/// own, as a program may make them) are opened again by path, and the
/// console that was a session's controlling terminal is that again, with
/// the same foreground group (a child's). Needs a kernel with virtual
/// consoles (CONFIG_VT): the set-up fails saying so otherwise.
#[test]
fn fixed_terminals_held_open() {
    both(
        "vtcons",
        "os.setsid()\n\
         def node(name, major, minor):\n    \
             path = os.path.join(d, name)\n    \
             os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))\n    \
             try:\n        return os.open(path, os.O_RDONLY)\n    \
             except OSError as e:\n        raise SystemExit('cannot open %s (%d:%d), needed by this test: %s' % (name, major, minor, e))\n\
         vt = node('tty5', 4, 5)\n\
         con = node('console', 5, 1)\n\
         r, w = os.pipe()\n\
         child = os.fork()\n\
         if child == 0:\n    os.setpgid(0, 0)\n    os.close(w)\n    os.read(r, 1)\n    os._exit(0)\n\
         os.close(r)\n\
         signal.signal(signal.SIGTTOU, signal.SIG_IGN)\n\
         while os.getpgid(child) != child:\n    time.sleep(0.01)\n\
         os.tcsetpgrp(vt, child)\n\
         def ctty():\n    return int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[4])\n\
         want('set-up: controlling terminal', ctty(), os.makedev(4, 5))",
        "want('virtual console', os.fstat(vt).st_rdev, os.makedev(4, 5))\n\
         want('system console', os.fstat(con).st_rdev, os.makedev(5, 1))\n\
         want('controlling terminal', ctty(), os.makedev(4, 5))\n\
         want('foreground group', os.tcgetpgrp(vt), child)\n\
         try:\n    os.close(os.open('/dev/tty', os.O_RDONLY))\n    err = None\nexcept OSError as e:\n    err = e.errno\n\
         want('/dev/tty opens (it fails with ENXIO without a controlling terminal)', err, None)",
    );
}

/// Fds on namespaces the process is in (its network namespace, its
/// children's PID namespace), opened through /proc/self/ns: after the
/// restore each is the namespace the process is in (same inode as its
/// /proc/self/ns file), and setns(2) takes it.
#[test]
fn namespaces_held_open() {
    both(
        "nsfds",
        "import ctypes\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         net = os.open('/proc/self/ns/net', os.O_RDONLY)\n\
         pidc = os.open('/proc/self/ns/pid_for_children', os.O_RDONLY)\n\
         uts = os.open('/proc/%d/ns/uts' % os.getpid(), os.O_RDONLY | os.O_CLOEXEC)",
        "ino = lambda name: os.stat('/proc/self/ns/' + name).st_ino\n\
         want('network namespace', os.fstat(net).st_ino, ino('net'))\n\
         want('children\\'s PID namespace', os.fstat(pidc).st_ino, ino('pid_for_children'))\n\
         want('UTS namespace', os.fstat(uts).st_ino, ino('uts'))\n\
         want('close-on-exec', bool(fcntl.fcntl(uts, fcntl.F_GETFD) & fcntl.FD_CLOEXEC), True)\n\
         want('setns into it', libc.setns(net, 0x40000000), 0)",
    );
}

/// Pseudo-terminal slaves whose master was closed (hung up, node gone),
/// opened twice: both are hung up again after the restore (reads end,
/// writes fail with EIO), shown as removed; a pair made since, which may
/// have the same index, still works.
#[test]
fn hung_up_pseudo_terminal() {
    both(
        "hungup",
        "import pty, errno\n\
         m, s = pty.openpty()\n\
         s2 = os.open(os.ttyname(s), os.O_RDWR | os.O_NOCTTY)\n\
         os.close(m)\n\
         m2, s3 = pty.openpty()\n\
         def write_errno(fd):\n    try:\n        os.write(fd, b'x')\n        return 0\n    except OSError as e:\n        return e.errno\n\
         assert (os.read(s, 4), write_errno(s)) == (b'', errno.EIO)",
        "for f in (s, s2):\n    \
             want('fd %d reads end' % f, os.read(f, 4), b'')\n    \
             want('fd %d write' % f, write_errno(f), errno.EIO)\n    \
             want('fd %d a removed slave' % f, os.readlink('/proc/self/fd/%d' % f).endswith(' (deleted)'), True)\n\
         os.write(m2, b'hi\\n')\n\
         want('the pair made since', os.read(s3, 16), b'hi\\n')",
    );
}

/// Datagram sockets of other protocols than UDP: a UDP-Lite pair (bound,
/// connected, each with a checksum coverage) and ICMP ping sockets, one
/// bound to an ident and connected to 127.0.0.1, one unbound. After the
/// restore they are of the same protocol, names and coverage as before,
/// and carry datagrams (an echo request gets its reply). Ping sockets need
/// net.ipv4.ping_group_range to hold root's group: set for the test (as
/// criu's zdtm does) when it does not, and set back after.
#[test]
fn udplite_and_ping_sockets() {
    struct Range(Option<String>);
    impl Drop for Range {
        fn drop(&mut self) {
            if let Some(old) = &self.0 {
                let _ = fs::write("/proc/sys/net/ipv4/ping_group_range", old);
            }
        }
    }
    let path = "/proc/sys/net/ipv4/ping_group_range";
    let old = fs::read_to_string(path).expect("this test needs ICMP ping sockets (net.ipv4.ping_group_range)");
    let first: i64 = old.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(1);
    let last: i64 = old.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    let _range = match first <= 0 && 0 <= last {
        true => Range(None),
        false => {
            fs::write(path, "0 0").expect("setting net.ipv4.ping_group_range for root");
            Range(Some(old.trim().to_owned()))
        }
    };
    both(
        "dgramprotos",
        "import socket\n\
         UDPLITE = 136\n\
         a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, UDPLITE)\n\
         a.bind(('127.0.0.1', 0))\n\
         b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, UDPLITE)\n\
         b.bind(('127.0.0.1', 0))\n\
         b.connect(a.getsockname())\n\
         a.setsockopt(UDPLITE, 11, 20)\n\
         b.setsockopt(UDPLITE, 10, 20)\n\
         ping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)\n\
         ping.bind(('127.0.0.1', 4321))\n\
         ping.connect(('127.0.0.1', 0))\n\
         loose = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)\n\
         names = [x.getsockname() for x in (a, b, ping, loose)] + [b.getpeername()]",
        "import socket\n\
         want('protocols', [x.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) for x in (a, b, ping, loose)], [136, 136, 1, 1])\n\
         want('names', [x.getsockname() for x in (a, b, ping, loose)] + [b.getpeername()], names)\n\
         want('coverage', (a.getsockopt(UDPLITE, 11), b.getsockopt(UDPLITE, 10)), (20, 20))\n\
         b.send(b'lite')\n\
         a.settimeout(5)\n\
         want('UDP-Lite datagram', a.recvfrom(16), (b'lite', b.getsockname()))\n\
         ping.send(struct.pack('!BBHHH', 8, 0, 0, 0, 7) + b'echo')  # connected: no address given\n\
         ping.settimeout(5)\n\
         reply = ping.recv(64)\n\
         want('echo reply', (reply[0], reply[-4:]), (0, b'echo'))",
    );
}

/// Raw IP sockets: an ICMP one bound to 127.0.0.1, connected, with an
/// ICMP filter; a UDP-protocol one with IP_HDRINCL; an IPv6 one with a
/// checksum offset and an ICMPv6 filter (a 32-byte struct). After the
/// restore each is raw, of its protocol, bound and filtering as before,
/// and the ICMP one sends an echo request to itself and reads it back.
#[test]
fn raw_sockets() {
    both(
        "rawsocks",
        "import socket\n\
         def checksum(b):\n    \
             s = sum(struct.unpack('!%dH' % (len(b) // 2), b))\n    \
             s = (s >> 16) + (s & 0xffff)\n    \
             return ~(s + (s >> 16)) & 0xffff\n\
         icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n\
         icmp.bind(('127.0.0.1', 0))\n\
         icmp.connect(('127.0.0.1', 0))\n\
         icmp.setsockopt(255, 1, struct.pack('I', 1 << 13))\n\
         hdr = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)\n\
         hdr.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)\n\
         six = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP)\n\
         six.setsockopt(socket.IPPROTO_IPV6, 7, 6)\n\
         icmp6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)\n\
         filter6 = bytes(range(1, 33))\n\
         icmp6.setsockopt(socket.IPPROTO_ICMPV6, 1, filter6)\n\
         socks = (icmp, hdr, six, icmp6)\n\
         names = [x.getsockname() for x in socks]",
        "import socket\n\
         want('raw', [x.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) for x in socks], [socket.SOCK_RAW] * 4)\n\
         want('protocols', [x.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) for x in socks], [1, 17, 17, 58])\n\
         want('names', [x.getsockname() for x in socks], names)\n\
         want('ICMP filter', icmp.getsockopt(255, 1, 4), struct.pack('I', 1 << 13))\n\
         want('IP_HDRINCL', hdr.getsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL), 1)\n\
         want('IPV6_CHECKSUM', six.getsockopt(socket.IPPROTO_IPV6, 7), 6)\n\
         want('ICMPv6 filter', icmp6.getsockopt(socket.IPPROTO_ICMPV6, 1, 32), filter6)\n\
         body = struct.pack('!BBHHH', 8, 0, 0, 0x4242, 1) + b'raw-echo'\n\
         body = body[:2] + struct.pack('!H', checksum(body)) + body[4:]\n\
         icmp.send(body)  # connected: no address given\n\
         icmp.settimeout(5)\n\
         got = icmp.recv(128)\n\
         want('the echo request read back', got[(got[0] & 15) * 4:][-8:], b'raw-echo')",
    );
}

/// Netlink sockets: an rtnetlink one bound by the kernel (autobind), with
/// extended acks and a set receive buffer; one in two rtnetlink groups; a
/// NETLINK_USERSOCK pair, one bound to a port id of its choosing, the
/// other connected to it. After the restore each has its port id, groups
/// and options, the rtnetlink one answers a request, and the pair carries
/// a message.
#[test]
fn netlink_sockets() {
    both(
        "netlink",
        "import socket\n\
         NL = socket.AF_NETLINK\n\
         rt = socket.socket(NL, socket.SOCK_RAW, 0)\n\
         rt.bind((0, 0))\n\
         rt.setsockopt(270, 11, 1)\n\
         rt.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)\n\
         rcvbuf = rt.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)\n\
         mon = socket.socket(NL, socket.SOCK_RAW, 0)\n\
         mon.bind((0, 1))\n\
         mon.setsockopt(270, 1, 5)\n\
         a = socket.socket(NL, socket.SOCK_RAW, 2)\n\
         a.bind((0x7f001234, 0))\n\
         b = socket.socket(NL, socket.SOCK_DGRAM, 2)\n\
         b.connect((0x7f001234, 0))\n\
         socks = (rt, mon, a, b)\n\
         names = [x.getsockname() for x in socks]\n\
         groups = [x.getsockopt(270, 9, 8) for x in socks]\n\
         def nlmsg(kind, flags, payload=b''):\n    return struct.pack('=IHHII', 16 + len(payload), kind, flags, 7, 0) + payload",
        "import socket\n\
         want('port ids', [x.getsockname() for x in socks], names)\n\
         want('groups', [x.getsockopt(270, 9, 8) for x in socks], groups)\n\
         want('types', [x.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) for x in socks], [3, 3, 3, 2])\n\
         want('protocols', [x.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) for x in socks], [0, 0, 2, 2])\n\
         want('extended acks', rt.getsockopt(270, 11), 1)\n\
         want('receive buffer', rt.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), rcvbuf)\n\
         rt.send(nlmsg(18, 0x301, b'\\0' * 16))  # RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP\n\
         rt.settimeout(5)\n\
         reply = rt.recv(65536)\n\
         want('rtnetlink answers', struct.unpack('=IHHII', reply[:16])[1] in (16, 3), True)\n\
         b.send(nlmsg(0x20, 0, b'hello!!!'))\n\
         a.settimeout(5)\n\
         want('the pair carries a message', a.recv(64)[16:], b'hello!!!')",
    );
}

/// Packet sockets: a raw one on every interface with TPACKET_V2, auxdata
/// and an all-multicast membership on lo; a datagram one for IPv4 bound
/// to lo with a reserve, origdev and a fanout group; two of the obsolete
/// type SOCK_PACKET, one bound to lo. After the restore each has its
/// settings, membership, group and device, and the bound datagram one gets
/// the IPv4 packet of a UDP datagram sent on lo.
#[test]
fn packet_sockets() {
    both(
        "packet",
        "import socket\n\
         SOL_PACKET, ETH_P_IP = 263, 0x0800\n\
         lo = socket.if_nametoindex('lo')\n\
         raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)\n\
         raw.setsockopt(SOL_PACKET, 10, 1)\n\
         raw.setsockopt(SOL_PACKET, 8, 1)\n\
         raw.setsockopt(SOL_PACKET, 1, struct.pack('iHH8s', lo, 2, 0, b''))\n\
         ip = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))\n\
         ip.bind(('lo', ETH_P_IP))\n\
         ip.setsockopt(SOL_PACKET, 12, 32)\n\
         ip.setsockopt(SOL_PACKET, 9, 1)\n\
         ip.setsockopt(SOL_PACKET, 18, 0x4242)\n\
         names = [x.getsockname()[:2] for x in (raw, ip)]\n\
         allmulti = lambda: int(open('/sys/class/net/lo/flags').read(), 16) & 0x200\n\
         import ctypes\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         def spkt_name(x):\n    \
             buf, n = ctypes.create_string_buffer(16), ctypes.c_uint(16)\n    \
             assert libc.getsockname(x.fileno(), buf, ctypes.byref(n)) == 0\n    \
             return buf.raw[2:16].rstrip(b'\\0')\n\
         spkt = [socket.socket(socket.AF_PACKET, 10, socket.htons(3)) for _ in range(2)]\n\
         assert libc.bind(spkt[0].fileno(), struct.pack('H14s', 17, b'lo'), 16) == 0, 'bind: errno %d' % ctypes.get_errno()",
        "import socket\n\
         want('names', [x.getsockname()[:2] for x in (raw, ip)], names)\n\
         want('types', [x.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) for x in (raw, ip)], [3, 2])\n\
         want('version, auxdata', (raw.getsockopt(SOL_PACKET, 10), raw.getsockopt(SOL_PACKET, 8)), (1, 1))\n\
         want('reserve, origdev', (ip.getsockopt(SOL_PACKET, 12), ip.getsockopt(SOL_PACKET, 9)), (32, 1))\n\
         want('fanout group', ip.getsockopt(SOL_PACKET, 18), 0x4242)\n\
         want('all-multicast on lo', allmulti(), 0x200)\n\
         want('SOCK_PACKET sockets', [(x.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE), spkt_name(x)) for x in spkt], [(10, b'lo'), (10, b'')])\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         ip.settimeout(5)\n\
         for _ in range(50):\n    \
             u.sendto(b'packet-probe', ('127.0.0.1', 9))\n    \
             got = ip.recv(2048)\n    \
             if got.endswith(b'packet-probe'):\n        break\n\
         want('an IPv4 packet on lo', got[-12:], b'packet-probe')",
    );
}

/// An epoll instance passed in flight on a unix datagram socket and closed
/// by its sender (zdtm scm05): one registration under a number closed
/// since (its pipe held at another number), one edge-triggered on an
/// eventfd. After the restore the process receives it, its registrations
/// are under the same numbers, and it reports both files ready.
#[test]
fn epoll_passed_in_flight() {
    both(
        "epollflight",
        "import socket, select\n\
         a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         r, w = os.pipe()\n\
         held = os.dup(r)\n\
         ev = os.eventfd(0)\n\
         ep = select.epoll()\n\
         ep.register(r, select.EPOLLIN)\n\
         ep.register(ev, select.EPOLLIN | select.EPOLLET)\n\
         os.close(r)\n\
         socket.send_fds(a, [b'epoll'], [ep.fileno()])\n\
         def registered(e):\n    \
             return sorted(tuple(l.split()[1:6:2]) for l in open('/proc/self/fdinfo/%d' % e) if l.startswith('tfd:'))\n\
         before = registered(ep.fileno())\n\
         ep.close()",
        "import socket, select\n\
         msg, fds, _, _ = socket.recv_fds(b, 16, 1)\n\
         want('message', (msg, len(fds)), (b'epoll', 1))\n\
         want('registrations', registered(fds[0]), before)\n\
         want('under', sorted(int(t[0]) for t in before), sorted([r, ev]))\n\
         os.write(w, b'x')\n\
         os.eventfd_write(ev, 1)\n\
         got = select.epoll.fromfd(fds[0]).poll(1)\n\
         want('ready', sorted(fd for fd, _ in got), sorted([r, ev]))",
    );
}

/// One open file description passed in flight twice, held by no process:
/// an eventfd in two messages, a file twice in one, both closed by the
/// sender. After the restore each pair is one description again: what is
/// written through one eventfd is read through the other, a seek through
/// one file moves the other.
#[test]
fn one_description_passed_twice_in_flight() {
    both(
        "twiceflight",
        "import socket\n\
         a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         ev = os.eventfd(3)\n\
         f = os.open(os.path.join(d, 'twice'), os.O_RDWR | os.O_CREAT)\n\
         os.write(f, b'0123456789')\n\
         os.lseek(f, 2, os.SEEK_SET)\n\
         socket.send_fds(a, [b'one'], [ev])\n\
         socket.send_fds(a, [b'two'], [ev, f, f])\n\
         os.close(ev)\n\
         os.close(f)",
        "import socket\n\
         _, one, _, _ = socket.recv_fds(b, 16, 1)\n\
         _, two, _, _ = socket.recv_fds(b, 16, 3)\n\
         os.eventfd_write(one[0], 4)\n\
         want('one eventfd', os.eventfd_read(two[0]), 7)\n\
         want('file offset', os.lseek(two[1], 0, os.SEEK_CUR), 2)\n\
         os.lseek(two[2], 6, os.SEEK_SET)\n\
         want('one file', os.read(two[1], 2), b'67')",
    );
}

/// A working directory in the /proc directory of a process that has
/// exited (a child's, entered before it was killed and reaped): after the
/// restore it is still such a directory, of the same pid (getcwd fails
/// with ENOENT, listing it with ESRCH, /proc/self/cwd reads as before).
#[test]
fn working_directory_in_proc_of_an_exited_process() {
    both(
        "unhashed",
        "child = os.fork()\n\
         if child == 0:\n    signal.pause()\n\
         os.chdir('/proc/%d' % child)\n\
         os.kill(child, signal.SIGKILL)\n\
         os.waitpid(child, 0)\n\
         link = os.readlink('/proc/self/cwd')\n\
         def errno_of(f):\n    \
             try:\n        f(); return 0\n    \
             except OSError as e:\n        return e.errno\n\
         before = (errno_of(os.getcwd), errno_of(lambda: os.listdir('.')))",
        "import errno\n\
         want('cwd link', os.readlink('/proc/self/cwd'), link)\n\
         want('getcwd, listdir', (errno_of(os.getcwd), errno_of(lambda: os.listdir('.'))), (errno.ENOENT, errno.ESRCH))\n\
         want('as before', before, (errno.ENOENT, errno.ESRCH))",
    );
}

/// Packet sockets with memory-mapped rings (a capture tool's: libpcap
/// uses TPACKET_V3, older ones V2): after the restore each socket has its
/// rings again, mapped where they were (the mapping is of the new socket),
/// and a frame sent on lo arrives in the receive ring the process reads.
#[test]
fn packet_socket_rings() {
    both(
        "ring",
        "import socket, mmap, ctypes\n\
         SOL_PACKET = 263\n\
         rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))\n\
         rx.setsockopt(SOL_PACKET, 10, 1)\n\
         rx.setsockopt(SOL_PACKET, 5, struct.pack('IIII', 4096, 2, 2048, 4))\n\
         rx.bind(('lo', 0x0800))\n\
         ring = mmap.mmap(rx.fileno(), 8192)\n\
         tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)\n\
         tx.setsockopt(SOL_PACKET, 10, 2)\n\
         tx.setsockopt(SOL_PACKET, 13, struct.pack('IIIIIII', 8192, 1, 1024, 8, 0, 0, 0))\n\
         tring = mmap.mmap(tx.fileno(), 8192, flags=mmap.MAP_PRIVATE)\n\
         at = [ctypes.addressof(ctypes.c_char.from_buffer(m)) for m in (ring, tring)]\n\
         def mapped(addr):\n    \
             for line in open('/proc/self/maps'):\n        \
                 f = line.split()\n        \
                 if int(f[0].split('-')[0], 16) == addr:\n            return f[0], f[5]\n\
         before = [mapped(a)[0] for a in at]",
        "import socket, errno\n\
         want('mappings', [mapped(a) for a in at], [(r, 'socket:[%d]' % os.fstat(x.fileno()).st_ino) for r, x in zip(before, (rx, tx))])\n\
         try:\n    rx.setsockopt(SOL_PACKET, 10, 0); busy = 0\n\
         except OSError as e:\n    busy = e.errno\n\
         want('a ring set up (PACKET_VERSION is EBUSY)', busy, errno.EBUSY)\n\
         want('versions', (rx.getsockopt(SOL_PACKET, 10), tx.getsockopt(SOL_PACKET, 10)), (1, 2))\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         got = False\n\
         for _ in range(100):\n    \
             u.sendto(b'ring-probe', ('127.0.0.1', 9))\n    \
             time.sleep(0.02)\n    \
             for k in range(4):\n        \
                 status, n, snap, mac, net = struct.unpack_from('IIIHH', ring, k * 2048)\n        \
                 if status & 1:\n            \
                     got = got or ring[k * 2048 + net:k * 2048 + net + snap].endswith(b'ring-probe')\n            \
                     ring[k * 2048:k * 2048 + 4] = bytes(4)\n    \
             if got:\n        break\n\
         want('a frame in the receive ring', got, True)",
    );
}

/// A process in a time namespace of its own (started by `unshare --time`
/// with clock offsets), with a child in it: after the restore both are in
/// one time namespace again, with the same offsets, not stasis's, and the
/// monotonic and boot-time clocks go on from where they were (well past
/// the offsets), not from the host's.
#[test]
fn time_namespace_of_its_own() {
    let name = "timens";
    let setup = "open(os.path.join(d, 'pid'), 'w').write(str(os.getpid()))\n\
        offsets = open('/proc/self/timens_offsets').read()\n\
        before = (time.clock_gettime(time.CLOCK_MONOTONIC), time.clock_gettime(time.CLOCK_BOOTTIME))\n\
        r, w = os.pipe()\n\
        child = os.fork()\n\
        if child == 0:\n    os.close(w)\n    os.read(r, 1)\n    os._exit(0)\n\
        os.close(r)";
    let check = "want('offsets', open('/proc/self/timens_offsets').read(), offsets)\n\
        want('not the host\\'s', os.readlink('/proc/self/ns/time') != open(os.path.join(d, 'hostns')).read(), True)\n\
        want('the child in it', os.readlink('/proc/%d/ns/time' % child), os.readlink('/proc/self/ns/time'))\n\
        now = (time.clock_gettime(time.CLOCK_MONOTONIC), time.clock_gettime(time.CLOCK_BOOTTIME))\n\
        want('clocks go on', [b <= n < b + 600 for b, n in zip(before, now)], [True, True])\n\
        want('monotonic past its offset', now[0] > 86400, True)";
    for leave_running in [false, true] {
        let label = if leave_running { "timens-lr" } else { name };
        let dir = tempdir(label);
        let path = dir.path().join("state.py");
        fs::write(&path, script(setup, check)).unwrap();
        let host = fs::read_link("/proc/self/ns/time").unwrap();
        fs::write(dir.path().join("hostns"), host.to_string_lossy().as_bytes()).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--time", "--monotonic", "86400", "--boottime", "172800", "--fork"]);
        cmd.arg(python3()).arg("-I").arg(&path).arg(dir.path());
        let outer = Spawned::start(label, cmd, dir);
        let ready = || outer.dir.join("ready").exists().then_some(());
        outer.wait_for(Duration::from_secs(30), "DIR/ready (is unshare --time there?)", ready);
        let pid: i32 = fs::read_to_string(outer.dir.join("pid")).unwrap().trim().parse().unwrap();
        let p = Spawned::adopt(label, pid, &outer.dir);
        dump_then(label, p, leave_running, |mut p| {
            assert_eq!(result(&p).trim(), "ok", "{label}\n{}", p.log());
            p.wait_exit(Duration::from_secs(30));
        });
        drop(outer);
    }
}

/// A process with tens of thousands of mappings (zdtm maps06's) is
/// restored at once after its kill-mode dump: its pid is freed a moment
/// after its /proc entry goes once it is reaped (longer for such a process),
/// and the restore waits for that instead of failing with EEXIST. Every
/// page holds what it held.
#[test]
fn restore_right_after_the_dump_of_a_process_with_many_mappings() {
    let name = "manymaps";
    let setup = format!(
        "{MMAP}\
         page = os.sysconf('SC_PAGESIZE')\n\
         f = os.open(os.path.join(d, 'file'), os.O_RDWR | os.O_CREAT, 0o600)\n\
         os.ftruncate(f, page)\n\
         n = 10240\n\
         start = mmap(page * n * 3, 0, 0x22)\n\
         for i in range(n):\n    \
             a = libc.mmap(start + i * 3 * page, page, 3, 0x12, f, 0)\n    \
             ctypes.c_int.from_address(a).value = i * 2\n    \
             b = libc.mmap(start + (i * 3 + 1) * page, page, 3, 0x32, -1, 0)\n    \
             ctypes.c_int.from_address(b).value = i\n\
         def wrong():\n    \
             return [i for i in range(n) if ctypes.c_int.from_address(start + i * 3 * page).value != i * 2\n            \
                     or ctypes.c_int.from_address(start + (i * 3 + 1) * page).value != i]"
    );
    let check = "want('pages not as they were', wrong()[:5], [])";
    // An orphan, as a daemon is: PID 1 reaps it once it is killed.
    let dir = tempdir(name);
    let path = dir.path().join("state.py");
    fs::write(&path, script(&setup, check)).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(r#""$0" -I "$1" "$2" & echo $! > "$2/pid""#).arg(python3()).arg(&path).arg(dir.path());
    let mut shell = Spawned::start(name, cmd, dir);
    shell.wait_exit(Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !shell.dir.join("ready").exists() {
        assert!(std::time::Instant::now() < deadline, "no DIR/ready\n{}", shell.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid: i32 = fs::read_to_string(shell.dir.join("pid")).unwrap().trim().parse().unwrap();
    let images = tempdir("manymaps-img");
    dump_ok(pid, images.path(), &[]);
    // Restored as soon as it is gone (or a zombie: the restore waits).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while util::workload::is_alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    restore_ok(pid, images.path());
    let mut restored = Spawned::adopt(&format!("{name} (restored)"), pid, &shell.dir);
    assert_eq!(result(&restored).trim(), "ok", "{}", restored.log());
    restored.wait_exit(Duration::from_secs(30));
}

/// Children in a time namespace their parent made for them and then left
/// (unshare, offsets written, two forks, setns back: zdtm timens_nested),
/// holding an fd on the parent's namespace their parent closed: after the
/// restore both children are in one namespace with those offsets, their
/// fd on the parent's, the parent in its own, its children's namespace its
/// own again.
#[test]
fn children_in_a_time_namespace_their_parent_left() {
    both(
        "timens-kids",
        "import ctypes\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         own = os.open('/proc/self/ns/time', os.O_RDONLY)\n\
         assert libc.unshare(0x80) == 0, 'unshare(CLONE_NEWTIME): errno %d' % ctypes.get_errno()\n\
         open('/proc/self/timens_offsets', 'w').write('monotonic 3600 0\\n')\n\
         r, w = os.pipe()\n\
         kids = []\n\
         # The children inherit `own`: an fd on their parent's namespace.\n\
         for _ in range(2):\n    \
             pid = os.fork()\n    \
             if pid == 0:\n        os.close(w)\n        os.read(r, 1)\n        os._exit(0)\n    \
             kids.append(pid)\n\
         os.close(r)\n\
         assert libc.setns(own, 0x80) == 0, 'setns: errno %d' % ctypes.get_errno()\n\
         os.close(own)  # the children hold it alone, as in zdtm's timens_nested\n\
         ns = lambda pid, name='time': os.readlink('/proc/%d/ns/%s' % (pid, name))\n\
         offsets = open('/proc/%d/timens_offsets' % kids[0]).read()",
        "me = os.getpid()\n\
         want('children in one namespace', ns(kids[0]), ns(kids[1]))\n\
         want('not the parent\\'s', ns(kids[0]) != ns(me), True)\n\
         want('its offsets', open('/proc/%d/timens_offsets' % kids[0]).read(), offsets)\n\
         want('the parent\\'s children\\'s namespace', ns(me, 'time_for_children'), ns(me))\n\
         want('the children\\'s fd on their parent\\'s namespace', os.readlink('/proc/%d/fd/%d' % (kids[1], own)), ns(me))\n\
         want('the parent in the host\\'s', open('/proc/self/timens_offsets').read().split(), ['monotonic', '0', '0', 'boottime', '0', '0'])",
    );
}

/// A connected UDP socket shut down for writing stays so (a send fails
/// with EPIPE), and still receives.
#[test]
fn udp_shut_down_for_writing() {
    both(
        "udpshut",
        "import socket\n\
         peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         peer.bind(('127.0.0.1', 0))\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         u.bind(('127.0.0.1', 0))\n\
         u.connect(peer.getsockname())\n\
         u.shutdown(socket.SHUT_WR)",
        "import errno\n\
         try:\n    u.send(b'x')\n    err = None\nexcept OSError as e:\n    err = e.errno\n\
         want('send after SHUT_WR', err, errno.EPIPE)\n\
         peer.sendto(b'in', u.getsockname())\n\
         u.settimeout(2)\n\
         want('receives', u.recv(10), b'in')",
    );
}

/// A unix listener bound to a relative path (in its working directory): it
/// has that relative name again, its file is there, and it accepts. A
/// datagram socket bound to a relative path keeps the message a socket
/// since closed sent it, and another connected to it by that name still
/// reaches it.
#[test]
fn unix_socket_bound_to_a_relative_path() {
    both(
        "relunix",
        "import socket\n\
         os.chdir(d)\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind('rel.sock')\n\
         s.listen()\n\
         g = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         g.bind('rel.dgram')\n\
         tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         tx.sendto(b'queued', 'rel.dgram')\n\
         tx.close()\n\
         c2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         c2.connect('rel.dgram')",
        "import socket\n\
         g.settimeout(2)\n\
         want('queued datagram of a closed sender', g.recv(16), b'queued')\n\
         want('peer of the connected one', c2.getpeername(), 'rel.dgram')\n\
         c2.send(b'again')\n\
         want('sent by the connected one', g.recv(16), b'again')\n\
         want('name', s.getsockname(), 'rel.sock')\n\
         want('file', stat.S_ISSOCK(os.stat(os.path.join(d, 'rel.sock')).st_mode), True)\n\
         c = socket.socket(socket.AF_UNIX)\n\
         c.connect(os.path.join(d, 'rel.sock'))\n\
         a, _ = s.accept()\n\
         c.sendall(b'hi')\n\
         want('data', a.recv(2), b'hi')",
    );
}

/// Unix sockets bound to relative paths in a directory the process has
/// left since (its working directory is another now): a listener whose
/// file is still there (same relative name, its file there with its mode,
/// it accepts through it), and a datagram socket whose file was removed
/// and a FIFO made at its path, with a socket connected to it (its name,
/// the peer's name, a message carried; the FIFO untouched, its bytes).
#[test]
fn unix_sockets_bound_relative_to_a_directory_left_since() {
    both(
        "relleft",
        "import socket\n\
         sub = os.path.join(d, 'sub')\n\
         os.mkdir(sub)\n\
         os.chdir(sub)\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind('left.sock')\n\
         os.chmod('left.sock', 0o640)\n\
         s.listen()\n\
         g = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         g.bind('ghost.sock')\n\
         c2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         c2.connect('ghost.sock')\n\
         os.unlink('ghost.sock')\n\
         os.mkfifo('ghost.sock')\n\
         ff = os.open('ghost.sock', os.O_RDWR)\n\
         os.write(ff, b'fifo')\n\
         os.chdir('/')",
        "import socket\n\
         want('cwd', os.getcwd(), '/')\n\
         want('names', (s.getsockname(), g.getsockname(), c2.getpeername()), ('left.sock', 'ghost.sock', 'ghost.sock'))\n\
         st = os.stat(os.path.join(sub, 'left.sock'))\n\
         want('listener file', (stat.S_ISSOCK(st.st_mode), stat.S_IMODE(st.st_mode)), (True, 0o640))\n\
         want('the FIFO at the removed one', stat.S_ISFIFO(os.stat(os.path.join(sub, 'ghost.sock')).st_mode), True)\n\
         want('its bytes', os.read(ff, 4), b'fifo')\n\
         want('nothing else left', sorted(os.listdir(sub)), ['ghost.sock', 'left.sock'])\n\
         c2.send(b'ghostly')\n\
         g.settimeout(2)\n\
         want('a message to the removed one', g.recv(16), b'ghostly')\n\
         c = socket.socket(socket.AF_UNIX)\n\
         c.connect(os.path.join(sub, 'left.sock'))\n\
         a, _ = s.accept()\n\
         c.sendall(b'hi')\n\
         want('data', a.recv(2), b'hi')",
    );
}

/// A unix listener whose socket file was removed after the bind: it keeps
/// its name, and no file is left at the path after the restore.
#[test]
fn unix_socket_whose_file_was_removed() {
    both(
        "unlinkedsock",
        "import socket\n\
         p = os.path.join(d, 'gone.sock')\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind(p)\n\
         s.listen()\n\
         os.unlink(p)",
        "want('name', s.getsockname(), os.path.join(d, 'gone.sock'))\n\
         want('no file', os.path.exists(os.path.join(d, 'gone.sock')), False)",
    );
}

/// Two TCP listeners sharing a port with SO_REUSEPORT: both listen on it
/// again, and connections to it are accepted.
#[test]
fn listeners_sharing_a_port() {
    both(
        "reuseport",
        "import socket\n\
         a = socket.socket()\n\
         a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
         a.bind(('127.0.0.1', 0))\n\
         a.listen()\n\
         port = a.getsockname()[1]\n\
         b = socket.socket()\n\
         b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
         b.bind(('127.0.0.1', port))\n\
         b.listen()",
        "import socket, select\n\
         want('ports', (a.getsockname()[1], b.getsockname()[1]), (port, port))\n\
         cs = [socket.create_connection(('127.0.0.1', port)) for _ in range(8)]\n\
         ready = set()\n\
         for _ in range(50):\n    r, _, _ = select.select([a, b], [], [], 0.1)\n    for s in r:\n        s.accept()\n        ready.add(s.fileno())\n    if len(ready) == 2:\n        break\n\
         want('both accept', len(ready) >= 1, True)",
    );
}

/// A shared mapping of /dev/zero (shared anonymous memory by another
/// name) and unix datagram sockets connected in a chain (a -> b -> c),
/// with a message queued on b and c: contents, links and queues as before
/// (a cannot send to b any more, which is connected to c).
#[test]
fn dev_zero_mapping_and_a_datagram_chain() {
    both(
        "dgramchain",
        "import mmap, socket\n\
         z = os.open('/dev/zero', os.O_RDWR)\n\
         m = mmap.mmap(z, 8192, mmap.MAP_SHARED)\n\
         m[0:5] = b'zeros'\n\
         names = [os.path.join(d, n) for n in 'abc']\n\
         socks = [socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in names]\n\
         for s, n in zip(socks, names):\n    s.bind(n)\n\
         socks[0].connect(names[1])\n\
         socks[0].send(b'a to b')\n\
         socks[1].connect(names[2])\n\
         socks[1].send(b'b to c')",
        "import socket\n\
         want('mapping', m[0:5], b'zeros')\n\
         socks[1].settimeout(2)\n\
         socks[2].settimeout(2)\n\
         want('queued for b', socks[1].recv(20), b'a to b')\n\
         want('queued for c', socks[2].recv(20), b'b to c')\n\
         try:\n    socks[0].send(b'again')\n    err = None\nexcept PermissionError:\n    err = 'EPERM'\n\
         want('a to b, now connected to c', err, 'EPERM')\n\
         socks[1].send(b'b again')\n\
         want('b still sends to c', socks[2].recv(20), b'b again')",
    );
}

/// Shared anonymous memory mapped again through /proc/self/map_files:
/// privately (pages it copied are its own, the others still the object's)
/// and shared, each reaching a page past the object's end, as mmap allows.
#[test]
fn shared_anonymous_memory_mapped_privately_and_past_its_end() {
    both(
        "shmem-private",
        &format!(
            "{MMAP}P = 4096\n\
             base = mmap(5 * P, 3, 0x21)\n\
             ctypes.memmove(base + P, b'eleven', 6)\n\
             ctypes.memmove(base + 2 * P, b'onehundred', 10)\n\
             f = os.open('/proc/self/map_files/%x-%x' % (base, base + 5 * P), os.O_RDWR)\n\
             priv = mmap(5 * P, 3, 0x02, f, P)\n\
             again = mmap(5 * P, 3, 0x01, f, 2 * P)\n\
             ctypes.memmove(priv + P, b'private', 7)"
        ),
        "want('private copy', ctypes.string_at(priv + P, 7), b'private')\n\
         want('object page seen privately', ctypes.string_at(priv, 6), b'eleven')\n\
         want('object page seen again', ctypes.string_at(again, 10), b'onehundred')\n\
         ctypes.memmove(again, b'shared', 6)\n\
         want('written through the other shared mapping', ctypes.string_at(base + 2 * P, 6), b'shared')\n\
         ctypes.memmove(base + 3 * P, b'later', 5)\n\
         want('written since, seen privately', ctypes.string_at(priv + 2 * P, 5), b'later')\n\
         ends = sorted(int(l.split('-')[1].split()[0], 16) for l in open('/proc/self/maps') if int(l.split('-')[0], 16) in (priv, again))\n\
         want('mappings past the end', ends, sorted([priv + 5 * P, again + 5 * P]))",
    );
}

/// A big file mapped privately and never touched stays untouched: the
/// dump neither reads it into the process nor stores it (the copy ahead
/// once read every page of such a mapping).
#[test]
fn untouched_private_file_mapping_stays_untouched() {
    both(
        "untouched-file",
        "import mmap\n\
         p = os.path.join(d, 'big')\n\
         with open(p, 'wb') as out:\n    out.write(os.urandom(32 << 20))\n\
         f = os.open(p, os.O_RDONLY)\n\
         m = mmap.mmap(f, 32 << 20, mmap.MAP_PRIVATE, mmap.PROT_READ)\n\
         def rss():\n    \
             lines = open('/proc/self/smaps').read().split('\\n')\n    \
             at = [i for i, l in enumerate(lines) if l.endswith(' ' + p)]\n    \
             assert len(at) == 1, at\n    \
             return next(int(l.split()[1]) for l in lines[at[0]:] if l.startswith('Rss:'))\n\
         assert rss() == 0, rss()",
        "want('resident KiB of the mapping', rss(), 0)\n\
         want('contents', m[100:108], open(p, 'rb').read(108)[100:])",
    );
}

/// Two unix datagram sockets bound one after the other to one path in a
/// directory removed since (zdtm sk-unix01), each with a peer connected
/// before its file went: names and connections come back, and the
/// directory stays removed.
#[test]
fn unix_sockets_bound_in_a_removed_directory() {
    both(
        "socket-removed-dir",
        "import socket\n\
         sub = os.path.join(d, 'sub')\n\
         os.mkdir(sub)\n\
         p = os.path.join(sub, 'name')\n\
         pairs = []\n\
         for _ in range(2):\n    \
             s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n    \
             s.bind(p)\n    \
             c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n    \
             c.connect(p)\n    \
             os.unlink(p)\n    \
             pairs.append((s, c))\n\
         os.rmdir(sub)",
        "for i, (s, c) in enumerate(pairs):\n    \
             want('name %d' % i, s.getsockname(), p)\n    \
             c.send(b'to %d' % i)\n    \
             s.settimeout(2)\n    \
             want('datagram %d' % i, s.recv(100), b'to %d' % i)\n\
         want('directory still removed', os.path.exists(sub), False)\n\
         want('nothing left behind', [n for n in os.listdir(d) if n.startswith('.stasis')], [])",
    );
}

/// Droppable memory (MAP_DROPPABLE, where glibc keeps getrandom's state)
/// stays droppable, beside memory wiped on fork; its contents are kept or
/// dropped (zeros), as the kernel may do to it at any time.
#[test]
fn droppable_memory_stays_droppable() {
    both(
        "droppable",
        &format!(
            "{MMAP}at = mmap(8192, 3, 0x08 | 0x20, what='MAP_DROPPABLE (Linux 6.11)')\n\
             ctypes.memmove(at, b'droppable', 9)\n\
             def vmflags():\n    \
                 lines = open('/proc/self/smaps').read().splitlines()\n    \
                 i = next(i for i, l in enumerate(lines) if l.startswith('%x-' % at))\n    \
                 return next(l.split()[1:] for l in lines[i:] if l.startswith('VmFlags:'))\n\
             assert 'dp' in vmflags(), vmflags()"
        ),
        "want('droppable', 'dp' in vmflags(), True)\n\
         want('contents kept or dropped', ctypes.string_at(at, 9) in (b'droppable', bytes(9)), True)\n\
         ctypes.memmove(at, b'again', 5)\n\
         want('writable', ctypes.string_at(at, 5), b'again')",
    );
}

/// A read-only shared mapping of a file that was open for writing may
/// still be made writable (mprotect) after a restore, and writes reach
/// the file (zdtm maps_file_prot).
#[test]
fn read_only_shared_file_mapping_may_still_be_made_writable() {
    both(
        "may-write",
        &format!(
            "{MMAP}libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]\n\
             p = os.path.join(d, 'shared')\n\
             f = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)\n\
             os.ftruncate(f, 8192)\n\
             at = mmap(8192, 1, 0x01, f)\n\
             os.close(f)"
        ),
        "want('mprotect to read-write', libc.mprotect(at, 4096, 3), 0)\n\
         ctypes.memmove(at, b'written', 7)\n\
         want('in the file', open(p, 'rb').read(7), b'written')",
    );
}

/// A unix socket whose file was removed after the bind, and a FIFO made
/// at its path since (zdtm fifo_upon_unix_socket00): the socket keeps its
/// name and its connected peer, the FIFO its path and bytes.
#[test]
fn fifo_made_where_a_socket_file_was_removed() {
    both(
        "fifo-upon-socket",
        "import socket\n\
         p = os.path.join(d, 'name')\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.bind(p)\n\
         c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         c.connect(p)\n\
         os.unlink(p)\n\
         os.mkfifo(p)\n\
         f = os.open(p, os.O_RDWR | os.O_NONBLOCK)\n\
         os.write(f, b'in the fifo')",
        "want('socket name', s.getsockname(), p)\n\
         want('a FIFO at the path', stat.S_ISFIFO(os.stat(p).st_mode), True)\n\
         want('the same FIFO', os.stat(p).st_ino, os.fstat(f).st_ino)\n\
         want('FIFO bytes', os.read(f, 100), b'in the fifo')\n\
         c.send(b'to s')\n\
         s.settimeout(2)\n\
         want('datagram from the peer', s.recv(100), b'to s')\n\
         want('nothing left aside', [n for n in os.listdir(d) if 'aside' in n], [])",
    );
}

/// membarrier(2) registrations: one that the kernel lists without making
/// the plain barrier usable (SYNC_CORE), and the others.
#[test]
fn membarrier_registrations() {
    let common = "import ctypes\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         def mb(cmd):\n    \
             r = libc.syscall(324, cmd, 0, 0)\n    \
             return r if r >= 0 else -ctypes.get_errno()\n";
    let check = "want('registrations', mb(512), registered)\n\
         want('barriers', [mb(c) for c in (8, 32, 128)], barriers)";
    // GLOBAL_EXPEDITED and PRIVATE_EXPEDITED_SYNC_CORE: the plain private
    // barrier stays refused (EPERM).
    both(
        "membarrier-sync-core",
        &format!(
            "{common}for c in (4, 64):\n    assert mb(c) == 0, c\n\
             registered = mb(512)\n\
             assert registered == 4 | 16 | 64, registered\n\
             barriers = [mb(c) for c in (8, 32, 128)]\n\
             assert barriers == [-1, 0, -1], barriers"
        ),
        check,
    );
    both(
        "membarrier-private",
        &format!(
            "{common}for c in (16, 256):\n    assert mb(c) == 0, c\n\
             registered = mb(512)\n\
             barriers = [mb(c) for c in (8, 32, 128)]\n\
             assert barriers == [0, -1, 0], barriers"
        ),
        check,
    );
}

/// TCP connections in every closing state, both ends in the process (so
/// each end is restored): FIN_WAIT1 with the FIN and bytes behind a closed
/// window, FIN_WAIT2 facing CLOSE_WAIT, LAST_ACK with its FIN behind bytes
/// the peer does not read, and CLOSING (the peer's FIN came while ours
/// waited behind bytes). Each state comes back, then the bytes flow and
/// each connection closes as it would have.
#[test]
fn tcp_connections_closing() {
    let setup = "import socket\n\
        SOL, BUF = socket.SOL_SOCKET, 16384\n\
        def st(x):\n    return x.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]\n\
        def settle(x, want):\n    \
            for _ in range(250):\n        \
                if st(x) == want:\n            break\n        \
                time.sleep(0.02)\n    \
            return st(x)\n\
        L = socket.socket()\n\
        L.setsockopt(SOL, socket.SO_RCVBUF, BUF)\n\
        L.bind(('127.0.0.1', 0))\n\
        L.listen(8)\n\
        def pair():\n    \
            c = socket.socket()\n    \
            c.setsockopt(SOL, socket.SO_RCVBUF, BUF)\n    \
            c.setsockopt(SOL, socket.SO_SNDBUF, BUF)\n    \
            c.connect(L.getsockname())\n    \
            s = L.accept()[0]\n    \
            s.setsockopt(SOL, socket.SO_SNDBUF, BUF)\n    \
            c.settimeout(20)\n    \
            s.settimeout(20)\n    \
            return c, s\n\
        PATTERN = bytes(range(251)) * 20\n\
        def fill(w):\n    \
            n, misses = 0, 0\n    \
            w.setblocking(False)\n    \
            while misses < 3:\n        \
                try:\n            \
                    n += w.send(PATTERN[n % 251:n % 251 + 4096])\n            \
                    misses = 0\n        \
                except BlockingIOError:\n            \
                    misses += 1\n            \
                    time.sleep(0.05)\n    \
            w.settimeout(20)\n    \
            return n\n\
        def drain(r):\n    \
            got = bytearray()\n    \
            while True:\n        \
                b = r.recv(65536)\n        \
                if not b:\n            break\n        \
                got += b\n    \
            whole = (bytes(range(251)) * (len(got) // 251 + 1))[:len(got)]\n    \
            return len(got), bytes(got) == whole\n\
        c1, s1 = pair()\n\
        n1 = fill(c1)\n\
        c1.shutdown(socket.SHUT_WR)\n\
        c2, s2 = pair()\n\
        c2.shutdown(socket.SHUT_WR)\n\
        c3, s3 = pair()\n\
        c3.shutdown(socket.SHUT_WR)\n\
        n3 = fill(s3)\n\
        s3.shutdown(socket.SHUT_WR)\n\
        c4, s4 = pair()\n\
        n4 = fill(s4)\n\
        s4.shutdown(socket.SHUT_WR)\n\
        c4.shutdown(socket.SHUT_WR)\n\
        socks = (c1, s1, c2, s2, c3, s3, c4, s4)\n\
        # FIN_WAIT1, ESTABLISHED, FIN_WAIT2, CLOSE_WAIT, FIN_WAIT2, LAST_ACK, FIN_WAIT2, CLOSING\n\
        states = [4, 1, 5, 8, 5, 9, 5, 11]\n\
        got = [settle(x, w) for x, w in zip(socks, states)]\n\
        assert got == states, got\n\
        assert min(n1, n3, n4) > 0, (n1, n3, n4)";
    let check = "want('states', [st(x) for x in socks], states)\n\
        want('1: bytes, then end of file', drain(s1), (n1, True))\n\
        want('1: FIN acknowledged', settle(c1, 5), 5)\n\
        want('2: end of file', s2.recv(16), b'')\n\
        s2.sendall(b'after')\n\
        want('2: still receives', c2.recv(16), b'after')\n\
        s2.close()\n\
        want('2: end of file', c2.recv(16), b'')\n\
        want('3: bytes, then end of file', drain(c3), (n3, True))\n\
        want('4: bytes, then end of file', drain(c4), (n4, True))\n\
        want('4: end of file', s4.recv(16), b'')";
    both("tcp-closing", setup, check);
}

/// Half-closed TCP connections to a peer outside the tree (this test):
/// one the peer shut down (CLOSE_WAIT in the process), one the process shut
/// down (FIN_WAIT2). Between dump and restore the network lock holds them;
/// afterwards the process reads the end of file and still sends on the
/// first, and still receives on the second.
#[test]
fn tcp_half_closed_with_a_peer_outside() {
    half_closed(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), "tcp-half-closed");
}

/// The same with the peer on another host, as after a migration: a network
/// namespace joined by a veth pair (10.201.N.2, the host 10.201.N.1), so
/// the peer's FIN and acknowledgements that restore sends from the peer's
/// address come from an address that is not this host's.
#[test]
fn tcp_half_closed_with_a_peer_on_another_host() {
    let peer = util::netns::PeerHost::create();
    half_closed(peer.listen(), "tcp-half-closed-remote");
}

/// One connection the peer (`listener`, this test) shuts down, one the
/// process shuts down; round trip, then --leave-running.
fn half_closed(listener: std::net::TcpListener, prefix: &str) {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    let setup = "import socket\n\
        def st(x):\n    return x.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]\n\
        peer = (os.environ['PEER_ADDR'], int(os.environ['PEER_PORT']))\n\
        a = socket.create_connection(peer, timeout=20)\n\
        b = socket.create_connection(peer, timeout=20)\n\
        b.shutdown(socket.SHUT_WR)";
    let check = "want('a: CLOSE_WAIT', st(a), 8)\n\
        want('a: end of file', a.recv(16), b'')\n\
        a.sendall(b'bye')\n\
        a.close()\n\
        want('b: FIN_WAIT2', st(b), 5)\n\
        want('b: receives', b.recv(16), b'to-b')";
    let addr = listener.local_addr().unwrap();
    let std::net::IpAddr::V4(ip) = addr.ip() else { panic!("an IPv4 listener") };
    let env = [("PEER_ADDR", ip.to_string()), ("PEER_PORT", addr.port().to_string())];
    for leave_running in [false, true] {
        let name = if leave_running { format!("{prefix}-lr") } else { prefix.to_string() };
        let p = start_with(&name, setup, check, &env);
        let (mut a, _) = listener.accept().unwrap();
        let (mut b, _) = listener.accept().unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        a.shutdown(Shutdown::Write).unwrap();
        // The process's end of `a` in CLOSE_WAIT (08), as the kernel lists
        // it (addresses as little-endian hex, ports big-endian).
        let hex = |a: std::net::SocketAddr| match a.ip() {
            std::net::IpAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.octets()), a.port()),
            other => panic!("{other} is not IPv4"),
        };
        let close_wait = format!("{} {} 08", hex(a.peer_addr().unwrap()), hex(a.local_addr().unwrap()));
        p.wait_for(Duration::from_secs(10), "CLOSE_WAIT in /proc/net/tcp", || {
            fs::read_to_string("/proc/net/tcp").unwrap().contains(&close_wait).then_some(())
        });
        dump_then(&name, p, leave_running, |mut restored| {
            b.write_all(b"to-b").unwrap();
            assert_eq!(result(&restored).trim(), "ok", "{name}\n{}", restored.log());
            let mut got = Vec::new();
            a.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"bye", "{name}: what the process sent on the connection it had half-closed");
            restored.wait_exit(Duration::from_secs(30));
            let mut rest = Vec::new();
            b.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{name}: {rest:?} after the process exited");
        });
    }
}

/// TCP connections being opened (SYN_SENT): the peer, the test, listens
/// with a full accept queue, so their SYNs go unanswered. One socket is
/// non-blocking, the other's thread is in a blocking connect(2). Both are
/// still connecting after the dump; once the queue has room both complete
/// from the same local ports and carry bytes each way (the thread's
/// connect returns).
#[test]
fn tcp_connections_being_opened() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    let setup = "import errno, socket, threading\n\
        def st(x):\n    return x.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]\n\
        peer = ('127.0.0.1', int(os.environ['PEER_PORT']))\n\
        a = socket.socket()\n\
        a.setblocking(False)\n\
        assert a.connect_ex(peer) == errno.EINPROGRESS\n\
        b = socket.socket()\n\
        b.bind(('127.0.0.1', 0))\n\
        connected = []\n\
        def blocking():\n    \
            b.connect(peer)\n    \
            connected.append(True)\n\
        t = threading.Thread(target=blocking)\n\
        t.start()\n\
        while st(b) != 2:\n    time.sleep(0.01)\n\
        ports = (a.getsockname()[1], b.getsockname()[1])\n\
        with open(os.path.join(d, 'ports'), 'w') as f:\n    f.write('%d %d' % ports)";
    let check = "import select\n\
        _, w, _ = select.select([], [a], [], 20)\n\
        want('a: connected (writable, SO_ERROR)', (bool(w), a.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)), (True, 0))\n\
        t.join(20)\n\
        want('b: the blocking connect returned', connected, [True])\n\
        for x in (a, b):\n    x.settimeout(20)\n\
        want('local ports', (a.getsockname()[1], b.getsockname()[1]), ports)\n\
        want('a: receives', a.recv(16), b'to-a')\n\
        want('b: receives', b.recv(16), b'to-b')\n\
        a.sendall(b'from-a')\n\
        b.sendall(b'from-b')";
    for leave_running in [false, true] {
        let name = if leave_running { "tcp-syn-sent-lr" } else { "tcp-syn-sent" };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // Backlog 0: the accept queue is full with one connection waiting,
        // and the SYNs that come next are dropped.
        nix::sys::socket::listen(&listener.as_fd(), nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let filler = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let p = start_with(name, setup, check, &[("PEER_PORT", port.to_string())]);
        let ports: Vec<u16> =
            fs::read_to_string(p.dir.join("ports")).unwrap().split_whitespace().map(|x| x.parse().unwrap()).collect();
        // Both in SYN_SENT (02), as the kernel lists them.
        let syn_sent = |p: &Spawned| {
            p.wait_for(Duration::from_secs(10), "both sockets in SYN_SENT in /proc/net/tcp", || {
                let table = fs::read_to_string("/proc/net/tcp").unwrap();
                ports.iter().all(|q| table.contains(&format!(":{q:04X} 0100007F:{port:04X} 02"))).then_some(())
            })
        };
        syn_sent(&p);
        dump_then(name, p, leave_running, |mut restored| {
            syn_sent(&restored);
            // Room in the queue for both (backlog 0 again with one taken would
            // let the second's last ACK be dropped, which nothing resends with
            // SYN cookies): the next SYN of each, retransmitted, gets in.
            nix::sys::socket::listen(&listener.as_fd(), nix::sys::socket::Backlog::new(8).unwrap()).unwrap();
            listener.set_nonblocking(true).unwrap();
            let accept =
                || restored.wait_for(Duration::from_secs(30), "a connection to accept", || listener.accept().ok());
            let (waiting, _) = accept();
            assert_eq!(waiting.peer_addr().unwrap(), filler.local_addr().unwrap());
            drop((waiting, filler));
            let mut accepted = Vec::new();
            for _ in 0..2 {
                let (mut conn, from) = accept();
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let which = if from.port() == ports[0] { "a" } else { "b" };
                assert!(ports.contains(&from.port()), "{name}: accepted {from}, not one of {ports:?}");
                conn.write_all(format!("to-{which}").as_bytes()).unwrap();
                accepted.push((which, conn));
            }
            assert_eq!(result(&restored).trim(), "ok", "{name}\n{}", restored.log());
            for (which, conn) in &mut accepted {
                let mut got = [0u8; 6];
                conn.read_exact(&mut got).unwrap();
                assert_eq!(&got, format!("from-{which}").as_bytes(), "{name}: what {which} sent");
            }
            restored.wait_exit(Duration::from_secs(30));
        });
    }
}

/// Pages a parent and its forked child still share copy-on-write are
/// shared again after the restore (the same physical page, by pagemap),
/// while the pages either wrote since the fork are its own and a page the
/// child dropped reads zero in the child only; a write after the restore
/// still copies.
#[test]
fn pages_shared_with_a_forked_child() {
    let setup = "import mmap\n\
        N = 64\n\
        m = mmap.mmap(-1, N * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n\
        for i in range(N):\n    m[i * 4096:(i + 1) * 4096] = bytes([i]) * 4096\n\
        import ctypes\n\
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))\n\
        r, w = os.pipe()\n\
        child = os.fork()\n\
        if child == 0:\n    \
            for i in range(8):\n        m[i * 4096] = 200 + i\n    \
            m.madvise(mmap.MADV_DONTNEED, 8 * 4096, 4 * 4096)\n    \
            os.write(w, b'x')\n    \
            while True:\n        time.sleep(3600)\n\
        os.read(r, 1)\n\
        for i in range(60, N):\n    m[i * 4096] = 100 + i\n\
        def pfns(pid):\n    \
            with open('/proc/%d/pagemap' % pid, 'rb') as f:\n        \
                f.seek((addr >> 12) * 8)\n        \
                return [e & ((1 << 55) - 1) if e >> 63 else None for e in struct.unpack('<%dQ' % N, f.read(N * 8))]\n\
        def shared():\n    \
            a, b = pfns(os.getpid()), pfns(child)\n    \
            return [i for i in range(N) if a[i] is not None and a[i] == b[i]]\n\
        def child_pages():\n    \
            with open('/proc/%d/mem' % child, 'rb') as f:\n        \
                f.seek(addr)\n        \
                data = f.read(N * 4096)\n    \
            return [data[i * 4096:(i + 1) * 4096] for i in range(N)]\n\
        def expected(i, mine):\n    \
            if not mine and 8 <= i < 12:\n        return bytes(4096)\n    \
            first = 200 + i if not mine and i < 8 else 100 + i if mine and i >= 60 else i\n    \
            return bytes([first]) + bytes([i]) * 4095\n\
        assert shared() == list(range(12, 60)), shared()";
    let check = "want('pages shared with the child', shared(), list(range(12, 60)))\n\
        want('the parent\\'s pages', [i for i in range(N) if m[i * 4096:(i + 1) * 4096] != expected(i, True)], [])\n\
        want('the child\\'s pages', [i for i in range(N) if child_pages()[i] != expected(i, False)], [])\n\
        m[20 * 4096] = 99\n\
        want('shared after a write', shared(), [i for i in range(12, 60) if i != 20])\n\
        want('the child\\'s page 20', child_pages()[20], expected(20, False))\n\
        os.kill(child, signal.SIGKILL)\n\
        os.waitpid(child, 0)";
    both("cow-shared", setup, check);
}

/// A fanotify group with an inode mark, a mount mark and an ignore mask
/// that survives modification: the same marks (fdinfo) after the restore,
/// and an event for the marked file still comes.
#[test]
fn fanotify_marks() {
    let setup = "import ctypes\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]\n\
        fa = libc.fanotify_init(0, os.O_RDONLY)\n\
        assert fa >= 0, 'fanotify_init: errno %d' % ctypes.get_errno()\n\
        watched = os.path.realpath(os.path.join(d, 'watched'))\n\
        ignored = os.path.realpath(os.path.join(d, 'ignored'))\n\
        for f in (watched, ignored):\n    open(f, 'w').close()\n\
        # FAN_MODIFY | FAN_CLOSE_WRITE on one file; FAN_OPEN_EXEC on the mount,\n\
        # ignored (surviving modification) for the other file.\n\
        for flags, mask, path in ((1, 0x2 | 0x8, watched), (1 | 0x10, 0x1000, d), (1 | 0x20 | 0x40, 0x1000, ignored)):\n    \
            assert libc.fanotify_mark(fa, flags, mask, -100, path.encode()) == 0, (path, ctypes.get_errno())\n\
        def marks():\n    \
            return sorted(l for l in open('/proc/self/fdinfo/%d' % fa) if l.startswith('fanotify'))\n\
        before = marks()\n\
        assert len(before) == 4, before";
    let check = "want('marks', marks(), before)\n\
        os.set_blocking(fa, False)\n\
        while True:\n    \
            try:\n        \
                os.read(fa, 65536)\n    \
            except BlockingIOError:\n        \
                break\n\
        with open(watched, 'a') as f:\n    f.write('x')\n\
        got = []\n\
        for _ in range(100):\n    \
            try:\n        \
                buf = os.read(fa, 65536)\n    \
            except BlockingIOError:\n        \
                time.sleep(0.02)\n        \
                continue\n    \
            while buf:\n        \
                n, _, _, _, mask, fd, pid = struct.unpack('=IBBHQii', buf[:24])\n        \
                if fd >= 0:\n            \
                    got.append((mask, os.readlink('/proc/self/fd/%d' % fd)))\n            \
                    os.close(fd)\n        \
                buf = buf[n:]\n    \
            if any(m & 2 and p == watched for m, p in got):\n        \
                break\n\
        want('FAN_MODIFY on the watched file', any(m & 2 and p == watched for m, p in got), True)";
    both("fanotify", setup, check);
}

/// Guard regions (MADV_GUARD_INSTALL) in the middle of a private mapping:
/// still there after the restore (pagemap bit 58), a touch still faults,
/// and the pages around them keep their bytes.
#[test]
fn guard_regions() {
    let setup = "import ctypes, mmap\n\
        m = mmap.mmap(-1, 8 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n\
        m[:] = bytes(range(256)) * 128\n\
        m.madvise(102, 2 * 4096, 2 * 4096)\n\
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))\n\
        def guarded():\n    \
            with open('/proc/self/pagemap', 'rb') as f:\n        \
                f.seek((addr >> 12) * 8)\n        \
                return [e >> 58 & 1 for e in struct.unpack('<8Q', f.read(64))]\n\
        assert guarded() == [0, 0, 1, 1, 0, 0, 0, 0], guarded()";
    let check = "want('guards', guarded(), [0, 0, 1, 1, 0, 0, 0, 0])\n\
        want('bytes', [m[i * 4096:(i + 1) * 4096] == bytes(range(256)) * 16 for i in (0, 1, 4, 5, 6, 7)], [True] * 6)\n\
        child = os.fork()\n\
        if child == 0:\n    \
            m[2 * 4096]\n    \
            os._exit(0)\n\
        status = os.waitpid(child, 0)[1]\n\
        want('a touch', os.WIFSIGNALED(status) and os.WTERMSIG(status), signal.SIGSEGV)";
    both("guards", setup, check);
}

/// AIO contexts (io_setup) with completed events, some read and some
/// not, one whose tail has wrapped round the ring, and one whose ring the
/// process never touched (not in its page tables: zdtm aio00): head and
/// tail come back, the unread events are read after the restore, and new
/// requests complete through the same contexts.
#[test]
fn aio_ring() {
    let setup = "import ctypes\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        libc.syscall.restype = ctypes.c_long\n\
        ctx = ctypes.c_ulong(0)\n\
        assert libc.syscall(206, 8, ctypes.byref(ctx)) == 0, 'io_setup: errno %d' % ctypes.get_errno()\n\
        f = os.open(os.path.join(d, 'out'), os.O_RDWR | os.O_CREAT, 0o600)\n\
        bufs = [ctypes.create_string_buffer(b'data%d' % i) for i in range(8)]\n\
        keep = []\n\
        def submit(i, c=ctx):\n    \
            cb = ctypes.create_string_buffer(struct.pack('<QIIHhIQQqQII', i, 0, 0, 1, 0, f, ctypes.addressof(bufs[i % 8]), 5, i * 5, 0, 0, 0), 64)\n    \
            keep.append(cb)\n    \
            ptrs = (ctypes.c_void_p * 1)(ctypes.addressof(cb))\n    \
            assert libc.syscall(209, ctypes.c_ulong(c.value), 1, ptrs) == 1, 'io_submit: errno %d' % ctypes.get_errno()\n\
        def getevents(n, c=ctx):\n    \
            evs = ctypes.create_string_buffer(32 * n)\n    \
            r = libc.syscall(208, ctypes.c_ulong(c.value), n, n, evs, None)\n    \
            return [struct.unpack('<QQqq', evs.raw[32 * i:32 * i + 32])[0::2] for i in range(r)]\n\
        def head_tail(c=ctx):\n    \
            return struct.unpack('<4I', ctypes.string_at(c.value, 16))[1:]\n\
        for i in (1, 2, 3):\n    submit(i)\n\
        assert getevents(2) == [(1, 5), (2, 5)]\n\
        assert head_tail()[1:] == (2, 3), head_tail()\n\
        wrapped = ctypes.c_ulong(0)\n\
        assert libc.syscall(206, 8, ctypes.byref(wrapped)) == 0\n\
        nr = head_tail(wrapped)[0]\n\
        for i in range(nr - 2):\n    \
            submit(100 + i, wrapped)\n    \
            assert getevents(1, wrapped) == [(100 + i, 5)]\n\
        for i in range(3):\n    submit(1000 + i, wrapped)\n\
        at = head_tail(wrapped)\n\
        assert at[2] < at[1], at\n\
        untouched = ctypes.c_ulong(0)\n\
        assert libc.syscall(206, 1, ctypes.byref(untouched)) == 0";
    let check = "want('head and tail', head_tail()[1:], (2, 3))\n\
        want('wrapped: head and tail', head_tail(wrapped), at)\n\
        want('wrapped: the events not read', getevents(3, wrapped), [(1000, 5), (1001, 5), (1002, 5)])\n\
        submit(2000, wrapped)\n\
        want('wrapped: a new one', getevents(1, wrapped), [(2000, 5)])\n\
        want('the event not read', getevents(1), [(3, 5)])\n\
        submit(4)\n\
        want('a new one', getevents(1), [(4, 5)])\n\
        want('written', os.pread(f, 25, 0), b'\\0' * 5 + b'data1data2data3data4')\n\
        want('io_destroy', libc.syscall(207, ctypes.c_ulong(ctx.value)), 0)\n\
        submit(3000, untouched)\n\
        want('untouched: a new one', getevents(1, untouched), [(3000, 5)])";
    both("aio", setup, check);
}

/// inotify watches on a file deleted while open: the file is made again
/// (its bytes, one inode for the fd and the watch), and the watch still
/// reports a write through the fd under its old descriptor.
#[test]
fn inotify_watch_on_a_deleted_file() {
    let setup = "import ctypes\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        path = os.path.join(d, 'gone')\n\
        with open(path, 'w') as f:\n    f.write('still here')\n\
        held = os.open(path, os.O_RDWR)\n\
        ino = ctypes.c_int(libc.inotify_init1(os.O_NONBLOCK)).value\n\
        other = os.path.join(d, 'other')\n\
        open(other, 'w').close()\n\
        wd_other = libc.inotify_add_watch(ino, other.encode(), 0x2)\n\
        wd = libc.inotify_add_watch(ino, path.encode(), 0x2 | 0x4)\n\
        assert (wd_other, wd) == (1, 2), (wd_other, wd)\n\
        os.unlink(path)\n\
        while True:\n    \
            try:\n        \
                os.read(ino, 4096)\n    \
            except BlockingIOError:\n        \
                break";
    let check = "want('bytes', os.pread(held, 64, 0), b'still here')\n\
        want('still deleted', os.readlink('/proc/self/fd/%d' % held).endswith(' (deleted)'), True)\n\
        while True:\n    \
            try:\n        \
                os.read(ino, 4096)\n    \
            except BlockingIOError:\n        \
                break\n\
        os.pwrite(held, b'!', 10)\n\
        time.sleep(0.1)\n\
        events = []\n\
        try:\n    \
            buf = os.read(ino, 4096)\n\
        except BlockingIOError:\n    \
            buf = b''\n\
        while buf:\n    \
            w, mask, _, n = struct.unpack('iIII', buf[:16])\n    \
            events.append((w, mask))\n    \
            buf = buf[16 + n:]\n\
        want('IN_MODIFY on the watch', (wd, 0x2) in events, True)";
    both("inotify-deleted", setup, check);
}

/// A cgroup namespace made in a cgroup of the named v1 hierarchy, the
/// process then moved to a cgroup below it, and a child forked in the
/// namespace: after the restore /proc/self/cgroup reads the same from
/// inside (the namespace has the same root, the process the same cgroup),
/// the namespace is not the host's, and the child shares its parent's.
#[test]
fn cgroup_namespace() {
    let root = std::path::Path::new("/sys/fs/cgroup/systemd");
    assert!(
        root.join("cgroup.procs").exists(),
        "this test needs the named cgroup v1 hierarchy name=systemd mounted at {}",
        root.display()
    );
    let dir = root.join(format!("stasis-cgns-{}", std::process::id()));
    fs::create_dir_all(dir.join("inner")).unwrap();
    let setup = format!(
        "import ctypes\n\
         ns = lambda p: os.readlink('/proc/%s/ns/cgroup' % p)\n\
         host = ns('self')\n\
         open('{dir}/cgroup.procs', 'w').write(str(os.getpid()))\n\
         assert ctypes.CDLL(None, use_errno=True).unshare(0x02000000) == 0, 'unshare(CLONE_NEWCGROUP)'\n\
         open('{dir}/inner/cgroup.procs', 'w').write(str(os.getpid()))\n\
         lines = open('/proc/self/cgroup').read()\n\
         assert ':name=systemd:/inner' in lines, lines\n\
         r, w = os.pipe()\n\
         child = os.fork()\n\
         if child == 0:\n    os.close(w)\n    os.read(r, 1)\n    os._exit(0)\n\
         os.close(r)",
        dir = dir.display()
    );
    let check = "want('/proc/self/cgroup', open('/proc/self/cgroup').read(), lines)\n\
         want('a namespace of its own', ns('self') != host, True)\n\
         want('the child in it too', ns(child), ns('self'))";
    both("cgroupns", &setup, check);
    // Removed once the processes are reaped (PID 1 reaps lazily here).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for d in [dir.join("inner"), dir.clone()] {
        while let Err(e) = fs::remove_dir(&d) {
            assert!(std::time::Instant::now() < deadline, "cannot remove {}: {e}", d.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Membership of a cgroup in a named v1 hierarchy (`name=systemd`, no
/// controller): the restored process is back in it, and its thread that
/// moved itself into a cgroup below is back in that one.
#[test]
fn named_cgroup_v1_hierarchy() {
    let root = std::path::Path::new("/sys/fs/cgroup/systemd");
    assert!(
        root.join("cgroup.procs").exists(),
        "this test needs the named cgroup v1 hierarchy name=systemd mounted at {}",
        root.display()
    );
    let name = format!("stasis-state-{}", std::process::id());
    let dir = root.join(&name);
    fs::create_dir_all(dir.join("thread")).unwrap();
    let setup = format!(
        "import threading\n\
         open('{dir}/cgroup.procs', 'w').write(str(os.getpid()))\n\
         def named(task='self'):\n    return [l for l in open('/proc/%s/cgroup' % task) if ':name=systemd:' in l][0]\n\
         line = named()\n\
         assert line.strip().endswith('/{name}'), line\n\
         moved, done = threading.Event(), threading.Event()\n\
         def body():\n    open('{dir}/thread/tasks', 'w').write(str(threading.get_native_id()))\n    moved.set()\n    done.wait()\n\
         t = threading.Thread(target=body)\n\
         t.start()\n\
         moved.wait()\n\
         tid = t.native_id\n\
         thread_line = named('self/task/%d' % tid)\n\
         assert thread_line.strip().endswith('/{name}/thread'), thread_line",
        dir = dir.display()
    );
    let check = "want('cgroup', named(), line)\n\
         want('the thread\\'s cgroup', named('self/task/%d' % tid), thread_line)\n\
         done.set()\n\
         t.join()";
    both("named-cgroup", &setup, check);
    // Removed once the processes are reaped (PID 1 reaps lazily here).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for d in [dir.join("thread"), dir.clone()] {
        while let Err(e) = fs::remove_dir(&d) {
            assert!(std::time::Instant::now() < deadline, "cannot remove {}: {e}", d.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// File leases (F_SETLEASE), a read lease and a write lease: F_GETLEASE
/// tells them after the restore, and they still work: an open that
/// conflicts is refused (EWOULDBLOCK, non-blocking) and the holder gets
/// SIGIO to give the lease up.
#[test]
fn file_leases() {
    let setup = "F_SETLEASE, F_GETLEASE = 1024, 1025\n\
        sigio = []\n\
        signal.signal(signal.SIGIO, lambda *a: sigio.append(1))\n\
        rpath, wpath = os.path.join(d, 'read-leased'), os.path.join(d, 'write-leased')\n\
        for p in (rpath, wpath):\n    open(p, 'w').close()\n\
        r = os.open(rpath, os.O_RDONLY)\n\
        w = os.open(wpath, os.O_RDONLY)\n\
        fcntl.fcntl(r, F_SETLEASE, fcntl.F_RDLCK)\n\
        fcntl.fcntl(w, F_SETLEASE, fcntl.F_WRLCK)";
    let check = "want('leases', [fcntl.fcntl(x, F_GETLEASE) for x in (r, w)], [fcntl.F_RDLCK, fcntl.F_WRLCK])\n\
        def opener(path, flags):\n    \
            child = os.fork()\n    \
            if child == 0:\n        \
                try:\n            \
                    os.open(path, flags | os.O_NONBLOCK)\n        \
                except BlockingIOError:\n            \
                    os._exit(11)\n        \
                os._exit(0)\n    \
            return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])\n\
        want('a writer of the read-leased file', opener(rpath, os.O_WRONLY), 11)\n\
        want('a reader of the write-leased file', opener(wpath, os.O_RDONLY), 11)\n\
        for _ in range(100):\n    \
            if len(sigio) >= 2:\n        break\n    \
            time.sleep(0.01)\n\
        want('SIGIO to break them', len(sigio) >= 2, True)\n\
        for x in (r, w):\n    fcntl.fcntl(x, F_SETLEASE, fcntl.F_UNLCK)";
    both("leases", setup, check);
}

/// File leases being broken (another open conflicted; the holder has its
/// SIGIO and has not given the lease up yet): a read lease and a write
/// lease on a read-only fd broken by writers, a write lease broken to a
/// read lease by a reader, beside an active one; a forked child shares
/// their descriptions. After the restore F_GETLEASE tells what each is
/// being broken to, opens for reading conflict as before (only with what
/// were write leases), and no SIGIO comes again.
#[test]
fn file_leases_being_broken() {
    let setup = "import errno\n\
        F_SETLEASE, F_GETLEASE = 1024, 1025\n\
        sigio = []\n\
        signal.signal(signal.SIGIO, lambda *a: sigio.append(1))\n\
        paths = [os.path.join(d, 'leased%d' % i) for i in range(4)]\n\
        for p in paths:\n    open(p, 'w').close()\n\
        fds = [os.open(p, m) for p, m in zip(paths, (os.O_RDONLY, os.O_RDONLY, os.O_RDWR, os.O_RDONLY))]\n\
        for x, kind in zip(fds, (fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_WRLCK, fcntl.F_RDLCK)):\n    \
            fcntl.fcntl(x, F_SETLEASE, kind)\n\
        def tried(path, flags):\n    \
            try:\n        os.close(os.open(path, flags | os.O_NONBLOCK)); return 0\n    \
            except OSError as e:\n        return e.errno\n\
        broken = [tried(p, m) for p, m in zip(paths, (os.O_WRONLY, os.O_WRONLY, os.O_RDONLY))]\n\
        assert broken == [errno.EWOULDBLOCK] * 3, broken\n\
        for _ in range(200):\n    \
            if len(sigio) >= 3:\n        break\n    \
            time.sleep(0.01)\n\
        assert len(sigio) == 3, sigio\n\
        r, w = os.pipe()\n\
        child = os.fork()\n\
        if child == 0:\n    os.close(w)\n    os.read(r, 1)\n    os._exit(0)\n\
        os.close(r)\n\
        kinds = [fcntl.fcntl(x, F_GETLEASE) for x in fds]\n\
        readers = [tried(p, os.O_RDONLY) for p in paths]";
    let check = "want('leases', [fcntl.fcntl(x, F_GETLEASE) for x in fds], [fcntl.F_UNLCK, fcntl.F_UNLCK, fcntl.F_RDLCK, fcntl.F_RDLCK])\n\
        want('as before', kinds, [fcntl.F_UNLCK, fcntl.F_UNLCK, fcntl.F_RDLCK, fcntl.F_RDLCK])\n\
        want('readers', [tried(p, os.O_RDONLY) for p in paths], [0, errno.EWOULDBLOCK, errno.EWOULDBLOCK, 0])\n\
        want('readers as before', readers, [0, errno.EWOULDBLOCK, errno.EWOULDBLOCK, 0])\n\
        time.sleep(0.2)\n\
        want('no SIGIO again', len(sigio), 3)\n\
        os.close(w)\n\
        os.waitpid(child, 0)";
    both("breaking", setup, check);
}

/// Unix sockets made but not connected yet (seqpacket, stream): the same
/// type after the restore, and they connect and carry messages.
#[test]
fn unix_sockets_not_yet_connected() {
    let setup = "import socket\n\
        listeners = {}\n\
        fresh = {}\n\
        for t in (socket.SOCK_SEQPACKET, socket.SOCK_STREAM):\n    \
            l = socket.socket(socket.AF_UNIX, t)\n    \
            l.bind(os.path.join(d, 'l%d' % t))\n    \
            l.listen(1)\n    \
            listeners[t] = l\n    \
            fresh[t] = socket.socket(socket.AF_UNIX, t)";
    let check = "for t, s in fresh.items():\n    \
            want('type', s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE), t)\n    \
            s.connect(os.path.join(d, 'l%d' % t))\n    \
            a = listeners[t].accept()[0]\n    \
            s.send(b'hello')\n    \
            want('message', a.recv(16), b'hello')";
    both("unix-unconnected", setup, check);
}

/// Objects whose directory was removed after them (a temp directory
/// cleaned up while its files are still open): a deleted file with its
/// bytes, an unlinked FIFO with bytes, an unlinked device node, an open
/// directory fd of a removed directory, and a working directory removed
/// with its parent. Each is made again in the nearest directory still there
/// and removed again: the process finds them all as before.
#[test]
fn objects_in_removed_directories() {
    let setup = "x = os.path.join(d, 'x')\n\
        os.makedirs(os.path.join(x, 'cwd'))\n\
        os.mkdir(os.path.join(x, 'opened'))\n\
        p = os.path.join(x, 'file')\n\
        f = os.open(p, os.O_RDWR | os.O_CREAT, 0o640)\n\
        os.write(f, b'file bytes')\n\
        fifo = os.path.join(x, 'fifo')\n\
        os.mkfifo(fifo)\n\
        q = os.open(fifo, os.O_RDWR)\n\
        os.write(q, b'queued')\n\
        n = os.path.join(x, 'null')\n\
        os.mknod(n, stat.S_IFCHR | 0o666, os.makedev(1, 3))\n\
        dev = os.open(n, os.O_RDWR)\n\
        os.chmod(os.path.join(x, 'opened'), 0o750)\n\
        opened = os.open(os.path.join(x, 'opened'), os.O_RDONLY | os.O_DIRECTORY)\n\
        os.chdir(os.path.join(x, 'cwd'))\n\
        for gone in ('file', 'fifo', 'null'):\n    os.unlink(os.path.join(x, gone))\n\
        for gone in ('cwd', 'opened', ''):\n    os.rmdir(os.path.join(x, gone))";
    let check = "want('file', os.pread(f, 64, 0), b'file bytes')\n\
        want('file links', os.fstat(f).st_nlink, 0)\n\
        want('file mode', stat.S_IMODE(os.fstat(f).st_mode), 0o640)\n\
        want('fifo', stat.S_ISFIFO(os.fstat(q).st_mode), True)\n\
        os.set_blocking(q, False)\n\
        want('fifo bytes', os.read(q, 100), b'queued')\n\
        want('device', os.fstat(dev).st_rdev, os.makedev(1, 3))\n\
        want('device writes', os.write(dev, b'x'), 1)\n\
        want('directory', stat.S_ISDIR(os.fstat(opened).st_mode), True)\n\
        want('directory mode', stat.S_IMODE(os.fstat(opened).st_mode), 0o750)\n\
        want('directory removed', os.fstat(opened).st_nlink, 0)\n\
        want('directory empty', os.listdir(opened), [])\n\
        want('cwd removed', os.stat('.').st_nlink, 0)\n\
        want('nothing left', os.path.exists(x) and os.listdir(x), False)\n\
        want('nothing left beside', [n for n in os.listdir(d) if n not in ('check', 'ready', 'state.py', 'log')], [])";
    both("removed-dirs", setup, check);
}

/// A datagram socketpair whose other end closed with messages still
/// queued for this one: the messages come back in order, and the next send
/// fails as it would have (ECONNREFUSED, then not connected).
#[test]
fn datagram_socket_whose_peer_closed() {
    let setup = "import socket, errno\n\
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
        b.send(b'first')\n\
        b.send(b'second')\n\
        b.close()\n\
        def send_error():\n    \
            try:\n        \
                a.send(b'x')\n        \
                return 0\n    \
            except OSError as e:\n        \
                return e.errno";
    let check = "want('messages', [a.recv(16), a.recv(16)], [b'first', b'second'])\n\
        want('first send', send_error(), errno.ECONNREFUSED)\n\
        want('next send', send_error(), errno.ENOTCONN)";
    both("dgram-peer-closed", setup, check);
}

/// An epoll set watching one pipe through two fds of it (one description,
/// two registrations: epoll keys them by file and fd number).
#[test]
fn epoll_watching_one_file_through_two_fds() {
    both(
        "epolltwice",
        "import select\n\
         r, w = os.pipe()\n\
         r2 = os.dup(r)\n\
         e = select.epoll()\n\
         e.register(r, select.EPOLLIN)\n\
         e.register(r2, select.EPOLLIN | select.EPOLLET)",
        "import select\n\
         os.write(w, b'x')\n\
         want('events', sorted(e.poll(2)), sorted([(r, select.EPOLLIN), (r2, select.EPOLLIN)]))\n\
         want('edge reported once', e.poll(0.1), [(r, select.EPOLLIN)])",
    );
}

/// A bound unix datagram socket that nobody is connected to, with messages
/// sent to it by name (sendto) from an unconnected socket of the process.
#[test]
fn unconnected_datagram_sockets_with_queued_messages() {
    both(
        "dgramunconnected",
        "import socket\n\
         a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         a.bind(os.path.join(d, 'a'))\n\
         b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         b.sendto(b'one', os.path.join(d, 'a'))\n\
         b.sendto(b'two', os.path.join(d, 'a'))",
        "import socket\n\
         a.settimeout(2)\n\
         want('first', a.recv(16), b'one')\n\
         want('second', a.recv(16), b'two')\n\
         b.sendto(b'three', os.path.join(d, 'a'))\n\
         want('sent after', a.recv(16), b'three')",
    );
}

/// `restore --lazy` of a process that drops some of its memory
/// (MADV_DONTNEED, of the pages loaded last), forks and moves part of its
/// memory (mremap) the moment it runs, while its pages are still loading:
/// the child sees the parent's memory, the moved pages are there at their
/// new place, the dropped ones read as zeros, the rest as it was.
#[test]
fn lazy_restore_of_a_process_changing_its_mappings_while_it_loads() {
    let name = "lazy-changes";
    let p = start(
        name,
        &format!(
            "{MMAP}libc.mremap.restype = ctypes.c_void_p\n\
             libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]\n\
             libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]\n\
             P = 4096\n\
             N = 48 * 1024\n\
             stamp = lambda i: struct.pack('QQ', i, i ^ 0x5a5a5a5a) * 256\n\
             a = mmap(N * P, 3, 0x22)\n\
             for i in range(N):\n    \
                 ctypes.memmove(a + i * P, stamp(i), P)\n\
             half = N // 2\n\
             to = mmap(half * P, 0, 0x22)"
        ),
        "want('madvise', libc.madvise(a + (N - 64) * P, 64 * P, 4), 0)\n\
         child = os.fork()\n\
         if child == 0:\n    \
             good = all(ctypes.string_at(a + i * P, P) == stamp(i) for i in range(N - 64))\n    \
             os._exit(0 if good and ctypes.string_at(a + (N - 64) * P, 64 * P) == bytes(64 * P) else 1)\n\
         moved = libc.mremap(a + half * P, half * P, half * P, 3, to)\n\
         want('moved to', moved, to)\n\
         want('pages left in place', [i for i in range(half) if ctypes.string_at(a + i * P, P) != stamp(i)][:5], [])\n\
         want('pages moved', [i for i in range(half, N - 64) if ctypes.string_at(to + (i - half) * P, P) != stamp(i)][:5], [])\n\
         want('dropped pages', ctypes.string_at(to + (half - 64) * P, 64 * P) == bytes(64 * P), True)\n\
         want('the child saw its memory', os.waitpid(child, 0)[1], 0)",
    );
    let images = tempdir(&format!("{name}-img"));
    dump_ok(p.pid, images.path(), &[]);
    let mut p = p;
    p.wait_exit(Duration::from_secs(30));
    // It checks the moment it runs again: while its pages load.
    fs::write(p.dir.join("check"), "").unwrap();
    let r = util::run(["restore", "--images", images.path().to_str().unwrap(), "--lazy"]).success();
    assert_eq!(r.stdout.trim(), p.pid.to_string(), "restored at another pid\n{}", r.dump());
    assert!(r.stderr.contains("memory loaded"), "{}", r.dump());
    let mut restored = Spawned::adopt(&format!("{name} (restored)"), p.pid, &p.dir);
    let result =
        restored.wait_for(Duration::from_secs(60), "DIR/result", || fs::read_to_string(p.dir.join("result")).ok());
    assert_eq!(result.trim(), "ok", "{name} after a lazy restore\n{}", restored.log());
    restored.wait_exit(Duration::from_secs(30));
}

/// Two adjacent private anonymous mappings alike but for their pages'
/// history (each written before they met, so the kernel keeps them apart)
/// are two again, each with its bytes: restore makes each fresh, and the
/// kernel merges fresh mappings alike into one.
#[test]
fn adjacent_anonymous_mappings_stay_apart() {
    both(
        "apart",
        &format!(
            "{MMAP}libc.mremap.restype = ctypes.c_void_p\n\
             libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]\n\
             libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]\n\
             P = 4096\n\
             a = mmap(3 * P, 3, 0x22)\n\
             ctypes.memset(a, 1, P)\n\
             b = mmap(2 * P, 3, 0x22)\n\
             ctypes.memset(b, 2, 2 * P)\n\
             assert libc.munmap(a + P, 2 * P) == 0\n\
             assert libc.mremap(b, 2 * P, 2 * P, 3, a + P) == a + P, 'mremap: errno %d' % ctypes.get_errno()\n\
             def around(at):\n    \
                 ranges = [[int(x, 16) for x in l.split()[0].split('-')] for l in open('/proc/self/maps')]\n    \
                 return ([e for s, e in ranges if s < at <= e], [s for s, e in ranges if s <= at < e])\n\
             assert around(a + P) == ([a + P], [a + P]), 'the kernel merged them at set-up: %r' % (around(a + P),)"
        ),
        "want('two mappings meeting at a + P', around(a + P), ([a + P], [a + P]))\n\
         want('first bytes', ctypes.string_at(a, P), b'\\x01' * P)\n\
         want('second bytes', ctypes.string_at(a + P, 2 * P), b'\\x02' * 2 * P)",
    );
}

/// A private mapping of /dev/zero (written: its pages are the process's
/// own) and anonymous memory with bytes in it made PROT_NONE.
#[test]
fn private_dev_zero_and_prot_none_memory() {
    both(
        "privzero",
        "import mmap, ctypes\n\
         z = os.open('/dev/zero', os.O_RDWR)\n\
         m = mmap.mmap(z, 3 * 4096, mmap.MAP_PRIVATE)\n\
         m[4096:4101] = b'zeros'\n\
         n = mmap.mmap(-1, 2 * 4096, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n\
         n[0:6] = b'hidden'\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]\n\
         addr = ctypes.addressof(ctypes.c_char.from_buffer(n))\n\
         assert libc.mprotect(addr, 2 * 4096, 0) == 0",
        "want('private /dev/zero', (m[0:5], m[4096:4101]), (bytes(5), b'zeros'))\n\
         want('mapping', [l.split()[1] for l in open('/proc/self/maps') if l.rstrip().endswith('/dev/zero')], ['rw-p'])\n\
         want('still PROT_NONE', [l.split()[1] for l in open('/proc/self/maps') if l.startswith('%x-' % addr)], ['---p'])\n\
         assert libc.mprotect(addr, 2 * 4096, 3) == 0\n\
         want('PROT_NONE bytes', n[0:6], b'hidden')",
    );
}

/// Connections not accepted yet, on stream and seqpacket listeners (one
/// whose file was removed since): they wait in the same order, and each
/// connecting socket talks to the end its listener hands out.
#[test]
fn unix_connections_waiting_to_be_accepted() {
    both(
        "unix-waiting",
        "import socket\n\
         names = {}\n\
         ends = {}\n\
         for t, n in ((socket.SOCK_STREAM, 'stream'), (socket.SOCK_SEQPACKET, 'seqpacket'), (socket.SOCK_STREAM, 'gone')):\n    \
             p = os.path.join(d, n)\n    \
             l = socket.socket(socket.AF_UNIX, t)\n    \
             l.bind(p)\n    \
             l.listen(4)\n    \
             c = socket.socket(socket.AF_UNIX, t)\n    \
             c.connect(p)\n    \
             a = l.accept()[0]\n    \
             w1 = socket.socket(socket.AF_UNIX, t)\n    \
             w1.connect(p)\n    \
             w2 = socket.socket(socket.AF_UNIX, t)\n    \
             w2.connect(p)\n    \
             if n == 'gone':\n        os.unlink(p)\n    \
             ends[n] = (l, c, a, w1, w2)",
        "import socket\n\
         for n, (l, c, a, w1, w2) in ends.items():\n    \
             l.settimeout(2)\n    \
             a1 = l.accept()[0]\n    \
             a2 = l.accept()[0]\n    \
             w2.send(b'two')\n    \
             w1.send(b'one')\n    \
             a1.settimeout(2)\n    \
             a2.settimeout(2)\n    \
             want(n + ' first waiting', a1.recv(8), b'one')\n    \
             want(n + ' second waiting', a2.recv(8), b'two')\n    \
             a1.send(b'back')\n    \
             w1.settimeout(2)\n    \
             want(n + ' answer', w1.recv(8), b'back')\n    \
             c.send(b'x')\n    \
             a.settimeout(2)\n    \
             want(n + ' accepted before', a.recv(8), b'x')\n    \
             l.setblocking(False)\n    \
             try:\n        l.accept()\n        more = True\n    except BlockingIOError:\n        more = False\n    \
             want(n + ' nothing more waiting', more, False)\n\
         want('removed file', os.path.exists(os.path.join(d, 'gone')), False)",
    );
}

/// TCP connections whose buffers are full both ways, one with buffer sizes
/// the kernel tunes and one with sizes set by the program: every byte
/// queued each way (sent and not acknowledged, never sent, received and
/// not read) comes back in order, and sizes set are as before (restores
/// used to fail: the unsent bytes did not fit, EAGAIN).
#[test]
fn tcp_buffers_full_both_ways() {
    both(
        "tcpfull",
        "import socket\n\
         L = socket.socket()\n\
         L.bind(('127.0.0.1', 0))\n\
         L.listen(4)\n\
         PATTERN = bytes(range(251)) * 64\n\
         def fill(x):\n    \
             x.setblocking(False)\n    \
             n = 0\n    \
             while True:\n        \
                 try:\n            \
                     k = x.send(PATTERN[n % 251:n % 251 + 4096])\n        \
                 except BlockingIOError:\n            \
                     break\n        \
                 n += k\n    \
             return n\n\
         conns = []\n\
         for sizes in (None, 65536):\n    \
             c = socket.socket()\n    \
             if sizes:\n        \
                 c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sizes)\n        \
                 c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sizes)\n    \
             c.connect(L.getsockname())\n    \
             s = L.accept()[0]\n    \
             time.sleep(0.2)\n    \
             sent = (fill(c), fill(s))\n    \
             bufs = [(x.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), x.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) for x in (c, s)]\n    \
             conns.append((c, s, sent, bufs))",
        "def drain(x, n):\n    \
             x.setblocking(True)\n    \
             x.settimeout(10)\n    \
             got = bytearray()\n    \
             while len(got) < n:\n        \
                 b = x.recv(1 << 20)\n        \
                 if not b:\n            break\n        \
                 got += b\n    \
             return bytes(got)\n\
         def expected(n):\n    \
             return (bytes(range(251)) * (n // 251 + 2))[:n]\n\
         for i, (c, s, (to_s, to_c), bufs) in enumerate(conns):\n    \
             if i:\n        \
                 want('%d sizes set' % i, (c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), c.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)), bufs[0])\n    \
             want('%d bytes to the server' % i, drain(s, to_s) == expected(to_s), True)\n    \
             want('%d bytes to the client' % i, drain(c, to_c) == expected(to_c), True)\n    \
             c.send(b'more')\n    \
             want('%d after' % i, s.recv(4), b'more')",
    );
}

/// Two TCP listeners that bound one port together with SO_REUSEPORT, one
/// of which turned it off since (restores used to fail: address in use):
/// both listen on it again, each with its option as it was.
#[test]
fn tcp_listeners_that_shared_a_port_before_one_turned_reuseport_off() {
    both(
        "reuseport-off",
        "import socket\n\
         ls = [socket.socket() for _ in range(2)]\n\
         for l in ls:\n    \
             l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
         ls[0].bind(('127.0.0.1', 0))\n\
         ls[1].bind(ls[0].getsockname())\n\
         for l in ls:\n    \
             l.listen(4)\n\
         ls[0].setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)",
        "import socket, select\n\
         want('names', ls[1].getsockname(), ls[0].getsockname())\n\
         want('SO_REUSEPORT', [l.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for l in ls], [0, 1])\n\
         c = socket.create_connection(ls[0].getsockname(), timeout=2)\n\
         ready, _, _ = select.select(ls, [], [], 2)\n\
         want('a listener accepts', len(ready), 1)\n\
         a = ready[0].accept()[0]\n\
         c.send(b'hi')\n\
         want('data', a.recv(2), b'hi')",
    );
}

/// A TCP connection both ends shut down for writing, so closed (one end
/// lingers in TIME_WAIT on the same addresses, which used to fail the
/// restore: address in use): each end still reads end of file and fails to
/// write with EPIPE.
#[test]
fn tcp_connection_closed_both_ways() {
    both(
        "tcp-closed",
        "import socket\n\
         L = socket.socket()\n\
         L.bind(('127.0.0.1', 0))\n\
         L.listen(1)\n\
         c = socket.create_connection(L.getsockname())\n\
         s = L.accept()[0]\n\
         L.close()\n\
         c.shutdown(socket.SHUT_WR)\n\
         s.shutdown(socket.SHUT_WR)\n\
         def state(x):\n    return x.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]\n\
         for _ in range(200):\n    \
             if (state(c), state(s)) == (7, 7):\n        break\n    \
             time.sleep(0.01)\n\
         names = [x.getsockname() for x in (c, s)]\n\
         assert (state(c), state(s)) == (7, 7), (state(c), state(s))",
        "for x, n in zip((c, s), ('client', 'server')):\n    \
             want(n + ' state', state(x), 7)\n    \
             want(n + ' name', x.getsockname(), names[(c, s).index(x)])\n    \
             x.settimeout(2)\n    \
             want(n + ' reads end of file', x.recv(1), b'')\n    \
             try:\n        x.send(b'x')\n        err = None\n    except BrokenPipeError:\n        err = 'EPIPE'\n    \
             want(n + ' write', err, 'EPIPE')",
    );
}

/// Socket options without fields of their own (priority, mark, low-water
/// mark, out-of-band inline, keepalive timing, cork, user timeout, TOS,
/// TTL, linger, timeouts) on a TCP listener, both ends of a connection, a
/// UDP socket and a unix socket: each as it was (restores dropped them).
#[test]
fn socket_options() {
    both(
        "sockopts",
        "import socket, struct\n\
         S, T, I = socket.SOL_SOCKET, socket.IPPROTO_TCP, socket.IPPROTO_IP\n\
         L = socket.socket()\n\
         L.bind(('127.0.0.1', 0))\n\
         L.listen(2)\n\
         c = socket.create_connection(L.getsockname())\n\
         a = L.accept()[0]\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         x = socket.socketpair()[0]\n\
         ints = [(S, socket.SO_PRIORITY, 5), (S, socket.SO_RCVLOWAT, 7), (S, 36, 42), (S, socket.SO_OOBINLINE, 1)]\n\
         tcp = [(T, socket.TCP_KEEPIDLE, 33), (T, socket.TCP_KEEPINTVL, 11), (T, socket.TCP_KEEPCNT, 4), (T, socket.TCP_CORK, 1), (T, socket.TCP_USER_TIMEOUT, 4321)]\n\
         ip = [(I, socket.IP_TOS, 0x10), (I, socket.IP_TTL, 17)]\n\
         plan = [(L, ip + ints + tcp[:3]), (c, ip + ints + tcp), (a, tcp[:2]), (u, ip + ints), (x, ints[:2])]\n\
         for s, opts in plan:\n    \
             for level, name, value in opts:\n        \
                 s.setsockopt(level, name, value)\n\
         for s in (c, u, x):\n    \
             s.setsockopt(S, socket.SO_LINGER, struct.pack('ii', 1, 9))\n    \
             s.setsockopt(S, socket.SO_RCVTIMEO, struct.pack('ll', 3, 250000))\n\
         before = [[s.getsockopt(l, n) for l, n, _ in opts] for s, opts in plan]\n\
         extra = [(s.getsockopt(S, socket.SO_LINGER, 8), s.getsockopt(S, socket.SO_RCVTIMEO, 16)) for s in (c, u, x)]\n\
         assert [[v for _, _, v in opts] for _, opts in plan] == before, before",
        "want('int options', [[s.getsockopt(l, n) for l, n, _ in opts] for s, opts in plan], before)\n\
         want('linger and timeouts', [(s.getsockopt(S, socket.SO_LINGER, 8), s.getsockopt(S, socket.SO_RCVTIMEO, 16)) for s in (c, u, x)], extra)\n\
         fresh = socket.socket()\n\
         want('defaults left alone', [a.getsockopt(S, socket.SO_PRIORITY), a.getsockopt(I, socket.IP_TTL)], [fresh.getsockopt(S, socket.SO_PRIORITY), fresh.getsockopt(I, socket.IP_TTL)])",
    );
}

/// Files made with O_TMPFILE (glibc's tmpfile(3)): their flags still show
/// O_TMPFILE, and the restore used to fail reopening them (ENOTDIR). Each
/// is back with its bytes and offset, still deleted, and not a directory.
#[test]
fn files_made_with_o_tmpfile() {
    both(
        "tmpfile",
        "t = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)\n\
         os.write(t, b'temporary')\n\
         r = os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o600)\n\
         os.write(r, b'more')",
        "want('offsets', [os.lseek(t, 0, os.SEEK_CUR), os.lseek(r, 0, os.SEEK_CUR)], [9, 4])\n\
         want('bytes', os.pread(t, 20, 0), b'temporary')\n\
         want('still deleted', [os.readlink('/proc/self/fd/%d' % f).endswith(' (deleted)') for f in (t, r)], [True, True])\n\
         want('regular files', [stat.S_ISREG(os.fstat(f).st_mode) for f in (t, r)], [True, True])\n\
         os.write(r, b'!')\n\
         want('write-only still', fcntl.fcntl(r, fcntl.F_GETFL) & os.O_ACCMODE, os.O_WRONLY)",
    );
}

/// A seqpacket socketpair whose other end sent records (one empty) and
/// closed (the dump used to spin for ever on the end of file), and a
/// datagram socket shut down for reading with messages queued: every record
/// and message in order, then end of file (the records) or nothing more.
#[test]
fn records_queued_before_the_end_of_file() {
    both(
        "records-eof",
        "import socket\n\
         a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
         for m in (b'one', b'', b'two'):\n    b.send(m)\n\
         b.close()\n\
         u, v = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         v.send(b'x')\n\
         v.send(b'y')\n\
         u.shutdown(socket.SHUT_RD)",
        "a.settimeout(2)\n\
         u.settimeout(2)\n\
         want('records', [a.recv(8) for _ in range(4)], [b'one', b'', b'two', b''])\n\
         want('messages', [u.recv(8) for _ in range(2)], [b'x', b'y'])\n\
         u.settimeout(0.2)\n\
         try:\n    more = u.recv(8)\nexcept TimeoutError:\n    more = 'nothing'\n\
         want('then', more, 'nothing')",
    );
}

/// Children stopped by SIGTSTP (a shell's ^Z) and by SIGSTOP, not waited
/// for yet: the parent's waitpid tells which signal stopped each, as
/// before (the SIGTSTP one came back stopped by SIGSTOP).
#[test]
fn children_stopped_by_job_control_signals() {
    both(
        "stop-signals",
        "kids = {}\n\
         for sig in (signal.SIGTSTP, signal.SIGSTOP):\n    \
             pid = os.fork()\n    \
             if pid == 0:\n        \
                 while True:\n            time.sleep(0.05)\n    \
             os.kill(pid, sig)\n    \
             while open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()[0] != 'T':\n        \
                 time.sleep(0.01)\n    \
             kids[pid] = sig",
        "for pid, sig in kids.items():\n    \
             _, st = os.waitpid(pid, os.WUNTRACED)\n    \
             want('stopped %d' % pid, (os.WIFSTOPPED(st), os.WSTOPSIG(st) if os.WIFSTOPPED(st) else None), (True, sig))\n    \
             os.kill(pid, signal.SIGKILL)\n    \
             os.waitpid(pid, 0)",
    );
}
