# Session 38's parity tables, from run 1's colocate.json.xz, by the
# committed colocate.py's parity() (run from the tree's root):
#   python3 docs/results/2026-12-01-h200-session38/run1/parity.py
import json, lzma, os, sys
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "..", "..", "tests", "bench"))
import colocate as c  # noqa: E402
d = json.load(lzma.open(os.path.join(here, "colocate.json.xz")))
table = {tuple(k.split("|")): v for k, v in d["table"].items()}
results = {m: {} for m in d["engines"]}
c.parity(table, d["traces"], results)
c.parity(table, d["traces"], results, apart=True)
