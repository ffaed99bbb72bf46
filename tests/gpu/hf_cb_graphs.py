"""transformers continuous batching with CUDA graphs on and off, plain against
kvshim-run: tokens, tokens per second, and the whole process's GPU memory.

Workloads (random Llama-style models in bf16, no download; prompts of 264
random tokens, 64 new tokens each, greedy, through generate_batch):
- 28l: 28 layers, hidden 2048, 16 heads, 2 KV heads of 128, 48 requests,
  ContinuousBatchingConfig's defaults (block size 256): issue 11's case;
- 16l: tests/gpu/hf_cb.py's model (16 layers, 8 KV heads of 128), 32
  requests, block size 32.
Each with use_cuda_graph=True and False, plain and under scripts/kvshim-run
with kvshim's default settings (the transformers adapter attaches through
sitecustomize; no edit to transformers or to this script). Each run is a
fresh process serving the requests on one kept manager, 1 + HF_CB_PASSES
times (default 3): the first pass builds the cache, warms up (graphs) and
captures; the others are timed (their median counts) and their forward
calls and tokens counted, so a difference in scheduling shows. One timed
pass is too few for the 0.97x check without graphs: the passes of one
eager process took 5.3 to 8.9 s on an H200 (session 5); one timed pass a
process read 0.960x and 0.883x (28l, session 4) and 0.858x (16l, session
58) where three read 0.990x (28l, session 5).
Plain and kvshim runs alternate, the order flipped every round. The plain
runs' KV reads are padded as kvshim's adapter pads them by default (8192
tokens; built_tree.pad_plain_as_kvshim), so that both read the same shapes.

While a run goes, a thread here reads the child's GPU memory through NVML
every 50 ms (pynvml when importable, else nvidia-smi's compute-apps query;
the device's used memory less what it was before, where the pid is not
seen, as in a container).

Checks, per workload and graphs setting: tokens identical to the plain run
of the same round (both passes); no "Failed to warm up" under kvshim; the
kvshim run's NVML peak at most model weights + live KV at the peak + 4 GiB;
kvshim's peak physical KV pages at most live KV + one page per KV tensor +
the pages of the padding blocks + kvshim's page pool (KVSHIM_POOL_HIGH,
64 MiB, which kvshim's physical figure includes); tokens/s (median over
rounds) at least 0.97x plain's.

  python3 tests/gpu/hf_cb_graphs.py [--rounds N] [--models 28l,16l] [--graphs on,off]
  python3 tests/gpu/hf_cb_graphs.py --records FOLDER

Every run's JSON holds what the child wrote and what this script measured
of it (its NVML peak), so --records judges the runs recorded in FOLDER by
the same checks and prints the same table, running nothing and needing no
GPU: for a run cut short by a time limit, whose finished runs still count.
Every file in FOLDER named as a run's record counts (a run removes its
record before it starts, and writes it whole). A record written before the
NVML peak was kept in it fails the NVML check ("no NVML reading"). A
workload and graphs setting with fewer rounds than asked is judged on the
rounds it has; a run whose round lacks the other mode's run is named.

From the root of a built tree (after make; KVSHIM_LIB defaults to
.libs/libkvshim.so, KVSHIM_CONFIG_BIN to kvshim-config, KVSHIM_PYTHONPATH to
scripts/python; a gpu-libs/ folder there goes first on LD_LIBRARY_PATH, as
scripts/gpu-suite.sh puts it). With HF_CB_PASSES=1, about 7 minutes on an
H200 (12 of the 16 runs took 300 s on 2026-12-04); each further timed pass
adds 1.3 to 2.2 s a run with graphs and 4.8 to 8.1 s without (those runs'
timed passes), so about 9 minutes with the defaults (not yet timed). Prints a
table, writes hf_cb_graphs.json (and one JSON a run) under
$KVSHIM_SUITE_OUT (or .). Exit 0 when the checks hold, 1 if one fails, 2
for bad arguments or records, 77 without a GPU.
"""
import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import built_tree  # noqa: E402  the built tree's library and tools

