/*
 * kids.h - plumbing for the workloads that fork and check child processes
 * (tree, session, shared_mem): pipe helpers with deadlines, the "beat"
 * records a child sends every iteration (8-byte counters that must go 1, 2,
 * 3, ...), and collecting a child's verdict and exit status.
 *
 * The parent/child layout used by tree and session: each child has three
 * pipes, at PARENT_DOWN, PARENT_UP and PARENT_BEAT in the child and at
 * KID_FD0 + 4i, +1, +2 in the parent (struct kid). A child counts, beats and
 * drains its own children until the check byte arrives, then checks and
 * sends a struct kid_verdict and its failures up.
 */
#ifndef STASIS_KIDS_H
#define STASIS_KIDS_H

#include "workload.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>

enum { PARENT_DOWN = 10, PARENT_UP, PARENT_BEAT, KID_FD0 = 20 };

/* Defined by each workload. */
struct role;

/* A live child, as its parent sees it. */
struct kid {
	const struct role *role;
	pid_t pid;
	int down, up, beat; /* our ends */
	uint64_t last_beat;
	uint8_t carry[8];
	size_t carry_len;
	bool beat_eof;
	char beat_err[256];
};

/* Child -> parent after its checks, followed by LEN bytes of failures. */
struct kid_verdict {
	uint64_t counter;
	uint32_t ok, len;
};

/* Bytes buffered in FD, or -1. */
static inline int buffered(int fd)
{
	int n = -1;
	if (ioctl(fd, FIONREAD, &n) < 0)
		return -1;
	return n;
}


/* read(2) LEN bytes from a blocking FD, stopping early at end of file or an error. Returns the bytes read. */
static inline size_t read_all(int fd, void *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, (char *)buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return got;
}

/* Read what FD (made non-blocking) holds, up to LEN bytes. */
static inline size_t read_buffered(int fd, void *buf, size_t len)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	return read_all(fd, buf, len);
}

/* Milliseconds until DEADLINE (wl_monotonic_ns()), rounded up; 0 once it has passed. */
static inline int ms_left(uint64_t deadline)
{
	uint64_t now = wl_monotonic_ns();
	return now >= deadline ? 0 : (int)((deadline - now) / 1000000 + 1);
}

/* Read LEN bytes from a blocking FD, giving up at DEADLINE. Returns the bytes read. */
static inline size_t read_until(int fd, void *buf, size_t len, uint64_t deadline, const char **why)
{
	size_t got = 0;
	*why = "";
	while (got < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, ms_left(deadline));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*why = strerror(errno);
			break;
		}
		if (r == 0) {
			*why = "timed out";
			break;
		}
		ssize_t n = read(fd, (char *)buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			*why = n < 0 ? strerror(errno) : "end of file";
			break;
		}
		got += (size_t)n;
	}
	return got;
}

/* Right after fork in the child: die with the parent, or exit if it is already gone. */
static inline void become_child(pid_t parent)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		_exit(2);
	if (getppid() != parent)
		_exit(2);
	wl_failures[0] = 0;
	wl_nfail = 0;
	wl_generation = 0;
}

/* Before fork: the down, up and beat pipes, all below PARENT_DOWN. */
static inline void kid_pipes(int down[2], int up[2], int beat[2])
{
	WL_CHECK_SYS(pipe(down));
	WL_CHECK_SYS(pipe(up));
	WL_CHECK_SYS(pipe(beat));
	if (down[0] >= PARENT_DOWN || down[1] >= PARENT_DOWN || up[0] >= PARENT_DOWN || up[1] >= PARENT_DOWN ||
	    beat[0] >= PARENT_DOWN || beat[1] >= PARENT_DOWN)
		wl_die("pipe fds above %d", PARENT_DOWN - 1);
}

/* In the child: its ends at PARENT_DOWN, PARENT_UP, PARENT_BEAT, nothing else above 2. */
static inline void kid_child_fds(int down[2], int up[2], int beat[2])
{
	wl_move_fd(down[0], PARENT_DOWN, 0);
	wl_move_fd(up[1], PARENT_UP, 0);
	wl_move_fd(beat[1], PARENT_BEAT, 0);
	close_range(3, PARENT_DOWN - 1, 0);
	close_range(PARENT_BEAT + 1, ~0U, 0);
}

