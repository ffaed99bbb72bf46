#!/usr/bin/env python3
"""map_beside.py - whether mapping and unmapping GPU pages slows kernels
that run beside it: in the same process (kvshim's worker and the adapter's
ahead thread) or in another (a neighbour engine). A probe for
docs/BENCHMARKS.md, not a test; it uses the driver directly, not kvshim.

A churner maps and unmaps pages over and over, in batches: it creates
--batch handles of --page-mib MiB, maps each into a reserved range and
sets its access (a map batch), waits --gap-ms, unmaps and releases them
(an unmap batch), waits --gap-ms, and logs when each batch ran. Beside it,
the main thread runs steps of one workload, each synchronised, for
--seconds: matmul (bf16, compute bound), copy (an elementwise kernel over
1 GiB, memory bound), gather (random 32 KiB blocks, as paged attention
reads them), launches (1000 tiny kernels: the CPU's launch calls bound it,
as an eager forward's) or capture (200 tiny kernels captured into a new
CUDA graph, which is then replayed once: as transformers captures a graph
for a new batch shape). Each step is classed by what overlapped it: a map batch, an
unmap batch or neither (steps with both count as unmap); the table gives
their medians and p90 against the steps of a replay with no churner at all
(quiet). The churner runs as a thread of the process (--where thread) or
as a process of its own (--where process). --wait-captures (a thread,
under LD_PRELOAD=libkvshim.so) has the churner wait, before each batch,
for the process's CUDA graph captures to end (kvshim_capture_wait, as
kvshim's worker and its adapter's ahead thread do). --churner sleep replaces each
driver call with a sleep of --call-us in libc (a control: what a Python
thread making as many foreign calls costs the steps without the driver).

  python3 tests/bench/map_beside.py [--work matmul,copy,gather,launches,capture]
      [--where thread,process] [--seconds 6] [--batch 32] [--gap-ms 5]
      [--churner driver|sleep] [--call-us 20] [--wait-captures]

Needs torch and a GPU; prints the table and writes map_beside.json under
$KVSHIM_SUITE_OUT (or .). Exit 0, 2 for bad arguments, 77 without a GPU.
"""
import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time

MIB = 1 << 20


class Prop(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("handle_types", ctypes.c_int),
                ("loc_type", ctypes.c_int), ("loc_id", ctypes.c_int),
                ("win32", ctypes.c_void_p), ("compression", ctypes.c_ubyte),
                ("rdma", ctypes.c_ubyte), ("usage", ctypes.c_ushort),
                ("reserved", ctypes.c_ubyte * 4)]


class Access(ctypes.Structure):
    _fields_ = [("loc_type", ctypes.c_int), ("loc_id", ctypes.c_int), ("flags", ctypes.c_int)]


