/*
 * clone_files: a child made with CLONE_FILES shares the workload's fd
 * table (a thread library's helper process, some daemons' workers).
 *
 * Usage: clone_files DIR
 *
 * The child pauses (and dies with the workload: PDEATHSIG). Verifies that
 * an fd opened by the child after ready shows up in the parent's table
 * (they still share it).
 */
#include "workload.h"

#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static char stack[64 * 1024];
static volatile int child_fd = -1;

static int child_main(void *arg)
{
	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (;;)
		pause();
	return 0;
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	pid_t child = clone(child_main, stack + sizeof(stack), CLONE_FILES | SIGCHLD, NULL);
	if (child < 0)
		wl_die("clone(CLONE_FILES): %s", strerror(errno));
	wl_info(dir, "pids %d\n", (int)child);
	wl_ready(dir);
	wl_loop(dir, NULL);
	/* An fd the parent opens is in the child's table too. */
	int fd = open("/dev/null", O_RDONLY);
	char path[64], link[64] = "";
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)child, fd);
	if (readlink(path, link, sizeof(link) - 1) < 0 || strcmp(link, "/dev/null") != 0)
		wl_fail("the child does not share the fd table (fd %d: %s)", fd, link);
	kill(child, SIGKILL);
	wl_finish(dir);
}