MIB, GIB = 1 << 20, 1 << 30
PROMPT, NEW = 264, 64
# name -> (LlamaConfig fields, requests, ContinuousBatchingConfig fields)
MODELS = {
    "28l": (dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=2, head_dim=128),
            48, {}),
    "16l": (dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128),
            32, dict(block_size=32)),
}
NVML_MARGIN = 4 * GIB
POOL_HIGH = 64 * MIB            # KVSHIM_POOL_HIGH's default
MIN_RATIO = 0.97
WARMUP_FAILED = "Failed to warm up"


# ---- pure helpers (tested on the CPU by tests/python/test_hf_cb_graphs.py) ----

def parse_args(argv):
    """The options; bad ones exit 2 with a message naming them."""
    ap = argparse.ArgumentParser(prog="hf_cb_graphs.py", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int,
                    help="rounds of plain and kvshim runs, the order flipped each round (2)")
    ap.add_argument("--models", help="workloads: 28l, 16l (both)")
    ap.add_argument("--graphs", help="CUDA graphs: on, off (both)")
    ap.add_argument("--records", metavar="FOLDER",
                    help="judge the runs recorded in FOLDER; run nothing")
    args = ap.parse_args(argv)
    if args.records is not None:
        given = [o for o, v in (("--rounds", args.rounds), ("--models", args.models),
                                ("--graphs", args.graphs)) if v is not None]
        if given:
            ap.error("--records judges the runs it finds; %s cannot go with it"
                     % ", ".join(given))
        return args
    if args.rounds is None:
        args.rounds = ap.parse_args(["--rounds", os.environ.get("HF_CB_ROUNDS", "2")]).rounds
    args.models = args.models if args.models is not None else "28l,16l"
    args.graphs = args.graphs if args.graphs is not None else "on,off"
    if not 1 <= args.rounds <= 20:
        ap.error("--rounds must be from 1 to 20, not %d" % args.rounds)
    args.models = _choices(ap, "--models", args.models, MODELS)
    args.graphs = [g == "on" for g in _choices(ap, "--graphs", args.graphs, ("on", "off"))]
    return args


def _choices(ap, option, text, allowed):
    items = text.split(",")
    if not text or any(i not in allowed for i in items) or len(set(items)) != len(items):
        ap.error("%s takes a comma-separated list of %s, each once, not %r"
                 % (option, ", ".join(allowed), text))
    return items


def parse_compute_apps(text):
    """nvidia-smi --query-compute-apps=pid,used_memory (csv, no header, no
    units: MiB) -> {pid: bytes}, summed over GPUs."""
    used = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        pid = int(parts[0])
        used[pid] = used.get(pid, 0) + int(parts[1]) * MIB
    return used


def parse_gpu_used(text):
    """nvidia-smi --query-gpu=memory.used (csv, no header, no units: MiB)
    -> bytes, summed over GPUs; None when nothing could be read."""
    values = [int(v.strip()) for v in text.splitlines() if v.strip().isdigit()]
    return sum(values) * MIB if values else None


def pages_covering(start, end, page):
    """The pages of page bytes that the bytes [start, end) touch."""
    if end <= start:
        return 0
    return (end - 1) // page - start // page + 1


def record_name(model, graphs, mode, rnd):
    """The file one run's figures go to."""
    return "hf_cb_graphs_%s_%s_%s_r%d.json" % (model, "graphs" if graphs else "eager", mode, rnd)


RECORD = re.compile(r"hf_cb_graphs_(%s)_(graphs|eager)_(plain|kvshim)_r(0|[1-9]\d*)\.json\Z"
                    % "|".join(map(re.escape, MODELS)))
