/*
 * share.c - see share.h: a process's handle on the segment (opening,
 * setting up, its slot) and the budget (take, give, ask, figures). The
 * segment file's primitives (locks, slots read with bounds, the header,
 * the trust rule) are in segment.c.
 *
 * Every figure another process wrote is loaded once, atomically, and kept
 * within bounds before use; this process's own slot is written from its
 * own copies and never read back. Calls on one handle take its mutex: its
 * locks belong to one open file description, which two threads would
 * share (one thread's unlock would drop the other's lock).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fair.h"
#include "kvshim.h"
#include "log.h"
#include "segment.h"
#include "share.h"

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

/* A second: how long the update lock counts as stuck after a wait for it
 * ran out (meanwhile a call tries for KV_SHARE_STUCK_WAIT_MS only). */
#define STUCK_NS 1000000000ull

/* Bytes an engine's adapter stated, which hold until a time unless stated
 * again (KV_SHARE_DEMAND_MS). */
struct statement {
	uint64_t bytes;
	uint64_t until;          /* CLOCK_MONOTONIC ns */
};

struct kv_share_handle_s {
	pthread_mutex_t mu;      /* one call at a time (see the top) */
	struct kv_share *sh;
	int fd;                  /* -1 in a forked child: the handle is inert */
	int slot;
	unsigned mode;
	uint64_t budget;         /* this process's: stands in for a bad header's */
	uint64_t reserve;        /* this process's, for a header it sets up */
	uint64_t device_bytes;
	/* this process's figures, published from here */
	uint64_t held, mapped, cached, pooled, reserved, min, max, trimmed;
	uint64_t limit;          /* the most it can hold (KVSHIM_LIMIT); 0: none */
	uint64_t weight;
	uint64_t waiting;        /* bytes a map waits for (kv_share_take) */
	unsigned waiters;        /* maps waiting now (kv_share_waiting) */
	struct statement demand; /* stated by kv_share_demand */
	struct statement unused; /* stated by kv_share_unused */
	uint64_t asked;          /* of what it uses, asked back (fair.h) */
	uint64_t use_limit;      /* the most it may use now: while others wait
				  * below theirs, its share were it to want
				  * more (kv_fair_bound) */
	uint64_t last_ns;
	uint64_t seq;            /* its slot's sequence number, even */
	uint64_t stuck_until;    /* CLOCK_MONOTONIC ns, 0: the lock is not stuck */
	int warned;              /* a slot's figures were found out of bounds */
	char path[192];
	struct kv_share_handle_s *next;   /* the open handles, for fork */
};

/* What the other processes hold, take, keep by their floors and could
 * give back, summed without wrapping; and the rule's plan (fair.h) with
 * this process among them. */
struct sums {
	uint64_t held, pending, floors;
	uint64_t givable;        /* the idle pages they may be asked for (the
				  * plan's), summed */
	uint64_t give[KV_SHARE_SLOTS];  /* and each one's, by slot */
	uint64_t gaps;           /* what the others waiting below their
				  * share claim */
	struct kv_fair_out me;   /* this process's share, gap and asked */
	struct kv_fair_sums plan;
	uint64_t bound;          /* the most this process may use now
				  * (kv_fair_bound; UINT64_MAX: none) */
	unsigned members;        /* the processes planned (slots in use, the
				  * dead not yet reaped too), this one too */
	uint64_t keep;           /* budget a take leaves free: the reserve,
				  * for a spare one while others share it */
	int clamped;
};

static void own_command(char *out, size_t len)
{
	FILE *f = fopen("/proc/self/comm", "re");

	out[0] = '\0';
	if (f) {
		if (!fgets(out, (int)len, f))
			out[0] = '\0';
		fclose(f);
	}
	out[strcspn(out, "\n")] = '\0';
}

/* ---- the update lock, this process's slot, the sums --------------------------- */

/*
 * Take the update lock (F_WRLCK to take budget, F_RDLCK to read), waiting
 * KV_SHARE_LOCK_WAIT_MS at most, or KV_SHARE_STUCK_WAIT_MS while it was
 * lately found stuck. Going on without it is safe (see share.h) and
 * logged once per episode. Returns 1 when held, 0 when going on without.
 */
static int update_lock(kv_share_t *s, short type)
{
	uint64_t t = kv_seg_mono_ns();
	unsigned ms = t < s->stuck_until ? KV_SHARE_STUCK_WAIT_MS : KV_SHARE_LOCK_WAIT_MS;

	if (kv_seg_lock_wait(s->fd, type, KV_SHARE_LOCK_UPDATE, ms) == 0) {
		if (s->stuck_until) {
			kv_info("share: %s: its lock is free again", s->path);
			s->stuck_until = 0;
		}
		return 1;
	}
	if (errno != EAGAIN)
		kv_warn("share: %s: cannot lock it (%s): going on without the lock",
			s->path, strerror(errno));
	else if (!s->stuck_until)
		kv_warn("share: %s: its lock has been held for over %d ms (a stopped or hung process?): going on without it",
			s->path, KV_SHARE_LOCK_WAIT_MS);
	s->stuck_until = kv_seg_mono_ns() + STUCK_NS;
	return 0;
}

static void update_unlock(kv_share_t *s, int locked)
{
	if (locked)
		kv_seg_lock(s->fd, F_UNLCK, KV_SHARE_LOCK_UPDATE);
}

/* State bytes in st, to hold KV_SHARE_DEMAND_MS (0: none). */
static void state(struct statement *st, uint64_t bytes)
{
	st->bytes = bytes;
	st->until = bytes ? kv_seg_mono_ns() + KV_SHARE_DEMAND_MS * 1000000ull : 0;
}

/* What st holds now: its bytes until its time, then none. */
static uint64_t lately(const struct statement *st)
{
	return kv_seg_mono_ns() < st->until ? st->bytes : 0;
}

/* The bytes this process waits for now: what a map waits for, or what
 * was stated lately, whichever is more. Returns them. */
static uint64_t demand_of(const kv_share_t *s)
{
	uint64_t stated = lately(&s->demand);

	return s->waiting > stated ? s->waiting : stated;
}

/* This process's idle pages (cached or pooled), at most what it holds. */
static uint64_t idle_of(const kv_share_t *s)
{
	return kv_seg_min(kv_seg_sat_add(s->cached, s->pooled), s->held);
}

