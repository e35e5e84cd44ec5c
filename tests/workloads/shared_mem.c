/*
 * shared_mem: a parent and a child sharing MAP_SHARED memory, a sealed
 * memfd, two System V shared memory segments (one of them removed while
 * attached) and inherited pipe and memfd fds (one open file each, shared).
 *
 * Usage: shared_mem DIR
 *
 * Processes: root (the one the harness started) -> C. C sets
 * PR_SET_PDEATHSIG to SIGKILL right after the fork; only the root touches DIR.
 *
 * Shared state, all set up by the root before the fork unless said:
 *   big   4 MiB MAP_SHARED|MAP_ANONYMOUS. C's counter at offset 0 (C adds 1
 *         every ~10 ms iteration); the root's generation at 4096 (C reads it);
 *         ping at 8192 (root) / pong at 8200 (C); pages 3 to the end hold a
 *         known pattern.
 *   small 64 KiB MAP_SHARED|MAP_ANONYMOUS that the root maps but never
 *         touches before check: after the fork C fills pages 1-15 with a
 *         known pattern and keeps its counter at 0, ping at 8, pong at 16.
 *         At dump time its pages exist only through C's page tables.
 *   memfd fd 30 (MFD_ALLOW_SEALING): 5000 bytes of a known pattern written
 *         with write(2) (so the shared file offset is 5000), ftruncate to
 *         1 MiB, F_SEAL_SHRINK|F_SEAL_GROW. Mapped MAP_SHARED by the root
 *         (C inherits that mapping) and mapped again by C after the fork. C
 *         writes its counter at 8192 through its own mapping; ping at 8200,
 *         pong at 8208; the rest past 5000 stays zero.
 *   sysv  64 KiB System V segment: shmget(KEY, 65536, IPC_CREAT|IPC_EXCL|0640)
 *         with KEY = 0x57A50000 | (the root's pid & 0xffff) (setup fails if
 *         the key is taken: EEXIST), attached with shmat by the root, so C
 *         inherits the attachment (2 attached). C's counter at offset 0 (C
 *         adds 1 every iteration, after writing big's, small's and the
 *         memfd's); ping at 8 (root) / pong at 16 (C); pages 1-11 hold a
 *         known pattern, the rest stays zero.
 *   sysv_gone 8 KiB System V segment: shmget(IPC_PRIVATE, 8192, IPC_CREAT|0600),
 *         attached by the root (C inherits it), pattern in page 1, ping at 0
 *         / pong at 8, the rest of page 0 zero. Right after the fork, once
 *         C reported its setup, the root marks it removed (IPC_RMID): it
 *         lives on only through the two attachments (SHM_DEST, key
 *         IPC_PRIVATE) and goes with the last of them.
 *   pipe  fds 40/41, both ends held by both processes, 100 bytes of known
 *         data buffered, untouched until check.
 *   control pipes: root 20 -> C 10 (the check message), C 11 -> root 21
 *         (C's setup report, then its verdict).
 * While running, C checks that big's and sysv's counters still hold its own
 * last value and that the root's generation never goes back; the root checks
 * that C's counters in big, in the memfd and in sysv never go back (and the
 * memfd's is not ahead of big's, nor sysv's ahead of the memfd's: C writes
 * big first, sysv last).
 *
 * Check: sharing must be real, not equal copies. The root writes a fresh
 * random token to ping in big, in small (its first touch: after checking
 * small's pattern), in the memfd (with pwrite), in sysv and in sysv_gone,
 * and C, which echoes any ping as ping + 1, must answer in pong (read back
 * through the root's mapping, and with pread for the memfd) within 10000
 * tries 1 ms apart. The root then checks the segments with IPC_STAT while C
 * still runs: sysv through the id shmget(KEY, 0, 0) finds now, which must be
 * the id it created (its key, size 65536, mode & 0777 == 0640, not SHM_DEST,
 * our uid and gid, 2 attached); sysv_gone through the id it remembered (key
 * IPC_PRIVATE, size 8192, mode 0600, SHM_DEST, 2 attached).
 * Then the root sets O_NONBLOCK on fd 40 and moves the memfd's offset with
 * lseek, and sends C the check message with that offset. C verifies: pids,
 * PR_GET_PDEATHSIG is SIGKILL, fd 40 is O_NONBLOCK and the memfd is at the
 * root's offset (one open file each), the seals, ftruncate refused (EPERM),
 * the size, the 100 bytes in the shared pipe (then it is empty), every
 * pattern (and the zeros of sysv and sysv_gone) through its own mappings,
 * the same IPC_STAT of both segments through the ids it inherited; it writes
 * 100 bytes of its own into the shared pipe and sends its verdict with its
 * counter, the last generation of the root it saw, and the inodes of its
 * memfd and pipe. The root verifies: the verdict and exit status, that C's
 * counter is in big, small, the memfd and sysv, not behind what the root
 * saw, that C never saw a generation ahead of the root's, that the inodes
 * are its own, that the shared pipe holds exactly C's 100 bytes, every
 * pattern and zero through its mappings and the fd, and that both segments
 * are down to 1 attachment (its own) now that C is gone.
 *
 * System V leftovers: after its checks, ok or not, the root removes sysv
 * (IPC_RMID; it goes when the root exits) and checks that KEY is free, so a
 * finished run leaves nothing in the kernel; a setup failure (wl_die, exit)
 * removes whatever the root had created (atexit). A run that is killed
 * (SIGKILL, or a dump that kills the tree) after DIR/ready leaves at most
 * sysv, with nothing attached: sysv_gone is already removed by then and goes
 * with its last attachment. Only a kill during setup, before the root marked
 * sysv_gone removed, may leave sysv_gone too (IPC_PRIVATE, 8 KiB). A test
 * cleans up with DIR/info "sysv_key" / "sysv_id" (ipcrm -m ID).
 *
 * Publishes in DIR/info: "pids" and "pid_c" (C), the fd numbers
 * ("memfd_fd", "shared_pipe_read", "shared_pipe_write"), the addresses
 * ("big_addr", "small_addr", "memfd_addr", "sysv_addr", "sysv_gone_addr";
 * C's own memfd mapping is "memfd_addr_c"), sysv's key in hex ("sysv_key",
 * 0x57a5....) and id ("sysv_id"), and sysv_gone's id ("sysv_gone_id").
 */