RECORD_KEYS = ("outputs", "tokens", "wall_s", "kv_peak", "warmup_failed")
ATTACHED_KEYS = ("weights", "ntensors", "page", "padding_bytes")   # the bounds' terms
# figures the checks and the table compute with: numbers where present (or null)
NUMBER_KEYS = ("tokens", "wall_s", "kv_peak", "weights", "live_kv", "ntensors", "page",
               "padding_bytes", "nvml_peak", "mask_bytes", "buffer_bytes", "reserved_peak",
               "adapter_s", "capacity", "read", "max_batch_tokens")


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def write_json(path, obj):
    """Write obj to path whole or not at all (a run stopped by a time limit
    leaves no half-written record)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def load_records(folder):
    """The runs recorded in folder (every file named as run_one names them),
    sorted by name, each with its model, graphs, mode and round as its
    file's name gives them. Raises ValueError naming what is wrong: no such
    folder, no record there, a record that is no JSON object, lacks a figure
    the checks read, holds one that is no number or no rate, or names
    another run than its file does."""
    if not os.path.isdir(folder):
        raise ValueError("--records: %s is not a folder" % folder)
    runs = []
    for name in sorted(os.listdir(folder)):
        m = RECORD.match(name)
        if not m:
            continue
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError("--records: %s: %s" % (path, e)) from None
        if not isinstance(r, dict):
            raise ValueError("--records: %s holds no JSON object" % path)
        needed = RECORD_KEYS + (ATTACHED_KEYS if "live_kv" in r else ())
        lacking = [k for k in needed if r.get(k) is None]
        if lacking:
            raise ValueError("--records: %s lacks %s" % (path, ", ".join(lacking)))
        bad = [k for k in NUMBER_KEYS if r.get(k) is not None and not _number(r[k])]
        if not isinstance(r.get("walls", []), list) or not all(map(_number, r.get("walls", []))):
            bad.append("walls")
        if not isinstance(r["warmup_failed"], bool):
            bad.append("warmup_failed")
        if bad:
            raise ValueError("--records: %s: %s not as a run writes it (a finite number; "
                             "walls a list of them, warmup_failed true or false)"
                             % (path, ", ".join("%s %s" % (k, json.dumps(r.get(k)))
                                                for k in bad)))
        if r["tokens"] <= 0 or r["wall_s"] <= 0:
            raise ValueError("--records: %s: tokens %r in %r s is no rate"
                             % (path, r["tokens"], r["wall_s"]))
        named = dict(model=m.group(1), graphs=m.group(2) == "graphs", mode=m.group(3),
                     round=int(m.group(4)))
        differ = [k for k in named if k in r and r[k] != named[k]]
        if differ:
            raise ValueError("--records: %s holds %s, not the %s its name gives"
                             % (path, ", ".join("%s %s" % (k, json.dumps(r[k])) for k in differ),
                                ", ".join("%s %s" % (k, json.dumps(named[k])) for k in differ)))
        r.setdefault("nvml_peak", None)
        r.setdefault("nvml_how", "not recorded")
        r.update(named)
        runs.append(r)
    if not runs:
        raise ValueError("--records: no hf_cb_graphs_*_r*.json record in %s" % folder)
    return runs


def nvml_bound(weights, live_kv):
    return weights + live_kv + NVML_MARGIN


def kv_bound(live_kv, ntensors, page, padding_bytes, pool=POOL_HIGH):
    return live_kv + ntensors * page + padding_bytes + pool


def summarize(runs):
    """Runs (each: model, graphs, mode, round and the child's figures) ->
    (rows, failures): one row per workload, graphs setting and mode."""
    rows, failures = [], []
    order = list(MODELS)
    keys = sorted({(r["model"], r["graphs"]) for r in runs},
                  key=lambda k: (order.index(k[0]) if k[0] in order else len(order), not k[1]))
    for model, graphs in keys:
        mine = [r for r in runs if r["model"] == model and r["graphs"] == graphs]
        plain = {r["round"]: r for r in mine if r["mode"] == "plain"}
        kv = {r["round"]: r for r in mine if r["mode"] == "kvshim"}
        where = "%s, graphs %s" % (model, "on" if graphs else "off")
        pairs = [(k, plain[n]) for n, k in kv.items() if n in plain]
        same = all(k["outputs"] == p["outputs"] for k, p in pairs) if pairs else None
        if same is False:
            failures.append("%s: tokens differ from plain" % where)
        tps = {m: statistics.median([r["tokens"] / r["wall_s"] for r in rs.values()])
               for m, rs in (("plain", plain), ("kvshim", kv)) if rs}
        ratio = tps["kvshim"] / tps["plain"] if len(tps) == 2 else None
        if ratio is not None and ratio < MIN_RATIO:
            failures.append("%s: tokens/s %.3fx of plain, under %.2fx" % (where, ratio, MIN_RATIO))
        for mode, rs in (("plain", plain), ("kvshim", kv)):
            if not rs:
                continue
            row = {"model": model, "graphs": graphs, "mode": mode, "identical": same,
                   "tps": tps[mode], "ratio": tps[mode] / tps["plain"] if "plain" in tps else None,
                   "rates": [r["tokens"] / r["wall_s"] for r in rs.values()]}
            worst = max(rs.values(), key=lambda r: r.get("nvml_peak") or 0)
            row.update({k: worst.get(k) for k in (
                "nvml_peak", "nvml_how", "weights", "live_kv", "kv_peak", "capacity", "read",
                "max_batch_tokens", "mask_bytes", "buffer_bytes", "reserved_peak", "graphs_made",
                "attn")})
            row["warmup_failed"] = any(r["warmup_failed"] for r in rs.values())
            if mode == "kvshim":
                attached = [r for r in rs.values() if "live_kv" in r]
                if len(attached) < len(rs):
                    failures.append("%s: the adapter did not attach" % where)
                row["nvml_bound"] = max((nvml_bound(r["weights"], r["live_kv"])
                                         for r in attached), default=None)
                row["kv_bound"] = max((kv_bound(r["live_kv"], r["ntensors"], r["page"],
                                                r["padding_bytes"]) for r in attached),
                                      default=None)
                for r in attached:
                    if r.get("nvml_peak") is None:
                        failures.append("%s, round %d: no NVML reading" % (where, r["round"]))
                    elif r["nvml_peak"] > nvml_bound(r["weights"], r["live_kv"]):
                        failures.append("%s, round %d: NVML peak %d MiB over weights + live KV "
                                        "+ 4 GiB = %d MiB" % (
                                            where, r["round"], r["nvml_peak"] // MIB,
                                            nvml_bound(r["weights"], r["live_kv"]) // MIB))
                    bound = kv_bound(r["live_kv"], r["ntensors"], r["page"], r["padding_bytes"])
                    if r["kv_peak"] > bound:
                        failures.append("%s, round %d: KV pages %d MiB over %d MiB"
                                        % (where, r["round"], r["kv_peak"] // MIB, bound // MIB))
                if row["warmup_failed"]:
                    failures.append("%s: the warm-up failed under kvshim" % where)
            rows.append(row)
    return rows, failures


def _mib(x):
    return "-" if x is None else "%.0f" % (x / MIB)


def table(rows):
    out = ["| model | graphs | run | identical | tokens/s (rounds) | vs plain | NVML peak MiB "
           "(bound) | weights MiB | live KV MiB | KV pages MiB (bound) | capacity / read "
           "tokens | mask MiB | other buffers MiB | warm-up failed |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kvs = r["mode"] == "kvshim"
        out.append("| %s | %s | %s | %s | %.0f (%s) | %s | %s%s | %s | %s | %s | %s / %s | %s | %s "
                   "| %s |" % (
                       r["model"], "on" if r["graphs"] else "off", r["mode"],
                       {True: "yes", False: "NO", None: "-"}[r["identical"]], r["tps"],
                       ", ".join("%.0f" % x for x in r["rates"]),
                       "-" if r["ratio"] is None else "%.3fx" % r["ratio"],
                       _mib(r["nvml_peak"]),
                       " (%s, %s)" % (_mib(r["nvml_bound"]), r["nvml_how"]) if kvs
                       else " (%s)" % r["nvml_how"],
                       _mib(r["weights"]), _mib(r["live_kv"]) if kvs else "-",
                       "%s (%s)" % (_mib(r["kv_peak"]), _mib(r["kv_bound"])) if kvs
                       else "%s (all reserved)" % _mib(r["kv_peak"]),
                       r["capacity"], r["read"] or r["capacity"], _mib(r["mask_bytes"]),
                       _mib(r["buffer_bytes"]), "yes" if r["warmup_failed"] else "no"))
    return "\n".join(out)


# ---- reading the child's GPU memory -----------------------------------------------

class GpuSampler(threading.Thread):
    """Reads a process's GPU memory every period seconds until stopped:
    .peak_pid (bytes NVML gives the pid, over all GPUs) and .peak_device
    (the GPUs' used memory less .base, read before the process started)."""

    def __init__(self, period=0.05):
        super().__init__(daemon=True)
        self.period, self.pid = period, None
        self.peak_pid = self.peak_device = None
        self._halt = threading.Event()
        self._nvml = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                             for i in range(pynvml.nvmlDeviceGetCount())]
            self.how = "pynvml"
        except Exception:
            self.how = "nvidia-smi"
        self.base = self._read()[1]

    def _read(self):
        """({pid: bytes}, device used bytes or None)."""
        try:
            if self._nvml is not None:
                n, used, total = self._nvml, {}, 0
                for h in self._handles:
                    for p in n.nvmlDeviceGetComputeRunningProcesses(h):
                        if p.usedGpuMemory is not None:     # None: not available here
                            used[p.pid] = used.get(p.pid, 0) + p.usedGpuMemory
                    total += n.nvmlDeviceGetMemoryInfo(h).used
                return used, total
            apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                   "--format=csv,noheader,nounits"], capture_output=True,
                                  text=True, timeout=10).stdout
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=10).stdout
            return parse_compute_apps(apps), parse_gpu_used(gpu)
        except Exception:
            return {}, None

    def run(self):
        while not self._halt.wait(self.period):
            self.sample()

    def sample(self):
        used, device = self._read()
        if self.pid in used:
            self.peak_pid = max(self.peak_pid or 0, used[self.pid])
        if device is not None and self.base is not None:
            self.peak_device = max(self.peak_device or 0, device - self.base)

    def finish(self):
        """(peak bytes, how it was read)."""
        self._halt.set()
        if self.is_alive():
            self.join()
        if self.peak_pid is not None:
            return self.peak_pid, "%s, pid" % self.how
        if self.peak_device is not None:
            return self.peak_device, "%s, device" % self.how
        return None, "%s, unread" % self.how


