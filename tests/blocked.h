/*
 * blocked.h - for tests that fork while another thread holds one of
 * kvshim's locks: whether a thread of this process is asleep (blocked on a
 * lock, a pipe, a FIFO), read from /proc. A test waits for it as the sign
 * that a thread has reached the point where it blocks, never for a time.
 */
#ifndef KT_BLOCKED_H
#define KT_BLOCKED_H

#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

/* 1 when thread tid of this process sleeps interruptibly (state S),
 * 0 when it runs or the state cannot be read. */
static inline int kt_blocked(pid_t tid)
{
	char path[64], buf[512], *p;
	size_t n;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')');          /* the command may hold spaces */
	return p && p[1] == ' ' && p[2] == 'S';
}

/* Yield until thread tid sleeps or *done is set (acquire). */
static inline void kt_wait_blocked(pid_t tid, const int *done)
{
	while (!__atomic_load_n(done, __ATOMIC_ACQUIRE) && !kt_blocked(tid))
		sched_yield();
}

#endif /* KT_BLOCKED_H */
