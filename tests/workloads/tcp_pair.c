/*
 * tcp_pair: a TCP client and server inside the process tree, with data in
 * flight both ways: queued unread at both receivers, and waiting in the
 * server's send queue behind the client's closed receive window.
 *
 * Usage: tcp_pair DIR
 *
 * Processes: root (the one the harness started) -> C. C sets
 * PR_SET_PDEATHSIG to SIGKILL right after the fork; only the root touches
 * DIR. Control pipes as in tree (kids.h): root 20 -> C 10 (the check byte
 * 'C'), C 11 -> root 21 (C's setup report, then its verdict), C 12 -> root
 * 22 (C's beats, one counter per iteration, O_NONBLOCK at the root).
 *
 * Sockets, at fixed fds (nothing else but the pipes is open above 2):
 *   root 30           TCP listener on 127.0.0.1, kernel-chosen port
 *   root 31 <-> C 41  C's connection to 30, accepted by the root. 31 has
 *                     TCP_NODELAY and SO_SNDBUF 128 KiB (C's 41 has
 *                     neither); 41 had SO_RCVBUF set to 16 KiB before
 *                     connect(), so its receive window is small
 *
 * Records: each direction is a stream of numbered records (records.h), 16
 * to 256 bytes, the seed of a direction its sender's fd. A reader requires
 * 1, 2, 3, ... then END, each intact: a lost, repeated, reordered or cut
 * record shows as a wrong number or pattern.
 *
 * While running (~10 ms iterations):
 *   root -> C: the root sends two records per iteration while its send
 *     queue (SIOCOUTQ) holds less than SENDQ (48 KiB); C reads C_BUDGET (128)
 *     bytes per iteration, about half of that. So C's receive queue stays
 *     full (its window mostly closed) and the rest waits in the root's send
 *     queue: SENDQ is more than C's window, so a window update never empties
 *     it. Before ready the root filled both. C keeps a partial record in
 *     memory rather than leaving it queued: the kernel frees (and reopens
 *     the window for) a received buffer only once it is read to its end, and
 *     one buffer may be charged for most of a small receive window.
 *   C -> root: C sends one record per iteration; the root reads them while
 *     more than KEEP complete ones are queued. C sent KEEP before ready.
 *
 * Check: when DIR/check exists the root writes 'C' to C; each side sends its
 * END record and reads the other's records up to END, then C sends 'F' and
 * the root answers 'G' (each must be the very next byte after END). The root
 * connects a new socket to its listener, accepts that very connection
 * (others are closed) and exchanges a byte over it both ways. Each process
 * verifies getpid() (C: getppid() and PR_GET_PDEATHSIG is SIGKILL), its
 * sockets' SO_TYPE, TCP state (LISTEN, ESTABLISHED), addresses (listener and
 * 31: 127.0.0.1:port, 41: 127.0.0.1:client_port, each connection's peer the
 * other end), TCP_NODELAY (only 31), SO_SNDBUF of 31 and SO_RCVBUF of 41 as
 * set at setup. The root collects C's verdict, beats and exit status as in
 * tree; once C has exited, 31 must read end of file (nothing after 'F').
 *
 * Publishes in DIR/info: "pids" and "pid_c" (C), "port" (the listener's)
 * and "client_port" (C's end of the connection).
 */
#include "kids.h"
#include "sockopt.h"
#include "records.h"

#include <arpa/inet.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

/* Bytes of the root's records C reads per iteration: about half what the root sends. */
#define C_BUDGET 128
/* The root's send queue is kept at SENDQ bytes, well within its SO_SNDBUF and above C's window. */
#define SENDQ (48 << 10)
#define ROOT_SNDBUF (128 << 10)
#define C_RCVBUF (16 << 10)
/* How long setup may take to fill the queues, and the check for the peer. */
#define FILL_MS 10000
#define VERDICT_MS 30000

enum { LISTENER = 30, ROOT_CONN = 31, C_CONN = 41 };

