/*
 * mem_dense: a large anonymous private mapping of dense random data, plus a
 * small region rewritten every iteration from the generation.
 *
 * Usage: mem_dense DIR [MIB [SEED]]   (MIB defaults to 256, SEED to 1)
 *
 * Verifies: the dense region's checksum (computed at setup) and, on a
 * mismatch, the first differing byte; the generation region holds the
 * generation the process reached and exactly that generation's pattern.
 * Publishes in DIR/info: dense_addr, dense_len, gen_addr, gen_len.
 */
#include "workload.h"

#include <sys/mman.h>

#define GEN_LEN (64 * 1024)

static uint8_t *gen_region;

/* Header: the generation (8 bytes); then the pattern of that generation. */
static void tick(uint64_t gen)
{
	memcpy(gen_region, &gen, 8);
	wl_fill(gen_region + 8, GEN_LEN - 8, gen ^ 0x6d656d5f64656e73ull);
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	unsigned long mib = argc > 2 ? strtoul(argv[2], NULL, 0) : 256;
	uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 0) : 1;
	if (mib == 0)
		wl_die("MIB must be > 0");
	size_t len = mib << 20;

	uint8_t *dense = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dense == MAP_FAILED)
		wl_die("mmap %zu bytes: %s", len, strerror(errno));
	wl_fill(dense, len, seed);
	uint64_t sum = wl_checksum(dense, len);

	gen_region = mmap(NULL, GEN_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (gen_region == MAP_FAILED)
		wl_die("mmap gen region: %s", strerror(errno));
	tick(0);

	wl_log("dense region %p, %zu bytes, checksum %016llx", (void *)dense, len, (unsigned long long)sum);
	wl_info(dir, "dense_addr %lu\ndense_len %zu\ngen_addr %lu\ngen_len %d\n", (unsigned long)dense, len,
		(unsigned long)gen_region, GEN_LEN);
	wl_ready(dir);
	wl_loop(dir, tick);

	uint64_t now = wl_checksum(dense, len);
	if (now != sum) {
		uint8_t want, got;
		long off = wl_verify_fill(dense, len, seed, &want, &got);
		wl_fail("dense region (%p, %zu bytes): checksum %016llx, expected %016llx; first difference at byte %ld: "
			"0x%02x, expected 0x%02x",
			(void *)dense, len, (unsigned long long)now, (unsigned long long)sum, off, got, want);
	}

	uint64_t claimed;
	memcpy(&claimed, gen_region, 8);
	if (claimed != wl_generation)
		wl_fail("generation region claims generation %llu, the process is at generation %llu",
			(unsigned long long)claimed, (unsigned long long)wl_generation);
	char what[64];
	snprintf(what, sizeof(what), "generation region (pattern of generation %llu)", (unsigned long long)claimed);
	wl_expect_fill(what, gen_region + 8, GEN_LEN - 8, claimed ^ 0x6d656d5f64656e73ull);
	wl_finish(dir);
}
