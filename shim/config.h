/*
 * config.h - every KVSHIM_* variable, declared once in KV_CONFIG_TABLE with
 * its default, its parser and a one-line meaning. The README's configuration
 * table is this table (tests/test_api.c checks that they agree).
 */
#ifndef KV_CONFIG_H
#define KV_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* X(NAME, field, parser, default, meaning) */
#define KV_CONFIG_TABLE(X)                                                   \
	X(LOG, log, level, "warn",                                           \
	  "log level: none, error, warn, info or debug (or 0-4)")            \
	X(STRICT, strict, bool, "off",                                       \
	  "on a malformed variable exit the program with status 64 instead of disabling kvshim") \
	X(DEVICE, devices, devices, "all",                                   \
	  "CUDA devices whose memory kvshim manages: all, or a list of ordinals (0,2); allocations on other devices pass through") \
	X(PAGE, page, size_auto, "auto",                                     \
	  "physical page size, a multiple of the GPU's granularity (2 MiB); larger pages map with fewer driver calls but back memory more coarsely") \
	X(LIMIT, limit, size_pct, "100%",                                    \
	  "most physical memory this process may hold in pages: bytes (K/M/G/T suffixes; more than the device's memory is capped to it) or % of device memory; sharing a budget, a ceiling too, stated in the segment") \
	X(POOL_LOW, pool_low, size, "8M",                                    \
	  "the pool of ready pages is refilled in the background when it drops under this") \
	X(POOL_HIGH, pool_high, size, "64M",                                 \
	  "...up to this; pages pooled beyond it are given back to the driver") \
	X(CACHE_MAX, cache_max, size_off, "off",                             \
	  "pages left unclaimed but still mapped beyond this are unmapped in the background; off: no cap") \
	X(ZERO, zero, bool, "on",                                            \
	  "scrub a page before it reaches a span, so no span sees another's bytes") \
	X(WINDOW_MIN, window_min, size, "16M",                               \
	  "inside a KV window (kvshim_kv_begin/end), allocations of at least this become lazy spans") \
	X(MIN_BYTES, min_bytes, size_off, "off",                             \
	  "outside a window, allocations of at least this become spans mapped in full (off: none)") \
	X(MEMINFO, meminfo, meminfo, "virtual",                              \
	  "what cudaMemGetInfo/cuMemGetInfo report: real (the driver's figures) or virtual (spans counted as fully backed, kvshim's idle pages as free)") \
	X(SHARE, share, share, "auto",                                      \
	  "share one budget with the GPU's other kvshim processes (a segment in /dev/shm): auto (when kvshim starts its allocator; alone if the segment cannot be joined), on (from the first memory-info call; kvshim off if the segment is refused) or off") \
	X(POOL, pool, name, "",                                              \
	  "name of the shared segment's pool (letters, digits, - and _): processes share a budget only within one pool") \
	X(BUDGET, budget, budget, "100%",                                    \
	  "bytes all processes of the pool may hold in pages together, or % of device memory (set by the segment's creator, or by the first to join it after all its processes have gone); sharing, under one page is refused") \
	X(RESERVE, reserve_pct, reserve, "5%",                               \
	  "of the shared budget, the part kept free while processes share it, from idle pages and pages only a prefix cache holds, never from requests: a percentage from 0 to 50, or off (set with the budget)") \
	X(MIN, min, size, "0",                                               \
	  "this process's floor in the shared budget: kept for it while it holds less, and never trimmed below on request (rounded up to whole pages, at most the ceiling's and the budget's whole pages and the limit; joining beside others, at most what their floors leave of the budget, with a warning); sharing, more than the budget is refused") \
	X(MAX, max, size_zero_off, "off",                                    \
	  "this process's ceiling in the shared budget; off: none; sharing, under one page is refused") \
	X(WEIGHT, weight, weight, "1",                                       \
	  "this process's weight in the shared budget's fair shares: a whole number from 1 to 1000") \
	X(SHARE_MODE, share_mode, mode, "0600",                              \
	  "permissions of a segment this process creates, and the only ones it joins (octal, owner rw, nothing for others, the group rw or nothing; 0660: shared with the group)") \
	X(CB_READ_TOKENS, cb_read_tokens, reads, "auto",                     \
	  "transformers continuous batching: the most KV tokens one step reads, which sizes its attention mask and index buffers: auto (from the workload), off (the whole cache, transformers' own size), a number of tokens (K, M suffixes) or a memory size (K, M, G or T, then B or iB, binary either way: the tokens a cache of that size holds, as a static share's)") \
	X(CB_AHEAD, cb_ahead, bool, "on",                                    \
	  "transformers continuous batching: map the blocks the next step's prefill will take while the current step computes, on a thread of the adapter") \
	X(CB_PACK, cb_pack, bool, "on",                                      \
	  "transformers continuous batching, while other processes share its budget: asked to give back, move blocks in use off the pages they share with few others (their KV copied on the GPU, the block tables rewritten) so that those pages go back, before preempting requests") \
	X(CB_CUSHION, cb_cushion, bool, "on",                                \
	  "transformers continuous batching, while other processes share its budget: an engine with requests states one step's prefill as demand even when none waits, and keeps it backed for the next request; off: it states only what its waiting requests need, with the scheduler's margin") \
	X(CB_IDLE_CUSHION, cb_idle_cushion, bool, "off",                     \
	  "transformers continuous batching, while other processes share its budget and KVSHIM_CB_CUSHION is on: an engine without requests keeps its cushion too (one step's prefill stated as demand and kept backed), so that the first step of its next burst maps at once; off: an idle engine's pages are the others'") \
	X(CB_GIVE_BACK, cb_give_back, bool, "on",                            \
	  "transformers continuous batching: after a batch it runs without a CUDA graph (one reading more than its share of a shared budget), give PyTorch's cache of free device memory back to the driver, but not while a stream of the process captures; off: it stays until the engine's next graph capture") \
	X(CB_KV_PAD, cb_kv_pad, pad, "auto",                                 \
	  "transformers continuous batching: the multiple of tokens a step's KV read is padded to (at most the read budget, or the cache without one), which with its queries and longest KV keys its CUDA graphs: auto (8192 where transformers' own is coarser, as 5.17's 16384 is; its own where as fine) or a number of tokens (K, M suffixes); one at or above the read budget pads every step to the budget") \
	X(CB_STARVED_MS, cb_starved_ms, ms, "250",                            \
	  "transformers continuous batching, while its reads follow its share of a shared budget (KVSHIM_CB_READ_TOKENS=auto): an admitted request this many milliseconds without its first token or progress in its prefill raises the engine's bound for it, pass by pass (twice as long: to every admitted request's reads); a whole number from 1 to 60000")

