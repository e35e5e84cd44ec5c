/*
 * session: a session with two process groups, below a root that stays in
 * the session it was started in.
 *
 * Usage: session DIR
 *
 * Processes ("root" is the one the harness started, named in DIR/ready):
 *   root -> S           S calls setsid(): leads session S and group S
 *           S -> G1     setpgid(0, 0): leads group G1
 *                G1 -> M1   stays in group G1
 *           S -> G2     setpgid(0, 0): leads group G2
 *           S -> M2     joins group G2 (setpgid(0, G2), and S does setpgid(M2, G2))
 * Every process but the root sets PR_SET_PDEATHSIG to SIGKILL right after
 * the fork, so killing the root kills the tree. Each live process counts
 * ~10 ms iterations (wl_generation) and counts SIGUSR1 and SIGUSR2 with a
 * handler (installed by the root before the forks); only the root touches DIR.
 *
 * Pipes, three per child, at fixed fds (child i of a parent at 20 + 4i in
 * the parent, 10-12 in the child; nothing else is open above 2):
 *   down (parent -> child, 20+4i -> 10): empty until the check byte 'C'.
 *   up (child -> parent, 11 -> 21+4i): the child's roster (name, pid, parent,
 *     session and group of each process in its subtree), read during setup;
 *     then the child's verdict.
 *   beat (child -> parent, 12 -> 22+4i, O_NONBLOCK at the parent): the
 *     child's counter, one 8-byte record per iteration; the parent drains it
 *     every iteration and requires 1, 2, 3, ...
 *
 * Check: when DIR/check exists the root writes 'C' down to S; S sends
 * kill(-G1, SIGUSR1) and kill(-G2, SIGUSR2), then relays 'C' to G1, G2 and
 * M2; G1 relays it to M1. Each process verifies: getpid() and getppid() are
 * the pids of setup, PR_GET_PDEATHSIG is SIGKILL, getsid(0) and getpgid(0)
 * are what they were at setup (session S for all five; group S, G1, G1, G2,
 * G2), and it caught SIGUSR1 exactly once if in G1 (else never) and SIGUSR2
 * exactly once if in G2 (else never). A signal sent before 'C' was written
 * is handled before its recipient sees 'C', so the counts are final. The
 * root verifies it is in neither S's session nor any of its groups, and
 * caught neither signal. A parent verifies each child's verdict, its beats
 * (1, 2, ... up to the counter in the verdict, then the pipe is closed), its
 * exit status (0 on ok, 1 on fail), and that waitpid(-1) has nothing left.
 * Verdicts flow up as "NAME (pid N): [failures]"; the root writes DIR/result.
 *
 * Publishes in DIR/info: "pids" (S G1 M1 G2 M2), "sid" (S), "pgid_g1",
 * "pgid_g2", "pid_NAME" for each process (pid_s, pid_g1, pid_m1, pid_g2,
 * pid_m2), and the root's own "root_sid" and "root_pgid".
 */
#include "kids.h"

#include <ctype.h>

#define MAX_KIDS 3
#define MAX_MEMBERS 8
/* How long a parent waits for its children's verdicts, per level below it. */
#define LEVEL_MS 10000

enum group_op { STAY, SETSID, NEW_GROUP, JOIN_GROUP };

/* The tree: LEADER names the process whose pid is the role's process group. */
struct role {
	const char *name, *parent;
	enum group_op op;
	const char *leader;
};

static const struct role roles[] = {
	{ "S", "root", SETSID, "S" },	   { "G1", "S", NEW_GROUP, "G1" }, { "M1", "G1", STAY, "G1" },
	{ "G2", "S", NEW_GROUP, "G2" }, { "M2", "S", JOIN_GROUP, "G2" },
};
#define NROLES (sizeof(roles) / sizeof(roles[0]))

struct member {
	char name[8];
	int32_t pid, ppid, sid, pgid;
};

struct roster {
	int32_t n;
	struct member m[MAX_MEMBERS];
};

/* The process's own place in the tree (reset in each child). */
static struct {
	const struct role *role; /* NULL in the root */
	const char *name;
	pid_t pid, ppid, sid, pgid;
	struct kid kids[MAX_KIDS];
	int nkids;
	struct roster roster;
} self;

/* Pids of the roles this process knows: itself, its ancestors, their earlier children. */
static pid_t role_pid[NROLES];

static volatile sig_atomic_t usr1_count, usr2_count;

static void count_signal(int sig)
{
	if (sig == SIGUSR1)
		usr1_count++;
	else
		usr2_count++;
}

