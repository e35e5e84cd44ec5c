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
#include "kids.h"

#include <ctype.h>

#define MSG_LEN 100
#define MAX_KIDS 3
#define MAX_MEMBERS 8
/* How long a parent waits for its children's verdicts, per level below it. */
#define LEVEL_MS 10000

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
	kid_pipes(down, up, beat);
	/* In flight before the child exists: it must not read it before check. */
	uint8_t msg[MSG_LEN];
	wl_fill(msg, MSG_LEN, msg_seed(r->name, 'd'));
	wl_write_all(down[1], msg, MSG_LEN);

	pid_t parent = getpid();
	pid_t pid = fork();
	WL_CHECK_SYS(pid);
	if (pid == 0) {
		become_child(parent);
		kid_child_fds(down, up, beat);
		run_node(r, parent);
	}
	close(down[0]);
	close(up[1]);
	close(beat[1]);
	if (self.nkids >= MAX_KIDS)
		wl_die("too many children");
	struct kid *k = &self.kids[self.nkids];
	kid_attach(k, r, pid, KID_FD0 + 4 * self.nkids++, down, up, beat);

	/* Its roster comes first; its 100-byte message stays in the pipe. */
	struct roster ros;
	size_t got = read_all(k->up, &ros, sizeof(ros));
	if (got != sizeof(ros))
		wl_die("%s (pid %d) sent %zu of %zu roster bytes", r->name, (int)pid, got, sizeof(ros));
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

static void drain_all(uint64_t gen)
{
	(void)gen;
	for (int i = 0; i < self.nkids; i++)
		drain(&self.kids[i]);
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

	kid_gather(k, who, got == MSG_LEN, deadline);
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

	expect_no_children();
}

/* A child's check: the parent's message and check byte, then its subtree. */
static void check_parent_pipe(void)
{
	uint8_t buf[MSG_LEN + 2];
	size_t got = read_buffered(PARENT_DOWN, buf, sizeof(buf));
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
	kid_beat_until_check(r->name, MSG_LEN, drain_all);
	check_parent_pipe();
	check_tree();

	kid_send_verdict(r->name);
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
