/*
 * test_share_trust.c - the shared budget against hostile members, other
 * users, and crashes at bad moments (issue 15): who may join a segment,
 * that nothing in it is trusted as a pointer, lock state or unbounded
 * number, that a dead process's budget always comes back (killed in its own
 * pid namespace, after exec, with a forked child alive), that a half-made
 * segment is set up again, that a stopped lock holder delays the others a
 * bounded time, and the segment's versions. Every case runs several
 * processes on the emulation; the refused ones run in children whose
 * stderr is checked for the message.
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#include "log.h"
#include "prim.h"
#include "share_util.h"
#include "shim.h"

#ifndef SECCOMP_RET_KILL_PROCESS
#define SECCOMP_RET_KILL_PROCESS 0x80000000U
#endif

#define REFUSED 10     /* try_join's exit status for KVSHIM_ESTATE */

struct join {
	unsigned mode;     /* KVSHIM_SHARE_MODE (0: 0600) */
	size_t pages;      /* to map once joined */
	int retry_s;       /* retry a map refused for the budget this long */
};

/* In a child: join the pool and map j->pages. Returns 0, REFUSED when the
 * segment was refused, 20 + -code for another error, 1 when the map
 * failed. */
static int try_join(void *arg)
{
	const struct join *j = arg;
	kv_alloc_t *b;
	CUdeviceptr d;
	int rc = kt_mk(16 * PG, 0, 0, 0, j ? j->mode : 0, &b);

	if (rc == KVSHIM_ESTATE)
		return REFUSED;
	if (rc)
		return 20 - rc;
	if (j && j->pages) {
		struct timespec t0;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		if (kv_alloc_reserve(b, 16 * PG, &d))
			return 1;
		while ((rc = kv_alloc_map(b, d, j->pages * PG)) == KVSHIM_ELIMIT &&
		       kt_ms_since(&t0) < j->retry_s * 1000.0)
			nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
		if (rc)
			return 1;
	}
	kv_alloc_destroy(b);
	return 0;
}

/* Assert that a child joining the pool is refused, with a message naming
 * the segment and holding each of the words given (NULL-terminated). */
/* Fork a child that takes the lock fl on fd (an open description of the
 * segment's file: the lock is the description's) and stops itself, and
 * close fd here; returns once it is stopped, holding the lock. The caller
 * kills and reaps it. */
static pid_t hold_stopped(int fd, const struct flock *fl)
{
	int st;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		KT_CHILD_CHECK(fcntl(fd, F_OFD_SETLK, fl) == 0);
		raise(SIGSTOP);
		_exit(0);
	}
	close(fd);
	ck_assert_int_eq(waitpid(pid, &st, WUNTRACED), pid);
	ck_assert(WIFSTOPPED(st));
	return pid;
}

static void assert_refused(const struct join *j, ...)
{
	char err[4096];
	const char *w;
	va_list ap;
	int rc = kt_in_child(try_join, (void *)j, 30, err, sizeof(err));

	ck_assert_msg(rc == REFUSED, "a child was not refused (status %d): %s", rc, err);
	ck_assert_msg(strstr(err, kt_path), "the refusal does not name %s: %s", kt_path, err);
	va_start(ap, j);
	while ((w = va_arg(ap, const char *)))
		ck_assert_msg(strstr(err, w), "the refusal does not say \"%s\": %s", w, err);
	va_end(ap);
}

static void assert_joins(const struct join *j)
{
	char err[4096];
	int rc = kt_in_child(try_join, (void *)j, 30, err, sizeof(err));

	ck_assert_msg(rc == 0, "a child could not join and map (status %d): %s", rc, err);
}

/* ---- who may join ------------------------------------------------------------- */

/* This user's files that are not what this process would create: another
 * mode, a symbolic link, a FIFO (never waited on), a directory. */
START_TEST(test_share_trust_own)
{
	struct join j = { 0600, 2, 0 };
	char owner[64], target[300];
	int fd;

	kt_new_pool();
	snprintf(owner, sizeof(owner), "owner uid %u", (unsigned)geteuid());
	/* a mode others can read (0644 leaks nothing now, but is not 0600) */
	fd = open(kt_path, O_RDWR | O_CREAT | O_EXCL, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fchmod(fd, 0644), 0);
	close(fd);
	assert_refused(&j, owner, "mode 0644", "0600", NULL);
	/* the same file with the mode this process asks for is joined */
	ck_assert_int_eq(chmod(kt_path, 0600), 0);
	assert_joins(&j);
	ck_assert_int_eq(unlink(kt_path), 0);

	/* a symbolic link: never followed, its target left alone */
	snprintf(target, sizeof(target), "%s-target", kt_path);
	ck_assert_int_eq(symlink(target, kt_path), 0);
	assert_refused(&j, "symbolic link", NULL);
	ck_assert_int_eq(access(target, F_OK), -1);
	ck_assert_int_eq(unlink(kt_path), 0);

	/* a FIFO: refused at once, nothing waits for a writer */
	ck_assert_int_eq(mkfifo(kt_path, 0600), 0);
	assert_refused(&j, "FIFO", "not a regular file", NULL);
	ck_assert_int_eq(unlink(kt_path), 0);

	ck_assert_int_eq(mkdir(kt_path, 0700), 0);
	assert_refused(&j, "directory", NULL);
	ck_assert_int_eq(rmdir(kt_path), 0);

	{
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int sk = socket(AF_UNIX, SOCK_STREAM, 0);

		ck_assert_int_ge(sk, 0);
		ck_assert_uint_lt(strlen(kt_path), sizeof(sa.sun_path));
		memcpy(sa.sun_path, kt_path, strlen(kt_path) + 1);
		ck_assert_int_eq(bind(sk, (struct sockaddr *)&sa, sizeof(sa)), 0);
		assert_refused(&j, "socket", NULL);
		close(sk);
		ck_assert_int_eq(unlink(kt_path), 0);
	}
}
END_TEST

/* A budget beyond four times the device is refused before anything is
 * made; a segment whose 64 slots are all held refuses a 65th process, by
 * name, and takes it once one is free. */
START_TEST(test_share_limits_refused)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
			    .l_start = KV_SHARE_LOCK_SLOT0, .l_len = KV_SHARE_SLOTS };
	struct join j = { 0600, 2, 0 };
	struct kv_alloc_opts o;
	kv_alloc_t *a = NULL;
	int fd, st;
	pid_t pid;

	kt_new_pool();
	kt_opts(&o);
	ck_assert_int_eq(kv_alloc_create(&o, &a), 0);
	o.budget = 5 * kv_alloc_prim(a)->device_bytes;
	kt_check(a);
	kv_alloc_destroy(a);
	a = NULL;
	o.share = 1;
	o.pool_name = kt_pool;
	ck_assert_int_eq(kv_alloc_create(&o, &a), KVSHIM_EINVAL);
	ck_assert_ptr_null(a);
	ck_assert_int_eq(access(kt_path, F_OK), -1);

	assert_joins(&j);       /* the segment, made */
	fd = open(kt_path, O_RDWR | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	/* every slot's lock, as 64 live processes would hold them */
	pid = hold_stopped(fd, &fl);
	assert_refused(&j, "no free slot", "64", NULL);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	assert_joins(&j);
	kt_seg_unlink();
}
END_TEST

