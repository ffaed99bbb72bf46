"""tests/gpu/hf_cb_pack.py on the CPU: its arguments, the checks it
makes of a pair of runs (synthetic runs here; the GPU gives the real
ones), and that its stand-in for kvshim's ask is what the adapter's
tracker reads. Run by `make check` (PYTHONPATH holds scripts/python).
"""
import importlib.util
import os
import subprocess
import sys
import types
import unittest

import kvshim
from kvshim.adapters import blocks, transformers_cb

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "gpu", "hf_cb_pack.py")
_spec = importlib.util.spec_from_file_location("hf_cb_pack", SCRIPT)
hcp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hcp)


def runs(**packed):
    """A plain run and a packed one with the same tokens for every request,
    12 blocks moved."""
    out = {"q%d" % i: [i, i + 1] for i in range(hcp.REQUESTS)}
    p = {"outputs": dict(out), "moved": 12, "packed_pages": 1, "preempted": 0}
    p.update(packed)
    return {"outputs": out}, p


class PackCheckTest(unittest.TestCase):
    def test_same_tokens_and_moves_pass(self):
        self.assertEqual(hcp.failures(True, *runs()), [])

    def test_tokens_that_differ_fail(self):
        plain, packed = runs()
        packed["outputs"]["q3"] = [9]
        self.assertEqual(hcp.compare(plain["outputs"], packed["outputs"]), ["q3"])
        self.assertIn("1 requests' tokens differ", hcp.failures(True, plain, packed)[0])

    def test_a_request_missing_fails(self):
        plain, packed = runs()
        del packed["outputs"]["q1"]
        self.assertEqual(hcp.compare(plain["outputs"], packed["outputs"]), ["q1"])
        self.assertIn("the packed run finished %d of %d" % (hcp.REQUESTS - 1, hcp.REQUESTS),
                      hcp.failures(True, plain, packed)[0])

    def test_requests_missing_from_both_fail(self):
        plain, packed = runs()
        for run in (plain, packed):
            del run["outputs"]["q2"]
        self.assertEqual(len(hcp.failures(True, plain, packed)), 2)

    def test_nothing_moved_fails(self):
        self.assertEqual(hcp.failures(False, *runs(moved=0)),
                         ["graphs off: no block was moved"])

    def test_preemption_fails(self):
        self.assertEqual(hcp.failures(True, *runs(preempted=2)),
                         ["graphs on: 2 requests preempted"])

    def test_a_failed_run_fails(self):
        self.assertEqual(hcp.failures(True, None, runs()[1]), ["graphs on: a run failed"])

    def test_requests_end_apart(self):
        lengths = [hcp.new_tokens(i) for i in range(hcp.REQUESTS)]
        self.assertTrue(8 <= min(lengths) and max(lengths) <= 192, lengths)
        self.assertEqual(len(set(lengths)), hcp.REQUESTS)      # no two alike


class StandInTest(unittest.TestCase):
    """The stand-in replaces kvshim.Group.share_asked and four of the
    adapter's functions; on the GPU a replaced name the adapter no longer
    calls asked nothing and moved nothing (session 57's run)."""

    REPLACED = ((kvshim.Group, "share_asked"), (transformers_cb, "_shared"),
                (transformers_cb, "_cushion_blocks"), (transformers_cb, "_victims"),
                (transformers_cb, "_give_back_one"))

    def setUp(self):
        for owner, name in self.REPLACED:
            self.addCleanup(setattr, owner, name, getattr(owner, name))

    def stood_in(self, pages):
        """A tracker's ask, read through the adapter's BlockTracker.asked
        after the stand-in is in, over 2 * ASK_EVERY reads, with the plan
        giving pages each time and no page going back."""
        tracker = types.SimpleNamespace(emptied=0, page_index_bytes=4096,
                                        pack_plan=lambda init: list(range(pages)),
                                        cache_only_pages=lambda init: [])
        bm = types.SimpleNamespace(_init_block_ids={})
        proc = types.SimpleNamespace(cache=types.SimpleNamespace(_block_manager=bm))
        hcp.stand_in_for_the_ask(proc, tracker)
        reader = types.SimpleNamespace(_asked=(0.0, 0), _ask_seen=lambda now, n: None,
                                       group=kvshim.Group.__new__(kvshim.Group))
        asked = blocks.BlockTracker.asked.__wrapped__     # its body, not its timing
        return [asked(reader, ttl=-1) for _ in range(2 * hcp.ASK_EVERY)]

    def test_the_tracker_reads_the_stand_in(self):
        asks = self.stood_in(pages=3)
        n = hcp.ASK_EVERY
        self.assertEqual(asks[:n - 1], [0] * (n - 1))
        # at the ASK_EVERY-th read it asks for the plan's 3 pages, and keeps
        # asking for ASK_READS reads while none goes back
        self.assertEqual(asks[n - 1:n - 1 + hcp.ASK_READS], [3 * 4096] * hcp.ASK_READS)
        self.assertEqual(asks[n - 1 + hcp.ASK_READS], 0)
        self.assertIs(transformers_cb._shared(None), True)
        self.assertEqual(transformers_cb._victims(None, None), [])

    def test_nothing_to_give_asks_nothing(self):
        self.assertEqual(set(self.stood_in(pages=0)), {0})

    def test_a_name_the_adapter_lacks_stops_the_run(self):
        before = dict(vars(transformers_cb))
        with self.assertRaises(SystemExit) as e:
            hcp.replace(transformers_cb, "_no_such_rule", lambda: 0)
        self.assertIn("has no _no_such_rule", str(e.exception))
        self.assertIn("transformers_cb", str(e.exception))
        self.assertEqual(dict(vars(transformers_cb)), before)    # nothing replaced

    def test_a_name_that_is_not_a_function_stops_the_run(self):
        before = transformers_cb.PACK_VAR
        with self.assertRaises(SystemExit) as e:
            hcp.replace(transformers_cb, "PACK_VAR", lambda: 0)
        self.assertIn("has no PACK_VAR", str(e.exception))
        self.assertEqual(transformers_cb.PACK_VAR, before)


class ArgumentsTest(unittest.TestCase):
    def test_bad_graphs_refused(self):
        for bad in ("", "on,on", "maybe"):
            p = subprocess.run([sys.executable, SCRIPT, "--graphs", bad],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 2, bad)
            self.assertIn("--graphs", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
