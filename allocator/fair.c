/*
 * fair.c - see fair.h: the shared budget's rule, a pure function.
 */
#include "fair.h"

/* The most processes one plan counts (a segment's slots). */
#define FAIR_MAX 64

static uint64_t add(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t sub(uint64_t a, uint64_t b)
{
	return a > b ? a - b : 0;
}

static uint64_t min64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* a * b / c without overflow (c > 0, the result at most a). */
static uint64_t scale(uint64_t a, uint64_t b, uint64_t c)
{
	return (uint64_t)((unsigned __int128)a * b / c);
}

/* a * b / c rounded up, without overflow (c > 0, the result at most a). */
static uint64_t scale_up(uint64_t a, uint64_t b, uint64_t c)
{
	return (uint64_t)(((unsigned __int128)a * b + c - 1) / c);
}

/* What a process gets at level L (bytes per unit of weight): L times its
 * weight w, but never under its floor nor over what it wants. Returns it. */
static uint64_t at_level(uint64_t L, uint64_t w, uint64_t floor, uint64_t want)
{
	unsigned __int128 x = (unsigned __int128)L * w;

	if (x < floor)
		return floor;
	return x > want ? want : (uint64_t)x;
}

/*
 * The shares: the highest level L at which the processes' portions (see
 * at_level) fit in budget, found by bisection (the sum grows with L).
 * Every process gets at least its floor, even when the floors pass the
 * budget. What rounding leaves (less than a byte per unit of weight) stays
 * unshared. got[0..n) gets the shares.
 */
static void level(uint64_t budget, const uint64_t *w, const uint64_t *floor,
		  const uint64_t *want, uint64_t *got, unsigned n)
{
	uint64_t lo = 0, hi = budget, sum, mid;
	unsigned i;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2 + 1;   /* above lo, at most hi */
		for (i = 0, sum = 0; i < n; i++)
			sum = add(sum, at_level(mid, w[i], floor[i], want[i]));
		if (sum <= budget)
			lo = mid;
		else
			hi = mid - 1;
	}
	for (i = 0; i < n; i++)
		got[i] = at_level(lo, w[i], floor[i], want[i]);
}

/* Process p's weight, 1..KV_FAIR_WEIGHT_MAX. */
static uint64_t weight_of(const struct kv_fair_in *p)
{
	return p->weight < 1 ? 1 : min64(p->weight, KV_FAIR_WEIGHT_MAX);
}

/*
 * Process p's ceiling: the smaller of its KVSHIM_MAX and its KVSHIM_LIMIT
 * (each 0: none). The limit bounds all the rule gives, not only what it is
 * entitled to: a process can never hold more than its limit (its own
 * allocator refuses a page past it before it takes budget), so a share, a
 * claim or an entitlement above it would be budget nobody can use, and a
 * claim above it would have others asked to give back what they use (their
 * engines preempting requests) for pages it will never map. Returns it, 0
 * for none.
 */
static uint64_t ceiling_of(const struct kv_fair_in *p)
{
	if (!p->limit)
		return p->max;
	return p->max ? min64(p->max, p->limit) : p->limit;
}

/* Process p's floor, at most its ceiling. */
static uint64_t floor_of(const struct kv_fair_in *p)
{
	uint64_t c = ceiling_of(p);

	return c ? min64(p->min, c) : p->min;
}

/*
 * What process p uses (*used: held less idle, less its unused pages unless
 * it waits) and its unused pages so counted out (*unused). Returns what it
 * wants: what it uses and waits for, at most its ceiling, at least its
 * floor.
 */
static uint64_t wants(const struct kv_fair_in *p, uint64_t *used, uint64_t *unused)
{
	uint64_t want;

	*used = sub(p->held, p->idle);
	/* a process that waits keeps its unused pages: its engine takes
	 * them first for what it waits for */
	*unused = p->demand ? 0 : min64(p->unused, *used);
	*used -= *unused;
	want = add(*used, p->demand);
	if (ceiling_of(p))
		want = min64(want, ceiling_of(p));
	return want < floor_of(p) ? floor_of(p) : want;
}