/* The bytes of unused pages this process stated lately, at most what it
 * uses (held less idle: held is exact at once, its mapped figure only
 * from the worker's next update). Returns them. */
static uint64_t unused_of(const kv_share_t *s)
{
	return kv_seg_min(lately(&s->unused), s->held - idle_of(s));
}

/* Write this process's figures into its slot, every one of them, so that
 * a slot another member rewrote is repaired; its sequence number is odd
 * meanwhile (see share.h), and written from this process's own count. */
static void publish(kv_share_t *s)
{
	struct kv_share_slot *me = &s->sh->slot[s->slot];

	STORE(&me->seq, s->seq + 1);
	STORE(&me->mapped, s->mapped);
	STORE(&me->cached, s->cached);
	STORE(&me->pooled, s->pooled);
	STORE(&me->reserved, s->reserved);
	STORE(&me->held, s->held);
	STORE(&me->pending, 0);
	STORE(&me->min, s->min);
	STORE(&me->max, s->max);
	STORE(&me->trimmed, s->trimmed);
	STORE(&me->last_ns, s->last_ns);
	STORE(&me->weight, s->weight);
	STORE(&me->demand, demand_of(s));
	STORE(&me->asked, s->asked);
	STORE(&me->unused, unused_of(s));
	STORE(&me->limit, s->limit);
	STORE(&me->pid, (int32_t)getpid());
	STORE(&me->state, KV_SLOT_USED);
	s->seq += 2;
	STORE(&me->seq, s->seq);
}

/* Publish the bytes this process is taking (0: none). */
static void set_pending(kv_share_t *s, uint64_t bytes)
{
	struct kv_share_slot *me = &s->sh->slot[s->slot];

	STORE(&me->seq, s->seq + 1);
	STORE(&me->pending, bytes);
	s->seq += 2;
	STORE(&me->seq, s->seq);
}

/* The budget: the segment's, or this process's where the header's is out
 * of range (zero, or more than four times this device). */
static uint64_t budget_of(kv_share_t *s)
{
	uint64_t b = LOAD(&s->sh->budget);

	if (!b || b / 4 > s->device_bytes) {
		kv_warn("share: %s: its budget (%llu) is out of range: counting with this process's (%llu)",
			s->path, (unsigned long long)b, (unsigned long long)s->budget);
		return s->budget;
	}
	return b;
}

/* This process's own figures as the rule's input, waiting for demand
 * bytes. */
static void own_fair_in(const kv_share_t *s, uint64_t cap, uint64_t demand,
			struct kv_fair_in *in)
{
	in->weight = s->weight;
	in->held = kv_seg_min(s->held, cap);
	in->pending = 0;
	in->idle = kv_seg_min(idle_of(s), in->held);
	in->min = kv_seg_min(s->min, cap);
	in->max = s->max;
	/* (bounded as the others read it from its slot: kv_seg_load) */
	in->limit = kv_seg_min(s->limit, cap);
	in->demand = kv_seg_min(demand, cap);
	in->unused = kv_seg_min(unused_of(s), in->held - in->idle);
	in->order = (uint64_t)s->slot;
}

/*
 * The rule's input (cap: the budget): this process's figures, waiting for
 * demand bytes, in in[0], then each other used slot's, whose slot goes in
 * slot_of; their sums into t, zeroed first. Returns how many in[] got.
 */
static unsigned fair_inputs(kv_share_t *s, uint64_t cap, uint64_t demand,
			    struct kv_fair_in *in, unsigned *slot_of, struct sums *t)
{
	unsigned i, n = 1;

	memset(t, 0, sizeof(*t));
	own_fair_in(s, cap, demand, &in[0]);
	for (i = 0; i < KV_SHARE_SLOTS; i++) {
		const struct kv_share_slot *sl = &s->sh->slot[i];
		struct kv_seg_fig f;
		uint64_t has;

		if ((int)i == s->slot || LOAD(&sl->state) == KV_SLOT_FREE)
			continue;
		kv_seg_load(sl, cap, &f);
		t->held = kv_seg_sat_add(t->held, f.held);
		t->pending = kv_seg_sat_add(t->pending, f.pending);
		has = kv_seg_sat_add(f.held, f.pending);
		if (f.min > has)
			t->floors = kv_seg_sat_add(t->floors, f.min - has);
		t->clamped |= f.clamped;
		slot_of[n] = i;
		kv_seg_fair_in(&f, i, &in[n++]);
	}
	return n;
}

/*
 * Sum the other used slots' figures into t (cap: the budget), and plan the
 * budget by the rule with this process among them, waiting for demand
 * bytes.
 */
static void others(kv_share_t *s, uint64_t cap, uint64_t demand, struct sums *t)
{
	struct kv_fair_in in[KV_SHARE_SLOTS];
	struct kv_fair_out out[KV_SHARE_SLOTS];
	unsigned slot_of[KV_SHARE_SLOTS];
	unsigned i, n;

	n = fair_inputs(s, cap, demand, in, slot_of, t);
	kv_fair_plan(cap, kv_seg_reserve(s->sh, cap), in, n, out, &t->plan);
	t->members = n;
	for (i = 1; i < n; i++)
		t->give[slot_of[i]] = out[i].givable;
	t->me = out[0];
	t->givable = t->plan.givable > t->me.givable ? t->plan.givable - t->me.givable : 0;
	t->gaps = t->plan.gaps > t->me.gap ? t->plan.gaps - t->me.gap : 0;
	t->bound = kv_fair_bound(cap, in, n, 0, out, &t->plan);
	if (t->clamped && !s->warned) {
		s->warned = 1;
		kv_warn("share: %s: a process's slot holds figures out of bounds: counted as at most the budget",
			s->path);
	}
}

/* others() at this process's budget and demand. A process that ended
 * (its slot left behind, with what it held and waited for) must not keep
 * this one asked, bounded or trimming for it: when the plan asks this
 * process for anything, bounds it or gives anything back, or another
 * waits below its share, the slots of the dead are reaped and the plan
 * made again. */
static void others_live(kv_share_t *s, struct sums *t)
{
	others(s, budget_of(s), demand_of(s), t);
	if ((t->me.trim || t->plan.for_reserve || t->me.asked || t->gaps) &&
	    kv_seg_reap_all(s->fd, s->sh, s->slot, s->path))
		others(s, budget_of(s), demand_of(s), t);
}

