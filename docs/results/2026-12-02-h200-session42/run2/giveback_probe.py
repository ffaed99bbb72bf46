"""What torch.cuda.empty_cache costs after a batch's temporaries, and what
taking them again costs after it, plain and under kvshim (LD_PRELOAD set
by the caller). Prints one line per round and medians."""
import statistics as st
import sys
import time

import torch

dev = "cuda"
torch.cuda.init()
keep = torch.randn(4096, 4096, device=dev)      # the engine's own tensors
SIZES = [96 << 20] * 6 + [8 << 20] * 16         # about 700 MiB of temporaries


def temporaries():
    ts = [torch.empty(n, dtype=torch.uint8, device=dev) for n in SIZES]
    for t in ts:
        t.fill_(1)
    return ts


def timed(f):
    torch.cuda.synchronize()
    t = time.perf_counter()
    f()
    torch.cuda.synchronize()
    return time.perf_counter() - t


rows = []
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 15):
    del_ts = temporaries()
    del del_ts
    torch.cuda.synchronize()
    before = torch.cuda.memory_reserved()
    warm = timed(lambda: temporaries())          # cached: no cudaMalloc
    empty = timed(torch.cuda.empty_cache)
    after = torch.cuda.memory_reserved()
    cold = timed(lambda: temporaries())          # after the give-back
    torch.cuda.empty_cache()
    # empty_cache behind 20 matmuls queued: it waits for them
    a = torch.randn(8192, 8192, device=dev)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ a
    queued = time.perf_counter() - t
    t = time.perf_counter()
    torch.cuda.empty_cache()
    behind = time.perf_counter() - t
    del a
    rows.append((warm, cold, empty, behind, queued, (before - after) >> 20))
    print("round %d: temporaries %.2f ms cached, %.2f ms after give-back; empty_cache %.2f ms "
          "(gave %d MiB), %.2f ms behind queued work (queueing took %.2f ms)" %
          (i, warm * 1e3, cold * 1e3, empty * 1e3, (before - after) >> 20, behind * 1e3,
           queued * 1e3))
med = [st.median(r[k] for r in rows) for k in range(6)]
print("median: temporaries %.2f ms cached, %.2f ms after; empty_cache %.2f ms, gave %d MiB; "
      "behind queued work %.2f ms" % (med[0] * 1e3, med[1] * 1e3, med[2] * 1e3, med[5],
                                       med[3] * 1e3))
