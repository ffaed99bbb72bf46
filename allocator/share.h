/*
 * share.h - one GPU's memory budget, shared by every kvshim process on it.
 *
 * A segment in /dev/shm (named from the GPU's UUID and an optional pool
 * name) holds a slot per process: what it holds, its floor and ceiling,
 * and the bytes other processes ask it to give back. A process takes budget
 * before it creates physical pages and gives it back when it releases
 * them; when the budget is held by others, it asks those with idle pages
 * (cached or pooled, above their floor) to trim, and waits a bounded time.
 *
 * The lock is a robust process-shared mutex: a process killed while
 * holding it leaves it recoverable. A process that died leaves its slot,
 * which the next look reclaims (its pages went with it). The segment is
 * checked (magic, version, size, slot count, sane figures) every time it is
 * opened; a segment that fails is refused, never trusted.
 */
#ifndef KV_SHARE_H
#define KV_SHARE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define KV_SHARE_MAGIC 0x315348535653564bULL   /* "KVSVSHS1" */
#define KV_SHARE_VERSION 1
#define KV_SHARE_SLOTS 64

struct kv_share_slot {
	int32_t pid;             /* 0: free */
	uint32_t pad;
	uint64_t start;          /* the process's start time, against pid reuse */
	char cmd[64];
	uint64_t held;           /* bytes of physical pages it holds */
	uint64_t mapped;         /* of those, mapped into spans (cached too) */
	uint64_t cached;
	uint64_t pooled;
	uint64_t reserved;       /* virtual bytes of its spans */
	uint64_t min, max;       /* its floor and ceiling; max 0: none */
	uint64_t last_ns;        /* CLOCK_REALTIME of its last change */
	uint64_t trim_request;   /* bytes others ask it to give back */
	uint64_t trimmed;        /* bytes it gave back on request */
	uint64_t pidns;          /* its pid namespace (inode), 0 if unknown */
};

struct kv_share {
	uint64_t magic;
	uint32_t version;
	uint32_t size;           /* sizeof(struct kv_share) */
	uint32_t nslots;
	uint32_t mode;
	uint64_t budget;         /* bytes all processes may hold together */
	uint64_t device_bytes;
	char name[128];
	pthread_mutex_t lock;    /* robust, process-shared */
	struct kv_share_slot slot[KV_SHARE_SLOTS];
};

typedef struct kv_share_handle_s kv_share_t;

/*
 * Open (creating it if needed, with mode) the segment for GPU uuid and
 * pool name (may be NULL), and take a slot for this process. budget is
 * the bytes all processes may hold (0: device_bytes); a segment that
 * exists keeps its budget. min and max are this process's floor and
 * ceiling (max 0: none). Returns 0, KVSHIM_EINVAL, KVSHIM_ESTATE (the
 * segment is corrupt, of another version, or full) or KVSHIM_ENOMEM.
 */
int kv_share_open(const char *uuid, const char *pool, uint64_t budget,
		  uint64_t device_bytes, uint64_t min, uint64_t max,
		  unsigned mode, kv_share_t **out);
void kv_share_close(kv_share_t *s);

/*
 * Take bytes of budget for new pages. The others' floors count as held:
 * a process below its floor can always grow to it. Returns 0; KVSHIM_ELIMIT
 * when this process's ceiling forbids it; or KV_SHARE_WAIT when others
 * hold the budget with idle pages: they have been asked to trim, and the
 * caller should try again shortly. When nobody can give way, KVSHIM_ELIMIT.
 */
#define KV_SHARE_WAIT 2
int kv_share_take(kv_share_t *s, uint64_t bytes);

/* kv_share_take for pages not needed yet (refilling the pool): never asks
 * others to trim; KVSHIM_ELIMIT when the budget is short. */
int kv_share_take_spare(kv_share_t *s, uint64_t bytes);

/* Give bytes of budget back (pages released). */
void kv_share_give(kv_share_t *s, uint64_t bytes);

/* Publish this process's figures, and read the bytes others ask it to
 * trim (the request is cleared). */
uint64_t kv_share_update(kv_share_t *s, uint64_t mapped, uint64_t cached,
			 uint64_t pooled, uint64_t reserved);

/* Publish this process's idle pages at once (after an unmap: others
 * deciding whom to ask must not read a stale figure). */
void kv_share_note(kv_share_t *s, uint64_t cached, uint64_t pooled);

/* The pool's budget, the bytes the other processes hold now, and the most
 * this process could hold: the budget less what the others use and what
 * their floors keep for them (their idle pages come back on request). */
void kv_share_figures(kv_share_t *s, uint64_t *budget, uint64_t *others,
		      uint64_t *room);

/* Record bytes given back on request. */
void kv_share_trimmed(kv_share_t *s, uint64_t bytes);

/* Check a mapped segment: 0, or KVSHIM_ESTATE with *why set. */
int kv_share_check(const struct kv_share *sh, size_t len, const char **why);

#endif /* KV_SHARE_H */