/* C -> root after connecting. */
struct setup_report {
	uint32_t ready; /* 'R' */
	uint32_t port;  /* C's end of the connection */
};

static pid_t root_pid, child_pid;
static int port, client_port;
static int root_sndbuf, c_rcvbuf; /* as getsockopt reported them at setup */
static struct kid kid;

/* One direction of the connection as its reader sees it: read in pieces, a partial record kept in rec. */
struct stream {
	struct chan c;
	size_t have; /* bytes of the next record read so far, in rec */
	uint8_t rec[REC_MAX];
};

/* The seed of a direction is the sender's fd. */
static struct chan root_tx = CHAN("root 31 -> C 41", ROOT_CONN, SOCK_STREAM, ROOT_CONN);
static struct stream root_rx = { .c = CHAN("C 41 -> root 31", ROOT_CONN, SOCK_STREAM, C_CONN) };
static struct chan c_tx = CHAN("C 41 -> root 31", C_CONN, SOCK_STREAM, C_CONN);
static struct stream c_rx = { .c = CHAN("root 31 -> C 41", C_CONN, SOCK_STREAM, ROOT_CONN) };

/*
 * Read up to BUDGET bytes of S's records without waiting, never past its END
 * record; a partial record is kept in s->rec. Returns the bytes read.
 */
static size_t stream_read(struct stream *s, size_t budget)
{
	size_t total = 0;
	while (budget > 0 && !s->c.broken && !s->c.ended) {
		uint64_t n = s->c.n + 1;
		size_t len = rec_len(n), want = len - s->have;
		ssize_t r = recv(s->c.fd, s->rec + s->have, want < budget ? want : budget, MSG_DONTWAIT);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			break;
		if (r <= 0) {
			chan_fail(&s->c, "record %llu, after %zu of its %zu bytes: %s", (unsigned long long)n, s->have,
				  len, r < 0 ? strerror(errno) : "end of file");
			break;
		}
		s->have += (size_t)r;
		budget -= (size_t)r;
		total += (size_t)r;
		if (s->have == len) {
			s->have = 0;
			chan_take(&s->c, s->rec);
		}
	}
	return total;
}

/* While running: read S's records while more than KEEP complete ones are queued. */
static void stream_drain(struct stream *s)
{
	while (chan_over_keep(&s->c, s->have))
		stream_read(s, rec_len(s->c.n + 1) - s->have);
}

/* At check: read S's records up to its END, waiting until DEADLINE. */
static void stream_finish(struct stream *s, uint64_t deadline)
{
	while (!s->c.broken && !s->c.ended) {
		if (stream_read(s, SIZE_MAX))
			continue;
		struct pollfd p = { .fd = s->c.fd, .events = POLLIN };
		int r = poll(&p, 1, ms_left(deadline));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			chan_fail(&s->c, "record %llu, after %zu of its %zu bytes: %s", (unsigned long long)s->c.n + 1,
				  s->have, rec_len(s->c.n + 1), r < 0 ? strerror(errno) : "timed out");
	}
}

/*
 * After both ENDs, on C's socket: send OUT (unless 0), then read IN (unless
 * 0, or C is broken: where its data stands is unknown), the very next byte.
 */
static void final_byte(struct chan *c, char out, char in, uint64_t deadline)
{
	const char *why = "";
	char b = 0;
	if (c->broken)
		in = 0;
	if (out && (why = send_rec(c->fd, &out, 1, deadline)))
		wl_fail("%s: final byte '%c': %s", c->name, out, why);
	else if (in && read_until(c->fd, &b, 1, deadline, &why) != 1)
		wl_fail("%s: no final byte '%c' after END (%s)", c->name, in, why);
	else if (in && b != in)
		wl_fail("%s: byte 0x%02x after END, expected '%c'", c->name, (unsigned char)b, in);
}

static struct sockaddr_in lo(int p)
{
	return (struct sockaddr_in){ .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
				     .sin_port = htons((uint16_t)p) };
}

