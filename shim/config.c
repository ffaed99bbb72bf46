/*
 * config.c - reading KVSHIM_* from the environment.
 *
 * Variables are read through getenv only, once, at kvshim's start; a
 * preloaded library may start before the host program's main, so nothing
 * here allocates or depends on the host's state.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/auxv.h>

#include "config.h"
#include "fair.h"
#include "kvshim.h"
#include "log.h"
#include "share.h"

#define KV_ENTRY(NAME, field, parser, def, meaning) { #NAME, def, meaning },
const struct kv_config_var kv_config_vars[] = {
	KV_CONFIG_TABLE(KV_ENTRY)
};
#undef KV_ENTRY
const size_t kv_config_nvars = sizeof(kv_config_vars) / sizeof(kv_config_vars[0]);

_Static_assert(KV_WEIGHT_MAX == KV_FAIR_WEIGHT_MAX, "KVSHIM_WEIGHT's bound is the rule's");

int kv_parse_bool(const char *s, int *out, const char **why)
{
	static const char *const yes[] = { "1", "true", "yes", "on" };
	static const char *const no[] = { "0", "false", "no", "off" };
	size_t i;

	for (i = 0; i < 4; i++) {
		if (!strcasecmp(s, yes[i])) {
			*out = 1;
			return 0;
		}
		if (!strcasecmp(s, no[i])) {
			*out = 0;
			return 0;
		}
	}
	*why = "expected 1/true/yes/on or 0/false/no/off";
	return KVSHIM_ECONFIG;
}

/*
 * The number written in digits of base (8 or 10) at the start of s: no
 * white space, no sign, no base prefix before them. *v gets it and *end the
 * first byte after the digits. Returns 0; -1 when s does not start with a
 * digit; -2 when the number is over max (checked before it could wrap).
 */
static int digits(const char *s, unsigned base, unsigned long long max,
		  unsigned long long *v, const char **end)
{
	unsigned long long n = 0;
	unsigned d;

	if (*s < '0' || (unsigned)(*s - '0') >= base)
		return -1;
	for (; *s >= '0' && (d = (unsigned)(*s - '0')) < base; s++) {
		if (n > (max - d) / base)
			return -2;
		n = n * base + d;
	}
	*v = n;
	*end = s;
	return 0;
}

int kv_parse_size(const char *s, size_t *out, const char **why)
{
	unsigned long long v;
	unsigned shift = 0;
	const char *end;
	int rc;

	rc = digits(s, 10, SIZE_MAX, &v, &end);
	if (rc == -2) {
		*why = "too large";
		return KVSHIM_ECONFIG;
	}
	if (rc) {
		*why = "expected a number of bytes, with an optional K, M, G or T suffix";
		return KVSHIM_ECONFIG;
	}
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	}
	if (shift && (*end == 'i' || *end == 'I'))
		end++;
	if (shift && (*end == 'b' || *end == 'B'))
		end++;
	if (*end) {
		*why = "expected a number of bytes, with an optional K, M, G or T suffix";
		return KVSHIM_ECONFIG;
	}
	if (v > (SIZE_MAX >> shift)) {
		*why = "too large";
		return KVSHIM_ECONFIG;
	}
	*out = (size_t)(v << shift);
	return 0;
}

static int parse_level(const char *s, int *out, const char **why)
{
	static const char *const names[] = {
		"none", "error", "warn", "info", "debug"
	};
	int i;

	for (i = 0; i <= KV_LOG_DEBUG; i++) {
		if (!strcasecmp(s, names[i]) ||
		    (s[0] == '0' + i && s[1] == '\0')) {
			*out = i;
			return 0;
		}
	}
	if (!strcasecmp(s, "warning")) {
		*out = KV_LOG_WARN;
		return 0;
	}
	*why = "expected none, error, warn, info, debug or 0-4";
	return KVSHIM_ECONFIG;
}

