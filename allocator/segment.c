/*
 * segment.c - the shared budget segment's file, below share.c: its
 * kernel-held locks, its slots read with bounds, its header, who may join
 * it, and reading it from outside (kv_share_read, kv_share_path,
 * kv_share_check, kv_share_mode_ok, declared in share.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <ctype.h>

#include "kvshim.h"
#include "log.h"
#include "segment.h"
#include "share.h"

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

uint64_t kv_seg_realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t kv_seg_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* This process's pid namespace, 0 if unknown. */
uint64_t kv_seg_pidns(void)
{
	struct stat st;

	return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* Copy at most len bytes of src (up to a NUL) into out as printable ASCII,
 * every other byte (escapes, control characters) as \xNN; out holds
 * 4 * len + 1 bytes. */
void kv_seg_printable(char *out, const char *src, size_t len)
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

/* ---- the kernel's locks ----------------------------------------------------- */

/* Take (F_RDLCK, F_WRLCK) or drop (F_UNLCK) the lock on byte off of fd's
 * open file description, without waiting. Returns 0, or -1 with errno
 * (EAGAIN or EACCES: another description holds it). */
int kv_seg_lock(int fd, short type, off_t off)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET,
			    .l_start = off, .l_len = 1, .l_pid = 0 };

	return fcntl(fd, F_OFD_SETLK, &fl);
}

/* Whether another open file description holds a lock on byte off.
 * Returns 1, 0, or -1 when the kernel cannot say. */
int kv_seg_locked(int fd, off_t off)
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
int kv_seg_lock_wait(int fd, short type, off_t off, unsigned ms)
{
	uint64_t deadline = kv_seg_mono_ns() + (uint64_t)ms * 1000000u;
	long pause = 20000;

	for (;;) {
		if (kv_seg_lock(fd, type, off) == 0)
			return 0;
		if (errno != EAGAIN && errno != EACCES && errno != EINTR)
			return -1;
		if (kv_seg_mono_ns() >= deadline) {
			errno = EAGAIN;
			return -1;
		}
		nanosleep(&(struct timespec){ 0, pause }, NULL);
		if (pause < 1000000)
			pause *= 2;
	}
}

/* The header's reserve under budget cap: at most half of it, whatever the
 * header says (segment.h). */
uint64_t kv_seg_reserve(const struct kv_share *sh, uint64_t cap)
{
	return kv_seg_min(LOAD(&sh->reserve), cap / 2);
}

/* ---- slots -------------------------------------------------------------------- */

/*
 * The figures of slot sl, each loaded once and kept within bounds: what a
 * slot holds, takes, pools or keeps as a floor is at most cap (the budget),
 * mapped at most held, cached at most mapped. pending is loaded before held:
 * a taker moves its bytes from pending to held in the other order, so they
 * are never missed. Sets clamped when held, pending, pooled or min was out
 * of bounds (a figure no process of this version writes). A weight of 0
 * (a slot of minor 0) is 1; a weight above KV_FAIR_WEIGHT_MAX, a demand
 * above cap and asked above held are cut to them, and set clamped; unused
 * above what it uses (held less idle) is cut to it. A limit (0 in a slot
 * of an older minor: none) above cap is cut to it, unflagged: a process's
 * limit is the device's memory by default, often more than the budget;
 * the floor is at most the ceiling, the smaller of max and limit.
 */
void kv_seg_load(const struct kv_share_slot *sl, uint64_t cap, struct kv_seg_fig *f)
{
	uint64_t used;

	f->clamped = 0;
	f->pending = LOAD(&sl->pending);
	f->held = LOAD(&sl->held);
	f->pooled = LOAD(&sl->pooled);
	f->min = LOAD(&sl->min);
	if (f->pending > cap || f->held > cap || f->pooled > cap || f->min > cap)
		f->clamped = 1;
	f->pending = kv_seg_min(f->pending, cap);
	f->held = kv_seg_min(f->held, cap);
	f->pooled = kv_seg_min(f->pooled, f->held);
	f->min = kv_seg_min(f->min, cap);
	/* mapped above held was a moment's state in version 1 (budget
	 * given back before the figures were published); here only a lie
	 * writes it, and it is bounded, never a reason to refuse */
	f->mapped = kv_seg_min(LOAD(&sl->mapped), f->held);
	f->cached = kv_seg_min(LOAD(&sl->cached), f->mapped);
	f->reserved = LOAD(&sl->reserved);
	f->max = LOAD(&sl->max);
	f->limit = kv_seg_min(LOAD(&sl->limit), cap);
	if (f->max && f->min > f->max)
		f->min = f->max;
	if (f->limit && f->min > f->limit)
		f->min = f->limit;
	f->last_ns = LOAD(&sl->last_ns);
	f->trim_request = kv_seg_min(LOAD(&sl->trim_request), f->held);
	f->trimmed = LOAD(&sl->trimmed);
	f->weight = LOAD(&sl->weight);
	f->demand = LOAD(&sl->demand);
	f->asked = LOAD(&sl->asked);
	/* (asked over held is a moment's state: a give lowers held before
	 * the rule's next look lowers asked, and a reader may read between
	 * the two stores; cut, as unused below) */
	if (f->weight > KV_FAIR_WEIGHT_MAX || f->demand > cap)
		f->clamped = 1;
	f->weight = f->weight ? kv_seg_min(f->weight, KV_FAIR_WEIGHT_MAX) : 1;
	f->demand = kv_seg_min(f->demand, cap);
	f->asked = kv_seg_min(f->asked, f->held);
	/* unused above what it uses is a moment's state (its writer
	 * publishes cached before unused): cut, never a reason to warn */
	used = f->held - kv_seg_min(kv_seg_sat_add(f->cached, f->pooled), f->held);
	f->unused = kv_seg_min(LOAD(&sl->unused), used);
}

