/*
 * pipes: pipes and a FIFO with data buffered in them, at fixed fd numbers.
 *
 * Usage: pipes DIR
 *
 * fds held (besides 0-2):
 *   100/101  pipe A: read/write ends, 3000 bytes of known data buffered
 *   102/103  pipe B: read end / write end O_NONBLOCK, filled until EAGAIN
 *   104      DIR/fifo opened O_RDWR, 1000 bytes of known data buffered
 *   105/106  pipe C: empty, F_SETPIPE_SZ 256 KiB
 *   107/108  pipe D: always holds exactly one 8-byte record, the current
 *            generation (each iteration writes the new one and reads the old)
 * Verifies: each fd is there with the same access mode and O_NONBLOCK flag,
 * both ends of a pipe are one pipe, buffered byte counts (FIONREAD), pipe
 * sizes, pipe B is still full (a write gets EAGAIN), exact contents, and that
 * no other fds are open. Publishes the fd numbers in DIR/info.
 */
#include "workload.h"

#include <dirent.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

enum { A_R = 100, A_W, B_R, B_W, FIFO, C_R, C_W, D_R, D_W };
#define A_LEN 3000
#define FIFO_LEN 1000

static size_t b_len;
static int b_size, c_size;
static char tick_error[256];

static void make_pipe(int rfd, int wfd)
{
	int p[2];
	WL_CHECK_SYS(pipe(p));
	wl_move_fd(p[0], rfd, 0);
	wl_move_fd(p[1], wfd, 0);
}

/* Pipe D: write the new generation, then read back the previous one. */
static void tick(uint64_t gen)
{
	uint64_t old;
	if (write(D_W, &gen, 8) != 8 || read(D_R, &old, 8) != 8)
		snprintf(tick_error, sizeof(tick_error), "pipe D at generation %llu: %s", (unsigned long long)gen,
			 strerror(errno));
	else if (old != gen - 1 && !tick_error[0])
		snprintf(tick_error, sizeof(tick_error), "pipe D at generation %llu held %llu, expected %llu",
			 (unsigned long long)gen, (unsigned long long)old, (unsigned long long)gen - 1);
}

static void check_fd(const char *what, int fd, int accmode, bool nonblock)
{
	struct stat st;
	if (fstat(fd, &st) < 0) {
		wl_fail("%s: fd %d: %s", what, fd, strerror(errno));
		return;
	}
	if (!S_ISFIFO(st.st_mode))
		wl_fail("%s: fd %d is not a pipe/FIFO (mode 0%o)", what, fd, st.st_mode);
	int fl = fcntl(fd, F_GETFL);
	if ((fl & O_ACCMODE) != accmode)
		wl_fail("%s: fd %d access mode %d, expected %d", what, fd, fl & O_ACCMODE, accmode);
	if (!!(fl & O_NONBLOCK) != nonblock)
		wl_fail("%s: fd %d O_NONBLOCK is %s, expected %s", what, fd, fl & O_NONBLOCK ? "set" : "clear",
			nonblock ? "set" : "clear");
}

static void same_pipe(const char *what, int r, int w)
{
	struct stat a, b;
	if (fstat(r, &a) == 0 && fstat(w, &b) == 0 && (a.st_ino != b.st_ino || a.st_dev != b.st_dev))
		wl_fail("%s: fds %d and %d are different pipes (inodes %lu, %lu)", what, r, w, (unsigned long)a.st_ino,
			(unsigned long)b.st_ino);
}

static int buffered(int fd)
{
	int n = -1;
	if (ioctl(fd, FIONREAD, &n) < 0)
		return -1;
	return n;
}

/* Read exactly LEN buffered bytes from FD (made non-blocking) and compare with wl_fill(SEED). */
static void check_content(const char *what, int fd, size_t len, uint64_t seed)
{
	int n = buffered(fd);
	if (n != (int)len)
		wl_fail("%s: %d bytes buffered, expected %zu", what, n, len);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	uint8_t *buf = malloc(len + 1);
	size_t got = 0;
	for (;;) {
		ssize_t r = read(fd, buf + got, len + 1 - got);
		if (r <= 0)
			break;
		got += (size_t)r;
		if (got == len + 1)
			break;
	}
	if (got != len)
		wl_fail("%s: read %zu bytes, expected %zu", what, got, len);
	wl_expect_fill(what, buf, got < len ? got : len, seed);
	free(buf);
}