/*
 * KVSHIM_DEVICE: all, or device ordinals (0 to KV_MAX_DEVICES - 1, digits
 * only) separated by commas, each once.
 */
static int parse_devices(const char *s, struct kv_config *c, const char **why)
{
	unsigned long long v;
	const char *end;
	uint64_t mask = 0;
	int rc;

	if (!strcasecmp(s, "all")) {
		c->devices = UINT64_MAX;
		c->devices_all = 1;
		return 0;
	}
	for (;;) {
		rc = digits(s, 10, KV_MAX_DEVICES - 1, &v, &end);
		if (rc == -2) {
			*why = "a device ordinal above 63";
			return KVSHIM_ECONFIG;
		}
		if (rc || (*end && *end != ',')) {
			*why = *s == ',' || !*s ? "an empty entry: expected all, or device ordinals separated by commas (0,2)"
			       : "expected all, or device ordinals (digits only) separated by commas (0,2)";
			return KVSHIM_ECONFIG;
		}
		if (mask >> v & 1) {
			*why = "a device is listed twice";
			return KVSHIM_ECONFIG;
		}
		mask |= 1ull << v;
		if (!*end)
			break;
		s = end + 1;
	}
	c->devices = mask;
	c->devices_all = 0;
	return 0;
}

/* A size, or a whole percentage of device memory from 1 to 100. */
static int parse_size_pct(const char *s, struct kv_config *c, const char **why)
{
	size_t len = strlen(s);
	unsigned long long v;
	const char *end;

	if (len > 1 && s[len - 1] == '%') {
		if (digits(s, 10, 100, &v, &end) || end != s + len - 1 || v < 1) {
			*why = "a percentage must be a whole number from 1 to 100";
			return KVSHIM_ECONFIG;
		}
		c->limit = 0;
		c->limit_pct = (unsigned)v;
		return 0;
	}
	if (kv_parse_size(s, &c->limit, why))
		return KVSHIM_ECONFIG;
	if (c->limit == 0) {
		*why = "must be above zero";
		return KVSHIM_ECONFIG;
	}
	c->limit_pct = 0;
	return 0;
}

static int parse_size_auto(const char *s, size_t *out, const char **why)
{
	if (!strcasecmp(s, "auto")) {
		*out = 0;
		return 0;
	}
	if (kv_parse_size(s, out, why))
		return KVSHIM_ECONFIG;
	if (*out == 0 || *out % (2u << 20)) {
		*why = "must be a whole number of 2 MiB pages, or auto";
		return KVSHIM_ECONFIG;
	}
	return 0;
}

static int parse_size_off(const char *s, size_t *out, const char **why)
{
	if (!strcasecmp(s, "off") || !strcasecmp(s, "none")) {
		*out = SIZE_MAX;
		return 0;
	}
	return kv_parse_size(s, out, why);
}

/* parse_tokens' reasons for a number past KV_READ_TOKENS_MAX and for 0. */
static const char tokens_too_large[] = "too large (at most 1G tokens)";
static const char above_zero[] = "must be above zero (off: the whole cache)";

/* parse_reads' reason for what is neither tokens nor a memory size. */
static const char reads_expected[] =
	"expected auto, off, a number of tokens (an optional K or M suffix) "
	"or a memory size (K, M, G or T, then B or iB)";

/*
 * A number of tokens, digits with an optional K (1024) or M (1048576)
 * suffix, from 1 to KV_READ_TOKENS_MAX; auto is 0, off (or none) SIZE_MAX.
 */
