/*
 * share.h - one GPU's memory budget, shared by every kvshim process on it.
 *
 * A segment in /dev/shm (named from the GPU's UUID and an optional pool
 * name) holds a slot per process: what it holds, its floor, ceiling and
 * weight, what it waits for (its demand), and the bytes other processes
 * ask it to give back. A process takes budget before it creates physical
 * pages and gives it back when it releases them; when the budget is held
 * by others, it asks those with idle pages (cached or pooled, above their
 * floor, beyond what they wait for themselves: fair.h) to trim, and waits
 * a bounded time. Who may take and who must give
 * back what it uses is fair.h's rule: weighted fair shares.
 *
 * Every member can write all of the segment, so nothing in it is trusted:
 * it holds numbers only (no pointer, no lock state), each read with bounds,
 * and sums saturate. The locks are the kernel's: open-file-description locks
 * (F_OFD_SETLK) on byte ranges of the segment's file, held through a
 * descriptor opened O_CLOEXEC, so the kernel drops them when their process
 * dies or execs, whatever pid namespace it lives in:
 *   - each process holds its slot's lock for its whole life: a slot whose
 *     lock nobody holds belongs to no process, and is reclaimed by whoever
 *     looks at the budget next;
 *   - taking budget holds the update lock; a process that cannot have it
 *     within KV_SHARE_LOCK_WAIT_MS (its holder stopped or hung) goes on
 *     without it, safely: a taker first publishes what it wants (pending),
 *     then counts everyone's held and pending bytes, so two takers without
 *     the lock can both fail, never both pass over the budget;
 *   - a slot's writer (its process, or whoever reclaims it) makes its
 *     sequence number odd while it changes the slot: a reader that finds
 *     every slot's number even and unchanged around its reads has the
 *     figures of one instant;
 *   - setting a segment up or repairing it holds the set-up lock. A new
 *     segment is made as a file with no name and linked into place whole
 *     (a creator killed meanwhile leaves nothing; where that cannot be
 *     done, under a random temporary name); one found half made (its
 *     header zero) is set up again.
 * A segment is joined only if it is a regular file owned by this user with
 * exactly the mode this process would give it, or, with a group mode (e.g.
 * KVSHIM_SHARE_MODE=0660), owned by a group this process is in with that
 * mode. README.md ("Sharing one GPU") states the trust model.
 */
#ifndef KV_SHARE_H
#define KV_SHARE_H

#include <stddef.h>
#include <stdint.h>

