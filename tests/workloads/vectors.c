/*
 * vectors: register state of a thread interrupted in user space, in the
 * widest vector registers the CPU has.
 *
 * Usage: vectors DIR [spin|sleep]
 *
 * The main thread loads, in one asm block, the vector registers with
 * distinct patterns (zmm0-zmm31 and k0-k7 on a CPU with AVX-512F/BW, else
 * ymm0-ymm15 with AVX2; the log says which), rbx, r8-r10, r12-r15 and
 * MXCSR, then loops inside that block until a flag in memory is set,
 * incrementing a counter; it calls no function (glibc may use vector
 * registers). "spin" (the default) loops in user space with `pause`;
 * "sleep" also does a raw nanosleep(1 ms) syscall per iteration, so a
 * checkpoint mostly catches it inside a syscall. When the flag is set the
 * asm stores every register and C compares them with the patterns. A
 * second thread runs the protocol (ready, progress, check) and sets the
 * flag. Only the asm uses AVX-512 (function target attributes): the C
 * around it runs on any x86-64.
 * Verifies: every register listed above; the result names each one that
 * differs. On a CPU without AVX2 the result is "fail: cpu lacks avx2".
 */
#include "workload.h"

#include <stddef.h>

struct state {
	uint8_t zin[32][64];	 /* 0 */
	uint8_t zout[32][64];	 /* 2048 */
	uint64_t kin[8];	 /* 4096 */
	uint64_t kout[8];	 /* 4160 */
	uint64_t gin[8];	 /* 4224: rbx r8 r9 r10 r12 r13 r14 r15 */
	uint64_t gout[8];	 /* 4288 */
	uint32_t mxcsr_in;	 /* 4352 */
	uint32_t mxcsr_out;	 /* 4356 */
	uint32_t mxcsr_default;	 /* 4360 */
	volatile uint32_t entered; /* 4364 */
	volatile uint32_t flag;	 /* 4368 */
	uint32_t pad;
	volatile uint64_t spins; /* 4376 */
	uint64_t sleep_mode;	 /* 4384 */
	struct timespec ts;	 /* 4392 */
} __attribute__((aligned(64)));

_Static_assert(offsetof(struct state, kin) == 4096, "layout");
_Static_assert(offsetof(struct state, gin) == 4224, "layout");
_Static_assert(offsetof(struct state, mxcsr_in) == 4352, "layout");
_Static_assert(offsetof(struct state, entered) == 4364, "layout");
_Static_assert(offsetof(struct state, flag) == 4368, "layout");
_Static_assert(offsetof(struct state, spins) == 4376, "layout");
_Static_assert(offsetof(struct state, sleep_mode) == 4384, "layout");
_Static_assert(offsetof(struct state, ts) == 4392, "layout");

static struct state st;
static const char *gpr_names[8] = {"rbx", "r8", "r9", "r10", "r12", "r13", "r14", "r15"};
static const char *dir;

#define LZ(n) "vmovdqu64 " #n "*64(%%rdx), %%zmm" #n "\n\t"
#define SZ(n) "vmovdqu64 %%zmm" #n ", 2048+" #n "*64(%%rdx)\n\t"
#define LK(n) "kmovq 4096+" #n "*8(%%rdx), %%k" #n "\n\t"
#define SK(n) "kmovq %%k" #n ", 4160+" #n "*8(%%rdx)\n\t"
#define ALL32(M)                                                                                                       \
	M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15) M(16) M(17) M(18) M(19)  \
	M(20) M(21) M(22) M(23) M(24) M(25) M(26) M(27) M(28) M(29) M(30) M(31)

/*
 * Between the vector loads and stores (both versions): load the general
 * registers and MXCSR, say so, loop until the flag is set (label 2).
 */
#define HOLD_GPRS_AND_LOOP                                                                                             \
	"mov 4224(%%rdx), %%rbx\n\t"                                                                                   \
	"mov 4232(%%rdx), %%r8\n\t"                                                                                    \
	"mov 4240(%%rdx), %%r9\n\t"                                                                                    \
	"mov 4248(%%rdx), %%r10\n\t"                                                                                   \
	"mov 4256(%%rdx), %%r12\n\t"                                                                                   \
	"mov 4264(%%rdx), %%r13\n\t"                                                                                   \
	"mov 4272(%%rdx), %%r14\n\t"                                                                                   \
	"mov 4280(%%rdx), %%r15\n\t"                                                                                   \
	"ldmxcsr 4352(%%rdx)\n\t"                                                                                      \
	"movl $1, 4364(%%rdx)\n"                                                                                        \
	"1:\n\t"                                                                                                       \
	"incq 4376(%%rdx)\n\t"                                                                                         \
	"pause\n\t"                                                                                                    \
	"cmpl $0, 4368(%%rdx)\n\t"                                                                                     \
	"jne 2f\n\t"                                                                                                   \
	"cmpq $0, 4384(%%rdx)\n\t"                                                                                     \
	"je 1b\n\t"                                                                                                    \
	"mov $35, %%eax\n\t" /* SYS_nanosleep: clobbers rax, rcx, r11 only */                                          \
	"lea 4392(%%rdx), %%rdi\n\t"                                                                                   \
	"xor %%esi, %%esi\n\t"                                                                                         \
	"syscall\n\t"                                                                                                  \
	"jmp 1b\n"                                                                                                      \
	"2:\n\t"
