/*
 * slot.c - the page state machine: the one place where a slot changes
 * state, list and counts, and the checker that recounts all of it.
 */
#include <stdlib.h>
#include <string.h>

#include "alloc_int.h"
#include "log.h"

#define BIT(s) (1u << (s))

/* The moves kv_slot_move may make, by the state a slot leaves. */
static const unsigned allowed[KV_P_NSTATES] = {
	[KV_P_EMPTY] = BIT(KV_P_FILLING) | BIT(KV_P_TAKEN),
	[KV_P_FILLING] = BIT(KV_P_CLEAN) | BIT(KV_P_DIRTY) | BIT(KV_P_EMPTY),
	[KV_P_CLEAN] = BIT(KV_P_TAKEN) | BIT(KV_P_FREEING),
	[KV_P_DIRTY] = BIT(KV_P_TAKEN) | BIT(KV_P_FILLING) | BIT(KV_P_FREEING),
	[KV_P_TAKEN] = BIT(KV_P_MAPPED) | BIT(KV_P_CLEAN) | BIT(KV_P_DIRTY) |
		       BIT(KV_P_EMPTY),
	[KV_P_MAPPED] = BIT(KV_P_CACHED) | BIT(KV_P_DYING),
	[KV_P_CACHED] = BIT(KV_P_MAPPED) | BIT(KV_P_UNMAPPING) | BIT(KV_P_DYING),
	[KV_P_UNMAPPING] = BIT(KV_P_MAPPED) | BIT(KV_P_CACHED) | BIT(KV_P_DIRTY) |
			   BIT(KV_P_FREEING) | BIT(KV_P_TAKEN),
	[KV_P_DYING] = BIT(KV_P_DIRTY),
	[KV_P_FREEING] = BIT(KV_P_EMPTY) | BIT(KV_P_DIRTY),
};

static const char *const names[KV_P_NSTATES] = {
	"EMPTY", "FILLING", "CLEAN", "DIRTY", "TAKEN", "MAPPED", "CACHED",
	"UNMAPPING", "DYING", "FREEING"
};

/* The list a state keeps its slots on, or NULL. */
static struct kv_list *list_of(kv_alloc_t *a, unsigned st)
{
	switch (st) {
	case KV_P_EMPTY:
		return &a->empty;
	case KV_P_CLEAN:
		return &a->clean;
	case KV_P_DIRTY:
		return &a->dirty;
	case KV_P_CACHED:
		return &a->cache;
	default:
		return NULL;
	}
}

static int in_span(unsigned st)
{
	return st == KV_P_MAPPED || st == KV_P_CACHED ||
	       st == KV_P_UNMAPPING || st == KV_P_DYING;
}

static int busy_in_span(unsigned st)
{
	return st == KV_P_UNMAPPING || st == KV_P_DYING;
}

static void push(kv_alloc_t *a, struct kv_list *l, uint32_t s)
{
	struct kv_phys *p = &a->phys[s];

	p->next = KV_NIL;
	p->prev = l->tail;
	if (l->tail != KV_NIL)
		a->phys[l->tail].next = s;
	else
		l->head = s;
	l->tail = s;
}

static void unlink_slot(kv_alloc_t *a, struct kv_list *l, uint32_t s)
{
	struct kv_phys *p = &a->phys[s];

	if (p->prev != KV_NIL)
		a->phys[p->prev].next = p->next;
	else
		l->head = p->next;
	if (p->next != KV_NIL)
		a->phys[p->next].prev = p->prev;
	else
		l->tail = p->prev;
	p->prev = p->next = KV_NIL;
}