/* KVSHIM_SHARE_MODE: owner rw and no write for others, else refused by
 * name; the allocator refuses such a mode too. */
START_TEST(test_share_mode_config)
{
	static const char *const bad[] = {
		"0400", "0200", "0000", "0060", "0666", "0602", "0777", "01600",
		"0999", "abc", "", "-600", "0x180", "0644", "0640", "0604", "0664",
		"0740", "0704", "0620", "0720"
	};
	static const struct { const char *s; unsigned v; } good[] = {
		{ "0600", 0600 }, { "600", 0600 }, { "0660", 0660 },
		{ "0700", 0700 }, { "0770", 0770 }, { "0670", 0670 },
	};
	struct kv_alloc_opts o;
	struct kv_config c;
	kv_alloc_t *a = NULL;
	const char *why;
	size_t i;

	setenv("KVSHIM_LOG", "none", 1);        /* test_share_mode_message reads it */
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		setenv("KVSHIM_SHARE_MODE", bad[i], 1);
		ck_assert_msg(kv_config_load(&c) == KVSHIM_ECONFIG,
			      "KVSHIM_SHARE_MODE=%s was taken", bad[i]);
		ck_assert_uint_eq(c.share_mode, 0600);  /* the default stays */
	}
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		setenv("KVSHIM_SHARE_MODE", good[i].s, 1);
		ck_assert_msg(kv_config_load(&c) == 0, "KVSHIM_SHARE_MODE=%s refused", good[i].s);
		ck_assert_uint_eq(c.share_mode, good[i].v);
	}
	unsetenv("KVSHIM_SHARE_MODE");
	unsetenv("KVSHIM_LOG");
	kv_log_set_level(KV_LOG_WARN);
	ck_assert(!kv_share_mode_ok(0400, &why));
	ck_assert_ptr_nonnull(strstr(why, "read and write"));
	ck_assert(!kv_share_mode_ok(0666, &why));
	ck_assert_ptr_nonnull(strstr(why, "every local user"));
	ck_assert(!kv_share_mode_ok(0640, &why));
	ck_assert_ptr_nonnull(strstr(why, "hold its locks"));
	ck_assert(!kv_share_mode_ok(0620, &why));
	ck_assert_ptr_nonnull(strstr(why, "hold its locks"));
	ck_assert(!kv_share_mode_ok(0644, &why));
	ck_assert_ptr_nonnull(strstr(why, "hold its locks"));
	kt_new_pool();
	kt_opts(&o);
	o.share = 1;
	o.pool_name = kt_pool;
	o.share_mode = 0666;
	ck_assert_int_eq(kv_alloc_create(&o, &a), KVSHIM_EINVAL);
	o.share_mode = 0400;
	ck_assert_int_eq(kv_alloc_create(&o, &a), KVSHIM_EINVAL);
	o.share_mode = 0644;
	ck_assert_int_eq(kv_alloc_create(&o, &a), KVSHIM_EINVAL);
	ck_assert_ptr_null(a);
	ck_assert_int_eq(access(kt_path, F_OK), -1);    /* nothing was made */
}
END_TEST

/* The message names the variable and says why. */
static int load_mode(void *arg)
{
	struct kv_config c;

	setenv("KVSHIM_SHARE_MODE", arg, 1);
	return kv_config_load(&c) == KVSHIM_ECONFIG ? 0 : 1;
}

START_TEST(test_share_mode_message)
{
	char err[1024];

	ck_assert_int_eq(kt_in_child(load_mode, "0400", 30, err, sizeof(err)), 0);
	ck_assert_msg(strstr(err, "KVSHIM_SHARE_MODE=0400") && strstr(err, "owner"),
		      "no message naming the variable: %s", err);
	ck_assert_int_eq(kt_in_child(load_mode, "0666", 30, err, sizeof(err)), 0);
	ck_assert_msg(strstr(err, "KVSHIM_SHARE_MODE=0666") && strstr(err, "every local user"),
		      "no message naming the variable: %s", err);
}
END_TEST

/* A uid no one uses, for a second user (root only). Returns it, or 0. */
static uid_t spare_uid(void)
{
	uid_t u;

	for (u = 40000 + (uid_t)(getpid() % 5000); u < 50000; u++)
		if (!getpwuid(u))
			return u;
	return 0;
}

struct as_user {
	uid_t uid;
	gid_t gid;
	int what;        /* PLANT_EMPTY, PLANT_COPY, CREATE_GROUP, JOIN */
	const void *copy;
	size_t copy_len;
	int ctl;         /* CREATE_GROUP: 'r' written here once joined */
	int wait;        /* CREATE_GROUP: read here before leaving */
};

enum { PLANT_EMPTY, PLANT_COPY, CREATE_GROUP, JOIN };

/* In a child: become the second user, then plant a file (mode 0666) at the
 * segment's path, create a group segment (0660) and hold it, or try to
 * join root's segment. */
static int as_other(void *arg)
{
	const struct as_user *u = arg;
	kv_alloc_t *b;
	CUdeviceptr d;
	char c;
	int fd, rc;

	if (setgroups(0, NULL) || setresgid(u->gid, u->gid, u->gid) ||
	    setresuid(u->uid, u->uid, u->uid))
		return 2;
	switch (u->what) {
	case PLANT_EMPTY:
	case PLANT_COPY:
		fd = open(kt_path, O_RDWR | O_CREAT | O_EXCL, 0666);
		if (fd < 0 || fchmod(fd, 0666))
			return 3;
		if (u->what == PLANT_COPY && write(fd, u->copy, u->copy_len) != (ssize_t)u->copy_len)
			return 4;
		close(fd);
		return 0;
	case CREATE_GROUP:
		rc = kt_mk(16 * PG, 0, 0, 0, 0660, &b);
		if (rc)
			return 5;
		if (kv_alloc_reserve(b, 16 * PG, &d) || kv_alloc_map(b, d, 2 * PG))
			return 6;
		if (write(u->ctl, "r", 1) != 1 || read(u->wait, &c, 1) != 1)
			return 7;
		kv_alloc_destroy(b);
		return 0;
	default:
		return try_join(NULL);
	}
}

/*
 * A second user (an unused uid, taken by a root child with setresuid):
 * its 0666 file at the path, empty or a valid segment, is refused by root
 * with its owner and mode named; it cannot join root's segment; with the
 * group mode (0660), a segment of a group root is in is joined, and its
 * budget shared, while root with 0600 refuses it. Skipped without root.
 */
