/*
 * segment.h - the shared budget segment's file, for share.c (private to
 * allocator/): kernel-held locks on its byte ranges, slots read with
 * bounds, header checks and the trust rule. Nothing here trusts the
 * segment's bytes: every member can write them.
 */
#ifndef KV_SEGMENT_H
#define KV_SEGMENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "fair.h"
#include "share.h"

/* Figures of one slot, each within bounds (kv_seg_load). */
struct kv_seg_fig {
	uint64_t held, pending, mapped, cached, pooled, reserved;
	uint64_t min, max, last_ns, trim_request, trimmed;
	uint64_t weight, demand, asked;
	uint64_t unused;         /* at most held less idle */
	uint64_t limit;          /* at most cap; 0: none */
	int clamped;
};

static inline uint64_t kv_seg_sat_add(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static inline uint64_t kv_seg_min(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* CLOCK_REALTIME and CLOCK_MONOTONIC in ns. */
uint64_t kv_seg_realtime_ns(void);
uint64_t kv_seg_mono_ns(void);

/* This process's pid namespace (the inode of /proc/self/ns/pid), 0 if
 * unknown. */
uint64_t kv_seg_pidns(void);

/* src (at most len bytes, up to a NUL) as printable ASCII into out (4 *
 * len + 1 bytes), other bytes as \xNN. */
void kv_seg_printable(char *out, const char *src, size_t len);

/* Take (F_RDLCK, F_WRLCK) or drop (F_UNLCK) the open-file-description lock
 * on byte off, without waiting. Returns 0, or -1 with errno (EAGAIN or
 * EACCES: another description holds it). */
int kv_seg_lock(int fd, short type, off_t off);

/* Whether another open file description holds a lock on byte off.
 * Returns 1, 0, or -1 when the kernel cannot say. */
int kv_seg_locked(int fd, off_t off);

/* kv_seg_lock, waiting ms at most (polling). Returns 0, or -1 with errno
 * (EAGAIN: still held elsewhere at the deadline). */
int kv_seg_lock_wait(int fd, short type, off_t off, unsigned ms);

/* Slot sl's figures into f, bounded by cap (the budget). */
void kv_seg_load(const struct kv_share_slot *sl, uint64_t cap, struct kv_seg_fig *f);

/* Header sh's reserve (fair.h) under budget cap: at most half of it,
 * whatever the header says. */
uint64_t kv_seg_reserve(const struct kv_share *sh, uint64_t cap);

/* f, the figures of slot slot, as the rule's input (fair.h; the slot
 * orders ties alike in every member's plan). */
void kv_seg_fair_in(const struct kv_seg_fig *f, unsigned slot, struct kv_fair_in *in);

/* Zero slot sl and free it; the caller holds its lock. */
void kv_seg_clear(struct kv_share_slot *sl);

/* Reclaim every used slot of sh but mine (-1: none) whose lock no process
 * holds, through fd (open for writing). Returns how many. */
unsigned kv_seg_reap_all(int fd, struct kv_share *sh, int mine, const char *path);

/* The segment's first 16 bytes (magic and versions) into h, zero where
 * the file is shorter. */
void kv_seg_read_head(int fd, struct kv_share *h);

/* Checks on those 16 bytes and the file's size len: a header, the magic,
 * this major, this major's size. Returns 0, or KVSHIM_ESTATE with *why. */
int kv_seg_head_check(const struct kv_share *head, size_t len, const char **why);

/* Whether the header's layout fields are this major's. Returns 1 or 0. */
int kv_seg_layout_ok(const struct kv_share *sh);

/* Whether this process, with segment mode mode, joins the file st
 * describes. Returns 1, or 0 with why (len bytes) naming owner and mode. */
int kv_seg_join_rule(const struct stat *st, unsigned mode, char *why, size_t len);

/* Why opening path failed with err, naming what is there, into why. */
void kv_seg_open_failed(const char *path, int err, char *why, size_t len);

#endif /* KV_SEGMENT_H */
