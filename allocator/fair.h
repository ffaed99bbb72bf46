/*
 * fair.h - the rule by which the shared budget moves between processes
 * (README.md, "Sharing one GPU"), private to allocator/. One pure function
 * of the figures the processes publish, computed alike by every member (to
 * decide what it may take and what it must give back) and by the reader
 * (kvshim-top), so that what an operator reads is what the members do.
 *
 * The rule, for a budget B and the live processes i, each with a weight
 * w_i, a floor m_i, a ceiling M_i (the smaller of its KVSHIM_MAX and its
 * KVSHIM_LIMIT, the most it can hold; none: 0), what it holds h_i, of which
 * idle_i (cached or pooled) and unused_i (mapped, but claimed only by
 * blocks no request uses: an engine's prefix cache, as its adapter states
 * it), and its demand d_i (bytes it waits for now):
 *   - it uses u_i = h_i - idle_i - unused_i and wants u_i + d_i, at most
 *     M_i; a process that waits (d_i > 0) counts its unused pages as use,
 *     all of them: its engine takes them first for what it waits for (the
 *     transformers adapter states its demand beyond them);
 *   - its share is L * w_i, but at least its floor and at most what it
 *     wants, with L the highest level at which the shares fit in B: what
 *     one process does not want goes to the others by weight (weighted
 *     max-min fairness, "water-filling"), and a floor is the least share;
 *   - a process below its share that waits has a claim: its gap, what it
 *     waits for up to its share; it is kept for it as a floor is, from
 *     anyone who would grow past its own share;
 *   - a process that waits keeps its idle pages for what it waits for, as
 *     far as its share goes: its own maps take them (its pooled pages
 *     first, its cached ones when the budget refuses it), and they are in
 *     what it holds, so its gap is already less by them; only the rest may
 *     be asked for, and cover others' gaps (what it waits for counts its
 *     own pages: an engine's stated demand does, and so does a map's
 *     whole need, kv_share_take's);
 *   - when the free budget and the idle pages that may be asked for cannot
 *     cover the gaps, the processes' unused pages are asked for, in proportion to
 *     them, whatever their shares, but never below their floors (their
 *     engines drop those blocks, which no request waits on, and the pages
 *     go back idle); and when those cannot either, processes that
 *     use more than their share are asked to give back the rest, in
 *     proportion to what they use above their share, never more than
 *     that. A process at or below its share is never asked to give back
 *     what it uses; its unused pages, and its idle pages beyond what it
 *     waits for, may always be asked for, above its floor;
 *   - while two processes or more share the budget, a reserve R of it
 *     is kept free ahead of demand, so that the next process to grow maps
 *     without waiting: while the free budget is under R, the idle pages
 *     that may be asked for are given back by their holders (each asked
 *     its trim, in proportion to them) until it is not; and when the free
 *     budget and those idle pages fall short of the gaps and R together,
 *     unused pages are asked for that too (after the gaps; of the largest
 *     holders first, since an engine gives back whole page indices), to
 *     become idle pages and then free budget. R is never asked of pages
 *     in use: a reserve preempts no request; nor of what the floors keep
 *     (R is at most the budget less the floors). (A reserve that counted
 *     idle pages as kept free, without giving them back, made engines
 *     drop their prefix caches into idle pages that the next map still
 *     waited for: on an H200 at 4 GiB, maps waited 42 times against 26
 *     without it.)
 */
#ifndef KV_FAIR_H
#define KV_FAIR_H

#include <stdint.h>

/* The most KVSHIM_WEIGHT may be; a slot's weight beyond it counts as it. */
#define KV_FAIR_WEIGHT_MAX 1000

/* One process's figures, each already bounded by the budget. */
struct kv_fair_in {
	uint64_t weight;         /* 1..KV_FAIR_WEIGHT_MAX */
	uint64_t held, pending;
	uint64_t idle;           /* at most held */
	uint64_t demand;
	uint64_t unused;         /* at most held less idle */
	uint64_t min, max;       /* max 0: none; min at most max and limit */
	uint64_t limit;          /* its KVSHIM_LIMIT, the most it can hold;
				  * 0: none. Its ceiling is the smaller of
				  * max and limit, in every figure below
				  * (fair.c, ceiling_of, says why) */
	uint64_t order;          /* its slot: breaks ties alike in every
				  * member's plan */
};

struct kv_fair_out {
	uint64_t share;
	uint64_t gap;            /* what it waits for and may claim */
	uint64_t asked;          /* of what it uses and its unused pages, what
				  * it must give back */
	uint64_t asked_unused;   /* the part of asked that is unused pages */
	uint64_t givable;        /* of its idle pages, those it may be asked
				  * for: above its floor, and not those its
				  * own demand takes within its share */
	uint64_t trim;           /* of those, what it gives back for the
				  * reserve's free budget */
};

/* Totals of a plan, for the process deciding a take. */
struct kv_fair_sums {
	uint64_t gaps;           /* the waiters' claims, summed */
	uint64_t asked;          /* what all are asked to give back, summed */
	uint64_t over;           /* what all use above their shares, summed */
	uint64_t unused;         /* the unused pages that may be asked for,
				  * summed */
	uint64_t givable;        /* the idle pages that may be asked for,
				  * summed */
	uint64_t for_reserve;    /* of asked, what the reserve asks (unused
				  * pages only) */
	uint64_t reserve;        /* the reserve kept: R, at most the budget
				  * less the floors, 0 alone */
};

/*
 * Apply the rule to n processes' figures in[0..n) under budget, keeping
 * reserve bytes (R, at most the budget less the floors; none with fewer
 * than two processes): out[i] gets process i's share, gap, what it is
 * asked to give back and its trim; sums (may be NULL) the totals. Sums
 * saturate; no figure wraps.
 */
void kv_fair_plan(uint64_t budget, uint64_t reserve, const struct kv_fair_in *in,
		  unsigned n, struct kv_fair_out *out, struct kv_fair_sums *sums);

/* The most process i of n (in[0..n)) may use while others wait below
 * their shares, under budget: its share were it to want all it may (up to
 * its ceiling), the others wanting what they do; at least its floor.
 * Returns it (0 for i out of range). */
uint64_t kv_fair_most(uint64_t budget, const struct kv_fair_in *in, unsigned n,
		      unsigned i);

/* What process i of n (in[0..n)) is entitled to under budget: its share
 * were every process to want all it may (up to its ceiling), whatever
 * they use or wait for now: the budget by weight, at least each floor. It
 * moves only as processes come and go (or their weights, floors and
 * ceilings differ), never with their load: the transformers adapter
 * bounds what one batch of its engine reads by it (README.md, "Sharing
 * one GPU"). Returns it (0 for i out of range). */
uint64_t kv_fair_entitled(uint64_t budget, const struct kv_fair_in *in, unsigned n,
			  unsigned i);

/* The most process i of a plan (kv_fair_plan's in, n, out and sums, under
 * budget) may use now: while another process waits below its share (the
 * plan's gaps are more than its own), kv_fair_most's, at least its share
 * (a process below its share may grow to it, one above it may not grow).
 * Returns it, or UINT64_MAX (no bound) while no other process waits, or
 * for i out of range. */
uint64_t kv_fair_bound(uint64_t budget, const struct kv_fair_in *in, unsigned n,
		       unsigned i, const struct kv_fair_out *out,
		       const struct kv_fair_sums *sums);

#endif /* KV_FAIR_H */
