/*
 * threads: 8 threads, each blocked in a different syscall.
 *
 * Usage: threads DIR
 *
 *   0 nanosleep loop (50 ms) until a flag is set
 *   1 read(2) on an empty pipe          (main writes one byte at check)
 *   2 pthread_cond_wait (futex)          (main signals at check)
 *   3 poll(2) on an empty pipe           (main writes one byte at check)
 *   4 epoll_wait on an epoll holding a pipe (main writes one byte at check)
 *   5 sigwaitinfo(SIGUSR1)               (main pthread_sigqueue()s a value)
 *   6 pthread_mutex_lock on a mutex main holds (main unlocks at check)
 *   7 select(2) loop with a 100 ms timeout on an empty pipe (main writes)
 * Each thread also has its own signal mask (SIGUSR1 plus SIGRTMIN+i), its own
 * sigaltstack, a thread-local value and its recorded gettid().
 * fds held: 4 pipes (read/write ends), one epoll fd.
 * Verifies, in each thread after it woke: it got exactly what main sent, its
 * TLS value, gettid() and pthread_self() unchanged, its signal mask and
 * sigaltstack. Main joins every thread with a 30 s timeout.
 */
#include "workload.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/select.h>

#define NTHREADS 8
#define ALTSTACK_LEN (64 * 1024)
#define WAKE_BYTE 0xa5
#define SIGVALUE 0x5151

struct slot {
	pthread_t self;
	pid_t tid;
	void *altstack;
	volatile int started;
};

static struct slot slots[NTHREADS];
static __thread uint64_t tls_value;
static int pipes[NTHREADS][2]; /* used by threads 1, 3, 4, 7 */
static int epfd;
static volatile int stop;
static pthread_mutex_t cond_lock = PTHREAD_MUTEX_INITIALIZER, held = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int cond_flag;
static const char *names[NTHREADS] = {"nanosleep", "read", "cond_wait", "poll", "epoll_wait", "sigwaitinfo",
				      "mutex_lock", "select"};

static uint64_t tls_expected(int i)
{
	return 0x7415000000000000ull | ((uint64_t)i << 32) | (uint64_t)(i * 0x1111);
}

#define TFAIL(...)                                                                                                     \
	do {                                                                                                           \
		char m_[512];                                                                                          \
		snprintf(m_, sizeof(m_), __VA_ARGS__);                                                                 \
		wl_fail("thread %d (%s): %s", i, names[i], m_);                                                        \
	} while (0)

static void read_wake_byte(int i, int fd)
{
	uint8_t b = 0;
	ssize_t n = read(fd, &b, 1);
	if (n != 1 || b != WAKE_BYTE)
		TFAIL("read %zd byte(s) 0x%02x (%s), expected 1 byte 0x%02x", n, b, n < 0 ? strerror(errno) : "-",
		      WAKE_BYTE);
}

