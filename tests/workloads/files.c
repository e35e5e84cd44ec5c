/*
 * files: regular files, devices, a directory and a deleted file open at fixed
 * fd numbers with particular offsets and flags.
 *
 * Usage: files DIR
 *
 * fds held (besides 0-2):
 *   50  DIR/rw.dat O_RDWR, 20000 known bytes, offset 12345
 *   51  DIR/append.log O_WRONLY|O_APPEND, holds "first line\n"
 *   52  DIR/ro.dat O_RDONLY with FD_CLOEXEC, offset 0
 *   53  pipe read end, O_NONBLOCK (empty)      54  its write end
 *   55  DIR/sub, O_RDONLY|O_DIRECTORY (holds inner.txt)
 *   56  /dev/null O_RDWR    57  /dev/zero O_RDONLY    58  /dev/urandom O_RDONLY
 *   59  DIR/deleted.dat O_RDWR, 100 KiB known bytes, unlinked, offset 4321
 *   60  DIR/gen.dat O_WRONLY: each iteration appends the generation (8 bytes),
 *       so its offset is 8 * generation and it holds 1, 2, ..., generation
 * Verifies: exactly these fds are open, offsets (lseek SEEK_CUR), F_GETFL and
 * F_GETFD flags, the /proc/self/fd links, contents, device behaviour, that
 * O_APPEND still appends. Publishes the fd numbers in DIR/info.
 */
#include "workload.h"

#include <dirent.h>
#include <sys/stat.h>

enum { RW = 50, APPEND, RO, NB_R, NB_W, DIRFD, DEVNULL, DEVZERO, URANDOM, DELETED, GEN };
#define RW_LEN 20000
#define DEL_LEN (100 * 1024)
static const char first_line[] = "first line\n";
static const char inner[] = "inner file content\n";
static char tick_error[256];

static int open_at(const char *dir, const char *name, int flags, int target)
{
	char path[PATH_MAX];
	if (name[0] == '/')
		snprintf(path, sizeof(path), "%s", name);
	else
		wl_path(path, sizeof(path), dir, name);
	int fd = open(path, flags, 0644);
	if (fd < 0)
		wl_die("open %s: %s", path, strerror(errno));
	return wl_move_fd(fd, target, flags & O_CLOEXEC);
}

static void create_file(const char *dir, const char *name, size_t len, uint64_t seed)
{
	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
	WL_CHECK_SYS(fd);
	uint8_t *buf = malloc(len);
	wl_fill(buf, len, seed);
	wl_write_all(fd, buf, len);
	free(buf);
	close(fd);
}

static void tick(uint64_t gen)
{
	if (write(GEN, &gen, 8) != 8 && !tick_error[0])
		snprintf(tick_error, sizeof(tick_error), "write gen.dat at generation %llu: %s",
			 (unsigned long long)gen, strerror(errno));
}

static void expect_offset(const char *what, int fd, off_t want)
{
	off_t got = lseek(fd, 0, SEEK_CUR);
	if (got != want)
		wl_fail("%s (fd %d): offset %lld, expected %lld", what, fd, (long long)got, (long long)want);
}

static void expect_flags(const char *what, int fd, int fl_want, int fd_want)
{
	int fl = fcntl(fd, F_GETFL), fdf = fcntl(fd, F_GETFD);
	int mask = O_ACCMODE | O_APPEND | O_NONBLOCK | O_DIRECTORY;
	if (fl < 0 || (fl & mask) != fl_want)
		wl_fail("%s (fd %d): F_GETFL 0%o, expected 0%o (masked 0%o)", what, fd, fl & mask, fl_want, mask);
	if (fdf != fd_want)
		wl_fail("%s (fd %d): F_GETFD %d, expected %d", what, fd, fdf, fd_want);
}

static void expect_link(const char *what, int fd, const char *want)
{
	char path[64], link[PATH_MAX] = "";
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = 0;
	if (strcmp(link, want) != 0)
		wl_fail("%s (fd %d): links to \"%s\", expected \"%s\"", what, fd, link, want);
}

