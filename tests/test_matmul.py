"""autogemm.matmul behaves like numpy.matmul for float32 and float64."""

import threading
import time

import ml_dtypes
import numpy as np
import pytest

import autogemm
from autogemm.check import error_ratio
from autogemm.kernel import computed_dtype

from conftest import LAYOUTS, random_matrix


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout_a", LAYOUTS)
@pytest.mark.parametrize("layout_b", LAYOUTS)
def test_odd_shapes_and_layouts_match_numpy(dtype, layout_a, layout_b, rng):
    for m, n, k in [(1, 1, 1), (31, 17, 13), (97, 61, 127), (2, 130, 1), (150, 3, 200)]:
        a = random_matrix(rng, (m, k), dtype, layout_a)
        b = random_matrix(rng, (k, n), dtype, layout_b)
        c = autogemm.matmul(a, b)
        assert c.dtype == np.dtype(dtype) and c.shape == (m, n)
        assert error_ratio(c, a, b, dtype=dtype) <= 1, (m, n, k, layout_a, layout_b)


def test_no_copies_of_transposed_or_strided_inputs(monkeypatch, rng):
    calls = []
    real = np.ascontiguousarray
    monkeypatch.setattr(np, "ascontiguousarray", lambda *a, **k: calls.append(1) or real(*a, **k))
    a = random_matrix(rng, (40, 30), "float32", "strided")
    b = random_matrix(rng, (30, 20), "float32", "T")
    autogemm.matmul(a, b)
    assert calls == []


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_vectors_and_stacks_follow_numpy_shapes(dtype, rng):
    cases = [((5,), (5, 3)), ((4, 5), (5,)), ((5,), (5,)), ((3, 4, 5), (5, 2)), ((2, 1, 4, 5), (3, 5, 6)),
             ((7, 5), (2, 5, 3))]
    for sa, sb in cases:
        a = rng.uniform(-1, 1, sa).astype(dtype)
        b = rng.uniform(-1, 1, sb).astype(dtype)
        expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
        got = autogemm.matmul(a, b)
        assert got.shape == expected.shape, (sa, sb)
        np.testing.assert_allclose(got, expected, rtol=1e-4 if dtype == "float32" else 1e-12, atol=1e-5)


def test_a_stack_times_one_matrix_is_one_gemm_where_its_rows_are_a_view(monkeypatch, rng):
    """The Python path (out given, a vector b, a bfloat16 W) multiplies a stack whose rows are a view as
    one GEMM of all of them, and any other stack (reversed, swapped axes, broadcast, an out whose rows
    are no view) one matrix at a time; every result numpy's, out written in place."""
    calls = []
    real = autogemm.kernel.Kernel.gemm
    monkeypatch.setattr(autogemm.kernel.Kernel, "gemm",
                        lambda self, a, b, c, **kw: calls.append(a.shape) or real(self, a, b, c, **kw))
    bf16 = ml_dtypes.bfloat16
    stack = rng.uniform(-1, 1, (3, 4, 6)).astype(np.float32)
    w = rng.uniform(-1, 1, (6, 5)).astype(np.float32)
    cases = [  # a, b, out or None, the GEMMs' row counts
        (stack, w, np.full((3, 4, 5), np.nan, np.float32), [12]),
        (stack, w[:, 0], None, [12]),
        (stack, w.astype(bf16), None, [12]),
        (stack.astype(np.float64)[:, :, :5], w.astype(np.float64)[:5], np.full((3, 4, 5), np.nan), [12]),
        (stack[::-1], w, None, [4, 4, 4]),
        (stack.transpose(0, 2, 1)[:, :4], w[:4], None, [4, 4, 4]),
        (np.broadcast_to(stack[0], (3, 4, 6)), w, None, [4, 4, 4]),
        (stack, w, np.full((3, 5, 4), np.nan, np.float32).transpose(0, 2, 1), [4, 4, 4]),
    ]
    for a, b, out, rows in cases:
        calls.clear()
        got = autogemm.kernel.Kernel.__call__(autogemm.load(str(computed_dtype(a, b))), a, b, out=out)
        assert got is out or out is None
        assert [shape[0] for shape in calls] == rows, (a.shape, a.strides)
        expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
        np.testing.assert_allclose(got, expected, rtol=1e-4 if got.dtype == np.float32 else 1e-12, atol=1e-5)


def test_empty_and_zero_k_shapes(rng):
    assert autogemm.matmul(np.ones((0, 3), np.float32), np.ones((3, 4), np.float32)).shape == (0, 4)
    assert autogemm.matmul(np.ones((3, 4), np.float64), np.ones((4, 0))).shape == (3, 0)
    out = np.full((3, 4), np.nan, np.float32)
    autogemm.matmul(np.ones((3, 0), np.float32), np.ones((0, 4), np.float32), out=out)
    np.testing.assert_array_equal(out, np.zeros((3, 4), np.float32))


