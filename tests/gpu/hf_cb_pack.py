"""transformers continuous batching with KVSHIM_CB_PACK: blocks in use moved
between pages while requests decode, against a plain run of the same
requests: the tokens must be the same.

One engine (a random 16-layer Llama-style model in bf16, block size 32,
no download) serves REQUESTS requests of PROMPT random tokens each, with
8 to 173 new tokens (greedy, no EOS), submitted at once through
add_request, CUDA graphs on and off, no prefix cache (a finished
request's blocks become free ids on the pages in use, what packing moves
blocks onto). Plain, then under scripts/kvshim-run with
KVSHIM_CB_PACK=on, where this script stands in for kvshim's ask
(kvshim.Group.share_asked, which the adapter's tracker reads) in the
engine: every ASK_EVERY reads, it asks for the pages packing and the
prefix cache could give back then (as the fair shares ask an engine at
its share when another waits), and the ask falls as they go back; the
adapter's preemptions are turned off in that run, so that the only thing
the asks do is move blocks (a preemption would change the batches, and
bf16 sums with them). Requests finishing at different times leave their
pages part used, which is what packing empties.

Checks, per graphs setting: every request finished in both runs, and its
tokens identical to the plain run's (whose KV reads are padded as kvshim's
adapter pads them by default: built_tree.pad_plain_as_kvshim); blocks moved (the tracker's figures) and pages emptied by it; no
request preempted. Prints a table, writes hf_cb_pack.json under
$KVSHIM_SUITE_OUT (or .). Exit 0 when the checks hold, 1 if one fails, 77
without a GPU.

  python3 tests/gpu/hf_cb_pack.py [--graphs on,off]
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import built_tree  # noqa: E402  the built tree's library and tools

REQUESTS = 48
PROMPT = 200
ASK_EVERY = 25
ASK_READS = 8
MODEL = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
             num_attention_heads=16, num_key_value_heads=8, head_dim=128)


def new_tokens(i):
    """Request i's new tokens: 8 to 192, so that requests end apart."""
    return 8 + (i * 53) % 185


def compare(plain, packed):
    """The requests whose tokens differ between the two runs' outputs
    ({request id: tokens}), and those one of them lacks."""
    ids = set(plain) | set(packed)
    return sorted(r for r in ids if plain.get(r) != packed.get(r))


def failures(graphs, plain, packed):
    """What fails of one graphs setting's pair of runs."""
    name = "graphs %s" % ("on" if graphs else "off")
    out = []
    if plain is None or packed is None:
        return ["%s: a run failed" % name]
    for run, what in ((plain, "plain"), (packed, "packed")):
        if len(run["outputs"]) != REQUESTS:
            out.append("%s: the %s run finished %d of %d requests"
                       % (name, what, len(run["outputs"]), REQUESTS))
    diff = compare(plain["outputs"], packed["outputs"])
    if diff:
        out.append("%s: %d requests' tokens differ from the plain run's (first: %s)"
                   % (name, len(diff), diff[0]))
    if not packed.get("moved"):
        out.append("%s: no block was moved" % name)
    if packed.get("preempted"):
        out.append("%s: %d requests preempted" % (name, packed["preempted"]))
    return out


def child(graphs, pack, out):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **MODEL)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, cfg.vocab_size, (PROMPT,), generator=g).tolist()
               for _ in range(REQUESTS)]
    gen = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0, max_new_tokens=8)
    # (no prefix cache: a finished request's blocks then free ids on the
    # pages in use, which is what packing moves blocks onto)
    cbc = ContinuousBatchingConfig(block_size=32, use_cuda_graph=graphs, allow_block_sharing=False)
    built_tree.pad_plain_as_kvshim(cbc)     # plain reads kvshim's shapes
    manager = built_tree.started_manager(model, gen, cbc, "hf_cb_pack", 120)
    cache = manager.batch_processor.cache
    tracker = getattr(cache, "kvshim_tracker", None)
    if pack:
        if tracker is None:
            raise SystemExit("hf_cb_pack: the adapter did not attach")
        stand_in_for_the_ask(manager.batch_processor, tracker)
    for i, p in enumerate(prompts):
        manager.add_request(p, request_id="q%d" % i, max_new_tokens=new_tokens(i))
    outputs, t0 = {}, time.monotonic()
    while len(outputs) < REQUESTS and time.monotonic() - t0 < 300:
        res = manager.get_result(timeout=1)
        if res is not None and res.is_finished() and res.request_id in ("q%d" % i
                                                                       for i in range(REQUESTS)):
            outputs[res.request_id] = list(res.generated_tokens)
    manager.stop(block=True, timeout=60)
    info = {"graphs": graphs, "pack": pack, "outputs": outputs,
            "wall_s": time.monotonic() - t0}
    if tracker is not None:
        info.update(moved=tracker.moved, packed_pages=tracker.packed_pages,
                    preempted=tracker.preempted, dropped=tracker.dropped,
                    unused_pages=tracker.unused_pages, asks=tracker.asks)
    with open(out, "w") as f:
        json.dump(info, f)