static int role_index(const char *name)
{
	for (size_t i = 0; i < NROLES; i++)
		if (strcmp(roles[i].name, name) == 0)
			return (int)i;
	wl_die("no role %s", name);
}

/* Levels of processes below NAME. */
static int height(const char *name)
{
	int h = 0;
	for (size_t i = 0; i < NROLES; i++)
		if (strcmp(roles[i].parent, name) == 0) {
			int k = 1 + height(roles[i].name);
			h = k > h ? k : h;
		}
	return h;
}

static void add_member(const struct member *from)
{
	if (self.roster.n >= MAX_MEMBERS)
		wl_die("roster full");
	self.roster.m[self.roster.n++] = *from;
}

static void run_node(const struct role *r, pid_t parent) __attribute__((noreturn));

static void spawn(const struct role *r)
{
	int down[2], up[2], beat[2];
	kid_pipes(down, up, beat);

	pid_t parent = getpid();
	pid_t pid = fork();
	WL_CHECK_SYS(pid);
	if (pid == 0) {
		become_child(parent);
		kid_child_fds(down, up, beat);
		run_node(r, parent);
	}
	role_pid[role_index(r->name)] = pid;
	/* Both sides set the group, so it is set whichever runs first. */
	if (r->op == NEW_GROUP)
		WL_CHECK_SYS(setpgid(pid, pid));
	else if (r->op == JOIN_GROUP)
		WL_CHECK_SYS(setpgid(pid, role_pid[role_index(r->leader)]));
	close(down[0]);
	close(up[1]);
	close(beat[1]);
	if (self.nkids >= MAX_KIDS)
		wl_die("too many children");
	struct kid *k = &self.kids[self.nkids];
	kid_attach(k, r, pid, KID_FD0 + 4 * self.nkids++, down, up, beat);

	struct roster ros;
	size_t got = read_all(k->up, &ros, sizeof(ros));
	if (got != sizeof(ros))
		wl_die("%s (pid %d) sent %zu of %zu roster bytes", r->name, (int)pid, got, sizeof(ros));
	if (ros.n < 1 || ros.n > MAX_MEMBERS || ros.m[0].pid != pid)
		wl_die("%s (pid %d) sent a bad roster", r->name, (int)pid);
	for (int i = 0; i < ros.n; i++)
		add_member(&ros.m[i]);
}

static void spawn_children(void)
{
	for (size_t i = 0; i < NROLES; i++)
		if (strcmp(roles[i].parent, self.name) == 0)
			spawn(&roles[i]);
}

static void drain_all(uint64_t gen)
{
	(void)gen;
	for (int i = 0; i < self.nkids; i++)
		drain(&self.kids[i]);
}

/* Collect K's verdict, beats and exit status; record what is wrong. */
static void gather(struct kid *k, uint64_t deadline)
{
	char who[64];
	snprintf(who, sizeof(who), "%s (pid %d)", k->role->name, (int)k->pid);
	kid_gather(k, who, true, deadline);
}

/* Verification common to every process, then the children's verdicts. */
static void check_tree(void)
{
	/* Signals first: a recipient sees 'C' only after they were sent. */
	if (self.role && self.role->op == SETSID) {
		pid_t g1 = role_pid[role_index("G1")], g2 = role_pid[role_index("G2")];
		if (kill(-g1, SIGUSR1) < 0)
			wl_fail("kill(-%d, SIGUSR1): %s", (int)g1, strerror(errno));
		if (kill(-g2, SIGUSR2) < 0)
			wl_fail("kill(-%d, SIGUSR2): %s", (int)g2, strerror(errno));
	}
	for (int i = 0; i < self.nkids; i++)
		if (write(self.kids[i].down, "C", 1) != 1)
			wl_fail("%s (pid %d): cannot send the check byte: %s", self.kids[i].role->name,
				(int)self.kids[i].pid, strerror(errno));

	wl_expect_eq("getpid()", self.pid, getpid());
	if (self.role) {
		wl_expect_eq("getppid()", self.ppid, getppid());
		int sig = -1;
		if (prctl(PR_GET_PDEATHSIG, &sig) < 0)
			wl_fail("PR_GET_PDEATHSIG: %s", strerror(errno));
		else
			wl_expect_eq("PR_GET_PDEATHSIG", SIGKILL, sig);
		wl_expect_eq("getsid(0)", self.sid, getsid(0));
		wl_expect_eq("getpgid(0)", self.pgid, getpgid(0));
	} else {
		pid_t sid = getsid(0), pgid = getpgid(0);
		for (size_t i = 0; i < NROLES; i++) {
			if (sid == role_pid[i])
				wl_fail("the root is in session %d of %s", (int)sid, roles[i].name);
			if (pgid == role_pid[i])
				wl_fail("the root is in process group %d of %s", (int)pgid, roles[i].name);
		}
	}
	bool in_g1 = self.role && strcmp(self.role->leader, "G1") == 0;
	bool in_g2 = self.role && strcmp(self.role->leader, "G2") == 0;
	wl_expect_eq("SIGUSR1 caught (sent to group G1)", in_g1, usr1_count);
	wl_expect_eq("SIGUSR2 caught (sent to group G2)", in_g2, usr2_count);

	uint64_t deadline = wl_monotonic_ns() + (uint64_t)LEVEL_MS * 1000000u * (uint64_t)height(self.name);
	for (int i = 0; i < self.nkids; i++)
		gather(&self.kids[i], deadline);

	expect_no_children();
}