static int parse_tokens(const char *s, size_t *out, const char **why)
{
	static const char *const expected =
		"expected auto, off or a number of tokens, with an optional K or M suffix";
	unsigned long long v;
	unsigned shift = 0;
	const char *end;
	int rc;

	if (!strcasecmp(s, "auto")) {
		*out = 0;
		return 0;
	}
	if (!strcasecmp(s, "off") || !strcasecmp(s, "none")) {
		*out = SIZE_MAX;
		return 0;
	}
	rc = digits(s, 10, KV_READ_TOKENS_MAX, &v, &end);
	if (rc == -2) {
		*why = tokens_too_large;
		return KVSHIM_ECONFIG;
	}
	if (rc) {
		*why = expected;
		return KVSHIM_ECONFIG;
	}
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	}
	if (*end) {
		*why = expected;
		return KVSHIM_ECONFIG;
	}
	if (v == 0) {
		*why = above_zero;
		return KVSHIM_ECONFIG;
	}
	if (v > (KV_READ_TOKENS_MAX >> shift)) {
		*why = tokens_too_large;
		return KVSHIM_ECONFIG;
	}
	*out = (size_t)(v << shift);
	return 0;
}

/*
 * KVSHIM_CB_READ_TOKENS: auto, off or a number of tokens as parse_tokens
 * reads them (cb_read_tokens), or a memory size, digits then K, M, G or T
 * and B or iB (cb_read_bytes, from 1 byte): the tokens a cache of that many
 * bytes holds, which only the adapter can count. The B tells the two
 * apart: 16M is tokens, 16MiB bytes; K, M, G and T are binary either way
 * (2GB is 2GiB). Sets one field and zeroes the other. Returns 0, or
 * KVSHIM_ECONFIG with *why set and both fields untouched.
 */
static int parse_reads(const char *s, struct kv_config *c, const char **why)
{
	size_t n = strlen(s), bytes;

	if (n >= 2 && (s[n - 1] == 'b' || s[n - 1] == 'B') &&
	    (s[n - 2] < '0' || s[n - 2] > '9')) {
		if (kv_parse_size(s, &bytes, why))
			return KVSHIM_ECONFIG;
		if (bytes == 0) {
			*why = above_zero;
			return KVSHIM_ECONFIG;
		}
		c->cb_read_bytes = bytes;
		c->cb_read_tokens = 0;
		return 0;
	}
	if (parse_tokens(s, &c->cb_read_tokens, why)) {
		if (*why != tokens_too_large && *why != above_zero)
			*why = reads_expected;
		return KVSHIM_ECONFIG;
	}
	c->cb_read_bytes = 0;
	return 0;
}

/*
 * auto (0), or a number of tokens as parse_tokens reads one; off names no
 * padding, so it is refused. Returns 0, or KVSHIM_ECONFIG with *why set
 * and *out untouched.
 */
static int parse_pad(const char *s, size_t *out, const char **why)
{
	static const char *const expected =
		"expected auto or a number of tokens, with an optional K or M suffix";
	size_t v;
	int rc;

	if (!strcasecmp(s, "off") || !strcasecmp(s, "none")) {
		*why = expected;
		return KVSHIM_ECONFIG;
	}
	rc = parse_tokens(s, &v, why);
	if (rc) {
		if (*why != tokens_too_large)
			*why = expected;
		return rc;
	}
	*out = v;
	return 0;
}

/*
 * A whole number of milliseconds from 1 to KV_STARVED_MS_MAX, digits only.
 * Returns 0, or KVSHIM_ECONFIG with *why set and *out untouched.
 */
static int parse_ms(const char *s, size_t *out, const char **why)
{
	unsigned long long v;
	const char *end;
	int rc = digits(s, 10, KV_STARVED_MS_MAX, &v, &end);

	if (rc == -2) {
		*why = "too large (at most 60000 milliseconds)";
		return KVSHIM_ECONFIG;
	}
	if (rc || *end || v == 0) {
		*why = "expected a whole number of milliseconds from 1 to 60000, digits only";
		return KVSHIM_ECONFIG;
	}
	*out = (size_t)v;
	return 0;
}

/* auto, or a boolean: on and off. */
static int parse_share(const char *s, int *out, const char **why)
{
	int on;

	if (!strcasecmp(s, "auto")) {
		*out = KV_SHARE_CFG_AUTO;
		return 0;
	}
	if (kv_parse_bool(s, &on, why)) {
		*why = "expected auto, 1/true/yes/on or 0/false/no/off";
		return KVSHIM_ECONFIG;
	}
	*out = on ? KV_SHARE_CFG_ON : KV_SHARE_CFG_OFF;
	return 0;
}

