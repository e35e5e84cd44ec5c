/*
 * tree: a fork tree three levels deep, two zombies, and pipes between each
 * parent and child with data in flight.
 *
 * Usage: tree DIR
 *
 * Processes ("root" is the one the harness started, named in DIR/ready):
 *   root -> A -> A1 -> A1a
 *           A -> A2   exits with status 3 before ready; A leaves it a zombie
 *   root -> B
 *   root -> Z         exits with status 7 before ready; root leaves it a zombie
 * Every process but the root sets PR_SET_PDEATHSIG to SIGKILL right after
 * the fork, so killing the root kills the tree. Each live process counts
 * ~10 ms iterations (wl_generation); only the root touches DIR.
 *
 * Pipes, three per live child, at fixed fds (child i of a parent at
 * 20 + 4i in the parent, 10-12 in the child; nothing else is open above 2):
 *   down (parent -> child, 20+4i -> 10): 100 bytes of known data, written
 *     before the fork, that the child reads only at check time; then the
 *     check byte 'C'.
 *   up (child -> parent, 11 -> 21+4i): the child's roster (name, pid, parent
 *     of each process in its subtree), read during setup; then 100 bytes of
 *     known data that the parent reads only at check time; then the child's
 *     verdict.
 *   beat (child -> parent, 12 -> 22+4i, O_NONBLOCK at the parent): the
 *     child's counter, one 8-byte record per iteration; the parent drains it
 *     every iteration and requires 1, 2, 3, ...
 *
 * Check: when DIR/check exists the root writes 'C' down to A and B; a child
 * sees it (its down pipe no longer holds exactly 100 bytes), relays it to its
 * own children, and verifies: getpid() and getppid() are the pids of setup,
 * PR_GET_PDEATHSIG is SIGKILL, its down pipe held exactly the 100-byte
 * message and 'C'. A parent also verifies: waitpid() of its zombie reports
 * the exit status (7 for Z, 3 for A2); from each child the 100-byte message
 * on the up pipe and then a verdict; the beats count 1, 2, ... up to the
 * counter in the verdict and then the pipe is closed; the child exits 0 on
 * ok, 1 on fail; afterwards waitpid(-1) has nothing left (ECHILD). Verdicts
 * flow up as "NAME (pid N): [failures]"; the root writes DIR/result.
 *
 * Publishes in DIR/info: "pids" (the live descendants: A A1 A1a B),
 * "zombie" (Z), "zombie_a2" (A2), and "pid_NAME" for each process (pid_a,
 * pid_a1, pid_a1a, pid_a2, pid_b, pid_z).
 */
#include "workload.h"

#include <ctype.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define MSG_LEN 100
#define MAX_KIDS 3
#define MAX_MEMBERS 8
/* How long a parent waits for its children's verdicts, per level below it. */
#define LEVEL_MS 10000

enum { PARENT_DOWN = 10, PARENT_UP, PARENT_BEAT, KID_FD0 = 20 };

/* The tree. A role with an exit status exits at once and stays a zombie. */
struct role {
	const char *name, *parent;
	int exit_status; /* -1: lives */
};

static const struct role roles[] = {
	{ "A", "root", -1 }, { "A1", "A", -1 }, { "A1a", "A1", -1 }, { "A2", "A", 3 },
	{ "B", "root", -1 }, { "Z", "root", 7 },
};
#define NROLES (sizeof(roles) / sizeof(roles[0]))

struct member {
	char name[8];
	int32_t pid, ppid, zombie;
};

struct roster {
	int32_t n;
	struct member m[MAX_MEMBERS];
};

struct verdict {
	uint64_t counter;
	uint32_t ok, len;
};

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

/* The process's own place in the tree (reset in each child). */
static struct {
	const char *name;
	pid_t pid, ppid;
	struct kid kids[MAX_KIDS];
	int nkids;
	const struct role *zombie_role;
	pid_t zombie;
	struct roster roster;
} self;

static uint64_t msg_seed(const char *name, char dir)
{
	return wl_checksum(name, strlen(name)) ^ ((uint64_t)dir << 56);
}

/* Levels of live processes below NAME. */
static int height(const char *name)
{
	int h = 0;
	for (size_t i = 0; i < NROLES; i++)
		if (roles[i].exit_status < 0 && strcmp(roles[i].parent, name) == 0) {
			int k = 1 + height(roles[i].name);
			h = k > h ? k : h;
		}
	return h;
}

static void add_member(const char *name, pid_t pid, pid_t ppid, bool zombie)
{
	if (self.roster.n >= MAX_MEMBERS)
		wl_die("roster full");
	struct member *m = &self.roster.m[self.roster.n++];
	memset(m, 0, sizeof(*m));
	snprintf(m->name, sizeof(m->name), "%s", name);
	m->pid = pid;
	m->ppid = ppid;
	m->zombie = zombie;
}

