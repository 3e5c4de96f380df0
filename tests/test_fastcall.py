"""autogemm.matmul's C entry point: the same answers as the Python path, which takes every call it declines."""

import contextlib
import pickle
import sysconfig
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import autogemm
from autogemm import api, fastcall, toolchain
from autogemm.check import error_ratio

from conftest import LAYOUTS, random_matrix

HEADERS = Path(sysconfig.get_path("include"), "Python.h").exists()
needs_headers = pytest.mark.skipif(not HEADERS, reason="no Python.h: the C entry point cannot be built here")


@contextlib.contextmanager
def _spied():
    """The C entry points' matmul and gemm, with the list of kernel choices they ask Python for."""
    module = fastcall.extension()
    asked = []

    def spy(*args):
        asked.append(args)
        return fastcall.choose(*args)

    try:
        yield module.configure(api.matmul, spy, "doc"), module.configure_gemm(api.gemm, "doc"), asked
    finally:
        module.configure(api.matmul, fastcall.choose, api.matmul.__doc__)
        module.configure_gemm(api.gemm, api.gemm.__doc__)


@needs_headers
def test_matmul_is_the_c_entry_point_and_keeps_its_documentation():
    assert type(autogemm.matmul).__name__ == "builtin_function_or_method"
    assert autogemm.matmul.__doc__ == api.matmul.__doc__
    assert autogemm.matmul.__module__ == "autogemm" and autogemm.matmul.__name__ == "matmul"
    assert pickle.loads(pickle.dumps(autogemm.matmul)) is autogemm.matmul  # for multiprocessing
    assert fastcall.status().startswith("C entry point")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout_a", LAYOUTS)
@pytest.mark.parametrize("layout_b", LAYOUTS)
def test_same_bits_as_the_python_path(dtype, layout_a, layout_b, rng):
    for m, n, k in [(1, 1, 1), (5, 7, 3), (13, 1, 29), (1, 67, 31), (97, 61, 127), (6, 64, 4)]:
        a = random_matrix(rng, (m, k), dtype, layout_a)
        b = random_matrix(rng, (k, n), dtype, layout_b)
        fast = autogemm.matmul(a, b)
        assert fast.dtype == np.dtype(dtype) and fast.shape == (m, n) and fast.flags.c_contiguous
        np.testing.assert_array_equal(fast, api.matmul(a, b))
        assert error_ratio(fast, a, b, dtype=dtype) <= 1, (m, n, k)
        np.testing.assert_array_equal(autogemm.matmul(a, b, threads=1), api.matmul(a, b, threads=1))


@needs_headers
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout_out", LAYOUTS)
def test_out_is_written_in_place_by_the_c_entry_point(dtype, layout_out, rng):
    """out= (keyword or third argument) on any layout is served in C, over NaN, with the bits of the
    Python path, and is what matmul returns."""
    with _spied() as (matmul, _, asked):
        for (m, n, k), layout_a in zip([(1, 1, 1), (5, 7, 3), (97, 61, 127), (3, 4, 0)], ("C", "T", "negative", "F")):
            a = random_matrix(rng, (m, k), dtype, layout_a)
            b = random_matrix(rng, (k, n), dtype)
            expected = api.matmul(a, b)
            for call in (lambda o: matmul(a, b, out=o), lambda o: matmul(a, b, o, threads=1)):
                out = random_matrix(rng, (m, n), dtype, layout_out)
                out[...] = np.nan
                asked.clear()
                assert call(out) is out
                assert len(asked) == 1, "declined to the Python path"
                np.testing.assert_array_equal(out, expected)
                if k:
                    assert error_ratio(out, a, b, dtype=dtype) <= 1


