/*
 * deleted: files deleted while mapped or open, as a program that maps a temp
 * file and unlinks it, or runs on after its library was replaced.
 *
 * Usage: deleted DIR
 *
 *   shared.dat  3 pages, mode 0640, owner 1234:5678, unlinked. Mapped
 *               MAP_SHARED read-write, held at fd 60 (O_RDWR, offset 100)
 *               and at fd 61, a description of its own opened before the
 *               unlink (O_RDONLY, offset 200). Each iteration writes the
 *               generation into the mapping's first 8 bytes: the fds must see
 *               the mapping's writes (one inode), and it must hold the
 *               generation the process is at.
 *   private.dat 4 pages, mapped MAP_PRIVATE read-write and unlinked, no fd:
 *               page 0 overwritten in memory (copy-on-write), the file keeps
 *               its bytes; pages 1-3 read from the file.
 *   code.dat    2 pages, mapped MAP_PRIVATE read+exec and unlinked, no fd
 *               (a replaced library).
 *   ro.dat      fd 62 O_RDONLY, mode 0400, owner 4321:4321, offset 7, unlinked.
 *   wo.dat      fd 63 O_WRONLY|O_APPEND, mode 0200, 5000 bytes, unlinked.
 *   empty.dat   fd 64 O_RDWR, empty, unlinked (another file than the others).
 * Verifies: contents, sizes, modes, owners, nlink 0, offsets, flags, the names
 * /proc shows ("... (deleted)"), that the fds and the mapping share a file,
 * and that the other files are distinct inodes.
 */
#include "workload.h"

#include <sys/mman.h>
#include <sys/stat.h>

enum { SHARED_RW = 60, SHARED_RO, RO, WO, EMPTY };
#define PAGE 4096
static uint64_t *shared;
static uint8_t *private_map, *code;

static void make_file(const char *dir, const char *name, size_t len, uint64_t seed, mode_t mode, uid_t uid, gid_t gid)
{
	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	WL_CHECK_SYS(fd);
	uint8_t *buf = malloc(len + 1);
	wl_fill(buf, len, seed);
	wl_write_all(fd, buf, len);
	free(buf);
	WL_CHECK_SYS(fchown(fd, uid, gid));
	WL_CHECK_SYS(fchmod(fd, mode));
	close(fd);
}

static int open_file(const char *dir, const char *name, int flags, int target)
{
	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, name);
	int fd = open(path, flags);
	if (fd < 0)
		wl_die("open %s: %s", path, strerror(errno));
	return wl_move_fd(fd, target, 0);
}

static void *map_file(const char *dir, const char *name, size_t len, int prot, int flags)
{
	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, name);
	int fd = open(path, (prot & PROT_WRITE) && (flags & MAP_SHARED) ? O_RDWR : O_RDONLY);
	WL_CHECK_SYS(fd);
	void *p = mmap(NULL, len, prot, flags, fd, 0);
	if (p == MAP_FAILED)
		wl_die("mmap %s: %s", path, strerror(errno));
	close(fd);
	return p;
}

static void unlink_file(const char *dir, const char *name)
{
	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, name);
	WL_CHECK_SYS(unlink(path));
}

static void tick(uint64_t gen)
{
	shared[0] = gen;
}

static void expect_stat(const char *what, int fd, off_t size, mode_t mode, uid_t uid, gid_t gid, struct stat *st)
{
	if (fstat(fd, st) != 0) {
		wl_fail("%s: fstat: %s", what, strerror(errno));
		return;
	}
	if (st->st_size != size)
		wl_fail("%s: size %lld, expected %lld", what, (long long)st->st_size, (long long)size);
	if ((st->st_mode & 07777) != mode)
		wl_fail("%s: mode %o, expected %o", what, st->st_mode & 07777, mode);
	if (st->st_uid != uid || st->st_gid != gid)
		wl_fail("%s: owner %u:%u, expected %u:%u", what, st->st_uid, st->st_gid, uid, gid);
	if (st->st_nlink != 0)
		wl_fail("%s: nlink %lu, expected 0", what, (unsigned long)st->st_nlink);
}

