/*
 * daemon: a daemon made the classic way (fork, setsid, fork again, the
 * middle process exits), in a session and process groups whose leaders have
 * exited.
 *
 * Usage: daemon DIR
 *
 * Processes:
 *   R (started by the harness) -> A    A calls setsid(): session A, group A
 *                                 A -> D   the daemon; A exits at once
 *   D sets PR_SET_CHILD_SUBREAPER     D -> C   C calls setpgid(0, 0): group C
 *                                              C -> E   stays in group C; C exits
 *   E is reparented to D (the subreaper), D reaps C. R writes DIR/ready once
 *   D says it is set up, and exits: the harness then follows D (DIR/info
 *   "pid_d"). Left running: D (session A, group A, both leaderless; its
 *   parent outside) and E (parent D, session A, group C, leaderless).
 *
 * D counts ~10 ms iterations (wl_loop); E counts its own and waits for the
 * check byte on a pipe from D. E sets PR_SET_PDEATHSIG to SIGKILL once D is
 * its parent (the reparenting itself would have sent it), so killing D kills
 * E.
 *
 * Check: when DIR/check exists, D sends SIGUSR1 to group C (kill(-C)), then
 * writes 'C' to E. E verifies getppid() == D, getsid(0) == A, getpgid(0) == C,
 * PR_GET_PDEATHSIG == SIGKILL, that it caught SIGUSR1 exactly once (it is
 * really in group C), and that its counter moved; it sends its verdict up and
 * exits 0 or 1. D verifies getsid(0) == A, getpgid(0) == A, that it is still
 * a child subreaper, that it caught no SIGUSR1, E's group and session seen
 * from outside (getpgid(E), getsid(E)), E's verdict and exit status, and that
 * no other child is left to wait for (no helper of the restore).
 *
 * Publishes in DIR/info: "pid_d", "pid_e", "pid_a" (= the session and D's
 * group), "pid_c" (= E's group), "pids" (D E).
 */
#include "workload.h"

#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>

static volatile sig_atomic_t usr1_count;

static void count_usr1(int sig)
{
	(void)sig;
	usr1_count++;
}

struct setup {
	int32_t a, c, e;
};

/* E: count until D writes 'C' on DOWN, check, send the verdict on UP, exit. */
static void run_e(pid_t d, pid_t a, pid_t c, int down, int up)
{
	uint64_t counter = 0;
	char fails[1024] = "";
	size_t used = 0;
#define E_EXPECT(what, expected, found)                                                                                \
	do {                                                                                                           \
		long long e_ = (expected), f_ = (found);                                                               \
		if (e_ != f_ && used < sizeof(fails))                                                                  \
			used += (size_t)snprintf(fails + used, sizeof(fails) - used, "E: %s: expected %lld, found %lld; ", \
						 (what), e_, f_);                                                      \
	} while (0)
	for (;;) {
		struct pollfd p = { .fd = down, .events = POLLIN };
		int n = poll(&p, 1, 10);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			_exit(3);
		counter++;
		if (n == 1) {
			char byte = 0;
			ssize_t r = read(down, &byte, 1);
			if (r == 1 && byte == 'C')
				break;
			if (r == 0)
				_exit(4); /* D is gone */
		}
	}
	int deathsig = 0;
	prctl(PR_GET_PDEATHSIG, &deathsig);
	E_EXPECT("getppid()", d, getppid());
	E_EXPECT("getsid(0)", a, getsid(0));
	E_EXPECT("getpgid(0)", c, getpgid(0));
	E_EXPECT("PR_GET_PDEATHSIG", SIGKILL, deathsig);
	E_EXPECT("SIGUSR1 caught (sent to group C)", 1, usr1_count);
	if (counter < 2 && used < sizeof(fails))
		used += (size_t)snprintf(fails + used, sizeof(fails) - used, "E: counted only %llu iterations; ",
					 (unsigned long long)counter);
	uint32_t len = (uint32_t)strlen(fails);
	if (send_all(up, &len, sizeof(len)) < 0 || send_all(up, fails, len) < 0)
		_exit(5);
	_exit(len == 0 ? 0 : 1);
}