static int buffered(int fd)
{
	int n = -1;
	if (ioctl(fd, FIONREAD, &n) < 0)
		return -1;
	return n;
}

/* write(2) all of BUF; -1 (errno set) on failure. */
static int send_all(int fd, const void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(fd, (const char *)buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

/* Right after fork in the child: die with the parent, or exit if it is already gone. */
static void become_child(pid_t parent)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		_exit(2);
	if (getppid() != parent)
		_exit(2);
	wl_failures[0] = 0;
	wl_nfail = 0;
	wl_generation = 0;
}

static void run_node(const struct role *r, pid_t parent) __attribute__((noreturn));

static void spawn_zombie(const struct role *r)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	WL_CHECK_SYS(pid);
	if (pid == 0) {
		become_child(parent);
		_exit(r->exit_status);
	}
	/* Wait until it has exited, without reaping it. */
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	while (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) < 0)
		if (errno != EINTR)
			wl_die("waitid %s: %s", r->name, strerror(errno));
	if (si.si_code != CLD_EXITED || si.si_status != r->exit_status)
		wl_die("%s: si_code %d status %d, expected exit %d", r->name, si.si_code, si.si_status, r->exit_status);
	self.zombie_role = r;
	self.zombie = pid;
	add_member(r->name, pid, parent, true);
}

