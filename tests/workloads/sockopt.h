/*
 * sockopt.h - integer socket options for the socket workloads (sockets,
 * unix_sockets, tcp_pair): read one (a failure is a verification failure)
 * or set one (a failure is a setup failure).
 */
#ifndef STASIS_SOCKOPT_H
#define STASIS_SOCKOPT_H

#include "workload.h"

#include <sys/socket.h>

static inline int getint(int fd, int level, int name)
{
	int v = -1;
	socklen_t len = sizeof(v);
	if (getsockopt(fd, level, name, &v, &len) < 0)
		wl_fail("fd %d: getsockopt(%d, %d): %s", fd, level, name, strerror(errno));
	return v;
}

static inline void setint(int fd, int level, int name, int v)
{
	WL_CHECK_SYS(setsockopt(fd, level, name, &v, sizeof(v)));
}

#endif
