#!/usr/bin/env python3
"""span_bandwidth.py - what a span's handle size costs, on a GPU: the time
to map it, the bandwidth kernels get reading and writing it (the attention
path), and the bandwidth of the copy engine over it (copies in and out of
a span: offload, KV transfer), against plain memory (PyTorch's allocator).

For each KVSHIM_PAGE in --pages, one process under kvshim-run reserves two
spans of --gib GiB (torch tensors over kvshim spans, kvshim.tensors), maps
them whole (map time per 2 MiB from kvshim_stats), and measures with CUDA
events, --iters times each (the median counts):
  - kernel copy: an elementwise kernel reading one span and writing the
    other (torch.mul(src, 1, out=dst)), bytes read + written per second;
  - gather: random 32 KiB blocks of one span gathered into the other
    (index_select), as paged attention reads blocks;
  - copy engine: cudaMemcpyAsync device to device (Tensor.copy_).
One more process does the same on plain memory. Processes alternate over
--rounds rounds, the order rotated each round; the table gives medians
over rounds and every round's figure.

  python3 tests/bench/span_bandwidth.py [--pages 2M,8M,32M,64M] [--gib 1]
      [--iters 20] [--rounds 2]

From the root of a built tree (as tests/gpu/hf_cb_graphs.py). Writes
span_bandwidth.json under $KVSHIM_SUITE_OUT (or .). Exit 0, 2 for bad
arguments, 77 without a GPU.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from built_tree import environment, has_gpu, kvshim_run  # noqa: E402
from long_prompt import pages_setting  # noqa: E402

GIB, MIB = 1 << 30, 1 << 20
BLOCK = 32 << 10


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="span_bandwidth.py", description=__doc__.split("\n")[0])
    ap.add_argument("--pages", default="2M,8M,32M,64M")
    ap.add_argument("--gib", type=int, default=1)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    if not 1 <= args.gib <= 16:
        ap.error("--gib must be from 1 to 16")
    if not 3 <= args.iters <= 1000:
        ap.error("--iters must be from 3 to 1000")
    if not 1 <= args.rounds <= 20:
        ap.error("--rounds must be from 1 to 20")
    args.pages = pages_setting(ap, args.pages)
    return args


def child(gib, iters, out):
    import torch
    kvshim = None
    if "libkvshim" in os.environ.get("LD_PRELOAD", ""):
        import kvshim
        from kvshim import tensors
    n = gib * GIB
    res = {}
    if kvshim is not None:
        src = tensors.span_tensor(torch, (n // 2,), torch.bfloat16)
        dst = tensors.span_tensor(torch, (n // 2,), torch.bfloat16)
        before = kvshim.stats()
        for t in (src, dst):
            kvshim.map(t.data_ptr(), n)
        after = kvshim.stats()
        res["page"] = after["page_bytes"]
        res["map_us_per_2m"] = (after["map_ns"] - before["map_ns"]) / 1e3 / (2 * n / (2 * MIB))
    else:
        src = torch.empty(n // 2, dtype=torch.bfloat16, device="cuda")
        dst = torch.empty(n // 2, dtype=torch.bfloat16, device="cuda")
    src.fill_(1)
    rows = n // BLOCK
    src_blocks, dst_blocks = src.view(rows, -1), dst.view(rows, -1)
    g = torch.Generator(device="cuda").manual_seed(0)
    idx = torch.randperm(rows, device="cuda", generator=g)

    def timed(fn, moved):
        fn()
        torch.cuda.synchronize()
        rates = []
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            rates.append(moved / (a.elapsed_time(b) / 1e3) / 1e9)
        return statistics.median(rates)

    res["kernel_gbs"] = timed(lambda: torch.mul(src, 1, out=dst), 2 * n)
    res["gather_gbs"] = timed(lambda: torch.index_select(src_blocks, 0, idx, out=dst_blocks),
                              2 * n)
    res["copy_engine_gbs"] = timed(lambda: dst.copy_(src), 2 * n)
    if not torch.equal(dst[:1024], src[:1024]):
        raise SystemExit("span_bandwidth: the copy read back wrong")
    with open(out, "w") as f:
        json.dump(res, f)


def main(argv):
    args = parse_args(argv)
    if not has_gpu():
        return 77
    out = os.environ.get("KVSHIM_SUITE_OUT", ".")
    env = environment()
    runs = [("plain", None)] + [("kvshim %s" % p, p) for p in args.pages]
    results = {label: [] for label, _ in runs}
    start = time.monotonic()
    for rnd in range(args.rounds):
        k = rnd % len(runs)
        for label, page in runs[k:] + runs[:k]:
            path = os.path.join(out, "span_bandwidth_%s_r%d.json" % (label.replace(" ", "_"), rnd))
            cmd = [sys.executable, os.path.abspath(__file__), "--child", str(args.gib),
                   str(args.iters), path]
            e = dict(env)
            if page is not None:
                cmd = [kvshim_run()] + cmd
                e["KVSHIM_PAGE"] = page
            rc = subprocess.call(cmd, env=e)
            if rc:
                print("span_bandwidth: %s, round %d: exit %d" % (label, rnd, rc), flush=True)
                results[label].append(None)
                continue
            with open(path) as f:
                results[label].append(json.load(f))
    print("\nspan_bandwidth: %d rounds in %.0f s; two %d GiB buffers; GB/s = bytes read + "
          "written per second, median of %d" % (args.rounds, time.monotonic() - start,
                                                 args.gib, args.iters))
    print("| memory | map µs per 2 MiB | kernel copy GB/s | random 32 KiB gather GB/s | "
          "copy engine GB/s | copy engine vs plain |")
    print("|---|---|---|---|---|---|")
    plain_ce = statistics.median([r["copy_engine_gbs"] for r in results["plain"] if r] or [0])
    failed = 0
    for label, _ in runs:
        rs = [r for r in results[label] if r]
        failed += len(results[label]) - len(rs)
        if not rs:
            continue

        def col(key, fmt="%.0f"):
            vals = [r[key] for r in rs]
            return (fmt + " (%s)") % (statistics.median(vals),
                                      ", ".join(fmt % v for v in vals))
        ce = statistics.median([r["copy_engine_gbs"] for r in rs])
        print("| %s | %s | %s | %s | %s | %s |" % (
            label, col("map_us_per_2m", "%.1f") if "map_us_per_2m" in rs[0] else "-",
            col("kernel_gbs"), col("gather_gbs"), col("copy_engine_gbs"),
            "%.2fx" % (ce / plain_ce) if plain_ce else "-"))
    with open(os.path.join(out, "span_bandwidth.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
