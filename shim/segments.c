/*
 * segments.c - kvshim-config --segments: every kvshim segment in /dev/shm,
 * read with kv_share_read (the code the library joins with), as a table or
 * one JSON document. kvshim-top renders the JSON: nothing outside the
 * library parses a segment. A file that is not a regular file is reported,
 * never waited on; names and commands are printed as printable ASCII.
 */
#include <ctype.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "segments.h"
#include "share.h"

/* s as a JSON string: quotes, backslashes and every byte outside printable
 * ASCII escaped. */
static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

/* Seconds since last_ns (CLOCK_REALTIME), 0 when unknown or ahead.
 * Returns them. */
static double idle_s(uint64_t last_ns)
{
	struct timespec ts;
	uint64_t now;

	clock_gettime(CLOCK_REALTIME, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	return last_ns && now > last_ns ? (double)(now - last_ns) / 1e9 : 0.0;
}

/* The GPU a segment's path names ("GPU-" and the 36 characters of its
 * UUID, after "kvshim-", as kv_share_path writes them) into gpu (41
 * bytes); "" when the name holds none. */
static void gpu_of(const char *path, char *gpu)
{
	const char *base = strrchr(path, '/'), *u;
	size_t i;

	gpu[0] = '\0';
	base = base ? base + 1 : path;
	if (strncmp(base, "kvshim-GPU-", 11))
		return;
	u = base + 7;
	for (i = 4; i < 40; i++) {
		int dash = i == 12 || i == 17 || i == 22 || i == 27;

		if (dash ? u[i] != '-' : !isxdigit((unsigned char)u[i]))
			return;
	}
	if (u[40] != '\0' && u[40] != '-')
		return;
	memcpy(gpu, u, 40);
	gpu[40] = '\0';
}

/* One segment (or, rc set, its refusal with why) as a JSON object. */
static void json_segment(FILE *f, const char *path, const struct kv_share_info *in,
			 int rc, const char *why)
{
	char gpu[41];
	unsigned i;

	fputs(" {\"path\": ", f);
	json_str(f, path);
	gpu_of(path, gpu);
	fputs(", \"gpu\": ", f);
	if (gpu[0])
		json_str(f, gpu);
	else
		fputs("null", f);
	if (rc) {
		fputs(", \"error\": ", f);
		json_str(f, why);
		fputs("}", f);
		return;
	}
	fprintf(f, ", \"name\": ");
	json_str(f, in->name);
	fprintf(f, ", \"version\": \"%u.%u\", \"owner\": %u, \"group\": %u, \"mode\": \"0%03o\", \"joinable\": %s, \"why_not\": ",
		in->major, in->minor, in->uid, in->gid, in->mode,
		in->joinable ? "true" : "false");
	if (in->joinable)
		fputs("null", f);
	else
		json_str(f, in->why_not);
	fprintf(f, ", \"locked\": %s, \"reaped\": %u, \"budget\": %llu, \"reserve\": %llu, \"device_bytes\": %llu, \"held\": %llu, \"pending\": %llu, \"mapped\": %llu, \"cached\": %llu, \"pooled\": %llu, \"processes\": [",
		in->locked ? "true" : "false", in->reaped,
		(unsigned long long)in->budget, (unsigned long long)in->reserve,
		(unsigned long long)in->device_bytes,
		(unsigned long long)in->held, (unsigned long long)in->pending,
		(unsigned long long)in->mapped, (unsigned long long)in->cached,
		(unsigned long long)in->pooled);
	for (i = 0; i < in->nprocs; i++) {
		const struct kv_share_proc *p = &in->proc[i];

		fprintf(f, "%s\n  {\"slot\": %u, \"pid\": %d, \"other_pidns\": %s, \"alive\": %s, \"clamped\": %s, \"command\": ",
			i ? "," : "", p->slot, p->pid, p->other_pidns ? "true" : "false",
			p->alive ? "true" : "false", p->clamped ? "true" : "false");
		json_str(f, p->cmd);
		fprintf(f, ", \"reserved\": %llu, \"held\": %llu, \"pending\": %llu, \"mapped\": %llu, \"cached\": %llu, \"pooled\": %llu, \"min\": %llu, \"max\": ",
			(unsigned long long)p->reserved, (unsigned long long)p->held,
			(unsigned long long)p->pending, (unsigned long long)p->mapped,
			(unsigned long long)p->cached, (unsigned long long)p->pooled,
			(unsigned long long)p->min);
		if (p->max)
			fprintf(f, "%llu", (unsigned long long)p->max);
		else
			fputs("null", f);
		/* its KVSHIM_LIMIT, at most the budget (null: a slot of an
		 * older minor, which states none); a ceiling too in the rule */
		fputs(", \"limit\": ", f);
		if (p->limit)
			fprintf(f, "%llu", (unsigned long long)p->limit);
		else
			fputs("null", f);
		fprintf(f, ", \"idle_s\": %.3f, \"trim_request\": %llu, \"trimmed\": %llu",
			idle_s(p->last_ns), (unsigned long long)p->trim_request,
			(unsigned long long)p->trimmed);
		/* the fair shares: its slot's weight, demand, unused pages
		 * and what it is asked to give back of what it uses; share
		 * and gap are the rule's, from these figures, and so is most,
		 * the most it may use while another waits below its share
		 * (null for a process gone; most null too while no other
		 * process waits); entitled, the rule's part of the budget were
		 * every process to want all, what an engine's batch reads at
		 * most, at most its limit (null for a process gone) */
		fprintf(f, ", \"weight\": %llu, \"demand\": %llu, \"unused\": %llu, \"asked\": %llu",
			(unsigned long long)p->weight, (unsigned long long)p->demand,
			(unsigned long long)p->unused, (unsigned long long)p->asked);
		if (p->alive)
			fprintf(f, ", \"share\": %llu, \"gap\": %llu, \"entitled\": %llu",
				(unsigned long long)p->share, (unsigned long long)p->gap,
				(unsigned long long)p->entitled);
		else
			fputs(", \"share\": null, \"gap\": null, \"entitled\": null", f);
		if (p->alive && p->most != UINT64_MAX)
			fprintf(f, ", \"most\": %llu}", (unsigned long long)p->most);
		else
			fputs(", \"most\": null}", f);
	}
	fputs("]}", f);
}

/* One segment (or, rc set, its refusal) as a few lines of text. */
static void text_segment(FILE *f, const char *path, const struct kv_share_info *in,
			 int rc, const char *why)
{
	char safe[4 * 256 + 1], gpu[41];
	unsigned i;
	size_t n;

	/* a file name may hold anything: printed as printable ASCII only */
	safe[0] = '\0';
	for (i = 0, n = 0; path[i] && i < 256; i++) {
		unsigned char c = (unsigned char)path[i];

		if (c >= 0x20 && c < 0x7f && c != '\\')
			safe[n++] = (char)c;
		else
			n += (size_t)sprintf(safe + n, "\\x%02x", c);
		safe[n] = '\0';
	}
	if (rc) {
		fprintf(f, "%s: refused: %s\n", safe, why);
		return;
	}
	gpu_of(path, gpu);
	fprintf(f, "%s: %s%sversion %u.%u, owner %u, mode 0%03o%s; %llu of %llu bytes held (%llu kept free while shared), %llu mapped, %llu cached\n",
		safe, gpu[0] ? gpu : "", gpu[0] ? ", " : "", in->major, in->minor, in->uid, in->mode,
		in->joinable ? "" : " (this process would not join it)",
		(unsigned long long)in->held, (unsigned long long)in->budget,
		(unsigned long long)in->reserve,
		(unsigned long long)in->mapped, (unsigned long long)in->cached);
	for (i = 0; i < in->nprocs; i++) {
		const struct kv_share_proc *p = &in->proc[i];
		char most[32] = "-", limit[32] = "-";

		if (p->alive && p->most != UINT64_MAX)
			snprintf(most, sizeof(most), "%llu", (unsigned long long)p->most);
		if (p->limit)
			snprintf(limit, sizeof(limit), "%llu", (unsigned long long)p->limit);
		fprintf(f, "  %8d %-16.16s held %llu mapped %llu cached %llu pooled %llu limit %s weight %llu share %llu most %s entitled %llu demand %llu unused %llu asked %llu%s\n",
			p->pid, p->cmd, (unsigned long long)p->held,
			(unsigned long long)p->mapped, (unsigned long long)p->cached,
			(unsigned long long)p->pooled, limit, (unsigned long long)p->weight,
			(unsigned long long)p->share, most, (unsigned long long)p->entitled,
			(unsigned long long)p->demand,
			(unsigned long long)p->unused, (unsigned long long)p->asked,
			p->alive ? "" : " (gone)");
	}
}

/* A GPU's or MIG instance's UUID as the driver names it: GPU- or MIG-, then
 * 36 characters. */
#define UUID_LEN 40

/*
 * Whether path is a segment of pool (NULL: any): kvshim-UUID-pool, the pool
 * whole (pool names may hold '-' too: "prod" is not "team-prod"). A UUID
 * of another form is told apart by the name's end only. Returns 1 or 0.
 */
static int of_pool(const char *path, const char *pool)
{
	const char *b = strrchr(path, '/'), *rest;
	size_t n, k;

	if (!pool)
		return 1;
	b = b ? b + 1 : path;
	if (strncmp(b, "kvshim-", 7))
		return 0;
	rest = b + 7;
	if (strlen(rest) >= UUID_LEN &&
	    (!strncmp(rest, "GPU-", 4) || !strncmp(rest, "MIG-", 4))) {
		if (!rest[UUID_LEN])
			return 0;       /* the GPU's default segment: no pool */
		if (rest[UUID_LEN] == '-')
			return !strcmp(rest + UUID_LEN + 1, pool);
	}
	n = strlen(b);
	k = strlen(pool);
	return n > k + 1 && b[n - k - 1] == '-' && !strcmp(b + n - k, pool);
}

int kv_segments_main(int argc, char **argv)
{
	const char *pool = NULL, *why = NULL;
	struct kv_share_info *in;
	struct kv_config c;
	int i, json = 0, first = 1;
	size_t k;
	glob_t g;

	for (i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = 1;
		} else if (!strcmp(argv[i], "--pool") && i + 1 < argc) {
			pool = argv[++i];
		} else {
			fprintf(stderr, "kvshim-config: --segments: unknown argument %s\n"
				"usage: kvshim-config --segments [--json] [--pool NAME]\n", argv[i]);
			return 2;
		}
	}
	/* the mode this process would join with, for "joinable" */
	kv_config_load(&c);
	in = malloc(sizeof(*in));
	if (!in) {
		fprintf(stderr, "kvshim-config: out of memory\n");
		return 1;
	}
	if (glob(KV_SHARE_DIR "/kvshim-*", 0, NULL, &g) != 0)
		g.gl_pathc = 0;
	if (json)
		fputs("{\"segments\": [\n", stdout);
	for (k = 0; k < g.gl_pathc; k++) {
		int rc;

		if (!of_pool(g.gl_pathv[k], pool))
			continue;
		rc = kv_share_read(g.gl_pathv[k], c.share_mode, 1, in, &why);
		if (json) {
			if (!first)
				fputs(",\n", stdout);
			json_segment(stdout, g.gl_pathv[k], in, rc, why);
		} else {
			text_segment(stdout, g.gl_pathv[k], in, rc, why);
		}
		first = 0;
	}
	if (json)
		fputs("\n]}\n", stdout);
	else if (first)
		printf("no kvshim segment in %s\n", KV_SHARE_DIR);
	if (g.gl_pathc)
		globfree(&g);
	free(in);
	return 0;
}
