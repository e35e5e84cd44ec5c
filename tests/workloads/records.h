/*
 * records.h - the numbered records the socket workloads (unix_sockets,
 * tcp_pair) move: their layout and lengths, building and sending them, and
 * checking that a direction delivers 1, 2, 3, ... then END, each intact.
 *
 * Each direction of traffic has a seed (by convention the sender's fd) and is
 * a struct chan on either side: the sender's counts the records sent, the
 * reader's those read in order. Record n of a direction is rec_len(n) bytes:
 * 16 to REC_SMALL_MAX (256), or REC_BIG when n % 64 == 3 if the workload
 * defines REC_BIG before including this header. Its first 8 bytes are n
 * (native byte order), the rest the wl_fill pattern of (seed << 32 ^ n). A
 * direction ends with an END record: the next number, with END_BIT set in
 * its first 8 bytes, of that number's length and pattern.
 *
 * A reader gets a record's bytes as its socket allows (a whole message, a
 * blocking read, or pieces kept across iterations) and hands each complete
 * record to chan_take, which requires the next number or END, intact: a lost,
 * repeated, reordered, cut or foreign record shows as a wrong number or
 * pattern. While running, a reader takes records only while more than KEEP
 * complete ones are queued (chan_over_keep), so some always wait unread.
 */
#ifndef STASIS_RECORDS_H
#define STASIS_RECORDS_H

#include "kids.h"

#include <poll.h>
#include <sys/socket.h>

/* Records a reader leaves queued while running; each side sends at least as many before ready. */
#define KEEP 2
#define END_BIT (1ull << 63)
/* The longest record but the REC_BIG ones. */
#define REC_SMALL_MAX 256
#ifndef REC_BIG
#define REC_BIG 0 /* none */
#endif
/* The longest record: the size of a buffer for one. */
#define REC_MAX (REC_BIG > REC_SMALL_MAX ? REC_BIG : REC_SMALL_MAX)
/* How long one send may wait for room, and a read while running for a record already queued. */
#define IO_MS 10000

/* One direction of traffic: the records this process sends on FD, or reads from it. */
struct chan {
	const char *name;
	int fd, type;  /* type: SOCK_STREAM, or one that keeps message boundaries (a record a message) */
	uint64_t seed; /* the direction's pattern */
	uint64_t n;    /* records sent, or read in order */
	bool ended;    /* the END record was sent, or read */
	bool broken;   /* a failure was recorded: no more traffic */
};

#define CHAN(NAME, FD, TYPE, SEED) { .name = NAME, .fd = FD, .type = TYPE, .seed = SEED }

static inline size_t rec_len(uint64_t n)
{
	if (REC_BIG && n % 64 == 3)
		return REC_BIG;
	return 16 + (size_t)(n * 7919 % (REC_SMALL_MAX - 15));
}

/* Record N (the END record if END) of the direction with SEED into BUF; returns its length. */
static inline size_t rec_make(uint8_t *buf, uint64_t seed, uint64_t n, bool end)
{
	size_t len = rec_len(n);
	wl_fill(buf, len, seed << 32 ^ n);
	uint64_t head = n | (end ? END_BIT : 0);
	memcpy(buf, &head, 8);
	return len;
}

/* Record the first failure of C (later ones follow from it). */
__attribute__((format(printf, 2, 3))) static inline void chan_fail(struct chan *c, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!c->broken)
		wl_fail("%s: %s", c->name, msg);
	c->broken = true;
}

static inline uint64_t deadline_in(unsigned ms)
{
	return wl_monotonic_ns() + (uint64_t)ms * 1000000u;
}

/* Send all of BUF, waiting in poll while the socket is full, until DEADLINE. Returns NULL or what went wrong. */
static inline const char *send_rec(int fd, const void *buf, size_t len, uint64_t deadline)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n == 0)
			return "send returned 0";
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return strerror(errno);
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		int r = poll(&p, 1, ms_left(deadline));
		if (r == 0)
			return "timed out waiting for room";
		if (r < 0 && errno != EINTR)
			return strerror(errno);
	}
	return NULL;
}

/* Send C's next record, or its END record. */
static inline void chan_send(struct chan *c, bool end)
{
	static uint8_t buf[REC_MAX];
	if (c->broken || c->ended)
		return;
	uint64_t n = c->n + 1;
	size_t len = rec_make(buf, c->seed, n, end);
	const char *why = send_rec(c->fd, buf, len, deadline_in(IO_MS));
	if (why)
		chan_fail(c, "sending record %llu: %s", (unsigned long long)n, why);
	else if (end)
		c->ended = true;
	else
		c->n = n;
}

/* BUF holds C's next record, complete (rec_len(c->n + 1) bytes): it must be record n or END, intact. */
static inline void chan_take(struct chan *c, const uint8_t *buf)
{
	static uint8_t want[REC_MAX];
	uint64_t n = c->n + 1, head;
	size_t len = rec_len(n);
	memcpy(&head, buf, 8);
	bool end = head & END_BIT;
	if ((head & ~END_BIT) != n) {
		chan_fail(c, "expected record %llu, found record %llu%s", (unsigned long long)n,
			  (unsigned long long)(head & ~END_BIT), end ? " (END)" : "");
		return;
	}
	rec_make(want, c->seed, n, end);
	if (memcmp(buf, want, len) != 0) {
		size_t i = 8;
		while (buf[i] == want[i])
			i++;
		chan_fail(c, "record %llu%s: byte %zu of %zu is 0x%02x, expected 0x%02x", (unsigned long long)n,
			  end ? " (END)" : "", i, len, buf[i], want[i]);
		return;
	}
	if (end)
		c->ended = true;
	else
		c->n = n;
}

/*
 * While running: whether the reader should take C's next record, that is
 * whether more than KEEP complete records are queued on its socket (FIONREAD)
 * with the HAVE bytes of the next one it has read already.
 */
static inline bool chan_over_keep(struct chan *c, size_t have)
{
	if (c->broken || c->ended)
		return false;
	size_t need = 0;
	for (uint64_t k = 1; k <= KEEP + 1; k++)
		need += rec_len(c->n + k);
	int queued = buffered(c->fd);
	if (queued < 0)
		chan_fail(c, "FIONREAD: %s", strerror(errno));
	return queued >= 0 && (size_t)queued + have >= need;
}

#endif