def stand_in_for_the_ask(proc, tracker):
    """kvshim's ask in this engine, for the check (see the top): every
    ASK_EVERY reads, the page indices packing and the prefix cache could
    give back then, falling as pages go back, for ASK_READS reads at most
    (a pass reads it a few times; the rule's ask goes when the statement
    does); no preemption; and no cushion kept (alone on a GPU, the
    scheduler's margin in it is 0.15 of the blocks the engine can have,
    most of the GPU's memory, and nothing would move: this check is about
    what moving does to the tokens; the policy is the adapter tests'); and
    the engine taken as sharing its budget with other processes, which
    packing needs (this run has none: the stand-in is the only one who
    asks)."""
    import kvshim
    from kvshim.adapters import transformers_cb
    bm = proc.cache._block_manager
    state = {"reads": 0, "want": 0, "from": 0, "at": 0}

    def asked():
        state["reads"] += 1
        gone = tracker.emptied - state["from"]
        if state["want"] > gone and state["reads"] - state["at"] < ASK_READS:
            return (state["want"] - gone) * tracker.page_index_bytes
        state["want"] = 0
        if state["reads"] % ASK_EVERY == 0:
            init = bm._init_block_ids
            pages = len(tracker.pack_plan(init)) + len(tracker.cache_only_pages(init))
            if pages:
                state.update(want=pages, at=state["reads"], **{"from": tracker.emptied})
                return pages * tracker.page_index_bytes
        return 0
    replace(kvshim.Group, "share_asked", lambda group: asked())
    replace(transformers_cb, "_shared", lambda proc: True)
    replace(transformers_cb, "_cushion_blocks", lambda proc: 0)
    replace(transformers_cb, "_victims", lambda proc, tracker: [])
    replace(transformers_cb, "_give_back_one", lambda proc, tracker, victim=None: False)


def replace(owner, name, fn):
    """owner's name (the adapter's, or kvshim.Group's: what the tracker
    reads kvshim's ask through) becomes fn; one that is not there stops
    the run, so that a stand-in the adapter no longer calls cannot pass
    for one that asked nothing (as kvshim.share_asked did once the
    tracker read its group's ask)."""
    if not callable(getattr(owner, name, None)):
        raise SystemExit("hf_cb_pack: %s has no %s to stand in for: this script is older "
                         "than the adapter" % (getattr(owner, "__name__", owner), name))
    setattr(owner, name, fn)


def run(graphs, pack, out, env):
    path = os.path.join(out, "hf_cb_pack_%s_%s.json" % ("graphs" if graphs else "eager",
                                                         "pack" if pack else "plain"))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "on" if graphs else "off",
           "pack" if pack else "plain", path]
    if pack:
        cmd = [built_tree.kvshim_run()] + cmd
        env = dict(env, KVSHIM_CB_PACK="on")
    t0 = time.monotonic()
    rc = subprocess.call(cmd, env=env)
    print("hf_cb_pack: graphs %s, %s: exit %d after %.0f s" % (
        "on" if graphs else "off", "pack" if pack else "plain", rc, time.monotonic() - t0),
        flush=True)
    if rc:
        return None
    with open(path) as f:
        return json.load(f)


def main(argv):
    ap = argparse.ArgumentParser(prog="hf_cb_pack.py", description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", default="on,off", help="CUDA graphs: on, off (both)")
    args = ap.parse_args(argv)
    graphs = args.graphs.split(",")
    if not graphs or any(g not in ("on", "off") for g in graphs) or len(set(graphs)) != len(graphs):
        ap.error("--graphs takes on, off or both, each once, not %r" % args.graphs)
    if not built_tree.has_gpu():
        return 77
    out = os.environ.get("KVSHIM_SUITE_OUT", ".")
    env = built_tree.environment()
    bad, rows = [], []
    for g in (x == "on" for x in graphs):
        plain, packed = run(g, False, out, env), run(g, True, out, env)
        bad += failures(g, plain, packed)
        if plain and packed:
            rows.append("| %s | %d | %d | %d | %d | %d | %d |" % (
                "on" if g else "off", len(packed["outputs"]),
                len(compare(plain["outputs"], packed["outputs"])), packed.get("asks", 0),
                packed.get("moved", 0), packed.get("packed_pages", 0),
                packed.get("unused_pages", 0)))
    print("| graphs | requests | tokens differ | asks | blocks moved | pages emptied by moving "
          "| pages of the prefix cache given |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    with open(os.path.join(out, "hf_cb_pack.json"), "w") as f:
        json.dump({"rows": rows, "failures": bad}, f, indent=1)
    return built_tree.verdict("hf_cb_pack", bad)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2] == "on", sys.argv[3] == "pack", sys.argv[4])
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