/* Device ordinals KVSHIM_DEVICE can name: 0 to KV_MAX_DEVICES - 1. */
#define KV_MAX_DEVICES 64

struct kv_config {
	int log;
	int strict;
	uint64_t devices;    /* bit d: kvshim manages device d */
	int devices_all;     /* KVSHIM_DEVICE=all (devices has every bit) */
	size_t page;         /* 0: the granularity */
	size_t limit;        /* bytes, or 0 when limit_pct applies */
	unsigned limit_pct;  /* 1-100, or 0 when limit is in bytes */
	size_t pool_low;
	size_t pool_high;
	size_t cache_max;    /* SIZE_MAX: off */
	int zero;
	size_t window_min;
	size_t min_bytes;    /* SIZE_MAX: off */
	int meminfo;         /* KV_MEMINFO_* */
	int share;           /* KV_SHARE_CFG_* */
	char pool[49];
	size_t budget;       /* bytes, or 0 when budget_pct applies */
	unsigned budget_pct;
	unsigned reserve_pct; /* 0..50 */
	size_t min;
	size_t max;          /* 0: none */
	unsigned weight;     /* 1..KV_WEIGHT_MAX */
	unsigned share_mode;
	size_t cb_read_tokens; /* 0: auto, SIZE_MAX: off; the Python adapter reads it */
	size_t cb_read_bytes;  /* a memory size given, else 0 (cb_read_tokens 0) */
	int cb_ahead;          /* the Python adapter reads it */
	int cb_pack;           /* the Python adapter reads it */
	int cb_cushion;        /* the Python adapter reads it */
	int cb_idle_cushion;   /* the Python adapter reads it */
	int cb_give_back;      /* the Python adapter reads it */
	size_t cb_kv_pad;      /* 0: auto; the Python adapter reads it */
	size_t cb_starved_ms;  /* 1..KV_STARVED_MS_MAX; the Python adapter reads it */
};

/* The most KVSHIM_CB_STARVED_MS may be. */
#define KV_STARVED_MS_MAX 60000

/* The most tokens KVSHIM_CB_READ_TOKENS may name. */
#define KV_READ_TOKENS_MAX ((size_t)1 << 30)

enum { KV_MEMINFO_REAL = 0, KV_MEMINFO_VIRTUAL = 1 };

/* KVSHIM_SHARE: the allocator's KV_ALLOC_SHARE_* values. */
enum { KV_SHARE_CFG_OFF = 0, KV_SHARE_CFG_ON = 1, KV_SHARE_CFG_AUTO = 2 };

/* The most KVSHIM_WEIGHT may be (allocator/fair.h's KV_FAIR_WEIGHT_MAX). */
#define KV_WEIGHT_MAX 1000

/* One entry of the table, for --print-config style listings. */
struct kv_config_var {
	const char *name;    /* without the KVSHIM_ prefix */
	const char *def;
	const char *meaning;
};
extern const struct kv_config_var kv_config_vars[];
extern const size_t kv_config_nvars;

/*
 * Fill c from the environment (ignored in setuid/setgid programs), defaults
 * where a variable is unset. A malformed value is reported as
 * "kvshim: KVSHIM_X=value: why" and leaves its default in place.
 * Returns 0, or KVSHIM_ECONFIG if any value was malformed (c is still
 * complete).
 */
int kv_config_load(struct kv_config *c);

/* Parsers, exposed for tests. Each returns 0 or KVSHIM_ECONFIG with *why
 * set to a short reason. */
int kv_parse_size(const char *s, size_t *out, const char **why);
int kv_parse_bool(const char *s, int *out, const char **why);

/* Whether c lets kvshim manage device ordinal dev: 1 or 0. */
static inline int kv_config_manages(const struct kv_config *c, int dev)
{
	return dev >= 0 && dev < KV_MAX_DEVICES && (c->devices >> dev & 1);
}

#endif /* KV_CONFIG_H */
