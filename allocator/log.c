/*
 * log.c - formatted log lines written with one write(2), so that lines from
 * several threads do not interleave and nothing is buffered in stdio (the
 * host program may not have set stdio up yet when a preloaded library logs).
 */
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "log.h"

static int level = KV_LOG_WARN;

static const char *const names[] = {
	"", "error", "warning", "info", "debug"
};

void kv_log_set_level(int l)
{
	if (l < KV_LOG_NONE)
		l = KV_LOG_NONE;
	if (l > KV_LOG_DEBUG)
		l = KV_LOG_DEBUG;
	__atomic_store_n(&level, l, __ATOMIC_RELAXED);
}

int kv_log_get_level(void)
{
	return __atomic_load_n(&level, __ATOMIC_RELAXED);
}

void kv_log(int l, unsigned *count, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	unsigned n = 0;
	int len, room;

	if (l <= KV_LOG_NONE || l > kv_log_get_level())
		return;
	if (count) {
		n = __atomic_add_fetch(count, 1, __ATOMIC_RELAXED);
		if (n > KV_LOG_CAP + 1)
			return;
	}
	len = snprintf(buf, sizeof(buf), "kvshim: %s: ", names[l]);
	if (n == KV_LOG_CAP + 1) {
		len += snprintf(buf + len, sizeof(buf) - len,
				"repeated error, further ones from here are not shown");
	} else {
		va_start(ap, fmt);
		room = (int)sizeof(buf) - len;
		len += vsnprintf(buf + len, room, fmt, ap);
		va_end(ap);
	}
	if (len > (int)sizeof(buf) - 2)
		len = (int)sizeof(buf) - 2;
	buf[len++] = '\n';
	if (write(STDERR_FILENO, buf, len) < 0)
		return;
}
