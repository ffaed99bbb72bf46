#!/usr/bin/env bash
# Call 1 of a long run: the GPU suite and the per-thread suite, then colocate (session 44).
set -u
t0=$(date +%s)
export LD_LIBRARY_PATH=$PWD/gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PYTHONUNBUFFERED=1
w=/tmp/w
rm -rf "$w" /tmp/kv && mkdir -p "$w/co" /tmp/kv
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "code: $(cat gpu-libs/HEAD)"; echo "colocate args: $ARGS"; } >"$w/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so srcdir=. timeout 100 tests/kvshim-tests >"$w/tests-gpu.txt" 2>&1
echo "suite rc=$? at $(($(date +%s) - t0)) s" >>"$w/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so CK_RUN_SUITE=ptds srcdir=. timeout 60 tests/kvshim-tests >"$w/tests-gpu-ptds.txt" 2>&1
echo "ptds suite rc=$? at $(($(date +%s) - t0)) s" >>"$w/card.txt"
python3 - >"$w/loop.txt" 2>&1 <<'PY'
import inspect
import transformers.generation.continuous_batching.continuous_api as m
print(transformers_version := __import__("transformers").__version__)
for cls in ("ContinuousBatchingManager",):
    c = getattr(m, cls, None)
    for name in ("_run_generation_loop", "_inner_generation_loop", "_generation_step"):
        f = getattr(c, name, None)
        if f is not None:
            print("#", cls, name); print(inspect.getsource(f))
PY
cp -a . /tmp/kv/
cd /tmp/kv || exit 1
echo "colocate started at $(($(date +%s) - t0)) s: $(date)" >>"$w/card.txt"
# shellcheck disable=SC2086
setsid bash -c "timeout ${LIMIT:-1500} python3 tests/bench/colocate.py --cpu-offload-gib 4 --warmup --out $w/co $ARGS >$w/colocate.txt 2>&1 </dev/null; echo rc=\$? >$w/done" </dev/null >/dev/null 2>&1 &
cd - >/dev/null || exit 1
WAIT=$((${WAIT:-580} - ($(date +%s) - t0))) bash gpu-libs/poll.sh
