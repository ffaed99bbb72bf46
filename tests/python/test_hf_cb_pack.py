"""tests/gpu/hf_cb_pack.py on the CPU: its arguments, and the checks it
makes of a pair of runs (synthetic runs here; the GPU gives the real
ones). Run by `make check`.
"""
import importlib.util
import os
import subprocess
import sys
import unittest

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


class ArgumentsTest(unittest.TestCase):
    def test_bad_graphs_refused(self):
        for bad in ("", "on,on", "maybe"):
            p = subprocess.run([sys.executable, SCRIPT, "--graphs", bad],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 2, bad)
            self.assertIn("--graphs", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
