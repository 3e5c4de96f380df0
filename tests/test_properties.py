"""Property tests: random shapes, strides, transposes, alpha, beta and dtypes against float64 numpy."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autogemm


def view(rng, rows, cols, dtype, transposed, step_r, step_c, flip):
    """A (rows x cols) view of a bigger random array: transposed, strided and/or reversed."""
    shape = (cols * step_c, rows * step_r) if transposed else (rows * step_r, cols * step_c)
    base = rng.uniform(-1, 1, shape).astype(dtype)
    x = base.T if transposed else base
    x = x[::step_r, ::step_c][:rows, :cols]
    return x[::-1] if flip else x


operand = st.tuples(st.booleans(), st.integers(1, 3), st.integers(1, 3), st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(0, 70), n=st.integers(0, 70), k=st.integers(0, 90), dtype=st.sampled_from(["float32", "float64"]),
       layout_a=operand, layout_b=operand, trans_a=st.booleans(), trans_b=st.booleans(),
       alpha=st.sampled_from([1.0, -1.0, 0.5, 0.0, 3.0]), beta=st.sampled_from([0.0, 1.0, -0.5]),
       bias=st.booleans(), threads=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_gemm_matches_float64_numpy(m, n, k, dtype, layout_a, layout_b, trans_a, trans_b, alpha, beta, bias,
                                    threads, seed):
    rng = np.random.default_rng(seed)
    a = view(rng, *((k, m) if trans_a else (m, k)), dtype, *layout_a)
    b = view(rng, *((n, k) if trans_b else (k, n)), dtype, *layout_b)
    c = rng.uniform(-1, 1, (m, n)).astype(dtype)
    if beta == 0:
        c[...] = np.nan
    c0 = c.copy()
    bias_vector = rng.uniform(-1, 1, n).astype(dtype) if bias else None
    autogemm.gemm(a, b, c, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b, bias=bias_vector,
                  threads=threads)
    op_a, op_b = (a.T if trans_a else a).astype(np.float64), (b.T if trans_b else b).astype(np.float64)
    expected = alpha * (op_a @ op_b)
    scale = abs(alpha) * (np.abs(op_a) @ np.abs(op_b))
    if beta:
        expected += beta * c0
        scale += abs(beta) * np.abs(c0.astype(np.float64))
    if bias:
        expected += bias_vector
        scale += np.abs(bias_vector.astype(np.float64))
    bound = 8 * np.sqrt(max(k, 1)) * np.finfo(dtype).eps * scale + np.finfo(dtype).tiny
    assert c.shape == (m, n)
    assert np.all(np.abs(c - expected) <= bound)
