"""The scaling ceiling: independent 1-thread GEMMs run at once, each on operands of its own."""

import json

import numpy as np
import pytest

from autogemm import analytic, api, bench, machine
from autogemm.check import error_ratio
from autogemm.cli import main


@pytest.fixture(scope="module")
def kernel():
    return api.load("float32", params=analytic.default_params(machine.detect(), "float32"))


def test_copies_run_at_once_and_each_computes_its_own_product(kernel, rng):
    shape = (67, 131, 53)  # no multiple of the tile: edge tiles in every copy
    copies = []
    for _ in range(3):
        a = rng.uniform(-1, 1, (shape[0], shape[2])).astype(np.float32)
        b = rng.uniform(-1, 1, (shape[2], shape[1])).astype(np.float32)
        copies.append((a, b, np.full(shape[:2], np.nan, np.float32)))  # beta = 0 never reads C
    seconds = bench.run_copies(kernel, copies, calls=4)
    assert len(seconds) == 3 and all(len(s) >= 4 and min(s) > 0 for s in seconds)
    for a, b, c in copies:
        assert error_ratio(c, a, b) <= 1


class _FailingKernel:
    def bench(self, *args, **kwargs):
        raise MemoryError("autogemm: cannot allocate packing buffers")


def test_a_copy_that_fails_stops_the_run_with_its_error(rng):
    a = rng.uniform(-1, 1, (8, 8)).astype(np.float32)
    with pytest.raises(MemoryError, match="packing buffers"):
        bench.run_copies(_FailingKernel(), [(a, a, a.copy()) for _ in range(2)], calls=2)


def test_independent_row_sums_the_copies_and_measures_its_own_efficiency(kernel):
    row = bench.compare_independent(kernel, (96, 128, 64), 2, rounds=2, reps=2, peak=1.0)
    assert row.impl == "independent" and row.threads == 2 and row.shape == (96, 128, 64)
    assert row.gflops["median"] > 0 and row.pct_peak == pytest.approx(100 * row.gflops["median"])
    assert 0 < row.efficiency < 2


def test_bench_independent_adds_a_row_per_thread_count_above_one(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--shape", "96x64x80", "--threads", "1,2", "--rounds", "1", "--independent",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    independent = [r for r in report["rows"] if r["impl"] == "independent"]
    assert [r["threads"] for r in independent] == [2]
    assert independent[0]["efficiency"] > 0 and independent[0]["vs_numpy"] is None
    assert "independent 96x64x80" in report["kernels"]
    default2 = next(r for r in report["rows"] if r["impl"] == "default" and r["threads"] == 2)
    assert default2["efficiency"] > 0  # set against the 1-thread row, as before
