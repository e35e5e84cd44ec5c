/*
 * unix_sockets: unix-domain sockets of the three types inside a process
 * tree, with data queued unread in every direction, a listener bound to a
 * path and a datagram socket bound to an abstract name.
 *
 * Usage: unix_sockets DIR
 *
 * Processes: root (the one the harness started) -> C. C sets
 * PR_SET_PDEATHSIG to SIGKILL right after the fork; only the root touches
 * DIR. Control pipes as in tree (kids.h): root 20 -> C 10 (the check byte
 * 'C'), C 11 -> root 21 (C's setup byte 'R', then its verdict), C 12 ->
 * root 22 (C's beats, one counter per iteration, O_NONBLOCK at the root).
 *
 * Sockets, at fixed fds (nothing else but the pipes is open above 2, and
 * no fd is ever in flight with SCM_RIGHTS):
 *   root 30 <-> C 40  SOCK_STREAM socketpair; 30 is O_NONBLOCK (C's 40 is not)
 *   root 31  -> 32    SOCK_DGRAM socketpair inside the root: 31 sent records
 *                     1-4 (223, 189, 20000 and 121 bytes) to 32 at setup,
 *                     unread until check
 *   root 33 <-> C 43  SOCK_SEQPACKET socketpair
 *   root 34           SOCK_STREAM listener bound to DIR/listen.sock
 *   root 35 <-> C 45  C's connection to DIR/listen.sock, accepted by 34
 *   root 36 <-  C 46  36: SOCK_DGRAM bound to the abstract name
 *                     "\0stasis-wl-<root pid>", SO_PASSCRED; 46: unbound,
 *                     connect()ed to that name; it sent records 1-3 (the
 *                     third of 20000 bytes) at setup, unread until check
 *
 * Records: data moves as numbered records (records.h), 16 to 256 bytes and
 * REC_BIG (20000) when n % 64 == 3, the seed of a direction its sender's fd.
 * A reader requires 1, 2, 3, ... then END, each intact, and nothing after
 * END: a lost, repeated, reordered, cut or foreign record shows as a wrong
 * number, length or pattern. On SOCK_SEQPACKET and SOCK_DGRAM each message
 * must be exactly one record (recv with MSG_TRUNC gives its real length: the
 * boundaries are checked).
 *
 * While running: on 30/40, 33/43 and 35/45 both processes send a record
 * every ~10 ms iteration and read the peer's only while more than KEEP (2)
 * complete records are queued (FIONREAD). Each sent KEEP records before
 * ready, so at any time at least KEEP records are queued unread in each of
 * these six directions, plus the datagrams on 32 and 36.
 *
 * Check: when DIR/check exists the root writes 'C' to C, and both processes
 * send END on every direction they send on (root 30, 31, 33, 35; C 40, 43,
 * 45, 46) and read every direction they receive up to its END (root 30, 32,
 * 33, 35, 36; C 40, 43, 45). The END records on 31 and 46 go out after
 * the restore, behind the datagrams queued since setup. C connects a new
 * socket to DIR/listen.sock and sends 'n'; the root accepts it on 34
 * (skipping connections whose SO_PEERCRED is not C's) and answers 'a'. The
 * root sends a datagram to the abstract name from a new unbound socket (a
 * lookup by name) and reads it on 36. Each process verifies getpid() (C: getppid() and PR_GET_PDEATHSIG is
 * SIGKILL) and, for each of its sockets, SO_TYPE, SO_DOMAIN, O_NONBLOCK
 * (only 30), SO_PASSCRED (only 36), its own address and its peer's: 34 and
 * 35 have DIR/listen.sock (and so has C's 45 as peer), 36 the abstract name
 * (and so has C's 46 as peer), every other end is unnamed. 34 must be
 * listening (SO_ACCEPTCONN). The root then collects C's verdict, beats and
 * exit status as in tree and writes DIR/result.
 *
 * Publishes in DIR/info: "pids" and "pid_c" (C), "listen_path" and
 * "abstract_name" (the name without its leading NUL byte).
 */
#include "kids.h"
#include "sockopt.h"

/* Record n is this long when n % 64 == 3 (records.h). */
#define REC_BIG 20000
#include "records.h"