/* others(), and for a spare take (the pool: spare), the reserve kept free
 * while others share the budget (its trims would give it back), as the
 * plan keeps it: at most the budget less the floors. */
static void others_keeping(kv_share_t *s, uint64_t cap, uint64_t demand, int spare,
			   struct sums *t)
{
	others(s, cap, demand, t);
	if (spare && t->members > 1)
		t->keep = t->plan.reserve;
}

/* ---- opening ------------------------------------------------------------------ */

/* Write a fresh header (magic last, release) for s; slots of processes
 * gone are freed first, those of live ones kept. Set-up lock held. */
static void init_header(kv_share_t *s, const char *name)
{
	struct kv_share *sh = s->sh;
	unsigned i;

	STORE(&sh->magic, 0);
	kv_seg_reap_all(s->fd, sh, -1, s->path);
	sh->major = KV_SHARE_MAJOR;
	sh->minor = KV_SHARE_MINOR;
	STORE(&sh->size, (uint32_t)sizeof(*sh));
	STORE(&sh->nslots, KV_SHARE_SLOTS);
	STORE(&sh->slot_size, (uint32_t)sizeof(struct kv_share_slot));
	STORE(&sh->mode, s->mode);
	STORE(&sh->flags, 0);
	STORE(&sh->budget, s->budget);
	STORE(&sh->reserve, s->reserve);
	STORE(&sh->device_bytes, s->device_bytes);
	STORE(&sh->created_ns, kv_seg_realtime_ns());
	memset(sh->name, 0, sizeof(sh->name));
	snprintf(sh->name, sizeof(sh->name), "%s", name);
	for (i = 0; i < sizeof(sh->spare) / sizeof(sh->spare[0]); i++)
		STORE(&sh->spare[i], 0);
	__atomic_store_n(&sh->magic, KV_SHARE_MAGIC, __ATOMIC_RELEASE);
}

/* Held from a handle's descriptor opening, and its mapping made, to each
 * stored in it (and from each undone to the store of -1 or NULL), so that a
 * fork, which takes it, finds every descriptor and mapping of the segment
 * in a handle (fork_child). */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * Give the segment file its memory before it is written through a
 * mapping: tmpfs allocates none for ftruncate, and a first store to a
 * page a full /dev/shm has no room for raises SIGBUS, which would kill the
 * host process (a container's /dev/shm is 64 MiB by default, and data
 * loaders fill it). Its size is kept: an existing segment's pages are
 * there already and cost nothing. A file system that cannot allocate
 * ahead is left as it was. Returns 0 or the errno.
 */
static int back_file(int fd)
{
	int r;

	do
		r = fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, sizeof(struct kv_share));
	while (r < 0 && errno == EINTR);
	return r < 0 && errno != EOPNOTSUPP && errno != ENOSYS ? errno : 0;
}

static int map_segment(kv_share_t *s)
{
	void *p;
	int e;

	if (s->sh)
		return 0;
	e = back_file(s->fd);
	if (e == ENOSPC || e == ENOMEM || e == EDQUOT) {
		kv_error("share: no room for %s in %s (is it full?)", s->path,
			 KV_SHARE_DIR);
		return KVSHIM_ENOMEM;
	}
	if (e) {
		kv_error("share: cannot give %s its memory: %s", s->path, strerror(e));
		return KVSHIM_ESTATE;
	}
	/* a child forked without exec gets no copy: a mapping holds the file
	 * open, and with it the slot's lock, for as long as it lives */
	pthread_mutex_lock(&reg_lock);
	p = mmap(NULL, sizeof(*s->sh), PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
	e = errno;
	if (p != MAP_FAILED) {
		madvise(p, sizeof(*s->sh), MADV_DONTFORK);
		s->sh = p;
	}
	pthread_mutex_unlock(&reg_lock);
	if (p == MAP_FAILED) {
		kv_error("share: cannot map %s: %s", s->path, strerror(e));
		return KVSHIM_ENOMEM;
	}
	return 0;
}

/* Give the unnamed file fd (O_TMPFILE) the name path, through /proc (the
 * thread's own file table first), else by the file descriptor (which
 * needs CAP_DAC_READ_SEARCH before Linux 6.10). Returns 0 or -1 (errno
 * set; EEXIST: another creator's is there). */
static int link_unnamed(int fd, const char *path)
{
	static const char *const fds[] = { "/proc/thread-self/fd", "/proc/self/fd" };
	char proc[48];
	size_t i;

	for (i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		snprintf(proc, sizeof(proc), "%s/%d", fds[i], fd);
		if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0)
			return 0;
		if (errno != ENOENT)
			return -1;
	}
	return linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH);
}

/* Set the new segment file fd up whole (its mode, size and header); what
 * names it in messages. Returns 0 or KVSHIM_ESTATE / KVSHIM_ENOMEM
 * (logged). */
static int set_up_file(kv_share_t *s, int fd, const char *name, const char *what)
{
	int rc, e;

	if (fchmod(fd, s->mode) < 0 || ftruncate(fd, sizeof(*s->sh)) < 0) {
		e = errno;
		kv_error("share: cannot set %s up: %s", what, strerror(e));
		return e == ENOSPC || e == ENOMEM ? KVSHIM_ENOMEM : KVSHIM_ESTATE;
	}
	s->fd = fd;
	rc = map_segment(s);
	if (!rc) {
		init_header(s, name);
		munmap(s->sh, sizeof(*s->sh));
		s->sh = NULL;
	}
	s->fd = -1;
	return rc;
}

/* Make the segment under a temporary name (the pid, then random: no name
 * a dead creator left stands in the way) and link it into place; the name
 * is left behind only by a creator killed before it unlinks it. Returns as
 * create_segment. */
static int create_named(kv_share_t *s, const char *name)
{
	char tmp[sizeof(KV_SHARE_DIR) + 48];
	int fd, rc, e;

	snprintf(tmp, sizeof(tmp), "%s/.kvshim-new-%d-XXXXXX", KV_SHARE_DIR, (int)getpid());
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		kv_error("share: cannot create a file in %s: %s", KV_SHARE_DIR, strerror(errno));
		return KVSHIM_ESTATE;
	}
	rc = set_up_file(s, fd, name, tmp);
	if (!rc && link(tmp, s->path) < 0 && errno != EEXIST) {
		e = errno;
		kv_error("share: cannot create %s: %s", s->path, strerror(e));
		rc = KVSHIM_ESTATE;
	}
	if (!rc)
		kv_debug("share: %s set up", s->path);
	unlink(tmp);
	close(fd);
	return rc;
}

