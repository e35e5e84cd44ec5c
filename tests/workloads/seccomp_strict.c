/*
 * seccomp_strict: a child in seccomp strict mode (read, write, exit and
 * sigreturn only; any other call kills it), echoing bytes over two pipes,
 * each byte plus one.
 *
 * Usage: seccomp_strict DIR
 *
 * After the restore the child must still be in strict mode (Seccomp: 1 in
 * its status), still answer, and exit cleanly once its input closes: a
 * call strict mode forbids (one the restore left it to make) would have
 * killed it with SIGKILL.
 */
#include "workload.h"

#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static int to_child[2], from_child[2];

static bool ask(char c, char *got)
{
	return write(to_child[1], &c, 1) == 1 && read(from_child[0], got, 1) == 1;
}

static int seccomp_mode(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	int mode = -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Seccomp: %d", &mode) == 1)
			break;
	fclose(f);
	return mode;
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	if (pipe(to_child) || pipe(from_child))
		wl_die("pipe: %s", strerror(errno));
	pid_t child = fork();
	if (child < 0)
		wl_die("fork: %s", strerror(errno));
	if (child == 0) {
		char c;
		close(to_child[1]);
		close(from_child[0]);
		if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT))
			_exit(3);
		/* Raw calls only: strict mode allows exit, not exit_group. */
		for (;;) {
			if (syscall(SYS_read, to_child[0], &c, 1) != 1)
				syscall(SYS_exit, 0);
			c++;
			syscall(SYS_write, from_child[1], &c, 1);
		}
	}
	close(to_child[0]);
	close(from_child[1]);
	char got;
	if (!ask('a', &got) || got != 'b')
		wl_die("the child in strict mode does not answer");
	if (seccomp_mode(child) != 1)
		wl_die("the child is not in strict mode (Seccomp %d)", seccomp_mode(child));
	wl_info(dir, "child %d", (int)child);
	wl_ready(dir);
	wl_loop(dir, NULL);

	wl_expect_eq("the child's seccomp mode", 1, seccomp_mode(child));
	if (!ask('x', &got) || got != 'y')
		wl_fail("the child in strict mode does not answer after the restore");
	close(to_child[1]);
	int status;
	if (waitpid(child, &status, 0) != child)
		wl_fail("waitpid(%d): %s", (int)child, strerror(errno));
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_fail("the child in strict mode ended with status %#x (SIGKILL: a call strict mode forbids)", status);
	wl_finish(dir);
}