def _timed_passes():
    """HF_CB_PASSES: timed passes after the first, 1 to 10 (3)."""
    n = os.environ.get("HF_CB_PASSES", "3")
    if not n.isdigit() or not 1 <= int(n) <= 10:
        raise SystemExit("HF_CB_PASSES=%s: expected a number of passes from 1 to 10" % n)
    return int(n)


# ---- one run -----------------------------------------------------------------------

def child(model_name, graphs, out):
    import logging

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching import cache as cb_cache

    fields, n_req, cb_fields = MODELS[model_name]
    warnings = []

    class Seen(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())
    # continuous batching logs through a logger of its own, outside the
    # "transformers" tree ("Failed to warm up" among its messages)
    for name in ("transformers", "ContinuousBatchingLogger"):
        logging.getLogger(name).addHandler(Seen(logging.WARNING))

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **fields)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)     # made in bf16 on the GPU: no float32 copy
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(dtype)
    weights = sum(t.numel() * t.element_size()
                  for t in list(model.parameters()) + list(model.buffers()))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, cfg.vocab_size, (PROMPT,), generator=g).tolist()
               for _ in range(n_req)]
    caches, attn = [], []
    init = cb_cache.PagedAttentionCache.__init__

    def keep(self, *a, **k):
        init(self, *a, **k)
        caches.append(self)
        attn.append(model.config._attn_implementation)     # the paged one, while it runs
    cb_cache.PagedAttentionCache.__init__ = keep
    gen = GenerationConfig(max_new_tokens=NEW, do_sample=False, eos_token_id=-1, pad_token_id=0)
    cbc = ContinuousBatchingConfig(use_cuda_graph=graphs, **cb_fields)
    built_tree.pad_plain_as_kvshim(cbc)     # plain reads kvshim's shapes
    steps = []          # per pass: forward calls and the tokens they were given

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        steps[-1][0] += 1
        steps[-1][1] += int(ids.numel()) if ids is not None else 0
    model.register_forward_pre_hook(count, with_kwargs=True)
    walls, passes = [], []
    for _ in range(1 + _timed_passes()):
        steps.append([0, 0])
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = model.generate_batch(prompts, generation_config=gen, persistent_manager=True,
                                   continuous_batching_config=cbc, progress_bar=False)
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
        passes.append([list(o.generated_tokens) for o in res.values()])
    c = caches[0]
    kv = list(c.key_cache) + list(c.value_cache)
    t = kv[0]
    block_bytes = c.block_size * t.stride(0) * t.element_size()
    info = {"model": model_name, "graphs": graphs, "weights": weights,
            "wall_s": statistics.median(walls[1:]), "wall_first_s": walls[0],
            "walls": walls, "steps": steps, "tokens": sum(map(len, passes[1])),
            "outputs": passes[:2], "caches": len(caches), "capacity": c.num_blocks * c.block_size,
            "read": getattr(c, "kvshim_read_tokens", None),
            "read_how": getattr(c, "kvshim_read_how", None),
            "max_batch_tokens": c.max_batch_tokens, "block_bytes": block_bytes,
            "ntensors": len(kv), "attn": attn[0],
            "warmup_failed": any(WARMUP_FAILED in w for w in warnings),
            "warnings": warnings[:20], "reserved_peak": torch.cuda.max_memory_reserved(),
            "kv_peak": (c.num_blocks + 2) * block_bytes * len(kv)}
    info.update(_buffers(model))
    tracker = getattr(c, "kvshim_tracker", None)
    if tracker is not None:
        import kvshim
        st = kvshim.stats()
        page = st["page_bytes"]
        info.update(live_kv=tracker.peak * block_bytes * len(kv), kv_peak=st["peak_physical_bytes"],
                    page=page, refused=tracker.refused, adapter_s=tracker.busy,
                    padding_bytes=page * sum(pages_covering(
                        x.data_ptr() + c.num_blocks * block_bytes,
                        x.data_ptr() + (c.num_blocks + 2) * block_bytes, page) for x in kv))
    write_json(out, info)
    model.destroy_cached_continuous_batching_manager()