/*
 * Make a segment as a file with no name (O_TMPFILE), set it up whole, and
 * link it into place: no process ever finds a new segment half made, and
 * a creator killed at any point leaves nothing behind. Where the file
 * system has no O_TMPFILE, or the unnamed file cannot be linked (no /proc
 * and an older kernel), under a temporary name (create_named). Losing the
 * race to another creator is no error: the caller opens theirs. Returns 0
 * or KVSHIM_ESTATE / KVSHIM_ENOMEM (logged).
 */
static int create_segment(kv_share_t *s, const char *name)
{
	int fd, rc, e;

	fd = open(KV_SHARE_DIR, O_RDWR | O_TMPFILE | O_CLOEXEC, 0600);
	if (fd < 0) {
		e = errno;
		if (e == EISDIR || e == EOPNOTSUPP || e == EINVAL)
			return create_named(s, name);
		kv_error("share: cannot create a file in %s: %s", KV_SHARE_DIR, strerror(e));
		return KVSHIM_ESTATE;
	}
	rc = set_up_file(s, fd, name, "a new segment");
	if (!rc && link_unnamed(fd, s->path) < 0 && errno != EEXIST) {
		kv_debug("share: cannot link a new segment to %s (%s): under a temporary name",
			 s->path, strerror(errno));
		close(fd);
		return create_named(s, name);
	}
	if (!rc)
		kv_debug("share: %s set up", s->path);
	close(fd);
	return rc;
}

/* Whether a mapped segment's header can be used as it is: its layout
 * fields and its budget in range. Returns 1 or 0. */
static int sound(const kv_share_t *s)
{
	uint64_t b = LOAD(&s->sh->budget);

	return kv_seg_layout_ok(s->sh) && b && b / 4 <= s->device_bytes;
}

/*
 * Make the trusted segment behind s->fd usable: join a sound one at once;
 * under the set-up lock, set up one found half made (a creator killed
 * before its header was written: zero magic) and repair header fields
 * this major fixes (layout, an out-of-range budget); refuse another kind
 * of file, another major or size. Returns 0 with s->sh mapped, or
 * KVSHIM_ESTATE / KVSHIM_ENOMEM (logged).
 */
static int settle(kv_share_t *s, const char *name)
{
	struct kv_share head;
	struct stat st;
	const char *why;
	int rc;

	if (fstat(s->fd, &st) < 0)
		return KVSHIM_ESTATE;
	kv_seg_read_head(s->fd, &head);
	if (!kv_seg_head_check(&head, (size_t)st.st_size, &why)) {
		rc = map_segment(s);
		if (rc)
			return rc;
		if (sound(s))
			goto joined;
	}
	if (kv_seg_lock_wait(s->fd, F_WRLCK, KV_SHARE_LOCK_INIT, KV_SHARE_INIT_WAIT_MS) < 0) {
		kv_error("share: refusing %s: another process has been setting it up for over %d ms",
			 s->path, KV_SHARE_INIT_WAIT_MS);
		return KVSHIM_ESTATE;
	}
	rc = KVSHIM_ESTATE;
	if (fstat(s->fd, &st) < 0)
		goto unlock;
	kv_seg_read_head(s->fd, &head);
	if (head.magic == 0) {
		/* a creator links a segment only once set up: a file with a zero
		 * header and another name is not one left half made, and is
		 * never rewritten (another user's hard link to a file of this
		 * one's, where the kernel lets it make one) */
		if (st.st_nlink != 1) {
			kv_error("share: refusing %s: its header is zero and it has %u names: not a segment left half made",
				 s->path, (unsigned)st.st_nlink);
			goto unlock;
		}
		if ((size_t)st.st_size != sizeof(*s->sh) &&
		    ftruncate(s->fd, sizeof(*s->sh)) < 0) {
			kv_error("share: cannot set %s up again: %s", s->path, strerror(errno));
			goto unlock;
		}
		rc = map_segment(s);
		if (rc)
			goto unlock;
		kv_warn("share: %s was left half made (its creator died?): set up again",
			s->path);
		init_header(s, name);
		goto unlock;
	}
	if (kv_seg_head_check(&head, (size_t)st.st_size, &why)) {
		kv_error("share: refusing %s: %s", s->path, why);
		goto unlock;
	}
	rc = map_segment(s);
	if (rc)
		goto unlock;
	if (!sound(s)) {
		kv_warn("share: %s: its header was damaged (layout or budget): repaired",
			s->path);
		STORE(&s->sh->size, (uint32_t)sizeof(*s->sh));
		STORE(&s->sh->nslots, KV_SHARE_SLOTS);
		STORE(&s->sh->slot_size, (uint32_t)sizeof(struct kv_share_slot));
		if (!LOAD(&s->sh->budget) || LOAD(&s->sh->budget) / 4 > s->device_bytes)
			STORE(&s->sh->budget, s->budget);
	}
unlock:
	kv_seg_lock(s->fd, F_UNLCK, KV_SHARE_LOCK_INIT);
	if (rc)
		return rc;
joined:
	if (s->sh->minor > KV_SHARE_MINOR)
		kv_info("share: %s is a version %u.%u segment, newer than this kvshim's %u.%u: joined",
			s->path, (unsigned)s->sh->major, (unsigned)s->sh->minor,
			KV_SHARE_MAJOR, KV_SHARE_MINOR);
	return 0;
}

/*
 * Open the segment's file (creating it if there is none), never following
 * a link nor blocking on a FIFO, and check that it is to be trusted.
 * Returns 0 with s->fd open (O_CLOEXEC), or KVSHIM_ESTATE / KVSHIM_ENOMEM
 * (logged).
 */