START_TEST(test_share_other_user)
{
	struct as_user u = { 0 };
	struct join j = { 0600, 2, 0 };
	char err[4096], owner[64];
	struct kv_share copy;
	int p2c[2], c2p[2], rc;
	pid_t pid;
	char c;

	if (geteuid() != 0 || !(u.uid = spare_uid())) {
		printf("share: not root (or no spare uid): the tests with a second user are skipped\n");
		return;
	}
	u.gid = (gid_t)u.uid;
	snprintf(owner, sizeof(owner), "owner uid %u", (unsigned)u.uid);

	/* an empty 0666 file planted at the path */
	kt_new_pool();
	u.what = PLANT_EMPTY;
	ck_assert_int_eq(kt_in_child(as_other, &u, 30, err, sizeof(err)), 0);
	assert_refused(&j, owner, "mode 0666", NULL);
	ck_assert_int_eq(unlink(kt_path), 0);

	/* a valid segment of the other user's, mode 0666 */
	assert_joins(&j);       /* root's own, to copy */
	{
		struct kv_share *sh = kt_seg_map();

		memcpy(&copy, sh, sizeof(copy));
		kt_seg_unmap(sh);
	}
	ck_assert_int_eq(unlink(kt_path), 0);
	u.what = PLANT_COPY;
	u.copy = &copy;
	u.copy_len = sizeof(copy);
	ck_assert_int_eq(kt_in_child(as_other, &u, 30, err, sizeof(err)), 0);
	assert_refused(&j, owner, "mode 0666", NULL);
	ck_assert_int_eq(unlink(kt_path), 0);

	/* root's segment: the other user cannot even open it */
	kt_new_pool();
	assert_joins(&j);
	u.what = JOIN;
	rc = kt_in_child(as_other, &u, 30, err, sizeof(err));
	ck_assert_msg(rc == REFUSED && strstr(err, "permission denied"),
		      "the other user was not refused (status %d): %s", rc, err);
	ck_assert_int_eq(unlink(kt_path), 0);

	/* the group mode: the other user's segment, group root's, 0660 */
	kt_new_pool_pipes(p2c, c2p);
	u.what = CREATE_GROUP;
	u.gid = getegid();
	u.ctl = c2p[1];
	u.wait = p2c[0];
	fflush(stdout);
	pid = fork();
	if (pid == 0)
		_exit(as_other(&u));
	ck_assert_msg(read(c2p[0], &c, 1) == 1, "the other user could not create a group segment");
	{
		struct stat st;

		ck_assert_int_eq(stat(kt_path, &st), 0);
		ck_assert_uint_eq(st.st_uid, u.uid);
		ck_assert_uint_eq(st.st_mode & 07777, 0660);
	}
	j.mode = 0660;
	j.pages = 14;           /* the other user holds 2 of the 16 */
	assert_joins(&j);
	j.pages = 15;
	ck_assert_int_eq(kt_in_child(try_join, &j, 30, err, sizeof(err)), 1);
	j.mode = 0600;
	j.pages = 2;
	assert_refused(&j, owner, "mode 0660", NULL);
	ck_assert_int_eq(write(p2c[1], "q", 1), 1);
	ck_assert_int_eq(waitpid(pid, &rc, 0), pid);
	ck_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
	unlink(kt_path);
}
END_TEST

/* ---- nothing in the segment is trusted ---------------------------------------- */

/*
 * Every byte past the magic and versions overwritten with garbage, the
 * lock's old place, slots and the budget included: no process hangs or
 * crashes, a new one joins and maps, the dead garbage slots are reclaimed,
 * the header's budget is repaired, and a live member's slot is rewritten
 * by its owner.
 */
START_TEST(test_share_hostile_bytes)
{
	const struct kv_share_info *in;
	struct join j = { 0600, 4, 0 };
	struct kv_share *sh;
	kv_alloc_t *a;
	CUdeviceptr s;
	unsigned i;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 1);  /* its worker republishes its slot */
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 4 * PG), 0);
	sh = kt_seg_map();
	memset((char *)sh + 16, 0xa5, sizeof(*sh) - 16);
	j.retry_s = 10;
	assert_joins(&j);
	ck_assert_int_eq(kv_alloc_map(a, s + 4 * PG, 2 * PG), 0);
	in = kt_seg_read(1);
	ck_assert_uint_eq(in->budget, 16 * PG);         /* repaired */
	ck_assert_uint_eq(in->nprocs, 1);               /* only a is left */
	ck_assert_int_eq(in->proc[0].pid, getpid());
	ck_assert_uint_eq(in->proc[0].held, 6 * PG);    /* rewritten by a */
	for (i = 0; i < KV_SHARE_SLOTS; i++)
		if (i != in->proc[0].slot)
			ck_assert_uint_eq(sh->slot[i].state, KV_SLOT_FREE);
	kt_seg_unmap(sh);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/*
 * Slots that lie without a process behind them: a live pid (init, and this
 * very process), a pid of another namespace, a floor of 2^62, each claiming
 * the whole budget. No process holds their locks: they are reclaimed at
 * the first look, and the budget is whole again.
 */
START_TEST(test_share_lying_slots)
{
	struct kv_share *sh;
	size_t room = 0;
	kv_alloc_t *a;
	CUdeviceptr s;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	sh = kt_seg_map();
	sh->slot[10].pid = 1;
	sh->slot[10].held = 16 * PG;
	sh->slot[11].pid = getpid();
	sh->slot[11].pidns = 12345;
	sh->slot[11].held = 16 * PG;
	sh->slot[12].pid = getppid();
	sh->slot[12].min = 1ull << 62;
	sh->slot[10].state = sh->slot[11].state = sh->slot[12].state = KV_SLOT_USED;
	ck_assert_int_eq(kv_alloc_headroom(a, &room), 0);
	ck_assert_uint_eq(room, 16 * PG);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 16 * PG), 0);
	ck_assert_uint_eq(kt_seg_read(0)->nprocs, 1);
	kt_seg_unmap(sh);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/*
 * Two live members whose slots claim 2^63 bytes each, beside a device size
 * of 2^62 - 1 in the header: the sum does not wrap; each counts as the
 * whole budget at most, so nothing fits (never passed). Once they leave,
 * the budget is whole.
 */
START_TEST(test_share_no_wrap)
{
	const struct kv_share_info *in;
	struct kt_member m1, m2;
	struct kv_share *sh;
	size_t room = 1;
	kv_alloc_t *a;
	CUdeviceptr s;
	int i1, i2;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	kt_member_start(&m1, 16 * PG, 0, 0);
	kt_member_start(&m2, 16 * PG, 0, 0);
	sh = kt_seg_map();
	i1 = kt_slot_of(sh, m1.pid);
	i2 = kt_slot_of(sh, m2.pid);
	ck_assert(i1 >= 0 && i2 >= 0);
	sh->device_bytes = (1ull << 62) - 1;
	__atomic_store_n(&sh->slot[i1].held, 1ull << 63, __ATOMIC_SEQ_CST);
	__atomic_store_n(&sh->slot[i2].held, 1ull << 63, __ATOMIC_SEQ_CST);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, PG), KVSHIM_ELIMIT);
	ck_assert_int_eq(kv_alloc_headroom(a, &room), 0);
	ck_assert_uint_eq(room, 0);
	in = kt_seg_read(0);
	ck_assert_uint_eq(in->held, 2 * 16 * PG);       /* clamped, not wrapped */
	ck_assert(in->proc[0].clamped || in->proc[1].clamped || in->proc[2].clamped);
	ck_assert_int_eq(kt_member_leave(&m1), 0);
	ck_assert_int_eq(kt_member_leave(&m2), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 16 * PG), 0);
	kt_seg_unmap(sh);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/*
 * A live member's slot that states more unused pages than it uses (2^63
 * bytes): read as what it uses at most; the others' takes go on, and
 * this process, below its share, is asked for nothing.
 */