@needs_headers
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False), (True, True)])
def test_gemm_is_served_in_c_with_the_bits_of_the_python_path(dtype, trans_a, trans_b, rng):
    """gemm's common calls (float alpha and beta, a bias, c on any layout, or none) go to the kernel
    that api.gemm picks for their layout and beta, and give its bits; beta = 0 never reads c."""
    assert autogemm.gemm is not api.gemm and autogemm.gemm.__doc__ == api.gemm.__doc__
    with _spied() as (_, gemm, asked):
        for (m, n, k), layout_c in zip([(1, 1, 1), (5, 7, 3), (97, 61, 127), (3, 4, 0)], ("C", "strided", "negative", "F")):
            a = random_matrix(rng, (k, m) if trans_a else (m, k), dtype)
            b = random_matrix(rng, (n, k) if trans_b else (k, n), dtype, "T")
            bias = rng.uniform(-1, 1, n).astype(dtype)
            flags = {"trans_a": trans_a, "trans_b": trans_b}
            for alpha, beta, with_bias in [(1.0, 0.0, False), (-0.5, 1, True), (2, -0.75, True)]:
                seed = int(rng.integers(1 << 30))
                c, twin = (random_matrix(np.random.default_rng(seed), (m, n), dtype, layout_c) for _ in range(2))
                if beta == 0:
                    c[...] = twin[...] = np.nan
                given = {"alpha": alpha, "beta": beta, "bias": bias if with_bias else None, **flags}
                op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
                exact = alpha * (op_a.astype(np.float64) @ op_b) + (bias if with_bias else 0)
                scale = abs(alpha) * (np.abs(op_a.astype(np.float64)) @ np.abs(op_b)) + (np.abs(bias) if with_bias else 0)
                if beta:
                    exact, scale = exact + beta * np.array(c, np.float64), scale + abs(beta) * np.abs(c)
                asked.clear()
                fastcall.extension().forget()  # so that a call served in C asks for its kernel
                assert gemm(a, b, c, **given) is c
                assert [ask[5:] for ask in asked] == [("tn"[not trans_a] + "tn"[not trans_b], 1.0 if beta else 0.0)]
                np.testing.assert_array_equal(c, api.gemm(a, b, twin, **given))
                assert np.all(np.abs(c - exact) <= 8 * np.sqrt(k + 2) * np.finfo(dtype).eps * scale + 1e-30)
            fresh = gemm(a, b, alpha=2.0, **flags)
            assert fresh.shape == (m, n) and fresh.flags.c_contiguous
            np.testing.assert_array_equal(fresh, api.gemm(a, b, alpha=2.0, **flags))


@needs_headers
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_stack_times_one_matrix_is_one_gemm_served_in_c(dtype, rng):
    """A stack of matrices times one matrix, without out, is one GEMM of all the stack's rows in C (its
    kernel chosen for that many rows) where they are a view: C-ordered stacks of 3 and 4 axes, axes of
    one, a stack sliced along k; the bits of the Python path, within the error bound. A stack whose rows
    are no view (reversed, or its last two axes swapped) goes to the Python path."""
    with _spied() as (matmul, _, asked):
        big = rng.uniform(-1, 1, (3, 5, 9)).astype(dtype)
        cases = [(rng.uniform(-1, 1, (4, 6, 7)).astype(dtype), 24), (rng.uniform(-1, 1, (2, 1, 3, 7)).astype(dtype), 6),
                 (rng.uniform(-1, 1, (1, 1, 7)).astype(dtype), 1), (big[:, :, :7], 15), (big[::-1, :, :7], None),
                 (rng.uniform(-1, 1, (4, 7, 6)).astype(dtype).transpose(0, 2, 1), None)]
        for a, rows in cases:
            b = random_matrix(rng, (7, 11), dtype, "T")
            asked.clear()
            fast = matmul(a, b)
            assert [ask[1:4] for ask in asked] == ([(rows, 11, 7)] if rows else []), a.strides
            expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
            assert fast.shape == expected.shape and fast.dtype == np.dtype(dtype) and fast.flags.c_contiguous
            np.testing.assert_array_equal(fast, api.matmul(a, b))
            assert error_ratio(fast.reshape(-1, 11), a.reshape(-1, 7), b, dtype=dtype) <= 1