static void expect_fd(const char *what, int fd, int flags, off_t offset, const char *dir, const char *name)
{
	int fl = fcntl(fd, F_GETFL) & (O_ACCMODE | O_APPEND);
	if (fl != flags)
		wl_fail("%s (fd %d): F_GETFL 0%o, expected 0%o", what, fd, fl, flags);
	off_t at = lseek(fd, 0, SEEK_CUR);
	if (at != offset)
		wl_fail("%s (fd %d): offset %lld, expected %lld", what, fd, (long long)at, (long long)offset);
	char path[64], link[PATH_MAX] = "", want[PATH_MAX];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = 0;
	snprintf(want, sizeof(want), "%s/%s (deleted)", dir, name);
	if (strcmp(link, want) != 0)
		wl_fail("%s (fd %d): links to \"%s\", expected \"%s\"", what, fd, link, want);
}

/* The line of /proc/self/maps for the mapping at ADDR names "DIR/NAME (deleted)". */
static void expect_mapped_name(const char *what, const void *addr, const char *dir, const char *name)
{
	char want[PATH_MAX], line[PATH_MAX + 256], start[32];
	snprintf(want, sizeof(want), "%s/%s (deleted)", dir, name);
	snprintf(start, sizeof(start), "%lx-", (unsigned long)addr);
	FILE *f = fopen("/proc/self/maps", "r");
	bool found = false;
	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, start, strlen(start)) == 0) {
			found = true;
			line[strcspn(line, "\n")] = 0;
			if (!strstr(line, want))
				wl_fail("%s: /proc/self/maps shows \"%s\", expected the name \"%s\"", what, line, want);
		}
	if (f)
		fclose(f);
	if (!found)
		wl_fail("%s: no mapping at %p", what, addr);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);

	make_file(dir, "shared.dat", 3 * PAGE, 60, 0640, 1234, 5678);
	shared = map_file(dir, "shared.dat", 3 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED);
	open_file(dir, "shared.dat", O_RDWR, SHARED_RW);
	WL_CHECK_SYS(lseek(SHARED_RW, 100, SEEK_SET));
	open_file(dir, "shared.dat", O_RDONLY, SHARED_RO);
	WL_CHECK_SYS(lseek(SHARED_RO, 200, SEEK_SET));
	unlink_file(dir, "shared.dat");

	make_file(dir, "private.dat", 4 * PAGE, 61, 0644, 0, 0);
	private_map = map_file(dir, "private.dat", 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	wl_fill(private_map, PAGE, 161);
	unlink_file(dir, "private.dat");

	make_file(dir, "code.dat", 2 * PAGE, 62, 0755, 0, 0);
	code = map_file(dir, "code.dat", 2 * PAGE, PROT_READ | PROT_EXEC, MAP_PRIVATE);
	unlink_file(dir, "code.dat");

	make_file(dir, "ro.dat", 3000, 63, 0400, 4321, 4321);
	open_file(dir, "ro.dat", O_RDONLY, RO);
	WL_CHECK_SYS(lseek(RO, 7, SEEK_SET));
	unlink_file(dir, "ro.dat");

	make_file(dir, "wo.dat", 5000, 64, 0200, 0, 0);
	open_file(dir, "wo.dat", O_WRONLY | O_APPEND, WO);
	unlink_file(dir, "wo.dat");

	make_file(dir, "empty.dat", 0, 0, 0600, 0, 0);
	open_file(dir, "empty.dat", O_RDWR, EMPTY);
	unlink_file(dir, "empty.dat");

	wl_ready(dir);
	wl_loop(dir, tick);

	struct stat st, st2;
	uint8_t *buf = malloc(5 * PAGE);

	/* shared.dat: the mapping holds the generation, the fds see it. */
	wl_expect_eq("shared mapping: generation in its first 8 bytes", (long long)wl_generation, (long long)shared[0]);
	uint64_t seen = 0;
	if (pread(SHARED_RO, &seen, 8, 0) != 8 || seen != shared[0])
		wl_fail("shared.dat fd %d reads %llu at 0, the mapping holds %llu", SHARED_RO, (unsigned long long)seen,
			(unsigned long long)shared[0]);
	shared[1] = 0x5eed;
	if (pread(SHARED_RW, &seen, 8, 8) != 8 || seen != 0x5eed)
		wl_fail("shared.dat fd %d does not see a write through the mapping", SHARED_RW);
	uint64_t v = 0xfeed;
	if (pwrite(SHARED_RW, &v, 8, 16) != 8 || shared[2] != 0xfeed)
		wl_fail("the shared mapping does not see a write through fd %d", SHARED_RW);
	/* Past the 24 bytes written above, the file holds what it was made with. */
	wl_pread_all(SHARED_RO, buf, 3 * PAGE, 0);
	wl_fill(buf + 3 * PAGE, 2 * PAGE, 60);
	if (memcmp(buf + 24, buf + 3 * PAGE + 24, 2 * PAGE - 24) != 0)
		wl_fail("shared.dat read through fd %d lost the bytes it was made with", SHARED_RO);
	if (memcmp(buf, shared, 3 * PAGE) != 0)
		wl_fail("shared.dat read through fd %d differs from its mapping", SHARED_RO);
	expect_stat("shared.dat", SHARED_RW, 3 * PAGE, 0640, 1234, 5678, &st);
	if (fstat(SHARED_RO, &st2) == 0 && (st2.st_ino != st.st_ino || st2.st_dev != st.st_dev))
		wl_fail("shared.dat fds %d and %d are on different files", SHARED_RW, SHARED_RO);
	expect_fd("shared.dat", SHARED_RW, O_RDWR, 100, dir, "shared.dat");
	expect_fd("shared.dat", SHARED_RO, O_RDONLY, 200, dir, "shared.dat");
	expect_mapped_name("shared mapping", shared, dir, "shared.dat");

	/* private.dat: page 0 is the process's own, pages 1-3 the file's. */
	wl_expect_fill("private mapping page 0 (written)", private_map, PAGE, 161);
	wl_fill(buf, 4 * PAGE, 61);
	if (memcmp(private_map + PAGE, buf + PAGE, 3 * PAGE) != 0)
		wl_fail("private mapping pages 1-3 differ from the file's bytes");
	expect_mapped_name("private mapping", private_map, dir, "private.dat");

	wl_fill(buf, 2 * PAGE, 62);
	if (memcmp(code, buf, 2 * PAGE) != 0)
		wl_fail("read+exec mapping differs from the file's bytes");
	expect_mapped_name("read+exec mapping", code, dir, "code.dat");

	expect_stat("ro.dat", RO, 3000, 0400, 4321, 4321, &st2);
	if (st2.st_ino == st.st_ino)
		wl_fail("ro.dat is the same file as shared.dat");
	expect_fd("ro.dat", RO, O_RDONLY, 7, dir, "ro.dat");
	wl_pread_all(RO, buf, 3000, 0);
	wl_expect_fill("ro.dat", buf, 3000, 63);

	expect_stat("wo.dat", WO, 5000, 0200, 0, 0, &st2);
	expect_fd("wo.dat", WO, O_WRONLY | O_APPEND, 0, dir, "wo.dat");
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", WO);
	int rd = open(path, O_RDONLY);
	if (rd < 0 || wl_pread_all(rd, buf, 5000, 0) != 5000)
		wl_fail("wo.dat: cannot read it back through /proc/self/fd/%d", WO);
	else
		wl_expect_fill("wo.dat", buf, 5000, 64);
	if (rd >= 0)
		close(rd);
	wl_write_all(WO, "x", 1);
	if (fstat(WO, &st2) == 0 && st2.st_size != 5001)
		wl_fail("wo.dat: an O_APPEND write made it %lld bytes, expected 5001", (long long)st2.st_size);

	expect_stat("empty.dat", EMPTY, 0, 0600, 0, 0, &st2);
	expect_fd("empty.dat", EMPTY, O_RDWR, 0, dir, "empty.dat");
	free(buf);
	wl_finish(dir);
}
