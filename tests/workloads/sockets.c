/*
 * sockets: listening TCP sockets and UDP sockets, IPv4 and IPv6.
 *
 * Holds, at fixed fds:
 *   40  TCP listener on 127.0.0.1 (kernel-chosen port), SO_REUSEADDR,
 *       TCP_NODELAY, backlog 7
 *   41  TCP listener on [::1], IPV6_V6ONLY
 *   42  UDP socket bound to 127.0.0.1
 *   43  UDP socket connected to 42's address, SO_BROADCAST
 *   44  non-blocking TCP listener on 127.0.0.1, SO_REUSEPORT, SO_RCVBUF set
 *   45  unbound, unconnected IPv6 UDP socket
 * Publishes in DIR/info: tcp_port, tcp6_port, udp_port, nonblock_port.
 *
 * Verifies: every socket's type, address, port, peer and options (and
 * SO_ACCEPTCONN), that the non-blocking listener is still non-blocking; then
 * uses them: connects to each listener and accepts that connection and
 * exchanges a byte over it (connections made by others, e.g. the test, are
 * accepted and closed on the way), and sends a datagram from 43 to 42 and
 * one back (datagrams others sent to 42 are skipped).
 */
#include "workload.h"
#include "sockopt.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

static int port_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static int tcp_listener(int family, int fd_no)
{
	int s = socket(family, SOCK_STREAM, 0);
	WL_CHECK_SYS(s);
	return wl_move_fd(s, fd_no, 0);
}

static void bind_lo(int fd, int family)
{
	if (family == AF_INET) {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		WL_CHECK_SYS(bind(fd, (struct sockaddr *)&a, sizeof(a)));
	} else {
		struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
		WL_CHECK_SYS(bind(fd, (struct sockaddr *)&a, sizeof(a)));
	}
}

static int ports[5];
static int rcvbuf44;

