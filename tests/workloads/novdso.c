/*
 * novdso: a process that unmapped its [vdso] (as some sandboxes and
 * language runtimes do), so every time call is a real system call.
 *
 * Usage: novdso DIR
 *
 * Unmaps [vdso], then counts generations (about 10 ms each, paced with
 * nanosleep, which is a system call) without calling anything the vdso
 * would serve (clock_gettime, gettimeofday, time). Verifies: still no
 * [vdso] in /proc/self/maps, and the generation counted on.
 */
#include "workload.h"

#include <sys/mman.h>

static bool has_vdso(void)
{
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");
	bool found = false;
	while (f && fgets(line, sizeof(line), f))
		if (strstr(line, "[vdso]"))
			found = true;
	if (f)
		fclose(f);
	return found;
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (strstr(line, "[vdso]") && sscanf(line, "%lx-%lx", &a, &b) == 2)
			WL_CHECK_SYS(munmap((void *)a, b - a));
	}
	if (f)
		fclose(f);
	if (has_vdso())
		wl_die("[vdso] is still mapped");
	wl_ready(dir);
	while (!wl_should_check(dir)) {
		wl_generation++;
		char buf[32];
		int n = snprintf(buf, sizeof(buf), "%llu\n", (unsigned long long)wl_generation);
		wl_write_file(dir, "progress", buf, (size_t)n);
		struct timespec t = {0, 10 * 1000 * 1000};
		nanosleep(&t, NULL);
	}
	if (has_vdso())
		wl_fail("a [vdso] is mapped again");
	wl_finish(dir);
}