#include "kids.h"

#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>

#define PAGE 4096
#define BIG_LEN (4u << 20)
#define BIG_COUNTER 0
#define BIG_GEN 4096
#define BIG_PING 8192
#define BIG_PONG 8200
#define BIG_DATA (3 * PAGE)
#define SMALL_LEN (64u << 10)
#define SMALL_COUNTER 0
#define SMALL_PING 8
#define SMALL_PONG 16
#define SMALL_DATA PAGE
#define MEMFD_LEN (1u << 20)
#define MEMFD_DATA_LEN 5000
#define MEMFD_COUNTER 8192
#define MEMFD_PING 8200
#define MEMFD_PONG 8208
#define MEMFD_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)
#define SYSV_KEY_BASE 0x57A50000
#define SYSV_LEN (64u << 10)
#define SYSV_MODE 0640
#define SYSV_COUNTER 0
#define SYSV_PING 8
#define SYSV_PONG 16
#define SYSV_DATA PAGE
#define SYSV_DATA_END (12 * PAGE)
#define GONE_LEN (8u << 10)
#define GONE_MODE 0600
#define GONE_PING 0
#define GONE_PONG 8
#define GONE_DATA PAGE
#define PIPE_MSG 100
#define ROUND_TRIES 10000
#define VERDICT_MS 30000

enum { C_DOWN = 10, C_UP = 11, ROOT_DOWN = 20, ROOT_UP = 21, MEMFD = 30, SHARED_R = 40, SHARED_W = 41 };
enum { SEED_BIG = 0x5b16, SEED_SMALL = 0x5a11, SEED_MEMFD = 0x3e3f, SEED_PIPE_ROOT = 0x9100, SEED_PIPE_C = 0x91c0 };
enum { SEED_SYSV = 0x5755, SEED_GONE = 0x5760 };

/* C -> root before ready, so the root knows C finished setting up. */
struct setup_report {
	uint64_t memfd_addr;
};

/* Root -> C at check. */
struct check_msg {
	uint64_t memfd_offset;
};

/* C -> root after its checks. */
struct verdict {
	uint64_t counter, root_gen_seen, memfd_ino, pipe_ino;
	uint32_t ok, len;
};

static uint8_t *big, *small, *memfd_map, *memfd_map_c, *sysv, *sysv_gone;
static pid_t root_pid, child_pid;
static char tick_error[256];
/* Root: C's counters last seen. C: the root's generation last seen. */
static uint64_t seen_big, seen_memfd, seen_sysv, seen_root_gen;
/* The segments' key and ids as created (C inherits them). */
static key_t sysv_key;
static int sysv_id = -1, sysv_gone_id = -1;
/* The root's segments still to remove if it exits early (see remove_segments). */
static pid_t creator;
static bool sysv_owned, sysv_gone_owned;

