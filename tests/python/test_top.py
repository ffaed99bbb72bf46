"""kvshim-top against a live shared segment, on the CPU emulation: this
process registers (KVSHIM_SHARE=on, a pool of its own), maps pages, and
kvshim-top must show it, read through kvshim-config --segments (the
library's reader); a corrupted segment is reported, not trusted; a FIFO at
a segment's path is reported, never waited on; a command name's escape
sequences never reach the terminal.
"""
import contextlib
import ctypes
import json
import os
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import settings_once  # noqa: E402

POOL = "top%d" % os.getpid()
# (one unittest process over several test files: only the first file's
# settings hold, and the others' tests are skipped; see settings_once)
settings_once.configure(
    __file__, KVSHIM_SHARE="on", KVSHIM_POOL=POOL, KVSHIM_POOL_LOW="0", KVSHIM_POOL_HIGH="0",
    KVSHIM_MIN="4M", KVSHIM_MAX="64M", KVSHIM_WEIGHT="3", KVSHIM_RESERVE="10%")

import kvshim  # noqa: E402

TOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "kvshim-top")
MIB = 1 << 20


def setUpModule():
    settings_once.skip_unless_mine(sys.modules[__name__])


@contextlib.contextmanager
def stating(demand=0, unused=0):
    """State demand and unused pages (as an adapter does), and again every
    0.2 s while the block runs: kvshim holds a statement for a second, and
    on a loaded machine one kvshim-top call can take half of that. Both
    are stated 0 after."""
    stop = threading.Event()

    def again():
        while True:
            kvshim.share_demand(demand)
            kvshim.share_unused(unused)
            if stop.wait(0.2):
                return
    th = threading.Thread(target=again, daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()
        kvshim.share_demand(0)
        kvshim.share_unused(0)


def top(*args, env=None):
    return subprocess.run([sys.executable, TOP] + list(args), capture_output=True, text=True,
                          timeout=60, env=env)


# A process that names itself with escape sequences, then joins the pool.
EVIL = r"""
import ctypes, sys
ctypes.CDLL(None).prctl(15, b"\x1b[2J\x1b]0;x\x07ev", 0, 0, 0)
import kvshim
span = kvshim.reserve(4 << 20)
kvshim.map(span, 2 << 20)
print("ready", flush=True)
sys.stdin.read()
"""


# A process with spans on two GPUs (a model split over them): device 0, then
# device 1 made current as torch.cuda.set_device(1) would.
TWO = r"""
import ctypes, sys
cu = ctypes.CDLL("libcuda.so.1")
import kvshim
a = kvshim.reserve(8 << 20)
kvshim.map(a, 2 << 20)
ctx = ctypes.c_void_p()
cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 1)
cu.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]
cu.cuCtxSetCurrent(ctx)
b = kvshim.reserve(8 << 20)
kvshim.map(b, 4 << 20)
print("ready", flush=True)
sys.stdin.read()
"""


# A process that joins the pool with nothing mapped and waits for the whole
# budget (its demand, stated again every 0.2 s, as an adapter does: kvshim
# bounds it by the budget) until its stdin closes.
WAITER = r"""
import sys, threading
import kvshim
span = kvshim.reserve(2 << 20)
done = threading.Event()
def again():
    while not done.is_set():
        kvshim.share_demand(1 << 40)
        done.wait(0.2)
threading.Thread(target=again, daemon=True).start()
kvshim.share_demand(1 << 40)
print("ready", flush=True)
sys.stdin.read()
done.set()
"""


# A process that joins the pool and maps a page, until its stdin closes.
HOLDER = r"""
import sys
import kvshim
span = kvshim.reserve(4 << 20)
kvshim.map(span, 2 << 20)
print("ready", flush=True)
sys.stdin.read()
"""


def devices():
    cu = ctypes.CDLL("libcuda.so.1")
    n = ctypes.c_int(0)
    if cu.cuInit(0) != 0 or cu.cuDeviceGetCount(ctypes.byref(n)) != 0:
        return 0
    return n.value


class TopTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.span = kvshim.reserve(32 * MIB)
        kvshim.map(cls.span, 6 * MIB)
        kvshim.unmap(cls.span, 2 * MIB)      # one page cached

    @classmethod
    def tearDownClass(cls):
        kvshim.release(cls.span)
        for seg in json.loads(top("--json", "--pool", POOL).stdout)["segments"]:
            os.unlink(seg["path"])

    def test_json_shows_this_process(self):
        r = top("--json", "--pool", POOL)
        self.assertEqual(r.returncode, 0, r.stderr)
        segs = json.loads(r.stdout)["segments"]
        self.assertEqual(len(segs), 1)
        me = [p for p in segs[0]["processes"] if p["pid"] == os.getpid()]
        self.assertEqual(len(me), 1)
        me = me[0]
        self.assertEqual(me["held"], 6 * MIB)
        self.assertEqual(me["mapped"], 6 * MIB)
        self.assertEqual(me["cached"], 2 * MIB)
        self.assertEqual(me["reserved"], 32 * MIB)
        self.assertEqual(me["min"], 4 * MIB)
        self.assertEqual(me["max"], 64 * MIB)
        self.assertTrue(me["alive"])
        self.assertFalse(me["other_pidns"])
        self.assertEqual(segs[0]["held"], 6 * MIB)
        self.assertEqual(segs[0]["version"], "2.4")
        # the creator's reserve, in bytes of the budget
        self.assertEqual(segs[0]["reserve"], segs[0]["budget"] // 100 * 10)
        self.assertTrue(segs[0]["joinable"])
        self.assertEqual(segs[0]["mode"], "0600")
        self.assertEqual(segs[0]["owner"], os.geteuid())

    def test_fair_share_columns(self):
        """Weight, demand, unused pages, share and what it is asked for, in
        the JSON and the table: this process waits for 8 MiB more (stated
        as an adapter does) and, alone, its share is what it uses and waits
        for; pages it states unused are not use unless it waits."""
        def mine():
            return [p for p in json.loads(top("--json", "--pool", POOL).stdout)["segments"][0]
                    ["processes"] if p["pid"] == os.getpid()][0]

        def row():
            r = top("--once", "--pool", POOL)
            self.assertEqual(r.returncode, 0, r.stderr)
            for col in ("WEIGHT", "SHARE", "MOST", "ENTITLED", "DEMAND", "UNUSED", "ASKED",
                        "GAVE"):
                self.assertIn(col, r.stdout)
            return [line for line in r.stdout.splitlines()
                    if line.split()[:1] == [str(os.getpid())]][0].split()[10:16]

        with stating(demand=8 * MIB):
            self.assertEqual(kvshim.share_asked(), 0)
            me = mine()
            self.assertEqual(me["weight"], 3)
            self.assertEqual(me["demand"], 8 * MIB)
            self.assertEqual(me["asked"], 0)
            self.assertEqual(me["share"], 4 * MIB + 8 * MIB)   # used (6 - 2 cached) + demand
            self.assertEqual(me["gap"], 8 * MIB - 2 * MIB)     # beyond what it holds
            self.assertIsNone(me["most"])                      # nobody else waits
            # alone, entitled to its ceiling of the budget, whatever it uses
            self.assertEqual(me["entitled"], 64 * MIB)
            self.assertEqual(row(), ["3", "12", "-", "64", "8", "0"])
        # 2 of the 4 MiB it uses unused (a prefix cache, as an adapter
        # states it): kept as its own while it waits, out of its use (so
        # of its share) when it does not
        with stating(demand=8 * MIB, unused=2 * MIB):
            me = mine()
            self.assertEqual((me["unused"], me["share"]), (2 * MIB, 12 * MIB))
        # (4 MiB more in use for this: its share is above its floor of 4)
        more = self.span + 16 * MIB
        kvshim.map(more, 4 * MIB)
        try:
            with stating(unused=2 * MIB):
                me = mine()
                self.assertEqual((me["unused"], me["share"], me["demand"]),
                                 (2 * MIB, 6 * MIB, 0))           # 8 used less 2
                self.assertEqual(row(), ["3", "6", "-", "64", "0", "2"])
        finally:
            kvshim.unmap(more, 4 * MIB)
            kvshim.trim(4 * MIB)
        me = mine()
        self.assertEqual((me["demand"], me["unused"]), (0, 0))

    def test_most_while_another_waits(self):
        """MOST, the rule's bound while another process waits below its
        share: its share were it to want more, the others wanting what they
        do. A member (weight 1, no floor) waits for the whole budget B:
        this process (weight 3, floor 4 MiB, ceiling 64 MiB) may grow to
        its ceiling, B being far more; the member's bound is none while
        this one does not wait, and B less the 12 MiB this one wants once
        it waits for 8 MiB more (it uses 4)."""
        env = dict(os.environ, KVSHIM_WEIGHT="1", KVSHIM_MIN="0")
        env.pop("KVSHIM_MAX", None)
        p = subprocess.Popen([sys.executable, "-c", WAITER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
        try:
            self.assertEqual(p.stdout.readline().strip(), "ready")

            def both():
                seg = json.loads(top("--json", "--pool", POOL).stdout)["segments"][0]
                procs = {q["pid"]: q for q in seg["processes"]}
                return seg["budget"], procs[os.getpid()], procs[p.pid]

            budget, me, other = both()
            self.assertEqual(other["demand"], budget)
            self.assertGreater(other["gap"], 0)
            self.assertEqual(me["most"], 64 * MIB)
            self.assertIsNone(other["most"])
            # entitled, by weight 3 to 1, this one at most its ceiling, the
            # other the rest, whatever either waits for
            self.assertEqual(me["entitled"], min(64 * MIB, budget * 3 // 4))
            self.assertAlmostEqual(other["entitled"], budget - me["entitled"], delta=4)
            with stating(demand=8 * MIB):
                budget, me, other = both()
                self.assertEqual(me["most"], 64 * MIB)
                self.assertEqual(other["most"], budget - 12 * MIB)
                r = top("--once", "--pool", POOL)
                mine = [line.split() for line in r.stdout.splitlines()
                        if line.split()[:1] == [str(os.getpid())]][0]
                self.assertEqual(mine[11:13], ["12", "64"])   # SHARE, MOST (MiB)
                # (its entitlement does not move with what it waits for)
                self.assertEqual(me["entitled"], min(64 * MIB, budget * 3 // 4))
        finally:
            p.stdin.close()
            p.wait(timeout=30)
            p.stdout.close()

    def test_limited_member_entitled(self):
        """ENTITLED is at most a process's own KVSHIM_LIMIT, which it
        publishes in its slot (segment 2.4): a member limited to 8 MiB is
        entitled to 8 MiB, however much of the budget its weight would give
        it, and what it cannot hold goes to the others: an unlimited member
        of the same weight is entitled to the budget less this process's
        64 MiB (its ceiling) and those 8 (before, each was entitled to half
        of the rest, and the limited one could never hold its part)."""
        procs = []
        for limit in ("8M", None):
            env = dict(os.environ, KVSHIM_WEIGHT="1", KVSHIM_MIN="0")
            env.pop("KVSHIM_MAX", None)
            if limit:
                env["KVSHIM_LIMIT"] = limit
            p = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env)
            self.addCleanup(p.stdout.close)
            self.addCleanup(p.wait, timeout=30)
            self.addCleanup(p.stdin.close)
            self.assertEqual(p.stdout.readline().strip(), "ready")
            procs.append(p)
        r = top("--json", "--pool", POOL)
        self.assertEqual(r.returncode, 0, r.stderr)
        seg = json.loads(r.stdout)["segments"][0]
        budget = seg["budget"]
        by_pid = {q["pid"]: q for q in seg["processes"]}
        me, lim, free = by_pid[os.getpid()], by_pid[procs[0].pid], by_pid[procs[1].pid]
        self.assertEqual(lim["limit"], 8 * MIB)
        self.assertEqual(lim["entitled"], 8 * MIB)
        self.assertEqual(me["entitled"], 64 * MIB)
        self.assertAlmostEqual(free["entitled"], budget - 72 * MIB, delta=4)
        # (its own limit, the default 100% of the device's memory in whole
        # pages, which it states as the rest do; at most the budget)
        self.assertLessEqual(free["limit"], budget)
        self.assertGreaterEqual(free["limit"], min(budget, seg["device_bytes"]) - 2 * MIB)
        r = top("--once", "--pool", POOL)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(" LIMIT ", r.stdout)
        row = [line.split() for line in r.stdout.splitlines()
               if line.split()[:1] == [str(procs[0].pid)]][0]
        self.assertEqual(row[9], "8")       # LIMIT (MiB)
        self.assertEqual(row[13], "8")      # ENTITLED (MiB)

    def test_once_prints_a_table(self):
        r = top("--once", "--pool", POOL)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("held of a", r.stdout)
        self.assertIn("kept free while shared", r.stdout)
        self.assertIn(" %d " % os.getpid(), r.stdout)

    def test_corrupted_segment_refused(self):
        good = json.loads(top("--json", "--pool", POOL).stdout)["segments"][0]["path"]
        path = "/dev/shm/kvshim-GPU-bad-%s" % POOL
        with open(path, "wb") as f:
            f.write(b"\xff" * os.path.getsize(good))
        self.addCleanup(os.unlink, path)
        r = top("--json", "--pool", POOL)
        self.assertEqual(r.returncode, 0, r.stderr)
        bad = [s for s in json.loads(r.stdout)["segments"] if s["path"] == path]
        self.assertEqual(len(bad), 1)
        self.assertIn("bad magic", bad[0]["error"])
        r = top("--once", "--pool", POOL)
        self.assertIn("refused", r.stdout)

    def test_fifo_never_waited_on(self):
        path = "/dev/shm/kvshim-GPU-fifo-%s" % POOL
        os.mkfifo(path, 0o600)
        self.addCleanup(os.unlink, path)
        r = top("--once", "--pool", POOL)      # the old reader blocked here for ever
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("FIFO", r.stdout)
        bad = [s for s in json.loads(top("--json", "--pool", POOL).stdout)["segments"]
               if s["path"] == path]
        self.assertIn("not a regular file", bad[0]["error"])

    def test_escapes_never_printed(self):
        p = subprocess.Popen([sys.executable, "-c", EVIL], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        self.addCleanup(p.stdout.close)
        self.addCleanup(p.wait)
        self.addCleanup(p.stdin.close)
        self.assertEqual(p.stdout.readline().strip(), "ready")
        r = top("--once", "--pool", POOL)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("\x1b", r.stdout)
        self.assertNotIn("\x07", r.stdout)
        self.assertIn("\\x1b[2J", r.stdout)
        procs = json.loads(top("--json", "--pool", POOL).stdout)["segments"][0]["processes"]
        evil = [q for q in procs if q["pid"] == p.pid]
        self.assertEqual(evil[0]["command"], "\\x1b[2J\\x1b]0;x\\x07ev")

    def test_one_process_on_two_gpus(self):
        if devices() < 2:
            self.skipTest("the driver has fewer than two devices")
        pool = POOL + "two"
        p = subprocess.Popen([sys.executable, "-c", TWO], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, KVSHIM_POOL=pool))
        self.addCleanup(p.stdout.close)
        self.addCleanup(p.wait)
        self.addCleanup(p.stdin.close)
        self.assertEqual(p.stdout.readline().strip(), "ready")
        r = top("--json", "--pool", pool)
        self.assertEqual(r.returncode, 0, r.stderr)
        segs = json.loads(r.stdout)["segments"]
        for s in segs:
            self.addCleanup(os.unlink, s["path"])
        # a segment per GPU, the process in each with what it holds there
        self.assertEqual(len(segs), 2)
        gpus = sorted(s["gpu"] for s in segs)
        self.assertNotEqual(gpus[0], gpus[1])
        held = sorted([q["held"] for q in s["processes"] if q["pid"] == p.pid][0] for s in segs)
        self.assertEqual(held, [2 * MIB, 4 * MIB])
        for s in segs:
            self.assertTrue(s["gpu"].startswith("GPU-") and len(s["gpu"]) == 40, s["gpu"])
            self.assertIn(s["gpu"], s["name"])
        r = top("--once", "--pool", pool)
        self.assertEqual(r.returncode, 0, r.stderr)
        for g in gpus:
            self.assertIn(g + " ", r.stdout)
        self.assertEqual(r.stdout.count(" %d " % p.pid), 2)
        text = subprocess.run([os.environ["KVSHIM_CONFIG_BIN"], "--segments", "--pool", pool],
                              capture_output=True, text=True, timeout=60).stdout
        for g in gpus:
            self.assertIn(": %s, version" % g, text)

    def test_no_reader(self):
        env = dict(os.environ, KVSHIM_CONFIG_BIN="/nonexistent/kvshim-config")
        r = top("--once", "--pool", POOL, env=env)
        self.assertEqual(r.returncode, 1)
        self.assertIn("kvshim-top: ", r.stderr)

    def test_bad_arguments(self):
        self.assertEqual(top("--interval", "0").returncode, 2)
        self.assertEqual(top("--bogus").returncode, 2)
        for args in (["--bogus"], ["--pool"], ["--json", "x"]):
            r = subprocess.run([os.environ["KVSHIM_CONFIG_BIN"], "--segments"] + args,
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn("unknown argument", r.stderr)

    def test_bad_interval_is_an_argument_error(self):
        """--interval nan or inf: refused as --interval 0 is (exit 2), not
        a traceback from time.sleep after the first view."""
        for bad in ("nan", "inf", "-inf", "1e300", "-1", "x"):
            r = subprocess.run([sys.executable, TOP, "--interval", bad, "--pool", POOL],
                               capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 2, (bad, r.stderr[-300:]))
            self.assertNotIn("Traceback", r.stderr)
            self.assertIn("--interval", r.stderr)

    def test_closed_output_no_traceback(self):
        """kvshim-top | head, or its stdout closed: it ends quietly (a closed
        pipe) or with a one-line message (no stdout), exit 1, never with a
        Python traceback."""
        rd, wr = os.pipe()
        os.close(rd)
        try:
            for args in (["--json"], ["--once"]):
                r = subprocess.run([sys.executable, TOP, "--pool", POOL] + args, stdout=wr,
                                   stderr=subprocess.PIPE, text=True, timeout=60)
                self.assertEqual((r.returncode, r.stderr), (1, ""), args)
        finally:
            os.close(wr)
        for args in (["--json"], ["--once"]):
            r = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, TOP,
                                "--pool", POOL] + args,
                               stderr=subprocess.PIPE, text=True, timeout=60)
            self.assertEqual(r.returncode, 1, (args, r.stderr))
            self.assertEqual(r.stderr.count("\n"), 1, (args, r.stderr))
            self.assertIn("stdout is closed", r.stderr)

    def test_reader_not_answering_json(self):
        """KVSHIM_CONFIG_BIN naming a program that prints no JSON (another
        tool, an older kvshim-config): a one-line error, exit 1, as for a
        reader that is missing."""
        env = dict(os.environ, KVSHIM_CONFIG_BIN="/bin/echo")
        for args in (["--once"], ["--json"]):
            r = top("--pool", POOL, *args, env=env)
            self.assertEqual(r.returncode, 1, r.stderr[-300:])
            self.assertTrue(r.stderr.startswith("kvshim-top: /bin/echo "), r.stderr)
            self.assertEqual(r.stderr.count("\n"), 1, r.stderr)
            self.assertEqual(r.stdout, "")

    def test_pool_is_matched_whole(self):
        """--pool NAME lists that pool's segments only, not those of a pool
        whose name ends in -NAME (pool names may hold '-')."""
        good = json.loads(top("--json", "--pool", POOL).stdout)["segments"][0]["path"]
        other = good[:-len(POOL)] + "team-" + POOL
        with open(good, "rb") as f, open(other, "wb") as g:
            g.write(f.read())
        self.addCleanup(os.unlink, other)
        paths = [s["path"] for s in json.loads(top("--json", "--pool", POOL).stdout)["segments"]]
        self.assertEqual(paths, [good])
        text = subprocess.run([os.environ["KVSHIM_CONFIG_BIN"], "--segments", "--pool", POOL],
                              capture_output=True, text=True, timeout=60).stdout
        self.assertNotIn("team-", text)
        # a GPU's default segment (no pool) is no pool named after its
        # UUID's last digits (a GPU of its own: no live segment touched)
        tail = "%012x" % os.getpid()
        plain = os.path.join(os.path.dirname(good),
                             "kvshim-GPU-00000000-0000-4000-8000-" + tail)
        with open(good, "rb") as f, open(plain, "xb") as g:
            g.write(f.read())
        self.addCleanup(os.unlink, plain)
        paths = [s["path"] for s in json.loads(top("--json", "--pool", tail).stdout)["segments"]]
        self.assertEqual(paths, [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