#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#define QUEUED_DGRAMS 4
#define QUEUED_ABSTRACT 3
/* How long the check may wait for the peer. */
#define VERDICT_MS 30000

enum { ROOT_STREAM = 30, ROOT_DGRAM_TX, ROOT_DGRAM_RX, ROOT_SEQPACKET, LISTENER, ROOT_CONN, ABSTRACT };
enum { C_STREAM = 40, C_SEQPACKET = 43, C_CONN = 45, C_DGRAM = 46 };

/* An address as getsockname/getpeername return it. */
struct uaddr {
	struct sockaddr_un sa;
	socklen_t len;
};

static struct uaddr listen_addr, abstract_addr, unnamed = { .sa.sun_family = AF_UNIX, .len = sizeof(sa_family_t) };
static pid_t root_pid, child_pid;
static struct kid kid;

/* The seed of a direction is the sender's fd. */
static struct chan root_tx[] = {
	CHAN("stream pair root 30 -> C 40", ROOT_STREAM, SOCK_STREAM, ROOT_STREAM),
	CHAN("seqpacket pair root 33 -> C 43", ROOT_SEQPACKET, SOCK_SEQPACKET, ROOT_SEQPACKET),
	CHAN("connection root 35 -> C 45", ROOT_CONN, SOCK_STREAM, ROOT_CONN),
};
static struct chan root_rx[] = {
	CHAN("stream pair C 40 -> root 30", ROOT_STREAM, SOCK_STREAM, C_STREAM),
	CHAN("seqpacket pair C 43 -> root 33", ROOT_SEQPACKET, SOCK_SEQPACKET, C_SEQPACKET),
	CHAN("connection C 45 -> root 35", ROOT_CONN, SOCK_STREAM, C_CONN),
};
static struct chan dgram_tx = CHAN("dgram pair 31 -> 32", ROOT_DGRAM_TX, SOCK_DGRAM, ROOT_DGRAM_TX);
static struct chan dgram_rx = CHAN("dgram pair 31 -> 32", ROOT_DGRAM_RX, SOCK_DGRAM, ROOT_DGRAM_TX);
static struct chan abstract_rx = CHAN("abstract dgram C 46 -> root 36", ABSTRACT, SOCK_DGRAM, C_DGRAM);
static struct chan c_tx[] = {
	CHAN("stream pair C 40 -> root 30", C_STREAM, SOCK_STREAM, C_STREAM),
	CHAN("seqpacket pair C 43 -> root 33", C_SEQPACKET, SOCK_SEQPACKET, C_SEQPACKET),
	CHAN("connection C 45 -> root 35", C_CONN, SOCK_STREAM, C_CONN),
};
static struct chan c_rx[] = {
	CHAN("stream pair root 30 -> C 40", C_STREAM, SOCK_STREAM, ROOT_STREAM),
	CHAN("seqpacket pair root 33 -> C 43", C_SEQPACKET, SOCK_SEQPACKET, ROOT_SEQPACKET),
	CHAN("connection root 35 -> C 45", C_CONN, SOCK_STREAM, ROOT_CONN),
};
static struct chan abstract_tx = CHAN("abstract dgram C 46 -> root 36", C_DGRAM, SOCK_DGRAM, C_DGRAM);
#define NPAIRED (sizeof(root_tx) / sizeof(root_tx[0]))

/* What a socket must still be at check; a NULL address is not checked. */
struct sock_spec {
	int fd, type;
	bool nonblock, passcred;
	const struct uaddr *name, *peer;
};

static const struct sock_spec root_socks[] = {
	{ ROOT_STREAM, SOCK_STREAM, true, false, &unnamed, &unnamed },
	{ ROOT_DGRAM_TX, SOCK_DGRAM, false, false, &unnamed, &unnamed },
	{ ROOT_DGRAM_RX, SOCK_DGRAM, false, false, &unnamed, &unnamed },
	{ ROOT_SEQPACKET, SOCK_SEQPACKET, false, false, &unnamed, &unnamed },
	{ LISTENER, SOCK_STREAM, false, false, &listen_addr, NULL },
	{ ROOT_CONN, SOCK_STREAM, false, false, &listen_addr, &unnamed },
	{ ABSTRACT, SOCK_DGRAM, false, true, &abstract_addr, NULL },
};