/* In the parent: close the child's ends and set up K with ours at BASE, BASE + 1, BASE + 2. */
static inline void kid_attach(struct kid *k, const struct role *r, pid_t pid, int base, int down[2], int up[2],
			      int beat[2])
{
	memset(k, 0, sizeof(*k));
	k->role = r;
	k->pid = pid;
	k->down = wl_move_fd(down[1], base, 0);
	k->up = wl_move_fd(up[0], base + 1, 0);
	k->beat = wl_move_fd(beat[0], base + 2, 0);
	WL_CHECK_SYS(fcntl(k->beat, F_SETFL, O_NONBLOCK));
}

/* Read the beats buffered from K (non-blocking); they must count 1, 2, 3, ... */
static inline void drain(struct kid *k)
{
	uint8_t buf[4096 + 8];
	while (!k->beat_eof) {
		memcpy(buf, k->carry, k->carry_len);
		ssize_t n = read(k->beat, buf + k->carry_len, 4096);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			if (errno != EAGAIN && !k->beat_err[0])
				snprintf(k->beat_err, sizeof(k->beat_err), "reading its beats: %s", strerror(errno));
			return;
		}
		if (n == 0) {
			k->beat_eof = true;
			if (k->carry_len && !k->beat_err[0])
				snprintf(k->beat_err, sizeof(k->beat_err), "its beat pipe ended in a partial record");
			return;
		}
		size_t len = k->carry_len + (size_t)n, off = 0;
		for (; off + 8 <= len; off += 8) {
			uint64_t v;
			memcpy(&v, buf + off, 8);
			if (v != k->last_beat + 1 && !k->beat_err[0])
				snprintf(k->beat_err, sizeof(k->beat_err), "its beat %llu followed beat %llu",
					 (unsigned long long)v, (unsigned long long)k->last_beat);
			k->last_beat = v;
		}
		k->carry_len = len - off;
		memcpy(k->carry, buf + off, k->carry_len);
	}
}

/*
 * In a child: count, beat on PARENT_BEAT and call DRAIN_ALL every ~10 ms
 * until PARENT_DOWN no longer holds exactly IDLE bytes (the check byte came).
 */
static inline void kid_beat_until_check(const char *name, int idle, void (*drain_all)(uint64_t gen))
{
	char beat_err[128] = "";
	for (;;) {
		uint64_t gen = wl_generation + 1;
		wl_generation = gen;
		ssize_t n;
		do
			n = write(PARENT_BEAT, &gen, 8);
		while (n < 0 && errno == EINTR);
		if (n != 8 && !beat_err[0])
			snprintf(beat_err, sizeof(beat_err), "beat %llu: %s", (unsigned long long)gen,
				 n < 0 ? strerror(errno) : "short write");
		drain_all(gen);
		if (buffered(PARENT_DOWN) != idle)
			break;
		wl_sleep_ms(10);
	}
	wl_log("%s: check at counter %llu", name, (unsigned long long)wl_generation);
	if (beat_err[0])
		wl_fail("%s", beat_err);
}

/* In a child after its checks: close the beat pipe, send the verdict up, exit 0 on ok, 1 on fail. */
static inline __attribute__((noreturn)) void kid_send_verdict(const char *name)
{
	pthread_mutex_lock(&wl_fail_lock);
	struct kid_verdict v = { .counter = wl_generation, .ok = wl_nfail == 0, .len = (uint32_t)strlen(wl_failures) };
	pthread_mutex_unlock(&wl_fail_lock);
	close(PARENT_BEAT);
	if (send_all(PARENT_UP, &v, sizeof(v)) < 0 || send_all(PARENT_UP, wl_failures, v.len) < 0)
		wl_log("%s: cannot send the verdict: %s", name, strerror(errno));
	_exit(v.ok ? 0 : 1);
}

