/*
 * workload.h - the protocol shared by the self-checking workloads (like CRIU's
 * zdtm). Each workload is one small C program that sets up one kernel feature,
 * keeps running while it is checkpointed and restored, and then verifies its
 * own state. Built and driven by tests/util/workload.rs.
 *
 * Protocol
 *
 *   Invocation: WORKLOAD DIR [args...]
 *     DIR is a per-test directory owned by the harness. stdin is /dev/null,
 *     stdout and stderr are DIR/log (a regular file opened O_APPEND by the
 *     harness). wl_init() closes every other inherited fd (close_range), so a
 *     workload holds nothing that refers to the harness: only things a
 *     checkpointer can restore standalone (regular files, pipes with both ends
 *     inside the process, ...).
 *
 *   1. The workload sets up its state, optionally publishes facts for the
 *      tests in DIR/info ("key value" lines, wl_info()), then writes DIR/ready
 *      containing its pid (wl_ready()).
 *   2. It keeps running. Its main loop (wl_loop(), one thread) sleeps ~10 ms
 *      per iteration with clock_nanosleep, increments the global
 *      wl_generation, lets the workload change its state from the generation
 *      (so a test can tell "the image holds the state at dump time"), writes
 *      the generation to DIR/progress at most every ~100 ms, and stops when
 *      DIR/check exists.
 *   3. It verifies its state and writes DIR/result: first line "ok" or
 *      "fail: <what is wrong>", second line "generation <N>", then exits 0 on
 *      ok and 1 on fail (wl_finish() / wl_result()).
 *
 *   Every file is written atomically: NAME.tmp, then rename(2) to NAME. The
 *   files are opened by path and closed at once: a workload holds no fd on
 *   DIR between writes (a checkpoint may still catch a transient fd on
 *   DIR/progress.tmp).
 *
 *   Verification never depends on time: a restore may happen minutes later on
 *   a slow, shared machine. It checks that the current state is consistent
 *   (a region claims generation G and holds the pattern of G, G equals
 *   wl_generation), never a wall-clock assumption.
 */
#ifndef STASIS_WORKLOAD_H
#define STASIS_WORKLOAD_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Incremented once per main-loop iteration; reported in DIR/result. */
static volatile uint64_t wl_generation;

/* Failures collected by wl_fail(), reported by wl_finish(). */
static char wl_failures[4096];
static unsigned wl_nfail;
static pthread_mutex_t wl_fail_lock = PTHREAD_MUTEX_INITIALIZER;

/* Log a line to DIR/log (stderr is unbuffered). */
#define wl_log(...)                                                                                                    \
	do {                                                                                                           \
		fprintf(stderr, "workload[%d]: ", (int)getpid());                                                      \
		fprintf(stderr, __VA_ARGS__);                                                                          \
		fputc('\n', stderr);                                                                                   \
	} while (0)

/* Setup failed: the harness sees the process exit before DIR/ready and shows the log. */
#define wl_die(...)                                                                                                    \
	do {                                                                                                           \
		wl_log("setup failed: " __VA_ARGS__);                                                                  \
		exit(2);                                                                                               \
	} while (0)