/* A whole number from 1 to KV_WEIGHT_MAX, digits only. */
static int parse_weight(const char *s, unsigned *out, const char **why)
{
	unsigned long long v;
	const char *end;
	int rc = digits(s, 10, KV_WEIGHT_MAX, &v, &end);

	if (rc == -2) {
		*why = "too large (at most 1000)";
		return KVSHIM_ECONFIG;
	}
	if (rc || *end) {
		*why = "expected a whole number from 1 to 1000, digits only";
		return KVSHIM_ECONFIG;
	}
	if (v == 0) {
		*why = "must be at least 1 (a process of weight 0 would have no share)";
		return KVSHIM_ECONFIG;
	}
	*out = (unsigned)v;
	return 0;
}

static int parse_meminfo(const char *s, int *out, const char **why)
{
	if (!strcasecmp(s, "real")) {
		*out = KV_MEMINFO_REAL;
		return 0;
	}
	if (!strcasecmp(s, "virtual")) {
		*out = KV_MEMINFO_VIRTUAL;
		return 0;
	}
	*why = "expected real or virtual";
	return KVSHIM_ECONFIG;
}

static int parse_name(const char *s, char *out, size_t len, const char **why)
{
	size_t i;

	for (i = 0; s[i]; i++) {
		if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_') {
			*why = "only letters, digits, - and _";
			return KVSHIM_ECONFIG;
		}
	}
	if (i >= len) {
		*why = "longer than 48 characters";
		return KVSHIM_ECONFIG;
	}
	memcpy(out, s, i + 1);
	return 0;
}

static int parse_budget(const char *s, struct kv_config *c, const char **why)
{
	size_t limit = c->limit;
	unsigned pct = c->limit_pct;
	int rc;

	/* the limit's parser, then the result moved to the budget's fields */
	rc = parse_size_pct(s, c, why);
	c->budget = c->limit;
	c->budget_pct = c->limit_pct;
	c->limit = limit;
	c->limit_pct = pct;
	return rc;
}

/* A percentage from 0 to 50 (the % may be left out), or off: 0. */
static int parse_reserve(const char *s, unsigned *out, const char **why)
{
	unsigned long long v;
	const char *end;
	int rc;

	if (!strcasecmp(s, "off") || !strcasecmp(s, "none")) {
		*out = 0;
		return 0;
	}
	rc = digits(s, 10, UINT64_MAX, &v, &end);
	if (rc == -1 || (!rc && *end && strcmp(end, "%"))) {
		*why = "expected a percentage of the budget from 0 to 50 (e.g. 5%), or off";
		return KVSHIM_ECONFIG;
	}
	if (rc || v > 50) {
		*why = "too large (at most 50%: the rest of the budget is the processes')";
		return KVSHIM_ECONFIG;
	}
	*out = (unsigned)v;
	return 0;
}

static int parse_size_zero_off(const char *s, size_t *out, const char **why)
{
	if (!strcasecmp(s, "off") || !strcasecmp(s, "none")) {
		*out = 0;
		return 0;
	}
	if (kv_parse_size(s, out, why))
		return KVSHIM_ECONFIG;
	if (!*out) {
		*why = "must be above zero, or off";
		return KVSHIM_ECONFIG;
	}
	return 0;
}

/* Octal permissions that let the owner read and write (0600 to 0777), give
 * other users nothing and the group read and write together or neither
 * (kv_share_mode_ok): a segment every local user could write is never made
 * nor joined, and one a user may only read or only write would let that
 * user hold its locks. */
