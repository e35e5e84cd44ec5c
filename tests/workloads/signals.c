/*
 * signals: dispositions, pending signals, an alternate stack, an itimer.
 *
 * Usage: signals DIR
 *
 * Dispositions: SIGUSR1 SA_SIGINFO (sa_mask SIGHUP); SIGHUP SA_RESTART;
 * SIGWINCH SA_ONSTACK|SA_SIGINFO (main has a 64 KiB sigaltstack); SIGURG
 * SA_NODEFER; SIGVTALRM SA_RESETHAND; SIGPIPE SIG_IGN; SIGUSR2, SIGTERM,
 * SIGRTMIN+2, SIGALRM handled with SA_SIGINFO.
 * Pending while it runs: SIGUSR2 process-wide (blocked, kill() to self);
 * SIGTERM private to a helper thread (blocked there, pthread_kill); SIGRTMIN+2
 * queued twice with sigqueue values 1001 and 1002. ITIMER_REAL armed with a
 * 3600 s interval (its SIGALRM is handled and harmless).
 * Verifies: every sigaction (handler, flags, mask, restorer) as read back at
 * setup; main's sigaltstack; the itimer interval and 0 < remaining <= it;
 * which signals are pending where; then delivers everything and checks each
 * handler ran once with the right siginfo (rt values in order, SIGTERM in
 * the helper thread), on the alternate stack for SA_ONSTACK, with the right
 * mask for SA_NODEFER and sa_mask, and that SA_RESETHAND reset the handler.
 */
#include "workload.h"

#include <sys/time.h>

#define ALTSTACK_LEN (64 * 1024)
#define RT (SIGRTMIN + 2)

static volatile int count[65], blocked_in_handler[65][65];
static volatile int last_code[65], last_pid[65], term_tid, rt_values[4], n_rt;
static volatile char *onstack_local;
static volatile int onstack_flags;
static char *altstack;
static volatile int go, helper_done;
static pid_t helper_tid;

static void note(int sig)
{
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	for (int s = 1; s < 65; s++)
		blocked_in_handler[sig][s] = sigismember(&cur, s) == 1;
	count[sig]++;
}

static void h_info(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	note(sig);
	last_code[sig] = si->si_code;
	last_pid[sig] = si->si_pid;
	if (sig == SIGTERM)
		term_tid = gettid();
	if (sig == RT && n_rt < 4)
		rt_values[n_rt++] = si->si_value.sival_int;
}

static void h_plain(int sig)
{
	note(sig);
}

static void h_onstack(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	volatile char local = 0;
	onstack_local = &local;
	stack_t ss;
	sigaltstack(NULL, &ss);
	onstack_flags = ss.ss_flags;
	note(sig);
}

struct disp {
	int sig;
	void *handler;
	int flags;
	int mask_sig; /* 0: none */
	struct sigaction recorded;
};

static struct disp disps[] = {
	{SIGUSR1, h_info, SA_SIGINFO, SIGHUP},
	{SIGHUP, h_plain, SA_RESTART, 0},
	{SIGWINCH, h_onstack, SA_ONSTACK | SA_SIGINFO, 0},
	{SIGURG, h_plain, SA_NODEFER, 0},
	{SIGVTALRM, h_plain, SA_RESETHAND, 0},
	{SIGPIPE, SIG_IGN, 0, 0},
	{SIGUSR2, h_info, SA_SIGINFO, 0},
	{SIGTERM, h_info, SA_SIGINFO, 0},
	{0 /* RT */, h_info, SA_SIGINFO, 0},
	{SIGALRM, h_info, SA_SIGINFO, 0},
};
#define NDISPS (sizeof(disps) / sizeof(disps[0]))

static bool same_mask(const sigset_t *a, const sigset_t *b, int *which)
{
	for (int s = 1; s < 65; s++)
		if ((s < 32 || s >= SIGRTMIN) && sigismember(a, s) != sigismember(b, s)) {
			*which = s;
			return false;
		}
	return true;
}

static void block(int how, int sig)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, sig);
	pthread_sigmask(how, &set, NULL);
}