START_TEST(test_share_unused_bounded)
{
	const struct kv_share_info *in;
	struct kt_member m;
	struct kv_share *sh;
	kv_alloc_t *a;
	CUdeviceptr s;
	unsigned i;
	int k;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	kt_member_start(&m, 16 * PG, 0, 8);
	sh = kt_seg_map();
	k = kt_slot_of(sh, m.pid);
	ck_assert(k >= 0);
	__atomic_store_n(&sh->slot[k].unused, 1ull << 63, __ATOMIC_SEQ_CST);
	in = kt_seg_read(0);
	for (i = 0; i < in->nprocs && in->proc[i].pid != m.pid; i++)
		;
	ck_assert_uint_lt(i, in->nprocs);
	/* cut to what it uses (all of it unused: a share of nothing), not
	 * flagged: unused above what it uses is also a moment's state of an
	 * honest writer (it publishes cached before unused) */
	ck_assert_uint_eq(in->proc[i].unused, 8 * PG);
	ck_assert_uint_eq(in->proc[i].share, 0);
	ck_assert_int_eq(in->proc[i].clamped, 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 8 * PG), 0);
	ck_assert_uint_eq(kv_alloc_asked(a), 0);
	ck_assert_int_eq(kt_member_leave(&m), 0);
	ck_assert_int_eq(kv_alloc_map(a, s + 8 * PG, 8 * PG), 0);
	kt_seg_unmap(sh);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/*
 * Mapped above held, in a live member's slot (the moment after budget was
 * given back in version 1) and in a dead one's: never a reason to refuse
 * the segment; new processes join and map.
 */
START_TEST(test_share_mapped_over_held)
{
	struct join j = { 0600, 4, 0 };
	struct kt_member m;
	struct kv_share *sh;
	kv_alloc_t *a;
	int i;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	kt_member_start(&m, 16 * PG, 0, 2);
	sh = kt_seg_map();
	i = kt_slot_of(sh, m.pid);
	ck_assert_int_ge(i, 0);
	__atomic_store_n(&sh->slot[i].mapped, 6 * PG, __ATOMIC_SEQ_CST);
	__atomic_store_n(&sh->slot[i].cached, 6 * PG, __ATOMIC_SEQ_CST);
	sh->slot[40].pid = 999999;
	sh->slot[40].held = 2 * PG;
	sh->slot[40].mapped = 10 * PG;
	__atomic_store_n(&sh->slot[40].state, KV_SLOT_USED, __ATOMIC_SEQ_CST);
	assert_joins(&j);
	assert_joins(&j);
	kt_member_kill(&m);     /* dead with mapped > held in its slot */
	assert_joins(&j);
	kt_seg_unmap(sh);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* ---- a dead process's budget always comes back ----------------------------- */

/* The admission check (kv_alloc_headroom, under kvshim_group_can_back)
 * reclaims a dead holder's slot itself: no map needed first. */
START_TEST(test_share_headroom_reaps)
{
	struct kt_member m;
	size_t room = 0;
	kv_alloc_t *a;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	kt_member_start(&m, 16 * PG, 0, 14);
	ck_assert_int_eq(kv_alloc_headroom(a, &room), 0);
	ck_assert_uint_eq(room, 2 * PG);
	kt_member_kill(&m);
	ck_assert_int_eq(kv_alloc_headroom(a, &room), 0);
	ck_assert_uint_eq(room, 16 * PG);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* a's headroom once it reaches want, or the last seen after secs seconds.
 * The kernel drops the locks of a file closed at exec a moment after the
 * exec: "comes back" is within a bound, not at an instant. */
static size_t room_within(kv_alloc_t *a, size_t want, int secs)
{
	struct timespec t0;
	size_t room = 0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		ck_assert_int_eq(kv_alloc_headroom(a, &room), 0);
		if (room >= want)
			break;
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	} while (kt_ms_since(&t0) < secs * 1000.0);
	printf("share: headroom back to %zu pages after %.1f ms\n", room / PG, kt_ms_since(&t0));
	return room;
}

/* Whether this process can make a child in a pid namespace of its own.
 * Returns 1 or 0. */
static int can_unshare_pid(void)
{
	pid_t pid;
	int st;

	fflush(stdout);
	pid = fork();
	if (pid == 0)
		_exit(unshare(CLONE_NEWPID) == 0 ? 0 : 1);
	return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) &&
	       WEXITSTATUS(st) == 0;
}

/* A member that is pid 1 of its own pid namespace maps most of the budget
 * and is killed: its budget comes back (liveness is its slot's lock, not
 * a pid). Skipped where pid namespaces cannot be made. */
