/*
 * status_attrs: attributes /proc/PID/status, /proc/PID/smaps and
 * /proc/PID/oom_score_adj show, each set to a value other than its default.
 *
 * Usage: status_attrs DIR
 *
 * Sets:
 *   mappings, each its own, with advice: MADV_DONTFORK ("dc"), MADV_DONTDUMP
 *   ("dd"), MADV_WIPEONFORK ("wf"), MADV_HUGEPAGE ("hg"), MADV_NOHUGEPAGE
 *   ("nh"), MADV_SEQUENTIAL ("sr"), MADV_RANDOM ("rr"), mlock ("lo"),
 *   mlock2 MLOCK_ONFAULT ("lo lf"); each with a page of known bytes;
 *   oom_score_adj 321 (raised: lowering needs CAP_SYS_RESOURCE);
 *   the main thread on the last CPU only, SCHED_BATCH, I/O priority
 *   best-effort level 6; a second thread SCHED_IDLE with I/O class idle;
 *   supplementary groups 10 20 30, gids 100 101 0 with filesystem gid 102,
 *   uids 1000 1001 0 with filesystem uid 0 (so it still reaches DIR, which
 *   is root's), set last.
 * Verifies each with its getter, and the flags in smaps for each mapping.
 * Publishes each mapping's address in DIR/info as map_<flag>.
 */
#include "workload.h"

#include <grp.h>
#include <sched.h>
#include <sys/fsuid.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define PAGE 4096
#define IOPRIO(class, level) (((class) << 13) | (level))

static const struct {
	const char *key;   /* in DIR/info: map_KEY */
	const char *flags; /* as smaps shows them, space-separated */
	int advice;	   /* -1: mlock, -2: mlock2 MLOCK_ONFAULT */
	size_t pages;
} maps[] = {
	{"dc", "dc", MADV_DONTFORK, 2},	  {"dd", "dd", MADV_DONTDUMP, 2},     {"wf", "wf", MADV_WIPEONFORK, 2},
	{"hg", "hg", MADV_HUGEPAGE, 2},	  {"nh", "nh", MADV_NOHUGEPAGE, 2},   {"sr", "sr", MADV_SEQUENTIAL, 2},
	{"rr", "rr", MADV_RANDOM, 2},	  {"lo", "lo", -1, 2},		      {"lf", "lo lf", -2, 3},
};
#define NMAPS (sizeof(maps) / sizeof(maps[0]))
static uint8_t *addr[NMAPS];
static int last_cpu;
static volatile int idle_ready;
static pid_t idle_tid;

static void *idle_thread(void *arg)
{
	(void)arg;
	idle_tid = (pid_t)syscall(SYS_gettid);
	struct sched_param p = {0};
	if (sched_setscheduler(0, SCHED_IDLE, &p) != 0)
		wl_die("SCHED_IDLE: %s", strerror(errno));
	if (syscall(SYS_ioprio_set, 1, 0, IOPRIO(3, 0)) != 0)
		wl_die("ioprio_set idle: %s", strerror(errno));
	idle_ready = 1;
	for (;;)
		pause();
	return NULL;
}

/* Whether the smaps entry of the mapping at START lists every flag in WANT. */
static void expect_vmflags(const uint8_t *start, const char *want)
{
	char line[1024], head[32], *flags = NULL;
	snprintf(head, sizeof(head), "%lx-", (unsigned long)start);
	FILE *f = fopen("/proc/self/smaps", "r");
	bool in = false;
	while (f && fgets(line, sizeof(line), f)) {
		if (strchr(line, '-') && strchr(line, ' ') && strchr(line, '-') < strchr(line, ' '))
			in = strncmp(line, head, strlen(head)) == 0;
		if (in && strncmp(line, "VmFlags:", 8) == 0) {
			line[strcspn(line, "\n")] = 0;
			flags = strdup(line + 8);
			break;
		}
	}
	if (f)
		fclose(f);
	if (!flags) {
		wl_fail("mapping at %p: not in smaps", (void *)start);
		return;
	}
	char copy[64];
	snprintf(copy, sizeof(copy), "%s", want);
	for (char *tok = strtok(copy, " "); tok; tok = strtok(NULL, " ")) {
		char needle[8];
		snprintf(needle, sizeof(needle), " %s ", tok);
		char padded[1100];
		snprintf(padded, sizeof(padded), "%s ", flags);
		if (!strstr(padded, needle))
			wl_fail("mapping at %p (%s): VmFlags \"%s\" lack \"%s\"", (void *)start, want, flags, tok);
	}
	free(flags);
}