/* The open fds must be exactly 0-2 and ours: a restore must not leak its own. */
static void check_fd_set(const int *want, int nwant)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d) {
		wl_fail("opendir /proc/self/fd: %s", strerror(errno));
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		int fd = atoi(e->d_name), i;
		for (i = 0; i < nwant && want[i] != fd; i++)
			;
		if (fd > 2 && fd != dirfd(d) && i == nwant) {
			char link[PATH_MAX] = "?", path[64];
			snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
			ssize_t n = readlink(path, link, sizeof(link) - 1);
			link[n > 0 ? n : 1] = 0;
			wl_fail("unexpected fd %d open (%s)", fd, link);
		}
	}
	closedir(d);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	uint8_t buf[4096];

	make_pipe(A_R, A_W);
	uint8_t a[A_LEN];
	wl_fill(a, A_LEN, 0xa);
	wl_write_all(A_W, a, A_LEN);

	make_pipe(B_R, B_W);
	fcntl(B_W, F_SETFL, O_NONBLOCK);
	b_size = fcntl(B_W, F_GETPIPE_SZ);
	uint8_t *b = malloc((size_t)b_size);
	wl_fill(b, (size_t)b_size, 0xb);
	for (;;) {
		size_t chunk = (size_t)b_size - b_len < sizeof(buf) ? (size_t)b_size - b_len : sizeof(buf);
		ssize_t n = chunk ? write(B_W, b + b_len, chunk) : -1;
		if (n < 0 && (errno == EAGAIN || !chunk))
			break;
		WL_CHECK_SYS(n);
		b_len += (size_t)n;
	}
	if (b_len == 0)
		wl_die("pipe B took no data");

	char fifo[PATH_MAX];
	wl_path(fifo, sizeof(fifo), dir, "fifo");
	WL_CHECK_SYS(mkfifo(fifo, 0600));
	int f = open(fifo, O_RDWR);
	WL_CHECK_SYS(f);
	wl_move_fd(f, FIFO, 0);
	uint8_t fdata[FIFO_LEN];
	wl_fill(fdata, FIFO_LEN, 0xf1f0);
	wl_write_all(FIFO, fdata, FIFO_LEN);

	make_pipe(C_R, C_W);
	WL_CHECK_SYS(fcntl(C_W, F_SETPIPE_SZ, 256 * 1024));
	c_size = fcntl(C_R, F_GETPIPE_SZ);

	make_pipe(D_R, D_W);
	uint64_t zero = 0;
	wl_write_all(D_W, &zero, 8);

	wl_info(dir, "pipe_a_read %d\npipe_a_write %d\npipe_b_read %d\npipe_b_write %d\nfifo %d\npipe_c_read %d\n"
		     "pipe_c_write %d\npipe_d_read %d\npipe_d_write %d\npipe_b_len %zu\n",
		A_R, A_W, B_R, B_W, FIFO, C_R, C_W, D_R, D_W, b_len);
	wl_ready(dir);
	wl_loop(dir, tick);

	const int fds[] = {A_R, A_W, B_R, B_W, FIFO, C_R, C_W, D_R, D_W};
	check_fd_set(fds, sizeof(fds) / sizeof(fds[0]));
	check_fd("pipe A read end", A_R, O_RDONLY, false);
	check_fd("pipe A write end", A_W, O_WRONLY, false);
	check_fd("pipe B read end", B_R, O_RDONLY, false);
	check_fd("pipe B write end", B_W, O_WRONLY, true);
	check_fd("FIFO", FIFO, O_RDWR, false);
	check_fd("pipe C read end", C_R, O_RDONLY, false);
	check_fd("pipe C write end", C_W, O_WRONLY, false);
	check_fd("pipe D read end", D_R, O_RDONLY, false);
	check_fd("pipe D write end", D_W, O_WRONLY, false);
	same_pipe("pipe A", A_R, A_W);
	same_pipe("pipe B", B_R, B_W);
	same_pipe("pipe C", C_R, C_W);
	same_pipe("pipe D", D_R, D_W);

	char link[PATH_MAX] = "", path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", FIFO);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = 0;
	if (strcmp(link, fifo) != 0)
		wl_fail("FIFO fd %d links to \"%s\", expected \"%s\"", FIFO, link, fifo);

	wl_expect_eq("pipe B F_GETPIPE_SZ", b_size, fcntl(B_R, F_GETPIPE_SZ));
	wl_expect_eq("pipe C F_GETPIPE_SZ", c_size, fcntl(C_R, F_GETPIPE_SZ));
	if (write(B_W, "x", 1) != -1 || errno != EAGAIN)
		wl_fail("pipe B is no longer full: a non-blocking 1-byte write did not get EAGAIN");
	if (tick_error[0])
		wl_fail("%s", tick_error);
	uint64_t rec = 0;
	wl_expect_eq("pipe D bytes buffered", 8, buffered(D_R));
	if (read(D_R, &rec, 8) != 8 || rec != wl_generation)
		wl_fail("pipe D holds generation %llu, the process is at generation %llu", (unsigned long long)rec,
			(unsigned long long)wl_generation);

	check_content("pipe A", A_R, A_LEN, 0xa);
	check_content("pipe B", B_R, b_len, 0xb);
	check_content("FIFO", FIFO, FIFO_LEN, 0xf1f0);
	check_content("pipe C", C_R, 0, 0);
	wl_finish(dir);
}