START_TEST(test_share_pidns)
{
	int ready[2], st;
	size_t room = 0;
	kv_alloc_t *a;
	pid_t mid, inner = 0;

	if (!can_unshare_pid()) {
		printf("share: no pid namespace can be made here (needs root): skipped\n");
		return;
	}
	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	ck_assert_int_eq(pipe(ready), 0);
	fflush(stdout);
	mid = fork();
	if (mid == 0) {
		KT_CHILD_CHECK(unshare(CLONE_NEWPID) == 0);
		inner = fork();
		if (inner == 0) {
			kv_alloc_t *b;
			CUdeviceptr d;

			KT_CHILD_CHECK(getpid() == 1);
			KT_CHILD_CHECK(kt_mk(16 * PG, 0, 0, 0, 0, &b) == 0);
			KT_CHILD_CHECK(kv_alloc_reserve(b, 16 * PG, &d) == 0);
			KT_CHILD_CHECK(kv_alloc_map(b, d, 14 * PG) == 0);
			KT_CHILD_CHECK(write(ready[1], "r", 1) == 1);
			for (;;)
				pause();
		}
		KT_CHILD_CHECK(write(ready[1], &inner, sizeof(inner)) == sizeof(inner));
		waitpid(inner, &st, 0);
		_exit(0);
	}
	ck_assert_int_eq(read(ready[0], &inner, sizeof(inner)), sizeof(inner));
	ck_assert_int_eq(read(ready[0], &st, 1), 1);
	ck_assert_int_eq(kv_alloc_headroom(a, &room), 0);
	ck_assert_uint_eq(room, 2 * PG);
	ck_assert(kt_seg_read(0)->proc[1].other_pidns || kt_seg_read(0)->proc[0].other_pidns);
	kill(inner, SIGKILL);
	ck_assert_int_eq(waitpid(mid, &st, 0), mid);
	ck_assert_int_eq(kv_alloc_headroom(a, &room), 0);
	ck_assert_uint_eq(room, 16 * PG);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* A member maps most of the budget, then execs another program: the new
 * program holds no kvshim pages, and the budget comes back. */
START_TEST(test_share_exec)
{
	int ready[2], st;
	kv_alloc_t *a;
	pid_t pid;
	char c;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		kv_alloc_t *b;
		CUdeviceptr d;

		KT_CHILD_CHECK(kt_mk(16 * PG, 0, 0, 0, 0, &b) == 0);
		KT_CHILD_CHECK(kv_alloc_reserve(b, 16 * PG, &d) == 0);
		KT_CHILD_CHECK(kv_alloc_map(b, d, 14 * PG) == 0);
		KT_CHILD_CHECK(write(ready[1], "r", 1) == 1);
		execl("/bin/sleep", "sleep", "60", (char *)NULL);
		_exit(1);
	}
	close(ready[1]);
	ck_assert_int_eq(read(ready[0], &c, 1), 1);
	ck_assert_int_eq(read(ready[0], &c, 1), 0);     /* EOF: it exec'd */
	ck_assert_uint_eq(room_within(a, 16 * PG, 10), 16 * PG);
	ck_assert_int_eq(waitpid(pid, &st, WNOHANG), 0);  /* sleep runs */
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* A member forks a child that lives on (no exec) and is killed: the child
 * keeps nothing of its parent's slot, the budget comes back. */
START_TEST(test_share_forked_child)
{
	int ready[2], st;
	size_t room = 0;
	kv_alloc_t *a;
	pid_t pid, kid = 0;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	ck_assert_int_eq(pipe(ready), 0);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		kv_alloc_t *b;
		CUdeviceptr d;

		KT_CHILD_CHECK(kt_mk(16 * PG, 0, 0, 0, 0, &b) == 0);
		KT_CHILD_CHECK(kv_alloc_reserve(b, 16 * PG, &d) == 0);
		KT_CHILD_CHECK(kv_alloc_map(b, d, 14 * PG) == 0);
		kid = fork();
		if (kid == 0) {
			for (;;)
				pause();
		}
		KT_CHILD_CHECK(write(ready[1], &kid, sizeof(kid)) == sizeof(kid));
		for (;;)
			pause();
	}
	ck_assert_int_eq(read(ready[0], &kid, sizeof(kid)), sizeof(kid));
	ck_assert_int_eq(kv_alloc_headroom(a, &room), 0);
	ck_assert_uint_eq(room, 2 * PG);
	kill(pid, SIGKILL);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_int_eq(kill(kid, 0), 0);              /* the child lives */
	room = room_within(a, 16 * PG, 10);
	ck_assert_int_eq(kill(kid, 0), 0);
	kill(kid, SIGKILL);
	ck_assert_uint_eq(room, 16 * PG);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* ---- crashes while setting up, and a stopped lock holder ------------------- */

/* Segments a creator killed before its header was written: empty, short
 * and all zero, full size and all zero. The next process sets it up. */
START_TEST(test_share_half_made)
{
	static const size_t sizes[] = { sizeof(struct kv_share), 0, 100 };
	struct join j = { 0600, 4, 0 };
	const struct kv_share_info *in;
	size_t i;
	int fd;

	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		kt_new_pool();
		fd = open(kt_path, O_RDWR | O_CREAT | O_EXCL, 0600);
		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(fchmod(fd, 0600), 0);
		ck_assert_int_eq(ftruncate(fd, (off_t)sizes[i]), 0);
		close(fd);
		assert_joins(&j);
		in = kt_seg_read(0);
		ck_assert_uint_eq(in->major, KV_SHARE_MAJOR);
		ck_assert_uint_eq(in->budget, 16 * PG);
		ck_assert_uint_eq(in->nprocs, 0);
		kt_seg_unlink();
	}
}
END_TEST

/* What a child's system call filter does (filter_child). */
enum filter {
	KILL_AT_LINK,           /* link and linkat kill the process, as SIGKILL */
	NO_TMPFILE,             /* an open with O_TMPFILE fails: EOPNOTSUPP */
	NO_LINKAT,              /* linkat with flags fails: ENOENT (no /proc, an
				 * older kernel); link() passes none */
};

/* The low word of a system call's argument n (the flags here). */
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define ARG_LOW(n) (offsetof(struct seccomp_data, args[n]) + 4)
#else
#define ARG_LOW(n) offsetof(struct seccomp_data, args[n])
#endif

/* Install the filter f in this (child) process. */
static void filter_child(enum filter f)
{
	/* O_TMPFILE's own bit (O_TMPFILE also holds O_DIRECTORY's) */
	const uint32_t tmpfile = O_TMPFILE & ~O_DIRECTORY;
	struct sock_filter kill_at_link[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#ifdef __NR_link
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_link, 2, 0),
#else
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_linkat, 2, 0),
#endif
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_linkat, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
	};
	/* the flags: open's second argument, openat's third */
	struct sock_filter no_tmpfile[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 2, 0),
#ifdef __NR_open
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_open, 3, 0),
#else
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 3, 0),
#endif
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(2)),
		BPF_JUMP(BPF_JMP | BPF_JA, 1, 0, 0),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(1)),
		BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, tmpfile, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EOPNOTSUPP),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	/* linkat's fifth argument: AT_SYMLINK_FOLLOW or AT_EMPTY_PATH from
	 * kvshim's link of an unnamed file, 0 from link() where it is linkat */
	struct sock_filter no_linkat[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_linkat, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(4)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOENT),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog;

	if (f == KILL_AT_LINK)
		prog = (struct sock_fprog){ sizeof(kill_at_link) / sizeof(kill_at_link[0]),
					    kill_at_link };
	else if (f == NO_TMPFILE)
		prog = (struct sock_fprog){ sizeof(no_tmpfile) / sizeof(no_tmpfile[0]), no_tmpfile };
	else
		prog = (struct sock_fprog){ sizeof(no_linkat) / sizeof(no_linkat[0]), no_linkat };
	KT_CHILD_CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
	KT_CHILD_CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0);
}

/* In a child: make the pool's segment, killed (as by SIGKILL: nothing of
 * its own runs) as it links the segment into place. */
static int create_killed_at_link(void *arg)
{
	kv_alloc_t *b;

	(void)arg;
	fprintf(stderr, "creator %d\n", (int)getpid());
	fflush(stderr);
	setrlimit(RLIMIT_CORE, &(struct rlimit){ 0, 0 });     /* no core file */
	filter_child(KILL_AT_LINK);
	kt_mk(16 * PG, 0, 0, 0, 0, &b);
	return 1;               /* never here: killed at the link */
}

/* In a child: join (try_join) under the filter *arg. */
static int join_filtered(void *arg)
{
	fprintf(stderr, "creator %d\n", (int)getpid());
	fflush(stderr);
	filter_child(*(const enum filter *)arg);
	return try_join(NULL);
}

/* The temporary names the child whose output is err made (its pid in
 * them), unlinked here. Returns how many. */
static size_t temp_names_of(const char *err)
{
	const char *p = strstr(err, "creator ");
	char pattern[128];
	glob_t g;
	size_t i, n;

	ck_assert_ptr_nonnull(p);
	snprintf(pattern, sizeof(pattern), "%s/.kvshim-new-%d-*", KV_SHARE_DIR,
		 atoi(p + strlen("creator ")));
	if (glob(pattern, 0, NULL, &g) != 0)
		return 0;
	n = g.gl_pathc;
	for (i = 0; i < n; i++)
		unlink(g.gl_pathv[i]);
	globfree(&g);
	return n;
}

/* Whether the directory takes files with no name (O_TMPFILE). */
static int has_tmpfile(void)
{
	int fd = open(KV_SHARE_DIR, O_RDWR | O_TMPFILE | O_CLOEXEC, 0600);

	if (fd < 0)
		return 0;
	close(fd);
	return 1;
}