static uint64_t *slot(uint8_t *base, size_t off)
{
	return (uint64_t *)(base + off);
}

static uint64_t load(uint8_t *base, size_t off)
{
	return __atomic_load_n(slot(base, off), __ATOMIC_SEQ_CST);
}

static void store(uint8_t *base, size_t off, uint64_t v)
{
	__atomic_store_n(slot(base, off), v, __ATOMIC_SEQ_CST);
}

static void *map(size_t len, int flags, int fd)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (p == MAP_FAILED)
		wl_die("mmap %zu bytes: %s", len, strerror(errno));
	return p;
}

static void tick_fail(const char *fmt, unsigned long long a, unsigned long long b)
{
	if (!tick_error[0])
		snprintf(tick_error, sizeof(tick_error), fmt, a, b);
}

/* Root: publish the generation, watch C's counters. */
static void root_tick(uint64_t gen)
{
	store(big, BIG_GEN, gen);
	/* Read before the memfd's and big's: C writes sysv's last. */
	uint64_t s = load(sysv, SYSV_COUNTER);
	uint64_t m = load(memfd_map, MEMFD_COUNTER), b = load(big, BIG_COUNTER);
	if (s > m)
		tick_fail("C's counter in sysv (%llu) is ahead of the one in the memfd (%llu)", s, m);
	if (s < seen_sysv)
		tick_fail("C's counter in sysv went back from %llu to %llu", seen_sysv, s);
	seen_sysv = s;
	if (m > b)
		tick_fail("C's counter in the memfd (%llu) is ahead of the one in big (%llu)", m, b);
	if (b < seen_big)
		tick_fail("C's counter in big went back from %llu to %llu", seen_big, b);
	if (m < seen_memfd)
		tick_fail("C's counter in the memfd went back from %llu to %llu", seen_memfd, m);
	seen_big = b;
	seen_memfd = m;
}

/* C: answer a ping with ping + 1. */
static void echo(uint8_t *ping_base, size_t ping, uint8_t *pong_base, size_t pong)
{
	uint64_t v = load(ping_base, ping);
	if (v && load(pong_base, pong) != v + 1)
		store(pong_base, pong, v + 1);
}

/* Every byte of BUF[0, LEN) is zero; else record where. */
static void expect_zero(const char *what, const uint8_t *buf, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (buf[i]) {
			wl_fail("%s: byte %zu is 0x%02x, expected 0", what, i, buf[i]);
			return;
		}
}

/* The memfd's contents through a mapping, and its seals, size and refusals. */
static void check_memfd(const char *who, uint8_t *m)
{
	char what[96];
	snprintf(what, sizeof(what), "memfd through %s mapping", who);
	wl_expect_fill(what, m, MEMFD_DATA_LEN, SEED_MEMFD);
	snprintf(what, sizeof(what), "memfd through %s mapping, after the data", who);
	expect_zero(what, m + MEMFD_DATA_LEN, MEMFD_COUNTER - MEMFD_DATA_LEN);
	snprintf(what, sizeof(what), "memfd through %s mapping, after the slots", who);
	expect_zero(what, m + MEMFD_PONG + 8, MEMFD_LEN - MEMFD_PONG - 8);

	wl_expect_eq("memfd F_GET_SEALS", MEMFD_SEALS, fcntl(MEMFD, F_GET_SEALS));
	struct stat st;
	if (fstat(MEMFD, &st) < 0)
		wl_fail("fstat memfd: %s", strerror(errno));
	else
		wl_expect_eq("memfd size", MEMFD_LEN, st.st_size);
	if (ftruncate(MEMFD, MEMFD_LEN / 2) == 0 || errno != EPERM)
		wl_fail("ftruncate shrinking the sealed memfd was not refused with EPERM");
	if (ftruncate(MEMFD, MEMFD_LEN * 2) == 0 || errno != EPERM)
		wl_fail("ftruncate growing the sealed memfd was not refused with EPERM");
}

static ino_t inode(int fd)
{
	struct stat st;
	return fstat(fd, &st) < 0 ? 0 : st.st_ino;
}

