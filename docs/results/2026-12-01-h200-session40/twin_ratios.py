"""Session 39's twin_ratios.py (docs/results/2026-12-01-h200-session39/),
adapted to take session 40's run 1 too: the same per-model static / kvshim and
static / twin p99 TTFT ratios, each replay (colocate.txt's first table of each
trace), and on the rows where the static split does not queue (all but the
large at rates 3, 4 and 6 on seed 2026 and the medium at rate 6) the same rank
tests of kvshim's ratios against the twin's.

Changes from session 39's script, nothing else:
- RUNS holds session 40's run 1; the figures are printed for sessions 38 and
  39 (which must reproduce twin_ratios.txt), for 40 alone, and for 38 to 40.
- Two lines added per set: a 95% t-interval of the paired geometric mean
  (kvshim p99 / twin p99), which treats the rows as independent (they are
  not), and a bootstrap that resamples whole replays (each replay's rows
  together, 20000 draws, seed 40), which keeps the rows of one replay together
  but not the replays of one machine or session.

Run from the repository's root: python3 docs/results/2026-12-01-h200-session40/twin_ratios.py"""
import math
import random
import re
import statistics

RUNS = (("38", "docs/results/2026-12-01-h200-session38/run1/colocate.txt"),
        ("39", "docs/results/2026-12-01-h200-session39/run1/colocate.txt"),
        ("40", "docs/results/2026-12-01-h200-session40/run1/colocate.txt"))
SETS = (("38", "39"), ("40",), ("38", "39", "40"))
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


def t_quantile(p, df):
    """The Student t quantile, by bisection on its CDF (Simpson's rule)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))

    def cdf(x):
        n = 2000
        h = x / n
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def analyse(sessions):
    print("## session%s %s, run 1" % ("s" if len(sessions) > 1 else "", ", ".join(sessions)))
    ratios = {"kvshim": [], "twin": []}
    for session, path in RUNS:
        if session not in sessions:
            continue
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
    logs, keyed = [], []
    for x in ratios["twin"]:
        key = (x[0], x[1], x[2])
        if key in pairs:
            # static/twin over static/kvshim: kvshim p99 / twin p99
            logs.append(math.log(x[3] / pairs[key]))
            keyed.append((key, logs[-1]))
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
    # added for session 40: how wide a difference the same rows leave open
    m, s = statistics.mean(logs), statistics.stdev(logs)
    t = t_quantile(0.975, len(logs) - 1)
    h = t * s / math.sqrt(len(logs))
    print("paired geometric mean 95%% t-interval (rows taken as independent, %d rows, t %.3f): "
          "%.2fx to %.2fx" % (len(logs), t, math.exp(m - h), math.exp(m + h)))
    replays = {}
    for (session, trace, _), v in keyed:
        replays.setdefault((session, trace), []).append(v)
    groups = list(replays.values())
    rng = random.Random(40)
    draws = []
    for _ in range(20000):
        pick = [v for _ in groups for v in rng.choice(groups)]
        draws.append(math.exp(statistics.mean(pick)))
    draws.sort()
    print("paired geometric mean, bootstrap over whole replays (%d replays, 20000 draws): "
          "2.5%% %.2fx, 97.5%% %.2fx" % (len(groups), draws[499], draws[19499]))
    print()


for s in SETS:
    analyse(s)
