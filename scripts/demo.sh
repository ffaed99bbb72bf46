#!/usr/bin/env bash
# The demo: build kvshim, then reserve a large KV span and map, free and
# trim pages through the public ABI, printing reserved against physical
# bytes. On a machine with a GPU it runs on the real driver; without one, on
# the CPU emulation of the driver (tests/emu), and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "kvshim demo: building (scripts/setup.sh)..."
if ! { scripts/setup.sh && make -j"$(nproc)" tests/emu/libcuda.so.1; } >"$log" 2>&1; then
	cat "$log" >&2
	echo "kvshim demo: the build failed" >&2
	exit 1
fi

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
	echo "kvshim demo: a GPU is present: using the real CUDA driver"
	tests/kvshim-demo "$@"
	exit
fi
echo "kvshim demo: no GPU here: using the CPU emulation of the CUDA driver (tests/emu)"
LD_LIBRARY_PATH="$PWD/tests/emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
KVEMU_DEVICE_BYTES=${KVEMU_DEVICE_BYTES:-8G} tests/kvshim-demo "$@"