static void *helper(void *arg)
{
	(void)arg;
	helper_tid = gettid();
	while (!go)
		wl_sleep_ms(10);
	sigset_t pend;
	sigpending(&pend);
	if (!sigismember(&pend, SIGTERM))
		wl_fail("helper thread: SIGTERM is not pending");
	block(SIG_UNBLOCK, SIGTERM);
	helper_done = 1;
	return NULL;
}

static void expect_once(int sig, const char *name)
{
	if (count[sig] != 1)
		wl_fail("%s handler ran %d times, expected once", name, count[sig]);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	altstack = malloc(ALTSTACK_LEN);
	stack_t ss = {.ss_sp = altstack, .ss_size = ALTSTACK_LEN};
	WL_CHECK_SYS(sigaltstack(&ss, NULL));

	disps[8].sig = RT;
	for (unsigned i = 0; i < NDISPS; i++) {
		struct sigaction sa = {0};
		sa.sa_sigaction = disps[i].handler;
		sa.sa_flags = disps[i].flags;
		sigemptyset(&sa.sa_mask);
		if (disps[i].mask_sig)
			sigaddset(&sa.sa_mask, disps[i].mask_sig);
		WL_CHECK_SYS(sigaction(disps[i].sig, &sa, NULL));
		WL_CHECK_SYS(sigaction(disps[i].sig, NULL, &disps[i].recorded));
	}

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, RT);
	pthread_sigmask(SIG_BLOCK, &set, NULL); /* the helper inherits it */
	pthread_t th;
	int err = pthread_create(&th, NULL, helper, NULL);
	if (err)
		wl_die("pthread_create: %s", strerror(err));
	while (!__atomic_load_n(&helper_tid, __ATOMIC_SEQ_CST))
		wl_sleep_ms(1);

	WL_CHECK_SYS(kill(getpid(), SIGUSR2));
	if ((err = pthread_kill(th, SIGTERM)))
		wl_die("pthread_kill: %s", strerror(err));
	WL_CHECK_SYS(sigqueue(getpid(), RT, (union sigval){.sival_int = 1001}));
	WL_CHECK_SYS(sigqueue(getpid(), RT, (union sigval){.sival_int = 1002}));
	struct itimerval it = {.it_interval = {3600, 0}, .it_value = {3600, 0}};
	WL_CHECK_SYS(setitimer(ITIMER_REAL, &it, NULL));

	wl_info(dir, "helper_tid %d\naltstack %lu\n", helper_tid, (unsigned long)altstack);
	wl_ready(dir);
	wl_loop(dir, NULL);

	for (int s = 1; s < 65; s++)
		if (count[s] && s != SIGALRM)
			wl_fail("signal %d was handled %d times before the check", s, count[s]);

	for (unsigned i = 0; i < NDISPS; i++) {
		struct sigaction now, *was = &disps[i].recorded;
		int sig = disps[i].sig, which;
		if (sigaction(sig, NULL, &now) < 0) {
			wl_fail("sigaction(%d): %s", sig, strerror(errno));
			continue;
		}
		if ((void *)now.sa_sigaction != disps[i].handler || now.sa_sigaction != was->sa_sigaction)
			wl_fail("signal %d: handler %p, expected %p", sig, (void *)now.sa_sigaction, disps[i].handler);
		if (now.sa_flags != was->sa_flags || (now.sa_flags & disps[i].flags) != disps[i].flags)
			wl_fail("signal %d: sa_flags %#x, expected %#x", sig, now.sa_flags, was->sa_flags);
		if (now.sa_restorer != was->sa_restorer)
			wl_fail("signal %d: sa_restorer %p, expected %p", sig, (void *)now.sa_restorer,
				(void *)was->sa_restorer);
		if (!same_mask(&now.sa_mask, &was->sa_mask, &which))
			wl_fail("signal %d: sa_mask differs at signal %d", sig, which);
	}

	stack_t cur;
	if (sigaltstack(NULL, &cur) < 0 || cur.ss_sp != altstack || cur.ss_size != ALTSTACK_LEN || cur.ss_flags != 0)
		wl_fail("main sigaltstack is %p size %zu flags %#x, expected %p size %d flags 0", cur.ss_sp,
			cur.ss_size, cur.ss_flags, (void *)altstack, ALTSTACK_LEN);

	struct itimerval now_it;
	getitimer(ITIMER_REAL, &now_it);
	if (now_it.it_interval.tv_sec != 3600 || now_it.it_interval.tv_usec != 0)
		wl_fail("ITIMER_REAL interval %ld.%06lds, expected 3600s", (long)now_it.it_interval.tv_sec,
			(long)now_it.it_interval.tv_usec);
	long long left = (long long)now_it.it_value.tv_sec * 1000000 + now_it.it_value.tv_usec;
	if (left <= 0 || left > 3600LL * 1000000)
		wl_fail("ITIMER_REAL has %lld us left, expected 0 < left <= 3600 s (disarmed?)", left);

	sigset_t pend;
	sigpending(&pend);
	if (!sigismember(&pend, SIGUSR2) || !sigismember(&pend, RT))
		wl_fail("main: SIGUSR2 pending %d, SIGRTMIN+2 pending %d, expected both", sigismember(&pend, SIGUSR2),
			sigismember(&pend, RT));
	if (sigismember(&pend, SIGTERM))
		wl_fail("main: SIGTERM is pending for main, expected it private to the helper thread");

	block(SIG_UNBLOCK, SIGUSR2);
	expect_once(SIGUSR2, "SIGUSR2 (process-wide pending)");
	if (last_code[SIGUSR2] != SI_USER || last_pid[SIGUSR2] != getpid())
		wl_fail("SIGUSR2: si_code %d si_pid %d, expected SI_USER (%d) from %d", last_code[SIGUSR2],
			last_pid[SIGUSR2], SI_USER, getpid());
	block(SIG_UNBLOCK, RT);
	if (n_rt != 2 || rt_values[0] != 1001 || rt_values[1] != 1002)
		wl_fail("SIGRTMIN+2 delivered %d times with values %d, %d; expected 2 with 1001, 1002", n_rt,
			rt_values[0], rt_values[1]);

	go = 1;
	for (int ms = 0; !helper_done && ms < 30000; ms += 10)
		wl_sleep_ms(10);
	if (!helper_done)
		wl_fail("helper thread did not finish within 30 s");
	expect_once(SIGTERM, "SIGTERM (pending in the helper thread)");
	if (term_tid != helper_tid)
		wl_fail("SIGTERM handled by tid %d, expected the helper thread %d", term_tid, helper_tid);

	raise(SIGUSR1);
	expect_once(SIGUSR1, "SIGUSR1");
	if (!blocked_in_handler[SIGUSR1][SIGUSR1] || !blocked_in_handler[SIGUSR1][SIGHUP])
		wl_fail("in the SIGUSR1 handler SIGUSR1 blocked %d, SIGHUP (sa_mask) blocked %d, expected both",
			blocked_in_handler[SIGUSR1][SIGUSR1], blocked_in_handler[SIGUSR1][SIGHUP]);
	if (last_code[SIGUSR1] != SI_TKILL)
		wl_fail("SIGUSR1: si_code %d, expected SI_TKILL (%d)", last_code[SIGUSR1], SI_TKILL);
	raise(SIGHUP);
	expect_once(SIGHUP, "SIGHUP");
	raise(SIGWINCH);
	expect_once(SIGWINCH, "SIGWINCH (SA_ONSTACK)");
	if (onstack_local < altstack || onstack_local >= altstack + ALTSTACK_LEN || !(onstack_flags & SS_ONSTACK))
		wl_fail("SIGWINCH handler ran with a local at %p, ss_flags %#x; expected on the alternate stack %p-%p",
			(void *)onstack_local, onstack_flags, (void *)altstack, (void *)(altstack + ALTSTACK_LEN));
	raise(SIGURG);
	expect_once(SIGURG, "SIGURG (SA_NODEFER)");
	if (blocked_in_handler[SIGURG][SIGURG])
		wl_fail("SIGURG was blocked in its own SA_NODEFER handler");
	raise(SIGVTALRM);
	expect_once(SIGVTALRM, "SIGVTALRM (SA_RESETHAND)");
	struct sigaction after;
	sigaction(SIGVTALRM, NULL, &after);
	if (after.sa_handler != SIG_DFL)
		wl_fail("SIGVTALRM handler is %p after one SA_RESETHAND delivery, expected SIG_DFL",
			(void *)after.sa_handler);
	wl_finish(dir);
}