/* Connect to listener LFD and accept that very connection; exchange a byte. */
static void use_listener(int lfd, int family, const char *what)
{
	int c = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c < 0) {
		wl_fail("%s: socket: %s", what, strerror(errno));
		return;
	}
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	getsockname(lfd, (struct sockaddr *)&ss, &len);
	if (connect(c, (struct sockaddr *)&ss, len) < 0) {
		wl_fail("%s: connect to own listener: %s", what, strerror(errno));
		close(c);
		return;
	}
	struct sockaddr_storage mine;
	socklen_t mlen = sizeof(mine);
	getsockname(c, (struct sockaddr *)&mine, &mlen);
	int a = -1;
	for (int i = 0; i < 64 && a < 0; i++) {
		struct pollfd p = { .fd = lfd, .events = POLLIN };
		if (poll(&p, 1, 10000) != 1) {
			wl_fail("%s: listener never became readable", what);
			break;
		}
		struct sockaddr_storage peer;
		socklen_t plen = sizeof(peer);
		int n = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
		if (n < 0) {
			wl_fail("%s: accept: %s", what, strerror(errno));
			break;
		}
		if (plen == mlen && memcmp(&peer, &mine, plen) == 0)
			a = n;
		else
			close(n); /* someone else's (the test's) connection */
	}
	if (a >= 0) {
		char b = 'x';
		if (write(c, &b, 1) != 1 || read(a, &b, 1) != 1 || b != 'x')
			wl_fail("%s: byte over the accepted connection did not arrive", what);
		close(a);
	} else {
		wl_fail("%s: own connection never accepted", what);
	}
	close(c);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);

	int l4 = tcp_listener(AF_INET, 40);
	setint(l4, SOL_SOCKET, SO_REUSEADDR, 1);
	setint(l4, IPPROTO_TCP, TCP_NODELAY, 1);
	bind_lo(l4, AF_INET);
	WL_CHECK_SYS(listen(l4, 7));

	int l6 = tcp_listener(AF_INET6, 41);
	setint(l6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
	bind_lo(l6, AF_INET6);
	WL_CHECK_SYS(listen(l6, 16));

	int u1 = wl_move_fd(socket(AF_INET, SOCK_DGRAM, 0), 42, 0);
	bind_lo(u1, AF_INET);
	int u2 = wl_move_fd(socket(AF_INET, SOCK_DGRAM, 0), 43, 0);
	setint(u2, SOL_SOCKET, SO_BROADCAST, 1);
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
				  .sin_port = htons((uint16_t)port_of(u1)) };
	WL_CHECK_SYS(connect(u2, (struct sockaddr *)&to, sizeof(to)));

	int nb = tcp_listener(AF_INET, 44);
	setint(nb, SOL_SOCKET, SO_REUSEPORT, 1);
	setint(nb, SOL_SOCKET, SO_RCVBUF, 96 * 1024);
	rcvbuf44 = getint(nb, SOL_SOCKET, SO_RCVBUF);
	bind_lo(nb, AF_INET);
	WL_CHECK_SYS(listen(nb, 3));
	WL_CHECK_SYS(fcntl(nb, F_SETFL, fcntl(nb, F_GETFL) | O_NONBLOCK));

	wl_move_fd(socket(AF_INET6, SOCK_DGRAM, 0), 45, 0);

	ports[0] = port_of(l4);
	ports[1] = port_of(l6);
	ports[2] = port_of(u1);
	ports[3] = port_of(u2);
	ports[4] = port_of(nb);
	wl_info(dir, "tcp_port %d\ntcp6_port %d\nudp_port %d\nnonblock_port %d\n", ports[0], ports[1], ports[2],
		ports[4]);
	wl_ready(dir);
	wl_loop(dir, NULL);

	const char *names[] = { "tcp 40", "tcp6 41", "udp 42", "udp 43", "tcp 44" };
	int fds[] = { 40, 41, 42, 43, 44 };
	for (int i = 0; i < 5; i++) {
		char what[64];
		snprintf(what, sizeof(what), "%s port", names[i]);
		wl_expect_eq(what, ports[i], port_of(fds[i]));
		snprintf(what, sizeof(what), "%s SO_ACCEPTCONN", names[i]);
		wl_expect_eq(what, i == 2 || i == 3 ? 0 : 1, getint(fds[i], SOL_SOCKET, SO_ACCEPTCONN));
		snprintf(what, sizeof(what), "%s SO_TYPE", names[i]);
		wl_expect_eq(what, i == 2 || i == 3 ? SOCK_DGRAM : SOCK_STREAM, getint(fds[i], SOL_SOCKET, SO_TYPE));
	}
	wl_expect_eq("tcp 40 SO_REUSEADDR", 1, getint(40, SOL_SOCKET, SO_REUSEADDR));
	wl_expect_eq("tcp 40 TCP_NODELAY", 1, getint(40, IPPROTO_TCP, TCP_NODELAY));
	wl_expect_eq("tcp 40 O_NONBLOCK", 0, fcntl(40, F_GETFL) & O_NONBLOCK);
	wl_expect_eq("tcp6 41 SO_REUSEADDR", 0, getint(41, SOL_SOCKET, SO_REUSEADDR));
	wl_expect_eq("tcp6 41 IPV6_V6ONLY", 1, getint(41, IPPROTO_IPV6, IPV6_V6ONLY));
	wl_expect_eq("tcp6 41 SO_DOMAIN", AF_INET6, getint(41, SOL_SOCKET, SO_DOMAIN));
	wl_expect_eq("udp 43 SO_BROADCAST", 1, getint(43, SOL_SOCKET, SO_BROADCAST));
	wl_expect_eq("udp 42 SO_BROADCAST", 0, getint(42, SOL_SOCKET, SO_BROADCAST));
	wl_expect_eq("tcp 44 SO_REUSEPORT", 1, getint(44, SOL_SOCKET, SO_REUSEPORT));
	wl_expect_eq("tcp 44 SO_RCVBUF", rcvbuf44, getint(44, SOL_SOCKET, SO_RCVBUF));
	wl_expect_eq("tcp 44 O_NONBLOCK", O_NONBLOCK, fcntl(44, F_GETFL) & O_NONBLOCK);
	wl_expect_eq("udp6 45 port (unbound)", 0, port_of(45));
	wl_expect_eq("udp6 45 SO_DOMAIN", AF_INET6, getint(45, SOL_SOCKET, SO_DOMAIN));

	struct sockaddr_in peer;
	socklen_t plen = sizeof(peer);
	if (getpeername(43, (struct sockaddr *)&peer, &plen) < 0)
		wl_fail("udp 43 is not connected: %s", strerror(errno));
	else
		wl_expect_eq("udp 43 peer port", ports[2], ntohs(peer.sin_port));

	use_listener(40, AF_INET, "tcp 40");
	use_listener(41, AF_INET6, "tcp6 41");
	use_listener(44, AF_INET, "tcp 44");

	/* A datagram from 43 to 42, and an answer back. */
	if (send(43, "dg", 2, 0) != 2)
		wl_fail("udp 43 send: %s", strerror(errno));
	char buf[8] = { 0 };
	struct sockaddr_in from;
	socklen_t flen = sizeof(from);
	struct pollfd p = { .fd = 42, .events = POLLIN };
	ssize_t n = -1;
	/* Skip datagrams others (the test) sent to 42. */
	for (int i = 0; i < 64; i++) {
		flen = sizeof(from);
		n = poll(&p, 1, 10000) == 1 ? recvfrom(42, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen) : -1;
		if (n < 0 || ntohs(from.sin_port) == ports[3])
			break;
	}
	if (n != 2 || memcmp(buf, "dg", 2) != 0)
		wl_fail("udp 42 received %zd bytes \"%s\", expected \"dg\"", n, buf);
	else if (ntohs(from.sin_port) != ports[3])
		wl_fail("udp 42 got the datagram from port %d, expected %d", ntohs(from.sin_port), ports[3]);
	else if (sendto(42, "ok", 2, 0, (struct sockaddr *)&from, flen) != 2)
		wl_fail("udp 42 sendto: %s", strerror(errno));
	else {
		memset(buf, 0, sizeof(buf));
		p.fd = 43;
		n = poll(&p, 1, 10000) == 1 ? recv(43, buf, sizeof(buf), 0) : -1;
		if (n != 2 || memcmp(buf, "ok", 2) != 0)
			wl_fail("udp 43 received %zd bytes \"%s\", expected \"ok\"", n, buf);
	}

	wl_finish(dir);
}