/* Process i's share of budget were it to want all it may (up to its
 * ceiling), and the others what they do, or, everyone set, all they may
 * too; at least each floor. */
static uint64_t share_wanting_all(uint64_t budget, const struct kv_fair_in *in, unsigned n,
				  unsigned i, int everyone)
{
	uint64_t want[FAIR_MAX], w[FAIR_MAX], base[FAIR_MAX], got[FAIR_MAX];
	uint64_t used, unused;
	unsigned j;

	if (n > FAIR_MAX)
		n = FAIR_MAX;
	if (i >= n)
		return 0;
	for (j = 0; j < n; j++) {
		if (everyone || j == i)
			want[j] = ceiling_of(&in[j]) ? ceiling_of(&in[j]) : UINT64_MAX;
		else
			want[j] = wants(&in[j], &used, &unused);
		w[j] = weight_of(&in[j]);
		base[j] = floor_of(&in[j]);
	}
	level(budget, w, base, want, got, n);
	return got[i];
}

uint64_t kv_fair_most(uint64_t budget, const struct kv_fair_in *in, unsigned n,
		      unsigned i)
{
	/* the plan's own level will not do: where every process gets what it
	 * wants, nothing bounds the level, and a bound of the level times
	 * the weight rose to the budget (a process above its share that let
	 * its pages go idle could take them back from under a waiter's
	 * claim) */
	return share_wanting_all(budget, in, n, i, 0);
}

uint64_t kv_fair_entitled(uint64_t budget, const struct kv_fair_in *in, unsigned n,
			  unsigned i)
{
	return share_wanting_all(budget, in, n, i, 1);
}

uint64_t kv_fair_bound(uint64_t budget, const struct kv_fair_in *in, unsigned n,
		       unsigned i, const struct kv_fair_out *out,
		       const struct kv_fair_sums *sums)
{
	uint64_t most;

	if (i >= n || i >= FAIR_MAX || sums->gaps <= out[i].gap)
		return UINT64_MAX;
	most = kv_fair_most(budget, in, n, i);
	return most > out[i].share ? most : out[i].share;
}

/* Whether process i has more unused pages left to ask for than process
 * most, after what out already asks of them; on a tie, the lower slot,
 * so that every member picks the same one. Returns 1 or 0. */
static int more_left(const struct kv_fair_in *in, const uint64_t *askable,
		     const struct kv_fair_out *out, unsigned i, unsigned most)
{
	uint64_t a = sub(askable[i], out[i].asked_unused);
	uint64_t b = sub(askable[most], out[most].asked_unused);

	return a > b || (a == b && in[i].order < in[most].order);
}

