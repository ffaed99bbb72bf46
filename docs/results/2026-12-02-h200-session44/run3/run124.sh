#!/usr/bin/env bash
# One short call (session 44, the device time left): static and kvshim on another seed and phase length, one replay each
# after a one-cycle warm-up; colocate in the foreground, its outputs under $OUT.
set -u
export LD_LIBRARY_PATH=$PWD/gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PYTHONUNBUFFERED=1
w=$OUT
mkdir -p "$w/co"
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "code: $(cat gpu-libs/HEAD)"; echo "colocate args: $ARGS"; } >"$w/card.txt"
# shellcheck disable=SC2086
timeout "${LIMIT:-400}" python3 tests/bench/colocate.py --cpu-offload-gib 4 --warmup --out "$w/co" $ARGS >"$w/colocate.txt" 2>&1
echo "colocate rc=$?" >>"$w/card.txt"; date >>"$w/card.txt"
tar cJf "$w/co.tar.xz" -C "$w/co" . && rm -rf "$w/co"
cat "$w/card.txt"; grep -E "^colocate:" "$w/colocate.txt" | tail -20
