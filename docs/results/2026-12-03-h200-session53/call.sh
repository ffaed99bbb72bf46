#!/usr/bin/env bash
# One self-contained GPU call (session 53): with SUITES=1 the GPU suite,
# the per-thread suite and tests/gpu/hf_cb_fork.py first; then one
# colocate run in the foreground (ARGS), its outputs packed under $OUT.
# Nothing spans calls: a machine given back between calls loses nothing.
set -u
t0=$(date +%s)
export LD_LIBRARY_PATH=$PWD/gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PYTHONUNBUFFERED=1
w=/tmp/w
rm -rf "$w" && mkdir -p "$w/co"
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "code: $(cat gpu-libs/HEAD)"; echo "colocate args: $ARGS"; } >"$w/card.txt"
if [[ ${SUITES:-0} == 1 ]]; then
	KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so srcdir=. timeout 100 tests/kvshim-tests >"$w/tests-gpu.txt" 2>&1
	echo "suite rc=$? at $(($(date +%s) - t0)) s" >>"$w/card.txt"
	KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so CK_RUN_SUITE=ptds srcdir=. timeout 60 tests/kvshim-tests >"$w/tests-gpu-ptds.txt" 2>&1
	echo "ptds suite rc=$? at $(($(date +%s) - t0)) s" >>"$w/card.txt"
	KVSHIM_SUITE_OUT=$w timeout 300 python3 tests/gpu/hf_cb_fork.py >"$w/hf_cb_fork.txt" 2>&1
	echo "hf_cb_fork rc=$? at $(($(date +%s) - t0)) s" >>"$w/card.txt"
fi
nvidia-smi --query-gpu=memory.used --format=csv >>"$w/card.txt"
echo "colocate started at $(($(date +%s) - t0)) s: $(date)" >>"$w/card.txt"
# shellcheck disable=SC2086
timeout "${LIMIT:-560}" python3 tests/bench/colocate.py --cpu-offload-gib 4 --out "$w/co" $ARGS >"$w/colocate.txt" 2>&1 </dev/null
{ echo "colocate rc=$? at $(($(date +%s) - t0)) s"; date; } >>"$w/card.txt"
cp "$w"/*.txt "$OUT/"
[[ -f $w/hf_cb_fork.json ]] && cp "$w/hf_cb_fork.json" "$OUT/"
tar cJf "$OUT/co.tar.xz" -C "$w/co" .
cat "$w/card.txt"; grep -c '' "$w/tests-gpu.txt" 2>/dev/null; tail -n 3 "$w"/tests-gpu*.txt 2>/dev/null
cat "$w/hf_cb_fork.txt" 2>/dev/null | tail -n 30; tail -n 60 "$w/colocate.txt"
