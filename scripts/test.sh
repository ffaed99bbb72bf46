#!/usr/bin/env bash
# Build kvshim and pass its tests: every suite on the CPU emulation of the
# driver, the exported-symbol check, and the tarball build (distcheck).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! make -j"$(nproc)" check; then
	cat tests/*.log tests/emu/*.log 2>/dev/null | tail -80
	exit 1
fi
tail -5 tests/kvshim-tests.log
make -j"$(nproc)" distcheck DISTCHECK_CONFIGURE_FLAGS="--with-cuda=${CUDA_HOME:-/usr/local/cuda}"
