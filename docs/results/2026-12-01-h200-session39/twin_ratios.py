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

# paired: each row's kvshim p99 over the twin's (static's own noise out)
pairs = {(x[0], x[1], x[2]): x[3] for x in ratios["kvshim"] if not queues(x[1], x[2])}
logs = []
for x in ratios["twin"]:
    key = (x[0], x[1], x[2])
    if key in pairs:
        # static/twin over static/kvshim: kvshim p99 / twin p99
        logs.append(math.log(x[3] / pairs[key]))
above = sum(v > 0 for v in logs)
n = sum(v != 0 for v in logs)
sign_p = min(1.0, 2 * sum(math.comb(n, k) for k in range(max(above, n - above), n + 1)) / 2 ** n)
ranked = sorted((abs(v), v) for v in logs if v != 0)
w = sum(i + 1 for i, (_, v) in enumerate(ranked) if v > 0)
wm, ws = n * (n + 1) / 4, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
wz = (w - wm) / ws
print("paired, the same rows: kvshim p99 / twin p99 median %.2fx, geometric mean %.2fx; kvshim's "
      "higher in %d of %d (sign test p %.2f); Wilcoxon signed-rank z %.2f, p %.2f (the rows are "
      "not independent)" % (math.exp(statistics.median(logs)), math.exp(statistics.mean(logs)),
                            above, n, sign_p, wz, math.erfc(abs(wz) / math.sqrt(2))))
