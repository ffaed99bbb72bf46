#!/usr/bin/env bash
# The GPU suite and the per-thread suite on the session's last tree.
set -u
export LD_LIBRARY_PATH=$PWD/gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "code: $(cat gpu-libs/HEAD)"; } >"$OUT/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so srcdir=. timeout 100 tests/kvshim-tests >"$OUT/tests-gpu.txt" 2>&1
echo "suite rc=$?" >>"$OUT/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so CK_RUN_SUITE=ptds srcdir=. timeout 60 tests/kvshim-tests >"$OUT/tests-gpu-ptds.txt" 2>&1
echo "ptds suite rc=$?" >>"$OUT/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so CK_RUN_SUITE=prim srcdir=. timeout 60 tests/kvshim-tests >"$OUT/tests-gpu-prim.txt" 2>&1
echo "prim suite rc=$?" >>"$OUT/card.txt"
cat "$OUT/card.txt"; tail -2 "$OUT/tests-gpu.txt"; tail -2 "$OUT/tests-gpu-ptds.txt"; tail -2 "$OUT/tests-gpu-prim.txt"
