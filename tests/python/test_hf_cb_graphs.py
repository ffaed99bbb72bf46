"""tests/gpu/hf_cb_graphs.py on the CPU: its arguments, the parsing of
nvidia-smi's output, the bounds, the checks and table it makes of its
runs' figures (synthetic runs here; the GPU gives the real ones), and the
records it keeps of them and judges again with --records.
Run by `make check`.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
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
            self.assertEqual(hcg._timed_passes(), 3)
            os.environ["HF_CB_PASSES"] = "1"
            self.assertEqual(hcg._timed_passes(), 1)
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
        saved = os.environ.pop("HF_CB_ROUNDS", None)
        try:
            a = hcg.parse_args([])
            self.assertEqual((a.rounds, a.models, a.graphs, a.records),
                             (2, ["28l", "16l"], [True, False], None))
            os.environ["HF_CB_ROUNDS"] = "3"
            self.assertEqual(hcg.parse_args([]).rounds, 3)
            self.assertEqual(hcg.parse_args(["--rounds", "4"]).rounds, 4)
        finally:
            os.environ.pop("HF_CB_ROUNDS", None)
            if saved is not None:
                os.environ["HF_CB_ROUNDS"] = saved
        self.assertEqual(hcg.parse_args(["--records", "x"]).records, "x")


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


class RecordsTest(unittest.TestCase):
    """Each run's record, and --records judging a folder of them."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, r, name=None, text=None, anonymous=False):
        """Write r as its run's record; anonymous: without the model, graphs,
        mode and round (records before cb41d59 lack mode and round), so
        that only the file's name gives them."""
        name = name or hcg.record_name(r["model"], r["graphs"], r["mode"], r["round"])
        if anonymous:
            r = {k: v for k, v in r.items() if k not in ("model", "graphs", "mode", "round")}
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text if text is not None else json.dumps(r))
        return name

    def judge(self, folder, *more):
        out = tempfile.mkdtemp(dir=self.dir, prefix="out")
        p = subprocess.run([sys.executable, SCRIPT, "--records", folder] + list(more),
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, KVSHIM_SUITE_OUT=out))
        return p, out

    def test_a_run_keeps_what_was_measured_of_it(self):
        # run_one with the child and the sampler stood in for: the record on
        # disk holds the NVML peak and is judged as the run was
        child = {k: v for k, v in run("16l", False, "kvshim", 3).items()
                 if k not in ("mode", "round", "nvml_peak", "nvml_how")}

        class Child:
            def __init__(self, cmd, env):
                with open(cmd[-1], "w") as f:
                    json.dump(child, f)
                self.pid = 1

            def wait(self):
                return 0

        class Sampler:
            def start(self):
                pass

            def finish(self):
                return 5 * GIB, "pynvml, pid"

        saved = hcg.subprocess.Popen, hcg.GpuSampler, hcg.built_tree.kvshim_run
        hcg.subprocess.Popen, hcg.GpuSampler = Child, Sampler
        hcg.built_tree.kvshim_run = lambda: "kvshim-run"
        try:
            got = hcg.run_one("16l", False, "kvshim", 3, self.dir, {})
        finally:
            hcg.subprocess.Popen, hcg.GpuSampler, hcg.built_tree.kvshim_run = saved
        self.assertEqual(os.listdir(self.dir), ["hf_cb_graphs_16l_eager_kvshim_r3.json"])
        self.assertEqual(hcg.load_records(self.dir), [got])
        self.assertEqual((got["nvml_peak"], got["mode"], got["round"]), (5 * GIB, "kvshim", 3))

        # a child that fails leaves no record: not even an earlier run's
        class Failing(Child):
            def __init__(self, cmd, env):
                self.pid = 1

            def wait(self):
                return 1

        hcg.subprocess.Popen, hcg.GpuSampler = Failing, Sampler
        hcg.built_tree.kvshim_run = lambda: "kvshim-run"
        try:
            self.assertIsNone(hcg.run_one("16l", False, "kvshim", 3, self.dir, {}))
        finally:
            hcg.subprocess.Popen, hcg.GpuSampler, hcg.built_tree.kvshim_run = saved
        self.assertEqual(os.listdir(self.dir), [])

    def test_records_judged_as_the_runs(self):
        runs = both() + [run("16l", False, "plain", 1), run("16l", False, "kvshim", 1)]
        for r in runs:
            self.write(r, anonymous=True)       # the names alone say which run each is
        self.write({}, name="notes.txt", text="not a record")
        got = hcg.load_records(self.dir)
        self.assertEqual(len(got), 4)
        self.assertEqual(hcg.summarize(got), hcg.summarize(runs))
        before = sorted(os.listdir(self.dir))
        p, out = self.judge(self.dir)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("4 runs recorded in", p.stdout)
        self.assertIn("| 16l | off | kvshim | yes | 500 (500) | 1.000x |", p.stdout)
        self.assertIn("hf_cb_graphs: PASS", p.stdout)
        self.assertEqual(sorted(os.listdir(self.dir)), sorted(before + [os.path.basename(out)]))
        with open(os.path.join(out, "hf_cb_graphs.json")) as f:
            self.assertEqual(json.load(f)["failures"], [])

    def test_failing_records_fail(self):
        self.write(run("28l", True, "plain", 0))
        self.write(run("28l", True, "kvshim", 0, wall_s=2.0 / 0.9))
        p, _ = self.judge(self.dir)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("FAIL: 28l, graphs on: tokens/s 0.900x of plain", p.stdout)

    def test_an_older_record_has_no_nvml_reading(self):
        # as records were before cb41d59: no NVML peak, mode or round
        old = run("28l", True, "kvshim", 0)
        del old["nvml_peak"], old["nvml_how"], old["mode"], old["round"]
        self.write(run("28l", True, "plain", 0))
        self.write(old, name=hcg.record_name("28l", True, "kvshim", 0))
        got = hcg.load_records(self.dir)
        self.assertEqual(hcg.summarize(got)[1], ["28l, graphs on, round 0: no NVML reading"])
        self.assertIn("| - (6744, not recorded) |", hcg.table(hcg.summarize(got)[0]))

    def test_a_record_without_read_is_judged(self):
        r = run("28l", True, "kvshim", 0)
        del r["read"]
        self.write(run("28l", True, "plain", 0))
        self.write(r)
        p, _ = self.judge(self.dir)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("read budget None", p.stdout)

    def test_unpaired_runs_are_named(self):
        # cut in round 1, where kvshim goes first: its plain run never ran
        for r in both() + [run("28l", True, "kvshim", 1)]:
            self.write(r)
        self.assertEqual(hcg.unpaired(hcg.load_records(self.dir)), [
            "28l, graphs on, round 1: kvshim run without a plain run (its tokens/s counts, "
            "its tokens are compared with nothing)"])
        p, _ = self.judge(self.dir)
        self.assertIn("round 1: kvshim run without a plain run", p.stdout)
        self.assertEqual(hcg.unpaired(both()), [])

    def test_write_json_leaves_no_part(self):
        path = os.path.join(self.dir, "x.json")
        hcg.write_json(path, {"a": 1})
        hcg.write_json(path, {"a": 2})
        self.assertEqual(os.listdir(self.dir), ["x.json"])
        with open(path) as f:
            self.assertEqual(json.load(f), {"a": 2})

    def test_bad_records_exit_2_naming_them(self):
        kvshim = hcg.record_name("28l", True, "kvshim", 0)
        lacking_page = {k: v for k, v in run("28l", True, "kvshim", 0).items() if k != "page"}
        cases = [
            ({}, "no hf_cb_graphs_*_r*.json record in"),
            ({"hf_cb_graphs_99l_graphs_plain_r0.json": "{}"}, "no hf_cb_graphs_*_r*.json"),
            ({kvshim: "{not json"}, kvshim),
            ({kvshim: "[1, 2]"}, kvshim + " holds no JSON object"),
            ({kvshim: json.dumps({"tokens": 1})}, "lacks outputs, wall_s, kv_peak"),
            ({kvshim: json.dumps(lacking_page)}, "lacks page"),
            ({kvshim: json.dumps(run("28l", True, "kvshim", 0, wall_s=0))}, "is no rate"),
            ({kvshim: json.dumps(run("28l", True, "kvshim", 0, outputs=None))}, "lacks outputs"),
            ({kvshim: json.dumps(run("28l", True, "kvshim", 0, weights=None))}, "lacks weights"),
            ({kvshim: json.dumps(run("28l", True, "kvshim", 0, kv_peak="x"))}, 'kv_peak "x"'),
            ({kvshim: json.dumps(run("28l", True, "kvshim", 0, nvml_peak="5"))}, 'nvml_peak "5"'),
            ({kvshim: json.dumps(run("28l", True, "kvshim", 0, tokens=True))}, "tokens true"),
            ({kvshim: json.dumps(run("28l", True, "kvshim", 0, walls=["a"]))}, "walls"),
            ({kvshim: json.dumps(run("28l", True, "kvshim", 0, walls=None))}, "walls null"),
            ({kvshim: json.dumps(run("28l", True, "kvshim", 0, adapter_s=[]))}, "adapter_s []"),
            ({kvshim: json.dumps(run("28l", True, "kvshim", 0, wall_s=float("inf")))},
             "wall_s Infinity"),
            ({kvshim: json.dumps(run("28l", True, "kvshim", 0, warmup_failed="no"))},
             'warmup_failed "no"'),
            ({kvshim: json.dumps(run("28l", True, "plain", 0))},
             'holds mode "plain", not the mode "kvshim" its name gives'),
            ({kvshim: json.dumps(run("16l", False, "kvshim", 5))},
             'holds model "16l", graphs false, round 5, not the model "28l", graphs true, round 0'),
            ({"hf_cb_graphs_28l_graphs_kvshim_r01.json": json.dumps(run("28l", True, "kvshim", 1))},
             "no hf_cb_graphs_*_r*.json record in"),
        ]
        for files, why in cases:
            with tempfile.TemporaryDirectory() as d:
                for name, text in files.items():
                    with open(os.path.join(d, name), "w") as f:
                        f.write(text)
                with self.assertRaises(ValueError) as e:
                    hcg.load_records(d)
                self.assertIn(why, str(e.exception))
                before = sorted(os.listdir(d))
                p, out = self.judge(d)
                self.assertEqual(p.returncode, 2, (why, p.stdout, p.stderr))
                self.assertIn(why, p.stderr)
                self.assertEqual(sorted(os.listdir(d)), before)
                self.assertEqual(os.listdir(out), [])
        p, out = self.judge(os.path.join(self.dir, "none"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("none is not a folder", p.stderr)
        self.assertEqual(os.listdir(out), [])

    def test_records_take_no_run_options(self):
        self.write(run("28l", True, "plain", 0))
        for more in (["--rounds", "2"], ["--models", "16l"], ["--graphs", "on"]):
            p, out = self.judge(self.dir, *more)
            self.assertEqual(p.returncode, 2, more)
            self.assertIn(more[0] + " cannot go with it", p.stderr)
            self.assertEqual(os.listdir(out), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