/* Setup: create a System V segment (IPC_CREAT | IPC_EXCL) and attach it. */
static int sysv_create(const char *what, key_t key, size_t len, int mode)
{
	int id = shmget(key, len, IPC_CREAT | IPC_EXCL | mode);
	if (id < 0 && errno == EEXIST)
		wl_die("%s: System V key 0x%08x is taken by another segment (a leftover of an earlier run? "
		       "see ipcs -m, remove it with ipcrm -M 0x%08x)",
		       what, (unsigned)key, (unsigned)key);
	if (id < 0)
		wl_die("%s: shmget key 0x%08x, %zu bytes: %s", what, (unsigned)key, len, strerror(errno));
	return id;
}

static uint8_t *sysv_attach(const char *what, int id)
{
	void *p = shmat(id, NULL, 0);
	if (p == (void *)-1)
		wl_die("%s: shmat segment %d: %s", what, id, strerror(errno));
	return p;
}

/*
 * Root: remove the segment sysv_key names (IPC_RMID; it goes with its last
 * attachment). By key, not by the id remembered: a restore that could not
 * give sysv its id back made it under another. Returns the id, or -1.
 */
static int remove_sysv(void)
{
	int id = shmget(sysv_key, 0, 0);
	if (id < 0 || shmctl(id, IPC_RMID, NULL) < 0)
		return -1;
	sysv_owned = false;
	return id;
}

/* atexit in the root: an exit before the end (wl_die in setup) leaves no segment behind. */
static void remove_segments(void)
{
	if (getpid() != creator)
		return;
	if (sysv_owned)
		remove_sysv();
	if (sysv_gone_owned && shmctl(sysv_gone_id, IPC_RMID, NULL) == 0)
		sysv_gone_owned = false;
}

/* IPC_STAT of segment ID: its key, size, permission bits, SHM_DEST, owner and attachments. */
static void check_segment(const char *what, int id, key_t key, size_t len, int mode, bool removed, int nattch)
{
	struct shmid_ds ds;
	char w[128];
	if (shmctl(id, IPC_STAT, &ds) < 0) {
		wl_fail("%s: IPC_STAT on System V segment %d: %s", what, id, strerror(errno));
		return;
	}
	if (ds.shm_perm.__key != key)
		wl_fail("%s (segment %d): key 0x%08x, expected 0x%08x", what, id, (unsigned)ds.shm_perm.__key,
			(unsigned)key);
	snprintf(w, sizeof(w), "%s (segment %d) size", what, id);
	wl_expect_eq(w, (long long)len, (long long)ds.shm_segsz);
	snprintf(w, sizeof(w), "%s (segment %d) mode & 0777", what, id);
	wl_expect_eq(w, mode, ds.shm_perm.mode & 0777);
	snprintf(w, sizeof(w), "%s (segment %d) SHM_DEST in its mode (0%o)", what, id, ds.shm_perm.mode);
	wl_expect_eq(w, removed ? SHM_DEST : 0, ds.shm_perm.mode & SHM_DEST);
	snprintf(w, sizeof(w), "%s (segment %d) owner uid", what, id);
	wl_expect_eq(w, geteuid(), ds.shm_perm.uid);
	snprintf(w, sizeof(w), "%s (segment %d) owner gid", what, id);
	wl_expect_eq(w, getegid(), ds.shm_perm.gid);
	snprintf(w, sizeof(w), "%s (segment %d) shm_nattch", what, id);
	wl_expect_eq(w, nattch, (long long)ds.shm_nattch);
}

/* Both segments' patterns and zeros through this process's attachments. */
static void check_segments_data(const char *who)
{
	char w[96];
	snprintf(w, sizeof(w), "sysv, %s view, after the slots", who);
	expect_zero(w, sysv + SYSV_PONG + 8, SYSV_DATA - SYSV_PONG - 8);
	snprintf(w, sizeof(w), "sysv, %s view", who);
	wl_expect_fill(w, sysv + SYSV_DATA, SYSV_DATA_END - SYSV_DATA, SEED_SYSV);
	snprintf(w, sizeof(w), "sysv, %s view, after the data", who);
	expect_zero(w, sysv + SYSV_DATA_END, SYSV_LEN - SYSV_DATA_END);
	snprintf(w, sizeof(w), "sysv_gone, %s view, after the slots", who);
	expect_zero(w, sysv_gone + GONE_PONG + 8, GONE_DATA - GONE_PONG - 8);
	snprintf(w, sizeof(w), "sysv_gone, %s view", who);
	wl_expect_fill(w, sysv_gone + GONE_DATA, GONE_LEN - GONE_DATA, SEED_GONE);
}

