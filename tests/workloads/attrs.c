/*
 * attrs: per-process attributes.
 *
 * Usage: attrs DIR
 *
 * Sets: cwd DIR/cwd-sub; umask 027; soft RLIMIT_NOFILE 500, RLIMIT_CORE 0,
 * RLIMIT_STACK 4 MiB (soft limits only lowered, never above the hard limit;
 * hard limits untouched: no CAP_SYS_RESOURCE needed); comm "wl-attrs"
 * (PR_SET_NAME); PR_SET_PDEATHSIG SIGWINCH (default action: ignore, so the
 * death of the harness or of the restorer, the restored process's parent,
 * is harmless; the restorer must still set it); PR_SET_NO_NEW_PRIVS 1;
 * PR_SET_DUMPABLE 1 (recorded); PR_SET_TIMERSLACK 123456 (main thread);
 * PR_SET_CHILD_SUBREAPER 1; PR_SET_THP_DISABLE 1; personality
 * ADDR_NO_RANDOMIZE (only affects later execs); nice 5; setsid (own session
 * and process group).
 * Verifies each with its getter (getcwd, umask, getrlimit, prctl PR_GET_*,
 * personality, getpriority, getsid/getpgid, /proc/self/comm).
 */
#include "workload.h"

#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/stat.h>

static const struct {
	int res;
	const char *name;
	rlim_t soft;
} limits[] = {
	{RLIMIT_NOFILE, "RLIMIT_NOFILE", 500},
	{RLIMIT_CORE, "RLIMIT_CORE", 0},
	{RLIMIT_STACK, "RLIMIT_STACK", 4 << 20},
};
#define NLIMITS (sizeof(limits) / sizeof(limits[0]))
static struct rlimit want_limits[NLIMITS];

#define PERSONA (PER_LINUX | ADDR_NO_RANDOMIZE)