/* After the vector stores: store the general registers and MXCSR. */
#define STORE_GPRS                                                                                                     \
	"mov %%rbx, 4288(%%rdx)\n\t"                                                                                   \
	"mov %%r8, 4296(%%rdx)\n\t"                                                                                    \
	"mov %%r9, 4304(%%rdx)\n\t"                                                                                    \
	"mov %%r10, 4312(%%rdx)\n\t"                                                                                   \
	"mov %%r12, 4320(%%rdx)\n\t"                                                                                   \
	"mov %%r13, 4328(%%rdx)\n\t"                                                                                   \
	"mov %%r14, 4336(%%rdx)\n\t"                                                                                   \
	"mov %%r15, 4344(%%rdx)\n\t"                                                                                   \
	"stmxcsr 4356(%%rdx)\n\t"                                                                                      \
	"ldmxcsr 4360(%%rdx)\n\t"
/* The general registers the asm blocks set (rax, rcx, r11: the syscall). */
#define GPR_CLOBBERS "memory", "cc", "rax", "rbx", "rcx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"

__attribute__((target("avx512f,avx512bw"))) static void hold_zmm(void)
{
	asm volatile(ALL32(LZ) LK(0) LK(1) LK(2) LK(3) LK(4) LK(5) LK(6) LK(7)
		     HOLD_GPRS_AND_LOOP ALL32(SZ) SK(0) SK(1) SK(2) SK(3) SK(4) SK(5) SK(6) SK(7)
		     STORE_GPRS
		     :
		     : "d"(&st)
		     : GPR_CLOBBERS, "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
		       "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21",
		       "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "k0", "k1",
		       "k2", "k3", "k4", "k5", "k6", "k7");
}

#define LY(n) "vmovdqu " #n "*64(%%rdx), %%ymm" #n "\n\t"
#define SY(n) "vmovdqu %%ymm" #n ", 2048+" #n "*64(%%rdx)\n\t"
#define ALL16(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)

/* As hold_zmm, with ymm0-15: each pattern's first 32 bytes. */
__attribute__((target("avx2"))) static void hold_ymm(void)
{
	asm volatile(ALL16(LY)
		     HOLD_GPRS_AND_LOOP ALL16(SY)
		     STORE_GPRS
		     :
		     : "d"(&st)
		     : GPR_CLOBBERS, "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
		       "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

static void *protocol(void *arg)
{
	(void)arg;
	while (!st.entered)
		wl_sleep_ms(1);
	wl_ready(dir);
	wl_loop(dir, NULL);
	st.flag = 1;
	return NULL;
}

int main(int argc, char **argv)
{
	dir = wl_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "spin";
	if (strcmp(mode, "spin") != 0 && strcmp(mode, "sleep") != 0)
		wl_die("mode must be spin or sleep, not %s", mode);
	__builtin_cpu_init();
	int zmm = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
	if (!zmm && !__builtin_cpu_supports("avx2")) {
		wl_ready(dir);
		wl_loop(dir, NULL);
		wl_result(dir, false, "cpu lacks avx2");
	}
	/* Vector registers held: 32 of 64 bytes, or 16 of 32. */
	int nvec = zmm ? 32 : 16, width = zmm ? 64 : 32;
	wl_log("holding %s0-%d%s", zmm ? "zmm" : "ymm", nvec - 1, zmm ? " and k0-7" : " (no AVX-512)");

	wl_fill(st.zin, sizeof(st.zin), 0x2e6d);
	wl_fill(st.kin, sizeof(st.kin), 0x6b);
	wl_fill(st.gin, sizeof(st.gin), 0x67);
	st.mxcsr_in = 0xffc0; /* all exceptions masked, round toward zero, FTZ, DAZ */
	st.mxcsr_default = 0x1f80;
	st.sleep_mode = strcmp(mode, "sleep") == 0;
	st.ts.tv_nsec = 1000 * 1000;
	memset(st.zout, 0, sizeof(st.zout));

	pthread_t th;
	int err = pthread_create(&th, NULL, protocol, NULL);
	if (err)
		wl_die("pthread_create: %s", strerror(err));
	if (zmm)
		hold_zmm();
	else
		hold_ymm();
	pthread_join(th, NULL);
	wl_log("%s loop ran %llu iterations", mode, (unsigned long long)st.spins);

	for (int n = 0; n < nvec; n++)
		for (int i = 0; i < width; i++)
			if (st.zin[n][i] != st.zout[n][i]) {
				wl_fail("%smm%d byte %d is 0x%02x, expected 0x%02x", zmm ? "z" : "y", n, i, st.zout[n][i],
					st.zin[n][i]);
				break;
			}
	for (int n = 0; n < (zmm ? 8 : 0); n++)
		if (st.kin[n] != st.kout[n])
			wl_fail("k%d is %#llx, expected %#llx", n, (unsigned long long)st.kout[n],
				(unsigned long long)st.kin[n]);
	for (int n = 0; n < 8; n++)
		if (st.gin[n] != st.gout[n])
			wl_fail("%s is %#llx, expected %#llx", gpr_names[n], (unsigned long long)st.gout[n],
				(unsigned long long)st.gin[n]);
	if (st.mxcsr_out != st.mxcsr_in)
		wl_fail("mxcsr is %#x, expected %#x", st.mxcsr_out, st.mxcsr_in);
	if (st.spins == 0)
		wl_fail("the register loop never ran");
	wl_finish(dir);
}
