/*
 * eventfds: eventfd, timerfd and signalfd state, and an epoll over an
 * eventfd, a timerfd and a pipe.
 *
 * Holds, at fixed fds:
 *   40  eventfd, count 5
 *   41  eventfd, EFD_SEMAPHORE | EFD_NONBLOCK, count 3
 *   42  timerfd (CLOCK_MONOTONIC), first expiry in 1 h, then every 1 h
 *   43  timerfd (CLOCK_MONOTONIC), one-shot that expired and was not read
 *   44  signalfd for SIGUSR1 and SIGRTMIN+3, both blocked and pending
 *       (SIGRTMIN+3 queued with value 77)
 *   45  timerfd, every 20 ms (never read: it keeps ticking)
 *   46/47 a pipe holding "ping"
 *   48  epoll watching 40 (EPOLLIN, data 40), 45 (EPOLLIN | EPOLLET, data
 *       45) and 46 (EPOLLIN, data 46)
 *   49  a pidfd of the process itself
 *   50  a pidfd of its parent (the test, still running at restore)
 *   51  inotify: wd 1 on DIR/inbox (IN_CREATE), wd 2 removed again, wd 3
 *       on DIR/watched (IN_DELETE)
 * Verifies after restore: the counts (5; then 1, 1, 1 and EAGAIN), the
 * armed timer's interval and that it has at most 1 h left, at least one
 * expiry on the one-shot, both signals through the signalfd with the
 * value, that epoll reports all three watched fds ready, and that the
 * pidfds name the same processes (the own one still signals itself), and
 * that inotify reports a file made in DIR/inbox under wd 1 and one deleted in
 * DIR/watched under wd 3, with nothing before them.
 */
#include "workload.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>

#define HOUR_NS 3600000000000ull

