"""PyTorch under LD_PRELOAD=libkvshim.so, on a real GPU.

A KV window is opened around the allocation of KV-shaped tensors (one key
and one value tensor per layer, blocks of block_size rows), blocks are
backed through kvshim_map as an engine's block manager would hand them out,
written with index_copy_ and read by torch SDPA. The same script runs in
three child processes: without the shim, with it (default caching
allocator), and with it under PYTORCH_CUDA_ALLOC_CONF=expandable_segments.
Checks: outputs bit-identical across the three; with the shim, the driver's
free memory (read from libcuda directly, not through the shim) falls with
the blocks mapped, not with the tensors reserved.

Prints a table; writes torch_kv.json under $KVSHIM_SUITE_OUT (or .).
Exit 0 when every check holds, 1 otherwise, 77 without a GPU.
"""
import ctypes
import json
import os
import subprocess
import sys

LAYERS, BLOCKS, BLOCK, HEADS, DIM = 16, 4096, 16, 8, 128
USED = 256                                 # blocks the "requests" hold
MIB = 1 << 20


def driver_free():
    """Free device memory as the driver reports it, bypassing the shim."""
    cuda = ctypes.CDLL("libcuda.so.1")
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    fn = cuda.cuMemGetInfo_v2
    assert fn(ctypes.byref(free), ctypes.byref(total)) == 0
    return free.value


def child(mode, out_path):
    import torch
    torch.manual_seed(0)
    dev = torch.device("cuda")
    torch.cuda.init()
    torch.empty(1, device=dev)              # the context exists
    kv = None
    if mode != "plain":
        kv = ctypes.CDLL(os.environ["KVSHIM_LIB"])
    torch.cuda.synchronize()
    free0 = driver_free()
    if kv:
        assert kv.kvshim_kv_begin() == 0
    keys, values = [], []
    for _ in range(LAYERS):
        keys.append(torch.empty((BLOCKS + 2) * BLOCK, HEADS, DIM, device=dev, dtype=torch.bfloat16))
        values.append(torch.empty((BLOCKS + 2) * BLOCK, HEADS, DIM, device=dev, dtype=torch.bfloat16))
    if kv:
        assert kv.kvshim_kv_end() == 0
    torch.cuda.synchronize()
    free1 = driver_free()
    g = torch.Generator(device="cpu").manual_seed(1)
    # a block manager hands out the lowest free ids first: the first USED
    # blocks, in a shuffled order
    blocks = torch.randperm(USED, generator=g)
    block_bytes = BLOCK * HEADS * DIM * 2
    spans = False
    if kv:
        # under expandable segments PyTorch maps its own VMM segments and
        # never calls cudaMalloc: the tensors are no spans (kvshim_map says
        # KVSHIM_ERANGE, -2) and run as they would without the shim
        spans = kv.kvshim_map(ctypes.c_void_p(keys[0].data_ptr()), ctypes.c_size_t(1)) == 0
        if spans:
            assert kv.kvshim_unmap(ctypes.c_void_p(keys[0].data_ptr()), ctypes.c_size_t(1)) == 0
    if spans:
        for t in keys + values:
            for b in blocks.tolist():
                rc = kv.kvshim_map(ctypes.c_void_p(t.data_ptr() + b * block_bytes),
                                   ctypes.c_size_t(block_bytes))
                assert rc == 0, rc
    torch.cuda.synchronize()
    free2 = driver_free()
    rows = (blocks[:, None] * BLOCK + torch.arange(BLOCK)[None, :]).reshape(-1).to(dev)
    outs = []
    for layer in range(LAYERS):
        k = torch.randn(rows.numel(), HEADS, DIM, generator=g).to(dev, torch.bfloat16)
        v = torch.randn(rows.numel(), HEADS, DIM, generator=g).to(dev, torch.bfloat16)
        keys[layer].index_copy_(0, rows, k)
        values[layer].index_copy_(0, rows, v)
        q = torch.randn(1, HEADS, 64, DIM, generator=g).to(dev, torch.bfloat16)
        kk = keys[layer].index_select(0, rows).transpose(0, 1).unsqueeze(0)
        vv = values[layer].index_select(0, rows).transpose(0, 1).unsqueeze(0)
        outs.append(torch.nn.functional.scaled_dot_product_attention(q, kk, vv).cpu())
    torch.cuda.synchronize()
    stats = {}
    if kv:
        class Stats(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in (
                "page_bytes", "reserved_bytes", "mapped_bytes", "cached_bytes",
                "pooled_bytes", "physical_bytes", "peak_physical_bytes",
                "limit_bytes", "spans")] + [("rest", ctypes.c_ulonglong * 20)]
        s = Stats()
        assert kv.kvshim_stats(ctypes.byref(s)) == 0
        stats = {f: getattr(s, f) for f, _ in Stats._fields_[:9]}
    torch.save(torch.stack(outs), out_path)
    json.dump({"mode": mode, "spans": spans, "free0": free0, "free1": free1, "free2": free2,
               "kv_reserved": 2 * LAYERS * (BLOCKS + 2) * block_bytes,
               "kv_live": 2 * LAYERS * USED * block_bytes, "stats": stats},
              open(out_path + ".json", "w"))


