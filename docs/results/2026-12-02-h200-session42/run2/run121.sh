#!/usr/bin/env bash
# Session 42: what giving PyTorch's cache back costs, plain and under kvshim, alternated.
set -u
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo "code: $(cat gpu-libs/HEAD)"; } >"$OUT/card.txt"
for r in 1 2 3; do
	echo "== plain, round $r" >>"$OUT/giveback.txt"
	timeout 60 python3 gpu-libs/giveback_probe.py 10 >>"$OUT/giveback.txt" 2>&1
	echo "== kvshim, round $r" >>"$OUT/giveback.txt"
	LD_PRELOAD=$PWD/.libs/libkvshim.so timeout 60 python3 gpu-libs/giveback_probe.py 10 >>"$OUT/giveback.txt" 2>&1
done
cat "$OUT/card.txt"; grep -E "^==|median" "$OUT/giveback.txt"