static int open_file(kv_share_t *s, const char *name)
{
	char why[320];
	struct stat st;
	int tries, rc, e;

	for (tries = 0; tries < 8; tries++) {
		pthread_mutex_lock(&reg_lock);          /* see reg_lock */
		s->fd = open(s->path, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
		e = errno;
		pthread_mutex_unlock(&reg_lock);
		errno = e;
		if (s->fd >= 0 || errno != ENOENT)
			break;
		rc = create_segment(s, name);
		if (rc)
			return rc;
	}
	if (s->fd < 0) {
		kv_seg_open_failed(s->path, errno, why, sizeof(why));
		kv_error("share: refusing %s: %s", s->path, why);
		return KVSHIM_ESTATE;
	}
	if (fstat(s->fd, &st) < 0 || !kv_seg_join_rule(&st, s->mode, why, sizeof(why))) {
		kv_error("share: refusing %s: %s", s->path, why);
		return KVSHIM_ESTATE;
	}
	return 0;
}

/*
 * Once its slot is claimed, under the set-up lock (so that of two joining
 * at once, the second sees what the first did): in a segment no other
 * process holds a slot of, the budget and reserve are those of processes
 * gone, and this process sets them, as a creator would; beside live
 * processes, its floor is cut to what their floors leave of the budget
 * (floors that together pass it could not all be kept: each counts the
 * others' as held). A segment being set up longer than the wait keeps its
 * figures. (The other slots' locks are only looked at, never taken: a
 * process claiming one meanwhile is not turned away.)
 */
static void join_figures(kv_share_t *s)
{
	uint64_t was = LOAD(&s->sh->budget), floors = 0, room;
	struct kv_seg_fig f;
	unsigned i, alone = 1;

	if (kv_seg_lock_wait(s->fd, F_WRLCK, KV_SHARE_LOCK_INIT, KV_SHARE_INIT_WAIT_MS) < 0)
		return;
	for (i = 0; i < KV_SHARE_SLOTS; i++) {
		if ((int)i == s->slot)
			continue;
		if (kv_seg_locked(s->fd, KV_SHARE_LOCK_SLOT0 + i) == 0)
			continue;       /* free, or its process gone */
		alone = 0;
		kv_seg_load(&s->sh->slot[i], budget_of(s), &f);   /* its floor, bounded */
		floors = kv_seg_sat_add(floors, f.min);
	}
	if (alone && (was != s->budget || LOAD(&s->sh->reserve) != s->reserve)) {
		kv_info("share: %s: no other process in it: its budget is this process's, %llu MiB (was %llu MiB)",
			s->path, (unsigned long long)(s->budget >> 20),
			(unsigned long long)(was >> 20));
		STORE(&s->sh->budget, s->budget);
		STORE(&s->sh->reserve, s->reserve);
	}
	room = budget_of(s) > floors ? budget_of(s) - floors : 0;
	if (s->min > room) {
		kv_warn("share: %s: a floor of %llu MiB with the other processes' %llu MiB passes the budget's %llu MiB: this process's floor is %llu MiB",
			s->path, (unsigned long long)(s->min >> 20),
			(unsigned long long)(floors >> 20),
			(unsigned long long)(budget_of(s) >> 20),
			(unsigned long long)(room >> 20));
		pthread_mutex_lock(&s->mu);
		s->min = room;
		publish(s);
		pthread_mutex_unlock(&s->mu);
	}
	kv_seg_lock(s->fd, F_UNLCK, KV_SHARE_LOCK_INIT);
}

/* Take a free slot: the first whose lock nobody holds (a used one's
 * process is gone: its figures are cleared); then the figures joining
 * sets (join_figures). Returns 0 or KVSHIM_ESTATE. */
static int claim_slot(kv_share_t *s)
{
	struct kv_share_slot *sl;
	unsigned i;

	for (i = 0; i < KV_SHARE_SLOTS; i++) {
		if (kv_seg_lock(s->fd, F_WRLCK, KV_SHARE_LOCK_SLOT0 + i) == 0)
			break;
		if (errno != EAGAIN && errno != EACCES) {
			kv_error("share: cannot lock %s (%s): open file description locks need Linux 3.15 or later",
				 s->path, strerror(errno));
			return KVSHIM_ESTATE;
		}
	}
	if (i == KV_SHARE_SLOTS) {
		kv_error("share: %s has no free slot (%d processes)", s->path,
			 KV_SHARE_SLOTS);
		return KVSHIM_ESTATE;
	}
	sl = &s->sh->slot[i];
	if (LOAD(&sl->state) != KV_SLOT_FREE)
		kv_info("share: %s: process %d is gone: its %llu bytes are free",
			s->path, (int)LOAD(&sl->pid),
			(unsigned long long)LOAD(&sl->held));
	kv_seg_clear(sl);
	s->seq = LOAD(&sl->seq) & ~1ull;
	s->slot = (int)i;
	STORE(&sl->pidns, kv_seg_pidns());
	own_command(sl->cmd, sizeof(sl->cmd));
	s->last_ns = kv_seg_realtime_ns();
	publish(s);
	join_figures(s);
	return 0;
}

/* ---- the open handles, for fork -------------------------------------------- */

static kv_share_t *reg_head;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

static void fork_prepare(void)
{
	pthread_mutex_lock(&reg_lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&reg_lock);
}

/* In a child forked without exec, the parent's slots are the parent's:
 * their descriptors close (the mappings were not copied: MADV_DONTFORK),
 * so that the parent's death frees its slot however long the child lives,
 * and the handles go inert. */
static void fork_child(void)
{
	kv_share_t *s;

	for (s = reg_head; s; s = s->next) {
		if (s->fd >= 0)
			close(s->fd);
		s->fd = -1;
		s->sh = NULL;
	}
	pthread_mutex_unlock(&reg_lock);
}

static void reg_init(void)
{
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void reg_add(kv_share_t *s)
{
	pthread_once(&reg_once, reg_init);
	pthread_mutex_lock(&reg_lock);
	s->next = reg_head;
	reg_head = s;
	pthread_mutex_unlock(&reg_lock);
}

/* Let go of s's descriptor and mapping (the last of the two to go drops
 * its slot's lock), under reg_lock: a fork sees both or neither. */
static void unhold(kv_share_t *s)
{
	pthread_mutex_lock(&reg_lock);
	if (s->sh)
		munmap(s->sh, sizeof(*s->sh));
	if (s->fd >= 0)
		close(s->fd);
	s->sh = NULL;
	s->fd = -1;
	pthread_mutex_unlock(&reg_lock);
}

static void reg_remove(kv_share_t *s)
{
	kv_share_t **p;

	pthread_mutex_lock(&reg_lock);
	for (p = &reg_head; *p; p = &(*p)->next) {
		if (*p == s) {
			*p = s->next;
			break;
		}
	}
	pthread_mutex_unlock(&reg_lock);
}

/* ---- the interface ---------------------------------------------------------- */

int kv_share_open(const char *uuid, const char *pool, uint64_t budget,
		  uint64_t reserve, uint64_t device_bytes, uint64_t min, uint64_t max,
		  uint64_t limit, unsigned weight, unsigned mode, kv_share_t **out)
{
	const char *why;
	kv_share_t *s;
	int rc;

	if (!out || !device_bytes || (max && min > max) || (limit && min > limit))
		return KVSHIM_EINVAL;
	if (weight < 1 || weight > KV_FAIR_WEIGHT_MAX) {
		kv_error("share: a weight of %u: expected 1 to %d", weight, KV_FAIR_WEIGHT_MAX);
		return KVSHIM_EINVAL;
	}
	if (!kv_share_mode_ok(mode, &why)) {
		kv_error("share: segment mode 0%03o: %s", mode, why);
		return KVSHIM_EINVAL;
	}
	if (!budget)
		budget = device_bytes;
	if (budget / 4 > device_bytes) {
		kv_error("share: a budget of %llu bytes is more than four times the device's %llu",
			 (unsigned long long)budget, (unsigned long long)device_bytes);
		return KVSHIM_EINVAL;
	}
	if (reserve > budget / 2) {
		kv_error("share: a reserve of %llu bytes is more than half the budget's %llu",
			 (unsigned long long)reserve, (unsigned long long)budget);
		return KVSHIM_EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return KVSHIM_ENOMEM;
	s->fd = -1;
	s->slot = -1;
	s->mode = mode;
	s->budget = budget;
	s->reserve = reserve;
	s->device_bytes = device_bytes;
	s->min = min;
	s->max = max;
	s->limit = limit;
	s->weight = weight;
	s->use_limit = UINT64_MAX;
	if (pthread_mutex_init(&s->mu, NULL)) {
		free(s);
		return KVSHIM_ENOMEM;
	}
	rc = kv_share_path(s->path, sizeof(s->path), uuid, pool);
	if (rc) {
		char b1[160], b2[160];

		kv_error("share: no segment name from GPU UUID \"%s\" and pool \"%s\": a pool name is letters, digits, - and _, at most 48",
			 kv_log_escape(uuid ? uuid : "", b1, sizeof(b1)),
			 kv_log_escape(pool ? pool : "", b2, sizeof(b2)));
		goto fail;
	}
	/* registered before its descriptor is opened: a fork meanwhile (by
	 * another thread) finds it, and the child keeps no part of it */
	reg_add(s);
	rc = open_file(s, s->path + strlen(KV_SHARE_DIR));
	if (!rc)
		rc = settle(s, s->path + strlen(KV_SHARE_DIR));
	if (!rc)
		rc = claim_slot(s);
	if (rc) {
		unhold(s);
		reg_remove(s);
		goto fail;
	}
	*out = s;
	return 0;
fail:
	pthread_mutex_destroy(&s->mu);
	free(s);
	return rc;
}

void kv_share_close(kv_share_t *s)
{
	int live;

	if (!s)
		return;
	live = s->fd >= 0;
	if (live && s->sh) {
		pthread_mutex_lock(&s->mu);
		kv_seg_clear(&s->sh->slot[s->slot]);
		pthread_mutex_unlock(&s->mu);
	}
	unhold(s);              /* the kernel drops the slot's lock */
	reg_remove(s);          /* after: a fork before finds it (fork_child) */
	if (live)               /* (a child's inert handle: its lock may be held) */
		pthread_mutex_destroy(&s->mu);
	free(s);
}

/* Whether bytes more would take this process past its share while
 * others wait below theirs. Returns 1 or 0. */
static int past_share(const kv_share_t *s, const struct sums *t, uint64_t bytes)
{
	return t->gaps && kv_seg_sat_add(s->held, bytes) > t->me.share;
}

/* What the others keep from this process, taking bytes more: what they
 * hold and keep by their floors, what they take (with_pending), and past
 * its share, what those waiting below theirs claim. Returns it. */
static uint64_t kept_from(const kv_share_t *s, const struct sums *t,
			  uint64_t bytes, int with_pending)
{
	uint64_t kept = kv_seg_sat_add(kv_seg_sat_add(t->held, t->floors), t->keep);

	if (with_pending)
		kept = kv_seg_sat_add(kept, t->pending);
	if (past_share(s, t, bytes))
		kept = kv_seg_sat_add(kept, t->gaps);
	return kept;
}

/* Whether bytes more for this process fit beside the others' sums t.
 * Returns 1 or 0. */
static int fits(const kv_share_t *s, const struct sums *t, uint64_t cap,
		uint64_t bytes, int with_pending)
{
	uint64_t kept = kept_from(s, t, bytes, with_pending);

	return kept <= cap && kv_seg_sat_add(s->held, bytes) <= cap - kept;
}

/* Ask the others for need bytes of their idle pages, those the plan in t
 * counts as theirs to give (above their floors, beyond what their own
 * demand takes). Returns the bytes asked for (or already on their way). */
static uint64_t ask(kv_share_t *s, const struct sums *t, uint64_t cap, uint64_t need)
{
	uint64_t asked = 0;
	unsigned i;

	for (i = 0; i < KV_SHARE_SLOTS && asked < need; i++) {
		struct kv_share_slot *sl = &s->sh->slot[i];
		uint64_t want, req;
		struct kv_seg_fig f;

		if ((int)i == s->slot || LOAD(&sl->state) == KV_SLOT_FREE)
			continue;
		kv_seg_load(sl, cap, &f);
		want = t->give[i];
		req = f.trim_request;
		if (want > req) {
			want = kv_seg_min(want - req, need - asked);
			/* one try: a request changing meanwhile is another
			 * asker's, and this one's share of it will come */
			__atomic_compare_exchange_n(&sl->trim_request, &req,
						    kv_seg_sat_add(req, want), 0,
						    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
		}
		asked = kv_seg_sat_add(asked, want);
	}
	return asked;
}

/*
 * A take of bytes that did not fit beside t, by a map that may wait: the
 * bytes are published as what this process waits for, so that the others'
 * rule counts them. Then wait for others taking, for idle pages asked back,
 * or, below its share, for those above theirs to give back what they use
 * (their workers read the rule, their engines preempt). Returns
 * KV_SHARE_WAIT, KV_SHARE_WAIT_USED for the last, or KV_SHARE_NO when
 * nobody can give way; KVSHIM_ELIMIT for a take over the whole budget, at
 * once, publishing nothing.
 */
static int refused(kv_share_t *s, const struct sums *t, uint64_t cap,
		   uint64_t bytes, uint64_t need)
{
	uint64_t over;

	/* more than the whole budget: nobody giving way would make it fit */
	if (kv_seg_sat_add(s->held, bytes) > cap)
		return KVSHIM_ELIMIT;
	if (s->waiting < need) {
		s->waiting = kv_seg_min(need, cap);
		publish(s);
	}
	if (fits(s, t, cap, bytes, 0))
		return KV_SHARE_WAIT;           /* others are taking: look again */
	over = kv_seg_sat_add(kept_from(s, t, bytes, 1), kv_seg_sat_add(s->held, bytes));
	over = over > cap ? over - cap : 0;
	if (ask(s, t, cap, over))
		return KV_SHARE_WAIT;
	if (!past_share(s, t, bytes) && t->me.gap && (t->plan.over || t->plan.unused))
		return KV_SHARE_WAIT_USED;
	return KV_SHARE_NO;
}

/*
 * Take bytes for this process: publish them as pending, then count what
 * the others hold and take (see share.h), reaping the dead when short.
 * A map's take counts its whole need (need bytes, at least bytes) as this
 * process's demand in the rule; a spare one (the pool) does not. Returns
 * 0, KV_SHARE_WAIT, KV_SHARE_WAIT_USED, KV_SHARE_NO or KVSHIM_ELIMIT
 * (see kv_share_take).
 */
static int take(kv_share_t *s, uint64_t bytes, uint64_t need, int may_ask)
{
	struct sums t;
	uint64_t cap, demand;
	int locked, rc;

	if (s->fd < 0)
		return KVSHIM_ESTATE;
	pthread_mutex_lock(&s->mu);
	if (s->max && (bytes > s->max || s->held > s->max - bytes)) {
		pthread_mutex_unlock(&s->mu);
		return KVSHIM_ELIMIT;
	}
	locked = update_lock(s, F_WRLCK);
	cap = budget_of(s);
	set_pending(s, bytes);
	demand = demand_of(s);
	need = need > bytes ? need : bytes;
	if (may_ask && demand < need)
		demand = need;
	others_keeping(s, cap, demand, !may_ask, &t);
	if (!fits(s, &t, cap, bytes, 1) &&
	    kv_seg_reap_all(s->fd, s->sh, s->slot, s->path))
		others_keeping(s, cap, demand, !may_ask, &t);
	s->use_limit = t.bound;
	if (fits(s, &t, cap, bytes, 1)) {
		s->held += bytes;
		s->last_ns = kv_seg_realtime_ns();
		publish(s);     /* held, then pending back to zero */
		rc = 0;
	} else {
		set_pending(s, 0);
		rc = may_ask ? refused(s, &t, cap, bytes, need) : KVSHIM_ELIMIT;
	}
	update_unlock(s, locked);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int kv_share_take(kv_share_t *s, uint64_t bytes, uint64_t need)
{
	return take(s, bytes, need, 1);
}

int kv_share_take_spare(kv_share_t *s, uint64_t bytes)
{
	return take(s, bytes, bytes, 0);
}

void kv_share_give(kv_share_t *s, uint64_t bytes)
{
	if (s->fd < 0)
		return;
	pthread_mutex_lock(&s->mu);
	s->held = s->held > bytes ? s->held - bytes : 0;
	s->mapped = kv_seg_min(s->mapped, s->held);
	s->cached = kv_seg_min(s->cached, s->mapped);
	s->pooled = kv_seg_min(s->pooled, s->held);
	s->last_ns = kv_seg_realtime_ns();
	publish(s);
	pthread_mutex_unlock(&s->mu);
}

uint64_t kv_share_update(kv_share_t *s, uint64_t mapped, uint64_t cached,
			 uint64_t pooled, uint64_t reserved)
{
	struct sums t;
	uint64_t req;

	if (s->fd < 0)
		return 0;
	pthread_mutex_lock(&s->mu);
	s->mapped = kv_seg_min(mapped, s->held);
	s->cached = kv_seg_min(cached, s->mapped);
	s->pooled = kv_seg_min(pooled, s->held);
	s->reserved = reserved;
	/* what the rule asks of it now, read without the update lock: the
	 * figures are bounded, and the next look (5 ms on) corrects them */
	others_live(s, &t);
	s->asked = t.me.asked;
	s->use_limit = t.bound;
	req = __atomic_exchange_n(&s->sh->slot[s->slot].trim_request, 0,
				  __ATOMIC_SEQ_CST);
	/* and what the reserve's free budget asks of its idle pages */
	if (t.me.trim > req)
		req = t.me.trim;
	publish(s);
	/* never below the floor: a request read off a stale figure (asked
	 * again before this process's last trim was published) is cut */
	req = kv_seg_min(req, s->held > s->min ? s->held - s->min : 0);
	pthread_mutex_unlock(&s->mu);
	return req;
}

void kv_share_note(kv_share_t *s, uint64_t cached, uint64_t pooled)
{
	if (s->fd < 0)
		return;
	pthread_mutex_lock(&s->mu);
	s->pooled = kv_seg_min(pooled, s->held);
	if (s->mapped < cached)
		s->mapped = cached;
	s->mapped = kv_seg_min(s->mapped, s->held);
	s->cached = kv_seg_min(cached, s->mapped);
	s->last_ns = kv_seg_realtime_ns();
	publish(s);
	pthread_mutex_unlock(&s->mu);
}

uint64_t kv_share_budget(kv_share_t *s)
{
	return s->fd < 0 ? 0 : budget_of(s);
}

unsigned kv_share_members(kv_share_t *s)
{
	unsigned i, n = 0;

	if (s->fd < 0)
		return 0;
	/* a process that ended (kvshim has no exit hook) left its slot used */
	pthread_mutex_lock(&s->mu);
	kv_seg_reap_all(s->fd, s->sh, s->slot, s->path);
	pthread_mutex_unlock(&s->mu);
	for (i = 0; i < KV_SHARE_SLOTS; i++)
		if (LOAD(&s->sh->slot[i].state) != KV_SLOT_FREE)
			n++;
	return n;
}

uint64_t kv_share_entitled(kv_share_t *s)
{
	struct kv_fair_in in[KV_SHARE_SLOTS];
	unsigned slot_of[KV_SHARE_SLOTS], n;
	uint64_t cap, got;
	struct sums t;
	int locked;

	if (s->fd < 0)
		return UINT64_MAX;
	/* a process that ended would keep a part: reaped first, as for a
	 * count of the members */
	pthread_mutex_lock(&s->mu);
	kv_seg_reap_all(s->fd, s->sh, s->slot, s->path);
	locked = update_lock(s, F_RDLCK);
	cap = budget_of(s);
	n = fair_inputs(s, cap, 0, in, slot_of, &t);
	got = kv_fair_entitled(cap, in, n, 0);
	update_unlock(s, locked);
	pthread_mutex_unlock(&s->mu);
	return got;
}

void kv_share_figures(kv_share_t *s, uint64_t *budget, uint64_t *others_out,
		      uint64_t *room)
{
	uint64_t cap, kept;
	struct sums t;
	int locked;

	*budget = *others_out = *room = 0;
	if (s->fd < 0)
		return;
	pthread_mutex_lock(&s->mu);
	kv_seg_reap_all(s->fd, s->sh, s->slot, s->path);
	locked = update_lock(s, F_RDLCK);
	cap = budget_of(s);
	others(s, cap, demand_of(s), &t);
	update_unlock(s, locked);
	pthread_mutex_unlock(&s->mu);
	*budget = cap;
	*others_out = t.held;
	/* the others keep what they use, take and keep by their floors;
	 * their idle pages come back on request */
	kept = kv_seg_sat_add(kv_seg_sat_add(t.held, t.pending), t.floors);
	kept = kept > t.givable ? kept - t.givable : 0;
	*room = cap > kept ? cap - kept : 0;
	/* past its share, what those waiting below theirs claim is kept too */
	if (t.gaps) {
		uint64_t within = kv_seg_min(t.me.share, *room);

		*room = *room > t.gaps ? *room - t.gaps : 0;
		if (*room < within)
			*room = within;
	}
}

void kv_share_waiting(kv_share_t *s)
{
	if (s->fd < 0)
		return;
	pthread_mutex_lock(&s->mu);
	s->waiters++;
	pthread_mutex_unlock(&s->mu);
}

void kv_share_waited(kv_share_t *s, int waited)
{
	if (s->fd < 0)
		return;
	pthread_mutex_lock(&s->mu);
	if (waited && s->waiters)
		s->waiters--;
	/* another thread's map still waiting keeps what it published */
	if (s->waiting && !s->waiters) {
		s->waiting = 0;
		publish(s);
	}
	pthread_mutex_unlock(&s->mu);
}

void kv_share_demand(kv_share_t *s, uint64_t bytes)
{
	if (s->fd < 0)
		return;
	pthread_mutex_lock(&s->mu);
	state(&s->demand, kv_seg_min(bytes, budget_of(s)));
	publish(s);
	pthread_mutex_unlock(&s->mu);
}

void kv_share_unused(kv_share_t *s, uint64_t bytes)
{
	if (s->fd < 0)
		return;
	pthread_mutex_lock(&s->mu);
	state(&s->unused, bytes);
	publish(s);
	pthread_mutex_unlock(&s->mu);
}

uint64_t kv_share_asked(kv_share_t *s, uint64_t page)
{
	uint64_t asked, unused, over, above, idle;
	struct sums t;

	if (s->fd < 0)
		return 0;
	/* afresh: what the engine gave back since the last update (its pages
	 * idle now, published by kv_share_note) is not asked again */
	pthread_mutex_lock(&s->mu);
	others_live(s, &t);
	asked = s->asked = t.me.asked;
	s->use_limit = t.bound;
	idle = idle_of(s);
	above = s->held - idle > s->min ? s->held - idle - s->min : 0;
	pthread_mutex_unlock(&s->mu);
	if (!page || !asked)
		return asked;
	/* whole pages: the unused part rounded up (a part of a page frees
	 * nothing, and an ask split over several holders would round to
	 * nothing in each; it costs a cache, never a request), the part
	 * above its share down (rounded up, a process just above its share
	 * would stop a request and fall below it); never below its floor */
	unused = kv_seg_min(t.me.asked_unused, asked);
	over = asked - unused;
	/* (less the byte the rule adds to each part so the parts make up
	 * the whole: a whole number of pages stays so) */
	unused = unused ? kv_seg_sat_add(unused - 1, page - 1) / page * page : 0;
	asked = kv_seg_sat_add(unused, over / page * page);
	return kv_seg_min(asked, above / page * page);
}

int kv_share_may_use(kv_share_t *s, uint64_t used)
{
	struct sums t;
	int ok;

	if (s->fd < 0)
		return 1;
	pthread_mutex_lock(&s->mu);
	/* its unused pages count out of what it uses, unless it waits
	 * (fair.h) */
	if (!demand_of(s))
		used -= kv_seg_min(unused_of(s), used);
	ok = used <= s->use_limit;
	if (!ok) {
		/* the bound is set by takes, asks and the worker's updates: a
		 * process without a worker would keep it past the wait that set
		 * it, so before a refusal the rule is read again, and the bound
		 * lifted if nobody waits below their share any more */
		others_live(s, &t);
		if (!t.gaps)
			s->use_limit = UINT64_MAX;
		ok = used <= s->use_limit;
	}
	pthread_mutex_unlock(&s->mu);
	return ok;
}

void kv_share_trimmed(kv_share_t *s, uint64_t bytes)
{
	if (s->fd < 0)
		return;
	pthread_mutex_lock(&s->mu);
	s->trimmed = kv_seg_sat_add(s->trimmed, bytes);
	publish(s);
	pthread_mutex_unlock(&s->mu);
}