static void spawn(const struct role *r)
{
	int down[2], up[2], beat[2];
	WL_CHECK_SYS(pipe(down));
	WL_CHECK_SYS(pipe(up));
	WL_CHECK_SYS(pipe(beat));
	if (down[0] >= PARENT_DOWN || down[1] >= PARENT_DOWN || up[0] >= PARENT_DOWN || up[1] >= PARENT_DOWN ||
	    beat[0] >= PARENT_DOWN || beat[1] >= PARENT_DOWN)
		wl_die("pipe fds above %d", PARENT_DOWN - 1);
	/* In flight before the child exists: it must not read it before check. */
	uint8_t msg[MSG_LEN];
	wl_fill(msg, MSG_LEN, msg_seed(r->name, 'd'));
	wl_write_all(down[1], msg, MSG_LEN);

	pid_t parent = getpid();
	pid_t pid = fork();
	WL_CHECK_SYS(pid);
	if (pid == 0) {
		become_child(parent);
		wl_move_fd(down[0], PARENT_DOWN, 0);
		wl_move_fd(up[1], PARENT_UP, 0);
		wl_move_fd(beat[1], PARENT_BEAT, 0);
		close_range(3, PARENT_DOWN - 1, 0);
		close_range(PARENT_BEAT + 1, ~0U, 0);
		run_node(r, parent);
	}
	close(down[0]);
	close(up[1]);
	close(beat[1]);
	if (self.nkids >= MAX_KIDS)
		wl_die("too many children");
	struct kid *k = &self.kids[self.nkids];
	int base = KID_FD0 + 4 * self.nkids++;
	memset(k, 0, sizeof(*k));
	k->role = r;
	k->pid = pid;
	k->down = wl_move_fd(down[1], base, 0);
	k->up = wl_move_fd(up[0], base + 1, 0);
	k->beat = wl_move_fd(beat[0], base + 2, 0);
	WL_CHECK_SYS(fcntl(k->beat, F_SETFL, O_NONBLOCK));

	/* Its roster comes first; its 100-byte message stays in the pipe. */
	struct roster ros;
	size_t got = 0;
	while (got < sizeof(ros)) {
		ssize_t n = read(k->up, (char *)&ros + got, sizeof(ros) - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			wl_die("%s (pid %d) sent %zu of %zu roster bytes", r->name, (int)pid, got, sizeof(ros));
		got += (size_t)n;
	}
	if (ros.n < 1 || ros.n > MAX_MEMBERS || ros.m[0].pid != pid)
		wl_die("%s (pid %d) sent a bad roster", r->name, (int)pid);
	for (int i = 0; i < ros.n; i++)
		add_member(ros.m[i].name, ros.m[i].pid, ros.m[i].ppid, ros.m[i].zombie);
}

static void spawn_children(void)
{
	for (size_t i = 0; i < NROLES; i++) {
		if (strcmp(roles[i].parent, self.name) != 0)
			continue;
		if (roles[i].exit_status >= 0)
			spawn_zombie(&roles[i]);
		else
			spawn(&roles[i]);
	}
}

/* Read the beats buffered from K (non-blocking); they must count 1, 2, 3, ... */
static void drain(struct kid *k)
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

static void drain_all(uint64_t gen)
{
	(void)gen;
	for (int i = 0; i < self.nkids; i++)
		drain(&self.kids[i]);
}

static int ms_left(uint64_t deadline)
{
	uint64_t now = wl_monotonic_ns();
	return now >= deadline ? 0 : (int)((deadline - now) / 1000000 + 1);
}

/* Read LEN bytes from a blocking FD, giving up at DEADLINE. Returns the bytes read. */
static size_t read_until(int fd, void *buf, size_t len, uint64_t deadline, const char **why)
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

/* Wait for K to exit (reaping it) until DEADLINE. Returns its wait status, or -1. */
static int reap(struct kid *k, const char *who, uint64_t deadline)
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

/* Collect K's message, verdict, beats and exit status; record what is wrong. */
static void gather(struct kid *k, uint64_t deadline)
{
	char who[64], what[128];
	const char *why;
	snprintf(who, sizeof(who), "%s (pid %d)", k->role->name, (int)k->pid);

	uint8_t msg[MSG_LEN];
	size_t got = read_until(k->up, msg, MSG_LEN, deadline, &why);
	snprintf(what, sizeof(what), "%s: message in flight on its up pipe", who);
	if (got != MSG_LEN)
		wl_fail("%s: %zu of %d bytes (%s)", what, got, MSG_LEN, why);
	else
		wl_expect_fill(what, msg, MSG_LEN, msg_seed(k->role->name, 'u'));

	struct verdict v = { 0 };
	char text[4096] = "";
	bool have = false;
	if (got == MSG_LEN) {
		got = read_until(k->up, &v, sizeof(v), deadline, &why);
		if (got != sizeof(v))
			wl_fail("%s: no verdict (%zu of %zu bytes: %s)", who, got, sizeof(v), why);
		else if (v.len >= sizeof(text))
			wl_fail("%s: verdict of %u bytes", who, v.len);
		else if ((got = read_until(k->up, text, v.len, deadline, &why)) != v.len)
			wl_fail("%s: verdict text cut at %zu of %u bytes (%s)", who, got, v.len, why);
		else
			have = true;
		text[have ? v.len : 0] = 0;
	}

	int st = reap(k, who, deadline);
	if (st != -1 && WIFSIGNALED(st))
		wl_fail("%s: killed by signal %d", who, WTERMSIG(st));
	else if (st != -1 && have && (!WIFEXITED(st) || WEXITSTATUS(st) != (v.ok ? 0 : 1)))
		wl_fail("%s: exit status %d after a verdict of %s", who, WEXITSTATUS(st), v.ok ? "ok" : "fail");
	else if (st != -1 && !have)
		wl_fail("%s: exited with status %d", who, WEXITSTATUS(st));
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

/* The zombie left unreaped at setup must still be one, with its exit status. */
static void check_zombie(void)
{
	if (!self.zombie)
		return;
	const struct role *r = self.zombie_role;
	char path[64], stat[512] = "", state = '?';
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)self.zombie);
	int fd = open(path, O_RDONLY);
	if (fd >= 0) {
		ssize_t n = read(fd, stat, sizeof(stat) - 1);
		stat[n > 0 ? n : 0] = 0;
		close(fd);
		char *p = strrchr(stat, ')');
		if (p && p[1] == ' ')
			state = p[2];
	}
	int st;
	pid_t got = waitpid(self.zombie, &st, WNOHANG);
	if (got < 0)
		wl_fail("zombie %s (pid %d): waitpid: %s", r->name, (int)self.zombie, strerror(errno));
	else if (got == 0)
		wl_fail("zombie %s (pid %d) has not exited (state %c)", r->name, (int)self.zombie, state);
	else if (!WIFEXITED(st) || WEXITSTATUS(st) != r->exit_status)
		wl_fail("zombie %s (pid %d): wait status 0x%x, expected exit status %d", r->name, (int)self.zombie, st,
			r->exit_status);
}