void kv_fair_plan(uint64_t budget, uint64_t reserve, const struct kv_fair_in *in,
		  unsigned n, struct kv_fair_out *out, struct kv_fair_sums *sums)
{
	uint64_t want[FAIR_MAX], w[FAIR_MAX], got[FAIR_MAX], used[FAIR_MAX];
	uint64_t base[FAIR_MAX], unused[FAIR_MAX], askable[FAIR_MAX];
	uint64_t taken = 0, floor_gaps = 0, givable = 0, need = 0;
	uint64_t over = 0, spare = 0, ask, from_unused, free_b, asked = 0;
	uint64_t have, for_gaps, trims, floors = 0, rest, left;
	unsigned i, most;

	if (n > FAIR_MAX)
		n = FAIR_MAX;
	if (n < 2)
		reserve = 0;    /* alone, nobody needs room kept */
	for (i = 0; i < n; i++) {
		const struct kv_fair_in *p = &in[i];

		base[i] = floor_of(p);
		want[i] = wants(p, &used[i], &unused[i]);
		/* of its unused pages, those it may be asked for: above its
		 * floor once idle (given back, they are idle pages) */
		askable[i] = min64(unused[i], sub(used[i] + unused[i], p->min));
		w[i] = weight_of(p);
		floors = add(floors, base[i]);
	}
	/* what the floors keep is never free: a reserve beyond the rest
	 * would drain every process to its floor for nothing */
	reserve = min64(reserve, sub(budget, floors));
	/* (none: nothing to share; and the compiler sees w, base and want
	 * filled) */
	if (n)
		level(budget, w, base, want, got, n);

	for (i = 0; i < n; i++) {
		const struct kv_fair_in *p = &in[i];
		uint64_t has = p->held > p->min ? p->held : p->min;
		/* the part of its demand its floor already keeps for it */
		uint64_t beyond = sub(p->demand, sub(p->min, p->held));

		out[i].share = got[i];
		out[i].gap = p->demand && got[i] > has ? min64(beyond, got[i] - has) : 0;
		out[i].asked = 0;
		/* its idle pages down to its floor, less those its own demand
		 * takes within its share (they are in has: its gap is already
		 * less by them) */
		out[i].givable = min64(sub(p->held, p->min), sub(min64(p->idle, p->held),
			min64(p->demand, sub(got[i], used[i]))));
		need = add(need, out[i].gap);
		taken = add(taken, add(p->held, p->pending));
		floor_gaps = add(floor_gaps, sub(p->min, add(p->held, p->pending)));
		givable = add(givable, out[i].givable);
		over = add(over, sub(used[i], got[i]));
		spare = add(spare, askable[i]);
	}
	/* what the free budget and the idle pages cannot cover, of the gaps
	 * and then of the reserve, comes from the unused pages: the gaps'
	 * part in proportion to them, the reserve's from the largest holders
	 * (below); what the gaps still lack, from those who use more than
	 * their share, in proportion to that; each proportional part rounded
	 * up, so the parts add up to the whole */
	free_b = sub(budget, add(taken, floor_gaps));
	have = add(free_b, givable);
	ask = sub(need, have);
	from_unused = min64(sub(add(need, reserve), have), spare);
	for_gaps = min64(ask, from_unused);
	ask = min64(ask - for_gaps, over);
	/* the reserve's free budget, from the idle pages that may be asked
	 * for, in proportion to them, rounded up (not a byte more: a
	 * holder gives back whole pages, and a byte over would be a page) */
	trims = min64(sub(reserve, free_b), givable);
	for (i = 0; i < n; i++) {
		uint64_t x = sub(used[i], got[i]);

		out[i].trim = trims && out[i].givable ?
			min64(out[i].givable, scale_up(trims, out[i].givable, givable)) : 0;
		out[i].asked_unused = 0;
		if (for_gaps && askable[i])
			out[i].asked_unused =
				min64(askable[i], scale(for_gaps, askable[i], spare) + 1);
		if (ask && x)
			out[i].asked += min64(x, scale(ask, x, over) + 1);
	}
	/* the reserve's part of the unused pages, from the largest holders
	 * first: an engine gives back whole page indices, and a part asked
	 * of every holder would cost each one a page index of its cache */
	for (rest = from_unused - for_gaps; rest && n; rest -= left) {
		for (i = 1, most = 0; i < n; i++)
			if (more_left(in, askable, out, i, most))
				most = i;
		left = min64(rest, sub(askable[most], out[most].asked_unused));
		if (!left)
			break;
		/* (and, for a holder the gaps asked nothing of, the byte
		 * a gaps' part carries: kv_share_asked takes it off) */
		out[most].asked_unused = min64(askable[most], out[most].asked_unused + left +
					       !out[most].asked_unused);
	}
	for (i = 0; i < n; i++) {
		out[i].asked += out[i].asked_unused;
		asked = add(asked, out[i].asked);
	}
	if (sums) {
		sums->gaps = need;
		sums->asked = asked;
		sums->over = over;
		sums->unused = spare;
		sums->givable = givable;
		sums->for_reserve = from_unused - for_gaps;
		sums->reserve = reserve;
	}
}
