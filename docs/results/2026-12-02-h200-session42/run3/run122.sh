#!/usr/bin/env bash
# Session 42, last: the GPU suite and the per-thread suite on the final tree.
set -u
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo "code: $(cat gpu-libs/HEAD)"; } >"$OUT/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so srcdir=. timeout 100 tests/kvshim-tests >"$OUT/tests-gpu.txt" 2>&1
echo "suite rc=$?" >>"$OUT/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so CK_RUN_SUITE=ptds srcdir=. timeout 60 tests/kvshim-tests >"$OUT/tests-gpu-ptds.txt" 2>&1
echo "ptds suite rc=$?" >>"$OUT/card.txt"
cat "$OUT/card.txt"; tail -n 1 "$OUT/tests-gpu.txt" "$OUT/tests-gpu-ptds.txt"
