/*
 * segments.h - kvshim-config --segments: the shared budget segments, read
 * through the library's own reader.
 */
#ifndef KV_SEGMENTS_H
#define KV_SEGMENTS_H

/* Run `kvshim-config --segments [--json] [--pool NAME]` (argv[1] is
 * --segments). Returns the exit status: 0, or 2 for bad arguments. */
int kv_segments_main(int argc, char **argv);

#endif /* KV_SEGMENTS_H */
