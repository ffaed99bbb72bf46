"""A fork for parallel sampling that kvshim cannot back whole, on a GPU.

transformers' continuous batching serves a randomly initialised Llama-style
model (4 layers, 4 KV heads of 64, bf16; no download) under kvshim-run with
a 96 MiB limit (KVSHIM_LIMIT, sharing off), num_return_sequences 4 and block
sharing off, so that each request's fork copies all of its blocks for each
of its 3 children. One request has a 8192-token prompt: its blocks (32 MiB
of KV) fit the limit, its fork into 3 children (96 MiB more) never can.
Eight requests of 64 tokens, and their forks, fit beside it; four more are
added once the long request's result has come back.

transformers from 5.17 forks a request into no more children than its free
blocks fit (PagedAttentionCache.compute_max_num_forks, which reads the free
count kvshim shows it) and queues the others as new requests that prefill
the prompt again (sessions 52 to 54 found this on the GPU: the long
request's fork took 1 child, the other 2 ran after it). There the checks
are: the long request's fork took fewer children than it has, the long
request and all of its children finish, kvshim refused no fork and its
physical memory stayed within the limit. Before (no compute_max_num_forks)
transformers forks all children at once and kvshim's guard must refuse it:
the long request's result comes back FAILED with kvshim's reason (the
adapter fails it alone, where it would otherwise wait for ever), the
adapter counted one fork failed and said so. In both, every short request
and each of its children finishes, those added after the long request's
result too (the engine went on serving), and the engine ends. Prints what
came back; exit 0 when the checks hold, 1 if not, 77 without a GPU.
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import built_tree  # noqa: E402  the built tree's library and tools

LONG, SHORT, N_SHORT, N_AFTER, SEQS = 8192, 64, 8, 4, 4
TIMEOUT = 120


def record_forks():
    """Each fork transformers' cache makes, recorded under kvshim's guard
    (wrapped at the class: the guard wraps the instance's method): the
    parent's blocks in each layer group, its children, the blocks copied,
    what it raised, and kvshim's mapped and physical MiB in this process
    before and after; and each child a request state makes (5.17 makes
    them for the children it forks; those it queues anew it makes
    otherwise). Session 54's showed the long request's fork taking 1 child
    of 3."""
    from transformers.generation.continuous_batching import cache as cb_cache
    forks = []
    cls = getattr(cb_cache, "PagedAttentionCache", None)
    orig = getattr(cls, "fork_request", None)
    if not callable(orig):
        forks.append({"raised": "no PagedAttentionCache.fork_request to record"})
        return forks

    def mib(cache):
        tracker = getattr(cache, "kvshim_tracker", None)
        try:
            st = tracker.group.stats()
        except Exception as e:     # noqa: BLE001  (a figure to read, not a check)
            return repr(e)
        return {k: st[k] >> 20 for k in ("mapped_bytes", "physical_bytes")}

    def fork_request(self, source, dests, *args, **kwargs):
        dests = list(dests)
        rec = {"source": source, "children": len(dests), "before": mib(self),
               "source_blocks": [len(cm.block_table.get(source, ()))
                                 for cm in getattr(self, "group_cache_managers", ())]}
        forks.append(rec)
        try:
            out = orig(self, source, dests, *args, **kwargs)
        except Exception as e:     # noqa: BLE001  (recorded, raised as it was)
            rec["raised"] = repr(e)
            raise
        rec["copied"] = len(out[0]) if out else 0
        rec["after"] = mib(self)
        return out

    cls.fork_request = fork_request
    # (and each child a request state makes: session 54's one fork of the
    # long request had 1 child where it has 3, and the other two finished)
    from transformers.generation.continuous_batching import requests as cb_requests
    state_cls = getattr(cb_requests, "RequestState", None)
    state_fork = getattr(state_cls, "fork", None)
    if callable(state_fork):
        def fork(self, new_request_id, *args, **kwargs):
            forks.append({"state": self.request_id, "child": new_request_id,
                          "children_left": getattr(self, "num_children", None),
                          "status": getattr(getattr(self, "status", None), "name", None)})
            return state_fork(self, new_request_id, *args, **kwargs)
        state_cls.fork = fork
    return forks


def child(out):
    import torch
    import transformers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                      vocab_size=32000, max_position_embeddings=16384)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    gen = GenerationConfig(max_new_tokens=8, do_sample=True, top_k=50,
                           num_return_sequences=SEQS, eos_token_id=-1, pad_token_id=0)
    # (given to the constructor, as hf_cb_pack.py does; session 52's runs
    # set it on the object after, and kvshim refused no fork: whether
    # sharing stayed on, the cache's block_sharing below now says)
    cbc = ContinuousBatchingConfig(block_size=32, allow_block_sharing=False)
    forks = record_forks()
    from transformers.generation.continuous_batching import cache as cb_cache
    sized = callable(getattr(cb_cache.PagedAttentionCache, "compute_max_num_forks", None))
    manager = built_tree.started_manager(model, gen, cbc, "hf_cb_fork")
    g = torch.Generator().manual_seed(1)
    manager.add_request(torch.randint(1, cfg.vocab_size, (LONG,), generator=g).tolist(),
                        request_id="long")
    for i in range(N_SHORT):
        manager.add_request(torch.randint(1, cfg.vocab_size, (SHORT,), generator=g).tolist(),
                            request_id="short%d" % i)
    def with_children(names):
        names = list(names)
        return set(names) | {"%s__child#%d" % (n, k) for n in names for k in range(SEQS - 1)}

    want = {"long"} | with_children("short%d" % i for i in range(N_SHORT))
    if sized:       # (the long request's children run: forked or queued anew)
        want |= with_children(["long"])
    got, longs, end, after = {}, {}, time.monotonic() + TIMEOUT, False
    while want - set(got) and time.monotonic() < end:
        if "long" in got and not after:
            names = ["after%d" % i for i in range(N_AFTER)]
            for n in names:
                manager.add_request(
                    torch.randint(1, cfg.vocab_size, (SHORT,), generator=g).tolist(),
                    request_id=n)
            want |= with_children(names)
            after = True
        o = manager.get_result(timeout=max(0.1, end - time.monotonic()))
        if o is not None and o.request_id.startswith("long__child") and o.is_finished():
            longs[o.request_id] = len(o.generated_tokens)
        if o is None or o.request_id not in want:
            continue
        status = getattr(getattr(o, "status", None), "name", str(getattr(o, "status", "")))
        if status == "FAILED" or o.is_finished():
            got[o.request_id] = {"status": status, "error": getattr(o, "error", None),
                                 "tokens": len(o.generated_tokens)}
    cache = manager.batch_processor.cache
    tracker = cache.kvshim_tracker
    try:
        st = tracker.group.stats()
        limit, peak = st.get("limit_bytes"), st.get("peak_physical_bytes")
    except Exception as e:     # noqa: BLE001  (a figure to read, not a check)
        limit = peak = repr(e)
    # (what decides whether the fork could be backed: read when it was not refused)
    facts = {"num_blocks": getattr(cache, "num_blocks", None),
             "block_bytes": tracker.group.block_bytes, "tensors": tracker.group.ntensors,
             "block_sharing": [getattr(cm, "uses_block_sharing", None)
                               for cm in getattr(cache, "group_cache_managers", ())],
             "limit_bytes": limit, "peak_physical_bytes": peak, "long_children": longs,
             "forks": forks}
    info = {"transformers": transformers.__version__, "sized_forks": sized,
            "results": got, "after": after,
            "cache": facts,
            "missing": sorted(want - set(got)), "forks_failed": tracker.forks_failed,
            "forks_refused": tracker.forks_refused}
    info["stopped"] = False
    with open(out, "w") as f:           # (before stopping: a stop that hangs keeps it)
        json.dump(info, f, indent=1)
    manager.stop(block=True, timeout=30)
    info["stopped"] = not manager.is_running()
    with open(out, "w") as f:
        json.dump(info, f, indent=1)


def main():
    if not built_tree.has_gpu():
        return 77
    out = os.path.join(os.environ.get("KVSHIM_SUITE_OUT", "."), "hf_cb_fork.json")
    env = built_tree.environment()
    env.update(KVSHIM_LIMIT="96M", KVSHIM_SHARE="off")
    cmd = [built_tree.kvshim_run(), sys.executable, os.path.abspath(__file__), "--child", out]
    try:
        r = subprocess.run(cmd, env=env, timeout=TIMEOUT + 120, stderr=subprocess.PIPE,
                           text=True)
    except subprocess.TimeoutExpired:
        print("hf_cb_fork: the engine did not end in %d s" % (TIMEOUT + 120))
        if os.path.exists(out):
            print(open(out).read())
        return 1
    log = r.stderr or ""
    sys.stderr.write("".join(line + "\n" for line in log.splitlines() if "kvshim" in line))
    if r.returncode:
        sys.stderr.write(log[-4000:])
        print("hf_cb_fork: the engine failed (exit %d)" % r.returncode)
        return 1
    info = json.load(open(out))
    res = info["results"]
    print("hf_cb_fork: transformers %s (%s); %d results; forks refused %d, failed %d; "
          "engine stopped: %s"
          % (info["transformers"], "forks sized by the free blocks" if info.get("sized_forks")
             else "all children forked at once", len(res), info["forks_refused"],
             info["forks_failed"], info["stopped"]))
    long = res.get("long", {})
    print("hf_cb_fork: the long request: %s (%s)" % (long.get("status"), long.get("error")))
    cache = dict(info.get("cache") or {})
    forks = cache.pop("forks", None) or []
    print("hf_cb_fork: the cache: %s" % json.dumps(cache))
    for rec in forks:
        if (rec.get("source") == "long" or "raised" in rec
                or str(rec.get("state", "")).startswith("long")):
            print("hf_cb_fork: a fork: %s" % json.dumps(rec))
    print("hf_cb_fork: %d forks recorded, %d children made"
          % (sum("source" in r for r in forks), sum("state" in r for r in forks)))
    children = {k: v for k, v in res.items() if k != "long"}
    checks = {
        "requests were added after the long request's result": info["after"]
            and any(k.startswith("after") for k in res),
        "every short request and child finished, those after the long request's too":
            not info["missing"] and all(v["status"] == "FINISHED" for v in children.values()),
    }
    if info.get("sized_forks"):
        long_forks = [r for r in forks if r.get("source") == "long"]
        limit = cache.get("limit_bytes")
        checks.update({
            # (none forked, all queued anew, would be sized too)
            "the long request's fork took fewer children than it has (sized by the "
            "free blocks kvshim showed)":
                len(long_forks) <= 1
                and all(0 < f.get("children", SEQS) < SEQS - 1 and "raised" not in f
                        for f in long_forks),
            "the long request finished": long.get("status") == "FINISHED",
            "kvshim refused no fork": info["forks_refused"] == 0 and info["forks_failed"] == 0,
            "kvshim's physical memory stayed within its limit":
                isinstance(limit, int) and limit > 0
                and isinstance(cache.get("peak_physical_bytes"), int)
                and cache["peak_physical_bytes"] <= limit,
        })
    else:
        checks.update({
            "the long request failed with kvshim's reason":
                long.get("status") == "FAILED"
                and "kvshim cannot back the fork" in (long.get("error") or ""),
            "one fork failed": info["forks_failed"] == 1,
            "the adapter said so": "can never be backed" in log,
        })
    checks["the engine stopped"] = info["stopped"]
    for what, ok in checks.items():
        print("hf_cb_fork: %s: %s" % (what, "yes" if ok else "NO"))
    if info["missing"]:
        print("hf_cb_fork: no result for %s" % ", ".join(info["missing"]))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        # (a generation thread a stop left running would hold the exit)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(main())
