/*
 * share.c - see share.h.
 *
 * Every figure another process wrote is loaded once, atomically, and kept
 * within bounds before use; this process's own slot is written from its
 * own copies and never read back. Calls on one handle take its mutex: its
 * locks belong to one open file description, which two threads would
 * share (one thread's unlock would drop the other's lock).
 */
#include <ctype.h>
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

#include "kvshim.h"
#include "log.h"
#include "share.h"

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

/* A second: how long the update lock counts as stuck after a wait for it
 * ran out (meanwhile a call tries for KV_SHARE_STUCK_WAIT_MS only). */
#define STUCK_NS 1000000000ull

struct kv_share_handle_s {
	pthread_mutex_t mu;      /* one call at a time (see the top) */
	struct kv_share *sh;
	int fd;                  /* -1 in a forked child: the handle is inert */
	int slot;
	unsigned mode;
	uint64_t budget;         /* this process's: stands in for a bad header's */
	uint64_t device_bytes;
	/* this process's figures, published from here */
	uint64_t held, mapped, cached, pooled, reserved, min, max, trimmed;
	uint64_t last_ns;
	uint64_t stuck_until;    /* CLOCK_MONOTONIC ns, 0: the lock is not stuck */
	int warned;              /* a slot's figures were found out of bounds */
	char path[192];
	struct kv_share_handle_s *next;   /* the open handles, for fork */
};

/* Figures of one slot, within bounds. */
struct fig {
	uint64_t held, pending, mapped, cached, pooled, reserved;
	uint64_t min, max, last_ns, trim_request, trimmed;
	int clamped;
};

/* What the other processes hold, take, keep by their floors and could
 * give back, summed without wrapping. */
struct sums {
	uint64_t held, pending, floors, givable;
	int clamped;
};

/* ---- small things ----------------------------------------------------------- */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* This process's pid namespace, 0 if unknown. */
static uint64_t own_pidns(void)
{
	struct stat st;

	return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* Copy at most len bytes of src (up to a NUL) into out as printable ASCII,
 * every other byte (escapes, control characters) as \xNN; out holds
 * 4 * len + 1 bytes. */
static void printable(char *out, const char *src, size_t len)
{
	size_t i;
	char *o = out;

	for (i = 0; i < len && src[i]; i++) {
		unsigned char c = (unsigned char)src[i];

		if (c >= 0x20 && c < 0x7f && c != '\\')
			*o++ = (char)c;
		else
			o += sprintf(o, "\\x%02x", c);
	}
	*o = '\0';
}

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

/* ---- the kernel's locks ----------------------------------------------------- */

/* Take (F_RDLCK, F_WRLCK) or drop (F_UNLCK) the lock on byte off of fd's
 * open file description, without waiting. Returns 0, or -1 with errno
 * (EAGAIN or EACCES: another description holds it). */
static int lock_byte(int fd, short type, off_t off)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET,
			    .l_start = off, .l_len = 1, .l_pid = 0 };

	return fcntl(fd, F_OFD_SETLK, &fl);
}

/* Whether another open file description holds a lock on byte off.
 * Returns 1, 0, or -1 when the kernel cannot say. */
static int byte_locked(int fd, off_t off)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
			    .l_start = off, .l_len = 1, .l_pid = 0 };

	if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
		return -1;
	return fl.l_type != F_UNLCK;
}

/*
 * Take the lock on byte off, waiting ms at most. The kernel's blocking wait
 * cannot be bounded without a signal, which a library must not take, so
 * this polls, backing off from 20 us to 1 ms. Returns 0, or -1 with errno
 * (EAGAIN: still held by another at the deadline).
 */
static int lock_wait(int fd, short type, off_t off, unsigned ms)
{
	uint64_t deadline = mono_ns() + (uint64_t)ms * 1000000u;
	long pause = 20000;

	for (;;) {
		if (lock_byte(fd, type, off) == 0)
			return 0;
		if (errno != EAGAIN && errno != EACCES && errno != EINTR)
			return -1;
		if (mono_ns() >= deadline) {
			errno = EAGAIN;
			return -1;
		}
		nanosleep(&(struct timespec){ 0, pause }, NULL);
		if (pause < 1000000)
			pause *= 2;
	}
}

/*
 * Take the update lock (F_WRLCK to take budget, F_RDLCK to read), waiting
 * KV_SHARE_LOCK_WAIT_MS at most, or KV_SHARE_STUCK_WAIT_MS while it was
 * lately found stuck. Going on without it is safe (see share.h) and
 * logged once per episode. Returns 1 when held, 0 when going on without.
 */