void kv_slot_move(kv_alloc_t *a, uint32_t s, enum kv_pstate to)
{
	struct kv_phys *p = &a->phys[s];
	unsigned from = p->state;
	struct kv_list *l;

	if (!(allowed[from] & BIT(to)))
		kv_error("internal: page slot %u moved from %s to %s", s,
			 names[from], names[to]);
	l = list_of(a, from);
	if (l)
		unlink_slot(a, l, s);
	a->n[from]--;
	if (p->span) {
		if (busy_in_span(from) && !busy_in_span(to))
			p->span->busy--;
		else if (!busy_in_span(from) && busy_in_span(to))
			p->span->busy++;
	}
	p->state = (uint8_t)to;
	a->n[to]++;
	l = list_of(a, to);
	if (l)
		push(a, l, s);
	if (from == KV_P_EMPTY && kv_held(a) > a->peak)
		a->peak = kv_held(a);
	if (to == KV_P_CLEAN || to == KV_P_DIRTY || to == KV_P_CACHED ||
	    (from == KV_P_FREEING && to == KV_P_EMPTY))
		a->supplied++;
	/* out of its span, the span's mapping is gone; the arena's kept
	 * its access (a page is scrubbed before it is mapped in a span) */
	if (to == KV_P_EMPTY || (in_span(from) && !in_span(to)))
		p->noaccess = 0;
	if (to == KV_P_EMPTY)
		p->h = 0;
}

void kv_slot_install(kv_alloc_t *a, uint32_t s, struct kv_span *sp,
		     uint32_t p)
{
	struct kv_phys *ph = &a->phys[s];

	ph->span = sp;
	ph->vpage = p;
	sp->slot[p] = s;
	sp->mapped++;
	kv_slot_move(a, s, KV_P_MAPPED);
}

void kv_slot_detach(kv_alloc_t *a, uint32_t s, enum kv_pstate to)
{
	struct kv_phys *ph = &a->phys[s];
	struct kv_span *sp = ph->span;

	kv_slot_move(a, s, to);     /* busy-- while the span is known */
	sp->slot[ph->vpage] = KV_NIL;
	sp->claims[ph->vpage] = 0;
	sp->pinned[ph->vpage] = 0;
	sp->mapped--;
	ph->span = NULL;
}

uint32_t kv_slots_failed_last(kv_alloc_t *a, uint32_t *slots, uint32_t n)
{
	uint32_t i, j, good = 0, s;

	/* stable, in place: only ever run after a driver failure */
	for (i = 0; i < n; i++) {
		if (a->phys[slots[i]].failed)
			continue;
		s = slots[i];
		for (j = i; j > good; j--)
			slots[j] = slots[j - 1];
		slots[good++] = s;
	}
	for (i = 0; i < n; i++)
		a->phys[slots[i]].failed = 0;
	return good;
}

int kv_slots_init(kv_alloc_t *a)
{
	uint32_t s;

	a->phys = calloc(a->max_pages ? a->max_pages : 1, sizeof(*a->phys));
	if (!a->phys)
		return KVSHIM_ENOMEM;
	a->empty.head = a->empty.tail = KV_NIL;
	a->clean = a->dirty = a->cache = a->empty;
	memset(a->n, 0, sizeof(a->n));
	for (s = 0; s < a->max_pages; s++) {
		a->phys[s].state = KV_P_EMPTY;
		a->phys[s].span = NULL;
		push(a, &a->empty, s);
	}
	a->n[KV_P_EMPTY] = a->max_pages;
	return 0;
}

/* ---- the checker ----------------------------------------------------------- */

#define FAIL(...) do { kv_error("check: " __VA_ARGS__); return KVSHIM_ESTATE; } while (0)

/* Walk list l of state st: links both ways, every member in st. */
static int check_list(const kv_alloc_t *a, const struct kv_list *l,
		      unsigned st)
{
	uint32_t s, prev = KV_NIL, n = 0;

	for (s = l->head; s != KV_NIL; s = a->phys[s].next) {
		if (s >= a->max_pages)
			FAIL("list %s links to slot %u of %u", names[st], s,
			     a->max_pages);
		if (a->phys[s].state != st)
			FAIL("slot %u is %s on the %s list", s,
			     names[a->phys[s].state], names[st]);
		if (a->phys[s].prev != prev)
			FAIL("slot %u on the %s list links back to %u, not %u", s,
			     names[st], a->phys[s].prev, prev);
		if (++n > a->n[st])
			FAIL("the %s list is longer than its count %u", names[st],
			     a->n[st]);
		prev = s;
	}
	if (l->tail != prev)
		FAIL("the %s list ends at %u, its tail says %u", names[st], prev,
		     l->tail);
	if (n != a->n[st])
		FAIL("the %s list holds %u slots, its count says %u", names[st],
		     n, a->n[st]);
	return 0;
}

