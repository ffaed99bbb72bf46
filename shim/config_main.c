/*
 * config_main.c - kvshim-config: what kvshim-run asks before it starts
 * anything. --check reads every KVSHIM_* variable as the library will and
 * exits 64 naming the first malformed one; --print also lists the
 * effective configuration, one variable a line; --segments lists the
 * shared budget segments (segments.c). Output it cannot write (a full
 * disk, a closed stdout) is an error in every mode: exit 1.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "segments.h"

#define KV_EXIT_CONFIG 64

static void usage(FILE *f)
{
	fprintf(f, "usage: kvshim-config --check | --print | --segments [--json] [--pool NAME]\n"
		"  --check  validate the KVSHIM_* variables of the environment (exit 64 if one is malformed)\n"
		"  --print  validate, then print every variable's effective value and meaning\n"
		"  --segments  list the shared budget segments in /dev/shm (JSON with --json)\n");
}

static int run(int argc, char **argv)
{
	struct kv_config c;
	size_t i;
	int rc, print, width = 0;

	if (argc >= 2 && !strcmp(argv[1], "--segments"))
		return kv_segments_main(argc, argv);
	if (argc != 2 || (strcmp(argv[1], "--check") && strcmp(argv[1], "--print"))) {
		usage(argc == 2 && !strcmp(argv[1], "--help") ? stdout : stderr);
		return argc == 2 && !strcmp(argv[1], "--help") ? 0 : 2;
	}
	print = !strcmp(argv[1], "--print");
	/* errors are what this tool is for: show them whatever KVSHIM_LOG says */
	kv_log_set_level(KV_LOG_ERROR);
	rc = kv_config_load(&c);
	if (rc && kv_log_get_level() < KV_LOG_ERROR) {
		/* KVSHIM_LOG (read first) silenced the errors that follow it:
		 * read again without it, so that each is named */
		unsetenv("KVSHIM_LOG");
		kv_log_set_level(KV_LOG_ERROR);
		(void)kv_config_load(&c);
	}
	if (rc)
		return KV_EXIT_CONFIG;
	if (!print)
		return 0;
	/* the names' column as wide as the longest */
	for (i = 0; i < kv_config_nvars; i++) {
		int len = (int)strlen(kv_config_vars[i].name) + (int)strlen("KVSHIM_");

		if (len > width)
			width = len;
	}
	for (i = 0; i < kv_config_nvars; i++) {
		char name[64], shown[96];
		const char *v;

		snprintf(name, sizeof(name), "KVSHIM_%s", kv_config_vars[i].name);
		v = getenv(name);
		printf("%-*s %-10s %s%s\n", width, name,
		       kv_log_escape(v ? v : kv_config_vars[i].def, shown, sizeof(shown)),
		       v ? "" : "(default) ", kv_config_vars[i].meaning);
	}
	return 0;
}

/*
 * Flush and close stdout, which exit() would do dropping any error: a
 * listing cut short must not pass for one printed. A close that finds
 * stdout closed (EBADF) is no error when nothing was left to write (the
 * flush would have failed first): --check, which prints nothing, keeps
 * working for a caller whose stdout is closed. Returns rc, or, rc 0 and
 * the output failed, 1 after one line naming stdout and why.
 */
static int finish(int rc)
{
	errno = 0;
	if (fflush(stdout) || ferror(stdout) || (fclose(stdout) && errno != EBADF)) {
		fprintf(stderr, "kvshim-config: stdout: %s\n",
			errno ? strerror(errno) : "write error");
		return rc ? rc : 1;
	}
	return rc;
}

int main(int argc, char **argv)
{
	return finish(run(argc, argv));
}