#define KV_SHARE_MAGIC 0x315348535653564bULL   /* "KVSVSHS1", every version */
#define KV_SHARE_MAJOR 2       /* another major is refused */
#define KV_SHARE_MINOR 4       /* a newer minor only gives meaning to spare fields
				* (1: a slot's weight, demand and asked;
				* 2: its unused; 3: the header's reserve;
				* 4: a slot's limit, its last) */
#define KV_SHARE_SLOTS 64
#define KV_SHARE_DIR "/dev/shm"

/* Byte offsets of the segment file's locks (ranges of one byte; a lock's
 * range is only a name: nothing is written through it). */
#define KV_SHARE_LOCK_INIT 0       /* setting the segment up or repairing it */
#define KV_SHARE_LOCK_UPDATE 1     /* write: taking budget; read: a snapshot */
#define KV_SHARE_LOCK_SLOT0 64     /* + i: slot i's process, for its life */

/* How long a process waits for the update lock before it goes on without
 * it, and, for the second after that happened, how long it tries again. */
#define KV_SHARE_LOCK_WAIT_MS 100
#define KV_SHARE_STUCK_WAIT_MS 2
/* How long an opener waits for another process setting the segment up. */
#define KV_SHARE_INIT_WAIT_MS 1000

enum { KV_SLOT_FREE = 0, KV_SLOT_USED = 1 };

/* Fixed-size fields only, naturally aligned: the same bytes on every ABI. */
struct kv_share_slot {
	uint32_t state;          /* KV_SLOT_*: set by the slot lock's holder */
	int32_t pid;             /* in its own pid namespace: shown, never used */
	uint64_t pidns;          /* that namespace's inode, 0 if unknown */
	uint64_t held;           /* bytes of physical pages it holds */
	uint64_t pending;        /* bytes it is taking: counted as held */
	uint64_t mapped;         /* of those, mapped into spans (cached too) */
	uint64_t cached;
	uint64_t pooled;
	uint64_t reserved;       /* virtual bytes of its spans */
	uint64_t min, max;       /* its floor and ceiling; max 0: none */
	uint64_t last_ns;        /* CLOCK_REALTIME of its last change */
	uint64_t trim_request;   /* bytes others ask it to give back */
	uint64_t trimmed;        /* bytes it gave back on request */
	char cmd[64];
	uint64_t seq;            /* odd while the slot's writer changes it */
	/* minor 1 (0 in a slot of minor 0, read as weight 1, no demand) */
	uint64_t weight;         /* its KVSHIM_WEIGHT */
	uint64_t demand;         /* bytes it waits for now beyond the pages it
				  * maps (its idle pages count in it) */
	uint64_t asked;          /* of what it uses (its unused pages first),
				  * the bytes it is asked to give back now
				  * (fair.h), as it computed them */
	/* minor 2 (0 in a slot of an older minor: none) */
	uint64_t unused;         /* of what it uses, the bytes of pages only
				  * blocks no request uses claim (an engine's
				  * prefix cache), as it stated them */
	/* minor 4 (0 in a slot of an older minor: none) */
	uint64_t limit;          /* its KVSHIM_LIMIT: the most it can hold,
				  * and so its ceiling in the rule with max
				  * (fair.h); the slot's last spare word */
};

struct kv_share {
	uint64_t magic;          /* written last: a segment half set up has none */
	uint16_t major, minor;
	uint32_t size;           /* sizeof(struct kv_share) of its major */
	uint32_t nslots;
	uint32_t slot_size;
	uint32_t mode;           /* the mode its creator asked for */
	uint32_t flags;          /* zero; a newer minor may use it */
	uint64_t budget;         /* bytes all processes may hold together */
	uint64_t device_bytes;   /* the creator's device: shown, never used */
	uint64_t created_ns;     /* CLOCK_REALTIME */
	char name[128];
	/* minor 3 (0 in a segment of an older minor: none) */
	uint64_t reserve;        /* bytes the rule keeps free while two
				  * processes or more share the budget
				  * (fair.h); at most half the budget */
	uint64_t spare[16];      /* zero; a newer minor may use them */
	struct kv_share_slot slot[KV_SHARE_SLOTS];
};

_Static_assert(sizeof(struct kv_share_slot) == 216, "slot layout");
_Static_assert(sizeof(struct kv_share) == 320 + 64 * 216, "segment layout");

typedef struct kv_share_handle_s kv_share_t;

/*
 * Open (creating it if needed, with mode) the segment for GPU uuid and
 * pool name (may be NULL), and take a slot for this process. budget is
 * the bytes all processes may hold (0: device_bytes), reserve the bytes of
 * it the rule keeps free (fair.h; at most half the budget); a segment that
 * exists keeps its budget and reserve while another process holds a slot
 * in it, and takes these once none does. min and max are this process's
 * floor and ceiling (max 0: none), limit the most it can hold (its
 * KVSHIM_LIMIT, published in its slot: a ceiling too, for every member's
 * rule; 0: none), weight its weight in the fair shares (1 to
 * KV_FAIR_WEIGHT_MAX); min is at most max and limit. mode: owner rw,
 * nothing for others to write.
 * Each refusal is logged with the path, and for a segment not trusted its
 * owner and mode. Returns 0, KVSHIM_EINVAL (bad arguments, logged),
 * KVSHIM_ESTATE (the segment is not to be trusted, of another major
 * version, not a kvshim segment, or full) or KVSHIM_ENOMEM.
 */
int kv_share_open(const char *uuid, const char *pool, uint64_t budget,
		  uint64_t reserve, uint64_t device_bytes, uint64_t min, uint64_t max,
		  uint64_t limit, unsigned weight, unsigned mode, kv_share_t **out);

/* Give the slot back and close. In a child forked from the opener, only
 * frees the child's copy: the slot is the parent's. */
void kv_share_close(kv_share_t *s);

/*
 * Take bytes of budget for new pages. The others' floors count as held:
 * a process below its floor can always grow to it (a floor is cut, as
 * its process joins, to what the others' leave of the budget); so do the
 * claims of processes waiting below their share, for a process that would
 * pass its own (fair.h). Returns 0; KVSHIM_ELIMIT when this process's ceiling
 * forbids it; or KV_SHARE_WAIT when others hold the budget with idle pages
 * (they have been asked to trim), are taking budget themselves, or use
 * more than their share while this process waits below its own (they are
 * asked to give it back; KV_SHARE_WAIT_USED then, as only their engines
 * can, between their steps): the caller should try again shortly, and is
 * counted as waiting for need bytes (the whole map's, at least bytes: the
 * pages of its own it maps too, pooled or cached, count in it, as in an
 * engine's stated demand; see fair.h) until kv_share_waited. When nobody
 * can give way, KV_SHARE_NO: counted as waiting all the same (a map that
 * waits for pages of its own in flight keeps it); KVSHIM_ELIMIT at once,
 * asking nobody and counting nothing, for more than the whole budget; in a
 * forked child, KVSHIM_ESTATE.
 */
#define KV_SHARE_WAIT 2
#define KV_SHARE_WAIT_USED 3
#define KV_SHARE_NO 4
int kv_share_take(kv_share_t *s, uint64_t bytes, uint64_t need);

/* kv_share_take for pages not needed yet (refilling the pool): never asks
 * others to trim, and while others share the budget leaves its reserve
 * free. Returns 0 or KVSHIM_ELIMIT when the budget is short. */
int kv_share_take_spare(kv_share_t *s, uint64_t bytes);

/* A map refused by kv_share_take waits: until its kv_share_waited, what
 * this process published as waiting for stays. */
void kv_share_waiting(kv_share_t *s);

/* The map that took (or tried to) is over (waited: it called
 * kv_share_waiting): once no map of this process waits, it no longer
 * waits for what kv_share_take refused it. */
void kv_share_waited(kv_share_t *s, int waited);

/* State the bytes this process waits for now beyond the pages it maps (its
 * idle pages count in it; 0: none), e.g. what the requests waiting for
 * admission need; it counts for
 * KV_SHARE_DEMAND_MS unless stated again. Bounded by the budget. */
#define KV_SHARE_DEMAND_MS 1000
void kv_share_demand(kv_share_t *s, uint64_t bytes);

/* State the bytes of pages this process maps that only blocks no request
 * uses claim (an engine's prefix cache: kept for reuse, dropped at will);
 * unless it waits, the rule counts them out of what it uses, and asks for
 * them first (fair.h). It counts for KV_SHARE_DEMAND_MS unless stated again, and at
 * most what the process uses. */
void kv_share_unused(kv_share_t *s, uint64_t bytes);

/* The bytes of what it uses this process is asked to give back now (its
 * idle pages are given back without asking the engine): the engine
 * adapter frees that much, its unused pages first (kv_share_unused), then
 * by preempting work. Read afresh. With page (bytes, 0: none), in whole
 * pages: the unused part rounded up, the rest down, never below its
 * floor. */
uint64_t kv_share_asked(kv_share_t *s, uint64_t page);

/* Whether this process may use (claim) used bytes in all (its unused
 * pages among them, which count out of it): past its share
 * while others wait below theirs it may not grow what it uses, even from
 * its own idle pages (they are the others' due). As of the last update or
 * take, and lifted before a refusal once nobody waits (a process without a
 * worker would keep it). Returns 1 or 0. */
int kv_share_may_use(kv_share_t *s, uint64_t used);

/* Give bytes of budget back (pages released). */
void kv_share_give(kv_share_t *s, uint64_t bytes);

/* Publish this process's figures and what the rule asks of it (see
 * kv_share_asked); returns the bytes others ask it to trim (the request
 * is cleared), or, when more, what the reserve's free budget asks of its
 * idle pages (fair.h), at most what it holds above its floor. */
uint64_t kv_share_update(kv_share_t *s, uint64_t mapped, uint64_t cached,
			 uint64_t pooled, uint64_t reserved);

/* Publish this process's idle pages at once (after an unmap, a release, or
 * a map that took pages of its pool or cache, which takes no budget:
 * others deciding whom to ask must not read a stale figure). */
void kv_share_note(kv_share_t *s, uint64_t cached, uint64_t pooled);

/* The pool's budget alone (0 when the segment could not be had): cheap,
 * no slot reaped and no lock taken. */
uint64_t kv_share_budget(kv_share_t *s);

/* How many processes hold a slot in the pool's segment, this one included
 * (0 when the segment could not be had), once the slots of those that
 * ended are reaped: a lock probe per slot in use, no segment lock taken. */
unsigned kv_share_members(kv_share_t *s);

/* What this process is entitled to: its share of the budget were every
 * member to want all it may (kv_fair_entitled), by weight, floors and
 * ceilings (limits too: at most its own, and what another's keeps it from
 * holding goes to the rest); it moves as members come and go. Slots of processes that are
 * gone are reaped first. UINT64_MAX when the segment could not be had. */
uint64_t kv_share_entitled(kv_share_t *s);

/* The pool's budget, the bytes the other processes hold now, and the most
 * this process could hold: the budget less what the others use and what
 * their floors keep for them (their idle pages come back on request, but
 * those they keep for what they wait for themselves: fair.h), and
 * past its share, less what processes waiting below theirs claim.
 * Slots of processes that are gone are reclaimed first. */
void kv_share_figures(kv_share_t *s, uint64_t *budget, uint64_t *others,
		      uint64_t *room);

/* Record bytes given back on request. */
void kv_share_trimmed(kv_share_t *s, uint64_t bytes);

/* Check a segment's header (magic, version, layout). Slots are never a
 * reason to refuse: they are read with bounds. Returns 0, or KVSHIM_ESTATE
 * with *why set (why may name both versions: it points to a buffer of
 * this thread's that the next call reuses). */
int kv_share_check(const struct kv_share *sh, size_t len, const char **why);

/* ---- reading segments from outside (kvshim-config --segments, tests) ---- */

struct kv_share_proc {
	unsigned slot;
	int pid;                 /* in its own pid namespace */
	int other_pidns;         /* 1: not the reader's pid namespace */
	int alive;               /* 1: a process holds the slot's lock */
	int clamped;             /* 1: a figure was out of bounds */
	char cmd[4 * 64 + 1];    /* printable ASCII: other bytes as \xNN */
	uint64_t held, pending, mapped, cached, pooled, reserved;
	uint64_t min, max, last_ns, trim_request, trimmed;
	uint64_t weight, demand, asked;   /* as its slot says (bounded) */
	uint64_t unused;         /* as its slot says, at most what it uses */
	uint64_t limit;          /* as its slot says, at most the budget; 0:
				  * none (a slot of an older minor) */
	uint64_t share, gap;     /* the rule's, from the figures read (fair.h) */
	uint64_t most;           /* the rule's: the most it may use now, while
				  * another waits below its share
				  * (kv_fair_bound); UINT64_MAX: no bound;
				  * 0 for a process gone (read alive) */
	uint64_t entitled;       /* the rule's: its part were every process to
				  * want all (kv_fair_entitled), what the
				  * transformers adapter bounds a batch's
				  * read by (at most its own limit, as its
				  * slot states it; 0 for a process gone) */
};

struct kv_share_info {
	unsigned major, minor;
	unsigned uid, gid, mode; /* the file's owner, group and permissions */
	int joinable;            /* 1: this process's rule would join it */
	char why_not[320];       /* if not, why (the rule, owner and mode) */
	int locked;              /* 1: read under the update lock */
	int exact;               /* 1: the figures are one instant's (no slot
				  * changed while they were read) */
	unsigned reaped;         /* slots of dead processes reclaimed now */
	uint64_t budget, device_bytes;
	uint64_t reserve;        /* the header's, at most half the budget */
	char name[4 * 128 + 1];  /* printable, as cmd */
	uint64_t held, pending, mapped, cached, pooled; /* the live processes' */
	unsigned nprocs;         /* used slots, live or not, in proc[] */
	struct kv_share_proc proc[KV_SHARE_SLOTS];
};

/*
 * Read the segment at path without joining it: never blocks on a file
 * that is not regular, never trusts a figure. mode is the KVSHIM_SHARE_MODE
 * this process would join with (for joinable). With reap, slots of dead
 * processes are reclaimed where this process may join and write it.
 * Returns 0, or KVSHIM_ESTATE (not a regular file, not a kvshim segment,
 * another major version, unreadable) with *why set as kv_share_check's.
 */
int kv_share_read(const char *path, unsigned mode, int reap,
		  struct kv_share_info *out, const char **why);

/* The path of the segment for uuid and pool (may be NULL) into out (len
 * bytes). Returns 0 or KVSHIM_EINVAL (no uuid, or a pool name that is not
 * letters, digits, - and _ up to 48 characters). */
int kv_share_path(char *out, size_t len, const char *uuid, const char *pool);

/* Whether mode is one a segment may have: owner read and write, no write
 * for others, nothing above 0777. Returns 1, or 0 with *why set. */
int kv_share_mode_ok(unsigned mode, const char **why);

#endif /* KV_SHARE_H */
