/*
 * share.c - see share.h.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kvshim.h"
#include "log.h"
#include "share.h"

struct kv_share_handle_s {
	struct kv_share *sh;
	int slot;
	char name[128];
};

/* The start time of process pid (clock ticks since boot), or 0. */
static uint64_t proc_start(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long start = 0;
	size_t n;
	FILE *f;
	int field;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* fields after the command, which may hold spaces and parentheses */
	p = strrchr(buf, ')');
	if (!p)
		return 0;
	for (field = 2; p && field < 22; field++)
		p = strchr(p + 1, ' ');
	if (p)
		sscanf(p + 1, "%llu", &start);
	return start;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* This process's pid namespace, 0 if unknown. */
static uint64_t own_pidns(void)
{
	struct stat st;

	return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/*
 * Whether the slot's process still runs. Only a process of our own pid
 * namespace can be judged (containers may share /dev/shm, not pids), and
 * one whose start time cannot be read (/proc mounted with hidepid) counts
 * as alive: a live process's slot must never be taken.
 */
static int alive(const struct kv_share_slot *sl)
{
	uint64_t ns = own_pidns(), start;

	if (sl->pid <= 0)
		return 0;
	if (sl->pidns && ns && sl->pidns != ns)
		return 1;
	if (kill(sl->pid, 0) < 0 && errno == ESRCH)
		return 0;
	start = proc_start(sl->pid);
	return start == 0 || start == sl->start;
}

/* Free the slots of processes that are gone; their pages went with them. */
static void reap(struct kv_share *sh)
{
	unsigned i;

	for (i = 0; i < KV_SHARE_SLOTS; i++) {
		if (sh->slot[i].pid && !alive(&sh->slot[i])) {
			kv_info("share: process %d is gone: its %llu bytes are free",
				(int)sh->slot[i].pid,
				(unsigned long long)sh->slot[i].held);
			memset(&sh->slot[i], 0, sizeof(sh->slot[i]));
		}
	}
}

/* Lock the segment, recovering it from a holder that died. */
static int lock(struct kv_share *sh)
{
	int r = pthread_mutex_lock(&sh->lock);

	if (r == EOWNERDEAD) {
		kv_warn("share: a process died holding the lock: recovered");
		pthread_mutex_consistent(&sh->lock);
		reap(sh);
		r = 0;
	}
	if (r) {
		kv_error("share: cannot lock the segment: %s", strerror(r));
		return KVSHIM_ESTATE;
	}
	return 0;
}

int kv_share_check(const struct kv_share *sh, size_t len, const char **why)
{
	unsigned i;

	if (len != sizeof(*sh)) {
		*why = "its size is not this kvshim's";
		return KVSHIM_ESTATE;
	}
	if (sh->magic != KV_SHARE_MAGIC) {
		*why = "it is not a kvshim segment (bad magic)";
		return KVSHIM_ESTATE;
	}
	if (sh->version != KV_SHARE_VERSION || sh->size != sizeof(*sh) ||
	    sh->nslots != KV_SHARE_SLOTS) {
		*why = "it was made by another version of kvshim";
		return KVSHIM_ESTATE;
	}
	if (!sh->budget || sh->budget > 4 * sh->device_bytes) {
		*why = "its budget is out of range";
		return KVSHIM_ESTATE;
	}
	for (i = 0; i < KV_SHARE_SLOTS; i++) {
		const struct kv_share_slot *sl = &sh->slot[i];

		if (sl->pid < 0 || sl->held > 4 * sh->device_bytes ||
		    sl->mapped > sl->held || sl->cached > sl->mapped ||
		    (sl->max && sl->min > sl->max) ||
		    memchr(sl->cmd, '\0', sizeof(sl->cmd)) == NULL) {
			*why = "a process slot holds impossible figures";
			return KVSHIM_ESTATE;
		}
	}
	return 0;
}

static int init_segment(struct kv_share *sh, uint64_t budget,
			uint64_t device_bytes, unsigned mode, const char *name)
{
	pthread_mutexattr_t ma;
	int r;

	memset(sh, 0, sizeof(*sh));
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
	r = pthread_mutex_init(&sh->lock, &ma);
	pthread_mutexattr_destroy(&ma);
	if (r)
		return KVSHIM_ENOMEM;
	sh->version = KV_SHARE_VERSION;
	sh->size = sizeof(*sh);
	sh->nslots = KV_SHARE_SLOTS;
	sh->mode = mode;
	sh->budget = budget ? budget : device_bytes;
	sh->device_bytes = device_bytes;
	snprintf(sh->name, sizeof(sh->name), "%s", name);
	/* the magic last: a segment half set up is never taken for one */
	__atomic_store_n(&sh->magic, KV_SHARE_MAGIC, __ATOMIC_RELEASE);
	return 0;
}

static int segment_name(char *out, size_t len, const char *uuid, const char *pool)
{
	const char *p;

	for (p = pool; p && *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
			return KVSHIM_EINVAL;
	if (!uuid || !*uuid || (pool && strlen(pool) > 48))
		return KVSHIM_EINVAL;
	snprintf(out, len, "/kvshim-%s%s%s", uuid, pool && *pool ? "-" : "",
		 pool ? pool : "");
	return 0;
}

/* Map the segment behind fd, creating it if it is new, and check it.
 * Serialized against other openers by flock. */
static int map_segment(int fd, const char *name, uint64_t budget,
		       uint64_t device_bytes, unsigned mode, struct kv_share **out)
{
	struct kv_share *sh;
	const char *why = NULL;
	struct stat st;
	int rc = 0, fresh;

	if (flock(fd, LOCK_EX) < 0 || fstat(fd, &st) < 0)
		return KVSHIM_ESTATE;
	fresh = st.st_size == 0;
	if (fresh && ftruncate(fd, sizeof(*sh)) < 0) {
		flock(fd, LOCK_UN);
		return KVSHIM_ENOMEM;
	}
	if (!fresh && (size_t)st.st_size != sizeof(*sh)) {
		kv_error("share: refusing /dev/shm%s: its size is not this kvshim's", name);
		flock(fd, LOCK_UN);
		return KVSHIM_ESTATE;
	}
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (sh == MAP_FAILED) {
		flock(fd, LOCK_UN);
		return KVSHIM_ENOMEM;
	}
	if (fresh)
		rc = init_segment(sh, budget, device_bytes, mode, name);
	else if (kv_share_check(sh, sizeof(*sh), &why)) {
		kv_error("share: refusing /dev/shm%s: %s", name, why);
		rc = KVSHIM_ESTATE;
	}
	flock(fd, LOCK_UN);
	if (rc) {
		munmap(sh, sizeof(*sh));
		return rc;
	}
	*out = sh;
	return 0;
}

static void own_command(char *out, size_t len)
{
	FILE *f = fopen("/proc/self/comm", "r");

	out[0] = '\0';
	if (f) {
		if (!fgets(out, (int)len, f))
			out[0] = '\0';
		fclose(f);
	}
	out[strcspn(out, "\n")] = '\0';
}

int kv_share_open(const char *uuid, const char *pool, uint64_t budget,
		  uint64_t device_bytes, uint64_t min, uint64_t max,
		  unsigned mode, kv_share_t **out)
{
	kv_share_t *s;
	unsigned i;
	int fd, rc;

	if (!out || !device_bytes || (max && min > max) || (mode & ~0777u))
		return KVSHIM_EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return KVSHIM_ENOMEM;
	rc = segment_name(s->name, sizeof(s->name), uuid, pool);
	if (rc)
		goto fail;
	fd = shm_open(s->name, O_RDWR | O_CREAT | O_EXCL, mode);
	if (fd >= 0)
		fchmod(fd, mode);       /* not the umask's idea of it */
	else if (errno == EEXIST)
		fd = shm_open(s->name, O_RDWR, 0);
	if (fd < 0) {
		kv_error("share: cannot open /dev/shm%s: %s", s->name, strerror(errno));
		rc = KVSHIM_ESTATE;
		goto fail;
	}
	rc = map_segment(fd, s->name, budget, device_bytes, mode, &s->sh);
	close(fd);
	if (rc)
		goto fail;
	rc = lock(s->sh);
	if (rc)
		goto unmap;
	reap(s->sh);
	s->slot = -1;
	for (i = 0; i < KV_SHARE_SLOTS && s->slot < 0; i++)
		if (!s->sh->slot[i].pid)
			s->slot = (int)i;
	if (s->slot >= 0) {
		struct kv_share_slot *sl = &s->sh->slot[s->slot];

		memset(sl, 0, sizeof(*sl));
		sl->pid = getpid();
		sl->start = proc_start(getpid());
		sl->pidns = own_pidns();
		own_command(sl->cmd, sizeof(sl->cmd));
		sl->min = min;
		sl->max = max;
		sl->last_ns = now_ns();
	}
	pthread_mutex_unlock(&s->sh->lock);
	if (s->slot < 0) {
		kv_error("share: /dev/shm%s has no free slot (%d processes)", s->name,
			 KV_SHARE_SLOTS);
		rc = KVSHIM_ESTATE;
		goto unmap;
	}
	*out = s;
	return 0;
unmap:
	munmap(s->sh, sizeof(*s->sh));
fail:
	free(s);
	return rc;
}

void kv_share_close(kv_share_t *s)
{
	if (!s)
		return;
	if (lock(s->sh) == 0) {
		memset(&s->sh->slot[s->slot], 0, sizeof(s->sh->slot[0]));
		pthread_mutex_unlock(&s->sh->lock);
	}
	munmap(s->sh, sizeof(*s->sh));
	free(s);
}

static uint64_t total_held(const struct kv_share *sh)
{
	uint64_t t = 0;
	unsigned i;

	for (i = 0; i < KV_SHARE_SLOTS; i++)
		if (sh->slot[i].pid)
			t += sh->slot[i].held;
	return t;
}

/* What a process would give back on request: its idle pages, down to its
 * floor. Lock held. */
static uint64_t givable(const struct kv_share_slot *sl)
{
	uint64_t idle = sl->cached + sl->pooled;
	uint64_t spare = sl->held > sl->min ? sl->held - sl->min : 0;

	return idle < spare ? idle : spare;
}

/* The budget the other processes' floors keep for them: what each holds
 * short of its floor. Lock held. */
static uint64_t floors_unmet(const struct kv_share *sh, int me)
{
	uint64_t kept = 0;
	unsigned i;

	for (i = 0; i < KV_SHARE_SLOTS; i++) {
		const struct kv_share_slot *sl = &sh->slot[i];

		if ((int)i != me && sl->pid && sl->min > sl->held)
			kept += sl->min - sl->held;
	}
	return kept;
}

/* Ask the others for need bytes of their idle pages, above their floors.
 * Returns the bytes asked for. */
static uint64_t ask(struct kv_share *sh, int me, uint64_t need)
{
	uint64_t asked = 0;
	unsigned i;

	for (i = 0; i < KV_SHARE_SLOTS && asked < need; i++) {
		struct kv_share_slot *sl = &sh->slot[i];
		uint64_t want;

		if ((int)i == me || !sl->pid)
			continue;
		want = givable(sl);
		if (want > sl->trim_request) {
			want -= sl->trim_request;
			if (want > need - asked)
				want = need - asked;
			sl->trim_request += want;
			asked += want;
		} else {
			asked += want;   /* already asked: it is on its way */
		}
	}
	return asked;
}

static int take(kv_share_t *s, uint64_t bytes, int may_ask);

int kv_share_take(kv_share_t *s, uint64_t bytes)
{
	return take(s, bytes, 1);
}

int kv_share_take_spare(kv_share_t *s, uint64_t bytes)
{
	return take(s, bytes, 0);
}

static int take(kv_share_t *s, uint64_t bytes, int may_ask)
{
	struct kv_share *sh = s->sh;
	struct kv_share_slot *me;
	uint64_t total;
	int rc;

	rc = lock(sh);
	if (rc)
		return rc;
	me = &sh->slot[s->slot];
	if (me->max && me->held + bytes > me->max) {
		pthread_mutex_unlock(&sh->lock);
		return KVSHIM_ELIMIT;
	}
	/* the others' floors are budget they may claim at any time */
	total = total_held(sh) + floors_unmet(sh, s->slot);
	if (total + bytes > sh->budget) {
		reap(sh);
		total = total_held(sh) + floors_unmet(sh, s->slot);
	}
	if (total + bytes <= sh->budget) {
		me->held += bytes;
		me->last_ns = now_ns();
		rc = 0;
	} else {
		rc = may_ask && ask(sh, s->slot, total + bytes - sh->budget) ?
		     KV_SHARE_WAIT : KVSHIM_ELIMIT;
	}
	pthread_mutex_unlock(&sh->lock);
	return rc;
}

void kv_share_give(kv_share_t *s, uint64_t bytes)
{
	struct kv_share_slot *me;

	if (lock(s->sh))
		return;
	me = &s->sh->slot[s->slot];
	me->held = me->held > bytes ? me->held - bytes : 0;
	me->last_ns = now_ns();
	pthread_mutex_unlock(&s->sh->lock);
}

uint64_t kv_share_update(kv_share_t *s, uint64_t mapped, uint64_t cached,
			 uint64_t pooled, uint64_t reserved)
{
	struct kv_share_slot *me;
	uint64_t req;

	if (lock(s->sh))
		return 0;
	me = &s->sh->slot[s->slot];
	me->mapped = mapped < me->held ? mapped : me->held;
	me->cached = cached < me->mapped ? cached : me->mapped;
	me->pooled = pooled;
	me->reserved = reserved;
	req = me->trim_request;
	me->trim_request = 0;
	pthread_mutex_unlock(&s->sh->lock);
	return req;
}

void kv_share_note(kv_share_t *s, uint64_t cached, uint64_t pooled)
{
	struct kv_share_slot *me;

	if (lock(s->sh))
		return;
	me = &s->sh->slot[s->slot];
	me->pooled = pooled;
	me->cached = cached;
	if (me->mapped < cached)
		me->mapped = cached;
	if (me->mapped > me->held)
		me->mapped = me->held;
	if (me->cached > me->mapped)
		me->cached = me->mapped;
	me->last_ns = now_ns();
	pthread_mutex_unlock(&s->sh->lock);
}

void kv_share_figures(kv_share_t *s, uint64_t *budget, uint64_t *others,
		      uint64_t *room)
{
	uint64_t kept;
	unsigned i;

	*budget = *others = *room = 0;
	if (lock(s->sh))
		return;
	*budget = s->sh->budget;
	*others = total_held(s->sh) - s->sh->slot[s->slot].held;
	/* the others keep what they use and their floors; their idle pages
	 * come back on request */
	kept = *others + floors_unmet(s->sh, s->slot);
	for (i = 0; i < KV_SHARE_SLOTS; i++)
		if ((int)i != s->slot && s->sh->slot[i].pid)
			kept -= givable(&s->sh->slot[i]);
	*room = *budget > kept ? *budget - kept : 0;
	pthread_mutex_unlock(&s->sh->lock);
}

void kv_share_trimmed(kv_share_t *s, uint64_t bytes)
{
	if (lock(s->sh))
		return;
	s->sh->slot[s->slot].trimmed += bytes;
	pthread_mutex_unlock(&s->sh->lock);
}
