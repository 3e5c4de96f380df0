"""autogemm.gemm: every layout, accumulation, a fused bias, strided operands."""

import numpy as np
import pytest

import autogemm
from autogemm import analytic, api, machine, params
from autogemm.check import error_ratio

from conftest import random_matrix


def reference(op_a, op_b, c0, alpha, beta, bias):
    expected = alpha * (op_a.astype(np.float64) @ op_b.astype(np.float64))
    if bias is not None:
        expected = expected + bias.astype(np.float64)
    if beta:
        expected = expected + beta * c0.astype(np.float64)
    return expected


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("layout", ["C", "strided"])
def test_layouts_accumulation_and_bias(dtype, trans_a, trans_b, beta, with_bias, layout, rng):
    for m, n, k in [(67, 45, 129), (1, 33, 7), (13, 1, 300)]:
        a = random_matrix(rng, (k, m) if trans_a else (m, k), dtype, layout)
        b = random_matrix(rng, (n, k) if trans_b else (k, n), dtype, layout)
        bias = rng.uniform(-1, 1, n).astype(dtype) if with_bias else None
        c = rng.uniform(-1, 1, (m, n)).astype(dtype)
        if beta == 0:
            c[...] = np.nan
        c0 = c.copy()
        out = autogemm.gemm(a, b, c, alpha=1.0, beta=beta, trans_a=trans_a, trans_b=trans_b, bias=bias)
        assert out is c
        op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
        expected = reference(op_a, op_b, c0, 1.0, beta, bias)
        # error_ratio against the exact float64 value, scaled like the plain product
        scale = np.abs(op_a.astype(np.float64)) @ np.abs(op_b.astype(np.float64)) + 1.0 + np.abs(np.nan_to_num(c0))
        err = np.abs(out - expected) / scale
        assert np.all(err <= 8 * np.sqrt(k) * np.finfo(dtype).eps), (m, n, k, float(err.max()))


def test_bias_with_an_empty_k_and_zero_alpha(rng):
    bias = rng.uniform(-1, 1, 6)
    out = autogemm.gemm(np.empty((4, 0)), np.empty((0, 6)), bias=bias)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, (4, 6)))
    c = np.ones((4, 6))
    autogemm.gemm(rng.uniform(size=(4, 3)), rng.uniform(size=(3, 6)), c, alpha=0.0, beta=2.0, bias=bias)
    np.testing.assert_allclose(c, np.broadcast_to(2.0 + bias, (4, 6)))


@pytest.mark.parametrize("parallel", params.PARALLEL_LOOPS)
def test_every_template_applies_the_bias_on_full_and_edge_tiles(parallel, rng):
    """Every ISA's template on this machine's parallel loop; the other loops, which differ only in
    which column block carries the bias, on the best ISA (each build takes seconds)."""
    host = machine.detect()
    for dtype in ("float32", "float64"):
        isas = host.isas if parallel == analytic.parallel_loop(host) else [host.best_isa_for(dtype)]
        for isa in isas:
            # several k blocks (bias once) and, for 2d, several row blocks and tiles per thread
            base = analytic.default_params(host, dtype, isa)
            p = base.replace(kc=16, mc=2 * base.mr, nc=3 * base.nr, parallel=parallel)  # as test_kernels builds
            kernel = api.build(p)
            m, n, k = 3 * p.mr + 1, 2 * p.nr + 3, 40
            a = random_matrix(rng, (m, k), dtype)
            b = random_matrix(rng, (n, k), dtype).T
            bias = rng.uniform(-1, 1, n).astype(dtype)
            c = np.full((m, n), np.nan, dtype)
            kernel.gemm(a, b, c, bias=bias, threads=2, force_threads=True)
            assert error_ratio(c - bias, a, b, dtype=dtype) <= 1, p.name


def test_transposes_make_no_copies(monkeypatch, rng):
    calls = []
    real = np.ascontiguousarray
    monkeypatch.setattr(np, "ascontiguousarray", lambda x, *a, **k: calls.append(np.shape(x)) or real(x, *a, **k))
    x = rng.uniform(size=(64, 48)).astype(np.float32)
    w = rng.uniform(size=(80, 48)).astype(np.float32)
    autogemm.gemm(x, w, trans_b=True)
    autogemm.gemm(x.T, w.T, trans_a=True)
    assert calls == []


def test_gemm_errors():
    with pytest.raises(ValueError, match="op\\(a\\)"):
        autogemm.gemm(np.ones((3, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="needs c"):
        autogemm.gemm(np.ones((3, 4)), np.ones((4, 2)), beta=1.0)
    with pytest.raises(ValueError, match="bias"):
        autogemm.gemm(np.ones((3, 4)), np.ones((4, 2)), bias=np.ones(3))
    with pytest.raises(TypeError):
        autogemm.gemm(np.ones((3, 4), np.int32), np.ones((4, 2), np.int32))
