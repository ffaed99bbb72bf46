/*
 * log.h - kvshim's log lines: "kvshim: <level>: message" on stderr.
 *
 * The lowest layer owns logging so that every layer above can use it. The
 * level comes from KVSHIM_LOG through kv_log_set_level(); errors repeated
 * from one place in the code are capped so a failing driver cannot flood the
 * host program's stderr. A line is one line: control characters in what is
 * logged (a value from the environment, a path) are written escaped.
 */
#ifndef KV_LOG_H
#define KV_LOG_H

#include <stddef.h>

enum kv_log_level {
	KV_LOG_NONE = 0,
	KV_LOG_ERROR = 1,
	KV_LOG_WARN = 2,
	KV_LOG_INFO = 3,
	KV_LOG_DEBUG = 4
};

/* Lines one call site may print before it falls silent. */
#define KV_LOG_CAP 8

void kv_log_set_level(int level);
int kv_log_get_level(void);

/* Print one line if level is enabled. count, when not NULL, is the call
 * site's counter: past KV_LOG_CAP lines the site prints one last notice and
 * then nothing. */
void kv_log(int level, unsigned *count, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Copy s into buf (len bytes, NUL ended) with every control character,
 * backslash and byte outside printable ASCII written as an escape (\n, \t,
 * \r, \\, \xHH), and "..." where it had to be cut short: a value read from
 * outside, fit for a log line. Returns buf. */
const char *kv_log_escape(const char *s, char *buf, size_t len);

#define kv_log_capped(level, ...) do {                                   \
		static unsigned kv_log_site_count_;                      \
		kv_log((level), &kv_log_site_count_, __VA_ARGS__);       \
	} while (0)

#define kv_error(...) kv_log_capped(KV_LOG_ERROR, __VA_ARGS__)
#define kv_warn(...)  kv_log_capped(KV_LOG_WARN, __VA_ARGS__)
#define kv_info(...)  kv_log(KV_LOG_INFO, 0, __VA_ARGS__)
#define kv_debug(...) kv_log(KV_LOG_DEBUG, 0, __VA_ARGS__)

#endif /* KV_LOG_H */