static int port_of(int fd, bool peer)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	if ((peer ? getpeername : getsockname)(fd, (struct sockaddr *)&a, &len) < 0)
		return -1;
	return ntohs(a.sin_port);
}

/* FD's own address (or its peer's) must be 127.0.0.1:PORT. */
static void expect_addr(int fd, bool peer, int want_port)
{
	const char *what = peer ? "peer address" : "address";
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	if ((peer ? getpeername : getsockname)(fd, (struct sockaddr *)&a, &len) < 0) {
		wl_fail("fd %d: %s: %s", fd, what, strerror(errno));
		return;
	}
	char ip[INET_ADDRSTRLEN] = "?";
	inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
	if (len != sizeof(a) || a.sin_family != AF_INET || a.sin_addr.s_addr != htonl(INADDR_LOOPBACK) ||
	    ntohs(a.sin_port) != want_port)
		wl_fail("fd %d: %s %s:%d (family %d), expected 127.0.0.1:%d", fd, what, ip, ntohs(a.sin_port),
			a.sin_family, want_port);
}

/* The TCP state of FD (TCP_INFO) must be STATE. */
static void expect_state(int fd, int state)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	char what[32];
	snprintf(what, sizeof(what), "fd %d TCP state", fd);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
		wl_fail("%s: %s", what, strerror(errno));
	else
		wl_expect_eq(what, state, ti.tcpi_state);
}

static void expect_opt(int fd, const char *name, int level, int opt, int want)
{
	char what[64];
	snprintf(what, sizeof(what), "fd %d %s", fd, name);
	wl_expect_eq(what, want, getint(fd, level, opt));
}

/* C: send a record, read C_BUDGET bytes of the root's, every iteration. */
static void c_tick(uint64_t gen)
{
	(void)gen;
	chan_send(&c_tx, false);
	stream_read(&c_rx, C_BUDGET);
}

static void run_child(int down[2], int up[2], int beat[2]) __attribute__((noreturn));

static void run_child(int down[2], int up[2], int beat[2])
{
	become_child(root_pid);
	child_pid = getpid();
	kid_child_fds(down, up, beat);

	int s = socket(AF_INET, SOCK_STREAM, 0);
	WL_CHECK_SYS(s);
	wl_move_fd(s, C_CONN, 0);
	/* Before connect(): the window scale of the connection follows from it. */
	setint(C_CONN, SOL_SOCKET, SO_RCVBUF, C_RCVBUF);
	c_rcvbuf = getint(C_CONN, SOL_SOCKET, SO_RCVBUF);
	struct sockaddr_in to = lo(port);
	WL_CHECK_SYS(connect(C_CONN, (struct sockaddr *)&to, sizeof(to)));
	for (int k = 0; k < KEEP; k++)
		chan_send(&c_tx, false);
	if (wl_nfail)
		wl_die("C: %s", wl_failures);
	struct setup_report rep = { .ready = 'R', .port = (uint32_t)port_of(C_CONN, false) };
	client_port = (int)rep.port;
	wl_write_all(PARENT_UP, &rep, sizeof(rep));

	kid_beat_until_check("C", 0, c_tick);

	uint8_t msg[2];
	size_t got = read_buffered(PARENT_DOWN, msg, sizeof(msg));
	if (got != 1 || msg[0] != 'C')
		wl_fail("down pipe held %zu bytes at check, expected just 'C'", got);
	uint64_t deadline = deadline_in(VERDICT_MS);
	chan_send(&c_tx, true);
	stream_finish(&c_rx, deadline);
	final_byte(&c_rx.c, 'F', 'G', deadline);

	wl_expect_eq("getpid()", child_pid, getpid());
	wl_expect_eq("getppid()", root_pid, getppid());
	int sig = -1;
	if (prctl(PR_GET_PDEATHSIG, &sig) < 0)
		wl_fail("PR_GET_PDEATHSIG: %s", strerror(errno));
	else
		wl_expect_eq("PR_GET_PDEATHSIG", SIGKILL, sig);
	expect_opt(C_CONN, "SO_TYPE", SOL_SOCKET, SO_TYPE, SOCK_STREAM);
	expect_state(C_CONN, TCP_ESTABLISHED);
	expect_addr(C_CONN, false, client_port);
	expect_addr(C_CONN, true, port);
	expect_opt(C_CONN, "TCP_NODELAY", IPPROTO_TCP, TCP_NODELAY, 0);
	expect_opt(C_CONN, "SO_RCVBUF", SOL_SOCKET, SO_RCVBUF, c_rcvbuf);

	kid_send_verdict("C");
}