static const struct sock_spec c_socks[] = {
	{ C_STREAM, SOCK_STREAM, false, false, &unnamed, &unnamed },
	{ C_SEQPACKET, SOCK_SEQPACKET, false, false, &unnamed, &unnamed },
	{ C_CONN, SOCK_STREAM, false, false, &unnamed, &listen_addr },
	{ C_DGRAM, SOCK_DGRAM, false, false, &unnamed, &abstract_addr },
};

/* Wait until DEADLINE for a message on FD and read it; returns its real length (MSG_TRUNC), or -1 and *WHY. */
static ssize_t recv_msg(int fd, void *buf, size_t size, uint64_t deadline, const char **why)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, ms_left(deadline));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			*why = r < 0 ? strerror(errno) : "timed out";
			return -1;
		}
		ssize_t n = recv(fd, buf, size, MSG_TRUNC | MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			*why = strerror(errno);
		return n;
	}
}

/* Read C's next record (waiting until DEADLINE): it must be record n or END, intact. */
static void chan_recv(struct chan *c, uint64_t deadline)
{
	static uint8_t buf[REC_MAX + 1];
	uint64_t n = c->n + 1;
	size_t len = rec_len(n);
	const char *why;
	if (c->type == SOCK_STREAM) {
		size_t got = read_until(c->fd, buf, len, deadline, &why);
		if (got != len) {
			chan_fail(c, "record %llu: %zu of %zu bytes (%s)", (unsigned long long)n, got, len, why);
			return;
		}
	} else {
		ssize_t got = recv_msg(c->fd, buf, sizeof(buf), deadline, &why);
		if (got < 0) {
			chan_fail(c, "record %llu: %s", (unsigned long long)n, why);
			return;
		}
		if ((size_t)got != len) {
			chan_fail(c, "record %llu: a message of %zd bytes, expected %zu", (unsigned long long)n, got,
				  len);
			return;
		}
	}
	chan_take(c, buf);
}

/* While running: read C's records while more than KEEP complete ones are queued. */
static void chan_drain(struct chan *c)
{
	while (chan_over_keep(c, 0))
		chan_recv(c, deadline_in(IO_MS));
}

/* At check: read C's records up to its END; nothing may follow. */
static void chan_finish(struct chan *c, uint64_t deadline)
{
	while (!c->broken && !c->ended)
		chan_recv(c, deadline);
	if (c->broken)
		return;
	uint8_t b;
	ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n > 0)
		chan_fail(c, "data after the END record (which followed record %llu)", (unsigned long long)c->n);
	else if (n < 0 && errno != EAGAIN)
		chan_fail(c, "after the END record: %s", strerror(errno));
}

static void addr_str(char *out, size_t n, const struct uaddr *a)
{
	size_t plen = a->len > offsetof(struct sockaddr_un, sun_path) ? a->len - offsetof(struct sockaddr_un, sun_path)
								     : 0;
	if (plen == 0)
		snprintf(out, n, "unnamed (%u bytes)", (unsigned)a->len);
	else if (a->sa.sun_path[0] == 0)
		snprintf(out, n, "@%.*s (%u bytes)", (int)plen - 1, a->sa.sun_path + 1, (unsigned)a->len);
	else
		snprintf(out, n, "%.*s (%u bytes)", (int)plen, a->sa.sun_path, (unsigned)a->len);
}

/* FD's own address (or its peer's, if PEER), dying on failure (setup only). */
static struct uaddr name_of(int fd, bool peer)
{
	struct uaddr a = { .len = sizeof(a.sa) };
	memset(&a.sa, 0, sizeof(a.sa));
	if ((peer ? getpeername : getsockname)(fd, (struct sockaddr *)&a.sa, &a.len) < 0)
		wl_die("%s of fd %d: %s", peer ? "getpeername" : "getsockname", fd, strerror(errno));
	return a;
}

/* FD's own address (or its peer's) must be WANT. */
static void expect_name(int fd, bool peer, const struct uaddr *want)
{
	const char *what = peer ? "peer address" : "address";
	struct uaddr a = { .len = sizeof(a.sa) };
	memset(&a.sa, 0, sizeof(a.sa));
	if ((peer ? getpeername : getsockname)(fd, (struct sockaddr *)&a.sa, &a.len) < 0) {
		wl_fail("fd %d: %s: %s", fd, what, strerror(errno));
		return;
	}
	if (a.len == want->len && memcmp(&a.sa, &want->sa, a.len) == 0)
		return;
	char found[160], expected[160];
	addr_str(found, sizeof(found), &a);
	addr_str(expected, sizeof(expected), want);
	wl_fail("fd %d: %s %s, expected %s", fd, what, found, expected);
}

