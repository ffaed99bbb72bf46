#!/bin/sh
# The layers, checked on what was built (STYLE.md: data flows hook -> shim ->
# allocator -> prim, never back up). Include paths keep each folder's
# headers out of reach of the layers above it not allowed to see them; this
# checks what they cannot: that no object calls into a layer it must not
# know (a call needs no header to link inside one library), and that no
# source climbs out of its folder with a relative #include (shim/kvlog.h,
# the hooks' way to the log, is the one allowed).
# Run from the build directory; srcdir names the sources.
src=${srcdir:-.}
fail=0

# undefined names of a layer's objects (one per source of its folder) that
# match a pattern
calls() {
	dir=$1 lib=$2 pattern=$3
	for c in "$src/$dir"/*.c; do
		o=$dir/.libs/${lib}_la-$(basename "$c" .c).o
		case $c in */config_main.c|*/segments.c) continue ;; esac  # kvshim-config's own
		if [ ! -f "$o" ]; then
			echo "$o: not built"
			continue
		fi
		nm -u "$o" | awk '{print $NF}' | grep -E "$pattern" |
			sed "s|^|$o: |"
	done
}

bad=$(calls allocator libkvalloc '^kv_(shim|policy|group|config|parse|hooks?|got|real|in_runtime)')
bad=$bad$(calls shim libkvcore '^kv_(hooks?|got|real|in_runtime)')
bad=$bad$(calls hooks libkvshim '^kv_(prim|alloc|pool|spans?|map|share|slot)')
if [ -n "$bad" ]; then
	echo "check-layers: calls across the layers:" >&2
	echo "$bad" >&2
	fail=1
fi

rel=$(grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"\.\./' \
	"$src"/allocator/*.[ch] "$src"/shim/*.[ch] "$src"/hooks/*.[ch] |
	grep -v '/shim/kvlog\.h:')
if [ -n "$rel" ]; then
	echo "check-layers: relative includes out of a folder:" >&2
	echo "$rel" >&2
	fail=1
fi
[ "$fail" -eq 0 ] && echo "check-layers: allocator, shim and hooks call only downwards"
exit "$fail"
