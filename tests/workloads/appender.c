/*
 * appender: appends numbered records to a file (on the volume under test)
 * without fsync, and keeps the last number and the file offset in memory.
 *
 * Usage: appender DIR FILE
 *
 * Every ~10 ms iteration appends one record, "%010llu\n" (11 bytes) of the
 * generation, with write(2) on an fd opened O_WRONLY|O_CREAT|O_TRUNC, and
 * remembers the number and the offset after it. Nothing is synced: the
 * records are in the page cache only, as a database's unsynced writes.
 *
 * Check: the file's size (fstat), the fd's offset (lseek) and the offset in
 * memory are equal, and the file holds exactly the records 1..last, last
 * being the number in memory. After a restore whose volume was rolled back
 * to a snapshot taken with the process, this holds; after a restore onto
 * the files as they moved on, it does not.
 *
 * Publishes in DIR/info: "file" (its path), "record_len" (11).
 */
#include "workload.h"

#include <sys/stat.h>

#define RECORD_LEN 11

static int fd;
static uint64_t last;
static off_t offset;

static void append(uint64_t gen)
{
	char rec[32];
	snprintf(rec, sizeof(rec), "%010llu\n", (unsigned long long)(gen % 10000000000ull));
	if (send_all(fd, rec, RECORD_LEN) < 0)
		wl_die("write record %llu: %s", (unsigned long long)gen, strerror(errno));
	last = gen;
	offset += RECORD_LEN;
}

int main(int argc, char **argv)
{
	const char *dir = wl_init(argc, argv);
	if (argc < 3)
		wl_die("usage: appender DIR FILE");
	fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	WL_CHECK_SYS(fd);
	wl_info(dir, "file %s\nrecord_len %d\n", argv[2], RECORD_LEN);
	wl_ready(dir);
	wl_loop(dir, append);

	struct stat st;
	WL_CHECK_SYS(fstat(fd, &st));
	off_t at = lseek(fd, 0, SEEK_CUR);
	wl_expect_eq("file size vs offset in memory", offset, st.st_size);
	wl_expect_eq("fd offset vs offset in memory", offset, at);
	int rd = open(argv[2], O_RDONLY | O_CLOEXEC);
	WL_CHECK_SYS(rd);
	size_t len = (size_t)st.st_size;
	char *buf = malloc(len + 1);
	if (!buf)
		wl_die("malloc");
	if (wl_pread_all(rd, buf, len, 0) != (ssize_t)len)
		wl_die("read %s", argv[2]);
	uint64_t n = 0;
	for (size_t pos = 0; pos + RECORD_LEN <= len; pos += RECORD_LEN) {
		n++;
		char want[32];
		snprintf(want, sizeof(want), "%010llu\n", (unsigned long long)(n % 10000000000ull));
		if (memcmp(buf + pos, want, RECORD_LEN) != 0) {
			wl_fail("record %llu at offset %zu is \"%.10s\"", (unsigned long long)n, pos, buf + pos);
			break;
		}
	}
	wl_expect_eq("last record in the file vs last number in memory", (long long)last, (long long)n);
	wl_finish(dir);
}
