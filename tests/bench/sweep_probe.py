"""What opening the first KV window costs in a process with many modules
loaded: loads up to 40 system libraries with ctypes (LLVM's among them
where present), then times kvshim.kv_begin() twice (the first one sweeps
the loaded modules for GOT slots to patch). Run under LD_PRELOAD, e.g.
  LD_PRELOAD=$PWD/.libs/libkvshim.so LD_LIBRARY_PATH=tests/emu \\
  PYTHONPATH=scripts/python python3 tests/bench/sweep_probe.py
"""
import ctypes
import glob
import time

import kvshim

KEYS = ("LLVM", "clang-cpp", "icu", "python3", "crypto", "ssl", "sqlite", "xml2", "gio", "glib")
libs = [p for p in glob.glob("/usr/lib/x86_64-linux-gnu/*.so*") if any(k in p for k in KEYS)][:40]
loaded = 0
for p in libs:
    try:
        ctypes.CDLL(p)
        loaded += 1
    except OSError:
        pass
times = []
for _ in range(2):
    t = time.perf_counter()
    kvshim.kv_begin()
    times.append((time.perf_counter() - t) * 1e3)
    kvshim.kv_end()
print("loaded %d libraries; first kv_begin %.1f ms, second %.3f ms" % (loaded, times[0], times[1]))