/* Wait for K to exit (reaping it) until DEADLINE. Returns its wait status, or -1. */
static inline int reap(struct kid *k, const char *who, uint64_t deadline)
{
	for (;;) {
		int st;
		pid_t r = waitpid(k->pid, &st, WNOHANG);
		if (r == k->pid)
			return st;
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			wl_fail("%s: waitpid: %s", who, strerror(errno));
			return -1;
		}
		if (!ms_left(deadline)) {
			wl_fail("%s: still running after its verdict", who);
			return -1;
		}
		wl_sleep_ms(1);
	}
}

/*
 * Read a verdict of SIZE bytes into V from FD, then the *LEN bytes of text
 * (LEN points into V) into TEXT, NUL-terminated (empty unless it all came).
 * Records what is wrong; returns whether the whole verdict arrived.
 */
static inline bool read_verdict(int fd, const char *who, void *v, size_t size, const uint32_t *len, char *text,
				size_t text_size, uint64_t deadline)
{
	const char *why;
	bool have = false;
	size_t got = read_until(fd, v, size, deadline, &why);
	if (got != size)
		wl_fail("%s: no verdict (%zu of %zu bytes: %s)", who, got, size, why);
	else if (*len >= text_size)
		wl_fail("%s: verdict of %u bytes", who, *len);
	else if ((got = read_until(fd, text, *len, deadline, &why)) != *len)
		wl_fail("%s: verdict text cut at %zu of %u bytes (%s)", who, got, *len, why);
	else
		have = true;
	text[have ? *len : 0] = 0;
	return have;
}

/* A child's wait status ST (-1: none) must match its verdict (if HAVE): exit 0 on OK, 1 on fail. */
static inline void check_exit(const char *who, int st, bool have, bool ok)
{
	if (st != -1 && WIFSIGNALED(st))
		wl_fail("%s: killed by signal %d", who, WTERMSIG(st));
	else if (st != -1 && have && (!WIFEXITED(st) || WEXITSTATUS(st) != (ok ? 0 : 1)))
		wl_fail("%s: exit status %d after a verdict of %s", who, WEXITSTATUS(st), ok ? "ok" : "fail");
	else if (st != -1 && !have)
		wl_fail("%s: exited with status %d", who, WEXITSTATUS(st));
}

/*
 * Collect K's verdict (unless !WANT_VERDICT: then it counts as missing),
 * beats and exit status; record what is wrong.
 */
static inline void kid_gather(struct kid *k, const char *who, bool want_verdict, uint64_t deadline)
{
	struct kid_verdict v = { 0 };
	char text[4096] = "";
	bool have = want_verdict && read_verdict(k->up, who, &v, sizeof(v), &v.len, text, sizeof(text), deadline);

	int st = reap(k, who, deadline);
	check_exit(who, st, have, v.ok);
	if (st != -1) {
		drain(k);
		if (!k->beat_eof)
			wl_fail("%s: its beat pipe is still open after it exited", who);
		char extra;
		if (read(k->up, &extra, 1) != 0)
			wl_fail("%s: its up pipe holds more than the verdict or is still open", who);
	}
	if (k->beat_err[0])
		wl_fail("%s: %s", who, k->beat_err);
	if (!have)
		return;
	if (!v.ok)
		wl_fail("%s: [%s]", who, text);
	if (v.counter == 0)
		wl_fail("%s: its counter is 0", who);
	if (k->last_beat != v.counter)
		wl_fail("%s: reported counter %llu, its last beat was %llu", who, (unsigned long long)v.counter,
			(unsigned long long)k->last_beat);
}

/* Every child has been reaped: waitpid(-1) reports ECHILD. */
static inline void expect_no_children(void)
{
	int st;
	pid_t left = waitpid(-1, &st, WNOHANG);
	if (left > 0)
		wl_fail("an unexpected child (pid %d) exited with wait status 0x%x", (int)left, st);
	else if (left == 0)
		wl_fail("an unexpected child is still running");
	else if (errno != ECHILD)
		wl_fail("waitpid(-1): %s", strerror(errno));
}

#endif
