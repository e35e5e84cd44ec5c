/*
 * timers: POSIX timers (timer_create) of each notification kind.
 *
 * Creates, in this order (ids 0, 1, 2, 3):
 *   0  CLOCK_MONOTONIC, SIGEV_SIGNAL SIGUSR2 with value 0x55, first expiry
 *      in 1 h then every 1 h (it never fires during a test);
 *   1  CLOCK_REALTIME, SIGEV_NONE, one-shot in 30 min;
 *   2  a timer that is created and deleted (a hole in the ids);
 *   3  CLOCK_MONOTONIC, SIGEV_THREAD_ID to the main thread, SIGRTMIN+1,
 *      every 20 ms; its handler counts expiries and checks si_value 0x77.
 * Verifies after restore: each timer's id, clock, signal and notification
 * in /proc/self/timers; the intervals and that at most the interval is left
 * (for 0 and 1); that timer 2 is still gone; and that timer 3 keeps firing
 * (its count grows by at least 3 while checking), always with its value.
 */
#define _GNU_SOURCE
#include "workload.h"

#include <signal.h>
#include <sys/syscall.h>
#include <time.h>

static volatile long ticks, bad_value;

static void on_tick(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (si->si_value.sival_int != 0x77)
		bad_value++;
	ticks++;
}

static timer_t make(clockid_t clock, int notify, int signo, int value, long long first_ns, long long every_ns)
{
	struct sigevent sev = { 0 };
	sev.sigev_notify = notify;
	sev.sigev_signo = signo;
	sev.sigev_value.sival_int = value;
	if (notify & SIGEV_THREAD_ID)
		sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
	timer_t id;
	WL_CHECK_SYS(timer_create(clock, &sev, &id));
	struct itimerspec its = {
		.it_interval = { every_ns / 1000000000, every_ns % 1000000000 },
		.it_value = { first_ns / 1000000000, first_ns % 1000000000 },
	};
	WL_CHECK_SYS(timer_settime(id, 0, &its, NULL));
	return id;
}

static void expect_timer(timer_t id, long long every_s, long long first_max_s)
{
	struct itimerspec its;
	if (timer_gettime(id, &its) < 0) {
		wl_fail("timer %ld: timer_gettime: %s", (long)id, strerror(errno));
		return;
	}
	long long left = its.it_value.tv_sec * 1000000000ll + its.it_value.tv_nsec;
	if (its.it_interval.tv_sec != every_s || its.it_interval.tv_nsec != 0)
		wl_fail("timer %ld: interval %ld s, expected %lld s", (long)id, (long)its.it_interval.tv_sec, every_s);
	if (left <= 0 || left > first_max_s * 1000000000ll)
		wl_fail("timer %ld: %lld ns left, expected between 0 and %lld s", (long)id, left, first_max_s);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	struct sigaction sa = { .sa_sigaction = on_tick, .sa_flags = SA_SIGINFO | SA_RESTART };
	WL_CHECK_SYS(sigaction(SIGRTMIN + 1, &sa, NULL));
	struct sigaction ign = { .sa_handler = SIG_IGN };
	WL_CHECK_SYS(sigaction(SIGUSR2, &ign, NULL));

	timer_t t0 = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR2, 0x55, 3600000000000ll, 3600000000000ll);
	timer_t t1 = make(CLOCK_REALTIME, SIGEV_NONE, 0, 0, 1800000000000ll, 0);
	timer_t t2 = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 1000000000ll, 0);
	WL_CHECK_SYS(timer_delete(t2));
	timer_t t3 = make(CLOCK_MONOTONIC, SIGEV_SIGNAL | SIGEV_THREAD_ID, SIGRTMIN + 1, 0x77, 20000000, 20000000);
	if ((long)t0 != 0 || (long)t1 != 1 || (long)t3 != 3)
		wl_die("timer ids %ld %ld %ld, expected 0 1 3", (long)t0, (long)t1, (long)t3);

	wl_ready(dir);
	wl_loop(dir, NULL);

	expect_timer(t0, 3600, 3600);
	expect_timer(t1, 0, 1800);
	struct itimerspec its;
	if (timer_gettime(t2, &its) == 0)
		wl_fail("deleted timer 2 exists again");

	char path[64], text[2048] = { 0 };
	snprintf(path, sizeof(path), "/proc/%d/timers", getpid());
	int fd = open(path, O_RDONLY);
	if (fd < 0 || read(fd, text, sizeof(text) - 1) < 0)
		wl_fail("cannot read %s", path);
	if (fd >= 0)
		close(fd);
	char want[256];
	snprintf(want, sizeof(want), "ID: 0\nsignal: %d/0000000000000055\nnotify: signal/pid.%d\nClockID: 1\n", SIGUSR2,
		 getpid());
	if (!strstr(text, want))
		wl_fail("timer 0 is not as created: %s", text);
	snprintf(want, sizeof(want), "ID: 3\nsignal: %d/0000000000000077\nnotify: signal/tid.%d\nClockID: 1\n",
		 SIGRTMIN + 1, getpid());
	if (!strstr(text, want))
		wl_fail("timer 3 is not as created: %s", text);
	if (!strstr(text, "ID: 1\nsignal: 0/0000000000000000\nnotify: none/pid."))
		wl_fail("timer 1 is not as created: %s", text);

	long before = ticks;
	for (int i = 0; i < 100 && ticks < before + 3; i++)
		wl_sleep_ms(20);
	if (ticks < before + 3)
		wl_fail("timer 3 fired %ld times in 2 s after restore, expected at least 3", ticks - before);
	if (bad_value)
		wl_fail("timer 3 delivered a wrong si_value %ld times", bad_value);
	wl_finish(dir);
}