@needs_headers
@pytest.mark.parametrize("layout_a", LAYOUTS)
@pytest.mark.parametrize("layout_b", ["C", "T", "negative"])
def test_bfloat16_products_are_served_in_c_with_the_bits_of_the_python_path(layout_a, layout_b, rng):
    """2-D bfloat16 operands (more columns than rows or fewer, which the kernel may take on the dot path
    with B's columns copied), a stack of them times one matrix, a float32 out= and gemm (alpha, beta over
    c, trans flags, a float32 bias) go to the bfloat16 kernel in C: a float32 result, the Python path's
    bits, within the error bound. A bfloat16 out is left to Python, with its results."""
    bf16 = ml_dtypes.bfloat16
    with _spied() as (matmul, gemm, asked):
        for m, n, k in [(1, 1, 1), (1, 67, 31), (5, 7, 3), (6, 64, 4), (3, 4, 0), (17, 96, 33), (40, 40, 9),
                        (50, 3, 9), (300, 2, 200), (97, 13, 64)]:
            a, b = random_matrix(rng, (m, k), bf16, layout_a), random_matrix(rng, (k, n), bf16, layout_b)
            expected = api.matmul(a, b)
            asked.clear()
            fast = matmul(a, b)
            assert [ask[:4] for ask in asked] == [("b", m, n, k)] and fastcall.choose(*asked[0])[0], \
                "declined to the Python path"
            assert fast.dtype == np.float32 and fast.shape == (m, n) and fast.flags.c_contiguous
            np.testing.assert_array_equal(fast, expected)
            if k:
                assert error_ratio(fast, a, b, dtype="bfloat16") <= 1, (m, n, k)
            out = np.full((n, m), np.nan, np.float32).T
            assert matmul(a, b, out=out, threads=1) is out
            np.testing.assert_array_equal(out, api.matmul(a, b, threads=1))
            assert len(asked) == 2
            bias = rng.uniform(-1, 1, n).astype(np.float32)
            c = rng.uniform(-1, 1, (m, n)).astype(np.float32)
            kwargs = dict(trans_a=True, trans_b=True, alpha=0.5, beta=2.0, bias=bias)
            asked.clear()
            fast_c = c.copy()
            assert gemm(a.T, b.T, fast_c, **kwargs) is fast_c
            assert asked == [("b", m, n, k, 0, "tt", 1.0)], "declined to the Python path"
            np.testing.assert_array_equal(fast_c, api.gemm(a.T, b.T, c.copy(), **kwargs))
        stack = random_matrix(rng, (12, 7), bf16).reshape(3, 4, 7)
        b = random_matrix(rng, (7, 11), bf16, layout_b)
        asked.clear()
        np.testing.assert_array_equal(matmul(stack, b), api.matmul(stack, b))
        assert [ask[:4] for ask in asked] == [("b", 12, 11, 7)]
        a, b = random_matrix(rng, (3, 9), bf16, layout_a), random_matrix(rng, (9, 50), bf16, layout_b)
        asked.clear()
        fast, slow = matmul(a, b, out=np.empty((3, 50), bf16)), api.matmul(a, b, out=np.empty((3, 50), bf16))
        assert asked == [] and fast.dtype == slow.dtype == bf16
        np.testing.assert_array_equal(fast, slow)


def test_empty_shapes_and_zero_k():
    for dtype in (np.float32, np.float64):
        assert autogemm.matmul(np.ones((0, 3), dtype), np.ones((3, 4), dtype)).shape == (0, 4)
        assert autogemm.matmul(np.ones((3, 4), dtype), np.ones((4, 0), dtype)).shape == (3, 0)
        zeros = autogemm.matmul(np.ones((3, 0), dtype), np.ones((0, 4), dtype))
        assert zeros.dtype == dtype
        np.testing.assert_array_equal(zeros, np.zeros((3, 4)))  # a fresh result: no NaN left from np.empty


def _outcome(call):
    try:
        return "ok", call()
    except Exception as error:  # the exception's type and text are what is compared
        return type(error), str(error)


class _Subclass(np.ndarray):
    """An ndarray subclass, which the C entry point leaves to the Python path."""