static long read_long(const char *path)
{
	char buf[64] = "";
	FILE *f = fopen(path, "r");
	if (!f || !fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	if (f)
		fclose(f);
	return buf[0] ? strtol(buf, NULL, 10) : -99999;
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	char info[2048] = "", *at = info;

	for (size_t i = 0; i < NMAPS; i++) {
		size_t len = maps[i].pages * PAGE;
		addr[i] = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (addr[i] == MAP_FAILED)
			wl_die("mmap: %s", strerror(errno));
		wl_fill(addr[i], PAGE, 500 + i);
		if (maps[i].advice == -1)
			WL_CHECK_SYS(mlock(addr[i], len));
		else if (maps[i].advice == -2)
			WL_CHECK_SYS(mlock2(addr[i], len, MLOCK_ONFAULT));
		else if (madvise(addr[i], len, maps[i].advice) != 0)
			wl_die("madvise %s: %s", maps[i].flags, strerror(errno));
		at += sprintf(at, "map_%s %lu\n", maps[i].key, (unsigned long)addr[i]);
	}

	FILE *oom = fopen("/proc/self/oom_score_adj", "w");
	if (!oom || fprintf(oom, "321\n") < 0 || fclose(oom) != 0)
		wl_die("write oom_score_adj: %s", strerror(errno));

	last_cpu = (int)sysconf(_SC_NPROCESSORS_ONLN) - 1;
	cpu_set_t cpus;
	CPU_ZERO(&cpus);
	CPU_SET(last_cpu, &cpus);
	WL_CHECK_SYS(sched_setaffinity(0, sizeof(cpus), &cpus));
	struct sched_param sp = {0};
	WL_CHECK_SYS(sched_setscheduler(0, SCHED_BATCH, &sp));
	WL_CHECK_SYS(syscall(SYS_ioprio_set, 1, 0, IOPRIO(2, 6)));

	pthread_t t;
	if (pthread_create(&t, NULL, idle_thread, NULL) != 0)
		wl_die("pthread_create");
	while (!idle_ready)
		wl_sleep_ms(1);

	gid_t groups[] = {10, 20, 30};
	WL_CHECK_SYS(setgroups(3, groups));
	WL_CHECK_SYS(setresgid(100, 101, 0));
	setfsgid(102);
	WL_CHECK_SYS(setresuid(1000, 1001, 0));
	setfsuid(0);

	at += sprintf(at, "idle_tid %d\n", idle_tid);
	wl_info(dir, "%s", info);
	wl_ready(dir);
	wl_loop(dir, NULL);

	for (size_t i = 0; i < NMAPS; i++) {
		expect_vmflags(addr[i], maps[i].flags);
		wl_expect_fill(maps[i].flags, addr[i], PAGE, 500 + i);
	}
	wl_expect_eq("oom_score_adj", 321, read_long("/proc/self/oom_score_adj"));

	CPU_ZERO(&cpus);
	if (sched_getaffinity(0, sizeof(cpus), &cpus) != 0 || CPU_COUNT(&cpus) != 1 || !CPU_ISSET(last_cpu, &cpus))
		wl_fail("main thread: affinity is not CPU %d alone (%d CPUs)", last_cpu, CPU_COUNT(&cpus));
	wl_expect_eq("main thread: policy", SCHED_BATCH, sched_getscheduler(0));
	wl_expect_eq("main thread: I/O priority", IOPRIO(2, 6), syscall(SYS_ioprio_get, 1, 0));
	wl_expect_eq("idle thread: policy", SCHED_IDLE, sched_getscheduler(idle_tid));
	wl_expect_eq("idle thread: I/O priority", IOPRIO(3, 0), syscall(SYS_ioprio_get, 1, idle_tid));

	uid_t r, e, s;
	gid_t rg, eg, sg;
	getresuid(&r, &e, &s);
	getresgid(&rg, &eg, &sg);
	wl_expect_eq("real uid", 1000, r);
	wl_expect_eq("effective uid", 1001, e);
	wl_expect_eq("saved uid", 0, s);
	wl_expect_eq("filesystem uid", 0, setfsuid(-1));
	wl_expect_eq("real gid", 100, rg);
	wl_expect_eq("effective gid", 101, eg);
	wl_expect_eq("saved gid", 0, sg);
	wl_expect_eq("filesystem gid", 102, setfsgid(-1));
	gid_t got[8];
	int n = getgroups(8, got);
	if (n != 3 || got[0] != 10 || got[1] != 20 || got[2] != 30)
		wl_fail("supplementary groups: %d of them, not 10 20 30", n);
	wl_finish(dir);
}
