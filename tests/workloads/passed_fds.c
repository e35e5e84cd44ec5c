/*
 * passed_fds: file descriptors in flight: sent with SCM_RIGHTS on unix
 * sockets and not yet received when the tree is dumped.
 *
 * Usage: passed_fds DIR [epoll]
 *
 * With "epoll", R also sends an epoll instance on the datagram socket, after
 * "shared" (which C does not read), and keeps it open itself: an epoll
 * instance both in flight and held, which stasis refuses.
 *
 * Processes: root R (the one the harness started) -> C. C sets
 * PR_SET_PDEATHSIG to SIGKILL right after the fork; only R touches DIR.
 * Control: pipe R -> C (the check byte 'C'), pipe C -> R (the setup byte,
 * then C's verdict: a 4-byte length and the failures).
 *
 * At setup R sends to C, which receives nothing until the check:
 *   on a SOCK_STREAM socketpair (R s_r <-> C s_c), three writes:
 *     "head:" (5 bytes, no fds),
 *     "fds-here" (8 bytes) with four fds: F, a regular file DIR/data (4096
 *       bytes of PRNG seed 1) opened O_RDWR at offset 1000, R closes its fd;
 *       P, the read end of a pipe whose write end R keeps (16 bytes "pipe
 *       data before" queued; R also holds the read end through another
 *       description, never read); E, an eventfd holding 5 (R closes it); U, one
 *       end of a socketpair whose other end R keeps, with "pong" queued on
 *       U by R;
 *     ":tail" (5 bytes, no fds);
 *   on a SOCK_DGRAM socketpair (R d_r -> C d_c), two datagrams: "plain"
 *     (no fds), then "shared" with S, a second description of DIR/data that
 *     R keeps open too (offset 0 at setup).
 * Both processes count ~10 ms iterations meanwhile.
 *
 * Check (DIR/check exists): R lseeks S to 1234 and writes "pipe data after"
 * into the pipe, then writes 'C' to C. C receives, and verifies:
 *   - the first stream read (buffer of 64) returns exactly "head:fds-here"
 *     (13 bytes) with four fds (a stream read stops after the segment that
 *     carried fds: the fds are in the stream where they were, and ":tail"
 *     comes with the next read);
 *   - F: a regular file, O_RDWR, at offset 1000, holding the PRNG bytes;
 *   - P: a pipe read end holding "pipe data before" then "pipe data after"
 *     (the same pipe R writes);
 *   - E: an eventfd whose read gives 5;
 *   - U: a unix stream socket whose queue holds "pong"; C sends "ping" on
 *     it, which R reads on its end;
 *   - the datagrams: "plain" without fds, then "shared" with one fd at
 *     offset 1234 (the same open file description as R's S).
 * C then sends its verdict; R verifies "ping" arrived, collects the
 * verdict and C's exit status, and writes DIR/result.
 *
 * Publishes in DIR/info: "pids" and "pid_c" (C).
 */
#include "workload.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define FILE_LEN 4096
#define F_OFFSET 1000
#define S_OFFSET 1234

static char fails[2048];
static size_t used;

__attribute__((format(printf, 1, 2))) static void c_fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (used < sizeof(fails)) {
		int n = vsnprintf(fails + used, sizeof(fails) - used, fmt, ap);
		if (n > 0)
			used += (size_t)n;
	}
	va_end(ap);
	if (used < sizeof(fails))
		used += (size_t)snprintf(fails + used, sizeof(fails) - used, "; ");
}

static void send_with(int sock, const void *data, size_t len, const int *fds, int nfds)
{
	char control[CMSG_SPACE(sizeof(int) * 8)];
	struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds > 0) {
		memset(control, 0, sizeof(control));
		msg.msg_control = control;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
	}
	if (sendmsg(sock, &msg, 0) != (ssize_t)len)
		wl_die("sendmsg: %s", strerror(errno));
}

/* recvmsg into BUF; the fds received go to FDS (up to 8). Returns bytes or -1. */
static ssize_t recv_with(int sock, void *buf, size_t len, int *fds, int *nfds)
{
	char control[CMSG_SPACE(sizeof(int) * 8)];
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
			      .msg_controllen = sizeof(control) };
	ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	*nfds = 0;
	if (n < 0)
		return -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			memcpy(fds + *nfds, CMSG_DATA(c), sizeof(int) * (size_t)k);
			*nfds += k;
		}
	if (msg.msg_flags & MSG_CTRUNC)
		c_fail("control data cut short");
	return n;
}

