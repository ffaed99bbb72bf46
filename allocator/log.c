/*
 * log.c - formatted log lines written with one write(2), so that lines from
 * several threads do not interleave and nothing is buffered in stdio (the
 * host program may not have set stdio up yet when a preloaded library logs).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
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

/* Append byte c to out[*n], escaped if it is a control character or
 * outside ASCII (and, with backslash set, if it is a backslash), provided
 * *n stays under len. Returns 0, or -1 when it does not fit. */
static int put_escaped(char *out, size_t *n, size_t len, unsigned char c,
		       int backslash)
{
	static const char hex[] = "0123456789abcdef";
	char e[4];
	size_t k = 0, i;

	if (c == '\n' || c == '\t' || c == '\r' || (c == '\\' && backslash)) {
		e[k++] = '\\';
		e[k++] = c == '\n' ? 'n' : c == '\t' ? 't' : c == '\r' ? 'r' : '\\';
	} else if (c < 0x20 || c >= 0x7f) {
		e[k++] = '\\';
		e[k++] = 'x';
		e[k++] = hex[c >> 4];
		e[k++] = hex[c & 15];
	} else {
		e[k++] = (char)c;
	}
	if (*n + k >= len)
		return -1;
	for (i = 0; i < k; i++)
		out[(*n)++] = e[i];
	return 0;
}

const char *kv_log_escape(const char *s, char *buf, size_t len)
{
	size_t n = 0;

	if (len < 4) {
		if (len)
			buf[0] = '\0';
		return buf;
	}
	for (; *s; s++) {
		if (put_escaped(buf, &n, len - 3, (unsigned char)*s, 1)) {
			memcpy(buf + n, "...", 3);
			n += 3;
			break;
		}
	}
	buf[n] = '\0';
	return buf;
}

void kv_log(int l, unsigned *count, const char *fmt, ...)
{
	char buf[512], line[1024];
	va_list ap;
	unsigned n = 0;
	size_t k = 0, i;
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
	if (len > (int)sizeof(buf) - 1)
		len = (int)sizeof(buf) - 1;
	/* one line, whatever the message holds */
	for (i = 0; i < (size_t)len; i++)
		if (put_escaped(line, &k, sizeof(line) - 1, (unsigned char)buf[i], 0))
			break;
	line[k++] = '\n';
	if (write(STDERR_FILENO, line, k) < 0)
		return;
}
