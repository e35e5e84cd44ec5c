/*
 * mem_writer: a large anonymous private mapping whose pages are rewritten
 * all the time, scattered over it, in an order that tells at every moment
 * what each page must hold: a live snapshot copies memory while this runs,
 * and must still restore exactly the memory of the moment of the freeze.
 *
 * Usage: mem_writer DIR [MIB [PAGES [sparse|reserved|arena]...]]   (MIB
 * defaults to 64; PAGES, the pages written per generation of ~10 ms, to 1%
 * of them; "sparse" leaves the pages unwritten at the start: until its
 * first write, a page must read as zeros, and a thread stack or a malloc
 * arena, most of whose pages were never touched, is what this stands for;
 * "reserved" makes the region the start of 64 GiB of address space
 * reserved PROT_NONE, the rest left so, as a JVM's heap or a V8 cage is;
 * "arena" the start of 64 GiB mapped read-write with MAP_NORESERVE, the
 * rest never touched, as a sanitizer's shadow memory is)
 *
 * Write number s (from 0) goes to page (s * STRIDE) mod N (N pages, a power
 * of two; STRIDE odd, so each page once per N writes) and fills it with the
 * pattern of (page, generation). Before each write the page is checked to
 * hold what its last write left (or the initial fill); at the check, every
 * page is. A page restored as it was some time before the freeze fails.
 * Publishes in DIR/info: addr, len, pages_per_gen.
 */
#include "workload.h"

#include <sys/mman.h>

#define PAGE 4096ull
#define STRIDE 0x9e3779b97f4a7c15ull

static uint8_t *region;
static uint64_t npages, per_gen, writes, inverse;
static bool sparse, reserved, arena;
#define RESERVED_SPAN (64ull << 30)

/* In "reserved" ("arena") mode: the rest of the span is still there, PROT_NONE (read-write). */
static void check_reserved(void)
{
	char want[64], line[512];
	snprintf(want, sizeof want, "%lx-%lx %s", (unsigned long)(region + (arena ? 0 : npages * PAGE)),
		 (unsigned long)(region + RESERVED_SPAN), arena ? "rw-p" : "---p");
	FILE *maps = fopen("/proc/self/maps", "r");
	if (!maps)
		wl_die("/proc/self/maps: %s", strerror(errno));
	bool found = false;
	while (fgets(line, sizeof line, maps))
		found |= strncmp(line, want, strlen(want)) == 0;
	fclose(maps);
	if (!found)
		wl_fail("the reservation after the region is gone: no mapping \"%s\"", want);
}

/* The pattern page I holds after its write in generation GEN (0: setup). */
static uint64_t seed_of(uint64_t i, uint64_t gen)
{
	return (i << 24) ^ gen ^ 0x6d656d5f77726974ull;
}

/* The generation of page I's last write among the first WRITES writes. */
static uint64_t last_gen(uint64_t i, uint64_t done)
{
	/* Writes to page I are those s with s = i * inverse (mod N). */
	uint64_t first = (i * inverse) & (npages - 1);
	if (done <= first)
		return 0;
	uint64_t s = first + (done - 1 - first) / npages * npages;
	return s / per_gen + 1;
}

static bool page_ok(uint64_t i, uint64_t done)
{
	uint64_t gen = last_gen(i, done);
	uint8_t want = 0, got = 0;
	long off = -1;
	if (sparse && gen == 0) {
		for (uint64_t b = 0; b < PAGE && off < 0; b++)
			if (region[i * PAGE + b] != 0)
				off = (long)b, got = region[i * PAGE + b];
	} else {
		off = wl_verify_fill(region + i * PAGE, PAGE, seed_of(i, gen), &want, &got);
	}
	if (off < 0)
		return true;
	wl_fail("page %llu (%p) does not hold generation %llu's pattern (after %llu writes): byte %ld is 0x%02x, "
		"expected 0x%02x",
		(unsigned long long)i, (void *)(region + i * PAGE), (unsigned long long)gen, (unsigned long long)done,
		off, got, want);
	return false;
}

static void tick(uint64_t gen)
{
	for (uint64_t k = 0; k < per_gen; k++) {
		uint64_t i = (writes * STRIDE) & (npages - 1);
		if (!page_ok(i, writes))
			return;
		wl_fill(region + i * PAGE, PAGE, seed_of(i, gen));
		writes++;
	}
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	unsigned long mib = argc > 2 ? strtoul(argv[2], NULL, 0) : 64;
	if (mib == 0 || (mib & (mib - 1)))
		wl_die("MIB must be a power of two");
	npages = (uint64_t)mib << 20 >> 12;
	per_gen = argc > 3 ? strtoull(argv[3], NULL, 0) : npages / 100;
	if (per_gen == 0)
		wl_die("PAGES must be > 0");
	for (int i = 4; i < argc; i++) {
		if (strcmp(argv[i], "sparse") == 0)
			sparse = true;
		else if (strcmp(argv[i], "reserved") == 0)
			reserved = true;
		else if (strcmp(argv[i], "arena") == 0)
			arena = true;
		else
			wl_die("unknown mode %s", argv[i]);
	}
	/* STRIDE * inverse = 1 (mod 2^64), by Newton's iteration. */
	inverse = STRIDE;
	for (int k = 0; k < 6; k++)
		inverse *= 2 - STRIDE * inverse;

	size_t len = npages * PAGE;
	if (reserved) {
		size_t span = RESERVED_SPAN;
		region = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (region == MAP_FAILED)
			wl_die("reserve %zu bytes: %s", span, strerror(errno));
		if (mprotect(region, len, PROT_READ | PROT_WRITE))
			wl_die("mprotect %zu bytes: %s", len, strerror(errno));
	} else if (arena) {
		region = mmap(NULL, RESERVED_SPAN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			      -1, 0);
	} else {
		region = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	}
	if (region == MAP_FAILED)
		wl_die("mmap %zu bytes: %s", len, strerror(errno));
	for (uint64_t i = 0; i < npages && !sparse; i++)
		wl_fill(region + i * PAGE, PAGE, seed_of(i, 0));
	wl_info(dir, "addr %lu\nlen %zu\npages_per_gen %llu\n", (unsigned long)region, len,
		(unsigned long long)per_gen);
	wl_ready(dir);
	wl_loop(dir, tick);

	for (uint64_t i = 0; i < npages; i++)
		if (!page_ok(i, writes))
			break;
	if (reserved || arena)
		check_reserved();
	wl_finish(dir);
}
