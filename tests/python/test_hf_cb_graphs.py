"""tests/gpu/hf_cb_graphs.py on the CPU: its arguments, the parsing of
nvidia-smi's output, the bounds, and the checks and table it makes of its
runs' figures (synthetic runs here; the GPU gives the real ones).
Run by `make check`.
"""
import importlib.util
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "gpu", "hf_cb_graphs.py")
_spec = importlib.util.spec_from_file_location("hf_cb_graphs", SCRIPT)
hcg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hcg)
MIB, GIB = 1 << 20, 1 << 30


def run(model, graphs, mode, rnd, **kw):
    """A run's figures as the child writes them, plus what the parent adds."""
    r = {"model": model, "graphs": graphs, "mode": mode, "round": rnd,
         "outputs": [[[1, 2]], [[3, 4]]], "tokens": 1000, "wall_s": 2.0, "weights": 2 * GIB,
         "nvml_peak": 5 * GIB, "nvml_how": "pynvml, pid", "capacity": 2875648, "read": None,
         "max_batch_tokens": 8192, "mask_bytes": 45060 * MIB, "buffer_bytes": 23 * MIB,
         "reserved_peak": GIB, "graphs_made": 3, "attn": "paged|sdpa", "warmup_failed": False,
         "kv_peak": 78645 * MIB}
    if mode == "kvshim":
        r.update(read=16384, mask_bytes=384 * MIB, buffer_bytes=MIB, live_kv=600 * MIB,
                 kv_peak=700 * MIB, ntensors=56, page=2 * MIB, padding_bytes=56 * 2 * MIB)
    r.update(kw)
    return r


def both(**kvshim):
    return [run("28l", True, "plain", 0), run("28l", True, "kvshim", 0, **kvshim)]


class ArgumentsTest(unittest.TestCase):
    def test_timed_passes(self):
        saved = os.environ.get("HF_CB_PASSES")
        try:
            os.environ.pop("HF_CB_PASSES", None)
            self.assertEqual(hcg._timed_passes(), 1)
            os.environ["HF_CB_PASSES"] = "3"
            self.assertEqual(hcg._timed_passes(), 3)
            for bad in ("0", "11", "x", "", "-1", " 2"):
                os.environ["HF_CB_PASSES"] = bad
                with self.assertRaises(SystemExit) as e:
                    hcg._timed_passes()
                self.assertIn("HF_CB_PASSES", str(e.exception.code))
        finally:
            if saved is None:
                os.environ.pop("HF_CB_PASSES", None)
            else:
                os.environ["HF_CB_PASSES"] = saved

    def refused(self, argv, name, env=None):
        out = subprocess.run([sys.executable, SCRIPT] + argv, capture_output=True, text=True,
                             env=dict(os.environ, **(env or {})), timeout=60)
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn(name, out.stderr)

    def test_bad_arguments_exit_2(self):
        self.refused(["--rounds", "0"], "--rounds")
        self.refused(["--rounds", "21"], "--rounds")
        self.refused(["--rounds", "x"], "--rounds")
        self.refused([], "--rounds", env={"HF_CB_ROUNDS": "two"})
        self.refused(["--models", "28l,99l"], "--models")
        self.refused(["--models", "28l,28l"], "--models")
        self.refused(["--models", ""], "--models")
        self.refused(["--graphs", "maybe"], "--graphs")
        self.refused(["--bogus"], "--bogus")

    def test_arguments(self):
        a = hcg.parse_args(["--rounds", "3", "--models", "16l", "--graphs", "off,on"])
        self.assertEqual((a.rounds, a.models, a.graphs), (3, ["16l"], [False, True]))
        a = hcg.parse_args([])
        self.assertEqual((a.models, a.graphs), (["28l", "16l"], [True, False]))