static void expect_prctl(const char *what, int option, long want)
{
	errno = 0;
	long got = prctl(option, 0, 0, 0, 0);
	if (got < 0)
		wl_fail("%s: %s", what, strerror(errno));
	else
		wl_expect_eq(what, want, got);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	char cwd[PATH_MAX], path[PATH_MAX];

	wl_path(cwd, sizeof(cwd), dir, "cwd-sub");
	WL_CHECK_SYS(mkdir(cwd, 0755));
	WL_CHECK_SYS(chdir(cwd));
	umask(027);

	for (unsigned i = 0; i < NLIMITS; i++) {
		struct rlimit rl;
		WL_CHECK_SYS(getrlimit(limits[i].res, &rl));
		if (limits[i].soft < rl.rlim_cur)
			rl.rlim_cur = limits[i].soft <= rl.rlim_max ? limits[i].soft : rl.rlim_max;
		WL_CHECK_SYS(setrlimit(limits[i].res, &rl));
		want_limits[i] = rl;
	}

	WL_CHECK_SYS(prctl(PR_SET_NAME, "wl-attrs", 0, 0, 0));
	WL_CHECK_SYS(prctl(PR_SET_PDEATHSIG, SIGWINCH, 0, 0, 0));
	WL_CHECK_SYS(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
	WL_CHECK_SYS(prctl(PR_SET_DUMPABLE, 1, 0, 0, 0));
	int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
	WL_CHECK_SYS(prctl(PR_SET_TIMERSLACK, 123456, 0, 0, 0));
	WL_CHECK_SYS(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0));
	WL_CHECK_SYS(prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0));
	WL_CHECK_SYS(personality(PERSONA));
	errno = 0;
	if (setpriority(PRIO_PROCESS, 0, 5) < 0)
		wl_die("setpriority: %s", strerror(errno));
	if (setsid() < 0 && getsid(0) != getpid())
		wl_die("setsid: %s", strerror(errno));
	/* Give up some capabilities: CAP_NET_RAW from the bounding set too,
	 * CAP_SYS_TIME from the effective set only, and make CAP_CHOWN
	 * inheritable. */
	WL_CHECK_SYS(prctl(PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0));
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
	struct __user_cap_data_struct caps[2];
	WL_CHECK_SYS(syscall(SYS_capget, &hdr, caps));
	caps[0].effective &= ~(1u << CAP_NET_RAW | 1u << CAP_SYS_TIME);
	caps[0].permitted &= ~(1u << CAP_NET_RAW);
	caps[0].inheritable |= 1u << CAP_CHOWN;
	WL_CHECK_SYS(syscall(SYS_capset, &hdr, caps));
	struct __user_cap_data_struct want_caps[2];
	WL_CHECK_SYS(syscall(SYS_capget, &hdr, want_caps));

	wl_ready(dir);
	wl_loop(dir, NULL);

	struct __user_cap_data_struct now_caps[2];
	WL_CHECK_SYS(syscall(SYS_capget, &hdr, now_caps));
	for (int i = 0; i < 2; i++)
		if (now_caps[i].effective != want_caps[i].effective || now_caps[i].permitted != want_caps[i].permitted ||
		    now_caps[i].inheritable != want_caps[i].inheritable)
			wl_fail("capabilities word %d: effective %#x permitted %#x inheritable %#x, expected %#x %#x %#x", i,
				now_caps[i].effective, now_caps[i].permitted, now_caps[i].inheritable,
				want_caps[i].effective, want_caps[i].permitted, want_caps[i].inheritable);
	if (prctl(PR_CAPBSET_READ, CAP_NET_RAW, 0, 0, 0) != 0)
		wl_fail("CAP_NET_RAW is back in the bounding set");
	if (prctl(PR_CAPBSET_READ, CAP_SYS_TIME, 0, 0, 0) != 1)
		wl_fail("CAP_SYS_TIME left the bounding set");

	if (!getcwd(path, sizeof(path)))
		wl_fail("getcwd: %s", strerror(errno));
	else if (strcmp(path, cwd) != 0)
		wl_fail("cwd is \"%s\", expected \"%s\"", path, cwd);
	mode_t m = umask(0);
	umask(m);
	if (m != 027)
		wl_fail("umask is 0%o, expected 027", (unsigned)m);

	for (unsigned i = 0; i < NLIMITS; i++) {
		struct rlimit rl;
		getrlimit(limits[i].res, &rl);
		if (rl.rlim_cur != want_limits[i].rlim_cur || rl.rlim_max != want_limits[i].rlim_max)
			wl_fail("%s is soft %llu hard %llu, expected soft %llu hard %llu", limits[i].name,
				(unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
				(unsigned long long)want_limits[i].rlim_cur, (unsigned long long)want_limits[i].rlim_max);
	}

	char name[17] = "";
	prctl(PR_GET_NAME, name, 0, 0, 0);
	if (strcmp(name, "wl-attrs") != 0)
		wl_fail("PR_GET_NAME is \"%s\", expected \"wl-attrs\"", name);
	int sig = -1;
	prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0);
	wl_expect_eq("PR_GET_PDEATHSIG", SIGWINCH, sig);
	expect_prctl("PR_GET_NO_NEW_PRIVS", PR_GET_NO_NEW_PRIVS, 1);
	expect_prctl("PR_GET_DUMPABLE", PR_GET_DUMPABLE, dumpable);
	expect_prctl("PR_GET_TIMERSLACK", PR_GET_TIMERSLACK, 123456);
	int subreaper = -1;
	prctl(PR_GET_CHILD_SUBREAPER, &subreaper, 0, 0, 0);
	wl_expect_eq("PR_GET_CHILD_SUBREAPER", 1, subreaper);
	expect_prctl("PR_GET_THP_DISABLE", PR_GET_THP_DISABLE, 1);
	wl_expect_eq("personality", PERSONA, personality(0xffffffff));
	errno = 0;
	int nice = getpriority(PRIO_PROCESS, 0);
	if (errno)
		wl_fail("getpriority: %s", strerror(errno));
	else
		wl_expect_eq("nice value", 5, nice);
	wl_expect_eq("getsid(0) (own session)", getpid(), getsid(0));
	wl_expect_eq("getpgid(0) (own process group)", getpid(), getpgid(0));

	FILE *f = fopen("/proc/self/comm", "re");
	char comm[32] = "";
	if (!f || !fgets(comm, sizeof(comm), f))
		wl_fail("read /proc/self/comm: %s", strerror(errno));
	else if (strcmp(comm, "wl-attrs\n") != 0)
		wl_fail("/proc/self/comm is \"%.*s\", expected \"wl-attrs\"", (int)strcspn(comm, "\n"), comm);
	if (f)
		fclose(f);
	wl_finish(dir);
}