static int parse_mode(const char *s, unsigned *out, const char **why)
{
	unsigned long long v;
	const char *end;

	if (digits(s, 8, 0777, &v, &end) || *end || (v & 0600) != 0600) {
		*why = "expected octal permissions from 0600 to 0777 (the owner reads and writes)";
		return KVSHIM_ECONFIG;
	}
	if (!kv_share_mode_ok((unsigned)v, why))
		return KVSHIM_ECONFIG;
	*out = (unsigned)v;
	return 0;
}

/* Dispatch by the table's parser column. */
#define kv_apply_level(c, f, s, why) parse_level(s, &(c)->f, why)
#define kv_apply_bool(c, f, s, why) kv_parse_bool(s, &(c)->f, why)
#define kv_apply_devices(c, f, s, why) parse_devices(s, c, why)
#define kv_apply_size(c, f, s, why) kv_parse_size(s, &(c)->f, why)
#define kv_apply_size_pct(c, f, s, why) parse_size_pct(s, c, why)
#define kv_apply_size_off(c, f, s, why) parse_size_off(s, &(c)->f, why)
#define kv_apply_size_auto(c, f, s, why) parse_size_auto(s, &(c)->f, why)
#define kv_apply_meminfo(c, f, s, why) parse_meminfo(s, &(c)->f, why)
#define kv_apply_name(c, f, s, why) parse_name(s, (c)->f, sizeof((c)->f), why)
#define kv_apply_budget(c, f, s, why) parse_budget(s, c, why)
#define kv_apply_size_zero_off(c, f, s, why) parse_size_zero_off(s, &(c)->f, why)
#define kv_apply_mode(c, f, s, why) parse_mode(s, &(c)->f, why)
#define kv_apply_reads(c, f, s, why) parse_reads(s, c, why)
#define kv_apply_pad(c, f, s, why) parse_pad(s, &(c)->f, why)
#define kv_apply_ms(c, f, s, why) parse_ms(s, &(c)->f, why)
#define kv_apply_share(c, f, s, why) parse_share(s, &(c)->f, why)
#define kv_apply_weight(c, f, s, why) parse_weight(s, &(c)->f, why)
#define kv_apply_reserve(c, f, s, why) parse_reserve(s, &(c)->f, why)

int kv_config_load(struct kv_config *c)
{
	const char *why = NULL, *v;
	int secure = getauxval(AT_SECURE) != 0, rc = 0;
	char shown[96];

	memset(c, 0, sizeof(*c));
#define KV_DEFAULT(NAME, field, parser, def, meaning)                         \
	kv_apply_##parser(c, field, def, &why);
	KV_CONFIG_TABLE(KV_DEFAULT)
#undef KV_DEFAULT
	if (secure)
		return 0;
	/* the log level first, so the other variables' errors obey it */
#define KV_READ(NAME, field, parser, def, meaning)                            \
	v = getenv("KVSHIM_" #NAME);                                          \
	if (v && kv_apply_##parser(c, field, v, &why)) {                      \
		kv_log(KV_LOG_ERROR, NULL, "KVSHIM_" #NAME "=%s: %s",          \
		       kv_log_escape(v, shown, sizeof(shown)), why);          \
		kv_apply_##parser(c, field, def, &why);                       \
		rc = KVSHIM_ECONFIG;                                          \
	}                                                                     \
	if (!strcmp(#NAME, "LOG"))                                            \
		kv_log_set_level(c->log);
	KV_CONFIG_TABLE(KV_READ)
#undef KV_READ
	if (!rc && c->max && c->min > c->max) {
		kv_log(KV_LOG_ERROR, NULL, "KVSHIM_MIN=%zu: above KVSHIM_MAX=%zu",
		       c->min, c->max);
		rc = KVSHIM_ECONFIG;
	}
	if (!rc && c->pool_low > c->pool_high) {
		kv_log(KV_LOG_ERROR, NULL,
		       "KVSHIM_POOL_LOW=%zu: above KVSHIM_POOL_HIGH=%zu",
		       c->pool_low, c->pool_high);
		rc = KVSHIM_ECONFIG;
	}
	return rc;
}