/* One span: its pages against the slots that say they are there. */
static int check_span(const kv_alloc_t *a, const struct kv_span *sp,
		      int dying, uint32_t *seen)
{
	uint32_t p, mapped = 0, busy = 0, pending = 0;

	if (!!sp->dying != dying)
		FAIL("span 0x%llx is %s but marked %s",
		     (unsigned long long)sp->base, dying ? "released" : "live",
		     sp->dying ? "released" : "live");
	if (sp->size != (size_t)sp->npages * a->page || !sp->id ||
	    sp->id >= a->next_id)
		FAIL("span 0x%llx has size %zu for %u pages, id %llu",
		     (unsigned long long)sp->base, sp->size, sp->npages,
		     (unsigned long long)sp->id);
	for (p = 0; p < sp->npages; p++) {
		uint32_t s = sp->slot[p];
		const struct kv_phys *ph;

		if (s == KV_NIL || s == KV_PEND) {
			/* (a map backs a pending one, lock dropped) */
			if (sp->claims[p] || sp->pinned[p])
				FAIL("unbacked page %u of span 0x%llx holds %u claims, pin %u",
				     p, (unsigned long long)sp->base,
				     sp->claims[p], sp->pinned[p]);
			if (s == KV_PEND && dying)
				FAIL("page %u of released span 0x%llx is being backed",
				     p, (unsigned long long)sp->base);
			pending += s == KV_PEND;
			continue;
		}
		if (s >= a->max_pages)
			FAIL("page %u of span 0x%llx names slot %u", p,
			     (unsigned long long)sp->base, s);
		ph = &a->phys[s];
		if (ph->span != sp || ph->vpage != p || !in_span(ph->state))
			FAIL("page %u of span 0x%llx names slot %u, which is %s at page %u of %s",
			     p, (unsigned long long)sp->base, s,
			     names[ph->state], ph->vpage,
			     ph->span == sp ? "it" : "another span");
		if (dying != (ph->state == KV_P_DYING))
			FAIL("slot %u is %s in a %s span", s, names[ph->state],
			     dying ? "released" : "live");
		if (ph->state == KV_P_CACHED && (sp->claims[p] || sp->pinned[p]))
			FAIL("cached slot %u holds %u claims, pin %u", s,
			     sp->claims[p], sp->pinned[p]);
		if (ph->state == KV_P_MAPPED && !sp->claims[p] && !sp->pinned[p])
			FAIL("mapped slot %u holds no claim and no pin", s);
		if (sp->claims[p] > KV_CLAIMS_MAX)
			FAIL("page %u of span 0x%llx holds %u claims", p,
			     (unsigned long long)sp->base, sp->claims[p]);
		seen[s]++;
		mapped++;
		busy += busy_in_span(ph->state);
	}
	if (mapped != sp->mapped || busy != sp->busy || pending != sp->pending)
		FAIL("span 0x%llx counts %u mapped, %u busy and %u pending pages, holds %u, %u and %u",
		     (unsigned long long)sp->base, sp->mapped, sp->busy, sp->pending,
		     mapped, busy, pending);
	return 0;
}

