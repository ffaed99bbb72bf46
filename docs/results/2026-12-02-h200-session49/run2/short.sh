#!/usr/bin/env bash
# One call, no suites (they passed on this tree in this session's first call):
# colocate in the foreground, its outputs packed under $OUT.
set -u
export LD_LIBRARY_PATH=$PWD/gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PYTHONUNBUFFERED=1
w=/tmp/w
rm -rf "$w" && mkdir -p "$w/co"
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "code: $(cat gpu-libs/HEAD)"; echo "colocate args: $ARGS"; } >"$w/card.txt"
# shellcheck disable=SC2086
timeout "${LIMIT:-400}" python3 tests/bench/colocate.py --cpu-offload-gib 4 --out "$w/co" $ARGS >"$w/colocate.txt" 2>&1 </dev/null
{ echo "colocate rc=$?"; date; } >>"$w/card.txt"
cp "$w"/*.txt "$OUT/"
tar cJf "$OUT/co.tar.xz" -C "$w/co" .
cat "$w/card.txt"; tail -n 80 "$w/colocate.txt"