def test_declined_calls_behave_as_the_python_path(rng):
    f32 = rng.uniform(-1, 1, (4, 5)).astype(np.float32)
    g32 = rng.uniform(-1, 1, (5, 3)).astype(np.float32)
    cases = [
        ((f32[0], g32), {}),  # 1-D
        ((np.stack([f32, f32])[::-1], g32), {}),  # a stack whose rows are no view
        ((f32, g32.astype(np.float64)), {}),  # mixed dtypes
        ((f32.tolist(), g32), {}),  # a list
        ((f32.astype(ml_dtypes.bfloat16), g32.astype(ml_dtypes.bfloat16)), {}),
        ((f32.astype(">f4"), g32), {}),  # byte-swapped
        ((f32, g32), {"out": np.empty((4, 3), np.float32)}),
        ((f32, g32), {"out": np.empty((4, 3), np.float64)}),  # out of another dtype
        ((f32, g32), {"out": np.empty((3, 4), np.float32)}),  # of another shape
        ((f32, g32), {"out": np.empty((4, 3), np.float32)[None]}),  # 3-D
        ((f32, g32), {"out": np.empty((4, 3), np.float32).view(_Subclass)}),
        ((f32, g32), {"out": [[0.0] * 3] * 4}),
        ((f32, g32), {"out": np.broadcast_to(np.empty(3, np.float32), (4, 3))}),  # read-only
        ((f32, g32), {"out": np.empty((4, 3), ">f4")}),
        ((f32, g32, np.empty((4, 3), np.float32)), {"out": np.empty((4, 3), np.float32)}),  # out twice
        ((f32, g32), {"threads": 2}),
        ((f32, g32), {"threads": None}),
        ((f32, g32), {"threads": 0}),
        ((f32, g32), {"threads": True}),
        ((f32, g32), {"compute": "bf16"}),
        ((f32, f32), {}),  # mismatched inner sizes
        ((f32.astype(np.int32), g32.astype(np.int32)), {}),
    ]
    for args, kwargs in cases:
        fast = _outcome(lambda: autogemm.matmul(*args, **kwargs))
        slow = _outcome(lambda: api.matmul(*args, **kwargs))
        if fast[0] == "ok" and "out" in kwargs:
            assert fast[1] is kwargs["out"]
        assert fast[0] == slow[0], (args, kwargs, fast, slow)
        if fast[0] == "ok":
            np.testing.assert_array_equal(fast[1], slow[1])
            assert fast[1].dtype == slow[1].dtype
        else:
            assert fast[1] == slow[1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_out_that_shares_memory_with_an_input_gets_the_product(dtype, rng):
    """out is a itself, b itself, or a view into a: the Python path, which computes into a buffer."""
    for overlap in ("a", "b", "view of a"):
        base = rng.uniform(-1, 1, (8, 8)).astype(dtype)
        other = rng.uniform(-1, 1, (8, 8)).astype(dtype)
        a, b = (base, other) if overlap != "b" else (other, base)
        expected = a.astype(np.float64) @ b
        out = base if overlap != "view of a" else base[::-1]
        assert autogemm.matmul(a, b, out=out) is out
        np.testing.assert_allclose(out, expected, rtol=1e-4 if dtype == "float32" else 1e-12, atol=1e-5)


def test_declined_gemm_calls_behave_as_the_python_path(rng):
    """What the C gemm leaves to api.gemm: the same answers and the same errors, c written alike."""
    x = rng.uniform(-1, 1, (4, 5)).astype(np.float32)
    w = rng.uniform(-1, 1, (3, 5)).astype(np.float32)
    bias = rng.uniform(-1, 1, 3).astype(np.float32)
    c = rng.uniform(-1, 1, (4, 3)).astype(np.float32)
    cases = [
        ((x, w), {"trans_b": True, "beta": 1.0}),  # beta without c
        ((x, w, c), {"trans_b": True, "beta": 0.5, "bias": bias[:2]}),  # a bias of the wrong length
        ((x, w, c), {"trans_b": True, "bias": bias.astype(np.float64)}),  # of another dtype
        ((x, w, c), {"trans_b": True, "bias": np.repeat(bias, 2)[::2]}),  # strided
        ((x, w, c), {"trans_b": True, "alpha": np.float32(0.5)}),  # a numpy scalar
        ((x, w, c), {"trans_b": 1}),  # an int flag
        ((x, w, c), {"trans_b": True, "compute": "bf16"}),
        ((x, w, c), {"trans_b": True, "out_dtype": "float32"}),
        ((x, w, c.astype(np.float64)), {"trans_b": True}),  # c of another dtype
        ((x, w, c[:, :2]), {"trans_b": True}),  # of another shape
        ((x, w.astype(np.float64), c), {"trans_b": True}),  # mixed operands
        ((x[0], w), {"trans_b": True}),  # 1-D
        ((x, w, c), {"trans_b": True, "c": c}),  # c twice
        ((x, w, c), {"trans_b": True, "gamma": 1.0}),  # an unknown keyword
        ((x, w), {"trans_b": True, "threads": 0}),
    ]
    for args, kwargs in cases:
        outcomes = []
        for gemm in (autogemm.gemm, api.gemm):
            fresh = [a.copy() if a is c else a for a in args]
            outcomes.append((_outcome(lambda: gemm(*fresh, **kwargs)), fresh))
        (fast, fast_args), (slow, slow_args) = outcomes
        assert fast[0] == slow[0], (kwargs, fast, slow)
        if fast[0] == "ok":
            np.testing.assert_array_equal(fast[1], slow[1])
        else:
            assert fast[1] == slow[1]
        for f, s_ in zip(fast_args, slow_args):
            np.testing.assert_array_equal(f, s_)
    square = rng.uniform(-1, 1, (6, 6))
    expected = square @ square.T
    assert autogemm.gemm(square, square, square, trans_b=True) is square  # c is both operands
    np.testing.assert_allclose(square, expected, rtol=1e-12)


@needs_headers
def test_kernel_choices_are_cached_and_forgotten_on_request(rng):
    with _spied() as (matmul, _, asked):
        a = rng.uniform(-1, 1, (5, 3)).astype(np.float32)
        b = rng.uniform(-1, 1, (3, 7)).astype(np.float32)
        for _ in range(3):
            matmul(a, b)
        assert asked == [("f", 5, 7, 3, 0)]
        matmul(a, b, threads=1)
        matmul(a.astype(np.float64), b.astype(np.float64))
        assert asked[1:] == [("f", 5, 7, 3, 1), ("d", 5, 7, 3, 0)]
        fastcall.extension().forget()
        matmul(a, b)
        assert len(asked) == 4


@needs_headers
@pytest.mark.parametrize("choice", [RuntimeError("no kernel"), (0, 1), "not a tuple"])
def test_a_failed_choice_falls_back_to_the_python_path(choice, rng):
    module = fastcall.extension()

    def failing(*args):
        if isinstance(choice, Exception):
            raise choice
        return choice

    matmul = module.configure(api.matmul, failing, "doc")
    try:
        a = rng.uniform(-1, 1, (9, 4))
        b = rng.uniform(-1, 1, (4, 11))
        np.testing.assert_array_equal(matmul(a, b), api.matmul(a, b))
    finally:
        module.configure(api.matmul, fastcall.choose, api.matmul.__doc__)


def test_without_a_compiler_matmul_is_the_python_one(monkeypatch):
    def unbuildable():
        raise toolchain.CompilerNotFound("autogemm needs a C compiler")

    monkeypatch.setattr(fastcall, "extension", unbuildable)
    try:
        assert fastcall.wrap(api.matmul, api.gemm) == (api.matmul, api.gemm)
        assert fastcall.status() == "Python (the C entry point could not be built: autogemm needs a C compiler)"
    finally:
        monkeypatch.undo()
        fastcall.wrap(api.matmul, api.gemm)
    assert fastcall.status().startswith("C entry point") == HEADERS