/* A creator killed as it links its new segment into place leaves nothing
 * in the directory: no segment (the next process makes it) and no file
 * under another name (before, its temporary file stayed, and nothing ever
 * removed it). Where the directory has no O_TMPFILE, such a kill leaves
 * the temporary name (README), and there is nothing to check. */
START_TEST(test_share_creator_killed)
{
	struct join j = { 0600, 4, 0 };
	char err[4096];
	size_t left;
	int rc;

	if (!has_tmpfile()) {
		printf("share: %s takes no O_TMPFILE: a killed creator's file not checked\n",
		       KV_SHARE_DIR);
		return;
	}
	kt_new_pool();
	rc = kt_in_child(create_killed_at_link, NULL, 30, err, sizeof(err));
	left = temp_names_of(err);
	ck_assert_msg(rc == 128 + SIGSYS, "the creator was not killed at its link (status %d): %s",
		      rc, err);
	ck_assert_msg(access(kt_path, F_OK) != 0, "%s was made", kt_path);
	ck_assert_msg(left == 0, "the killed creator left %zu temporary files in %s", left,
		      KV_SHARE_DIR);
	assert_joins(&j);
	kt_seg_unlink();
}
END_TEST

/* Where the unnamed file cannot be made (a file system without O_TMPFILE)
 * or cannot be linked into place (no /proc and an older kernel), the
 * segment is made under a temporary name, and the name is gone after. */
START_TEST(test_share_made_under_a_name)
{
	enum filter fs[] = { NO_TMPFILE, NO_LINKAT };
	char err[4096];
	size_t i, left;
	int rc;

	for (i = 0; i < sizeof(fs) / sizeof(fs[0]); i++) {
		kt_new_pool();
		rc = kt_in_child(join_filtered, &fs[i], 30, err, sizeof(err));
		left = temp_names_of(err);
		ck_assert_msg(rc == 0, "filter %zu: the segment was not made (status %d): %s", i,
			      rc, err);
		ck_assert_uint_eq(kt_seg_read(0)->budget, 16 * PG);
		ck_assert_msg(left == 0, "filter %zu: %zu temporary files left in %s", i, left,
			      KV_SHARE_DIR);
		kt_seg_unlink();
	}
}
END_TEST

/* A process holding the set-up lock of a half-made segment, stopped:
 * openers wait a bounded time, then refuse with a message (a segment nobody
 * can set up is never joined half made). */
START_TEST(test_share_stuck_creator)
{
	struct join j = { 0600, 0, 0 };
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
			    .l_start = KV_SHARE_LOCK_INIT, .l_len = 1 };
	int fd, st;
	pid_t pid;

	kt_new_pool();
	fd = open(kt_path, O_RDWR | O_CREAT | O_EXCL, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fchmod(fd, 0600), 0);
	pid = hold_stopped(fd, &fl);
	assert_refused(&j, "setting it up", NULL);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	assert_joins(&j);       /* its lock went with it */
	kt_seg_unlink();
}
END_TEST

struct timed_join {
	double ms;
};

static int join_and_map_timed(void *arg)
{
	struct timespec t0;
	kv_alloc_t *b;
	CUdeviceptr d;
	int rc;

	(void)arg;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	KT_CHILD_CHECK(kt_mk(16 * PG, 0, 0, 0, 0, &b) == 0);
	KT_CHILD_CHECK(kv_alloc_reserve(b, 16 * PG, &d) == 0);
	rc = kv_alloc_map(b, d, 4 * PG);
	KT_CHILD_CHECK(rc == 0);
	KT_CHILD_CHECK(kv_alloc_map(b, d + 4 * PG, 4 * PG) == 0);
	fprintf(stderr, "joined and mapped twice in %.1f ms\n", kt_ms_since(&t0));
	KT_CHILD_CHECK(kv_alloc_check(b) == 0);
	kv_alloc_destroy(b);
	return 0;
}

/*
 * A process stopped (SIGSTOP) while it holds the update lock: another
 * process joins and maps after a bounded wait, logging that it goes on
 * without the lock; the stopped one's held budget still counts.
 */
START_TEST(test_share_stopped_holder)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
			    .l_start = KV_SHARE_LOCK_UPDATE, .l_len = 1 };
	struct kt_member m;
	char err[4096];
	kv_alloc_t *a;
	int st, rc;
	pid_t pid;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	kt_member_start(&m, 16 * PG, 0, 6);
	pid = hold_stopped(open(kt_path, O_RDWR | O_CLOEXEC), &fl);
	rc = kt_in_child(join_and_map_timed, NULL, 30, err, sizeof(err));
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	printf("share: beside a stopped lock holder: %s", strstr(err, "joined") ? strstr(err, "joined") : "\n");
	ck_assert_msg(rc == 0, "a process waited on a stopped lock holder (status %d): %s", rc, err);
	ck_assert_msg(strstr(err, "going on without it"), "no message said why: %s", err);
	/* the member's 6 pages still counted: 8 + 6 + 2 = 16 */
	ck_assert_int_eq(kt_member_leave(&m), 0);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* ---- versions ------------------------------------------------------------------- */

/* A newer minor, with its spare fields used, is joined, and an older one;
 * another major is refused with both versions named. */