/* Verification common to every process, then the children's verdicts. */
static void check_tree(void)
{
	for (int i = 0; i < self.nkids; i++)
		if (write(self.kids[i].down, "C", 1) != 1)
			wl_fail("%s (pid %d): cannot send the check byte: %s", self.kids[i].role->name,
				(int)self.kids[i].pid, strerror(errno));

	wl_expect_eq("getpid()", self.pid, getpid());
	if (self.ppid)
		wl_expect_eq("getppid()", self.ppid, getppid());
	if (self.ppid) {
		int sig = -1;
		if (prctl(PR_GET_PDEATHSIG, &sig) < 0)
			wl_fail("PR_GET_PDEATHSIG: %s", strerror(errno));
		else
			wl_expect_eq("PR_GET_PDEATHSIG", SIGKILL, sig);
	}
	check_zombie();

	uint64_t deadline = wl_monotonic_ns() + (uint64_t)LEVEL_MS * 1000000u * (uint64_t)height(self.name);
	for (int i = 0; i < self.nkids; i++)
		gather(&self.kids[i], deadline);

	int st;
	pid_t left = waitpid(-1, &st, WNOHANG);
	if (left > 0)
		wl_fail("an unexpected child (pid %d) exited with wait status 0x%x", (int)left, st);
	else if (left == 0)
		wl_fail("an unexpected child is still running");
	else if (errno != ECHILD)
		wl_fail("waitpid(-1): %s", strerror(errno));
}

/* A child's check: the parent's message and check byte, then its subtree. */
static void check_parent_pipe(void)
{
	uint8_t buf[MSG_LEN + 2];
	size_t got = 0;
	fcntl(PARENT_DOWN, F_SETFL, O_NONBLOCK);
	while (got < sizeof(buf)) {
		ssize_t n = read(PARENT_DOWN, buf + got, sizeof(buf) - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (got != MSG_LEN + 1)
		wl_fail("down pipe held %zu bytes at check, expected %d (the message and 'C')", got, MSG_LEN + 1);
	else if (buf[MSG_LEN] != 'C')
		wl_fail("down pipe: byte 0x%02x after the message, expected 'C'", buf[MSG_LEN]);
	wl_expect_fill("message in flight on the down pipe", buf, got < MSG_LEN ? got : MSG_LEN,
		       msg_seed(self.name, 'd'));
}

static void run_node(const struct role *r, pid_t parent)
{
	memset(&self, 0, sizeof(self));
	self.name = r->name;
	self.pid = getpid();
	self.ppid = parent;
	add_member(r->name, self.pid, parent, false);
	spawn_children();

	/* One write (atomic, under PIPE_BUF): the roster, then the message in flight. */
	uint8_t out[sizeof(struct roster) + MSG_LEN];
	memcpy(out, &self.roster, sizeof(struct roster));
	wl_fill(out + sizeof(struct roster), MSG_LEN, msg_seed(r->name, 'u'));
	wl_write_all(PARENT_UP, out, sizeof(out));

	/* Count, beat, drain the children's beats, until the check byte arrives. */
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
		if (buffered(PARENT_DOWN) != MSG_LEN)
			break;
		wl_sleep_ms(10);
	}
	wl_log("%s: check at counter %llu", r->name, (unsigned long long)wl_generation);
	if (beat_err[0])
		wl_fail("%s", beat_err);
	check_parent_pipe();
	check_tree();

	pthread_mutex_lock(&wl_fail_lock);
	struct verdict v = { .counter = wl_generation, .ok = wl_nfail == 0, .len = (uint32_t)strlen(wl_failures) };
	pthread_mutex_unlock(&wl_fail_lock);
	close(PARENT_BEAT);
	if (send_all(PARENT_UP, &v, sizeof(v)) < 0 || send_all(PARENT_UP, wl_failures, v.len) < 0)
		wl_log("%s: cannot send the verdict: %s", r->name, strerror(errno));
	_exit(v.ok ? 0 : 1);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);

	self.name = "root";
	self.pid = getpid();
	add_member("root", self.pid, getppid(), false);
	spawn_children();

	char info[2048], pids[512] = "";
	size_t used = 0;
	for (int i = 1; i < self.roster.n; i++)
		if (!self.roster.m[i].zombie)
			used += (size_t)snprintf(pids + used, sizeof(pids) - used, "%s%d", used ? " " : "",
						 (int)self.roster.m[i].pid);
	int len = snprintf(info, sizeof(info), "pids %s\n", pids);
	for (int i = 1; i < self.roster.n; i++) {
		const struct member *m = &self.roster.m[i];
		char key[16];
		snprintf(key, sizeof(key), "%s", m->name);
		for (char *p = key; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		len += snprintf(info + len, sizeof(info) - (size_t)len, "pid_%s %d\n", key, (int)m->pid);
		if (strcmp(m->name, "Z") == 0)
			len += snprintf(info + len, sizeof(info) - (size_t)len, "zombie %d\n", (int)m->pid);
		if (strcmp(m->name, "A2") == 0)
			len += snprintf(info + len, sizeof(info) - (size_t)len, "zombie_a2 %d\n", (int)m->pid);
	}
	wl_info(dir, "%s", info);
	wl_ready(dir);
	wl_loop(dir, drain_all);

	check_tree();
	wl_finish(dir);
}