def test_out_argument_including_strided_and_overlapping(rng):
    a = rng.uniform(-1, 1, (30, 30))
    b = rng.uniform(-1, 1, (30, 30))
    expected = a @ b
    big = np.full((60, 90), 7.0)
    view = big[::2, ::3]
    result = autogemm.matmul(a, b, out=view)
    assert result is view
    np.testing.assert_allclose(big[::2, ::3], expected, rtol=1e-12, atol=1e-12)
    assert np.all(big[1::2] == 7.0), "writes stayed inside the view"
    a_copy = a.copy()
    autogemm.matmul(a, b, out=a)  # out aliases an input: numpy semantics, no corruption
    np.testing.assert_allclose(a, a_copy @ b, rtol=1e-12, atol=1e-12)


def test_mixed_and_nonnative_dtypes(rng):
    a32 = rng.uniform(-1, 1, (8, 9)).astype(np.float32)
    b64 = rng.uniform(-1, 1, (9, 4))
    assert autogemm.matmul(a32, b64).dtype == np.float64
    swapped = b64.astype(">f8")
    np.testing.assert_allclose(autogemm.matmul(a32.astype(np.float64), swapped), a32.astype(np.float64) @ b64,
                               rtol=1e-12)


def test_errors_match_numpy():
    with pytest.raises(ValueError, match="mismatch"):
        autogemm.matmul(np.ones((3, 4), np.float32), np.ones((5, 2), np.float32))
    with pytest.raises(ValueError, match="dimensions"):
        autogemm.matmul(np.float32(1.0), np.ones((1, 1), np.float32))
    with pytest.raises(TypeError, match="float32, float64"):
        autogemm.matmul(np.ones((2, 2), np.int64), np.ones((2, 2), np.int64))
    with pytest.raises(TypeError, match="float32, float64"):
        autogemm.matmul(np.ones((2, 2), np.complex64), np.ones((2, 2), np.complex64))
    with pytest.raises(ValueError, match="shape"):
        autogemm.matmul(np.ones((2, 3)), np.ones((3, 4)), out=np.empty((2, 5)))
    with pytest.raises(TypeError, match="dtype"):
        autogemm.matmul(np.ones((2, 3)), np.ones((3, 4)), out=np.empty((2, 4), np.float32))
    with pytest.raises(ValueError, match="threads"):
        autogemm.matmul(np.ones((2, 3)), np.ones((3, 4)), threads=0)


def test_thread_count_from_environment(monkeypatch, rng):
    from autogemm.kernel import environment_threads, resolve_threads

    monkeypatch.setenv("AUTOGEMM_NUM_THREADS", "3")
    environment_threads.cache_clear()
    assert resolve_threads(None) == 3
    assert resolve_threads(1) == 1
    monkeypatch.setenv("AUTOGEMM_NUM_THREADS", "1")
    assert resolve_threads(None) == 3  # read once per process, like OMP_NUM_THREADS
    for bad in ("lots", "0"):
        monkeypatch.setenv("AUTOGEMM_NUM_THREADS", bad)
        environment_threads.cache_clear()
        with pytest.raises(ValueError, match="AUTOGEMM_NUM_THREADS"):
            resolve_threads(None)
    monkeypatch.delenv("AUTOGEMM_NUM_THREADS")
    environment_threads.cache_clear()
    assert resolve_threads(None) >= 1


def test_gil_is_released_during_the_call(rng):
    a = rng.standard_normal((900, 900)).astype(np.float32)
    kernel = autogemm.load("float32")
    kernel(a, a, threads=1)  # build and warm up outside the measurement
    ticks, done = [0], threading.Event()

    def count():
        while not done.is_set():
            ticks[0] += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        time.sleep(0.01)
        start_ticks = ticks[0]
        start = time.perf_counter()
        for _ in range(3):
            kernel(a, a, threads=1)
        elapsed = time.perf_counter() - start
        during = ticks[0] - start_ticks
    finally:
        done.set()
        counter.join()
    # A held GIL would freeze the counter for the whole C call (it only runs in Python's switch
    # intervals between calls); a released one lets it run throughout.
    assert elapsed > 0.01
    assert during > 10000 * elapsed


def test_concurrent_python_threads_get_correct_results(rng):
    kernel = autogemm.load("float64")
    inputs = [(rng.standard_normal((70, 50)), rng.standard_normal((50, 60))) for _ in range(8)]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(5):
            results[i] = kernel(*inputs[i], threads=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (a, b), c in zip(inputs, results):
        assert error_ratio(c, a, b) <= 1


def test_load_exposes_params_source_and_machine():
    kernel = autogemm.load("float32")
    assert kernel.params.dtype == "float32"
    assert kernel.params.name in kernel.source
    assert kernel.machine.cores >= 1
    with pytest.raises(TypeError):
        autogemm.load("int8")
