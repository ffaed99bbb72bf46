#!/usr/bin/env bash
# One short GPU call for sharing on by default: the card, the GPU suite,
# kvshim-run.test on the real driver, two kvshim-run processes with no
# KVSHIM_* variable set on the GPU's own segment, then hf_cb_graphs.py
# (16 layers, graphs on, one round; its kvshim runs set no KVSHIM_SHARE).
set -u
t0=$(date +%s)
export LD_LIBRARY_PATH=$PWD/gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PYTHONUNBUFFERED=1
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version,uuid --format=csv
  echo "code: $(cat gpu-libs/HEAD)"; } >"$OUT/card.txt"
KVSHIM_TEST_GPU=1 KVSHIM_LIB=$PWD/.libs/libkvshim.so srcdir=. timeout 100 tests/kvshim-tests >"$OUT/tests-gpu.txt" 2>&1
echo "suite rc=$? at $(($(date +%s) - t0)) s" >>"$OUT/card.txt"
KVSHIM_RUN=$PWD/scripts/kvshim-run KVSHIM_LIB=$PWD/.libs/libkvshim.so KVSHIM_CONFIG_BIN=$PWD/kvshim-config \
KVSHIM_PYTHONPATH=$PWD/scripts/python PYTHONPATH=$PWD/scripts/python timeout 100 bash tests/kvshim-run.test >"$OUT/kvshim-run-test.txt" 2>&1
echo "kvshim-run.test rc=$? at $(($(date +%s) - t0)) s" >>"$OUT/card.txt"
export KVSHIM_LIB=$PWD/.libs/libkvshim.so KVSHIM_PYTHONPATH=$PWD/scripts/python KVSHIM_CONFIG_BIN=$PWD/kvshim-config
{
	echo "the KVSHIM_ variables set (where the library and adapters are only):"
	env | grep '^KVSHIM_' 
	ls -la /dev/shm
	show='import kvshim; s = kvshim.stats(); print("budget", s["share_budget_bytes"], "members", s["share_members"])'
	coproc HOLD { scripts/kvshim-run python3 -c \
		'import sys, kvshim; kvshim.stats(); print("in", flush=True); sys.stdin.read()'; }
	hold_pid=$HOLD_PID hold_r=${HOLD[0]} hold_w=${HOLD[1]}
	read -r -t 60 line <&"$hold_r"; echo "first: $line"
	echo "second: $(scripts/kvshim-run python3 -c "$show")"
	ls -la /dev/shm
	exec {hold_w}>&-
	wait "$hold_pid"; echo "first exit $?"
	echo "after: $(scripts/kvshim-run python3 -c "$show")"
	echo "off: $(KVSHIM_SHARE=off scripts/kvshim-run python3 -c "$show")"
} >"$OUT/default.txt" 2>&1
echo "default check done at $(($(date +%s) - t0)) s" >>"$OUT/card.txt"
timeout 170 python3 tests/gpu/hf_cb_graphs.py --rounds 1 --models 16l --graphs on >"$OUT/hf_cb_graphs.txt" 2>&1
echo "hf_cb_graphs rc=$? at $(($(date +%s) - t0)) s" >>"$OUT/card.txt"
ls -la /dev/shm >>"$OUT/default.txt" 2>&1
date >>"$OUT/card.txt"
cat "$OUT/card.txt"; tail -3 "$OUT/tests-gpu.txt"; tail -5 "$OUT/kvshim-run-test.txt"; cat "$OUT/default.txt"; tail -30 "$OUT/hf_cb_graphs.txt"
