/*
 * mem_filemap: file-backed mappings, private and shared.
 *
 * Usage: mem_filemap DIR
 *
 * Holds (no fds: every file is closed once mapped):
 *   DIR/private.dat (1 MiB) mapped MAP_PRIVATE RW; every 4th page written
 *     (private dirty pages, the file stays unchanged)
 *   DIR/shared.dat (1 MiB) mapped MAP_SHARED RW; every 3rd page written, and
 *     page 1 rewritten each iteration: generation + that generation's pattern
 *   DIR/ro.dat (256 KiB) mapped MAP_PRIVATE PROT_READ
 * Verifies: each mapping's content and permissions (/proc/self/maps); with
 * read(2) through a fresh fd, that private.dat is unchanged and shared.dat
 * holds the writes made through the mapping (page 1 at the current
 * generation). Publishes the mapping addresses in DIR/info.
 */
#include "workload.h"

#include <sys/mman.h>

#define PAGE 4096
#define LEN (1 << 20)
#define RO_LEN (256 * 1024)
#define NPAGES (LEN / PAGE)

static uint8_t *shared;

static uint64_t page_seed(uint64_t base, unsigned page)
{
	return base * 100000 + page;
}

static void tick(uint64_t gen)
{
	uint8_t *p = shared + PAGE;
	memcpy(p, &gen, 8);
	wl_fill(p + 8, PAGE - 8, gen ^ 0x66696c656d6170ull);
}

static void *map_file(const char *dir, const char *name, size_t len, uint64_t seed, int prot, int flags)
{
	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, name);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0644);
	WL_CHECK_SYS(fd);
	uint8_t *buf = malloc(len);
	for (unsigned i = 0; i < len / PAGE; i++)
		wl_fill(buf + (size_t)i * PAGE, PAGE, page_seed(seed, i));
	wl_write_all(fd, buf, len);
	free(buf);
	void *p = mmap(NULL, len, prot, flags, fd, 0);
	if (p == MAP_FAILED)
		wl_die("mmap %s: %s", path, strerror(errno));
	close(fd);
	return p;
}

/* Read DIR/NAME with read(2). */
static uint8_t *read_file(const char *dir, const char *name, size_t len)
{
	char path[PATH_MAX];
	wl_path(path, sizeof(path), dir, name);
	uint8_t *buf = calloc(1, len + 1);
	int fd = open(path, O_RDONLY);
	ssize_t n = fd < 0 ? -errno : wl_pread_all(fd, buf, len + 1, 0);
	if (n != (ssize_t)len)
		wl_fail("%s: read(2) gave %zd (%s), expected %zu bytes", name, n, n < 0 ? strerror((int)-n) : "bytes",
			len);
	if (fd >= 0)
		close(fd);
	return buf;
}

static void expect_perms(const char *what, const void *addr, const char *want)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[512], perms[5] = "";
	unsigned long lo, hi;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) == 3 && (unsigned long)addr >= lo &&
		    (unsigned long)addr < hi)
			break;
		else
			perms[0] = 0;
	if (f)
		fclose(f);
	if (strcmp(perms, want) != 0)
		wl_fail("%s at %p: permissions \"%s\", expected %s", what, addr, perms, want);
}

/* Page I of WHAT holds the pattern of page_seed(SEED, I). */
static bool expect_page(const char *what, const uint8_t *base, unsigned i, uint64_t seed)
{
	char w[96];
	snprintf(w, sizeof(w), "%s page %u", what, i);
	return wl_expect_fill(w, base + (size_t)i * PAGE, PAGE, page_seed(seed, i));
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);

	uint8_t *priv = map_file(dir, "private.dat", LEN, 1, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	for (unsigned i = 0; i < NPAGES; i += 4)
		wl_fill(priv + (size_t)i * PAGE, PAGE, page_seed(11, i));

	shared = map_file(dir, "shared.dat", LEN, 2, PROT_READ | PROT_WRITE, MAP_SHARED);
	for (unsigned i = 0; i < NPAGES; i += 3)
		wl_fill(shared + (size_t)i * PAGE, PAGE, page_seed(22, i));
	tick(0);

	uint8_t *ro = map_file(dir, "ro.dat", RO_LEN, 3, PROT_READ, MAP_PRIVATE);

	wl_info(dir, "private_addr %lu\nshared_addr %lu\nro_addr %lu\n", (unsigned long)priv, (unsigned long)shared,
		(unsigned long)ro);
	wl_ready(dir);
	wl_loop(dir, tick);

	expect_perms("private file mapping", priv, "rw-p");
	expect_perms("shared file mapping", shared, "rw-s");
	expect_perms("read-only file mapping", ro, "r--p");

	uint8_t *file = read_file(dir, "private.dat", LEN);
	for (unsigned i = 0; i < NPAGES; i++)
		if (!expect_page("private mapping", priv, i, i % 4 == 0 ? 11 : 1) ||
		    !expect_page("private.dat (read(2))", file, i, 1))
			break;
	free(file);

	file = read_file(dir, "shared.dat", LEN);
	uint64_t claimed, in_file;
	memcpy(&claimed, shared + PAGE, 8);
	memcpy(&in_file, file + PAGE, 8);
	if (claimed != wl_generation || in_file != wl_generation)
		wl_fail("shared mapping page 1 claims generation %llu, shared.dat (read(2)) %llu, the process is at "
			"generation %llu",
			(unsigned long long)claimed, (unsigned long long)in_file, (unsigned long long)wl_generation);
	wl_expect_fill("shared mapping page 1", shared + PAGE + 8, PAGE - 8, claimed ^ 0x66696c656d6170ull);
	wl_expect_fill("shared.dat (read(2)) page 1", file + PAGE + 8, PAGE - 8, in_file ^ 0x66696c656d6170ull);
	for (unsigned i = 0; i < NPAGES; i++) {
		if (i == 1)
			continue;
		uint64_t seed = i % 3 == 0 ? 22 : 2;
		if (!expect_page("shared mapping", shared, i, seed) || !expect_page("shared.dat (read(2))", file, i, seed))
			break;
	}
	free(file);

	for (unsigned i = 0; i < RO_LEN / PAGE; i++)
		if (!expect_page("read-only file mapping", ro, i, 3))
			break;
	wl_finish(dir);
}
