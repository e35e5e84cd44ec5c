/*
 * vfork: a parent suspended in vfork(2) while its child runs on the
 * parent's own memory (one address space, two processes). stasis refuses
 * to dump this (restore would split the address space); the test checks
 * the refusal, and that both processes run on unharmed afterwards.
 *
 * Usage: vfork DIR
 *
 * The child writes DIR/ready with the parent's pid (the parent cannot run
 * until the child exits), sleeps until DIR/check exists, and _exits 0. The
 * parent then checks the counter the child advanced in their shared memory
 * and writes DIR/result.
 */
#include "workload.h"

#include <sys/wait.h>

static volatile uint64_t shared_counter;

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	pid_t parent = getpid();
	pid_t child = vfork();
	if (child < 0)
		wl_die("vfork: %s", strerror(errno));
	if (child == 0) {
		/* Only what the shared memory tolerates: no return from here. */
		char buf[32];
		int n = snprintf(buf, sizeof(buf), "%d\n", (int)parent);
		if (wl_write_file(dir, "ready", buf, (size_t)n))
			_exit(3);
		struct timespec ten_ms = { 0, 10 * 1000 * 1000 };
		while (!wl_should_check(dir)) {
			shared_counter++;
			nanosleep(&ten_ms, NULL);
		}
		_exit(0);
	}
	int status;
	if (waitpid(child, &status, 0) != child)
		wl_result(dir, false, "waitpid(%d): %s", (int)child, strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_result(dir, false, "the vfork child ended with status %#x", status);
	if (shared_counter == 0)
		wl_result(dir, false, "the child's writes to the shared memory are not seen");
	wl_result(dir, true, "counter %llu", (unsigned long long)shared_counter);
}
