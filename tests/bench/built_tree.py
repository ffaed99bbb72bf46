"""What a GPU script needs to run kvshim from a built tree (after make):
the environment of a child run plain or under scripts/kvshim-run, as
scripts/gpu-suite.sh sets it; a transformers continuous-batching manager
started and warmed up; the verdict a check prints. Imported by the
benchmarks here and by tests/gpu's scripts; runs nothing itself."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def environment(base=None):
    """A copy of base (os.environ) without LD_PRELOAD, with the tree's
    library, kvshim-config and Python package as defaults (KVSHIM_LIB,
    KVSHIM_CONFIG_BIN, KVSHIM_PYTHONPATH) and a gpu-libs/ folder, where the
    tree has one (libraries the built programs need that the GPU machine
    lacks), first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    env.pop("LD_PRELOAD", None)
    env.setdefault("KVSHIM_LIB", os.path.join(ROOT, ".libs", "libkvshim.so"))
    env.setdefault("KVSHIM_CONFIG_BIN", os.path.join(ROOT, "kvshim-config"))
    env.setdefault("KVSHIM_PYTHONPATH", os.path.join(ROOT, "scripts", "python"))
    libs = os.path.join(ROOT, "gpu-libs")
    if os.path.isdir(libs):
        env["LD_LIBRARY_PATH"] = libs + (":" + env["LD_LIBRARY_PATH"]
                                         if env.get("LD_LIBRARY_PATH") else "")
    return env


def kvshim_run():
    """The tree's kvshim-run, to put before a command (KVSHIM_RUN names it
    where the build tree is not the source tree, as make check sets it)."""
    return os.environ.get("KVSHIM_RUN") or os.path.join(ROOT, "scripts", "kvshim-run")


def adapter_reads():
    """kvshim's transformers adapter's module of read budgets and padding
    (transformers_cb_reads), from the tree's Python package
    (KVSHIM_PYTHONPATH where make check sets it). Importing it loads
    neither libkvshim (kvshim loads it at its first call) nor the adapter's
    import hook (kvshim-run's sitecustomize installs that): a plain run
    stays plain."""
    path = os.environ.get("KVSHIM_PYTHONPATH") or os.path.join(ROOT, "scripts", "python")
    if path not in sys.path:
        sys.path.insert(0, path)
    from kvshim.adapters import transformers_cb_reads
    return transformers_cb_reads


def adapter_kv_pad():
    """The padding of a step's KV read that kvshim's transformers adapter
    sets by default where transformers' own is coarser
    (KVSHIM_CB_KV_PAD=auto: KV_PAD_AUTO, in tokens)."""
    return adapter_reads().KV_PAD_AUTO


def pad_plain_as_kvshim(cbc):
    """In a plain run (no kvshim preloaded), give the continuous batching
    config cbc the KV padding kvshim's adapter sets by default (its
    auto_kv_pad), as the adapter does under kvshim-run: a plain run and a
    kvshim one then read the same shapes, so that their tokens may be
    compared bit for bit and their speed tells kvshim's cost apart from
    the padding's. Returns the padding set, or None where the config keeps
    its own (under kvshim, where the adapter sets it; as fine; no such
    setting)."""
    if "libkvshim" in os.environ.get("LD_PRELOAD", ""):
        return None
    pad = adapter_reads().auto_kv_pad(getattr(cbc, "kv_padding_interval_size", None))
    if pad is not None:
        cbc.kv_padding_interval_size = pad
    return pad


def has_gpu():
    """Whether torch is here and sees a GPU (a script exits 77, Automake's
    skip, when not)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def started_manager(model, gen, cbc, who, timeout=60):
    """model's continuous-batching manager (generation config gen, batching
    config cbc), started, once a first request built its cache (in the
    manager's thread). Exits naming who when no result comes in timeout
    seconds."""
    manager = model.init_continuous_batching(generation_config=gen,
                                             continuous_batching_config=cbc)
    manager.start()
    manager.add_request(list(range(1, 65)), request_id="warmup", max_new_tokens=4)
    while True:
        out = manager.get_result(timeout=timeout)
        if out is None:
            raise SystemExit("%s: no warm-up result in %d s" % (who, timeout))
        if out.request_id == "warmup" and out.is_finished():
            return manager


def verdict(name, failures):
    """Print each failure and the check's verdict; the exit status (0 or 1)."""
    for line in failures:
        print("%s: FAIL: %s" % (name, line))
    print("%s: %s" % (name, "PASS" if not failures else "FAIL"))
    return 1 if failures else 0
