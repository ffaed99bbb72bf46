"""Frameworks under kvshim-run, on a GPU: nothing may break.

Small workloads of PyTorch (CUDA graphs whose capture allocates, and the
expandable-segments allocator, which maps its own VMM memory), CuPy, JAX
and Triton each run in a fresh process three ways: plain, under kvshim-run
with the default configuration, and under kvshim-run with
KVSHIM_MIN_BYTES=64M (every allocation of 64 MiB or more becomes a span
mapped in full, so kvshim's own pages and its worker are in play). Each
workload prints one result line (a checksum of what it computed); the
check is that every process exits 0 and prints the plain run's line.

A framework missing on the machine is reported as skipped. Prints a table;
writes frameworks.json under $KVSHIM_SUITE_OUT (or .). Exit 0 when every
check holds, 1 if not, 77 without a GPU.

Usage: frameworks.py [--only NAME[,NAME...]]
"""
import json
import os
import subprocess
import sys
import time

WORKLOADS = {}


def workload(name, env=None):
    def deco(fn):
        WORKLOADS[name] = (fn, env or {})
        return fn
    return deco


@workload("torch-graph")
def torch_graph():
    """A CUDA graph whose capture allocates 512 MiB (from the graph's private
    pool, through cudaMalloc), replayed over inputs that change."""
    import torch
    torch.manual_seed(0)
    x = torch.randn(1 << 20, device="cuda")
    w = torch.randn(1 << 20, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):      # warm-up, as PyTorch asks before capture
            y = (x * w).sum()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        big = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
        big.fill_(3)
        y = (x * w).sum() + big[:1024].float().sum()
    total = 0.0
    for i in range(5):
        x.copy_(torch.full_like(x, float(i)))
        g.replay()
        total += float(y.item())
    torch.cuda.synchronize()
    return "%.3f" % total


@workload("torch-expandable", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})
def torch_expandable():
    """The expandable-segments allocator: PyTorch's own VMM segments."""
    import torch
    torch.manual_seed(0)
    keep = []
    acc = 0.0
    for i in range(8):
        t = torch.full((64 << 20,), float(i), device="cuda")
        keep.append(t)
        acc += float(t[::4096].sum().item())
    del keep[::2]
    torch.cuda.empty_cache()
    a = torch.randn(4096, 4096, device="cuda")
    acc += float((a @ a).abs().mean().item())
    return "%.3f" % acc


@workload("cupy")
def cupy_work():
    """Allocation, memset, copies and a custom kernel through CuPy's pool."""
    import cupy as cp
    a = cp.arange(64 << 20, dtype=cp.float32)
    b = cp.zeros_like(a)
    b[...] = a[::-1]
    k = cp.ElementwiseKernel("float32 x, float32 y", "float32 z", "z = x * 2 + y",
                             "kvshim_fw")
    c = k(a, b)
    host = cp.asnumpy(c[::65536])
    d = cp.empty(300 << 20, dtype=cp.uint8)
    d.fill(7)
    return "%.1f %d" % (float(host.sum()), int(d[::4096].sum()))


@workload("jax", {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.2"})
def jax_work():
    """XLA's allocator (a large slab up front) and a jitted function."""
    import jax
    import jax.numpy as jnp
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (2048, 2048), dtype=jnp.float32)
    f = jax.jit(lambda m: jnp.tanh(m @ m.T).sum())
    return "%.3f" % float(f(x))


@workload("triton")
def triton_work():
    """A Triton kernel over tensors of PyTorch's caching allocator."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def axpy(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        x = tl.load(x_ptr + offs, mask=m)
        y = tl.load(y_ptr + offs, mask=m)
        tl.store(out_ptr + offs, 3 * x + y, mask=m)

    n = 96 << 20
    x = torch.ones(n, device="cuda")
    y = torch.arange(n, device="cuda", dtype=torch.float32)
    out = torch.empty_like(x)
    axpy[(triton.cdiv(n, 1024),)](x, y, out, n, BLOCK=1024)
    return "%.1f" % float(out[::8192].double().sum().item())


CONFIGS = (
    ("plain", None, {}),
    ("kvshim-run", "run", {}),
    ("kvshim-run, KVSHIM_MIN_BYTES=64M", "run", {"KVSHIM_MIN_BYTES": "64M"}),
)


def child(name):
    fn, _ = WORKLOADS[name]
    try:
        __import__({"torch-graph": "torch", "torch-expandable": "torch", "cupy": "cupy",
                    "jax": "jax", "triton": "triton"}[name])
    except ImportError as e:
        print("SKIP %s" % e)
        return 0
    print("RESULT %s" % fn(), flush=True)
    return 0


def parse(argv):
    only = list(WORKLOADS)
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--only" and args:
            only = args.pop(0).split(",")
            bad = [n for n in only if n not in WORKLOADS]
            if bad:
                raise ValueError("unknown workload %s (known: %s)"
                                 % (", ".join(bad), ", ".join(WORKLOADS)))
        else:
            raise ValueError("unknown argument %r (usage: frameworks.py [--only NAME,...])" % a)
    return only


def main(argv):
    if argv[:1] == ["--child"]:
        return child(argv[1])
    try:
        only = parse(argv)
    except ValueError as e:
        print("frameworks.py: %s" % e, file=sys.stderr)
        return 2
    try:
        import torch
        if not torch.cuda.is_available():
            print("frameworks.py: no GPU")
            return 77
    except ImportError:
        print("frameworks.py: no PyTorch")
        return 77
    out = os.environ.get("KVSHIM_SUITE_OUT", ".")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = os.path.join(root, "scripts", "kvshim-run")
    env0 = dict(os.environ)
    env0.pop("LD_PRELOAD", None)
    env0.setdefault("KVSHIM_CONFIG_BIN", os.path.join(root, "kvshim-config"))
    env0.setdefault("KVSHIM_PYTHONPATH", os.path.join(root, "scripts", "python"))
    env0.setdefault("KVSHIM_LIB", os.path.join(root, ".libs", "libkvshim.so"))
    rows, ok = [], True
    for name in only:
        base = None
        for label, how, extra in CONFIGS:
            env = dict(env0)
            env.update(WORKLOADS[name][1])
            env.update(extra)
            cmd = [sys.executable, os.path.abspath(__file__), "--child", name]
            if how == "run":
                cmd = [run, "--"] + cmd
            t0 = time.time()
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            secs = time.time() - t0
            lines = [l for l in r.stdout.splitlines() if l.startswith(("RESULT", "SKIP"))]
            res = lines[-1] if lines else ""
            if res.startswith("SKIP"):
                rows.append(dict(workload=name, config=label, exit=r.returncode,
                                 result=res, seconds=secs, verdict="skipped"))
                break
            if base is None:
                base = res
            good = r.returncode == 0 and res and res == base
            if not good:
                ok = False
                sys.stderr.write("--- %s, %s: exit %d\n%s\n" % (name, label, r.returncode,
                                                                 r.stderr[-3000:]))
            rows.append(dict(workload=name, config=label, exit=r.returncode, result=res,
                             seconds=round(secs, 1),
                             verdict="same as plain" if good else "DIFFERENT or failed"))
    print("%-17s %-34s %4s %7s  %-15s %s" % ("workload", "config", "exit", "seconds",
                                            "verdict", "result"))
    for row in rows:
        print("%-17s %-34s %4d %7.1f  %-15s %s" % (row["workload"], row["config"], row["exit"],
                                                  row["seconds"], row["verdict"], row["result"]))
    with open(os.path.join(out, "frameworks.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("frameworks: %s" % ("every workload ran and matched plain" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
