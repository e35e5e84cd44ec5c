/*
 * locks: file locks of each kind, held while running.
 *
 * Usage: locks DIR
 *
 * fds held (besides 0-2), files in DIR:
 *   50  flock.dat   flock LOCK_EX
 *   51  shared.dat  flock LOCK_SH, and 52 a dup of it (one description)
 *   53  posix.dat   O_RDWR, POSIX write lock on bytes 100-199, read lock
 *                   from 300 to the end of the file
 *   54  ofd.dat     O_RDWR, OFD write lock on bytes 0-9
 *   55  ofd.dat     another description, OFD read lock on bytes 20-29
 * Verifies, from a child process (a process never conflicts with its own
 * POSIX locks): each lock is held with its kind and range, and nothing
 * more (the bytes between the ranges are free).
 */
#include "workload.h"

#include <sys/file.h>
#include <sys/wait.h>

enum { FLOCK_EX = 50, FLOCK_SH, FLOCK_SH_DUP, POSIX, OFD_W, OFD_R };

static int open_at(const char *dir, const char *name, int target)
{
	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, name);
	int fd = open(path, O_RDWR | O_CREAT, 0644);
	if (fd < 0)
		wl_die("open %s: %s", path, strerror(errno));
	return wl_move_fd(fd, target, 0);
}

static int record_lock(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
	return fcntl(fd, cmd, &fl);
}

/* In a child: the type of the first lock that conflicts with TYPE on the range, F_UNLCK if none. */
static short conflict(int fd, int cmd, short type, off_t start, off_t len, pid_t *pid)
{
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
	if (fcntl(fd, cmd, &fl) != 0)
		return -1;
	if (pid)
		*pid = fl.l_pid;
	return fl.l_type;
}

/* In a child: whether flock(op | LOCK_NB) on a new description of NAME succeeds. */
static bool flock_ok(const char *dir, const char *name, int op)
{
	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, name);
	int fd = open(path, O_RDONLY);
	bool ok = fd >= 0 && flock(fd, op | LOCK_NB) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

static int check_from_child(const char *dir, pid_t parent)
{
	int bad = 0;
#define CHILD_EXPECT(cond, ...)                                                                                        \
	do {                                                                                                           \
		if (!(cond)) {                                                                                         \
			wl_log("FAIL: " __VA_ARGS__);                                                                  \
			bad++;                                                                                         \
		}                                                                                                      \
	} while (0)
	CHILD_EXPECT(!flock_ok(dir, "flock.dat", LOCK_SH), "flock.dat: a shared flock was granted (LOCK_EX lost)");
	CHILD_EXPECT(flock_ok(dir, "shared.dat", LOCK_SH), "shared.dat: a shared flock was refused");
	CHILD_EXPECT(!flock_ok(dir, "shared.dat", LOCK_EX), "shared.dat: an exclusive flock was granted (LOCK_SH lost)");

	pid_t holder = 0;
	short t = conflict(POSIX, F_GETLK, F_RDLCK, 100, 100, &holder);
	CHILD_EXPECT(t == F_WRLCK && holder == parent, "posix.dat 100-199: conflict %d held by %d, expected a write lock of %d",
		     t, holder, parent);
	t = conflict(POSIX, F_GETLK, F_WRLCK, 99, 1, NULL);
	CHILD_EXPECT(t == F_UNLCK, "posix.dat byte 99: locked (%d)", t);
	t = conflict(POSIX, F_GETLK, F_WRLCK, 200, 100, NULL);
	CHILD_EXPECT(t == F_UNLCK, "posix.dat 200-299: locked (%d)", t);
	t = conflict(POSIX, F_GETLK, F_RDLCK, 300, 0, NULL);
	CHILD_EXPECT(t == F_UNLCK, "posix.dat from 300: a read lock conflicts (%d), it should be a read lock", t);
	t = conflict(POSIX, F_GETLK, F_WRLCK, 1000000, 1, &holder);
	CHILD_EXPECT(t == F_RDLCK && holder == parent, "posix.dat byte 1000000: conflict %d, expected the read lock to EOF", t);

	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, "ofd.dat");
	int fd = open(path, O_RDWR);
	t = conflict(fd, F_OFD_GETLK, F_RDLCK, 0, 10, NULL);
	CHILD_EXPECT(t == F_WRLCK, "ofd.dat 0-9: conflict %d, expected an OFD write lock", t);
	t = conflict(fd, F_OFD_GETLK, F_WRLCK, 10, 10, NULL);
	CHILD_EXPECT(t == F_UNLCK, "ofd.dat 10-19: locked (%d)", t);
	t = conflict(fd, F_OFD_GETLK, F_WRLCK, 20, 10, NULL);
	CHILD_EXPECT(t == F_RDLCK, "ofd.dat 20-29: conflict %d, expected an OFD read lock", t);
	t = conflict(fd, F_OFD_GETLK, F_RDLCK, 20, 10, NULL);
	CHILD_EXPECT(t == F_UNLCK, "ofd.dat 20-29: a read lock conflicts (%d)", t);
	return bad;
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);

	open_at(dir, "flock.dat", FLOCK_EX);
	WL_CHECK_SYS(flock(FLOCK_EX, LOCK_EX));
	open_at(dir, "shared.dat", FLOCK_SH);
	WL_CHECK_SYS(flock(FLOCK_SH, LOCK_SH));
	WL_CHECK_SYS(dup2(FLOCK_SH, FLOCK_SH_DUP));
	open_at(dir, "posix.dat", POSIX);
	WL_CHECK_SYS(record_lock(POSIX, F_SETLK, F_WRLCK, 100, 100));
	WL_CHECK_SYS(record_lock(POSIX, F_SETLK, F_RDLCK, 300, 0));
	open_at(dir, "ofd.dat", OFD_W);
	WL_CHECK_SYS(record_lock(OFD_W, F_OFD_SETLK, F_WRLCK, 0, 10));
	open_at(dir, "ofd.dat", OFD_R);
	WL_CHECK_SYS(record_lock(OFD_R, F_OFD_SETLK, F_RDLCK, 20, 10));

	wl_ready(dir);
	wl_loop(dir, NULL);

	pid_t parent = getpid();
	pid_t child = fork();
	if (child == 0)
		_exit(check_from_child(dir, parent) ? 1 : 0);
	int status = 0;
	if (child < 0 || waitpid(child, &status, 0) != child)
		wl_fail("fork or wait of the checking child: %s", strerror(errno));
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_fail("the checking child found locks missing or wrong (status %d; see the log)", status);
	wl_finish(dir);
}