static void check_socks(const struct sock_spec *s, size_t n)
{
	for (size_t i = 0; i < n; i++, s++) {
		char what[64];
		snprintf(what, sizeof(what), "fd %d SO_DOMAIN", s->fd);
		wl_expect_eq(what, AF_UNIX, getint(s->fd, SOL_SOCKET, SO_DOMAIN));
		snprintf(what, sizeof(what), "fd %d SO_TYPE", s->fd);
		wl_expect_eq(what, s->type, getint(s->fd, SOL_SOCKET, SO_TYPE));
		snprintf(what, sizeof(what), "fd %d O_NONBLOCK", s->fd);
		wl_expect_eq(what, s->nonblock ? O_NONBLOCK : 0, fcntl(s->fd, F_GETFL) & O_NONBLOCK);
		snprintf(what, sizeof(what), "fd %d SO_PASSCRED", s->fd);
		wl_expect_eq(what, s->passcred, getint(s->fd, SOL_SOCKET, SO_PASSCRED));
		snprintf(what, sizeof(what), "fd %d SO_ACCEPTCONN", s->fd);
		wl_expect_eq(what, s->fd == LISTENER, getint(s->fd, SOL_SOCKET, SO_ACCEPTCONN));
		if (s->name)
			expect_name(s->fd, false, s->name);
		if (s->peer)
			expect_name(s->fd, true, s->peer);
	}
}

/* A new socket of TYPE at the fixed number FD. */
static int new_socket(int type, int fd)
{
	int s = socket(AF_UNIX, type, 0);
	WL_CHECK_SYS(s);
	return wl_move_fd(s, fd, 0);
}

static void new_pair(int type, int fd, int peer_fd)
{
	int sv[2];
	WL_CHECK_SYS(socketpair(AF_UNIX, type, 0, sv));
	wl_move_fd(sv[0], fd, 0);
	wl_move_fd(sv[1], peer_fd, 0);
}

/* C: send records and read the root's every iteration. */
static void c_tick(uint64_t gen)
{
	(void)gen;
	for (size_t i = 0; i < NPAIRED; i++) {
		chan_send(&c_tx[i], false);
		chan_drain(&c_rx[i]);
	}
}

/* C at check: a new connection to DIR/listen.sock, 'n' there and 'a' back. */
static void c_connect_again(uint64_t deadline)
{
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	char b = 'n';
	const char *why = "";
	if (s < 0 || connect(s, (struct sockaddr *)&listen_addr.sa, listen_addr.len) < 0)
		wl_fail("connect a new socket to %s: %s", listen_addr.sa.sun_path, strerror(errno));
	else if ((why = send_rec(s, &b, 1, deadline)))
		wl_fail("new connection to %s: cannot send: %s", listen_addr.sa.sun_path, why);
	else if (read_until(s, &b, 1, deadline, &why) != 1 || b != 'a')
		wl_fail("new connection to %s: no answer 'a' (%s)", listen_addr.sa.sun_path, why[0] ? why : "wrong byte");
	if (s >= 0)
		close(s);
}

static void run_child(int down[2], int up[2], int beat[2]) __attribute__((noreturn));