#define WL_CHECK_SYS(expr)                                                                                             \
	do {                                                                                                           \
		if ((long)(expr) < 0)                                                                                  \
			wl_die("%s:%d: %s: %s", __FILE__, __LINE__, #expr, strerror(errno));                           \
	} while (0)

/* Record one verification failure (thread-safe, not async-signal-safe). */
__attribute__((format(printf, 1, 2))) static inline void wl_fail(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (char *p = msg; *p; p++)
		if (*p == '\n')
			*p = ' ';
	wl_log("FAIL: %s", msg);
	pthread_mutex_lock(&wl_fail_lock);
	size_t used = strlen(wl_failures);
	if (used < sizeof(wl_failures) - 1)
		snprintf(wl_failures + used, sizeof(wl_failures) - used, "%s%s", wl_nfail ? "; " : "", msg);
	wl_nfail++;
	pthread_mutex_unlock(&wl_fail_lock);
}

/* Compare two integers; record "WHAT: expected E, found F" when they differ. */
static inline bool wl_expect_eq(const char *what, long long expected, long long found)
{
	if (expected == found)
		return true;
	wl_fail("%s: expected %lld, found %lld", what, expected, found);
	return false;
}

static inline void wl_path(char *out, size_t n, const char *dir, const char *name)
{
	if ((size_t)snprintf(out, n, "%s/%s", dir, name) >= n)
		wl_die("path too long: %s/%s", dir, name);
}

/* Write DIR/NAME atomically (NAME.tmp + rename). Returns 0 or -errno. */
static inline int wl_write_file(const char *dir, const char *name, const char *data, size_t len)
{
	char tmp[PATH_MAX], final[PATH_MAX], base[NAME_MAX];
	snprintf(base, sizeof(base), "%s.tmp", name);
	wl_path(tmp, sizeof(tmp), dir, base);
	wl_path(final, sizeof(final), dir, name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(fd, data + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int err = n < 0 ? errno : EIO;
			close(fd);
			return -err;
		}
		done += (size_t)n;
	}
	if (close(fd) < 0)
		return -errno;
	if (rename(tmp, final) < 0)
		return -errno;
	return 0;
}

/*
 * Start of every workload: checks the arguments, makes stdout/stderr
 * unbuffered, closes inherited fds above 2, resets signal dispositions to
 * SIG_DFL and clears the signal mask. Returns DIR as a canonical absolute path.
 */
static inline const char *wl_init(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s DIR [args...]\n", argv[0]);
		exit(2);
	}
	setvbuf(stdout, NULL, _IONBF, 0);
	setvbuf(stderr, NULL, _IONBF, 0);
	close_range(3, ~0U, 0);
	/* Dispositions ignored by whoever started us survive exec: reset them. */
	for (int sig = 1; sig < 65; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			signal(sig, SIG_DFL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Canonical, so it compares equal to /proc/self/fd links and getcwd(). */
	static char dir[PATH_MAX];
	if (!realpath(argv[1], dir))
		wl_die("realpath %s: %s", argv[1], strerror(errno));
	return dir;
}

/* Publish DIR/info ("key value" lines) for the tests; call before wl_ready(). */
__attribute__((format(printf, 2, 3))) static inline void wl_info(const char *dir, const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf))
		wl_die("info too long");
	int err = wl_write_file(dir, "info", buf, (size_t)n);
	if (err)
		wl_die("write %s/info: %s", dir, strerror(-err));
}

/* Setup is done: DIR/ready holds the pid. */
static inline void wl_ready(const char *dir)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	int err = wl_write_file(dir, "ready", buf, (size_t)n);
	if (err)
		wl_die("write %s/ready: %s", dir, strerror(-err));
	wl_log("ready");
}

static inline bool wl_should_check(const char *dir)
{
	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, "check");
	return access(path, F_OK) == 0;
}

static inline uint64_t wl_monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * Write DIR/progress at most every ~100 ms. A restore may move
 * CLOCK_MONOTONIC backwards: then it writes at once.
 */
static inline void wl_progress(const char *dir, uint64_t gen)
{
	static uint64_t last;
	uint64_t now = wl_monotonic_ns();
	if (last && now >= last && now - last < 100000000u)
		return;
	last = now;
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%llu\n", (unsigned long long)gen);
	int err = wl_write_file(dir, "progress", buf, (size_t)n);
	if (err)
		wl_log("write progress: %s", strerror(-err));
}

/* Sleep MS milliseconds of CLOCK_MONOTONIC, resuming after signals. */
static inline void wl_sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
		;
}

/*
 * The main loop: returns when DIR/check exists. TICK (may be NULL) runs once
 * per iteration, right after wl_generation was incremented, to change state.
 */
static inline void wl_loop(const char *dir, void (*tick)(uint64_t gen))
{
	while (!wl_should_check(dir)) {
		uint64_t gen = wl_generation + 1;
		wl_generation = gen;
		if (tick)
			tick(gen);
		wl_progress(dir, gen);
		wl_sleep_ms(10);
	}
	wl_log("check requested at generation %llu", (unsigned long long)wl_generation);
}

/* Write DIR/result ("ok" or "fail: MSG", then "generation N") and exit 0 or 1. */
__attribute__((format(printf, 3, 4), noreturn)) static inline void wl_result(const char *dir, bool ok,
									      const char *fmt, ...)
{
	char msg[4096], buf[4352];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (char *p = msg; *p; p++)
		if (*p == '\n')
			*p = ' ';
	int n;
	if (ok)
		n = snprintf(buf, sizeof(buf), "ok\ngeneration %llu\n", (unsigned long long)wl_generation);
	else
		n = snprintf(buf, sizeof(buf), "fail: %s\ngeneration %llu\n", msg, (unsigned long long)wl_generation);
	if (n < 0 || (size_t)n >= sizeof(buf))
		n = (int)sizeof(buf) - 1;
	wl_log("result: %s", ok ? "ok" : msg);
	int err = wl_write_file(dir, "result", buf, (size_t)n);
	if (err)
		wl_log("write result: %s", strerror(-err));
	exit(ok ? 0 : 1);
}