static void expect_content(const char *what, int fd, size_t len, uint64_t seed)
{
	uint8_t *buf = malloc(len + 1);
	ssize_t n = wl_pread_all(fd, buf, len + 1, 0);
	if (n != (ssize_t)len)
		wl_fail("%s (fd %d): holds %zd bytes, expected %zu", what, fd, n, len);
	if (n > 0)
		wl_expect_fill(what, buf, (size_t)n < len ? (size_t)n : len, seed);
	free(buf);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	char path[PATH_MAX];

	create_file(dir, "rw.dat", RW_LEN, 50);
	open_at(dir, "rw.dat", O_RDWR, RW);
	WL_CHECK_SYS(lseek(RW, 12345, SEEK_SET));

	open_at(dir, "append.log", O_WRONLY | O_CREAT | O_APPEND, APPEND);
	wl_write_all(APPEND, first_line, strlen(first_line));

	create_file(dir, "ro.dat", 5000, 52);
	open_at(dir, "ro.dat", O_RDONLY | O_CLOEXEC, RO);

	int p[2];
	WL_CHECK_SYS(pipe(p));
	wl_move_fd(p[0], NB_R, 0);
	wl_move_fd(p[1], NB_W, 0);
	WL_CHECK_SYS(fcntl(NB_R, F_SETFL, O_NONBLOCK));

	wl_path(path, sizeof(path), dir, "sub");
	WL_CHECK_SYS(mkdir(path, 0755));
	open_at(dir, "sub", O_RDONLY | O_DIRECTORY, DIRFD);
	int fd = openat(DIRFD, "inner.txt", O_WRONLY | O_CREAT | O_EXCL, 0644);
	WL_CHECK_SYS(fd);
	wl_write_all(fd, inner, strlen(inner));
	close(fd);

	open_at(dir, "/dev/null", O_RDWR, DEVNULL);
	open_at(dir, "/dev/zero", O_RDONLY, DEVZERO);
	open_at(dir, "/dev/urandom", O_RDONLY, URANDOM);

	create_file(dir, "deleted.dat", DEL_LEN, 59);
	open_at(dir, "deleted.dat", O_RDWR, DELETED);
	wl_path(path, sizeof(path), dir, "deleted.dat");
	WL_CHECK_SYS(unlink(path));
	WL_CHECK_SYS(lseek(DELETED, 4321, SEEK_SET));

	open_at(dir, "gen.dat", O_WRONLY | O_CREAT | O_TRUNC, GEN);

	wl_info(dir, "rw_fd %d\nappend_fd %d\nro_fd %d\npipe_read_fd %d\npipe_write_fd %d\ndir_fd %d\nnull_fd %d\n"
		     "zero_fd %d\nurandom_fd %d\ndeleted_fd %d\ngen_fd %d\n",
		RW, APPEND, RO, NB_R, NB_W, DIRFD, DEVNULL, DEVZERO, URANDOM, DELETED, GEN);
	wl_ready(dir);
	wl_loop(dir, tick);

	/* Exactly 0-2 and ours: a restore must not leak its own fds. */
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	while (d && (e = readdir(d))) {
		int n = atoi(e->d_name);
		if (e->d_name[0] != '.' && n > 2 && n != dirfd(d) && (n < RW || n > GEN)) {
			char link[PATH_MAX] = "?";
			snprintf(path, sizeof(path), "/proc/self/fd/%d", n);
			ssize_t len = readlink(path, link, sizeof(link) - 1);
			link[len > 0 ? len : 1] = 0;
			wl_fail("unexpected fd %d open (%s)", n, link);
		}
	}
	if (d)
		closedir(d);

	expect_flags("rw.dat", RW, O_RDWR, 0);
	expect_offset("rw.dat", RW, 12345);
	expect_content("rw.dat", RW, RW_LEN, 50);
	wl_path(path, sizeof(path), dir, "rw.dat");
	expect_link("rw.dat", RW, path);

	expect_flags("append.log", APPEND, O_WRONLY | O_APPEND, 0);
	expect_offset("append.log", APPEND, (off_t)strlen(first_line));
	WL_CHECK_SYS(lseek(APPEND, 0, SEEK_SET));
	wl_write_all(APPEND, "after check\n", 12);
	struct stat st;
	fstat(APPEND, &st);
	wl_expect_eq("append.log size after an O_APPEND write", (long long)strlen(first_line) + 12, st.st_size);
	expect_offset("append.log after an O_APPEND write", APPEND, st.st_size);

	expect_flags("ro.dat", RO, O_RDONLY, FD_CLOEXEC);
	expect_offset("ro.dat", RO, 0);
	expect_content("ro.dat", RO, 5000, 52);

	expect_flags("pipe read end", NB_R, O_RDONLY | O_NONBLOCK, 0);
	expect_flags("pipe write end", NB_W, O_WRONLY, 0);
	char c;
	if (read(NB_R, &c, 1) != -1 || errno != EAGAIN)
		wl_fail("pipe read end (fd %d): read of the empty O_NONBLOCK pipe did not get EAGAIN", NB_R);

	expect_flags("directory", DIRFD, O_RDONLY | O_DIRECTORY, 0);
	wl_path(path, sizeof(path), dir, "sub");
	expect_link("directory", DIRFD, path);
	char got[64] = "";
	fd = openat(DIRFD, "inner.txt", O_RDONLY);
	if (fd < 0 || read(fd, got, sizeof(got) - 1) < 0 || strcmp(got, inner) != 0)
		wl_fail("openat(dir fd %d, \"inner.txt\"): %s, read \"%s\"", DIRFD, fd < 0 ? strerror(errno) : "opened",
			got);
	if (fd >= 0)
		close(fd);

	expect_flags("/dev/null", DEVNULL, O_RDWR, 0);
	expect_link("/dev/null", DEVNULL, "/dev/null");
	if (write(DEVNULL, "x", 1) != 1 || read(DEVNULL, &c, 1) != 0)
		wl_fail("/dev/null (fd %d) does not behave like /dev/null", DEVNULL);
	expect_flags("/dev/zero", DEVZERO, O_RDONLY, 0);
	expect_link("/dev/zero", DEVZERO, "/dev/zero");
	uint8_t zeros[4096];
	memset(zeros, 0xff, sizeof(zeros));
	ssize_t zn = read(DEVZERO, zeros, sizeof(zeros));
	for (ssize_t i = 0; i < zn; i++)
		if (zeros[i]) {
			zn = -1;
			break;
		}
	if (zn != (ssize_t)sizeof(zeros))
		wl_fail("/dev/zero (fd %d) did not read 4096 zero bytes", DEVZERO);
	expect_flags("/dev/urandom", URANDOM, O_RDONLY, 0);
	expect_link("/dev/urandom", URANDOM, "/dev/urandom");
	if (read(URANDOM, zeros, 16) != 16)
		wl_fail("/dev/urandom (fd %d): read: %s", URANDOM, strerror(errno));

	expect_flags("deleted file", DELETED, O_RDWR, 0);
	expect_offset("deleted file", DELETED, 4321);
	expect_content("deleted file", DELETED, DEL_LEN, 59);
	wl_path(path, sizeof(path), dir, "deleted.dat (deleted)");
	expect_link("deleted file", DELETED, path);
	if (fstat(DELETED, &st) == 0 && st.st_nlink != 0)
		wl_fail("deleted file (fd %d): st_nlink %lu, expected 0", DELETED, (unsigned long)st.st_nlink);

	if (tick_error[0])
		wl_fail("%s", tick_error);
	expect_flags("gen.dat", GEN, O_WRONLY, 0);
	off_t want = (off_t)(8 * wl_generation);
	expect_offset("gen.dat", GEN, want);
	uint64_t *recs = malloc((size_t)want + 8);
	ssize_t rn = (fstat(GEN, &st), st.st_size);
	if (rn != want)
		wl_fail("gen.dat: size %zd, expected %lld (8 * generation)", rn, (long long)want);
	wl_path(path, sizeof(path), dir, "gen.dat");
	fd = open(path, O_RDONLY);
	rn = fd < 0 ? -1 : wl_pread_all(fd, recs, (size_t)want, 0);
	for (ssize_t i = 0; i < rn / 8; i++)
		if (recs[i] != (uint64_t)i + 1) {
			wl_fail("gen.dat record %zd is %llu, expected %zd", i, (unsigned long long)recs[i], i + 1);
			break;
		}
	if (fd >= 0)
		close(fd);
	wl_finish(dir);
}