static void run_child(void) __attribute__((noreturn));

static void run_child(void)
{
	close(ROOT_DOWN);
	close(ROOT_UP);
	wl_failures[0] = 0;
	wl_nfail = 0;
	wl_generation = 0;
	wl_fill(small + SMALL_DATA, SMALL_LEN - SMALL_DATA, SEED_SMALL);
	memfd_map_c = map(MEMFD_LEN, MAP_SHARED, MEMFD);
	struct setup_report rep = { .memfd_addr = (uint64_t)(uintptr_t)memfd_map_c };
	wl_write_all(C_UP, &rep, sizeof(rep));

	for (;;) {
		uint64_t gen = wl_generation + 1;
		wl_generation = gen;
		uint64_t had = load(big, BIG_COUNTER);
		if (had != gen - 1)
			tick_fail("big's counter held %llu, C's own last value is %llu", had, gen - 1);
		store(big, BIG_COUNTER, gen);
		store(small, SMALL_COUNTER, gen);
		store(memfd_map_c, MEMFD_COUNTER, gen);
		had = load(sysv, SYSV_COUNTER);
		if (had != gen - 1)
			tick_fail("sysv's counter held %llu, C's own last value is %llu", had, gen - 1);
		store(sysv, SYSV_COUNTER, gen);
		uint64_t rg = load(big, BIG_GEN);
		if (rg < seen_root_gen)
			tick_fail("the root's generation in big went back from %llu to %llu", seen_root_gen, rg);
		seen_root_gen = rg;
		echo(big, BIG_PING, big, BIG_PONG);
		echo(small, SMALL_PING, small, SMALL_PONG);
		/* Ping read through C's own mapping, pong written through the inherited one. */
		echo(memfd_map_c, MEMFD_PING, memfd_map, MEMFD_PONG);
		echo(sysv, SYSV_PING, sysv, SYSV_PONG);
		echo(sysv_gone, GONE_PING, sysv_gone, GONE_PONG);
		if (buffered(C_DOWN) != 0)
			break;
		wl_sleep_ms(10);
	}
	wl_log("C: check at counter %llu", (unsigned long long)wl_generation);
	if (tick_error[0])
		wl_fail("%s", tick_error);

	struct check_msg msg = { 0 };
	uint8_t raw[sizeof(msg) + 1];
	size_t got = read_buffered(C_DOWN, raw, sizeof(raw));
	if (got != sizeof(msg))
		wl_fail("check message of %zu bytes, expected %zu", got, sizeof(msg));
	memcpy(&msg, raw, got < sizeof(msg) ? got : sizeof(msg));

	wl_expect_eq("getpid()", child_pid, getpid());
	wl_expect_eq("getppid()", root_pid, getppid());
	int sig = -1;
	if (prctl(PR_GET_PDEATHSIG, &sig) < 0)
		wl_fail("PR_GET_PDEATHSIG: %s", strerror(errno));
	else
		wl_expect_eq("PR_GET_PDEATHSIG", SIGKILL, sig);

	/* One open file each: the root's F_SETFL and lseek show here. */
	int fl = fcntl(SHARED_R, F_GETFL);
	if (fl < 0 || !(fl & O_NONBLOCK))
		wl_fail("shared pipe fd %d: flags 0x%x lack the O_NONBLOCK the root set", SHARED_R, fl);
	wl_expect_eq("memfd offset (the root moved it)", (long long)msg.memfd_offset, lseek(MEMFD, 0, SEEK_CUR));

	uint8_t buf[PIPE_MSG + 1];
	got = read_buffered(SHARED_R, buf, sizeof(buf));
	if (got != PIPE_MSG)
		wl_fail("shared pipe held %zu bytes, expected %d", got, PIPE_MSG);
	wl_expect_fill("shared pipe data from the root", buf, got < PIPE_MSG ? got : PIPE_MSG, SEED_PIPE_ROOT);
	wl_fill(buf, PIPE_MSG, SEED_PIPE_C);
	if (send_all(SHARED_W, buf, PIPE_MSG) < 0)
		wl_fail("write to the shared pipe: %s", strerror(errno));

	wl_expect_fill("big, C's view", big + BIG_DATA, BIG_LEN - BIG_DATA, SEED_BIG);
	wl_expect_fill("small, C's view", small + SMALL_DATA, SMALL_LEN - SMALL_DATA, SEED_SMALL);
	check_memfd("C's own", memfd_map_c);
	check_memfd("C's inherited", memfd_map);
	check_segments_data("C's");
	/* Through the ids C inherited; the root is attached too until C's verdict. */
	check_segment("sysv, C's IPC_STAT", sysv_id, sysv_key, SYSV_LEN, SYSV_MODE, false, 2);
	check_segment("sysv_gone, C's IPC_STAT", sysv_gone_id, IPC_PRIVATE, GONE_LEN, GONE_MODE, true, 2);

	pthread_mutex_lock(&wl_fail_lock);
	struct verdict v = {
		.counter = wl_generation,
		.root_gen_seen = seen_root_gen,
		.memfd_ino = inode(MEMFD),
		.pipe_ino = inode(SHARED_R),
		.ok = wl_nfail == 0,
		.len = (uint32_t)strlen(wl_failures),
	};
	pthread_mutex_unlock(&wl_fail_lock);
	if (send_all(C_UP, &v, sizeof(v)) < 0 || send_all(C_UP, wl_failures, v.len) < 0)
		wl_log("C: cannot send the verdict: %s", strerror(errno));
	_exit(v.ok ? 0 : 1);
}

