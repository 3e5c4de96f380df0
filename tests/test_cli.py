import json

import numpy as np
import pytest

from autogemm import machine
from autogemm.cli import main


def test_info_json(tmp_path):
    out = tmp_path / "info.json"
    assert main(["info", "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["machine_id"] == machine.detect().machine_id
    assert set(info["default_kernels"]) == {"float32", "float64", "bfloat16"}
    host = machine.detect()
    assert info["bfloat16_isas"] == list(host.isas_for("bfloat16"))
    assert f"_{info['bfloat16_isas'][0]}_" in info["default_kernels"]["bfloat16"]


def test_bench_reports_kernel_beside_numpy(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--shape", "96x64x80", "--threads", "1", "--rounds", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    impls = {row["impl"] for row in report["rows"]}
    assert {"default", "numpy"} <= impls
    default = next(r for r in report["rows"] if r["impl"] == "default")
    assert default["gflops"]["median"] > 0 and default["vs_numpy"] > 0 and default["pct_peak"] > 0
    assert report["blas"]


def test_bench_calls_times_python_calls_beside_numpy(tmp_path):
    out = tmp_path / "calls.json"
    assert main(["bench", "--shape", "9x7x5", "--calls", "--threads", "1", "--rounds", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {row["impl"] for row in rows} == {"matmul", "numpy"}
    assert all(row["shape"] == [9, 7, 5] and row["gflops"]["median"] > 0 for row in rows)
    assert next(r for r in rows if r["impl"] == "numpy")["vs_numpy"] == 1.0


def test_bench_calls_take_a_and_b_as_transposed_views(tmp_path, monkeypatch):
    """MxNxK:tn (nt, tt): the calls get A and/or B as transposed views of C-ordered arrays, and the
    rows say so; the narrow suite times each of its shapes in every layout, as calls."""
    import autogemm
    from autogemm import bench, cli

    seen, matmul = set(), autogemm.matmul

    def recording(a, b, **kwargs):
        seen.add(("t" if a.flags.f_contiguous and not a.flags.c_contiguous else "n")
                 + ("t" if b.flags.f_contiguous and not b.flags.c_contiguous else "n"))
        return matmul(a, b, **kwargs)

    monkeypatch.setattr(autogemm, "matmul", recording)
    out = tmp_path / "layouts.json"
    assert main(["bench", "--shape", "9x7x5:tn", "--shape", "9x7x5:nt", "--calls", "--threads", "1", "--rounds", "1",
                 "--json", str(out)]) == 0
    assert seen == {"tn", "nt"}
    rows = json.loads(out.read_text())["rows"]
    assert sorted((row["layout"], row["impl"]) for row in rows) == [
        ("nt", "matmul"), ("nt", "numpy"), ("tn", "matmul"), ("tn", "numpy")]
    narrow = cli._shapes(cli.build_parser().parse_args(["bench", "--suite", "narrow"]))
    assert len(narrow) == 4 * len(bench.SUITES["narrow"]) and all(calls for _, calls, _ in narrow)
    assert {layout for _, _, layout in narrow} == set(bench.LAYOUTS)


def test_bench_bfloat16_compares_with_numpy_float32(tmp_path):
    out = tmp_path / "bf16.json"
    assert main(["bench", "--dtype", "bfloat16", "--shape", "64x48x40", "--threads", "1", "--rounds", "1",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"default", "numpy"} <= {row["impl"] for row in report["rows"]}
    assert all(row["dtype"] == "bfloat16" for row in report["rows"])
    assert "bfloat16/1" in report["peak_gflops"]


def test_list_json(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGEMM_DATA_DIR", str(tmp_path))
    out = tmp_path / "list.json"
    assert main(["list", "--json", str(out), "--tuned-dir", str(tmp_path / "none")]) == 0
    assert json.loads(out.read_text())["tuned"] == []


@pytest.mark.parametrize("argv, message", [
    (["bench", "--shape", "12xfoo"], "not MxNxK"),
    (["bench", "--threads", "0"], "positive"),
    (["bench", "--suite", "nope"], "unknown suite"),
    (["bench", "--shape", "9x7x5:tn"], "add --calls"),
    (["bench", "--shape", "9x7x5:tx", "--calls"], "the layout after ':'"),
    (["bench", "--workload", "gpt2-124m", "--dtype", "bfloat16"], "float32 or float64"),
    (["export", "--workload", "gpt2-124m", "--dtype", "bfloat16"], "float32 or float64"),
    (["tune", "--shape", "0x5x5"], "positive sizes"),
])
def test_bad_input_gets_a_clear_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bench_takes_the_highest_peak_measured_during_the_run(tmp_path, monkeypatch):
    """A first peak reading taken while the machine was disturbed must not stand: the peak is
    measured again after each shape and every row's % of peak uses the highest reading."""
    from autogemm import cli

    readings = iter([50.0, 400.0, 100.0])
    monkeypatch.setattr(cli, "measure_peak", lambda dtype, threads: next(readings))
    out = tmp_path / "bench.json"
    assert main(["bench", "--shape", "96x64x80", "--shape", "64x64x64", "--threads", "1", "--rounds", "1",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["peak_gflops"] == {"float32/1": 400.0}
    for row in report["rows"]:
        assert row["pct_peak"] == pytest.approx(100.0 * row["gflops"]["median"] / 400.0)
        assert row["pct_round_peak"] > 0  # and against the peak read in its own rounds


def test_bench_rates_each_round_against_the_peak_read_beside_it(monkeypatch):
    """On a shared host the clock drifts: %round divides each round's median by the FMA peak read
    at the end of that round (the best of its readings), and takes the median over rounds."""
    from autogemm import analytic, api, bench

    class Meter:
        best = iter([100.0, 300.0, 50.0])  # of rounds 1, 2 and 3

        def __init__(self):
            self.readings = []

        def read(self):
            if not self.readings:  # a round's readings: its best among lower ones
                best = next(self.best)
                self.readings = [0.5 * best] * (bench.ROUND_PEAK_READINGS - 2) + [best, 0.8 * best]
            return self.readings.pop()

    flops = 2.0 * 64 * 48 * 40
    seconds = iter([flops / (g * 1e9) for g in (10.0, 20.0, 6.0, 60.0, 2.0, 4.0)])  # kernel, numpy, ...
    monkeypatch.setattr(bench, "_burst", lambda call, reps, warm_seconds, burst_seconds: [next(seconds) for _ in range(reps)])
    monkeypatch.setattr(bench, "SETTLE_AFTER", {"numpy": 0.0, "torch": 0.0, "kernel": 0.0})
    kernel = api.load("float32", params=analytic.default_params(machine.detect(), "float32"))
    rows = bench.compare({"default": kernel}, (64, 48, 40), 1, rounds=3, reps=1, peak=100.0, numpy=True,
                         peak_meter=Meter())
    default, numpy_row = rows
    # the kernel's rounds: 10 / 100, 6 / 300, 2 / 50 GFLOP/s; numpy's: 20 / 100, 60 / 300, 4 / 50
    assert default.pct_round_peak == pytest.approx(100 * np.median([10 / 100, 6 / 300, 2 / 50]))
    assert numpy_row.pct_round_peak == pytest.approx(100 * np.median([20 / 100, 60 / 300, 4 / 50]))
    assert default.pct_peak == pytest.approx(6.0)  # the median rate over the one peak it was given
    table = bench.format_table(rows, {("float32", 1): 100.0})
    assert "%round" in table.splitlines()[0] and "%round: of the peak read in each round" in table


def test_a_turn_of_a_fast_gemm_lasts_long_enough_that_one_hiccup_spoils_few_samples(monkeypatch):
    """Each turn times at least `reps` calls and goes on for `burst_seconds`: a 1 ms call gives 20
    samples in 20 ms, a 50 ms one its 3, each after the warm-up calls."""
    from autogemm import bench

    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])

    def call_taking(seconds):
        def call():
            clock[0] += seconds
            return seconds
        return call

    fast = bench._burst(call_taking(0.001), reps=3, warm_seconds=0.005, burst_seconds=0.02)
    slow = bench._burst(call_taking(0.05), reps=3, warm_seconds=0.005, burst_seconds=0.02)
    assert len(fast) == 20 and len(slow) == 3


def test_the_kernels_take_turns_first_so_none_always_runs_after_numpy(monkeypatch):
    """compare rotates the kernels' order from round to round (A B C, B C A, C A B, ...), so that
    no kernel is always the one timed right after numpy's threads or the longest after them."""
    from types import SimpleNamespace

    from autogemm import bench

    calls = []

    def fake(name):
        def run(*args, **kwargs):
            calls.append(name)
            return [1e-3]
        return SimpleNamespace(params=SimpleNamespace(dtype="float32"), bench=run)

    monkeypatch.setattr(bench, "_burst", lambda call, reps, warm_seconds, burst_seconds: [call()])
    monkeypatch.setattr(bench, "SETTLE_AFTER", {"numpy": 0.0, "torch": 0.0, "kernel": 0.0})
    rows = bench.compare({n: fake(n) for n in "ABC"}, (8, 8, 8), 1, rounds=4, numpy=False, peak=1.0)
    assert "".join(calls) == "ABC" "BCA" "CAB" "ABC"
    assert [len(r.round_medians) for r in rows] == [4, 4, 4]


def test_bench_times_the_tuned_entry_of_what_it_times(tmp_path):
    """The suite times row-major A and B with beta = 0: its tuned row is the entry `matmul` would take
    for those, not an entry of the same shape tuned for a transposed B (x @ W.T) or for beta = 1."""
    from autogemm import analytic, store

    host = machine.detect()
    default = analytic.default_params(host, "float32")
    kernels = {"nt": default.replace(kc=default.kc // 2), "nn-beta1": default.replace(ku=2),
               "nn": default.replace(kc=default.kc // 4)}
    for (name, params), (shape, layout, beta) in zip(kernels.items(), [((64, 96, 80), "nt", 0.0),
                                                                       ((64, 96, 80), "nn", 1.0),
                                                                       ((64, 96, 96), "nn", 0.0)]):
        store.save(host.describe(), {"dtype": "float32", "shape": list(shape), "threads": 1, "layout": layout,
                                     "beta": beta, "params": params.to_dict()}, tmp_path)
    out = tmp_path / "bench.json"
    assert main(["bench", "--shape", "64x96x80", "--threads", "1", "--rounds", "1", "--tuned-dir", str(tmp_path),
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["kernels"]["tuned 64x96x80 t1"] == kernels["nn"].name


def test_bench_torch_times_pytorch_float32_beside_numpy(tmp_path, monkeypatch):
    """`--torch` adds PyTorch's float32 matmul to the interleaved run (here a stand-in with numpy's
    matmul, so the test needs no PyTorch): a torch row, and every row's ratio against it. The
    operands are copied into torch's own memory first (clone), as a torch user's tensors are."""
    import types

    import numpy as np

    from autogemm import bench

    calls, clones = [], []

    class Tensor(np.ndarray):
        def clone(self):
            clones.append(self.shape)
            return np.array(self).view(Tensor)

    fake = types.SimpleNamespace(__version__="0.0-test", from_numpy=lambda x: x.view(Tensor),
                                 set_num_threads=lambda n: calls.append(n),
                                 matmul=lambda a, b: np.matmul(a, b))
    monkeypatch.setattr(bench, "torch_module", lambda: fake)
    out = tmp_path / "torch.json"
    assert main(["bench", "--shape", "96x64x80", "--threads", "1", "--rounds", "1", "--torch", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["torch"] == "torch 0.0-test" and calls and set(calls) == {1}
    assert clones and set(clones) == {(96, 80), (80, 64)}
    rows = {row["impl"]: row for row in report["rows"]}
    assert {"default", "numpy", "torch"} <= set(rows)
    assert rows["torch"]["vs_torch"] == 1.0
    assert rows["default"]["vs_torch"] == pytest.approx(rows["default"]["gflops"]["median"] / rows["torch"]["gflops"]["median"])


def test_bench_times_a_tuned_entry_once_when_it_is_the_default_kernel(tmp_path):
    """A tuned entry holding the default kernel gets no row of its own (two rows of one kernel would
    only show the noise); one holding another kernel is timed beside the default."""
    from autogemm import analytic, store

    host = machine.detect()
    default = analytic.default_params(host, "float32")
    other = default.replace(kc=default.kc // 2)
    for params, shape in ((default, (96, 64, 80)), (other, (64, 96, 80))):
        store.save(host.describe(), {"dtype": "float32", "shape": list(shape), "threads": 1,
                                     "params": params.to_dict()}, tmp_path)
    out = tmp_path / "bench.json"
    assert main(["bench", "--shape", "96x64x80", "--shape", "64x96x80", "--threads", "1", "--rounds", "1",
                 "--tuned-dir", str(tmp_path), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    impls = {}
    for row in report["rows"]:
        impls.setdefault(tuple(row["shape"]), []).append(row["impl"])
    assert impls == {(96, 64, 80): ["default", "numpy"], (64, 96, 80): ["tuned", "default", "numpy"]}
    assert report["kernels"]["tuned 96x64x80 t1"] == f"{default.name} (the default: its row)"
    assert report["kernels"]["tuned 64x96x80 t1"] == other.name


def test_entry_lines_tell_apart_entries_of_one_shape():
    """Entries for one shape and thread count that differ in layout, beta or bias each name theirs,
    so `autogemm info` and `autogemm list` do not show what look like duplicates."""
    from autogemm import analytic, cli, store

    params = analytic.default_params(machine.detect(), "float32")
    record = {"gflops": {"median": 100.0}, "vs_numpy": 1.1, "pct_peak": 90.0}
    variants = [("nn", 0.0, False), ("nn", 1.0, False), ("nt", 0.0, True), ("tn", 0.0, False)]
    lines = [cli._entry_line(store.Entry("float32", (64, 48, 32), 2, params, dict(record, bias=bias), layout, beta))
             for layout, beta, bias in variants]
    heads = [line.split(":")[0] for line in lines]
    assert heads == ["float32 64x48x32 t2", "float32 64x48x32 t2 beta=1", "float32 64x48x32 t2 nt +bias",
                     "float32 64x48x32 t2 tn"]
    assert all(params.name in line and "100.0 GFLOP/s" in line for line in lines)
