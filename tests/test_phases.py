"""The profiling build and `autogemm bench --phases`: where a GEMM's time goes."""

import json

import numpy as np
import pytest

from autogemm import analytic, api, bench, machine, params, phases, render
from autogemm.check import error_ratio
from autogemm.cli import main

from conftest import random_matrix

HOST = machine.detect()


@pytest.mark.parametrize("parallel", params.PARALLEL_LOOPS)
def test_every_parallel_loop_times_each_of_its_phases(parallel):
    """Two threads forced on small blocks (several k blocks, column blocks and rounds of rows): each
    loop's packing of B, packing of A and macro-kernels all count, and together stay within the
    threads' time."""
    base = analytic.default_params(HOST, "float32")
    p = base.replace(mc=4 * base.mr, kc=64, nc=2 * base.nr, parallel=parallel)
    row = phases.profile(p, (9 * p.mr + 1, 5 * p.nr + 3, 150), 2, reps=3, force_threads=True)
    assert row.path == "packed"
    assert all(row.share[phase] > 0 for phase in ("pack_b", "pack_a", "macro")), row.share
    assert sum(row.share.values()) <= 1.0 + 1e-9
    assert row.other == pytest.approx(1.0 - sum(row.share.values()))


def test_a_large_gemm_spends_most_of_its_time_in_macro_kernels():
    """One thread, the default kernel, packed path: packing is O(n^2) against O(n^3) arithmetic, so
    at 384^3 the macro-kernels take most of the time; timed inside the same call, they run at least as
    fast as the whole call."""
    p = analytic.default_params(HOST, "float64")
    row = phases.profile(p, (384, 384, 384), 1, reps=5, force_threads=True)
    assert row.share["macro"] > 0.5 > row.share["pack_a"] + row.share["pack_b"] > 0
    assert row.macro_gflops >= row.gflops
    assert row.pct_peak is None
    scaled = phases.with_peak(row, 2 * row.macro_gflops)
    assert scaled.macro_pct_peak == pytest.approx(50.0) and scaled.pct_peak == pytest.approx(50.0 * row.gflops / row.macro_gflops)


def test_profile_rates_its_calls_against_the_peak_read_after_them(monkeypatch):
    """%round: the median call's rate, whole and in its macro-kernels, over the best of the peak
    readings taken right after the calls (none between them: they would leave the caches cold)."""
    flops = 2.0 * 60 * 50 * 40
    rates = [1.0, 10.0, 30.0, 20.0]  # GFLOP/s: the untimed call, then three timed ones
    macro = [0.0, 0.5, 0.25, 0.4]  # of each call's seconds, in macro-kernels
    events = []

    class Kernel:
        calls = 0

        def bench(self, a, b, **kwargs):
            self.calls += 1
            events.append("call")
            return [flops / (rates[self.calls - 1] * 1e9)]

        def phase_seconds(self):
            seconds = flops / (rates[self.calls - 1] * 1e9)
            return {"pack_b": 0.0, "pack_a": 0.0, "macro": macro[self.calls - 1] * seconds}

        def path(self, *args, **kwargs):
            return "packed"

    class Meter:
        readings = [40.0] * (bench.ROUND_PEAK_READINGS - 2) + [80.0, 60.0]

        def read(self):
            events.append("peak")
            return self.readings.pop()

    monkeypatch.setattr(phases.api, "build", lambda params, phases: Kernel())
    row = phases.profile(analytic.default_params(HOST, "float32"), (60, 50, 40), 1, reps=3, peak_meter=Meter())
    assert events == ["call"] * 4 + ["peak"] * bench.ROUND_PEAK_READINGS
    assert row.gflops == pytest.approx(20.0) and row.share["macro"] == pytest.approx(0.4)  # the median call
    assert row.pct_round_peak == pytest.approx(100 * 20 / 80)
    assert row.macro_pct_round_peak == pytest.approx(100 * 50 / 80)
    assert "%round" in phases.format_phases([row]).splitlines()[0]


def test_paths_without_packing_have_no_phases():
    p = analytic.default_params(HOST, "float32")
    row = phases.profile(p, (40, 48, 56), 1, reps=3)
    assert row.path == "direct"
    assert row.share == {"pack_b": 0.0, "pack_a": 0.0, "macro": 0.0} and row.other == 1.0
    assert row.macro_gflops is None and phases.with_peak(row, 100.0).macro_pct_peak is None


def test_the_profiling_build_computes_the_same_product(rng):
    p = analytic.default_params(HOST, "float32").replace(mc=12, kc=40, nc=2 * 64)
    kernel = api.build(p, phases=True)
    a = random_matrix(rng, (53, 97), "float32")
    b = random_matrix(rng, (97, 131), "float32")
    c = np.full((53, 131), np.nan, np.float32)
    kernel.gemm(a, b, c, threads=2, force_threads=True)
    assert error_ratio(c, a, b, dtype="float32") <= 1
    assert kernel.phase_seconds()["macro"] > 0
    assert kernel.phase_seconds() == {"pack_b": 0.0, "pack_a": 0.0, "macro": 0.0}  # read, then zeroed


def test_only_a_profiling_build_reads_phases():
    p = analytic.default_params(HOST, "float32")
    with pytest.raises(RuntimeError, match="not a profiling build"):
        api.build(p).phase_seconds()
    with pytest.raises(ValueError, match="harness"):
        render.render_gemm(p, phases=True)
    assert "phase_seconds" not in render.render_gemm(p, harness=True)  # kernels that are timed or exported
    assert "phase_seconds" in render.render_gemm(p, harness=True, phases=True)


def test_bench_phases_reports_each_shape_after_the_in_cache_ceiling(tmp_path, monkeypatch):
    from autogemm import cli

    readings = iter([80.0, 100.0])  # before the shape and after it
    monkeypatch.setattr(cli, "measure_peak", lambda dtype, threads: next(readings))
    out = tmp_path / "phases.json"
    assert main(["bench", "--phases", "--shape", "600x600x600", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["peak_gflops"] == {"float32/1": 100.0}
    ceiling, row = report["rows"]
    assert ceiling["path"] == "in L2" and ceiling["threads"] == 1 and ceiling["share"]["macro"] > 0
    assert row["shape"] == [600, 600, 600] and row["path"] == "packed"
    assert row["pct_peak"] == pytest.approx(row["gflops"])  # against the higher reading, 100
    # and against the peak read after each call, a real reading: the macro-kernels in L2 near it
    assert 50 < ceiling["macro_pct_round_peak"] < 130 and 0 < row["pct_round_peak"] < 130


def test_bench_phases_refuses_python_call_timing(capsys):
    assert main(["bench", "--phases", "--suite", "small", "--threads", "1"]) == 2
    assert "bench --phases times the kernel's phases inside C" in capsys.readouterr().err