int kv_check_locked(kv_alloc_t *a)
{
	uint32_t count[KV_P_NSTATES] = { 0 }, *seen, s, st;
	const struct kv_span *sp;
	size_t i, reserved = 0;
	int64_t made;
	int rc = 0;

	if (!a->phys)
		return 0;
	for (s = 0; s < a->max_pages; s++) {
		const struct kv_phys *ph = &a->phys[s];

		if (ph->state >= KV_P_NSTATES)
			FAIL("slot %u has state %u", s, ph->state);
		count[ph->state]++;
		if (!!ph->span != in_span(ph->state))
			FAIL("slot %u is %s %s a span", s, names[ph->state],
			     ph->span ? "in" : "outside");
		/* slots in flight belong to a call that may be marking them */
		if ((ph->fresh || ph->failed) && list_of(a, ph->state))
			FAIL("slot %u keeps a scratch mark between calls", s);
		/* a page without access is pooled dirty or in a call's hands
		 * (the arena's), or cached in its span (the span's), never
		 * scrubbed (clean) or claimed */
		if (ph->noaccess && ph->state != KV_P_DIRTY &&
		    ph->state != KV_P_FILLING && ph->state != KV_P_TAKEN &&
		    ph->state != KV_P_FREEING && ph->state != KV_P_CACHED &&
		    ph->state != KV_P_UNMAPPING && ph->state != KV_P_DYING)
			FAIL("slot %u is %s without access", s, names[ph->state]);
	}
	for (st = 0; st < KV_P_NSTATES; st++)
		if (count[st] != a->n[st])
			FAIL("%u slots are %s, the count says %u", count[st],
			     names[st], a->n[st]);
	if (kv_held(a) > a->peak)
		FAIL("%u pages held, over the peak %u", kv_held(a), a->peak);
	/* with none in flight, every slot held has its handle, and only those */
	made = __atomic_load_n(&a->made, __ATOMIC_ACQUIRE);
	if (!a->n[KV_P_FILLING] && !a->n[KV_P_TAKEN] && !a->n[KV_P_FREEING] &&
	    made != (int64_t)kv_held(a))
		FAIL("%u pages held, %lld handles counted", kv_held(a),
		     (long long)made);
	rc = check_list(a, &a->empty, KV_P_EMPTY);
	if (!rc)
		rc = check_list(a, &a->clean, KV_P_CLEAN);
	if (!rc)
		rc = check_list(a, &a->dirty, KV_P_DIRTY);
	if (!rc)
		rc = check_list(a, &a->cache, KV_P_CACHED);
	if (rc)
		return rc;

	seen = calloc(a->max_pages ? a->max_pages : 1, sizeof(*seen));
	if (!seen)
		return KVSHIM_ENOMEM;
	for (i = 0; i < a->nspans && !rc; i++) {
		sp = a->spans[i];
		if (i && a->spans[i - 1]->base + a->spans[i - 1]->size > sp->base) {
			kv_error("check: spans 0x%llx and 0x%llx overlap or are out of order",
				 (unsigned long long)a->spans[i - 1]->base,
				 (unsigned long long)sp->base);
			rc = KVSHIM_ESTATE;
			break;
		}
		reserved += sp->size;
		rc = check_span(a, sp, 0, seen);
	}
	for (sp = a->dying; sp && !rc; sp = sp->next)
		rc = check_span(a, sp, 1, seen);
	for (s = 0; s < a->max_pages && !rc; s++) {
		if (seen[s] != (uint32_t)in_span(a->phys[s].state)) {
			kv_error("check: slot %u (%s) is named by %u span pages", s,
				 names[a->phys[s].state], seen[s]);
			rc = KVSHIM_ESTATE;
		}
	}
	free(seen);
	if (!rc && reserved != a->reserved) {
		kv_error("check: spans reserve %zu bytes, the count says %zu",
			 reserved, a->reserved);
		rc = KVSHIM_ESTATE;
	}
	return rc;
}

int kv_alloc_check(kv_alloc_t *a)
{
	int rc;

	if (!a)
		return KVSHIM_EINVAL;
	pthread_mutex_lock(&a->lock);
	rc = kv_check_locked(a);
	pthread_mutex_unlock(&a->lock);
	return rc;
}
