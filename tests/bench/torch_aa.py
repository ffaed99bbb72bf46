"""An A/A test of the torch overhead loop, on a GPU machine: the same
torch.empty(64 MiB) + empty_cache loop as tests/gpu/overhead.py, run in
alternating rounds without any preload (twice: A and A again), with a
preloaded library that does nothing, and with libkvshim.so. How far the two
runs without preload differ is how much this loop can resolve.
Usage (from the built tree): python3 tests/bench/torch_aa.py [rounds]
"""
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gpu"))
from overhead import TORCH_LOOP as LOOP  # noqa: E402  the very loop the suite times


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lib = os.path.join(root, ".libs", "libkvshim.so")
    tmp = tempfile.mkdtemp()
    src, empty = os.path.join(tmp, "empty.c"), os.path.join(tmp, "libempty.so")
    open(src, "w").write("int kv_aa_nothing(void) { return 0; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", empty, src], check=True)
    configs = [("no preload", None), ("no preload, again", None),
               ("empty library preloaded", empty), ("libkvshim.so preloaded", lib)]
    res = {name: [] for name, _ in configs}
    for _ in range(rounds):
        for name, pre in configs:
            env = dict(os.environ)
            env.pop("LD_PRELOAD", None)
            if pre:
                env["LD_PRELOAD"] = pre
            out = subprocess.run([sys.executable, "-c", LOOP], env=env,
                                 capture_output=True, text=True, check=True)
            res[name].append(float(out.stdout.split()[-1]))
    print("| configuration | median us | rounds |")
    print("|---|---|---|")
    for name, v in res.items():
        print("| %s | %.1f | %s |" % (name, statistics.median(v),
                                       " ".join("%.0f" % x for x in v)))


if __name__ == "__main__":
    main()
