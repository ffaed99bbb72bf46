/*
 * group.h - block groups: KV tensors that share one block geometry (a
 * block b is bytes [b * block_bytes, (b + 1) * block_bytes) of every
 * tensor), mapped and unmapped a list of block ids at a time. This is the
 * signal an engine's block manager gives when it hands blocks out and
 * takes them back.
 */
#ifndef KV_GROUP_H
#define KV_GROUP_H

#include <stddef.h>

struct kvshim_stats;

/* Register a group; *id gets its handle (> 0). Every tensor must lie inside
 * one span. Returns 0, KVSHIM_EINVAL (NULL, zero), KVSHIM_ERANGE (a tensor
 * outside every span), KVSHIM_ENOMEM or the allocator's start-up error. */
int kv_group_create(void *const *bases, size_t ntensors, size_t block_bytes,
		    size_t nblocks, int *id);

/* Forget a group (its blocks keep whatever claims they hold). */
int kv_group_destroy(int id);

/* Back blocks[0..n) in every tensor of the group, in one step: all of them
 * or, on error, none. A block landing on pages already mapped costs no
 * driver call. Returns 0, KVSHIM_EINVAL (unknown group, block id out of
 * range), KVSHIM_ELIMIT, KVSHIM_ENOMEM or KVSHIM_EDRIVER. */
int kv_group_map(int id, const long long *blocks, size_t n);

/* Drop the blocks' claims, in one step; KVSHIM_ENOTCLAIMED changes
 * nothing. */
int kv_group_unmap(int id, const long long *blocks, size_t n);

/* How many more blocks the group could back now, if they are handed out
 * densely (an engine's lowest-first free list): kvshim's pooled and cached
 * pages and what the limit and the device still allow, shared by the
 * group's tensors, less one page a tensor for blocks straddling pages.
 * Returns 0 with *blocks set, or a negative error. */
int kv_group_headroom(int id, size_t *blocks);

/* 1 when backing blocks[0..n) now would succeed (the new pages they need
 * fit in what kvshim can get), 0 when not, or a negative error; with
 * blocks NULL, the dense estimate for n blocks (kv_group_headroom). */
int kv_group_can_back(int id, const long long *blocks, size_t n);

/* Sharing a budget (kvshim_share_demand, _unused, _asked), for a group:
 * bytes of its blocks over all its tensors. Each device its tensors are on
 * gets its part, by how many of them it holds (rounded up), and a demand
 * not 0 a page more in each of them (what kv_group_headroom needs to admit
 * the blocks stated); the ask is the most any device asks for, over the
 * whole group. Return 0, or KVSHIM_EINVAL (no such group, or bytes NULL). */
int kv_group_share_demand(int id, size_t bytes);
int kv_group_share_unused(int id, size_t bytes);
int kv_group_share_asked(int id, size_t *bytes);

/* What the process is entitled to on the group's devices
 * (kvshim_group_share_entitled): the least over them, each scaled to the
 * whole group; SIZE_MAX where none shares a budget. Returns 0, or
 * KVSHIM_EINVAL (no such group, or bytes NULL). */
int kv_group_share_entitled(int id, size_t *bytes);

/* This process's figures (kvshim_stats) on the GPU of the group's first
 * tensor, whatever the current device. Returns 0, or KVSHIM_EINVAL (no
 * such group, or out NULL). */
int kv_group_stats(int id, struct kvshim_stats *out);

/* For tests: fn(arg) runs with the group table's lock held, as a call
 * that another thread's fork could find in the middle of its work. */
void kv_group_locked(void (*fn)(void *), void *arg);

#endif /* KV_GROUP_H */
