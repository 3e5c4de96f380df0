"""benchmarks/ab_templates.py: the kernel it calls "before" comes from the other checkout's templates."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from autogemm import analytic, api, render
from autogemm.check import error_ratio
from conftest import benchmark_script

ROOT = Path(__file__).resolve().parent.parent


def test_before_is_rendered_from_the_other_checkout_and_both_are_timed(tmp_path, host, rng):
    ab = benchmark_script("ab_templates")
    other = tmp_path / "before"
    shutil.copytree(ROOT / "autogemm", other / "autogemm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(render.templates_dir(), other / "templates")
    gemm = other / "templates" / "gemm.c.j2"
    gemm.write_text("/* the other checkout */\n" + gemm.read_text())
    p = analytic.default_params(host, "float32")

    before, after = ab.build_from(str(other), p), api.build(p)
    assert "/* the other checkout */" in before.source and "/* the other checkout */" not in after.source
    a, b = rng.uniform(-1, 1, (37, 29)).astype(np.float32), rng.uniform(-1, 1, (29, 41)).astype(np.float32)
    c = np.full((37, 41), np.nan, np.float32)
    before.gemm(a, b, c)
    assert error_ratio(c, a, b) <= 1

    result = ab.alternate(before, after, (64, 48, 40), threads=1, pairs=3)
    assert result["pairs"] == 3 and result["before"] > 0 and result["after"] > 0
    assert result["ratio"]["p20"] <= result["ratio"]["median"] <= result["ratio"]["p80"]


class _Recording:
    """A stand-in kernel: records each turn's untimed and timed calls and answers with given seconds."""

    def __init__(self, seconds, params):
        self.seconds, self.params, self.turns = seconds, params, []

    def bench(self, a, b, *, threads, warmup, reps, c, trans_a=False, trans_b=False):
        self.turns.append((warmup, reps))
        self.operands = (a.shape, b.shape, trans_a, trans_b)
        return np.array(self.seconds[:reps])


def test_a_burst_turn_times_its_calls_after_as_many_untimed_and_counts_their_median(host):
    ab = benchmark_script("ab_templates")
    p = analytic.default_params(host, "float32")
    before = _Recording([1.0, 9.0, 1.0], p)  # the median hides one slow call
    after = _Recording([0.5, 0.5, 0.5], p)
    result = ab.alternate(before, after, (100, 100, 100), threads=2, pairs=4, burst=3, pause=1e-4)
    assert before.turns[1:] == [(3, 3)] * 4 and after.turns[1:] == [(3, 3)] * 4  # after the first call
    assert result["before"] == pytest.approx(2e6 / 1.0 * 1e-9) and result["ratio"]["median"] == pytest.approx(2.0)
    single = _Recording([1.0], p)
    ab.alternate(single, _Recording([1.0], p), (8, 8, 8), threads=1, pairs=2)
    assert single.turns[1:] == [(0, 1)] * 2



def test_a_layout_stores_its_transposed_operands_and_says_so(host):
    ab = benchmark_script("ab_templates")
    p = analytic.default_params(host, "float32")
    for layout, operands in [("nn", ((7, 5), (5, 3), False, False)), ("tn", ((5, 7), (5, 3), True, False)),
                             ("nt", ((7, 5), (3, 5), False, True)), ("tt", ((5, 7), (3, 5), True, True))]:
        before, after = _Recording([1.0], p), _Recording([1.0], p)
        ab.alternate(before, after, (7, 3, 5), threads=1, pairs=2, layout=layout)
        assert before.operands == after.operands == operands, layout


def test_before_set_changes_only_the_before_build(monkeypatch, host):
    """--before-set: with this checkout as `before`, an A/B of two parameter values; --set applies to both."""
    ab = benchmark_script("ab_templates")
    built = {}
    monkeypatch.setattr(ab, "build_from", lambda checkout, params: built.setdefault("before", _Recording([1.0], params)))
    monkeypatch.setattr(ab.api, "build", lambda params: built.setdefault("after", _Recording([1.0], params)))
    assert ab.main([str(ROOT), "--shape", "16", "--pairs", "1", "--set", "prefetch=8", "--before-set", "kc=64"]) == 0
    default = analytic.default_params(host, "float32")
    assert built["before"].params == default.replace(prefetch=8, kc=64)
    assert built["after"].params == default.replace(prefetch=8)