/* Read exactly LEN bytes from FD within TIMEOUT_MS; false otherwise. */
static bool read_within(int fd, void *buf, size_t len, int timeout_ms)
{
	size_t got = 0;
	uint64_t deadline = wl_monotonic_ns() + (uint64_t)timeout_ms * 1000000u;
	while (got < len) {
		uint64_t now = wl_monotonic_ns();
		if (now >= deadline)
			return false;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int n = poll(&p, 1, (int)((deadline - now) / 1000000u) + 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			continue;
		ssize_t r = read(fd, (char *)buf + got, len - got);
		if (r <= 0)
			return false;
		got += (size_t)r;
	}
	return true;
}

/* D: set up C and E, tell R, run, check. */
static void run_d(const char *dir, pid_t a, int to_r)
{
	pid_t d = getpid();
	WL_CHECK_SYS(prctl(PR_SET_CHILD_SUBREAPER, 1));
	int down[2], up[2], ready[2];
	WL_CHECK_SYS(pipe(down));
	WL_CHECK_SYS(pipe(up));
	WL_CHECK_SYS(pipe(ready));
	pid_t c = fork();
	WL_CHECK_SYS(c);
	if (c == 0) {
		close(to_r);
		close(down[1]);
		close(up[0]);
		close(ready[0]);
		if (setpgid(0, 0) < 0)
			_exit(2);
		pid_t e = fork();
		if (e < 0)
			_exit(2);
		if (e == 0) {
			/* Wait to be D's: C's exit reparents E (and would send a death signal). */
			while (getppid() != d)
				wl_sleep_ms(1);
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != d)
				_exit(2);
			int32_t me = getpid();
			if (send_all(ready[1], &me, sizeof(me)) < 0)
				_exit(2);
			close(ready[1]);
			run_e(d, a, getpgid(0), down[0], up[1]);
		}
		_exit(0);
	}
	close(down[0]);
	close(up[1]);
	close(ready[1]);
	int status;
	WL_CHECK_SYS(waitpid(c, &status, 0));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_die("C failed: status %#x", status);
	int32_t e;
	if (!read_within(ready[0], &e, sizeof(e), 10000))
		wl_die("E did not report");
	close(ready[0]);
	if (getsid(0) != a || getpgid(0) != a || getpgid(e) != c || getsid(e) != a)
		wl_die("unexpected ids: sid %d pgid %d, E's pgid %d sid %d", getsid(0), getpgid(0), getpgid(e), getsid(e));
	wl_info(dir, "pid_d %d\npid_e %d\npid_a %d\npid_c %d\npids %d %d\n", d, e, a, c, d, e);
	struct setup s = { a, c, e };
	wl_write_all(to_r, &s, sizeof(s));
	close(to_r);

	wl_loop(dir, NULL);

	WL_CHECK_SYS(kill(-c, SIGUSR1));
	wl_write_all(down[1], "C", 1);
	int subreaper = 0;
	prctl(PR_GET_CHILD_SUBREAPER, &subreaper);
	wl_expect_eq("D: getsid(0)", a, getsid(0));
	wl_expect_eq("D: getpgid(0)", a, getpgid(0));
	wl_expect_eq("D: PR_GET_CHILD_SUBREAPER", 1, subreaper);
	wl_expect_eq("D: getpgid(E)", c, getpgid(e));
	wl_expect_eq("D: getsid(E)", a, getsid(e));
	uint32_t len = 0;
	char fails[1025] = "";
	if (!read_within(up[0], &len, sizeof(len), 10000) || len >= sizeof(fails) ||
	    !read_within(up[0], fails, len, 10000))
		wl_fail("no verdict from E");
	else if (len > 0)
		wl_fail("%s", fails);
	WL_CHECK_SYS(waitpid(e, &status, 0));
	wl_expect_eq("E's exit status", 0, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	pid_t other = waitpid(-1, &status, WNOHANG | __WALL);
	if (other > 0)
		wl_fail("D: an unexpected child %d was left to wait for", other);
	wl_expect_eq("D: SIGUSR1 caught", 0, usr1_count);
	wl_finish(dir);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	struct sigaction sa = { .sa_handler = count_usr1 };
	WL_CHECK_SYS(sigaction(SIGUSR1, &sa, NULL));
	int to_r[2];
	WL_CHECK_SYS(pipe(to_r));
	pid_t a = fork();
	WL_CHECK_SYS(a);
	if (a == 0) {
		close(to_r[0]);
		if (setsid() < 0)
			_exit(2);
		pid_t d = fork();
		if (d < 0)
			_exit(2);
		if (d == 0)
			run_d(dir, getsid(0), to_r[1]);
		_exit(0);
	}
	close(to_r[1]);
	int status;
	WL_CHECK_SYS(waitpid(a, &status, 0));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_die("A failed: status %#x", status);
	struct setup s;
	if (!read_within(to_r[0], &s, sizeof(s), 10000))
		wl_die("the daemon did not report");
	wl_ready(dir);
	return 0;
}