/* Report the failures collected by wl_fail() (none: "ok") and exit. */
__attribute__((noreturn)) static inline void wl_finish(const char *dir)
{
	pthread_mutex_lock(&wl_fail_lock);
	bool ok = wl_nfail == 0;
	char msg[sizeof(wl_failures)];
	memcpy(msg, wl_failures, sizeof(msg));
	pthread_mutex_unlock(&wl_fail_lock);
	wl_result(dir, ok, "%s", msg);
}

/* xorshift64* PRNG; the state must not be 0 (wl_seed() makes sure). */
static inline uint64_t wl_seed(uint64_t seed)
{
	seed = (seed ^ 0x9e3779b97f4a7c15ull) * 0xbf58476d1ce4e5b9ull;
	return seed ? seed : 1;
}

static inline uint64_t wl_rand(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* Fill BUF with the PRNG stream of SEED (whole 8-byte words, then the tail). */
static inline void wl_fill(void *buf, size_t len, uint64_t seed)
{
	uint64_t s = wl_seed(seed), *w = buf;
	size_t words = len / 8;
	for (size_t i = 0; i < words; i++)
		w[i] = wl_rand(&s);
	if (len % 8) {
		uint64_t last = wl_rand(&s);
		memcpy((char *)buf + words * 8, &last, len % 8);
	}
}

/*
 * Compare BUF with what wl_fill(SEED) wrote. Returns -1 when equal, else the
 * offset of the first differing byte; *EXPECTED and *FOUND get its values.
 */
static inline long wl_verify_fill(const void *buf, size_t len, uint64_t seed, uint8_t *expected, uint8_t *found)
{
	uint64_t s = wl_seed(seed);
	const uint8_t *b = buf;
	for (size_t off = 0; off < len; off += 8) {
		uint64_t want = wl_rand(&s);
		size_t n = len - off < 8 ? len - off : 8;
		if (memcmp(b + off, &want, n) == 0)
			continue;
		for (size_t i = 0; i < n; i++) {
			if (b[off + i] != ((uint8_t *)&want)[i]) {
				*expected = ((uint8_t *)&want)[i];
				*found = b[off + i];
				return (long)(off + i);
			}
		}
	}
	return -1;
}

/* wl_verify_fill() that records "WHAT: byte N (address A) is X, expected Y". */
static inline bool wl_expect_fill(const char *what, const void *buf, size_t len, uint64_t seed)
{
	uint8_t want, got;
	long off = wl_verify_fill(buf, len, seed, &want, &got);
	if (off < 0)
		return true;
	wl_fail("%s: byte %ld (address %p) is 0x%02x, expected 0x%02x", what, off, (const char *)buf + off, got, want);
	return false;
}

/*
 * Checksum: FNV-1a over 8-byte words (then the tail bytes). Each step is a
 * bijection of the state, so changing any one word always changes the sum.
 */
static inline uint64_t wl_checksum(const void *buf, size_t len)
{
	const uint64_t prime = 0x100000001b3ull;
	uint64_t h = 0xcbf29ce484222325ull, w;
	const uint8_t *b = buf;
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		memcpy(&w, b + i, 8);
		h = (h ^ w) * prime;
	}
	for (; i < len; i++)
		h = (h ^ b[i]) * prime;
	return h;
}

/* Read all of FD from offset OFF with pread. Returns bytes read or -errno. */
static inline ssize_t wl_pread_all(int fd, void *buf, size_t len, off_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, off + (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

/* write(2) all of BUF; -1 on failure (errno set, or left alone by a write of 0). */
static inline int send_all(int fd, const void *buf, size_t len)
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

/* write(2) all of BUF, dying on error (setup only). */
static inline void wl_write_all(int fd, const void *buf, size_t len)
{
	errno = 0;
	if (send_all(fd, buf, len) < 0)
		wl_die("write fd %d: %s", fd, errno ? strerror(errno) : "short write");
}

/* Move FD to the fixed number TARGET (closing FD); FLAGS may be O_CLOEXEC. */
static inline int wl_move_fd(int fd, int target, int flags)
{
	if (fd == target)
		return fd;
	if (dup3(fd, target, flags) < 0)
		wl_die("dup3(%d, %d): %s", fd, target, strerror(errno));
	close(fd);
	return target;
}

#endif