/* Root: write a fresh token to ping, wait for C's token + 1 in pong. */
static void round_trip(const char *what, uint8_t *base, size_t ping, size_t pong, uint64_t *rng)
{
	uint64_t token;
	do
		token = wl_rand(rng);
	while (token == 0 || token + 1 == 0 || load(base, pong) == token + 1);
	store(base, ping, token);
	uint64_t seen = 0;
	for (int i = 0; i < ROUND_TRIES; i++) {
		seen = load(base, pong);
		if (seen == token + 1)
			return;
		wl_sleep_ms(1);
	}
	wl_fail("%s: wrote ping 0x%llx, pong still 0x%llx after %d tries", what, (unsigned long long)token,
		(unsigned long long)seen, ROUND_TRIES);
}

/* The same through the memfd's fd: pwrite the ping, pread the pong. */
static void round_trip_fd(uint64_t *rng)
{
	uint64_t token, seen = 0;
	do
		token = wl_rand(rng);
	while (token == 0 || token + 1 == 0);
	if (pwrite(MEMFD, &token, 8, MEMFD_PING) != 8) {
		wl_fail("pwrite memfd ping: %s", strerror(errno));
		return;
	}
	for (int i = 0; i < ROUND_TRIES; i++) {
		if (pread(MEMFD, &seen, 8, MEMFD_PONG) == 8 && seen == token + 1)
			return;
		wl_sleep_ms(1);
	}
	wl_fail("memfd: pwrote ping 0x%llx, pread pong 0x%llx after %d tries", (unsigned long long)token,
		(unsigned long long)seen, ROUND_TRIES);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);

	big = map(BIG_LEN, MAP_SHARED | MAP_ANONYMOUS, -1);
	wl_fill(big + BIG_DATA, BIG_LEN - BIG_DATA, SEED_BIG);
	small = map(SMALL_LEN, MAP_SHARED | MAP_ANONYMOUS, -1);

	int fd = memfd_create("stasis-shm", MFD_ALLOW_SEALING);
	WL_CHECK_SYS(fd);
	wl_move_fd(fd, MEMFD, 0);
	uint8_t data[MEMFD_DATA_LEN];
	wl_fill(data, sizeof(data), SEED_MEMFD);
	wl_write_all(MEMFD, data, sizeof(data));
	WL_CHECK_SYS(ftruncate(MEMFD, MEMFD_LEN));
	WL_CHECK_SYS(fcntl(MEMFD, F_ADD_SEALS, MEMFD_SEALS));
	memfd_map = map(MEMFD_LEN, MAP_SHARED, MEMFD);

	/* The System V segments: removed again if the root exits before it is done with them. */
	creator = getpid();
	if (atexit(remove_segments) != 0)
		wl_die("atexit failed");
	sysv_key = (key_t)(SYSV_KEY_BASE | (getpid() & 0xffff));
	sysv_id = sysv_create("sysv", sysv_key, SYSV_LEN, SYSV_MODE);
	sysv_owned = true;
	sysv = sysv_attach("sysv", sysv_id);
	wl_fill(sysv + SYSV_DATA, SYSV_DATA_END - SYSV_DATA, SEED_SYSV);
	sysv_gone_id = sysv_create("sysv_gone", IPC_PRIVATE, GONE_LEN, GONE_MODE);
	sysv_gone_owned = true;
	sysv_gone = sysv_attach("sysv_gone", sysv_gone_id);
	wl_fill(sysv_gone + GONE_DATA, GONE_LEN - GONE_DATA, SEED_GONE);

	int p[2];
	WL_CHECK_SYS(pipe(p));
	wl_move_fd(p[0], SHARED_R, 0);
	wl_move_fd(p[1], SHARED_W, 0);
	uint8_t msg[PIPE_MSG];
	wl_fill(msg, PIPE_MSG, SEED_PIPE_ROOT);
	wl_write_all(SHARED_W, msg, PIPE_MSG);

	WL_CHECK_SYS(pipe(p));
	wl_move_fd(p[0], C_DOWN, 0);
	wl_move_fd(p[1], ROOT_DOWN, 0);
	WL_CHECK_SYS(pipe(p));
	wl_move_fd(p[0], ROOT_UP, 0);
	wl_move_fd(p[1], C_UP, 0);

	root_pid = getpid();
	pid_t pid = fork();
	WL_CHECK_SYS(pid);
	if (pid == 0) {
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != root_pid)
			_exit(2);
		child_pid = getpid();
		run_child();
	}
	child_pid = pid;
	close(C_DOWN);
	close(C_UP);
	struct setup_report rep;
	size_t got = read_all(ROOT_UP, &rep, sizeof(rep));
	if (got != sizeof(rep))
		wl_die("C (pid %d) did not report its setup", (int)pid);
	/* From now on sysv_gone lives only through the root's and C's attachments. */
	if (shmctl(sysv_gone_id, IPC_RMID, NULL) < 0)
		wl_die("sysv_gone: IPC_RMID segment %d: %s", sysv_gone_id, strerror(errno));
	sysv_gone_owned = false;

	wl_info(dir,
		"pids %d\npid_c %d\nmemfd_fd %d\nshared_pipe_read %d\nshared_pipe_write %d\nbig_addr %lu\n"
		"small_addr %lu\nmemfd_addr %lu\nmemfd_addr_c %lu\nsysv_addr %lu\nsysv_gone_addr %lu\n"
		"sysv_key 0x%08x\nsysv_id %d\nsysv_gone_id %d\n",
		(int)pid, (int)pid, MEMFD, SHARED_R, SHARED_W, (unsigned long)big, (unsigned long)small,
		(unsigned long)memfd_map, (unsigned long)rep.memfd_addr, (unsigned long)sysv,
		(unsigned long)sysv_gone, (unsigned)sysv_key, sysv_id, sysv_gone_id);
	wl_ready(dir);
	wl_loop(dir, root_tick);

	if (tick_error[0])
		wl_fail("%s", tick_error);
	wl_expect_eq("getpid()", root_pid, getpid());
	/* small's first touch by the root: its pattern, then the round trip. */
	wl_expect_fill("small, the root's view", small + SMALL_DATA, SMALL_LEN - SMALL_DATA, SEED_SMALL);
	uint64_t rng = wl_seed(wl_monotonic_ns() ^ ((uint64_t)getpid() << 32) ^ wl_generation);
	round_trip("big", big, BIG_PING, BIG_PONG, &rng);
	round_trip("small", small, SMALL_PING, SMALL_PONG, &rng);
	round_trip_fd(&rng);
	round_trip("sysv", sysv, SYSV_PING, SYSV_PONG, &rng);
	round_trip("sysv_gone", sysv_gone, GONE_PING, GONE_PONG, &rng);
	/* While C still runs (it exits after its verdict): both attached. */
	int id = shmget(sysv_key, 0, 0);
	if (id < 0)
		wl_fail("sysv: shmget key 0x%08x: %s", (unsigned)sysv_key, strerror(errno));
	else
		wl_expect_eq("sysv: the id of its key", sysv_id, id);
	if (id >= 0)
		check_segment("sysv, the root's IPC_STAT", id, sysv_key, SYSV_LEN, SYSV_MODE, false, 2);
	check_segment("sysv_gone, the root's IPC_STAT", sysv_gone_id, IPC_PRIVATE, GONE_LEN, GONE_MODE, true, 2);

	/* Changes to the open files that C must see through its own fds. */
	WL_CHECK_SYS(fcntl(SHARED_R, F_SETFL, fcntl(SHARED_R, F_GETFL) | O_NONBLOCK));
	struct check_msg cm = { .memfd_offset = 4096 + wl_rand(&rng) % 100000 };
	if (lseek(MEMFD, (off_t)cm.memfd_offset, SEEK_SET) != (off_t)cm.memfd_offset)
		wl_fail("lseek memfd: %s", strerror(errno));
	if (send_all(ROOT_DOWN, &cm, sizeof(cm)) < 0)
		wl_fail("C (pid %d): cannot send the check message: %s", (int)pid, strerror(errno));

	uint64_t deadline = wl_monotonic_ns() + VERDICT_MS * 1000000ull;
	char who[32];
	snprintf(who, sizeof(who), "C (pid %d)", (int)pid);
	struct verdict v = { 0 };
	char text[4096] = "";
	bool have = read_verdict(ROOT_UP, who, &v, sizeof(v), &v.len, text, sizeof(text), deadline);

	int st = -1;
	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			break;
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 || !ms_left(deadline)) {
			wl_fail("C (pid %d): %s", (int)pid, r < 0 ? strerror(errno) : "still running after its verdict");
			st = -1;
			break;
		}
		wl_sleep_ms(1);
	}
	check_exit(who, st, have, v.ok);

	if (have) {
		if (!v.ok)
			wl_fail("C (pid %d): [%s]", (int)pid, text);
		if (v.counter == 0 || v.counter < seen_big)
			wl_fail("C's counter %llu, the root saw %llu before", (unsigned long long)v.counter,
				(unsigned long long)seen_big);
		if (v.root_gen_seen > wl_generation)
			wl_fail("C saw root generation %llu, the root is at %llu", (unsigned long long)v.root_gen_seen,
				(unsigned long long)wl_generation);
		wl_expect_eq("C's counter in big", (long long)v.counter, (long long)load(big, BIG_COUNTER));
		wl_expect_eq("C's counter in small", (long long)v.counter, (long long)load(small, SMALL_COUNTER));
		wl_expect_eq("C's counter in the memfd", (long long)v.counter,
			     (long long)load(memfd_map, MEMFD_COUNTER));
		wl_expect_eq("C's counter in sysv", (long long)v.counter, (long long)load(sysv, SYSV_COUNTER));
		wl_expect_eq("memfd inode in C", (long long)inode(MEMFD), (long long)v.memfd_ino);
		wl_expect_eq("shared pipe inode in C", (long long)inode(SHARED_R), (long long)v.pipe_ino);
	}
	wl_expect_eq("the root's generation in big", (long long)wl_generation, (long long)load(big, BIG_GEN));

	uint8_t buf[PIPE_MSG + 1];
	got = read_buffered(SHARED_R, buf, sizeof(buf));
	if (got != PIPE_MSG)
		wl_fail("shared pipe held %zu bytes after C's turn, expected C's %d", got, PIPE_MSG);
	wl_expect_fill("shared pipe data from C", buf, got < PIPE_MSG ? got : PIPE_MSG, SEED_PIPE_C);

	wl_expect_fill("big, the root's view", big + BIG_DATA, BIG_LEN - BIG_DATA, SEED_BIG);
	check_memfd("the root's", memfd_map);
	uint8_t *copy = malloc(MEMFD_LEN);
	if (!copy || wl_pread_all(MEMFD, copy, MEMFD_LEN, 0) != MEMFD_LEN)
		wl_fail("pread the whole memfd: %s", strerror(errno));
	else if (memcmp(copy, memfd_map, MEMFD_LEN) != 0)
		wl_fail("memfd read with pread differs from the root's mapping");
	free(copy);
	wl_expect_eq("memfd offset", (long long)cm.memfd_offset, lseek(MEMFD, 0, SEEK_CUR));

	check_segments_data("the root's");
	if (st != -1) {
		/* C is reaped: its attachments are gone, the root's remain. */
		check_segment("sysv after C exited", sysv_id, sysv_key, SYSV_LEN, SYSV_MODE, false, 1);
		check_segment("sysv_gone after C exited", sysv_gone_id, IPC_PRIVATE, GONE_LEN, GONE_MODE, true, 1);
	}

	expect_no_children();

	/* Leave nothing in the kernel: sysv goes when the root exits, like sysv_gone. */
	if (remove_sysv() < 0)
		wl_fail("sysv: removing the segment of key 0x%08x: %s", (unsigned)sysv_key, strerror(errno));
	else if ((id = shmget(sysv_key, 0, 0)) >= 0 || errno != ENOENT)
		wl_fail("sysv: key 0x%08x after IPC_RMID: %s", (unsigned)sysv_key,
			id >= 0 ? "still names a segment" : strerror(errno));
	wl_finish(dir);
}