void kv_seg_fair_in(const struct kv_seg_fig *f, unsigned slot, struct kv_fair_in *in)
{
	in->weight = f->weight;
	in->held = f->held;
	in->pending = f->pending;
	in->idle = kv_seg_min(kv_seg_sat_add(f->cached, f->pooled), f->held);
	in->demand = f->demand;
	in->unused = f->unused;
	in->min = f->min;
	in->max = f->max;
	in->limit = f->limit;
	in->order = slot;
}

/* Zero slot sl's figures and free it; its lock is held by the caller. */
void kv_seg_clear(struct kv_share_slot *sl)
{
	uint64_t seq = LOAD(&sl->seq) | 1;

	STORE(&sl->seq, seq);
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
	STORE(&sl->weight, 0);
	STORE(&sl->demand, 0);
	STORE(&sl->asked, 0);
	STORE(&sl->unused, 0);
	STORE(&sl->limit, 0);
	memset(sl->cmd, 0, sizeof(sl->cmd));
	STORE(&sl->seq, seq + 1);
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

	if (kv_seg_lock(fd, F_WRLCK, KV_SHARE_LOCK_SLOT0 + i) < 0)
		return 0;       /* its process lives, or the kernel cannot say */
	if (LOAD(&sl->state) != KV_SLOT_FREE) {
		kv_info("share: %s: process %d is gone: its %llu bytes are free",
			path, (int)LOAD(&sl->pid),
			(unsigned long long)LOAD(&sl->held));
		kv_seg_clear(sl);
		reaped = 1;
	}
	kv_seg_lock(fd, F_UNLCK, KV_SHARE_LOCK_SLOT0 + i);
	return reaped;
}

/* Reclaim every used slot but mine (-1: none) whose process is gone.
 * Returns how many. */
unsigned kv_seg_reap_all(int fd, struct kv_share *sh, int mine, const char *path)
{
	unsigned i, n = 0;

	for (i = 0; i < KV_SHARE_SLOTS; i++)
		if ((int)i != mine && LOAD(&sh->slot[i].state) != KV_SLOT_FREE)
			n += (unsigned)reap_slot(fd, sh, i, path);
	return n;
}

/* ---- the header --------------------------------------------------------------- */

static __thread char why_buf[320];

/* The checks on a segment's first 16 bytes (head) and its file's size:
 * a header, the magic, this major, this major's size. Returns 0, or
 * KVSHIM_ESTATE with *why set. */
int kv_seg_head_check(const struct kv_share *head, size_t len, const char **why)
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
int kv_seg_layout_ok(const struct kv_share *sh)
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
	if (kv_seg_head_check(&head, len, why))
		return KVSHIM_ESTATE;
	if (!kv_seg_layout_ok(sh)) {
		*why = "its header's layout fields are damaged";
		return KVSHIM_ESTATE;
	}
	return 0;
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
int kv_seg_join_rule(const struct stat *st, unsigned mode, char *why, size_t len)
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
	/* read or write access alone takes the segment's locks (a slot's,
	 * the set-up lock), and a member needs both: a user with one could
	 * keep a dead member's pages from ever coming back, or leave no slot
	 * to claim, without being a member */
	if ((mode & 0006) || ((mode & 0060) && (mode & 0060) != 0060)) {
		*why = "users who may read or write the segment but not join it could hold its locks: give the group read and write together, or neither (0600, or 0660 and a group), and others nothing";
		return 0;
	}
	return 1;
}

/* Why opening path failed with err, naming what is there. */
void kv_seg_open_failed(const char *path, int err, char *why, size_t len)
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

/* The first bytes of the segment (magic and versions); zero where the
 * file is shorter. */
void kv_seg_read_head(int fd, struct kv_share *h)
{
	memset(h, 0, 16);
	if (pread(fd, h, 16, 0) < 16)
		memset(h, 0, 16);
}

/* ---- reading from outside ------------------------------------------------------ */

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

