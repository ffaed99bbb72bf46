#!/usr/bin/env python3
"""long_prompt.py - long prompts with warm and cold pages, and steady decode:
transformers continuous batching plain against kvshim-run, on a GPU.

The model (random Llama-style, bf16, no download): 28 layers, hidden 2048,
16 heads, 2 KV heads of 128; block size 32, max_batch_tokens 4096 (a 16K
prompt is prefilled in four steps), prefix caching off, CUDA graphs off
(--graphs on to turn them on). One fresh process per run:
  1. a short request builds the cache;
  2. --requests prompts of --prompt random tokens, one after the other,
     each asking for 2 new tokens: TTFT is the first token's timestamp less
     the time add_request was called; the median over requests 2.. counts
     (the first one sees a cold engine in every mode);
  3. steady decode: --decode N x M, N requests of 256 prompt tokens and M
     new tokens added at once; tokens/s from the first add to the last
     token.
The runs, in each round (their order rotated every round):
  - plain;
  - kvshim (default settings): the long prompts find the pages the one
    before freed still mapped (warm);
  - kvshim cold, one per --pages setting: KVSHIM_CACHE_MAX=0 and that
    KVSHIM_PAGE, so freed pages leave the span and every prompt maps pages
    again (as under sharing, when another engine took them back); with
    --no-ahead, each also with the adapter's mapping ahead off
    (KVSHIM_CB_AHEAD=off), to show what it takes off the engine's path.
Per request under kvshim: pages mapped and created, and the time the
allocator spent mapping, creating and zeroing them (kvshim_stats deltas),
the time the engine spent in kvshim calls (the adapter's), and the blocks
the adapter mapped ahead and the time that took on its own thread.

  python3 tests/bench/long_prompt.py [--rounds 3] [--pages 2M,32M]
      [--requests 6] [--prompt 16384] [--decode 64x64] [--graphs off]

From the root of a built tree (as tests/gpu/hf_cb_graphs.py). Prints a
table of medians over rounds with every round's figure and each mode's
ratio to plain; writes long_prompt.json under $KVSHIM_SUITE_OUT (or .).
Exit 0 when every run finished with the plain run's decode tokens, 1 if
not, 2 for bad arguments, 77 without a GPU.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from built_tree import environment, has_gpu, kvshim_run  # noqa: E402

MIB = 1 << 20
VOCAB = 32000
DECODE_PROMPT = 256
STAT_KEYS = ("pages_mapped", "map_ns", "pages_created", "create_ns", "pages_zeroed", "zero_ns")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="long_prompt.py", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pages", default="2M,32M", help="KVSHIM_PAGE of each cold run")
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--prompt", type=int, default=16384)
    ap.add_argument("--decode", default="64x64", help="requests x new tokens (0x0: none)")
    ap.add_argument("--graphs", choices=("on", "off"), default="off")
    ap.add_argument("--modes", default="", help="runs to make, by label (all)")
    ap.add_argument("--no-ahead", action="store_true",
                    help="also each cold run with KVSHIM_CB_AHEAD=off")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 20:
        ap.error("--rounds must be from 1 to 20")
    if not 2 <= args.requests <= 100:
        ap.error("--requests must be from 2 to 100")
    if not 32 <= args.prompt <= 1 << 17:
        ap.error("--prompt must be from 32 to 131072 tokens")
    try:
        n, m = (int(x) for x in args.decode.split("x"))
    except ValueError:
        ap.error("--decode takes N x M, as 64x64, not %r" % args.decode)
    if not (0 <= n <= 1024 and 0 <= m <= 4096):
        ap.error("--decode: at most 1024 requests of 4096 tokens")
    args.decode = (n, m)
    args.pages = pages_setting(ap, args.pages)
    known = [label for label, _ in modes(args, all_modes=True)]
    if args.modes and any(m not in known for m in args.modes.split(",")):
        ap.error("--modes takes labels among %s, not %r" % (", ".join(known), args.modes))
    return args


def pages_setting(ap, text):
    """--pages: a comma-separated list of page sizes in MiB, each a multiple
    of 2 (the granularity) written as 2M, 32M...; bad ones exit 2."""
    pages = text.split(",")
    for p in pages:
        if not (p[:-1].isdigit() and p[-1:] == "M" and int(p[:-1]) % 2 == 0
                and 2 <= int(p[:-1]) <= 1024):
            ap.error("--pages takes sizes from 2M to 1024M, multiples of 2M, comma-separated, "
                     "not %r" % text)
    return pages


def modes(args, all_modes=False):
    """[(label, env for kvshim or None for plain)]."""
    out = [("plain", None), ("kvshim", {})]
    for p in args.pages:
        out.append(("kvshim cold %s" % p, {"KVSHIM_CACHE_MAX": "0", "KVSHIM_PAGE": p}))
        if args.no_ahead:
            out.append(("kvshim cold %s no ahead" % p, {"KVSHIM_CACHE_MAX": "0",
                                                         "KVSHIM_PAGE": p,
                                                         "KVSHIM_CB_AHEAD": "off"}))
    if args.modes and not all_modes:
        keep = args.modes.split(",")
        out = [m for m in out if m[0] in keep]
    return out


# ---- the child: one engine ---------------------------------------------------------

def child(spec):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    kvshim = None
    if "libkvshim" in os.environ.get("LD_PRELOAD", ""):
        import kvshim
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=spec["prompt"] + 64,
                      hidden_size=2048, intermediate_size=5632, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=2, head_dim=128)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    gen = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0, max_new_tokens=2)
    cbc = ContinuousBatchingConfig(block_size=32, max_batch_tokens=4096,
                                   allow_block_sharing=False, use_cuda_graph=spec["graphs"])
    manager = model.init_continuous_batching(generation_config=gen,
                                             continuous_batching_config=cbc)
    manager.start()

    def serve(reqs):
        """reqs: [(id, ids, new)] added at once -> ({id: (submitted, output)}, wall)."""
        sub, done = {}, {}
        t0 = time.perf_counter()
        for rid, ids, new in reqs:
            sub[rid] = time.perf_counter()
            manager.add_request(ids, request_id=rid, max_new_tokens=new, record_timestamps=True)
        while len(done) < len(reqs):
            out = manager.get_result(timeout=120)
            if out is None:
                raise SystemExit("long_prompt: no result in 120 s")
            if out.is_finished():
                done[out.request_id] = (sub[out.request_id], out)
        return done, time.perf_counter() - t0

    def stats():
        if kvshim is None:
            return {}
        st = kvshim.stats()
        tracker = getattr(manager.batch_processor.cache, "kvshim_tracker", None)
        return dict({k: st[k] for k in STAT_KEYS}, adapter_s=tracker.busy if tracker else 0.0,
                    ahead_s=getattr(tracker, "ahead_busy", 0.0),
                    ahead_hits=getattr(tracker, "ahead_hits", 0), physical=st["physical_bytes"])

    serve([("warmup", list(range(1, 65)), 2)])
    g = random.Random(7)
    long = []
    for i in range(spec["requests"]):
        ids = [g.randrange(1, VOCAB) for _ in range(spec["prompt"])]
        before = stats()
        done, _ = serve([("long%d" % i, ids, 2)])
        after = stats()
        submitted, out = done["long%d" % i]
        row = {"ttft": out.timestamps[0] - submitted, "tokens": list(out.generated_tokens)}
        row.update({k: after[k] - before[k] for k in before if k != "physical"})
        if after:
            row["physical"] = after["physical"]
        long.append(row)
    n, m = spec["decode"]
    decode = None
    if n and m:
        reqs = [("d%d" % i, [g.randrange(1, VOCAB) for _ in range(DECODE_PROMPT)], m)
                for i in range(n)]
        done, wall = serve(reqs)
        tokens = {rid: list(o.generated_tokens) for rid, (_, o) in done.items()}
        decode = {"wall_s": wall, "tokens": sum(map(len, tokens.values())),
                  "outputs": [tokens[r[0]] for r in reqs]}
    with open(spec["out"], "w") as f:
        json.dump({"long": long, "decode": decode}, f)
    manager.stop(block=True, timeout=60)


# ---- the parent ---------------------------------------------------------------------

def run_one(args, label, extra, rnd, out, env):
    path = os.path.join(out, "long_prompt_%s_r%d.json" % (label.replace(" ", "_"), rnd))
    spec = {"prompt": args.prompt, "requests": args.requests, "decode": args.decode,
            "graphs": args.graphs == "on", "out": path}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    e = dict(env)
    if extra is not None:
        cmd = [kvshim_run()] + cmd
        e.update(extra)
    t0 = time.monotonic()
    rc = subprocess.call(cmd, env=e)
    print("long_prompt: %s, round %d: exit %d after %.0f s" % (label, rnd, rc,
                                                              time.monotonic() - t0), flush=True)
    if rc:
        return None
    with open(path) as f:
        return json.load(f)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def summarize(results, labels):
    """results: {label: [run or None]} -> (lines, failures)."""
    lines = ["| run | long-prompt TTFT ms, median of requests 2.. (rounds) | vs plain | "
             "decode tokens/s (rounds) | vs plain | per prompt: pages mapped / created | "
             "map / create / zero ms | engine in kvshim ms | mapped ahead: blocks / ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    failures = []
    plain = [r for r in results.get("plain", []) if r]
    base_ttft = med([med([x["ttft"] for x in r["long"][1:]]) for r in plain])
    base_tps = med([r["decode"]["tokens"] / r["decode"]["wall_s"] for r in plain if r["decode"]])
    ref = plain[0]["decode"]["outputs"] if plain and plain[0]["decode"] else None
    for label in labels:
        runs = [r for r in results.get(label, []) if r]
        if len(runs) < len(results.get(label, [])):
            failures.append("%s: %d run(s) failed" % (label, len(results[label]) - len(runs)))
        if not runs:
            continue
        ttfts = [med([x["ttft"] for x in r["long"][1:]]) for r in runs]
        tps = [r["decode"]["tokens"] / r["decode"]["wall_s"] for r in runs if r["decode"]]
        if ref is not None:
            for r in runs:
                if r["decode"] and r["decode"]["outputs"] != ref:
                    failures.append("%s: decode tokens differ from plain's" % label)
                    break
        later = [x for r in runs for x in r["long"][1:]]
        if "pages_mapped" in later[0]:
            pages = "%.0f / %.0f" % (med([x["pages_mapped"] for x in later]),
                                     med([x["pages_created"] for x in later]))
            times = "%.1f / %.1f / %.1f" % tuple(med([x[k] / 1e6 for x in later])
                                                 for k in ("map_ns", "create_ns", "zero_ns"))
            inside = "%.1f" % med([x["adapter_s"] * 1e3 for x in later])
            ahead = "%.0f / %.1f" % (med([x["ahead_hits"] for x in later]),
                                     med([x["ahead_s"] * 1e3 for x in later]))
        else:
            pages = times = inside = ahead = "-"
        lines.append("| %s | %.1f (%s) | %.3fx | %s | %s | %s | %s | %s | %s |" % (
            label, med(ttfts) * 1e3, ", ".join("%.1f" % (t * 1e3) for t in ttfts),
            med(ttfts) / base_ttft, "%.0f (%s)" % (med(tps), ", ".join("%.0f" % t for t in tps))
            if tps else "-", "%.3fx" % (med(tps) / base_tps) if tps else "-", pages, times,
            inside, ahead))
    return lines, failures


def main(argv):
    args = parse_args(argv)
    if not has_gpu():
        return 77
    out = os.environ.get("KVSHIM_SUITE_OUT", ".")
    env = environment()
    runs = modes(args)
    results = {label: [] for label, _ in runs}
    start = time.monotonic()
    for rnd in range(args.rounds):
        k = rnd % len(runs)
        for label, extra in runs[k:] + runs[:k]:
            results[label].append(run_one(args, label, extra, rnd, out, env))
    lines, failures = summarize(results, [label for label, _ in runs])
    print("\nlong_prompt: %d rounds in %.0f s; %d prompts of %d tokens one after the other, "
          "graphs %s; decode %dx%d" % (args.rounds, time.monotonic() - start, args.requests,
                                       args.prompt, args.graphs, *args.decode))
    print("\n".join(lines))
    with open(os.path.join(out, "long_prompt.json"), "w") as f:
        json.dump({"args": vars(args), "results": {
            label: [None if r is None else dict(r, decode=r["decode"] and {
                k: v for k, v in r["decode"].items() if k != "outputs"}) for r in rs]
            for label, rs in results.items()}, "failures": failures}, f, indent=1)
    for line in failures:
        print("long_prompt: FAIL: %s" % line)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