def _buffers(model):
    """The static batch buffers' bytes on the GPU: the attention masks, and
    the rest (indices, inputs, outputs, block table); graphs captured."""
    try:
        ios = model._cached_continuous_batching_manager.batch_processor.inputs_and_outputs
        sets = [p.device_io for p in ios.io_pairs] if hasattr(ios, "io_pairs") else [ios]
        mask = other = graphs = 0
        for s in sets:
            for t in (s.attention_mask or {}).values():
                mask += t.numel() * t.element_size()
            for name in ("read_index_storage", "write_index_storage", "_bulk_input_tensor",
                         "output_ids", "block_table"):
                t = getattr(s, name, None)
                if t is not None:
                    other += t.numel() * t.element_size()
            graphs += len(s.graphs._storage)
        return {"mask_bytes": mask, "buffer_bytes": other, "graphs_made": graphs}
    except AttributeError as e:
        return {"mask_bytes": None, "buffer_bytes": None, "graphs_made": None,
                "buffers_unread": str(e)}


# ---- the benchmark -------------------------------------------------------------------

def run_one(model, graphs, mode, rnd, out, env):
    path = os.path.join(out, record_name(model, graphs, mode, rnd))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model,
           "on" if graphs else "off", path]
    if mode == "kvshim":
        cmd = [built_tree.kvshim_run()] + cmd
    try:
        os.remove(path)             # an earlier run's record is not this one's
    except FileNotFoundError:
        pass
    sampler = GpuSampler()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env)
    sampler.pid = p.pid           # kvshim-run execs python: the same pid
    sampler.start()
    rc = p.wait()
    peak, how = sampler.finish()
    print("hf_cb_graphs: %s, graphs %s, %s, round %d: exit %d after %.0f s"
          % (model, "on" if graphs else "off", mode, rnd, rc, time.monotonic() - t0), flush=True)
    if rc:
        return None
    with open(path) as f:
        res = json.load(f)
    res.update(mode=mode, round=rnd, nvml_peak=peak, nvml_how=how)
    write_json(path, res)           # the record holds what was measured of it too
    return res