static void arm(int fd, uint64_t value_ns, uint64_t interval_ns)
{
	struct itimerspec its = {
		.it_value = { .tv_sec = value_ns / 1000000000, .tv_nsec = value_ns % 1000000000 },
		.it_interval = { .tv_sec = interval_ns / 1000000000, .tv_nsec = interval_ns % 1000000000 },
	};
	WL_CHECK_SYS(timerfd_settime(fd, 0, &its, NULL));
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);

	wl_move_fd(eventfd(5, 0), 40, 0);
	wl_move_fd(eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK), 41, 0);
	int t1 = wl_move_fd(timerfd_create(CLOCK_MONOTONIC, 0), 42, 0);
	arm(t1, HOUR_NS, HOUR_NS);
	int t2 = wl_move_fd(timerfd_create(CLOCK_MONOTONIC, 0), 43, 0);
	arm(t2, 1000000, 0);
	wl_sleep_ms(20);

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGRTMIN + 3);
	WL_CHECK_SYS(sigprocmask(SIG_BLOCK, &set, NULL));
	wl_move_fd(signalfd(-1, &set, SFD_CLOEXEC), 44, O_CLOEXEC);
	WL_CHECK_SYS(kill(getpid(), SIGUSR1));
	WL_CHECK_SYS(sigqueue(getpid(), SIGRTMIN + 3, (union sigval){ .sival_int = 77 }));

	int t3 = wl_move_fd(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 45, 0);
	arm(t3, 20000000, 20000000);
	int p[2];
	WL_CHECK_SYS(pipe(p));
	wl_move_fd(p[0], 46, 0);
	wl_move_fd(p[1], 47, 0);
	wl_write_all(47, "ping", 4);
	int ep = wl_move_fd(epoll_create1(0), 48, 0);
	struct { int fd; uint32_t events; } watch[] = { { 40, EPOLLIN }, { 45, EPOLLIN | EPOLLET }, { 46, EPOLLIN } };
	for (unsigned i = 0; i < 3; i++) {
		struct epoll_event ev = { .events = watch[i].events, .data.u64 = (uint64_t)watch[i].fd };
		WL_CHECK_SYS(epoll_ctl(ep, EPOLL_CTL_ADD, watch[i].fd, &ev));
	}

	wl_move_fd((int)syscall(SYS_pidfd_open, getpid(), 0), 49, 0);
	pid_t parent = getppid();
	wl_move_fd((int)syscall(SYS_pidfd_open, parent, 0), 50, 0);

	char inbox[4200], watched[4200], doomed[4300], made[4300];
	snprintf(inbox, sizeof(inbox), "%s/inbox", dir);
	snprintf(watched, sizeof(watched), "%s/watched", dir);
	snprintf(doomed, sizeof(doomed), "%s/doomed", watched);
	snprintf(made, sizeof(made), "%s/made-after-restore", inbox);
	WL_CHECK_SYS(mkdir(inbox, 0700));
	WL_CHECK_SYS(mkdir(watched, 0700));
	WL_CHECK_SYS(close(open(doomed, O_CREAT | O_WRONLY, 0600)));
	int in = wl_move_fd(inotify_init1(IN_NONBLOCK), 51, 0);
	if (inotify_add_watch(in, inbox, IN_CREATE) != 1)
		wl_die("first watch is not wd 1");
	int gone = inotify_add_watch(in, watched, IN_ACCESS);
	WL_CHECK_SYS(inotify_rm_watch(in, gone));
	if (inotify_add_watch(in, watched, IN_DELETE) != 3)
		wl_die("third watch is not wd 3");
	char drain[4096];
	while (read(in, drain, sizeof(drain)) > 0)
		;

	wl_ready(dir);
	wl_loop(dir, NULL);

	WL_CHECK_SYS(close(open(made, O_CREAT | O_WRONLY, 0600)));
	WL_CHECK_SYS(unlink(doomed));
	char evbuf[4096] __attribute__((aligned(8)));
	ssize_t got = 0;
	for (int i = 0; i < 100 && got <= 0; i++) {
		got = read(in, evbuf, sizeof(evbuf));
		if (got <= 0)
			wl_sleep_ms(10);
	}
	int want_wd[2] = { 1, 3 }, idx = 0;
	const char *want_name[2] = { "made-after-restore", "doomed" };
	for (char *p = evbuf; got > 0 && p < evbuf + got && idx < 2;) {
		struct inotify_event *ev = (struct inotify_event *)p;
		if (ev->wd != want_wd[idx] || strcmp(ev->name, want_name[idx]) != 0)
			wl_fail("inotify event %d: wd %d name \"%s\" mask %#x, expected wd %d \"%s\"", idx, ev->wd,
				ev->len ? ev->name : "", ev->mask, want_wd[idx], want_name[idx]);
		idx++;
		p += sizeof(*ev) + ev->len;
	}
	if (idx != 2)
		wl_fail("inotify reported %d of the 2 events", idx);

	for (int fd = 49; fd <= 50; fd++) {
		char path[64], info[512] = { 0 };
		snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
		int f = open(path, O_RDONLY);
		if (f < 0 || read(f, info, sizeof(info) - 1) < 0)
			wl_fail("cannot read %s", path);
		if (f >= 0)
			close(f);
		char *p = strstr(info, "\nPid:");
		long named = p ? strtol(p + 6, NULL, 10) : -2;
		long want = fd == 49 ? (long)getpid() : (long)parent;
		if (named != want)
			wl_fail("pidfd %d names process %ld, expected %ld", fd, named, want);
	}
	if (syscall(SYS_pidfd_send_signal, 49, 0, NULL, 0) != 0)
		wl_fail("pidfd 49 cannot signal the process itself: %s", strerror(errno));

	/* Wait in time, not in rounds: the eventfd and the pipe are always
	 * ready (level-triggered), so epoll_wait returns at once until the
	 * timer's next expiry. */
	int seen = 0;
	uint64_t deadline = wl_monotonic_ns() + 5000000000ull;
	while (seen != 7 && wl_monotonic_ns() < deadline) {
		struct epoll_event evs[8];
		int k = epoll_wait(ep, evs, 8, 100);
		for (int i = 0; i < k; i++)
			seen |= evs[i].data.u64 == 40 ? 1 : evs[i].data.u64 == 45 ? 2 : evs[i].data.u64 == 46 ? 4 : 0;
		if (seen != 7)
			wl_sleep_ms(5);
	}
	if (seen != 7)
		wl_fail("epoll reported ready %s%s%s only", seen & 1 ? "eventfd " : "", seen & 2 ? "timerfd " : "",
			seen & 4 ? "pipe" : "");
	char buf[8] = { 0 };
	if (read(46, buf, sizeof(buf)) != 4 || memcmp(buf, "ping", 4) != 0)
		wl_fail("pipe under epoll holds \"%s\", expected \"ping\"", buf);
	uint64_t v = 0;
	if (read(40, &v, 8) != 8 || v != 5)
		wl_fail("eventfd 40 read %llu, expected 5", (unsigned long long)v);
	for (int i = 0; i < 3; i++) {
		v = 0;
		if (read(41, &v, 8) != 8 || v != 1)
			wl_fail("semaphore eventfd read %d gave %llu, expected 1", i, (unsigned long long)v);
	}
	if (read(41, &v, 8) != -1 || errno != EAGAIN)
		wl_fail("semaphore eventfd still had a count after 3 reads (or is blocking)");

	struct itimerspec its;
	WL_CHECK_SYS(timerfd_gettime(t1, &its));
	uint64_t left = (uint64_t)its.it_value.tv_sec * 1000000000ull + (uint64_t)its.it_value.tv_nsec;
	if (its.it_interval.tv_sec != 3600 || its.it_interval.tv_nsec != 0)
		wl_fail("timerfd 42 interval is %ld.%09ld s, expected 3600 s", (long)its.it_interval.tv_sec,
			(long)its.it_interval.tv_nsec);
	if (left == 0 || left > HOUR_NS)
		wl_fail("timerfd 42 has %llu ns left, expected between 0 and 1 h", (unsigned long long)left);
	v = 0;
	if (read(t2, &v, 8) != 8 || v < 1)
		wl_fail("expired one-shot timerfd 43 read %llu expirations, expected at least 1", (unsigned long long)v);

	struct signalfd_siginfo si[2];
	ssize_t n = read(44, si, sizeof(si));
	if (n != (ssize_t)sizeof(si))
		wl_fail("signalfd read %zd bytes, expected two signals", n);
	else if (si[0].ssi_signo != SIGUSR1 || si[1].ssi_signo != (uint32_t)(SIGRTMIN + 3) || si[1].ssi_int != 77)
		wl_fail("signalfd gave signals %u and %u (value %d), expected %d and %d (value 77)", si[0].ssi_signo,
			si[1].ssi_signo, si[1].ssi_int, SIGUSR1, SIGRTMIN + 3);

	wl_finish(dir);
}