static int update_lock(kv_share_t *s, short type)
{
	uint64_t t = mono_ns();
	unsigned ms = t < s->stuck_until ? KV_SHARE_STUCK_WAIT_MS : KV_SHARE_LOCK_WAIT_MS;

	if (lock_wait(s->fd, type, KV_SHARE_LOCK_UPDATE, ms) == 0) {
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
	s->stuck_until = mono_ns() + STUCK_NS;
	return 0;
}

static void update_unlock(kv_share_t *s, int locked)
{
	if (locked)
		lock_byte(s->fd, F_UNLCK, KV_SHARE_LOCK_UPDATE);
}

/* ---- slots -------------------------------------------------------------------- */

/*
 * The figures of slot sl, each loaded once and kept within bounds: what a
 * slot holds, takes, pools or keeps as a floor is at most cap (the budget),
 * mapped at most held, cached at most mapped. pending is loaded before held:
 * a taker moves its bytes from pending to held in the other order, so they
 * are never missed. Sets clamped when held, pending, pooled or min was out
 * of bounds (a figure no process of this version writes).
 */
static void load_fig(const struct kv_share_slot *sl, uint64_t cap, struct fig *f)
{
	f->clamped = 0;
	f->pending = LOAD(&sl->pending);
	f->held = LOAD(&sl->held);
	f->pooled = LOAD(&sl->pooled);
	f->min = LOAD(&sl->min);
	if (f->pending > cap || f->held > cap || f->pooled > cap || f->min > cap)
		f->clamped = 1;
	f->pending = min_u64(f->pending, cap);
	f->held = min_u64(f->held, cap);
	f->pooled = min_u64(f->pooled, f->held);
	f->min = min_u64(f->min, cap);
	/* mapped above held was a moment's state in version 1 (budget
	 * given back before the figures were published); here only a lie
	 * writes it, and it is bounded, never a reason to refuse */
	f->mapped = min_u64(LOAD(&sl->mapped), f->held);
	f->cached = min_u64(LOAD(&sl->cached), f->mapped);
	f->reserved = LOAD(&sl->reserved);
	f->max = LOAD(&sl->max);
	if (f->max && f->min > f->max)
		f->min = f->max;
	f->last_ns = LOAD(&sl->last_ns);
	f->trim_request = min_u64(LOAD(&sl->trim_request), f->held);
	f->trimmed = LOAD(&sl->trimmed);
}

/* What a process would give back on request: its idle pages, down to
 * its floor. Returns those bytes. */
static uint64_t givable(const struct fig *f)
{
	uint64_t idle = sat_add(f->cached, f->pooled);
	uint64_t spare = f->held > f->min ? f->held - f->min : 0;

	return min_u64(idle, spare);
}

/* Zero slot sl's figures and free it; its lock is held by the caller. */
static void clear_slot(struct kv_share_slot *sl)
{
	unsigned i;

	STORE(&sl->state, KV_SLOT_FREE);
	STORE(&sl->pid, 0);
	STORE(&sl->pidns, 0);
	STORE(&sl->pending, 0);
	STORE(&sl->held, 0);
	STORE(&sl->mapped, 0);
	STORE(&sl->cached, 0);
	STORE(&sl->pooled, 0);
	STORE(&sl->reserved, 0);
	STORE(&sl->min, 0);
	STORE(&sl->max, 0);
	STORE(&sl->last_ns, 0);
	STORE(&sl->trim_request, 0);
	STORE(&sl->trimmed, 0);
	for (i = 0; i < sizeof(sl->spare) / sizeof(sl->spare[0]); i++)
		STORE(&sl->spare[i], 0);
	memset(sl->cmd, 0, sizeof(sl->cmd));
}

/*
 * Reclaim slot i of sh, through fd's open file description, if no process
 * holds its lock: its pages went with its process. Never call it on a slot
 * fd itself holds (taking a lock one already holds succeeds, and dropping
 * it would free the slot). Returns 1 when a used slot was reclaimed.
 */
static int reap_slot(int fd, struct kv_share *sh, unsigned i, const char *path)
{
	struct kv_share_slot *sl = &sh->slot[i];
	int reaped = 0;

	if (lock_byte(fd, F_WRLCK, KV_SHARE_LOCK_SLOT0 + i) < 0)
		return 0;       /* its process lives, or the kernel cannot say */
	if (LOAD(&sl->state) != KV_SLOT_FREE) {
		kv_info("share: %s: process %d is gone: its %llu bytes are free",
			path, (int)LOAD(&sl->pid),
			(unsigned long long)LOAD(&sl->held));
		clear_slot(sl);
		reaped = 1;
	}
	lock_byte(fd, F_UNLCK, KV_SHARE_LOCK_SLOT0 + i);
	return reaped;
}

/* Reclaim every used slot but mine (-1: none) whose process is gone.
 * Returns how many. */
static unsigned reap_all(int fd, struct kv_share *sh, int mine, const char *path)
{
	unsigned i, n = 0;

	for (i = 0; i < KV_SHARE_SLOTS; i++)
		if ((int)i != mine && LOAD(&sh->slot[i].state) != KV_SLOT_FREE)
			n += (unsigned)reap_slot(fd, sh, i, path);
	return n;
}

/* Write this process's figures into its slot, every one of them, so that
 * a slot another member rewrote is repaired. */
static void publish(kv_share_t *s)
{
	struct kv_share_slot *me = &s->sh->slot[s->slot];

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
	STORE(&me->pid, (int32_t)getpid());
	STORE(&me->state, KV_SLOT_USED);
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

/* Sum the other used slots' figures into t (cap: the budget). */
static void others(kv_share_t *s, uint64_t cap, struct sums *t)
{
	unsigned i;

	memset(t, 0, sizeof(*t));
	for (i = 0; i < KV_SHARE_SLOTS; i++) {
		const struct kv_share_slot *sl = &s->sh->slot[i];
		struct fig f;
		uint64_t has;

		if ((int)i == s->slot || LOAD(&sl->state) == KV_SLOT_FREE)
			continue;
		load_fig(sl, cap, &f);
		t->held = sat_add(t->held, f.held);
		t->pending = sat_add(t->pending, f.pending);
		has = sat_add(f.held, f.pending);
		if (f.min > has)
			t->floors = sat_add(t->floors, f.min - has);
		t->givable = sat_add(t->givable, givable(&f));
		t->clamped |= f.clamped;
	}
	if (t->clamped && !s->warned) {
		s->warned = 1;
		kv_warn("share: %s: a process's slot holds figures out of bounds: counted as at most the budget",
			s->path);
	}
}

/* ---- the header --------------------------------------------------------------- */

static __thread char why_buf[320];

/* The checks on a segment's first 16 bytes (head) and its file's size:
 * a header, the magic, this major, this major's size. Returns 0, or
 * KVSHIM_ESTATE with *why set. */
static int head_check(const struct kv_share *head, size_t len, const char **why)
{
	if (len < 16 || head->magic == 0) {
		*why = "it is half made (no header yet)";
		return KVSHIM_ESTATE;
	}
	if (head->magic != KV_SHARE_MAGIC) {
		*why = "it is not a kvshim segment (bad magic)";
		return KVSHIM_ESTATE;
	}
	if (head->major != KV_SHARE_MAJOR) {
		snprintf(why_buf, sizeof(why_buf),
			 "it is a version %u.%u segment and this kvshim uses version %u.%u (another major: remove it once no process uses it, or set another KVSHIM_POOL)",
			 (unsigned)head->major, (unsigned)head->minor,
			 KV_SHARE_MAJOR, KV_SHARE_MINOR);
		*why = why_buf;
		return KVSHIM_ESTATE;
	}
	if (len != sizeof(*head)) {
		snprintf(why_buf, sizeof(why_buf),
			 "its size (%zu bytes) is not the %zu of version %u segments",
			 len, sizeof(*head), KV_SHARE_MAJOR);
		*why = why_buf;
		return KVSHIM_ESTATE;
	}
	return 0;
}

/* Whether the header's layout fields are this major's. Returns 1 or 0. */
static int layout_ok(const struct kv_share *sh)
{
	return LOAD(&sh->size) == sizeof(*sh) && LOAD(&sh->nslots) == KV_SHARE_SLOTS &&
	       LOAD(&sh->slot_size) == sizeof(struct kv_share_slot);
}

int kv_share_check(const struct kv_share *sh, size_t len, const char **why)
{
	struct kv_share head;

	if (len < 16) {
		*why = "it is half made (no header yet)";
		return KVSHIM_ESTATE;
	}
	memcpy(&head, sh, 16);
	head.magic = LOAD(&sh->magic);
	if (head_check(&head, len, why))
		return KVSHIM_ESTATE;
	if (!layout_ok(sh)) {
		*why = "its header's layout fields are damaged";
		return KVSHIM_ESTATE;
	}
	return 0;
}

/* Write a fresh header (magic last, release) for s; slots of processes
 * gone are freed first, those of live ones kept. Set-up lock held. */
static void init_header(kv_share_t *s, const char *name)
{
	struct kv_share *sh = s->sh;
	unsigned i;

	STORE(&sh->magic, 0);
	reap_all(s->fd, sh, -1, s->path);
	sh->major = KV_SHARE_MAJOR;
	sh->minor = KV_SHARE_MINOR;
	STORE(&sh->size, (uint32_t)sizeof(*sh));
	STORE(&sh->nslots, KV_SHARE_SLOTS);
	STORE(&sh->slot_size, (uint32_t)sizeof(struct kv_share_slot));
	STORE(&sh->mode, s->mode);
	STORE(&sh->flags, 0);
	STORE(&sh->budget, s->budget);
	STORE(&sh->device_bytes, s->device_bytes);
	STORE(&sh->created_ns, now_ns());
	memset(sh->name, 0, sizeof(sh->name));
	snprintf(sh->name, sizeof(sh->name), "%s", name);
	for (i = 0; i < sizeof(sh->spare) / sizeof(sh->spare[0]); i++)
		STORE(&sh->spare[i], 0);
	__atomic_store_n(&sh->magic, KV_SHARE_MAGIC, __ATOMIC_RELEASE);
}

/* ---- trust -------------------------------------------------------------------- */

static const char *file_kind(mode_t m)
{
	if (S_ISFIFO(m))
		return "a FIFO";
	if (S_ISDIR(m))
		return "a directory";
	if (S_ISCHR(m))
		return "a character device";
	if (S_ISBLK(m))
		return "a block device";
	if (S_ISSOCK(m))
		return "a socket";
	if (S_ISLNK(m))
		return "a symbolic link";
	return "not a regular file";
}

static int in_group(gid_t gid)
{
	gid_t some[64], *g = some;
	int n, i, found = gid == getegid();

	n = found ? 0 : getgroups(0, NULL);
	if (n > 64)
		g = malloc((size_t)n * sizeof(*g));
	if (n > 0 && g)
		n = getgroups(n, g);
	for (i = 0; g && i < n && !found; i++)
		found = g[i] == gid;
	if (g != some)
		free(g);
	return found;
}

/*
 * Whether this process, with segment mode mode, joins the file st
 * describes: a regular file of this user with exactly that mode, or, with
 * a group mode (group read and write), of a group this process is in with
 * exactly that mode. Returns 1, or 0 with why (len bytes) saying which
 * rule failed, naming the owner and mode.
 */
static int join_rule(const struct stat *st, unsigned mode, char *why, size_t len)
{
	unsigned m = (unsigned)st->st_mode & 07777;
	int group = (mode & 0060) == 0060;

	if (!S_ISREG(st->st_mode)) {
		snprintf(why, len, "it is %s, not a regular file", file_kind(st->st_mode));
		return 0;
	}
	if (st->st_uid == geteuid() && m == mode)
		return 1;
	if (st->st_uid != geteuid() && group && m == mode && in_group(st->st_gid))
		return 1;
	snprintf(why, len,
		 "owner uid %u, group %u, mode 0%03o; this process (uid %u) joins only a segment of its own with mode 0%03o (KVSHIM_SHARE_MODE)%s",
		 (unsigned)st->st_uid, (unsigned)st->st_gid, m, (unsigned)geteuid(),
		 mode, group ? ", or of a group it is in with that mode" : "");
	return 0;
}

int kv_share_mode_ok(unsigned mode, const char **why)
{
	if (mode & ~0777u) {
		*why = "expected octal permissions no higher than 0777";
		return 0;
	}
	if ((mode & 0600) != 0600) {
		*why = "the owner must be able to read and write the segment (0600 at least)";
		return 0;
	}
	if (mode & 0002) {
		*why = "every local user could write the segment: use 0660 and a group to share it across users";
		return 0;
	}
	return 1;
}

/* Why opening path failed with err, naming what is there. */
static void open_failed(const char *path, int err, char *why, size_t len)
{
	struct stat st;

	if (err == ELOOP) {
		snprintf(why, len, "it is a symbolic link");
	} else if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		snprintf(why, len, "it is %s, not a regular file", file_kind(st.st_mode));
	} else if (err == EACCES && lstat(path, &st) == 0) {
		snprintf(why, len, "permission denied: owner uid %u, group %u, mode 0%03o",
			 (unsigned)st.st_uid, (unsigned)st.st_gid,
			 (unsigned)st.st_mode & 07777);
	} else {
		snprintf(why, len, "%s", strerror(err));
	}
}

/* ---- opening ------------------------------------------------------------------ */

static int map_segment(kv_share_t *s)
{
	void *p;

	if (s->sh)
		return 0;
	p = mmap(NULL, sizeof(*s->sh), PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
	if (p == MAP_FAILED) {
		kv_error("share: cannot map %s: %s", s->path, strerror(errno));
		return KVSHIM_ENOMEM;
	}
	/* a child forked without exec gets no copy: a mapping holds the file
	 * open, and with it the slot's lock, for as long as it lives */
	madvise(p, sizeof(*s->sh), MADV_DONTFORK);
	s->sh = p;
	return 0;
}

/*
 * Make a segment under a temporary name, set it up whole, and link it into
 * place: no process ever finds a new segment half made. Losing the race to
 * another creator is no error: the caller opens theirs. Returns 0 or
 * KVSHIM_ESTATE / KVSHIM_ENOMEM (logged).
 */
static int create_segment(kv_share_t *s, const char *name)
{
	static unsigned seq;
	char tmp[224];
	int fd, rc = 0;

	snprintf(tmp, sizeof(tmp), "%s/.kvshim-new-%d-%u", KV_SHARE_DIR, (int)getpid(),
		 __atomic_fetch_add(&seq, 1, __ATOMIC_RELAXED));
	fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		kv_error("share: cannot create %s: %s", tmp, strerror(errno));
		return KVSHIM_ESTATE;
	}
	if (fchmod(fd, s->mode) < 0 || ftruncate(fd, sizeof(*s->sh)) < 0) {
		kv_error("share: cannot set %s up: %s", tmp, strerror(errno));
		rc = errno == ENOSPC || errno == ENOMEM ? KVSHIM_ENOMEM : KVSHIM_ESTATE;
		goto out;
	}
	s->fd = fd;
	rc = map_segment(s);
	if (!rc) {
		init_header(s, name);
		munmap(s->sh, sizeof(*s->sh));
		s->sh = NULL;
	}
	s->fd = -1;
	if (!rc && link(tmp, s->path) < 0 && errno != EEXIST) {
		kv_error("share: cannot create %s: %s", s->path, strerror(errno));
		rc = KVSHIM_ESTATE;
	}
	if (!rc)
		kv_debug("share: %s set up", s->path);
out:
	unlink(tmp);
	close(fd);
	return rc;
}

/* The first bytes of the segment (magic and versions); zero where the
 * file is shorter. */
static void read_head(int fd, struct kv_share *h)
{
	memset(h, 0, 16);
	if (pread(fd, h, 16, 0) < 16)
		memset(h, 0, 16);
}

/* Whether a mapped segment's header can be used as it is: its layout
 * fields and its budget in range. Returns 1 or 0. */
static int sound(const kv_share_t *s)
{
	uint64_t b = LOAD(&s->sh->budget);

	return layout_ok(s->sh) && b && b / 4 <= s->device_bytes;
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
	read_head(s->fd, &head);
	if (!head_check(&head, (size_t)st.st_size, &why)) {
		rc = map_segment(s);
		if (rc)
			return rc;
		if (sound(s))
			goto joined;
	}
	if (lock_wait(s->fd, F_WRLCK, KV_SHARE_LOCK_INIT, KV_SHARE_INIT_WAIT_MS) < 0) {
		kv_error("share: refusing %s: another process has been setting it up for over %d ms",
			 s->path, KV_SHARE_INIT_WAIT_MS);
		return KVSHIM_ESTATE;
	}
	rc = KVSHIM_ESTATE;
	if (fstat(s->fd, &st) < 0)
		goto unlock;
	read_head(s->fd, &head);
	if (head.magic == 0) {
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
	if (head_check(&head, (size_t)st.st_size, &why)) {
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
	lock_byte(s->fd, F_UNLCK, KV_SHARE_LOCK_INIT);
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
	int tries, rc;

	for (tries = 0; tries < 8; tries++) {
		s->fd = open(s->path, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
		if (s->fd >= 0 || errno != ENOENT)
			break;
		rc = create_segment(s, name);
		if (rc)
			return rc;
	}
	if (s->fd < 0) {
		open_failed(s->path, errno, why, sizeof(why));
		kv_error("share: refusing %s: %s", s->path, why);
		return KVSHIM_ESTATE;
	}
	if (fstat(s->fd, &st) < 0 || !join_rule(&st, s->mode, why, sizeof(why))) {
		kv_error("share: refusing %s: %s", s->path, why);
		return KVSHIM_ESTATE;
	}
	return 0;
}

/* Take a free slot: the first whose lock nobody holds (a used one's
 * process is gone: its figures are cleared). Returns 0 or KVSHIM_ESTATE. */
static int claim_slot(kv_share_t *s)
{
	struct kv_share_slot *sl;
	unsigned i;

	for (i = 0; i < KV_SHARE_SLOTS; i++) {
		if (lock_byte(s->fd, F_WRLCK, KV_SHARE_LOCK_SLOT0 + i) == 0)
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
	clear_slot(sl);
	s->slot = (int)i;
	STORE(&sl->pidns, own_pidns());
	own_command(sl->cmd, sizeof(sl->cmd));
	s->last_ns = now_ns();
	publish(s);
	return 0;
}

/* ---- the open handles, for fork -------------------------------------------- */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
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

int kv_share_path(char *out, size_t len, const char *uuid, const char *pool)
{
	const char *p;

	if (!uuid || !*uuid || strlen(uuid) > 64 || (pool && strlen(pool) > 48))
		return KVSHIM_EINVAL;
	for (p = uuid; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-')
			return KVSHIM_EINVAL;
	for (p = pool; p && *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
			return KVSHIM_EINVAL;
	snprintf(out, len, "%s/kvshim-%s%s%s", KV_SHARE_DIR, uuid,
		 pool && *pool ? "-" : "", pool ? pool : "");
	return 0;
}

int kv_share_open(const char *uuid, const char *pool, uint64_t budget,
		  uint64_t device_bytes, uint64_t min, uint64_t max,
		  unsigned mode, kv_share_t **out)
{
	const char *why;
	kv_share_t *s;
	int rc;

	if (!out || !device_bytes || (max && min > max))
		return KVSHIM_EINVAL;
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
	s = calloc(1, sizeof(*s));
	if (!s)
		return KVSHIM_ENOMEM;
	s->fd = -1;
	s->slot = -1;
	s->mode = mode;
	s->budget = budget;
	s->device_bytes = device_bytes;
	s->min = min;
	s->max = max;
	if (pthread_mutex_init(&s->mu, NULL)) {
		free(s);
		return KVSHIM_ENOMEM;
	}
	rc = kv_share_path(s->path, sizeof(s->path), uuid, pool);
	if (rc)
		goto fail;
	rc = open_file(s, s->path + strlen(KV_SHARE_DIR));
	if (!rc)
		rc = settle(s, s->path + strlen(KV_SHARE_DIR));
	if (!rc)
		rc = claim_slot(s);
	if (rc)
		goto fail;
	reg_add(s);
	*out = s;
	return 0;
fail:
	if (s->sh)
		munmap(s->sh, sizeof(*s->sh));
	if (s->fd >= 0)
		close(s->fd);
	pthread_mutex_destroy(&s->mu);
	free(s);
	return rc;
}

void kv_share_close(kv_share_t *s)
{
	if (!s)
		return;
	reg_remove(s);
	if (s->fd >= 0) {
		pthread_mutex_lock(&s->mu);
		clear_slot(&s->sh->slot[s->slot]);
		pthread_mutex_unlock(&s->mu);
		close(s->fd);           /* the kernel drops the slot's lock */
		pthread_mutex_destroy(&s->mu);
	}
	if (s->sh)
		munmap(s->sh, sizeof(*s->sh));
	free(s);
}

/* Whether bytes more for this process fit beside the others' sums t.
 * Returns 1 or 0. */
static int fits(const kv_share_t *s, const struct sums *t, uint64_t cap,
		uint64_t bytes, int with_pending)
{
	uint64_t used = sat_add(sat_add(t->held, t->floors),
				with_pending ? t->pending : 0);

	return used <= cap && sat_add(s->held, bytes) <= cap - used;
}

/* Ask the others for need bytes of their idle pages, above their floors.
 * Returns the bytes asked for (or already on their way). */
static uint64_t ask(kv_share_t *s, uint64_t cap, uint64_t need)
{
	uint64_t asked = 0;
	unsigned i;

	for (i = 0; i < KV_SHARE_SLOTS && asked < need; i++) {
		struct kv_share_slot *sl = &s->sh->slot[i];
		uint64_t want, req;
		struct fig f;

		if ((int)i == s->slot || LOAD(&sl->state) == KV_SLOT_FREE)
			continue;
		load_fig(sl, cap, &f);
		want = givable(&f);
		req = f.trim_request;
		if (want > req) {
			want = min_u64(want - req, need - asked);
			/* one try: a request changing meanwhile is another
			 * asker's, and this one's share of it will come */
			__atomic_compare_exchange_n(&sl->trim_request, &req,
						    sat_add(req, want), 0,
						    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
		}
		asked = sat_add(asked, want);
	}
	return asked;
}

/*
 * Take bytes for this process: publish them as pending, then count what
 * the others hold and take (see share.h), reaping the dead when short.
 * Returns 0, KV_SHARE_WAIT or KVSHIM_ELIMIT (see kv_share_take).
 */
static int take(kv_share_t *s, uint64_t bytes, int may_ask)
{
	struct kv_share_slot *me;
	struct sums t;
	uint64_t cap, over;
	int locked, rc;

	if (s->fd < 0)
		return KVSHIM_ESTATE;
	pthread_mutex_lock(&s->mu);
	if (s->max && (bytes > s->max || s->held > s->max - bytes)) {
		pthread_mutex_unlock(&s->mu);
		return KVSHIM_ELIMIT;
	}
	me = &s->sh->slot[s->slot];
	locked = update_lock(s, F_WRLCK);
	cap = budget_of(s);
	STORE(&me->pending, bytes);
	others(s, cap, &t);
	if (!fits(s, &t, cap, bytes, 1) &&
	    reap_all(s->fd, s->sh, s->slot, s->path))
		others(s, cap, &t);
	if (fits(s, &t, cap, bytes, 1)) {
		s->held += bytes;
		s->last_ns = now_ns();
		publish(s);     /* held, then pending back to zero */
		rc = 0;
	} else {
		STORE(&me->pending, 0);
		over = sat_add(sat_add(sat_add(t.held, t.floors), t.pending),
			       sat_add(s->held, bytes));
		over = over > cap ? over - cap : 0;
		if (may_ask && fits(s, &t, cap, bytes, 0))
			rc = KV_SHARE_WAIT;     /* others are taking: look again */
		else
			rc = may_ask && ask(s, cap, over) ? KV_SHARE_WAIT : KVSHIM_ELIMIT;
	}
	update_unlock(s, locked);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int kv_share_take(kv_share_t *s, uint64_t bytes)
{
	return take(s, bytes, 1);
}

int kv_share_take_spare(kv_share_t *s, uint64_t bytes)
{
	return take(s, bytes, 0);
}

void kv_share_give(kv_share_t *s, uint64_t bytes)
{
	if (s->fd < 0)
		return;
	pthread_mutex_lock(&s->mu);
	s->held = s->held > bytes ? s->held - bytes : 0;
	s->mapped = min_u64(s->mapped, s->held);
	s->cached = min_u64(s->cached, s->mapped);
	s->pooled = min_u64(s->pooled, s->held);
	s->last_ns = now_ns();
	publish(s);
	pthread_mutex_unlock(&s->mu);
}

uint64_t kv_share_update(kv_share_t *s, uint64_t mapped, uint64_t cached,
			 uint64_t pooled, uint64_t reserved)
{
	uint64_t req;

	if (s->fd < 0)
		return 0;
	pthread_mutex_lock(&s->mu);
	s->mapped = min_u64(mapped, s->held);
	s->cached = min_u64(cached, s->mapped);
	s->pooled = min_u64(pooled, s->held);
	s->reserved = reserved;
	req = __atomic_exchange_n(&s->sh->slot[s->slot].trim_request, 0,
				  __ATOMIC_SEQ_CST);
	publish(s);
	/* never below the floor: a request read off a stale figure (asked
	 * again before this process's last trim was published) is cut */
	req = min_u64(req, s->held > s->min ? s->held - s->min : 0);
	pthread_mutex_unlock(&s->mu);
	return req;
}

void kv_share_note(kv_share_t *s, uint64_t cached, uint64_t pooled)
{
	if (s->fd < 0)
		return;
	pthread_mutex_lock(&s->mu);
	s->pooled = min_u64(pooled, s->held);
	if (s->mapped < cached)
		s->mapped = cached;
	s->mapped = min_u64(s->mapped, s->held);
	s->cached = min_u64(cached, s->mapped);
	s->last_ns = now_ns();
	publish(s);
	pthread_mutex_unlock(&s->mu);
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
	reap_all(s->fd, s->sh, s->slot, s->path);
	locked = update_lock(s, F_RDLCK);
	cap = budget_of(s);
	others(s, cap, &t);
	update_unlock(s, locked);
	pthread_mutex_unlock(&s->mu);
	*budget = cap;
	*others_out = t.held;
	/* the others keep what they use, take and keep by their floors;
	 * their idle pages come back on request */
	kept = sat_add(sat_add(t.held, t.pending), t.floors);
	kept = kept > t.givable ? kept - t.givable : 0;
	*room = cap > kept ? cap - kept : 0;
}

void kv_share_trimmed(kv_share_t *s, uint64_t bytes)
{
	if (s->fd < 0)
		return;
	pthread_mutex_lock(&s->mu);
	s->trimmed = sat_add(s->trimmed, bytes);
	publish(s);
	pthread_mutex_unlock(&s->mu);
}

/* ---- reading from outside ------------------------------------------------------ */

int kv_share_read(const char *path, unsigned mode, int reap,
		  struct kv_share_info *out, const char **why)
{
	struct kv_share head, *sh = NULL;
	uint64_t cap, ns = own_pidns();
	struct stat st;
	int fd, writable = reap, rc = KVSHIM_ESTATE, locked;
	unsigned i;

	memset(out, 0, sizeof(*out));
	fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0 && writable && errno == EACCES) {
		writable = 0;
		fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	}
	if (fd < 0) {
		open_failed(path, errno, why_buf, sizeof(why_buf));
		*why = why_buf;
		return KVSHIM_ESTATE;
	}
	if (fstat(fd, &st) < 0) {
		snprintf(why_buf, sizeof(why_buf), "%s", strerror(errno));
		*why = why_buf;
		goto out;
	}
	out->uid = (unsigned)st.st_uid;
	out->gid = (unsigned)st.st_gid;
	out->mode = (unsigned)st.st_mode & 07777;
	out->joinable = join_rule(&st, mode, out->why_not, sizeof(out->why_not));
	if (!S_ISREG(st.st_mode)) {
		*why = out->why_not;    /* join_rule said what it is */
		goto out;
	}
	read_head(fd, &head);
	if (head_check(&head, (size_t)st.st_size, why))
		goto out;
	sh = mmap(NULL, sizeof(*sh), PROT_READ | (writable ? PROT_WRITE : 0),
		  MAP_SHARED, fd, 0);
	if (sh == MAP_FAILED) {
		sh = NULL;
		snprintf(why_buf, sizeof(why_buf), "cannot map it: %s", strerror(errno));
		*why = why_buf;
		goto out;
	}
	if (kv_share_check(sh, sizeof(*sh), why))
		goto out;
	rc = 0;
	out->major = sh->major;
	out->minor = sh->minor;
	out->budget = LOAD(&sh->budget);
	out->device_bytes = LOAD(&sh->device_bytes);
	printable(out->name, sh->name, sizeof(sh->name));
	cap = out->budget ? out->budget : UINT64_MAX;
	if (reap && writable && out->joinable)
		out->reaped = reap_all(fd, sh, -1, path);
	locked = lock_wait(fd, F_RDLCK, KV_SHARE_LOCK_UPDATE, KV_SHARE_LOCK_WAIT_MS) == 0;
	out->locked = locked;
	for (i = 0; i < KV_SHARE_SLOTS; i++) {
		const struct kv_share_slot *sl = &sh->slot[i];
		struct kv_share_proc *p = &out->proc[out->nprocs];
		struct fig f;

		if (LOAD(&sl->state) == KV_SLOT_FREE)
			continue;
		load_fig(sl, cap, &f);
		p->slot = i;
		p->pid = LOAD(&sl->pid);
		p->other_pidns = LOAD(&sl->pidns) && ns && LOAD(&sl->pidns) != ns;
		p->alive = byte_locked(fd, KV_SHARE_LOCK_SLOT0 + i) != 0;
		p->clamped = f.clamped;
		printable(p->cmd, sl->cmd, sizeof(sl->cmd));
		p->held = f.held;
		p->pending = f.pending;
		p->mapped = f.mapped;
		p->cached = f.cached;
		p->pooled = f.pooled;
		p->reserved = f.reserved;
		p->min = f.min;
		p->max = f.max;
		p->last_ns = f.last_ns;
		p->trim_request = f.trim_request;
		p->trimmed = f.trimmed;
		out->nprocs++;
		if (!p->alive)
			continue;
		out->held = sat_add(out->held, f.held);
		out->pending = sat_add(out->pending, f.pending);
		out->mapped = sat_add(out->mapped, f.mapped);
		out->cached = sat_add(out->cached, f.cached);
		out->pooled = sat_add(out->pooled, f.pooled);
	}
	if (locked)
		lock_byte(fd, F_UNLCK, KV_SHARE_LOCK_UPDATE);
out:
	if (sh)
		munmap(sh, sizeof(*sh));
	close(fd);
	return rc;
}