def main(argv):
    args = parse_args(argv)
    if args.records is not None:
        try:
            runs = load_records(args.records)
        except ValueError as e:
            print("hf_cb_graphs: %s" % e, file=sys.stderr)
            return 2
        rounds = len({r["round"] for r in runs})
        print("hf_cb_graphs: %d runs recorded in %s, judged as recorded (nothing run)"
              % (len(runs), args.records))
        for line in unpaired(runs):
            print("hf_cb_graphs: %s" % line)
        return report(runs, [], rounds, None, os.environ.get("KVSHIM_SUITE_OUT", "."))
    if not built_tree.has_gpu():
        return 77
    out = os.environ.get("KVSHIM_SUITE_OUT", ".")
    env = built_tree.environment()
    start = time.monotonic()
    runs, failed = [], []
    for rnd in range(args.rounds):
        for model in args.models:
            for graphs in args.graphs:
                for mode in (("plain", "kvshim") if rnd % 2 == 0 else ("kvshim", "plain")):
                    res = run_one(model, graphs, mode, rnd, out, env)
                    if res is None:         # the others still run: their figures still count
                        failed.append("%s, graphs %s, round %d: the %s run failed"
                                      % (model, "on" if graphs else "off", rnd, mode))
                    else:
                        runs.append(res)
    return report(runs, failed, args.rounds, time.monotonic() - start, out)