static void run_child(int down[2], int up[2], int beat[2])
{
	become_child(root_pid);
	child_pid = getpid();
	/* As kid_child_fds(), but keeping C's ends of the socketpairs (40, 43). */
	wl_move_fd(down[0], PARENT_DOWN, 0);
	wl_move_fd(up[1], PARENT_UP, 0);
	wl_move_fd(beat[1], PARENT_BEAT, 0);
	close_range(3, PARENT_DOWN - 1, 0);
	close_range(PARENT_BEAT + 1, C_STREAM - 1, 0);

	new_socket(SOCK_STREAM, C_CONN);
	WL_CHECK_SYS(connect(C_CONN, (struct sockaddr *)&listen_addr.sa, listen_addr.len));
	new_socket(SOCK_DGRAM, C_DGRAM);
	WL_CHECK_SYS(connect(C_DGRAM, (struct sockaddr *)&abstract_addr.sa, abstract_addr.len));
	for (int i = 0; i < QUEUED_ABSTRACT; i++)
		chan_send(&abstract_tx, false);
	for (int k = 0; k < KEEP; k++)
		for (size_t i = 0; i < NPAIRED; i++)
			chan_send(&c_tx[i], false);
	if (wl_nfail)
		wl_die("C: %s", wl_failures);
	wl_write_all(PARENT_UP, "R", 1);

	kid_beat_until_check("C", 0, c_tick);

	uint8_t msg[2];
	size_t got = read_buffered(PARENT_DOWN, msg, sizeof(msg));
	if (got != 1 || msg[0] != 'C')
		wl_fail("down pipe held %zu bytes at check, expected just 'C'", got);
	for (size_t i = 0; i < NPAIRED; i++)
		chan_send(&c_tx[i], true);
	chan_send(&abstract_tx, true);
	uint64_t deadline = deadline_in(VERDICT_MS);
	c_connect_again(deadline);
	for (size_t i = 0; i < NPAIRED; i++)
		chan_finish(&c_rx[i], deadline);

	wl_expect_eq("getpid()", child_pid, getpid());
	wl_expect_eq("getppid()", root_pid, getppid());
	int sig = -1;
	if (prctl(PR_GET_PDEATHSIG, &sig) < 0)
		wl_fail("PR_GET_PDEATHSIG: %s", strerror(errno));
	else
		wl_expect_eq("PR_GET_PDEATHSIG", SIGKILL, sig);
	check_socks(c_socks, sizeof(c_socks) / sizeof(c_socks[0]));

	kid_send_verdict("C");
}

/* Root: C's beats; send records and read C's every iteration. */
static void root_tick(uint64_t gen)
{
	(void)gen;
	drain(&kid);
	for (size_t i = 0; i < NPAIRED; i++) {
		chan_send(&root_tx[i], false);
		chan_drain(&root_rx[i]);
	}
}

/* Root at check: accept C's new connection on the listener, 'n' from it and 'a' back. */
static void accept_again(uint64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = LISTENER, .events = POLLIN };
		int r = poll(&p, 1, ms_left(deadline));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			wl_fail("listener: C's new connection never came (%s)", r < 0 ? strerror(errno) : "timed out");
			return;
		}
		int s = accept4(LISTENER, NULL, NULL, SOCK_CLOEXEC);
		if (s < 0) {
			wl_fail("listener: accept: %s", strerror(errno));
			return;
		}
		struct ucred cred = { 0 };
		socklen_t len = sizeof(cred);
		if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.pid != child_pid) {
			close(s); /* someone else's (a test's) connection */
			continue;
		}
		char b = 0;
		const char *why;
		if (read_until(s, &b, 1, deadline, &why) != 1 || b != 'n')
			wl_fail("listener: C's new connection: no byte 'n' (%s)", why[0] ? why : "wrong byte");
		else if ((why = send_rec(s, "a", 1, deadline)))
			wl_fail("listener: C's new connection: cannot answer: %s", why);
		close(s);
		return;
	}
}