START_TEST(test_share_versions)
{
	struct join j = { 0600, 4, 0 };
	char newer[32], mine[32];
	struct kv_share *sh;
	kv_alloc_t *a;
	unsigned i;

	snprintf(newer, sizeof(newer), "version %d.%d", KV_SHARE_MAJOR + 1, KV_SHARE_MINOR + 7);
	snprintf(mine, sizeof(mine), "version %d.%d", KV_SHARE_MAJOR, KV_SHARE_MINOR);
	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	sh = kt_seg_map();
	sh->minor = KV_SHARE_MINOR + 7;
	sh->flags = 0xffffffffu;
	for (i = 0; i < sizeof(sh->spare) / sizeof(sh->spare[0]); i++)
		sh->spare[i] = 0x5a5a5a5a5a5a5a5aull;
	/* (a slot has no spare field left since minor 4: its last is the
	 * limit, which a member's junk cannot pass the budget with) */
	for (i = 0; i < KV_SHARE_SLOTS; i++)
		sh->slot[i].limit = 0x5a5a5a5a5a5a5a5aull;
	assert_joins(&j);
	ck_assert_uint_eq(kt_seg_read(0)->minor, KV_SHARE_MINOR + 7);
	ck_assert_uint_eq(kt_seg_read(0)->nprocs, 1);
	ck_assert_uint_eq(kt_seg_read(0)->proc[0].limit, 16 * PG);
	ck_assert_uint_eq(kt_seg_read(0)->proc[0].entitled, 16 * PG);
	/* an older minor's (its slots' limits zero: none) is joined too */
	sh->minor = KV_SHARE_MINOR - 1;
	for (i = 0; i < KV_SHARE_SLOTS; i++)
		sh->slot[i].limit = 0;
	assert_joins(&j);
	ck_assert_uint_eq(kt_seg_read(0)->minor, KV_SHARE_MINOR - 1);
	ck_assert_uint_eq(kt_seg_read(0)->proc[0].limit, 0);
	ck_assert_uint_eq(kt_seg_read(0)->proc[0].entitled, 16 * PG);
	sh->minor = KV_SHARE_MINOR + 7;
	sh->major = KV_SHARE_MAJOR + 1;
	assert_refused(&j, newer, mine, NULL);
	sh->major = 1;
	sh->minor = 0;
	assert_refused(&j, "version 1.0", mine, NULL);
	sh->major = KV_SHARE_MAJOR;
	sh->magic ^= 1;
	assert_refused(&j, "not a kvshim segment", NULL);
	sh->magic ^= 1;
	kt_seg_unmap(sh);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

static int create_bad_pool(void *arg)
{
	struct kv_alloc_opts o;
	kv_alloc_t *a = NULL;

	(void)arg;
	kt_opts(&o);
	o.share = 1;
	o.pool_name = "x\x1b[2Jy";
	return kv_alloc_create(&o, &a) == KVSHIM_EINVAL ? 0 : 1;
}

/* Damage refused by what it is: a segment of the wrong size whose magic
 * is there, and pool names that are not names. */
START_TEST(test_share_bad_segment)
{
	struct join j = { 0600, 0, 0 };
	struct kv_alloc_opts o;
	kv_alloc_t *a = NULL;
	int fd;

	kt_new_pool();
	assert_joins(&j);
	fd = open(kt_path, O_RDWR);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 100), 0);
	close(fd);
	assert_refused(&j, "its size (100 bytes)", NULL);
	kt_seg_unlink();
	kt_opts(&o);
	o.share = 1;
	o.pool_name = "a/b";
	ck_assert_int_eq(kv_alloc_create(&o, &a), KVSHIM_EINVAL);
	o.pool_name = "..";
	ck_assert_int_eq(kv_alloc_create(&o, &a), KVSHIM_EINVAL);
	ck_assert_ptr_null(a);
	{
		char err[1024];

		ck_assert_int_eq(kt_in_child(create_bad_pool, NULL, 30, err, sizeof(err)), 0);
		ck_assert_msg(strstr(err, "pool \"x\\x1b[2Jy\"") && strstr(err, "letters, digits"),
			      "no message naming the bad pool name: %s", err);
	}
}
END_TEST

/* In a child: an allocator with KVSHIM_SHARE=auto in the current pool (a
 * budget of 16 pages), which maps 4 pages. Returns 0 when it did, under the
 * budget when *arg is set and alone (no budget) when not. */
static int try_auto(void *arg)
{
	const int *joined = arg;
	struct kv_alloc_opts o;
	struct kvshim_stats st;
	kv_alloc_t *b = NULL;
	CUdeviceptr d;

	kt_opts(&o);
	o.share = KV_ALLOC_SHARE_AUTO;
	o.pool_name = kt_pool;
	o.budget = 16 * PG;
	KT_CHILD_CHECK(kv_alloc_create(&o, &b) == 0);
	KT_CHILD_CHECK(kv_alloc_reserve(b, 8 * PG, &d) == 0);
	KT_CHILD_CHECK(kv_alloc_map(b, d, 4 * PG) == 0);
	KT_CHILD_CHECK(kv_alloc_stats(b, &st) == 0);
	KT_CHILD_CHECK(st.share_budget_bytes == (*joined ? 16 * PG : 0));
	KT_CHILD_CHECK(st.physical_bytes == 4 * PG);
	KT_CHILD_CHECK(kv_alloc_release(b, d) == 0);
	kv_alloc_destroy(b);
	return 0;
}

/* KVSHIM_SHARE=auto, the default: a segment the process may
 * not join (here one of another mode) is said, by path and why, and the
 * process runs alone, maps and all, leaving the file as it was; on, the
 * same segment refuses the process. Once the file is one it may join,
 * auto joins, under the budget. */
START_TEST(test_share_auto_alone)
{
	struct join j = { 0600, 2, 0 };
	int joined = 0, fd;
	struct stat st;
	char err[4096];

	kt_new_pool();
	fd = open(kt_path, O_RDWR | O_CREAT | O_EXCL, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fchmod(fd, 0644), 0);
	close(fd);
	ck_assert_int_eq(kt_in_child(try_auto, &joined, 30, err, sizeof(err)), 0);
	ck_assert_msg(strstr(err, kt_path) && strstr(err, "mode 0644") &&
		      strstr(err, "runs alone"),
		      "auto did not say why it runs alone: %s", err);
	ck_assert_int_eq(stat(kt_path, &st), 0);
	ck_assert_int_eq(st.st_size, 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0644);
	assert_refused(&j, "mode 0644", NULL);

	ck_assert_int_eq(chmod(kt_path, 0600), 0);
	joined = 1;
	ck_assert_int_eq(kt_in_child(try_auto, &joined, 30, err, sizeof(err)), 0);
	ck_assert_msg(!strstr(err, "runs alone"), "auto ran alone with a segment it may join: %s",
		      err);
	kt_seg_unlink();
}
END_TEST

/* ---- faults: a waiter's death, forks while opening, links, a full /dev/shm ---- */

/*
 * A process killed while it waits (its demand published) leaves no one
 * asked for it: within a few ticks the live process above its share is
 * asked for nothing and may grow again (the plan that asks reaps the slots
 * of the dead, and a refused map reads the rule again, reaping too).
 */
START_TEST(test_share_dead_waiter_reaped)
{
	struct kt_member m;
	kv_alloc_t *a;
	CUdeviceptr s;
	size_t asked;
	int i;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 12 * PG), 0);
	kt_member_waiting(&m, 16 * PG, 4, 8 * PG);
	(void)kv_alloc_tick(a);
	ck_assert_uint_gt(kv_alloc_asked(a), 0);        /* a live waiter: fair */
	kt_member_kill(&m);
	for (i = 0; i < 100; i++) {     /* 0.5 s of worker ticks */
		(void)kv_alloc_tick(a);
		nanosleep(&(struct timespec){ 0, 5 * 1000 * 1000 }, NULL);
	}
	asked = kv_alloc_asked(a);
	ck_assert_msg(asked == 0, "still asked %zu bytes for a dead process", asked);
	ck_assert_int_eq(kv_alloc_map(a, s + 12 * PG, PG), 0);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/*
 * A fork (without exec) by another thread while kv_share_open runs, once
 * the segment's descriptor is open, leaves the child no part of it (the
 * handle is registered before the descriptor opens): the parent's death
 * frees its slot while the child lives. The window here is join_figures'
 * wait for the set-up lock (up to 1 s), held by the test.
 */
struct opener {
	kv_alloc_t *b;
	int rc;
};

static void *open_in_thread(void *arg)
{
	struct opener *o = arg;

	o->rc = kt_mk(16 * PG, 0, 0, 0, 0, &o->b);
	return NULL;
}

