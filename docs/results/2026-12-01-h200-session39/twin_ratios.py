"""Per-model static / kvshim and static / twin p99 TTFT ratios, each replay,
from sessions 38 and 39's run 1 (colocate.txt's first table of each trace),
and on the rows where the static split does not queue (all but the large
at rates 3, 4 and 6 on seed 2026 and the medium at rate 6) a rank test of
kvshim's ratios against the twin's. Run from the repository's root:
python3 docs/results/2026-12-01-h200-session39/twin_ratios.py"""
import math
import re
import statistics

RUNS = (("38", "docs/results/2026-12-01-h200-session38/run1/colocate.txt"),
        ("39", "docs/results/2026-12-01-h200-session39/run1/colocate.txt"))
ROW = re.compile(r"^\| (small|medium|large) \| (static|kvshim|twin) \| \d+ \| \d+ \| [\d.]+ \| ([\d.]+) \|")


def p99s(path):
    """{(trace, model, config): p99 s} from each trace's first table."""
    out, trace = {}, None
    for line in open(path):
        m = re.match(r"^trace (r\d-s\d+-p8(?:-run2)?): rate", line)
        if m:
            trace = m.group(1)
            continue
        m = ROW.match(line)
        if m and trace and (trace, m.group(1), m.group(2)) not in out:
            out[(trace, m.group(1), m.group(2))] = float(m.group(3))
    return out


def queues(trace, model):
    return (model == "large" and trace.startswith(("r3-s2026", "r4", "r6"))) or \
        (model == "medium" and trace.startswith("r6"))


ratios = {"kvshim": [], "twin": []}
for session, path in RUNS:
    d = p99s(path)
    for (trace, model, config), v in sorted(d.items()):
        if config != "static":
            continue
        for other in ratios:
            if (trace, model, other) in d:
                ratios[other].append((session, trace, model, v / d[(trace, model, other)]))
print("| config | rows | below 1.00x | median | least |")
print("|---|---|---|---|---|")
for c, rows in ratios.items():
    r = sorted(x[3] for x in rows)
    print("| %s | %d | %d | %.2fx | %.2fx |" % (c, len(r), sum(x < 1 for x in r),
                                               statistics.median(r), r[0]))
a = [x[3] for x in ratios["kvshim"] if not queues(x[1], x[2])]
b = [x[3] for x in ratios["twin"] if not queues(x[1], x[2])]
u = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
mu, sd = len(a) * len(b) / 2, math.sqrt(len(a) * len(b) * (len(a) + len(b) + 1) / 12)
z = (u - mu) / sd
p = math.erfc(abs(z) / math.sqrt(2))
print("where static does not queue: kvshim %d rows, median %.2fx, %d below 1.00x; twin %d rows, "
      "median %.2fx, %d below 1.00x; P(kvshim's ratio > the twin's) %.2f, Mann-Whitney z %.2f, "
      "p %.2f (two-sided, normal approximation; the rows are not independent: each replay "
      "gives three)" % (len(a), statistics.median(a), sum(x < 1 for x in a), len(b),
                        statistics.median(b), sum(x < 1 for x in b), u / (len(a) * len(b)), z, p))
