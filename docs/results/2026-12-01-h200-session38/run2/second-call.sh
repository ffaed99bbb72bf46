# The second call on the same machine, right after run114.sh
# (hf-off.txt, hf-auto.txt): hf_cb_graphs.py with sharing off, then auto.
export LD_LIBRARY_PATH=$PWD/gpu-libs PYTHONUNBUFFERED=1; for s in off auto; do echo "== KVSHIM_SHARE=$s $(date +%T)"; KVSHIM_SHARE=$s timeout 100 python3 tests/gpu/hf_cb_graphs.py --rounds 1 --models 16l --graphs on > $OUT/hf-$s.txt 2>&1; echo "rc=$?"; grep -E "^\| 16l|read budget|PASS|FAIL" $OUT/hf-$s.txt; done; ls -la /dev/shm