static bool read_exact(int fd, void *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 10000) <= 0)
			return false;
		ssize_t r = read(fd, (char *)buf + got, len - got);
		if (r <= 0)
			return false;
		got += (size_t)r;
	}
	return true;
}

static void expect_bytes(const char *what, int fd, const char *expected)
{
	char buf[64] = "";
	size_t len = strlen(expected);
	if (!read_exact(fd, buf, len) || memcmp(buf, expected, len) != 0)
		c_fail("%s: expected \"%s\", found \"%.*s\"", what, expected, (int)len, buf);
}

static void check_c(int s_c, int d_c)
{
	char buf[64];
	int fds[8], nfds;
	/* Stream: the fds come with "head:fds-here", the read stops there. */
	ssize_t n = recv_with(s_c, buf, sizeof(buf), fds, &nfds);
	if (n != 13 || memcmp(buf, "head:fds-here", 13) != 0)
		c_fail("first stream read: %zd bytes \"%.*s\", expected \"head:fds-here\"", n, n > 0 ? (int)n : 0, buf);
	if (nfds != 4) {
		c_fail("first stream read: %d fds, expected 4", nfds);
		return;
	}
	int more[8], nmore;
	n = recv_with(s_c, buf, sizeof(buf), more, &nmore);
	if (n != 5 || memcmp(buf, ":tail", 5) != 0 || nmore != 0)
		c_fail("second stream read: %zd bytes, %d fds, expected \":tail\" alone", n, nmore);
	int f = fds[0], p = fds[1], e = fds[2], u = fds[3];

	/* F */
	struct stat st;
	if (fstat(f, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size != FILE_LEN)
		c_fail("F is not the 4096-byte file");
	if ((fcntl(f, F_GETFL) & O_ACCMODE) != O_RDWR)
		c_fail("F: not opened O_RDWR");
	off_t at = lseek(f, 0, SEEK_CUR);
	if (at != F_OFFSET)
		c_fail("F: offset %lld, expected %d", (long long)at, F_OFFSET);
	static uint8_t data[FILE_LEN];
	uint8_t want, found;
	if (wl_pread_all(f, data, FILE_LEN, 0) != FILE_LEN || wl_verify_fill(data, FILE_LEN, 1, &want, &found) >= 0)
		c_fail("F: contents differ");

	/* P */
	if (fstat(p, &st) < 0 || !S_ISFIFO(st.st_mode))
		c_fail("P is not a pipe");
	else {
		expect_bytes("P", p, "pipe data before");
		expect_bytes("P", p, "pipe data after");
	}

	/* E */
	uint64_t count = 0;
	if (read(e, &count, sizeof(count)) != sizeof(count) || count != 5)
		c_fail("E: eventfd read %llu, expected 5", (unsigned long long)count);

	/* U */
	int type = 0;
	socklen_t tl = sizeof(type);
	if (getsockopt(u, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_STREAM)
		c_fail("U is not a stream socket");
	else {
		expect_bytes("U", u, "pong");
		if (write(u, "ping", 4) != 4)
			c_fail("U: send ping: %s", strerror(errno));
	}

	/* Datagrams */
	n = recv_with(d_c, buf, sizeof(buf), more, &nmore);
	if (n != 5 || memcmp(buf, "plain", 5) != 0 || nmore != 0)
		c_fail("first datagram: %zd bytes, %d fds, expected \"plain\" alone", n, nmore);
	n = recv_with(d_c, buf, sizeof(buf), more, &nmore);
	if (n != 6 || memcmp(buf, "shared", 6) != 0 || nmore != 1)
		c_fail("second datagram: %zd bytes, %d fds, expected \"shared\" with one", n, nmore);
	else if ((at = lseek(more[0], 0, SEEK_CUR)) != S_OFFSET)
		c_fail("S: offset %lld, expected %d (R's description, moved at check)", (long long)at, S_OFFSET);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, "data");
	static uint8_t data[FILE_LEN];
	wl_fill(data, FILE_LEN, 1);
	int f = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	WL_CHECK_SYS(f);
	wl_write_all(f, data, FILE_LEN);
	WL_CHECK_SYS(lseek(f, F_OFFSET, SEEK_SET));
	int s_pair[2], d_pair[2], down[2], up[2], pipe_fds[2], u_pair[2];
	WL_CHECK_SYS(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s_pair));
	WL_CHECK_SYS(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, d_pair));
	WL_CHECK_SYS(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, u_pair));
	WL_CHECK_SYS(pipe2(down, O_CLOEXEC));
	WL_CHECK_SYS(pipe2(up, O_CLOEXEC));
	WL_CHECK_SYS(pipe2(pipe_fds, O_CLOEXEC));
	int e = eventfd(5, EFD_CLOEXEC);
	WL_CHECK_SYS(e);
	int s = open(path, O_RDWR | O_CLOEXEC);
	WL_CHECK_SYS(s);
	/* R holds the pipe's read end too, through a description of its own
	 * (never read): a pipe with an end only in flight is refused. */
	char end_path[64];
	snprintf(end_path, sizeof(end_path), "/proc/self/fd/%d", pipe_fds[0]);
	int keep_r = open(end_path, O_RDONLY | O_CLOEXEC);
	WL_CHECK_SYS(keep_r);

	pid_t root = getpid();
	pid_t c = fork();
	WL_CHECK_SYS(c);
	if (c == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != root)
			_exit(2);
		close(f), close(e), close(s), close(keep_r), close(pipe_fds[0]), close(pipe_fds[1]), close(u_pair[0]), close(u_pair[1]);
		close(s_pair[0]), close(d_pair[0]), close(down[1]), close(up[0]);
		wl_write_all(up[1], "R", 1);
		uint64_t counter = 0;
		for (;;) {
			struct pollfd pd = { .fd = down[0], .events = POLLIN };
			int k = poll(&pd, 1, 10);
			if (k < 0 && errno == EINTR)
				continue;
			counter++;
			if (k == 1)
				break;
		}
		char byte = 0;
		if (read(down[0], &byte, 1) != 1 || byte != 'C')
			_exit(3);
		if (counter < 2)
			c_fail("C counted only %llu iterations", (unsigned long long)counter);
		check_c(s_pair[1], d_pair[1]);
		uint32_t len = (uint32_t)strlen(fails);
		if (send_all(up[1], &len, sizeof(len)) < 0 || send_all(up[1], fails, len) < 0)
			_exit(4);
		_exit(len == 0 ? 0 : 1);
	}
	close(s_pair[1]), close(d_pair[1]), close(down[0]), close(up[1]);
	char byte;
	if (!read_exact(up[0], &byte, 1))
		wl_die("C did not start");
	wl_write_all(pipe_fds[1], "pipe data before", 16);
	wl_write_all(u_pair[1], "pong", 4);
	send_with(s_pair[0], "head:", 5, NULL, 0);
	int passed[4] = { f, pipe_fds[0], e, u_pair[0] };
	send_with(s_pair[0], "fds-here", 8, passed, 4);
	send_with(s_pair[0], ":tail", 5, NULL, 0);
	send_with(d_pair[0], "plain", 5, NULL, 0);
	send_with(d_pair[0], "shared", 6, &s, 1);
	if (argc > 2 && strcmp(argv[2], "epoll") == 0) {
		int ep = epoll_create1(EPOLL_CLOEXEC);
		WL_CHECK_SYS(ep);
		send_with(d_pair[0], "epoll", 5, &ep, 1);
	}
	close(f), close(pipe_fds[0]), close(e), close(u_pair[0]);
	wl_info(dir, "pids %d\npid_c %d\n", c, c);
	wl_ready(dir);

	wl_loop(dir, NULL);

	WL_CHECK_SYS(lseek(s, S_OFFSET, SEEK_SET));
	wl_write_all(pipe_fds[1], "pipe data after", 15);
	wl_write_all(down[1], "C", 1);
	uint32_t len = 0;
	static char c_fails[2049];
	if (!read_exact(up[0], &len, sizeof(len)) || len >= sizeof(c_fails) || !read_exact(up[0], c_fails, len))
		wl_fail("no verdict from C");
	else if (len > 0)
		wl_fail("C: %s", c_fails);
	char ping[5] = "";
	if (!read_exact(u_pair[1], ping, 4) || memcmp(ping, "ping", 4) != 0)
		wl_fail("R: expected \"ping\" on U's other end, found \"%s\"", ping);
	int status;
	WL_CHECK_SYS(waitpid(c, &status, 0));
	wl_expect_eq("C's exit status", 0, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	wl_finish(dir);
}
