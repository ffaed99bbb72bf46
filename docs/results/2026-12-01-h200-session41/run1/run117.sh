#!/usr/bin/env bash
# Short call: the GPU suite, the per-thread suite, capture-probe and
# batch-probe, then transformers' continuous batching source (to read how
# it decides to capture a CUDA graph) packed under $OUT.
set -u
t0=$(date +%s)
export LD_LIBRARY_PATH=$PWD/gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PYTHONUNBUFFERED=1
w=$OUT
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "code: $(cat gpu-libs/HEAD)"; } >"$w/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so srcdir=. timeout 100 tests/kvshim-tests >"$w/tests-gpu.txt" 2>&1
echo "suite rc=$? at $(($(date +%s) - t0)) s" >>"$w/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so CK_RUN_SUITE=ptds srcdir=. timeout 60 tests/kvshim-tests >"$w/tests-gpu-ptds.txt" 2>&1
echo "ptds suite rc=$? at $(($(date +%s) - t0)) s" >>"$w/card.txt"
timeout 60 gpu-libs/capture-probe >"$w/capture-probe.txt" 2>&1
echo "capture-probe rc=$? at $(($(date +%s) - t0)) s" >>"$w/card.txt"
timeout 60 gpu-libs/batch-probe >"$w/batch-probe.txt" 2>&1
echo "batch-probe rc=$? at $(($(date +%s) - t0)) s" >>"$w/card.txt"
d=$(python3 -c 'import transformers, os; print(os.path.dirname(transformers.__file__))')
python3 -c 'import transformers, torch; print("transformers", transformers.__version__, "torch", torch.__version__)' >>"$w/card.txt"
tar cJf "$w/tf-cb.tar.xz" -C "$d" generation/continuous_batching generation/configuration_utils.py 2>>"$w/card.txt"
cat "$w/card.txt"; tail -3 "$w/tests-gpu.txt"; grep -v "^ptds: cuMemset" "$w/tests-gpu-ptds.txt" | tail -6; cat "$w/batch-probe.txt" | tail -40