static void check_parent_pipe(void)
{
	uint8_t buf[2];
	size_t got = read_buffered(PARENT_DOWN, buf, sizeof(buf));
	if (got != 1 || buf[0] != 'C')
		wl_fail("down pipe held %zu bytes at check (first 0x%02x), expected just 'C'", got, got ? buf[0] : 0);
}

/* Join the session or group of role R; then it must be as planned. */
static void set_groups(const struct role *r)
{
	if (r->op == SETSID)
		WL_CHECK_SYS(setsid());
	else if (r->op == NEW_GROUP)
		WL_CHECK_SYS(setpgid(0, 0));
	else if (r->op == JOIN_GROUP)
		WL_CHECK_SYS(setpgid(0, role_pid[role_index(r->leader)]));
	self.sid = getsid(0);
	self.pgid = getpgid(0);
	pid_t want_sid = role_pid[role_index("S")], want_pgid = role_pid[role_index(r->leader)];
	if (self.sid != want_sid || self.pgid != want_pgid)
		wl_die("%s: session %d group %d, expected session %d group %d", r->name, (int)self.sid,
		       (int)self.pgid, (int)want_sid, (int)want_pgid);
}

static void run_node(const struct role *r, pid_t parent)
{
	memset(&self, 0, sizeof(self));
	self.role = r;
	self.name = r->name;
	self.pid = getpid();
	self.ppid = parent;
	role_pid[role_index(r->name)] = self.pid;
	set_groups(r);
	struct member me = { .pid = self.pid, .ppid = parent, .sid = self.sid, .pgid = self.pgid };
	snprintf(me.name, sizeof(me.name), "%s", r->name);
	add_member(&me);
	spawn_children();

	wl_write_all(PARENT_UP, &self.roster, sizeof(self.roster));

	/* Count, beat, drain the children's beats, until the check byte arrives. */
	kid_beat_until_check(r->name, 0, drain_all);
	check_parent_pipe();
	check_tree();

	kid_send_verdict(r->name);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { .sa_handler = count_signal, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	WL_CHECK_SYS(sigaction(SIGUSR1, &sa, NULL));
	WL_CHECK_SYS(sigaction(SIGUSR2, &sa, NULL));

	self.name = "root";
	self.pid = getpid();
	self.sid = getsid(0);
	self.pgid = getpgid(0);
	spawn_children();
	for (int i = 0; i < self.roster.n; i++)
		role_pid[role_index(self.roster.m[i].name)] = self.roster.m[i].pid;

	char info[2048], pids[512] = "";
	size_t used = 0;
	for (int i = 0; i < self.roster.n; i++)
		used += (size_t)snprintf(pids + used, sizeof(pids) - used, "%s%d", used ? " " : "",
					 (int)self.roster.m[i].pid);
	int len = snprintf(info, sizeof(info), "pids %s\nsid %d\npgid_g1 %d\npgid_g2 %d\nroot_sid %d\nroot_pgid %d\n",
			   pids, (int)role_pid[role_index("S")], (int)role_pid[role_index("G1")],
			   (int)role_pid[role_index("G2")], (int)self.sid, (int)self.pgid);
	for (int i = 0; i < self.roster.n; i++) {
		const struct member *m = &self.roster.m[i];
		char key[16];
		snprintf(key, sizeof(key), "%s", m->name);
		for (char *p = key; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		len += snprintf(info + len, sizeof(info) - (size_t)len, "pid_%s %d\n", key, (int)m->pid);
	}
	wl_info(dir, "%s", info);
	wl_ready(dir);
	wl_loop(dir, drain_all);

	check_tree();
	wl_finish(dir);
}
