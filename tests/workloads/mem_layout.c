/*
 * mem_layout: one of each kind of anonymous memory.
 *
 * Usage: mem_layout DIR
 *
 * Holds: malloc'd blocks (one large, mmap'd by glibc, and a list of small
 * ones on the heap); 64 KiB of brk extended with sbrk; a private anonymous
 * region; a shared anonymous region (MAP_SHARED|MAP_ANONYMOUS); two RW
 * regions around a PROT_NONE guard; a read-only region (filled, then
 * mprotect PROT_READ); an executable region holding `mov eax, IMM; ret`;
 * a sparse 16 MiB region (MADV_NOHUGEPAGE) with every 7th page touched;
 * MADV_DONTFORK and MADV_WIPEONFORK regions; a 256 KiB array on main's stack.
 * Verifies: every region's content; permissions and VmFlags in
 * /proc/self/smaps (---p guard, r--p, r-xp, rw-s, dc, wf, nh); the code
 * returns IMM; sparse pages never touched read zero and are not resident
 * (mincore); brk still covers the sbrk region.
 * Publishes region addresses in DIR/info.
 */
#include "workload.h"

#include <sys/mman.h>
#include <sys/syscall.h>

#define PAGE 4096
#define SMALL_N 200
#define SPARSE_PAGES 4096
#define STACK_LEN (256 * 1024)
#define CODE_IMM 0x5a17c0de

struct small {
	struct small *next;
	unsigned idx;
	uint8_t data[100];
};

static void *map(size_t len, int prot, int flags)
{
	void *p = mmap(NULL, len, prot, flags | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		wl_die("mmap %zu: %s", len, strerror(errno));
	return p;
}

/*
 * The smaps entry of the mapping containing ADDR: PERMS gets "rwxp", FLAGS
 * the VmFlags line. False if no mapping contains ADDR.
 */
static bool smaps_of(const void *addr, char perms[5], char *flags, size_t flen)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	char line[512];
	bool in = false, found = false;
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		char p[5];
		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, p) == 3) {
			if (found)
				break;
			in = (unsigned long)addr >= lo && (unsigned long)addr < hi;
			if (in) {
				memcpy(perms, p, 5);
				found = true;
			}
		} else if (in && strncmp(line, "VmFlags:", 8) == 0) {
			snprintf(flags, flen, "%s", line + 8);
			flags[strcspn(flags, "\n")] = 0;
		}
	}
	if (f)
		fclose(f);
	return found;
}