def unpaired(runs):
    """A line for each run whose round has no run of the other mode for its
    workload and graphs setting: it counts in its mode's tokens/s alone."""
    other = {"plain": "kvshim", "kvshim": "plain"}
    have = {(r["model"], r["graphs"], r["round"], r["mode"]) for r in runs}
    return ["%s, graphs %s, round %d: %s run without a %s run (its tokens/s counts, its "
            "tokens are compared with nothing)" % (m, "on" if g else "off", n, mode, other[mode])
            for m, g, n, mode in sorted(have, key=lambda k: (k[0], not k[1], k[2], k[3]))
            if (m, g, n, other[mode]) not in have]


def report(runs, failed, rounds, seconds, out):
    """Print the table and the runs' figures, write hf_cb_graphs.json under
    out; the exit status of the checks (failed: runs that did not finish)."""
    rows, failures = summarize(runs)
    failures = failed + failures
    print("\n%d rounds%s; tokens/s: the timed passes over the same requests on the "
          "kept manager (their median), median over rounds; NVML peak: the run's process, "
          "the worst round; KV pages: kvshim's peak physical pages (plain: all reserved)"
          % (rounds, "" if seconds is None else " in %.0f s" % seconds))
    print(table(rows))
    for r in runs:
        print("hf_cb_graphs: %s, graphs %s, %s, round %d: passes %s s; forward calls, tokens "
              "given: %s" % (r["model"], "on" if r["graphs"] else "off", r["mode"], r["round"],
                             ", ".join("%.2f" % w for w in r.get("walls", [])), r.get("steps")))
        if r["mode"] == "kvshim":
            print("hf_cb_graphs: %s, graphs %s, round %d: read budget %s (%s); the adapter's "
                  "kvshim calls %.1f ms; torch reserved at most %s MiB"
                  % (r["model"], "on" if r["graphs"] else "off", r["round"], r.get("read"),
                     r.get("read_how"), (r.get("adapter_s") or 0) * 1e3,
                     _mib(r.get("reserved_peak"))))
    with open(os.path.join(out, "hf_cb_graphs.json"), "w") as f:
        json.dump({"rows": rows, "failures": failures,
                   "runs": [{k: v for k, v in r.items() if k != "outputs"} for r in runs]},
                  f, indent=1)
    return built_tree.verdict("hf_cb_graphs", failures)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "on", sys.argv[4])
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