class HelpersTest(unittest.TestCase):
    def test_nvidia_smi_output(self):
        text = "1234, 5678\n 99 , 10\n[N/A], 3\n1234, 2\n\n"
        self.assertEqual(hcg.parse_compute_apps(text), {1234: 5680 * MIB, 99: 10 * MIB})
        self.assertEqual(hcg.parse_gpu_used("100\n 28 \n"), 128 * MIB)
        self.assertIsNone(hcg.parse_gpu_used("[N/A]\n"))

    def test_pages_covering(self):
        page = 2 * MIB
        self.assertEqual(hcg.pages_covering(0, page, page), 1)
        self.assertEqual(hcg.pages_covering(page - 1, page + 1, page), 2)
        self.assertEqual(hcg.pages_covering(5 * page, 5 * page, page), 0)
        # the two padding blocks of 128 KiB at the end of a 28l tensor
        self.assertEqual(hcg.pages_covering(11233 * 128 << 10, 11235 * 128 << 10, page), 1)

    def test_bounds(self):
        self.assertEqual(hcg.nvml_bound(2 * GIB, GIB), 7 * GIB)
        self.assertEqual(hcg.kv_bound(600 * MIB, 56, 2 * MIB, 112 * MIB),
                         (600 + 112 + 112 + 64) * MIB)

    def sampler(self, reads, base):
        s = hcg.GpuSampler()
        s._read, s.base, s.pid = iter(reads).__next__, base, 1234
        for _ in reads:
            s.sample()
        return s.finish()

    def test_sampler(self):
        # the pid's own figure when NVML names it
        self.assertEqual(self.sampler([({1234: 3 * GIB, 7: GIB}, 10 * GIB),
                                       ({1234: 5 * GIB}, 12 * GIB), ({}, 11 * GIB)], GIB),
                         (5 * GIB, "%s, pid" % hcg.GpuSampler().how))
        # never named (a container's pid namespace): the device's, less the base
        self.assertEqual(self.sampler([({99: GIB}, 4 * GIB), ({}, 6 * GIB)], GIB)[0], 5 * GIB)
        peak, how = self.sampler([({}, None)], None)
        self.assertIsNone(peak)
        self.assertTrue(how.endswith("unread"), how)

    def test_sampler_runs_until_finished(self):
        s = hcg.GpuSampler(period=0.01)
        seen = []
        s._read = lambda: seen.append(1) or ({1234: GIB}, None)
        s.pid = 1234
        s.start()
        while len(seen) < 3:
            s._halt.wait(0.01)
        self.assertEqual(s.finish()[0], GIB)
        self.assertFalse(s.is_alive())


class SummaryTest(unittest.TestCase):
    def test_all_checks_hold(self):
        rows, failures = hcg.summarize(both())
        self.assertEqual(failures, [])
        self.assertEqual([r["mode"] for r in rows], ["plain", "kvshim"])
        k = rows[1]
        self.assertEqual(k["ratio"], 1.0)
        self.assertEqual(k["nvml_bound"], 2 * GIB + 600 * MIB + 4 * GIB)
        text = hcg.table(rows)
        self.assertIn("| 28l | on | kvshim | yes | 500 (500) | 1.000x | 5120 (6744, pynvml, pid)",
                      text)
        self.assertIn("2875648 / 16384 | 384 |", text)

    def test_each_check_fails(self):
        cases = {
            "tokens differ": dict(outputs=[[[1, 2]], [[3, 5]]]),
            "tokens/s 0.960x": dict(wall_s=2.0 / 0.96),
            "NVML peak 6745 MiB over": dict(nvml_peak=6745 * MIB),
            "no NVML reading": dict(nvml_peak=None),
            "KV pages 889 MiB over 888 MiB": dict(kv_peak=889 * MIB),
            "the warm-up failed": dict(warmup_failed=True),
            "the adapter did not attach": dict(live_kv=None),
        }
        for why, kw in cases.items():
            runs = both(**kw)
            if kw.get("live_kv", 0) is None:
                del runs[1]["live_kv"]
            rows, failures = hcg.summarize(runs)
            self.assertEqual(len(failures), 1, (why, failures))
            self.assertIn(why, failures[0])
        # at the bounds: no failure
        self.assertEqual(hcg.summarize(both(nvml_peak=6744 * MIB, kv_peak=888 * MIB))[1], [])

    def test_medians_over_rounds(self):
        runs = both() + [run("28l", True, "kvshim", 1, wall_s=4.0),
                         run("28l", True, "plain", 1, wall_s=1.0),
                         run("28l", True, "kvshim", 2, wall_s=1.0),
                         run("28l", True, "plain", 2, wall_s=4.0)]
        rows, failures = hcg.summarize(runs)
        self.assertEqual(failures, [])
        self.assertEqual(sorted(rows[1]["rates"]), [250, 500, 1000])
        self.assertEqual(rows[1]["tps"], rows[0]["tps"])

    def test_the_worst_round_is_shown(self):
        runs = both() + [run("28l", True, "kvshim", 1, nvml_peak=6 * GIB),
                         run("28l", True, "plain", 1)]
        rows = hcg.summarize(runs)[0]
        self.assertEqual(rows[1]["nvml_peak"], 6 * GIB)

    def test_a_failed_run_leaves_the_others(self):
        # the kvshim run alone: nothing to compare its tokens with
        rows, failures = hcg.summarize(both()[1:])
        self.assertEqual(failures, [])
        self.assertIsNone(rows[0]["identical"])
        self.assertIsNone(rows[0]["ratio"])
        self.assertIn("| 28l | on | kvshim | - | 500 (500) | - |", hcg.table(rows))

    def test_workloads_kept_apart(self):
        runs = both() + [run("16l", False, "plain", 0),
                         run("16l", False, "kvshim", 0, outputs=[[[9]], [[9]]])]
        rows, failures = hcg.summarize(runs)
        self.assertEqual([(r["model"], r["graphs"]) for r in rows],
                         [("28l", True)] * 2 + [("16l", False)] * 2)
        self.assertEqual(failures, ["16l, graphs off: tokens differ from plain"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
