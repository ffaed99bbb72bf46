#!/bin/sh
# Fails when libkvshim.so exports a name outside the public ABI (kvshim_*)
# and the interposed CUDA API: a preloaded library that exports a generic
# name breaks the host program.
lib=${KVSHIM_LIB:-.libs/libkvshim.so}
if [ ! -f "$lib" ]; then
	echo "check-exports: $lib not built" >&2
	exit 1
fi
bad=$(nm -D --defined-only "$lib" | awk '{print $NF}' | sed 's/@.*//' |
	grep -vE '^(kvshim_[a-z_]+|cu[A-Z][A-Za-z0-9_]*|cuda[A-Z][A-Za-z0-9_]*|dlsym|dlvsym|KVSHIM_[0-9]+)$')
if [ -n "$bad" ]; then
	echo "check-exports: $lib exports names outside kvshim_* and the CUDA API:" >&2
	echo "$bad" >&2
	exit 1
fi
n=$(nm -D --defined-only "$lib" | grep -c ' kvshim_')
if [ "$n" -lt 7 ]; then
	echo "check-exports: only $n kvshim_* symbols exported" >&2
	exit 1
fi
echo "check-exports: $lib exports $n kvshim_* symbols and nothing else of its own"