/*
 * Read every used slot of sh into out (totals over the live ones), and
 * each slot's sequence number before and after: when every number was
 * even and none changed, no slot changed during the read, and the figures
 * are one instant's. Returns 1 then, else 0.
 */
static int collect(int fd, const struct kv_share *sh, uint64_t cap, uint64_t ns,
		   struct kv_share_info *out)
{
	struct kv_fair_in fin[KV_SHARE_SLOTS];
	struct kv_fair_out fout[KV_SHARE_SLOTS];
	struct kv_fair_sums sums;
	unsigned live[KV_SHARE_SLOTS], nlive = 0;
	uint64_t seq[KV_SHARE_SLOTS];
	int exact = 1;
	unsigned i;

	out->nprocs = 0;
	out->held = out->pending = out->mapped = out->cached = out->pooled = 0;
	for (i = 0; i < KV_SHARE_SLOTS; i++) {
		const struct kv_share_slot *sl = &sh->slot[i];
		struct kv_share_proc *p = &out->proc[out->nprocs];
		struct kv_seg_fig f;

		seq[i] = LOAD(&sl->seq);
		exact &= !(seq[i] & 1);
		if (LOAD(&sl->state) == KV_SLOT_FREE)
			continue;
		kv_seg_load(sl, cap, &f);
		memset(p, 0, sizeof(*p));
		p->slot = i;
		p->pid = LOAD(&sl->pid);
		p->other_pidns = LOAD(&sl->pidns) && ns && LOAD(&sl->pidns) != ns;
		p->alive = kv_seg_locked(fd, KV_SHARE_LOCK_SLOT0 + i) != 0;
		p->clamped = f.clamped;
		kv_seg_printable(p->cmd, sl->cmd, sizeof(sl->cmd));
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
		p->weight = f.weight;
		p->demand = f.demand;
		p->asked = f.asked;
		p->unused = f.unused;
		p->limit = f.limit;
		out->nprocs++;
		if (!p->alive)
			continue;
		kv_seg_fair_in(&f, i, &fin[nlive]);
		live[nlive++] = out->nprocs - 1;
		out->held = kv_seg_sat_add(out->held, f.held);
		out->pending = kv_seg_sat_add(out->pending, f.pending);
		out->mapped = kv_seg_sat_add(out->mapped, f.mapped);
		out->cached = kv_seg_sat_add(out->cached, f.cached);
		out->pooled = kv_seg_sat_add(out->pooled, f.pooled);
	}
	/* the shares of the live processes, and their bounds, by the rule the
	 * members follow (they count a dead process's slot too, until it is
	 * reaped) */
	kv_fair_plan(cap, out->reserve, fin, nlive, fout, &sums);
	for (i = 0; i < nlive; i++) {
		out->proc[live[i]].share = fout[i].share;
		out->proc[live[i]].gap = fout[i].gap;
		out->proc[live[i]].most = kv_fair_bound(cap, fin, nlive, i, fout, &sums);
		out->proc[live[i]].entitled = kv_fair_entitled(cap, fin, nlive, i);
	}
	for (i = 0; i < KV_SHARE_SLOTS && exact; i++)
		exact = LOAD(&sh->slot[i].seq) == seq[i];
	return exact;
}

int kv_share_read(const char *path, unsigned mode, int reap,
		  struct kv_share_info *out, const char **why)
{
	struct kv_share head, *sh = NULL;
	uint64_t cap, ns = kv_seg_pidns();
	struct stat st;
	int fd, writable = reap, rc = KVSHIM_ESTATE, locked, tries;

	memset(out, 0, sizeof(*out));
	fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0 && writable && errno == EACCES) {
		writable = 0;
		fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	}
	if (fd < 0) {
		kv_seg_open_failed(path, errno, why_buf, sizeof(why_buf));
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
	out->joinable = kv_seg_join_rule(&st, mode, out->why_not, sizeof(out->why_not));
	if (!S_ISREG(st.st_mode)) {
		*why = out->why_not;    /* join_rule said what it is */
		goto out;
	}
	kv_seg_read_head(fd, &head);
	if (kv_seg_head_check(&head, (size_t)st.st_size, why))
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
	kv_seg_printable(out->name, sh->name, sizeof(sh->name));
	cap = out->budget ? out->budget : UINT64_MAX;
	out->reserve = kv_seg_reserve(sh, cap);
	if (reap && writable && out->joinable)
		out->reaped = kv_seg_reap_all(fd, sh, -1, path);
	locked = kv_seg_lock_wait(fd, F_RDLCK, KV_SHARE_LOCK_UPDATE, KV_SHARE_LOCK_WAIT_MS) == 0;
	out->locked = locked;
	for (tries = 0; tries < 20 && !out->exact; tries++)
		out->exact = collect(fd, sh, cap, ns, out);
	if (locked)
		kv_seg_lock(fd, F_UNLCK, KV_SHARE_LOCK_UPDATE);
out:
	if (sh)
		munmap(sh, sizeof(*sh));
	close(fd);
	return rc;
}
