"""transformers continuous batching with tensor parallelism (TP=2) under
kvshim-run, on a machine with two GPUs.

A randomly initialised Llama-style model (8 layers, hidden 2048, 8 KV heads
of 128, bf16; no download) is saved once, then served by two ranks under
torchrun (tp_plan="auto": each rank holds half the heads, and its half of
every KV block, on its own GPU): 32 requests of 264 prompt tokens, 64 new
tokens each, greedy, with generate_batch. Once plain and once under
kvshim-run with sharing off (README: "Known hazard under tensor
parallelism": a shared budget can make the ranks disagree), each a fresh
torchrun. The plain run's KV reads are padded as kvshim's adapter pads them
by default (8192 tokens; built_tree.pad_plain_as_kvshim), so that both read
the same shapes.

Checks: both runs end (a hang is a failure, after HF_CB_TP_TIMEOUT s) with
every rank's status 0; each rank's cache is on its own GPU (the shape of
its KV tensors is reported: half the KV heads each); under kvshim
each rank's KV spans are kvshim's (the adapter's tracker on its cache) and
kvshim backed pages on the rank's current GPU, and each GPU's memory
(nvidia-smi) stayed within half the weights, that rank's KV pages and 4 GiB
for the rest; rank 0's generated tokens are the plain run's (the ranks of
one run generate the same).
Reports each GPU's memory at most (nvidia-smi, every 200 ms: the whole
processes, not only KV) and each rank's KV pages at most.

Writes hf_cb_tp.json under $KVSHIM_SUITE_OUT (or .). Exit 0 when the checks
hold, 1 if not, 77 with fewer than two GPUs.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import built_tree  # noqa: E402  the built tree's library and tools

N_REQ, PROMPT, NEW, BLOCK = 32, 264, 64, 32
KV_HEADS = 8
OTHER_MIB = 4096        # a GPU's memory under kvshim beside weights and KV pages, at most
MIB = 1 << 20
# NVLink multicast stays off on shared hosts, in every process started here
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                "NVSHMEM_DISABLE_NVLS": "1"}


def rank_main(model_dir, out):
    """One rank under torchrun: serve the requests, write what it saw to
    out-RANK.json."""
    import torch
    import torch.distributed as dist
    from transformers import GenerationConfig, LlamaForCausalLM
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching import cache as cb_cache

    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    model = LlamaForCausalLM.from_pretrained(model_dir, tp_plan="auto",
                                             dtype=torch.bfloat16).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, model.config.vocab_size, (PROMPT,), generator=g).tolist()
               for _ in range(N_REQ)]
    caches = []
    init = cb_cache.PagedAttentionCache.__init__

    def kept_init(self, *a, **k):
        init(self, *a, **k)
        caches.append(self)

    cb_cache.PagedAttentionCache.__init__ = kept_init
    gen = GenerationConfig(max_new_tokens=NEW, do_sample=False, eos_token_id=-1, pad_token_id=0)
    t0 = time.perf_counter()
    cbc = ContinuousBatchingConfig(block_size=BLOCK)
    built_tree.pad_plain_as_kvshim(cbc)     # plain reads kvshim's shapes
    res = model.generate_batch(prompts, generation_config=gen, continuous_batching_config=cbc,
                               progress_bar=False)
    torch.cuda.synchronize()
    info = {"rank": rank, "device": torch.cuda.current_device(),
            "wall_s": time.perf_counter() - t0, "caches": len(caches),
            "outputs": [list(o.generated_tokens) for o in res.values()]}
    if caches:
        c = caches[0]
        info["cache_devices"] = sorted({t.device.index for t in c.key_cache + c.value_cache})
        info["num_blocks"] = c.num_blocks
        # a rank's KV tensors hold its half of the KV heads (4 of 8 here)
        info["kv_shape"] = list(c.key_cache[0].shape)
        tracker = getattr(c, "kvshim_tracker", None)
        info["tracker"] = tracker is not None
        if tracker is not None:
            import kvshim
            st = kvshim.stats()
            info.update(peak_blocks=tracker.peak, peak_physical=st["peak_physical_bytes"],
                        page=st["page_bytes"])
    json.dump(info, open("%s-%d.json" % (out, rank), "w"))
    dist.barrier()
    dist.destroy_process_group()


def sample_gpus(stop, peaks):
    """Each GPU's memory in use at most (MiB) until stop is set."""
    p = subprocess.Popen(["nvidia-smi", "--query-gpu=index,memory.used",
                          "--format=csv,noheader,nounits", "-lms", "200"],
                         stdout=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            try:
                i, used = (int(x) for x in line.split(","))
            except ValueError:
                continue
            peaks[i] = max(peaks.get(i, 0), used)
            if stop.is_set():
                break
    finally:
        p.kill()
        p.wait()


def run(model_dir, out, kvshim_on, timeout):
    """One torchrun of two ranks, plain or under kvshim-run. Returns (its
    status, seconds, each GPU's peak MiB, the ranks' records)."""
    env = built_tree.environment(dict(os.environ, **NO_MULTICAST))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", os.path.abspath(__file__), "--rank", model_dir, out]
    if kvshim_on:
        env["KVSHIM_SHARE"] = "off"
        cmd = [built_tree.kvshim_run()] + cmd
    stop, peaks = threading.Event(), {}
    th = threading.Thread(target=sample_gpus, args=(stop, peaks), daemon=True)
    th.start()
    t0 = time.perf_counter()
    log = open(out + ".log", "w")
    try:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "hung (%d s)" % timeout
    took = time.perf_counter() - t0
    stop.set()
    th.join(2)
    ranks = []
    for r in range(2):
        try:
            ranks.append(json.load(open("%s-%d.json" % (out, r))))
        except (OSError, ValueError):
            ranks.append(None)
    return rc, took, peaks, ranks


def main():
    if not built_tree.has_gpu():
        return 77
    import torch
    if torch.cuda.device_count() < 2:
        print("hf_cb_tp: fewer than two GPUs: nothing checked")
        return 77
    from transformers import LlamaConfig, LlamaForCausalLM
    timeout = int(os.environ.get("HF_CB_TP_TIMEOUT", "240"))
    outdir = os.environ.get("KVSHIM_SUITE_OUT", ".")
    work = tempfile.mkdtemp(prefix="hf-cb-tp-")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=8,
                      num_attention_heads=16, num_key_value_heads=KV_HEADS, head_dim=128,
                      vocab_size=32000, max_position_embeddings=4096)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    model.save_pretrained(os.path.join(work, "model"))
    del model
    runs, fails = {}, []
    for name, on in (("plain", False), ("kvshim", True)):
        out = os.path.join(work, name)
        rc, took, peaks, ranks = run(os.path.join(work, "model"), out, on, timeout)
        runs[name] = {"status": rc, "seconds": round(took, 1),
                      "gpu_peak_mib": peaks, "ranks": ranks}
        if rc != 0 or None in ranks:
            fails.append("%s: torchrun ended %s, rank records %s (its log: %s.log)"
                         % (name, rc, [r is not None for r in ranks], out))
            try:
                sys.stdout.write(open(out + ".log").read()[-4000:])
            except OSError:
                pass
            continue
        for r in ranks:
            if r["cache_devices"] != [r["rank"]]:
                fails.append("%s: rank %d's cache is on GPUs %s" % (name, r["rank"],
                                                                   r["cache_devices"]))
            print("hf_cb_tp: %s: rank %d's KV tensors are %s (of the model's %d KV heads)"
                  % (name, r["rank"], r["kv_shape"], KV_HEADS))
        if on:
            for r in ranks:
                if not r.get("tracker"):
                    fails.append("kvshim: rank %d's cache is not kvshim's" % r["rank"])
                elif r["peak_physical"] <= 0:
                    fails.append("kvshim: rank %d backed no KV page" % r["rank"])
                else:
                    # the whole GPU: the rank's half of the weights, its KV
                    # pages and OTHER_MIB for the rest (3181 MiB in all at
                    # the first run, session 30; plain: 81001)
                    bound = weights // 2 // MIB + r["peak_physical"] // MIB + OTHER_MIB
                    peak = peaks.get(r["rank"])
                    if peak is None or peak > bound:
                        fails.append("kvshim: GPU %d held %s MiB at most, over %d (half the "
                                     "weights, the rank's KV pages and %d MiB)"
                                     % (r["rank"], peak, bound, OTHER_MIB))
    if "outputs" in (runs["plain"]["ranks"][0] or {}) and \
            "outputs" in (runs["kvshim"]["ranks"][0] or {}):
        same = runs["plain"]["ranks"][0]["outputs"] == runs["kvshim"]["ranks"][0]["outputs"]
        runs["same_tokens"] = same
        if not same:
            fails.append("the tokens under kvshim are not the plain run's")
        for run_ in runs.values():
            if isinstance(run_, dict):
                for r in run_["ranks"]:
                    r.pop("outputs", None)
    print("| run | status | s | GPU 0 MiB at most | GPU 1 MiB at most | rank 0 KV pages MiB | "
          "rank 1 KV pages MiB |")
    print("|---|---|---|---|---|---|---|")
    for name in ("plain", "kvshim"):
        v = runs[name]
        kv = [("%.0f" % (r["peak_physical"] / MIB)) if r and "peak_physical" in r else "-"
              for r in v["ranks"]]
        print("| %s | %s | %.1f | %s | %s | %s | %s |" % (
            name, v["status"], v["seconds"], v["gpu_peak_mib"].get(0, "-"),
            v["gpu_peak_mib"].get(1, "-"), kv[0], kv[1]))
    runs["fails"] = fails
    json.dump(runs, open(os.path.join(outdir, "hf_cb_tp.json"), "w"), indent=1)
    for f in fails:
        print("hf_cb_tp: FAIL: " + f)
    print("hf_cb_tp: %s" % ("PASS" if not fails else "FAIL"))
    return 1 if fails else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rank":
        rank_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