static void *thread_main(void *arg)
{
	int i = (int)(intptr_t)arg;
	struct slot *s = &slots[i];
	tls_value = tls_expected(i);
	s->tid = gettid();
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGRTMIN + i);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	stack_t ss = {.ss_sp = s->altstack, .ss_size = ALTSTACK_LEN, .ss_flags = 0};
	if (sigaltstack(&ss, NULL) < 0)
		wl_die("thread %d: sigaltstack: %s", i, strerror(errno));
	__atomic_store_n(&s->started, 1, __ATOMIC_SEQ_CST);

	switch (i) {
	case 0: {
		unsigned long naps = 0;
		while (!stop) {
			struct timespec ts = {0, 50 * 1000 * 1000};
			nanosleep(&ts, NULL);
			naps++;
		}
		wl_log("thread 0 slept %lu times", naps);
		break;
	}
	case 1:
		read_wake_byte(i, pipes[i][0]);
		break;
	case 2:
		pthread_mutex_lock(&cond_lock);
		while (!cond_flag)
			pthread_cond_wait(&cond, &cond_lock);
		pthread_mutex_unlock(&cond_lock);
		break;
	case 3: {
		struct pollfd p = {.fd = pipes[i][0], .events = POLLIN};
		int n;
		while ((n = poll(&p, 1, -1)) < 0 && errno == EINTR)
			;
		if (n != 1 || p.revents != POLLIN)
			TFAIL("poll returned %d, revents 0x%x, expected 1, POLLIN", n, p.revents);
		read_wake_byte(i, pipes[i][0]);
		break;
	}
	case 4: {
		struct epoll_event ev;
		int n;
		while ((n = epoll_wait(epfd, &ev, 1, -1)) < 0 && errno == EINTR)
			;
		if (n != 1 || ev.data.u64 != 0xe9011 || ev.events != EPOLLIN)
			TFAIL("epoll_wait returned %d, data %#llx, events %#x; expected 1, 0xe9011, EPOLLIN", n,
			      (unsigned long long)ev.data.u64, ev.events);
		read_wake_byte(i, pipes[i][0]);
		break;
	}
	case 5: {
		sigset_t usr1;
		sigemptyset(&usr1);
		sigaddset(&usr1, SIGUSR1);
		siginfo_t si;
		int n;
		while ((n = sigwaitinfo(&usr1, &si)) < 0 && errno == EINTR)
			;
		if (n != SIGUSR1 || si.si_code != SI_QUEUE || si.si_value.sival_int != SIGVALUE)
			TFAIL("sigwaitinfo returned %d, si_code %d, si_value %#x; expected %d, SI_QUEUE, %#x", n,
			      si.si_code, si.si_value.sival_int, SIGUSR1, SIGVALUE);
		break;
	}
	case 6:
		pthread_mutex_lock(&held);
		pthread_mutex_unlock(&held);
		break;
	case 7: {
		int n;
		do {
			fd_set rd;
			FD_ZERO(&rd);
			FD_SET(pipes[i][0], &rd);
			struct timeval tv = {0, 100 * 1000};
			n = select(pipes[i][0] + 1, &rd, NULL, NULL, &tv);
		} while (n == 0 || (n < 0 && errno == EINTR));
		if (n != 1)
			TFAIL("select returned %d (%s), expected 1", n, strerror(errno));
		read_wake_byte(i, pipes[i][0]);
		break;
	}
	}

	if (tls_value != tls_expected(i))
		TFAIL("thread-local value %#llx, expected %#llx", (unsigned long long)tls_value,
		      (unsigned long long)tls_expected(i));
	if (gettid() != s->tid)
		TFAIL("gettid() %d, expected %d", gettid(), s->tid);
	if (!pthread_equal(pthread_self(), s->self))
		TFAIL("pthread_self() changed");
	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	for (int sig = 1; sig < SIGRTMIN + NTHREADS; sig++) {
		bool want = sig == SIGUSR1 || sig == SIGRTMIN + i;
		if (sig > 31 && sig < SIGRTMIN)
			continue; /* glibc-internal signals */
		if (sigismember(&cur, sig) != want)
			TFAIL("signal %d is %s, expected %s", sig, want ? "unblocked" : "blocked",
			      want ? "blocked" : "unblocked");
	}
	stack_t now;
	if (sigaltstack(NULL, &now) < 0 || now.ss_sp != s->altstack || now.ss_size != ALTSTACK_LEN ||
	    now.ss_flags != 0)
		TFAIL("sigaltstack is %p size %zu flags %#x, expected %p size %d flags 0", now.ss_sp, now.ss_size,
		      now.ss_flags, s->altstack, ALTSTACK_LEN);
	return NULL;
}

static void wake(int i)
{
	uint8_t b = WAKE_BYTE;
	if (write(pipes[i][1], &b, 1) != 1)
		wl_fail("wake thread %d: write: %s", i, strerror(errno));
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	int one[] = {1, 3, 4, 7};
	for (int k = 0; k < 4; k++)
		WL_CHECK_SYS(pipe2(pipes[one[k]], O_CLOEXEC));
	epfd = epoll_create1(EPOLL_CLOEXEC);
	WL_CHECK_SYS(epfd);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0xe9011};
	WL_CHECK_SYS(epoll_ctl(epfd, EPOLL_CTL_ADD, pipes[4][0], &ev));

	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL); /* inherited by every thread */
	pthread_mutex_lock(&held);

	for (int i = 0; i < NTHREADS; i++) {
		slots[i].altstack = malloc(ALTSTACK_LEN);
		int err = pthread_create(&slots[i].self, NULL, thread_main, (void *)(intptr_t)i);
		if (err)
			wl_die("pthread_create: %s", strerror(err));
	}
	for (int i = 0; i < NTHREADS; i++)
		while (!__atomic_load_n(&slots[i].started, __ATOMIC_SEQ_CST))
			wl_sleep_ms(1);
	char info[512] = "";
	for (int i = 0; i < NTHREADS; i++)
		snprintf(info + strlen(info), sizeof(info) - strlen(info), "tid_%s %d\n", names[i], slots[i].tid);
	wl_info(dir, "%s", info);
	wl_ready(dir);
	wl_loop(dir, NULL);

	stop = 1;
	wake(1);
	pthread_mutex_lock(&cond_lock);
	cond_flag = 1;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&cond_lock);
	wake(3);
	wake(4);
	int err = pthread_sigqueue(slots[5].self, SIGUSR1, (union sigval){.sival_int = SIGVALUE});
	if (err)
		wl_fail("pthread_sigqueue to thread 5: %s", strerror(err));
	pthread_mutex_unlock(&held);
	wake(7);

	struct timespec deadline;
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 30;
	for (int i = 0; i < NTHREADS; i++) {
		err = pthread_timedjoin_np(slots[i].self, NULL, &deadline);
		if (err)
			wl_fail("thread %d (%s, tid %d) did not finish within 30 s of being woken: %s", i, names[i],
				slots[i].tid, strerror(err));
	}
	wl_finish(dir);
}