/* Root: C's beats; two records while the send queue is short; read C's. */
static void root_tick(uint64_t gen)
{
	(void)gen;
	drain(&kid);
	for (int i = 0; i < 2; i++) {
		int outq = -1;
		if (ioctl(ROOT_CONN, SIOCOUTQ, &outq) < 0)
			chan_fail(&root_tx, "SIOCOUTQ: %s", strerror(errno));
		if (outq < 0 || outq >= SENDQ)
			break;
		chan_send(&root_tx, false);
	}
	stream_drain(&root_rx);
}

/* Root at check: connect to the listener, accept that very connection, a byte each way. */
static void accept_again(uint64_t deadline)
{
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in to = lo(port);
	if (c < 0 || connect(c, (struct sockaddr *)&to, sizeof(to)) < 0) {
		wl_fail("listener: connect to 127.0.0.1:%d: %s", port, strerror(errno));
		if (c >= 0)
			close(c);
		return;
	}
	int mine = port_of(c, false), a = -1;
	while (a < 0) {
		struct pollfd p = { .fd = LISTENER, .events = POLLIN };
		int r = poll(&p, 1, ms_left(deadline));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			wl_fail("listener: own connection never accepted (%s)", r < 0 ? strerror(errno) : "timed out");
			break;
		}
		int n = accept4(LISTENER, NULL, NULL, SOCK_CLOEXEC);
		if (n < 0) {
			wl_fail("listener: accept: %s", strerror(errno));
			break;
		}
		if (port_of(n, true) == mine)
			a = n;
		else
			close(n); /* someone else's (a test's) connection */
	}
	if (a >= 0) {
		const char *why = "wrong byte";
		char b = 0;
		if (send_rec(c, "x", 1, deadline) || read_until(a, &b, 1, deadline, &why) != 1 || b != 'x')
			wl_fail("listener: byte 'x' over the new connection did not arrive (%s)", why);
		else if (send_rec(a, "y", 1, deadline) || read_until(c, &b, 1, deadline, &why) != 1 || b != 'y')
			wl_fail("listener: byte 'y' back over the new connection did not arrive (%s)", why);
		close(a);
	}
	close(c);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	root_pid = getpid();

	int down[2], up[2], beat[2];
	kid_pipes(down, up, beat);

	int l = socket(AF_INET, SOCK_STREAM, 0);
	WL_CHECK_SYS(l);
	wl_move_fd(l, LISTENER, 0);
	struct sockaddr_in any = lo(0);
	WL_CHECK_SYS(bind(LISTENER, (struct sockaddr *)&any, sizeof(any)));
	WL_CHECK_SYS(listen(LISTENER, 8));
	port = port_of(LISTENER, false);

	pid_t pid = fork();
	WL_CHECK_SYS(pid);
	if (pid == 0)
		run_child(down, up, beat);
	child_pid = pid;
	close(down[0]);
	close(up[1]);
	close(beat[1]);
	kid_attach(&kid, NULL, pid, KID_FD0, down, up, beat);

	/* C is connected once its report came: accept at once, never hang. */
	struct setup_report rep;
	if (read_all(kid.up, &rep, sizeof(rep)) != sizeof(rep) || rep.ready != 'R')
		wl_die("C (pid %d) did not report its setup", (int)pid);
	client_port = (int)rep.port;
	int conn = accept4(LISTENER, NULL, NULL, SOCK_NONBLOCK);
	WL_CHECK_SYS(conn);
	WL_CHECK_SYS(fcntl(conn, F_SETFL, fcntl(conn, F_GETFL) & ~O_NONBLOCK));
	wl_move_fd(conn, ROOT_CONN, 0);
	if (port_of(ROOT_CONN, true) != client_port)
		wl_die("accepted a connection from port %d, C's is %d", port_of(ROOT_CONN, true), client_port);
	setint(ROOT_CONN, IPPROTO_TCP, TCP_NODELAY, 1);
	setint(ROOT_CONN, SOL_SOCKET, SO_SNDBUF, ROOT_SNDBUF);
	root_sndbuf = getint(ROOT_CONN, SOL_SOCKET, SO_SNDBUF);

	/* Fill C's receive window and then SENDQ bytes of the send queue behind it. */
	uint64_t deadline = deadline_in(FILL_MS);
	int outq = 0, unsent = 0;
	while (outq < SENDQ || unsent <= 0) {
		if (!ms_left(deadline))
			wl_die("the send queue holds %d bytes (%d unsent) after %d ms", outq, unsent, FILL_MS);
		if (outq < SENDQ)
			chan_send(&root_tx, false);
		else
			wl_sleep_ms(1);
		if (wl_nfail)
			wl_die("%s", wl_failures);
		WL_CHECK_SYS(ioctl(ROOT_CONN, SIOCOUTQ, &outq));
		WL_CHECK_SYS(ioctl(ROOT_CONN, SIOCOUTQNSD, &unsent));
	}
	wl_log("sent %llu records; the send queue holds %d bytes, %d unsent", (unsigned long long)root_tx.n, outq,
	       unsent);

	wl_info(dir, "pids %d\npid_c %d\nport %d\nclient_port %d\n", (int)pid, (int)pid, port, client_port);
	wl_ready(dir);
	wl_loop(dir, root_tick);

	if (write(kid.down, "C", 1) != 1)
		wl_fail("C (pid %d): cannot send the check byte: %s", (int)pid, strerror(errno));
	deadline = deadline_in(VERDICT_MS);
	chan_send(&root_tx, true);

	wl_expect_eq("getpid()", root_pid, getpid());
	expect_opt(LISTENER, "SO_ACCEPTCONN", SOL_SOCKET, SO_ACCEPTCONN, 1);
	expect_state(LISTENER, TCP_LISTEN);
	expect_addr(LISTENER, false, port);
	expect_opt(ROOT_CONN, "SO_TYPE", SOL_SOCKET, SO_TYPE, SOCK_STREAM);
	expect_opt(ROOT_CONN, "SO_ACCEPTCONN", SOL_SOCKET, SO_ACCEPTCONN, 0);
	expect_state(ROOT_CONN, TCP_ESTABLISHED);
	expect_addr(ROOT_CONN, false, port);
	expect_addr(ROOT_CONN, true, client_port);
	expect_opt(ROOT_CONN, "TCP_NODELAY", IPPROTO_TCP, TCP_NODELAY, 1);
	expect_opt(ROOT_CONN, "SO_SNDBUF", SOL_SOCKET, SO_SNDBUF, root_sndbuf);

	stream_finish(&root_rx, deadline);
	final_byte(&root_rx.c, 0, 'F', deadline);
	final_byte(&root_rx.c, 'G', 0, deadline);
	accept_again(deadline);

	char who[32];
	snprintf(who, sizeof(who), "C (pid %d)", (int)pid);
	kid_gather(&kid, who, true, deadline);
	/* C is gone: its end closed after 'F', nothing else followed. */
	char b;
	const char *why;
	size_t extra = root_rx.c.broken ? 0 : read_until(ROOT_CONN, &b, 1, deadline, &why);
	if (!root_rx.c.broken && (extra || strcmp(why, "end of file") != 0))
		wl_fail("%s: after 'F' and C's exit: %s", root_rx.c.name, extra ? "more data" : why);
	expect_no_children();
	wl_finish(dir);
}