def main():
    out = os.environ.get("KVSHIM_SUITE_OUT", ".")
    lib = os.environ.get("KVSHIM_LIB")
    try:
        import torch
        if not torch.cuda.is_available():
            print("torch_kv: no GPU: skipped")
            return 77
    except ImportError:
        print("torch_kv: no torch: skipped")
        return 77
    if not lib:
        print("torch_kv: KVSHIM_LIB names no libkvshim.so")
        return 1
    runs = [("plain", {}), ("kvshim", {"LD_PRELOAD": lib}),
            ("kvshim+expandable", {"LD_PRELOAD": lib,
                                   "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})]
    results = {}
    for mode, extra in runs:
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        env.update(extra)
        path = os.path.join(out, "torch_kv_%s.pt" % mode.replace("+", "_"))
        r = subprocess.run([sys.executable, __file__, "--child", mode, path], env=env)
        if r.returncode:
            print("torch_kv: the %s run failed (exit %d)" % (mode, r.returncode))
            return 1
        results[mode] = (torch.load(path), json.load(open(path + ".json")))
    ok = True
    base = results["plain"][0]
    print("\n| run | KV tensors are spans | identical to plain | KV reserved MiB | driver memory used by KV tensors MiB | "
          "after mapping %d blocks MiB | live KV MiB | kvshim physical MiB |" % USED)
    print("|---|---|---|---|---|---|---|---|")
    for mode, (t, info) in results.items():
        same = torch.equal(t, base)
        ok &= same
        alloc = (info["free0"] - info["free1"]) / MIB
        mapped = (info["free0"] - info["free2"]) / MIB
        phys = info["stats"].get("physical_bytes", 0) / MIB
        print("| %s | %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f |" % (
            mode, "yes" if info["spans"] else "no", "yes" if same else "NO", info["kv_reserved"] / MIB, alloc, mapped,
            info["kv_live"] / MIB, phys))
    info = results["kvshim"][1]
    page = info["stats"]["page_bytes"]
    # reserved whole without the shim; with it, the driver sees the tail page
    # of each tensor and the pool, then the pages that the mapped blocks cover
    grow = info["free0"] - info["free2"]
    bound = info["kv_live"] + 2 * LAYERS * page * 2 + info["stats"]["pooled_bytes"] + 64 * MIB
    print("\nkvshim: driver memory %.0f MiB for %.0f MiB of live KV (bound checked: %.0f MiB); "
          "plain: %.0f MiB" % (grow / MIB, info["kv_live"] / MIB, bound / MIB,
                               (results["plain"][1]["free0"] - results["plain"][1]["free2"]) / MIB))
    if grow > bound:
        print("torch_kv: FAIL: physical memory grew past the mapped blocks")
        ok = False
    if info["stats"]["reserved_bytes"] < info["kv_reserved"]:
        print("torch_kv: FAIL: the KV tensors did not become spans")
        ok = False
    json.dump({m: r[1] for m, r in results.items()},
              open(os.path.join(out, "torch_kv.json"), "w"), indent=1)
    print("torch_kv: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(main())