START_TEST(test_share_fork_while_opening)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = KV_SHARE_LOCK_INIT,
			    .l_len = 1 };
	int c2p[2], p2c[2], kidp[2], fd, st;
	const struct kv_share_info *in;
	pid_t pid, kid = 0;
	kv_alloc_t *a;
	char c;

	kt_new_pool_pipes(p2c, c2p);
	ck_assert_int_eq(pipe(kidp), 0);
	a = kt_make(16 * PG, 0, 0, 0);          /* the segment exists, sound */
	fd = open(kt_path, O_RDWR | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fcntl(fd, F_OFD_SETLK, &fl), 0);      /* set-up lock */
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		struct opener o = { 0 };
		pthread_t th;
		CUdeviceptr d;

		KT_CHILD_CHECK(pthread_create(&th, NULL, open_in_thread, &o) == 0);
		nanosleep(&(struct timespec){ 0, 200 * 1000 * 1000 }, NULL);
		kid = fork();           /* e.g. a DataLoader worker */
		if (kid == 0) {
			for (;;)
				pause();
		}
		KT_CHILD_CHECK(write(kidp[1], &kid, sizeof(kid)) == sizeof(kid));
		KT_CHILD_CHECK(pthread_join(th, NULL) == 0 && o.rc == 0);
		KT_CHILD_CHECK(kv_alloc_reserve(o.b, 16 * PG, &d) == 0);
		KT_CHILD_CHECK(kv_alloc_map(o.b, d, 4 * PG) == 0);
		KT_CHILD_CHECK(write(c2p[1], "r", 1) == 1);
		for (;;)
			pause();
	}
	ck_assert_int_eq(read(kidp[0], &kid, sizeof(kid)), sizeof(kid));
	fl.l_type = F_UNLCK;
	ck_assert_int_eq(fcntl(fd, F_OFD_SETLK, &fl), 0);
	close(fd);
	ck_assert_int_eq(read(c2p[0], &c, 1), 1);
	ck_assert_uint_eq(kt_seg_read(0)->held, 4 * PG);
	kill(pid, SIGKILL);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_int_eq(kill(kid, 0), 0);             /* the child lives */
	in = kt_seg_read(1);
	kill(kid, SIGKILL);
	waitpid(kid, &st, 0);
	ck_assert_msg(in->held == 0, "the dead opener's %llu bytes are kept by its child",
		      (unsigned long long)in->held);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/*
 * A file of this user's with the segment's mode and a zero header, but
 * another name too (a hard link, which another user may plant where
 * fs.protected_hardlinks is 0), is not a segment left half made: it is
 * refused by name, never truncated and rewritten.
 */
START_TEST(test_share_half_made_hard_link)
{
	char other[300], buf[64];
	struct stat st;
	struct join j = { 0600, 0, 0 };
	int fd;

	kt_new_pool();
	snprintf(other, sizeof(other), "%s/kvshim-test-data-%d", KV_SHARE_DIR, (int)getpid());
	fd = open(other, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fchmod(fd, 0600), 0);
	memset(buf, 0, 16);
	memcpy(buf + 16, "precious user data, header zero", 32);
	ck_assert_int_eq(write(fd, buf, 48), 48);
	close(fd);
	ck_assert_int_eq(link(other, kt_path), 0);
	assert_refused(&j, "2 names", NULL);
	ck_assert_int_eq(stat(other, &st), 0);
	fd = open(other, O_RDONLY);
	ck_assert_int_eq(pread(fd, buf, 48, 0), 48);
	close(fd);
	unlink(other);
	kt_seg_unlink();
	ck_assert_msg(st.st_size == 48 && memcmp(buf + 16, "precious user data", 18) == 0,
		      "the file with two names was rewritten as a segment");
}
END_TEST

/*
 * /dev/shm full (a container's 64 MiB filled by a data loader): tmpfs
 * allocates nothing for ftruncate, and a first write through the mapping
 * would raise SIGBUS; the file is given its memory first, so the process
 * gets KVSHIM_ENOMEM and a line saying so, and lives. In a mount namespace
 * of its own, over a full tmpfs (root only; skipped elsewhere).
 */
static int join_on_full_shm(void *arg)
{
	char fill[64];
	kv_alloc_t *b;
	int fd, rc;

	(void)arg;
	if (unshare(CLONE_NEWNS) || mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) ||
	    mount("none", KV_SHARE_DIR, "tmpfs", 0, "size=64k"))
		return 2;
	snprintf(fill, sizeof(fill), "%s/fill", KV_SHARE_DIR);
	fd = open(fill, O_RDWR | O_CREAT, 0600);
	if (fd < 0)
		return 3;
	{
		char z[4096] = { 1 };

		while (write(fd, z, sizeof(z)) == (ssize_t)sizeof(z))
			;
	}
	close(fd);
	rc = kt_mk(16 * PG, 0, 0, 0, 0, &b);
	if (rc != KVSHIM_ENOMEM)
		fprintf(stderr, "kv_alloc_create: %d\n", rc);
	return rc == KVSHIM_ENOMEM ? 0 : 1;
}

START_TEST(test_share_shm_full)
{
	char err[4096];
	int rc;

	if (geteuid() != 0) {
		printf("share_trust: not root: a full /dev/shm not tried\n");
		return;
	}
	kt_new_pool();
	rc = kt_in_child(join_on_full_shm, NULL, 30, err, sizeof(err));
	if (rc == 2) {
		printf("share_trust: no mount namespace here: a full /dev/shm not tried\n");
		return;
	}
	ck_assert_msg(rc == 0, "on a full /dev/shm: status %d (%s): %s", rc,
		      rc > 128 ? strsignal(rc - 128) : "not KVSHIM_ENOMEM", err);
	ck_assert_msg(strstr(err, "no room for"), "no line naming the full /dev/shm: %s", err);
}
END_TEST

Suite *share_trust_suite(void)
{
	Suite *s = suite_create("share_trust");
	TCase *tc = tcase_create("trust");

	tcase_set_timeout(tc, 60);
	kt_share_fixture(tc);
	kt_add_emu(tc, test_share_trust_own);
	kt_add_emu(tc, test_share_limits_refused);
	kt_add_emu(tc, test_share_mode_config);
	kt_add_emu(tc, test_share_mode_message);
	kt_add_emu(tc, test_share_other_user);
	kt_add_emu(tc, test_share_hostile_bytes);
	kt_add_emu(tc, test_share_lying_slots);
	kt_add_emu(tc, test_share_no_wrap);
	kt_add_emu(tc, test_share_unused_bounded);
	kt_add_emu(tc, test_share_mapped_over_held);
	kt_add_emu(tc, test_share_headroom_reaps);
	kt_add_emu(tc, test_share_pidns);
	kt_add_emu(tc, test_share_exec);
	kt_add_emu(tc, test_share_forked_child);
	kt_add_emu(tc, test_share_half_made);
	kt_add_emu(tc, test_share_creator_killed);
	kt_add_emu(tc, test_share_made_under_a_name);
	kt_add_emu(tc, test_share_stuck_creator);
	kt_add_emu(tc, test_share_stopped_holder);
	kt_add_emu(tc, test_share_versions);
	kt_add_emu(tc, test_share_bad_segment);
	kt_add_emu(tc, test_share_auto_alone);
	kt_add_emu(tc, test_share_dead_waiter_reaped);
	kt_add_emu(tc, test_share_fork_while_opening);
	kt_add_emu(tc, test_share_half_made_hard_link);
	kt_add_emu(tc, test_share_shm_full);
	suite_add_tcase(s, tc);
	return s;
}
