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

/*
 * Share rest by weight w among the processes whose got is below their want,
 * adding to got: whoever wants no more than its portion gets what it wants,
 * and the others share what is left, until nobody can take more or nothing
 * is left (weighted max-min fairness). Each round settles at least one
 * process or ends, so it takes at most n rounds.
 */
static void fill(uint64_t rest, const uint64_t *want, const uint64_t *w,
		 uint64_t *got, unsigned n)
{
	unsigned char done[FAIR_MAX];
	unsigned i;

	for (i = 0; i < n; i++)
		done[i] = got[i] >= want[i];
	while (rest) {
		uint64_t weights = 0, given = 0;
		int settled = 0;

		for (i = 0; i < n; i++)
			if (!done[i])
				weights += w[i];
		if (!weights)
			return;
		for (i = 0; i < n; i++) {
			if (done[i] || want[i] - got[i] > scale(rest, w[i], weights))
				continue;
			given += want[i] - got[i];
			got[i] = want[i];
			done[i] = 1;
			settled = 1;
		}
		if (settled) {
			rest -= given;
			continue;
		}
		/* nobody is satisfied by its portion: each takes it, and the
		 * rounding's few bytes stay unshared */
		for (i = 0; i < n; i++)
			if (!done[i])
				got[i] += scale(rest, w[i], weights);
		return;
	}
}

void kv_fair_plan(uint64_t budget, const struct kv_fair_in *in, unsigned n,
		  struct kv_fair_out *out, struct kv_fair_sums *sums)
{
	uint64_t want[FAIR_MAX], w[FAIR_MAX], got[FAIR_MAX], used[FAIR_MAX];
	uint64_t floors = 0, taken = 0, floor_gaps = 0, givable = 0, need = 0;
	uint64_t over = 0, ask, free_b, asked = 0;
	unsigned i;

	if (n > FAIR_MAX)
		n = FAIR_MAX;
	for (i = 0; i < n; i++) {
		const struct kv_fair_in *p = &in[i];
		uint64_t base = p->max ? min64(p->min, p->max) : p->min;

		used[i] = sub(p->held, p->idle);
		want[i] = add(used[i], p->demand);
		if (p->max)
			want[i] = min64(want[i], p->max);
		if (want[i] < base)
			want[i] = base;
		w[i] = p->weight < 1 ? 1 : min64(p->weight, KV_FAIR_WEIGHT_MAX);
		got[i] = base;
		floors = add(floors, base);
	}
	/* floors first, then the rest by weight */
	fill(sub(budget, floors), want, w, got, n);

	for (i = 0; i < n; i++) {
		const struct kv_fair_in *p = &in[i];
		uint64_t has = p->held > p->min ? p->held : p->min;
		/* the part of its demand its floor already keeps for it */
		uint64_t beyond = sub(p->demand, sub(p->min, p->held));

		out[i].share = got[i];
		out[i].gap = p->demand && got[i] > has ? min64(beyond, got[i] - has) : 0;
		out[i].asked = 0;
		need = add(need, out[i].gap);
		taken = add(taken, add(p->held, p->pending));
		floor_gaps = add(floor_gaps, sub(p->min, add(p->held, p->pending)));
		givable = add(givable, p->givable);
		over = add(over, sub(used[i], got[i]));
	}
	/* what the free budget and the idle pages cannot cover comes from
	 * those who use more than their share, in proportion to that */
	free_b = sub(budget, add(taken, floor_gaps));
	ask = min64(sub(need, add(free_b, givable)), over);
	for (i = 0; i < n && ask; i++) {
		uint64_t x = sub(used[i], got[i]);

		if (!x)
			continue;
		/* rounded up, so the parts add up to the whole */
		out[i].asked = min64(x, scale(ask, x, over) + 1);
		asked = add(asked, out[i].asked);
	}
	if (sums) {
		sums->gaps = need;
		sums->asked = asked;
		sums->over = over;
	}
}