def churn(page, batch, gap, stop, log, wait=None):
    """Map and unmap batch pages of page bytes until stop() says so;
    append (kind, start, end) per batch to log; call wait(), if given,
    before each batch. Raises on a driver error, having unmapped and
    released what it made and let go of the range and the context."""
    cu = ctypes.CDLL("libcuda.so.1")

    def ck(name, *args):
        r = getattr(cu, name)(*args)
        if r != 0:
            raise RuntimeError("%s failed: %d" % (name, r))

    def va(i):
        return ctypes.c_uint64(base.value + i * page)

    ck("cuInit", 0)
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    ck("cuDeviceGet", ctypes.byref(dev), 0)
    ck("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
    made = []                       # [handle, mapped] per page of the batch
    base = ctypes.c_uint64()
    try:
        ck("cuCtxSetCurrent", ctx)
        prop = Prop(type=1, loc_type=1, loc_id=dev.value)
        acc = Access(loc_type=1, loc_id=dev.value, flags=3)
        ck("cuMemAddressReserve", ctypes.byref(base), ctypes.c_size_t(page * batch),
           ctypes.c_size_t(0), ctypes.c_uint64(0), ctypes.c_ulonglong(0))
        while not stop():
            if wait:
                wait()
            t = time.perf_counter()
            for i in range(batch):
                made.append([ctypes.c_uint64(), False])
                ck("cuMemCreate", ctypes.byref(made[i][0]), ctypes.c_size_t(page),
                   ctypes.byref(prop), ctypes.c_ulonglong(0))
                ck("cuMemMap", va(i), ctypes.c_size_t(page), ctypes.c_size_t(0), made[i][0],
                   ctypes.c_ulonglong(0))
                made[i][1] = True
                ck("cuMemSetAccess", va(i), ctypes.c_size_t(page), ctypes.byref(acc),
                   ctypes.c_size_t(1))
            log.append(("map", t, time.perf_counter()))
            time.sleep(gap)
            if wait:
                wait()
            t = time.perf_counter()
            while made:
                i = len(made) - 1
                if made[i][1]:
                    ck("cuMemUnmap", va(i), ctypes.c_size_t(page))
                    made[i][1] = False
                ck("cuMemRelease", made[i][0])
                made.pop()
            log.append(("unmap", t, time.perf_counter()))
            time.sleep(gap)
    finally:
        for i, (h, mapped) in enumerate(made):     # after an error: what is left
            if mapped:
                cu.cuMemUnmap(va(i), ctypes.c_size_t(page))
            if h.value:
                cu.cuMemRelease(h)
        if base.value:
            cu.cuMemAddressFree(base, ctypes.c_size_t(page * batch))
        cu.cuDevicePrimaryCtxRelease_v2(dev)


def churn_sleep(batch, call_us, gap, stop, log):
    """As churn, but each driver call is a sleep of call_us microseconds
    in libc (a foreign call that lets go of the GIL, as ctypes' driver
    calls do): a control that tells what a Python churner thread costs the
    steps through the interpreter from what the driver's work costs them."""
    libc = ctypes.CDLL(None)
    while not stop():
        for kind, calls in (("map", 3 * batch), ("unmap", 2 * batch)):
            t = time.perf_counter()
            for _ in range(calls):
                libc.usleep(ctypes.c_uint(call_us))
            log.append((kind, t, time.perf_counter()))
            time.sleep(gap)


def workload(torch, name):
    """A step of the named workload: a function that launches it."""
    dev = "cuda"
    if name == "matmul":
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        b = torch.empty_like(a)
        return lambda: [torch.matmul(a, a, out=b) for _ in range(8)]
    if name == "copy":
        src = torch.ones(1 << 28, device=dev)      # 1 GiB of float32
        dst = torch.empty_like(src)
        return lambda: [torch.mul(src, 1, out=dst) for _ in range(4)]
    if name == "launches":
        x = torch.zeros(1024, device=dev)
        return lambda: [x.add_(1) for _ in range(1000)]
    if name == "capture":
        x, side = torch.zeros(1024, device=dev), torch.cuda.Stream()

        def step():
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=side):
                for _ in range(200):
                    x.add_(1)
            g.replay()
        return step
    src = torch.ones((32768, 8192), device=dev, dtype=torch.float32)   # 32 KiB rows
    dst = torch.empty((8192, 8192), device=dev, dtype=torch.float32)
    idx = torch.randint(0, 32768, (8192,), device=dev)
    return lambda: [torch.index_select(src, 0, idx, out=dst) for _ in range(8)]


def steps(torch, step, seconds):
    """Run step, synchronised, for seconds; return (start, end) per step."""
    out, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        out.append((t, time.perf_counter()))
    return out


def classify(runs, log):
    """Split step durations (ms) by the churner's batches that overlap them."""
    out = {"map": [], "unmap": [], "neither": []}
    for s, e in runs:
        kinds = {k for k, bs, be in log if bs < e and be > s}
        kind = "unmap" if "unmap" in kinds else "map" if kinds else "neither"
        out[kind].append(1e3 * (e - s))
    return out


def figures(ms):
    if not ms:
        return None
    ms = sorted(ms)
    return {"n": len(ms), "p50": statistics.median(ms), "p90": ms[int(0.9 * (len(ms) - 1))]}


def child(args):
    """--churn-child: churn until stdin closes; print the log as JSON."""
    log, done = [], threading.Event()
    t = threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True)
    t.start()
    churner(args)(done.is_set, log)
    json.dump(log, sys.stdout)
    return 0


def churner(args):
    """The churner args name: a function of (stop, log)."""
    if args.churner == "sleep":
        return lambda stop, log: churn_sleep(args.batch, args.call_us, args.gap_ms / 1e3,
                                             stop, log)
    wait = None
    if args.wait_captures:
        fn = ctypes.CDLL(None).kvshim_capture_wait
        fn.argtypes, fn.restype = [ctypes.c_uint], ctypes.c_int
        wait = lambda: fn(1000)
    return lambda stop, log: churn(args.page_mib * MIB, args.batch, args.gap_ms / 1e3,
                                   stop, log, wait)