/* Root at check: a datagram sent to the abstract name from a new socket arrives on 36. */
static void send_by_name(uint64_t deadline)
{
	int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0 || sendto(s, "L", 1, 0, (struct sockaddr *)&abstract_addr.sa, abstract_addr.len) != 1) {
		wl_fail("sendto the abstract name from a new socket: %s", strerror(errno));
	} else {
		char buf[8];
		const char *why = "";
		ssize_t n = recv_msg(ABSTRACT, buf, sizeof(buf), deadline, &why);
		if (n < 0)
			wl_fail("abstract dgram 36: the datagram sent by name never came (%s)", why);
		else if (n != 1 || buf[0] != 'L')
			wl_fail("abstract dgram 36: received %zd bytes, expected the 1-byte datagram sent by name", n);
	}
	if (s >= 0)
		close(s);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	root_pid = getpid();

	int down[2], up[2], beat[2];
	kid_pipes(down, up, beat);

	new_pair(SOCK_STREAM, ROOT_STREAM, C_STREAM);
	WL_CHECK_SYS(fcntl(ROOT_STREAM, F_SETFL, fcntl(ROOT_STREAM, F_GETFL) | O_NONBLOCK));
	new_pair(SOCK_DGRAM, ROOT_DGRAM_TX, ROOT_DGRAM_RX);
	new_pair(SOCK_SEQPACKET, ROOT_SEQPACKET, C_SEQPACKET);

	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if ((size_t)snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/listen.sock", dir) >= sizeof(sa.sun_path))
		wl_die("%s/listen.sock is too long for a unix socket address", dir);
	new_socket(SOCK_STREAM, LISTENER);
	WL_CHECK_SYS(bind(LISTENER, (struct sockaddr *)&sa, sizeof(sa)));
	WL_CHECK_SYS(listen(LISTENER, 8));
	listen_addr = name_of(LISTENER, false);

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	int name_len = snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "stasis-wl-%d", (int)root_pid);
	new_socket(SOCK_DGRAM, ABSTRACT);
	WL_CHECK_SYS(bind(ABSTRACT, (struct sockaddr *)&sa,
			  (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)name_len)));
	int one = 1;
	WL_CHECK_SYS(setsockopt(ABSTRACT, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)));
	abstract_addr = name_of(ABSTRACT, false);

	pid_t pid = fork();
	WL_CHECK_SYS(pid);
	if (pid == 0)
		run_child(down, up, beat);
	child_pid = pid;
	close(down[0]);
	close(up[1]);
	close(beat[1]);
	close(C_STREAM);
	close(C_SEQPACKET);
	kid_attach(&kid, NULL, pid, KID_FD0, down, up, beat);

	/* C is connected (and has sent its first records) once 'R' came: accept at once, never hang. */
	char ready = 0;
	if (read_all(kid.up, &ready, 1) != 1 || ready != 'R')
		wl_die("C (pid %d) did not report its setup", (int)pid);
	int conn = accept4(LISTENER, NULL, NULL, SOCK_NONBLOCK);
	WL_CHECK_SYS(conn);
	WL_CHECK_SYS(fcntl(conn, F_SETFL, fcntl(conn, F_GETFL) & ~O_NONBLOCK));
	wl_move_fd(conn, ROOT_CONN, 0);
	struct ucred cred;
	socklen_t len = sizeof(cred);
	WL_CHECK_SYS(getsockopt(ROOT_CONN, SOL_SOCKET, SO_PEERCRED, &cred, &len));
	if (cred.pid != pid)
		wl_die("the connection accepted comes from pid %d, not C (pid %d)", (int)cred.pid, (int)pid);

	for (int i = 0; i < QUEUED_DGRAMS; i++)
		chan_send(&dgram_tx, false);
	for (int k = 0; k < KEEP; k++)
		for (size_t i = 0; i < NPAIRED; i++)
			chan_send(&root_tx[i], false);
	if (wl_nfail)
		wl_die("%s", wl_failures);

	wl_info(dir, "pids %d\npid_c %d\nlisten_path %s\nabstract_name %s\n", (int)pid, (int)pid,
		listen_addr.sa.sun_path, abstract_addr.sa.sun_path + 1);
	wl_ready(dir);
	wl_loop(dir, root_tick);

	if (write(kid.down, "C", 1) != 1)
		wl_fail("C (pid %d): cannot send the check byte: %s", (int)pid, strerror(errno));
	for (size_t i = 0; i < NPAIRED; i++)
		chan_send(&root_tx[i], true);
	/* Sent after the restore, behind the datagrams queued since setup. */
	chan_send(&dgram_tx, true);

	wl_expect_eq("getpid()", root_pid, getpid());
	check_socks(root_socks, sizeof(root_socks) / sizeof(root_socks[0]));

	uint64_t deadline = deadline_in(VERDICT_MS);
	chan_finish(&dgram_rx, deadline);
	for (size_t i = 0; i < NPAIRED; i++)
		chan_finish(&root_rx[i], deadline);
	chan_finish(&abstract_rx, deadline);
	accept_again(deadline);
	send_by_name(deadline);

	char who[32];
	snprintf(who, sizeof(who), "C (pid %d)", (int)pid);
	kid_gather(&kid, who, true, deadline);
	expect_no_children();
	wl_finish(dir);
}
