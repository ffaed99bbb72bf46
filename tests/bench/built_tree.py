"""What a GPU script needs to run kvshim from a built tree (after make):
the environment of a child run plain or under scripts/kvshim-run, as
scripts/gpu-suite.sh sets it; a transformers continuous-batching manager
started and warmed up; the verdict a check prints. Imported by the
benchmarks here and by tests/gpu's scripts; runs nothing itself."""
import os

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


def adapter_kv_pad(path=None):
    """The padding of a step's KV read that kvshim's transformers adapter
    sets by default (KVSHIM_CB_KV_PAD=auto: transformers_cb_reads'
    KV_PAD_AUTO, in tokens), read from its source (path, the tree's by
    default): importing the adapter would load kvshim. Raises RuntimeError
    where the source does not say it as a positive whole number."""
    import ast
    path = path or os.path.join(ROOT, "scripts", "python", "kvshim", "adapters",
                                "transformers_cb_reads.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) and node.value else []
        if [getattr(t, "id", None) for t in targets] == ["KV_PAD_AUTO"]:
            try:
                pad = eval(compile(ast.Expression(node.value), path, "eval"),
                           {"__builtins__": {}})
            except Exception as e:     # a name, a call: not a number alone
                raise RuntimeError("%s: KV_PAD_AUTO is not a number (%s)" % (path, e))
            if isinstance(pad, int) and not isinstance(pad, bool) and pad > 0:
                return pad
            raise RuntimeError("%s: KV_PAD_AUTO is %r, not a positive whole number"
                               % (path, pad))
    raise RuntimeError("%s: no KV_PAD_AUTO" % path)


def pad_plain_as_kvshim(cbc):
    """In a plain run (no kvshim preloaded), give the continuous batching
    config cbc the KV padding kvshim's adapter sets by default, where
    transformers' own is coarser, as the adapter does under kvshim-run: a
    plain run and a kvshim one then read the same shapes, so that their
    tokens may be compared bit for bit and their speed tells kvshim's cost
    apart from the padding's. Returns the padding set, or None where the
    config keeps its own (under kvshim, where the adapter sets it; as fine;
    no such setting)."""
    if "libkvshim" in os.environ.get("LD_PRELOAD", ""):
        return None
    own = getattr(cbc, "kv_padding_interval_size", None)
    pad = adapter_kv_pad()
    if not isinstance(own, int) or isinstance(own, bool) or own <= pad:
        return None
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
