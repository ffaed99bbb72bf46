#!/usr/bin/env bash
# One self-contained GPU call (session 50): the GPU suite and the
# per-thread suite, then one colocate run in the foreground (ARGS), its
# outputs packed under $OUT. Nothing spans calls: a machine given back
# between calls loses nothing.
set -u
t0=$(date +%s)
export LD_LIBRARY_PATH=$PWD/gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PYTHONUNBUFFERED=1
w=/tmp/w
rm -rf "$w" && mkdir -p "$w/co"
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "code: $(cat gpu-libs/HEAD)"; echo "colocate args: $ARGS"; } >"$w/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so srcdir=. timeout 100 tests/kvshim-tests >"$w/tests-gpu.txt" 2>&1
echo "suite rc=$? at $(($(date +%s) - t0)) s" >>"$w/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so CK_RUN_SUITE=ptds srcdir=. timeout 60 tests/kvshim-tests >"$w/tests-gpu-ptds.txt" 2>&1
echo "ptds suite rc=$? at $(($(date +%s) - t0)) s" >>"$w/card.txt"
nvidia-smi --query-gpu=memory.used --format=csv >>"$w/card.txt"
echo "colocate started at $(($(date +%s) - t0)) s: $(date)" >>"$w/card.txt"
# shellcheck disable=SC2086
timeout "${LIMIT:-560}" python3 tests/bench/colocate.py --cpu-offload-gib 4 --out "$w/co" $ARGS >"$w/colocate.txt" 2>&1 </dev/null
{ echo "colocate rc=$? at $(($(date +%s) - t0)) s"; date; } >>"$w/card.txt"
cp "$w"/*.txt "$OUT/"
tar cJf "$OUT/co.tar.xz" -C "$w/co" .
cat "$w/card.txt"; grep -c '' "$w/tests-gpu.txt"; tail -n 3 "$w/tests-gpu.txt" "$w/tests-gpu-ptds.txt"; tail -n 60 "$w/colocate.txt"