def names(ap, text, allowed, what):
    """The comma-separated names of text, each one of allowed."""
    items = [x for x in text.split(",") if x]
    if not items or any(x not in allowed for x in items):
        ap.error("%s: %r is not a list of %s" % (what, text, ",".join(allowed)))
    return items


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="matmul,copy,gather,launches,capture")
    ap.add_argument("--where", default="thread,process")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--page-mib", type=int, default=2)
    ap.add_argument("--gap-ms", type=float, default=5.0)
    ap.add_argument("--churner", choices=("driver", "sleep"), default="driver")
    ap.add_argument("--call-us", type=int, default=20)
    ap.add_argument("--wait-captures", action="store_true")
    ap.add_argument("--churn-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for bad, what in ((not math.isfinite(args.seconds) or args.seconds <= 0,
                       "--seconds %g: a number over 0" % args.seconds),
                      (args.batch < 1, "--batch %d: at least 1" % args.batch),
                      (args.page_mib < 2 or args.page_mib % 2,
                       "--page-mib %d: even, at least 2 (the granularity)" % args.page_mib),
                      (args.call_us < 0 or args.call_us > 1000000,
                       "--call-us %d: from 0 to 1000000" % args.call_us),
                      (not math.isfinite(args.gap_ms) or args.gap_ms < 0,
                       "--gap-ms %g: a number not below 0" % args.gap_ms)):
        if bad:
            ap.error(what)
    if args.churn_child:
        return child(args)
    works = names(ap, args.work, ("matmul", "copy", "gather", "launches", "capture"), "--work")
    wheres = names(ap, args.where, ("thread", "process"), "--where")
    if args.wait_captures:
        if wheres != ["thread"] or args.churner != "driver":
            ap.error("--wait-captures: with --where thread and --churner driver only "
                     "(kvshim counts the captures of its own process)")
        if not hasattr(ctypes.CDLL(None), "kvshim_capture_wait"):
            ap.error("--wait-captures: needs libkvshim.so preloaded (LD_PRELOAD), "
                     "which sees the captures")
    try:
        import torch
    except ImportError:
        print("map_beside: no torch: skipped")
        return 77
    if not torch.cuda.is_available():
        print("map_beside: no GPU: skipped")
        return 77
    rows, raw = [], {}
    for work in works:
        step = workload(torch, work)
        steps(torch, step, 1.0)                       # warm up
        quiet = [1e3 * (e - s) for s, e in steps(torch, step, args.seconds)]
        rows.append((work, "-", "quiet", figures(quiet), None))
        raw[work] = {"quiet": quiet}
        for where in wheres:
            log = []
            if where == "thread":
                stop, failed = threading.Event(), []

                def run():
                    try:
                        churner(args)(stop.is_set, log)
                    except Exception as e:          # told below, after the steps
                        failed.append(e)
                th = threading.Thread(target=run)
                th.start()
                try:
                    time.sleep(0.5)
                    runs = steps(torch, step, args.seconds)
                finally:
                    stop.set()
                    th.join()
                if failed:
                    print("map_beside: the churner failed: %s" % failed[0])
                    return 1
            else:
                p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--churn-child",
                                      "--batch", str(args.batch), "--page-mib", str(args.page_mib),
                                      "--gap-ms", str(args.gap_ms), "--churner", args.churner,
                                      "--call-us", str(args.call_us)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                try:
                    time.sleep(2.0)                   # its context and first batches
                    runs = steps(torch, step, args.seconds)
                    out, _ = p.communicate(b"", timeout=60)
                except subprocess.TimeoutExpired:
                    print("map_beside: the churner did not stop within 60 s")
                    return 1
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                if p.returncode != 0:
                    print("map_beside: the churner failed (rc %d)" % p.returncode)
                    return 1
                log = [tuple(x) for x in json.loads(out)]
            parts = classify(runs, log)
            batches = {k: [1e3 * (e - s) for kk, s, e in log if kk == k] for k in ("map", "unmap")}
            raw[work][where] = {"steps": parts, "batches": batches}
            for kind in ("neither", "map", "unmap"):
                rows.append((work, where, kind, figures(parts[kind]),
                             figures(batches.get(kind, []))))
    print("%s%ssteps beside a churner of %d pages of %d MiB per batch, %.0f ms between batches; "
          "%.0f s a replay; step ms (each synchronised), and the churner's batch ms"
          % ("(control: each driver call a sleep of %d us) " % args.call_us
             if args.churner == "sleep" else "",
             "(the churner waits for captures to end) " if args.wait_captures else "",
             args.batch, args.page_mib, args.gap_ms, args.seconds))
    print("| work | churner | steps overlapping | steps | step p50 ms | step p90 ms "
          "| vs quiet p50 | batch p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    base = {}
    for work, where, kind, f, b in rows:
        if f is None:
            print("| %s | %s | %s | 0 | - | - | - | - |" % (work, where, kind))
            continue
        if where == "-":
            base[work] = f["p50"]
        print("| %s | %s | %s | %d | %.2f | %.2f | %.2fx | %s |"
              % (work, where, kind, f["n"], f["p50"], f["p90"], f["p50"] / base[work],
                 "%.1f" % b["p50"] if b else "-"))
    out = os.path.join(os.environ.get("KVSHIM_SUITE_OUT", "."), "map_beside.json")
    with open(out, "w") as f:
        json.dump({"args": vars(args), "raw": raw}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
