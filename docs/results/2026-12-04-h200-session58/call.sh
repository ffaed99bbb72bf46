#!/usr/bin/env bash
# one device call: optional hf_cb_pack, then the GPU suite's steps in ONLY
set -u
t0=$(date +%s)
export LD_LIBRARY_PATH=$PWD/gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PYTHONUNBUFFERED=1
cp gpu-libs/bench/* tests/bench/
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "code: $(cat gpu-libs/HEAD)"; echo "ONLY: ${ONLY:-}"; } >"$OUT/card.txt"
if [[ ${PACK:-0} == 1 ]]; then
	KVSHIM_SUITE_OUT=$OUT timeout "${PACK_LIMIT:-240}" python3 tests/gpu/hf_cb_pack.py >"$OUT/hf_cb_pack.txt" 2>&1
	echo "hf_cb_pack rc=$? at $(($(date +%s) - t0)) s" >>"$OUT/card.txt"
fi
if [[ -n ${ONLY:-} ]]; then
	KVSHIM_SUITE_TIMEOUT=${STEP_LIMIT:-300} KVSHIM_SUITE_ONLY="$ONLY" timeout "${SUITE_LIMIT:-400}" scripts/gpu-suite.sh "$OUT/suite" >"$OUT/suite.txt" 2>&1
	echo "suite rc=$? at $(($(date +%s) - t0)) s" >>"$OUT/card.txt"
fi
date >>"$OUT/card.txt"; [[ -d $OUT/suite ]] && tar cJf "$OUT/suite.tar.xz" -C "$OUT" suite && rm -rf "$OUT/suite"
cat "$OUT/card.txt"; tail -n 40 "$OUT/hf_cb_pack.txt" 2>/dev/null; tail -n 25 "$OUT/suite.txt" 2>/dev/null
