"""What building a KV cache costs, plain against kvshim, phase by phase.

Each run is a fresh process that first makes a CUDA context and loads 1 GiB
of weights (as an engine has before it builds its cache), then builds the
KV tensors of tests/gpu/hf_cb.py's cache (16 layers, K and V, 8 heads of
128, bf16, block size 32), sized from free memory as transformers sizes it
(90% of what is free), and zeroes the last two blocks of each (the padding
that transformers zeroes). A plain run takes them from torch.empty; a
kvshim run (under scripts/kvshim-run) takes them as the transformers
adapter does: a span per tensor (kvshim.tensors.span_tensor), its padding
mapped, then one kvshim Group over them. Runs alternate, plain first in
odd rounds, and the table gives the median of each phase in ms.

  python3 tests/bench/startup.py [--rounds N] [--json FILE]

From the root of a built tree (KVSHIM_LIB defaults to .libs/libkvshim.so).
Exits 77 without a GPU.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYERS, HEADS, HEAD_DIM, BLOCK = 16, 8, 128, 32


def child(mode):
    import torch

    t = time.perf_counter
    torch.cuda.init()
    weights = torch.empty(1 << 29, dtype=torch.bfloat16, device="cuda")
    torch.cuda.synchronize()
    free, _ = torch.cuda.mem_get_info()
    row = HEADS * HEAD_DIM * 2
    nblocks = int(free * 0.9) // (2 * LAYERS * BLOCK * row)
    shape = (nblocks * BLOCK, HEADS, HEAD_DIM)
    pad = 2 * BLOCK
    phases = {}

    def add(name, since):
        phases[name] = phases.get(name, 0.0) + (t() - since) * 1e3
    start = t()
    kv = []
    if mode == "plain":
        for _ in range(2 * LAYERS):
            s = t()
            kv.append(torch.empty(shape, dtype=torch.bfloat16, device="cuda"))
            add("tensors", s)
    else:
        import kvshim
        from kvshim import tensors
        s = t()
        kvshim.stats()
        add("kvshim start", s)
        for _ in range(2 * LAYERS):
            s = t()
            x = tensors.span_tensor(torch, shape, torch.bfloat16)
            add("tensors", s)
            s = t()
            kvshim.map(x.data_ptr() + (shape[0] - pad) * row, pad * row)
            add("padding mapped", s)
            kv.append(x)
    s = t()
    for x in kv:
        x[-pad:].zero_()
    torch.cuda.synchronize()
    add("padding zeroed", s)
    if mode != "plain":
        s = t()
        group = kvshim.Group([x.data_ptr() for x in kv], BLOCK * row, nblocks)
        add("group", s)
    phases["total"] = (t() - start) * 1e3
    out = {"mode": mode, "nblocks": nblocks, "bytes": 2 * LAYERS * shape[0] * row,
           "phases": phases}
    if mode != "plain":
        out["stats"] = kvshim.stats()
        group.close()
    del weights
    print(json.dumps(out))


def run(mode):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.setdefault("KVSHIM_LIB", os.path.join(ROOT, ".libs", "libkvshim.so"))
    env.setdefault("KVSHIM_CONFIG_BIN", os.path.join(ROOT, "kvshim-config"))
    env.setdefault("KVSHIM_PYTHONPATH", os.path.join(ROOT, "scripts", "python"))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode]
    if mode == "kvshim":
        cmd = [os.path.join(ROOT, "scripts", "kvshim-run"), "--"] + cmd
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if p.returncode:
        sys.exit("startup.py: the %s run failed (exit %d):\n%s" % (mode, p.returncode,
                                                                 p.stderr[-3000:]))
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write the runs here")
    ap.add_argument("--child", choices=("plain", "kvshim"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    if args.rounds < 1:
        ap.error("--rounds must be at least 1, not %d" % args.rounds)
    try:
        import torch
        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        print("startup.py: no GPU here, nothing measured")
        sys.exit(77)
    runs = {"plain": [], "kvshim": []}
    for r in range(args.rounds):
        for mode in (("plain", "kvshim") if r % 2 == 0 else ("kvshim", "plain")):
            runs[mode].append(run(mode))
    names = []
    for mode in ("plain", "kvshim"):
        for res in runs[mode]:
            names += [n for n in res["phases"] if n not in names]
    names.remove("total")
    names.append("total")
    print("KV cache of %d tensors, %d MiB in all; median over %d rounds, ms"
          % (2 * LAYERS, runs["plain"][0]["bytes"] >> 20, args.rounds))
    print("| phase | plain | kvshim |")
    print("| --- | --- | --- |")
    for n in names:
        cells = []
        for mode in ("plain", "kvshim"):
            v = [res["phases"][n] for res in runs[mode] if n in res["phases"]]
            cells.append("%.2f" % statistics.median(v) if v else "—")
        print("| %s | %s | %s |" % (n, cells[0], cells[1]))
    totals = {m: [res["phases"]["total"] for res in runs[m]] for m in runs}
    print("totals, plain: %s" % ", ".join("%.2f" % v for v in totals["plain"]))
    print("totals, kvshim: %s" % ", ".join("%.2f" % v for v in totals["kvshim"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