static void expect_mapping(const char *what, const void *addr, const char *want_perms, const char *want_flag)
{
	char perms[5] = "", flags[512] = "";
	if (!smaps_of(addr, perms, flags, sizeof(flags))) {
		wl_fail("%s: no mapping at %p", what, addr);
		return;
	}
	if (strcmp(perms, want_perms) != 0)
		wl_fail("%s at %p: permissions %s, expected %s", what, addr, perms, want_perms);
	if (want_flag) {
		char needle[8];
		snprintf(needle, sizeof(needle), " %s", want_flag);
		if (!strstr(flags, needle))
			wl_fail("%s at %p: VmFlags \"%s\" lack %s", what, addr, flags, want_flag);
	}
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	volatile uint8_t stack[STACK_LEN];
	wl_fill((void *)stack, STACK_LEN, 17);

	/* Heap: large (glibc mmaps it) and small blocks. */
	size_t large_len = 1 << 20;
	uint8_t *large = malloc(large_len);
	wl_fill(large, large_len, 1);
	struct small *head = NULL;
	for (unsigned i = 0; i < SMALL_N; i++) {
		struct small *s = malloc(sizeof(*s));
		s->next = head;
		s->idx = i;
		wl_fill(s->data, sizeof(s->data), 1000 + i);
		head = s;
	}

	size_t brk_len = 64 * 1024;
	uint8_t *brk_region = sbrk((intptr_t)brk_len);
	if (brk_region == (void *)-1)
		wl_die("sbrk: %s", strerror(errno));
	wl_fill(brk_region, brk_len, 2);

	size_t priv_len = 256 * 1024, shared_len = 128 * 1024;
	uint8_t *priv = map(priv_len, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	wl_fill(priv, priv_len, 3);
	uint8_t *shared = map(shared_len, PROT_READ | PROT_WRITE, MAP_SHARED);
	wl_fill(shared, shared_len, 4);

	/* RW | PROT_NONE | RW, 4 pages each. */
	uint8_t *guarded = map(12 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	wl_fill(guarded, 4 * PAGE, 5);
	wl_fill(guarded + 8 * PAGE, 4 * PAGE, 6);
	WL_CHECK_SYS(mprotect(guarded + 4 * PAGE, 4 * PAGE, PROT_NONE));

	size_t ro_len = 8 * PAGE;
	uint8_t *ro = map(ro_len, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	wl_fill(ro, ro_len, 7);
	WL_CHECK_SYS(mprotect(ro, ro_len, PROT_READ));

	uint8_t *code = map(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
#if defined(__x86_64__)
	const uint8_t insns[] = {0xb8, CODE_IMM & 0xff, (CODE_IMM >> 8) & 0xff, (CODE_IMM >> 16) & 0xff,
				 (CODE_IMM >> 24) & 0xff, 0xc3};
	memcpy(code, insns, sizeof(insns));
#else
#error "mem_layout: the executable region holds x86-64 code"
#endif
	WL_CHECK_SYS(mprotect(code, PAGE, PROT_READ | PROT_EXEC));
	int (*fn)(void) = (int (*)(void))(void *)code;
	if (fn() != CODE_IMM)
		wl_die("generated code returned %#x", fn());

	uint8_t *sparse = map((size_t)SPARSE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE);
	WL_CHECK_SYS(madvise(sparse, (size_t)SPARSE_PAGES * PAGE, MADV_NOHUGEPAGE));
	for (unsigned i = 3; i < SPARSE_PAGES; i += 7)
		wl_fill(sparse + (size_t)i * PAGE, PAGE, 100000 + i);

	size_t df_len = 16 * PAGE;
	uint8_t *dontfork = map(df_len, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	WL_CHECK_SYS(madvise(dontfork, df_len, MADV_DONTFORK));
	wl_fill(dontfork, df_len, 8);
	uint8_t *wipe = map(df_len, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	WL_CHECK_SYS(madvise(wipe, df_len, MADV_WIPEONFORK));
	wl_fill(wipe, df_len, 9);

	wl_info(dir,
		"stack_addr %lu\nlarge_addr %lu\nbrk_addr %lu\npriv_addr %lu\nshared_addr %lu\nguarded_addr %lu\n"
		"ro_addr %lu\ncode_addr %lu\nsparse_addr %lu\ndontfork_addr %lu\nwipe_addr %lu\n",
		(unsigned long)stack, (unsigned long)large, (unsigned long)brk_region, (unsigned long)priv,
		(unsigned long)shared, (unsigned long)guarded, (unsigned long)ro, (unsigned long)code,
		(unsigned long)sparse, (unsigned long)dontfork, (unsigned long)wipe);
	wl_ready(dir);
	wl_loop(dir, NULL);

	wl_expect_fill("stack array", (void *)stack, STACK_LEN, 17);
	wl_expect_fill("large malloc block", large, large_len, 1);
	unsigned n = 0;
	for (struct small *s = head; s; s = s->next, n++) {
		char what[64];
		snprintf(what, sizeof(what), "small malloc block %u", s->idx);
		if (s->idx != SMALL_N - 1 - n) {
			wl_fail("small malloc block %u in list position %u", s->idx, n);
			break;
		}
		if (!wl_expect_fill(what, s->data, sizeof(s->data), 1000 + s->idx))
			break;
	}
	if (n != SMALL_N)
		wl_fail("small malloc list has %u blocks, expected %d", n, SMALL_N);

	wl_expect_fill("sbrk region", brk_region, brk_len, 2);
	/* The kernel's break (glibc's sbrk(0) returns a cached value). */
	void *brk_end = (void *)syscall(SYS_brk, 0);
	if ((uint8_t *)brk_end < brk_region + brk_len)
		wl_fail("program break %p is below the end of the sbrk region %p", brk_end, brk_region + brk_len);

	wl_expect_fill("private anonymous region", priv, priv_len, 3);
	expect_mapping("private anonymous region", priv, "rw-p", NULL);
	wl_expect_fill("shared anonymous region", shared, shared_len, 4);
	expect_mapping("shared anonymous region", shared, "rw-s", "sh");

	wl_expect_fill("RW region below the guard", guarded, 4 * PAGE, 5);
	wl_expect_fill("RW region above the guard", guarded + 8 * PAGE, 4 * PAGE, 6);
	expect_mapping("RW region below the guard", guarded, "rw-p", NULL);
	expect_mapping("PROT_NONE guard", guarded + 4 * PAGE, "---p", NULL);
	expect_mapping("RW region above the guard", guarded + 8 * PAGE, "rw-p", NULL);

	wl_expect_fill("read-only region", ro, ro_len, 7);
	expect_mapping("read-only region", ro, "r--p", NULL);

	expect_mapping("code region", code, "r-xp", "ex");
	int got = fn();
	if (got != CODE_IMM)
		wl_fail("code region %p returned %#x, expected %#x", (void *)code, got, CODE_IMM);

	expect_mapping("sparse region", sparse, "rw-p", "nh");
	unsigned char vec[SPARSE_PAGES];
	if (mincore(sparse, (size_t)SPARSE_PAGES * PAGE, vec) < 0)
		wl_fail("mincore sparse region: %s", strerror(errno));
	for (unsigned i = 0; i < SPARSE_PAGES; i++) {
		uint8_t *page = sparse + (size_t)i * PAGE;
		char what[64];
		snprintf(what, sizeof(what), "sparse region page %u", i);
		if (i % 7 == 3) {
			if (!wl_expect_fill(what, page, PAGE, 100000 + i))
				break;
			continue;
		}
		if (vec[i] & 1) {
			wl_fail("sparse region page %u (%p) was never touched but is resident", i, (void *)page);
			break;
		}
		bool zero = true;
		for (unsigned j = 0; j < PAGE && zero; j++)
			zero = page[j] == 0;
		if (!zero) {
			wl_fail("sparse region page %u (%p) was never touched but is not zero", i, (void *)page);
			break;
		}
	}

	wl_expect_fill("MADV_DONTFORK region", dontfork, df_len, 8);
	expect_mapping("MADV_DONTFORK region", dontfork, "rw-p", "dc");
	wl_expect_fill("MADV_WIPEONFORK region", wipe, df_len, 9);
	expect_mapping("MADV_WIPEONFORK region", wipe, "rw-p", "wf");
	wl_finish(dir);
}
