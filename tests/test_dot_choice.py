"""benchmarks/dot_choice.py: its two builds force and bar the dot path, and compute the same products."""

import numpy as np

from autogemm import analytic, api
from autogemm.check import error_ratio
from conftest import benchmark_script


def test_the_dot_path_is_forced_in_one_build_and_barred_in_the_other(host, rng):
    tool = benchmark_script("dot_choice")
    kernel = api.build(analytic.default_params(host, "float32"))
    dot, other = tool.variant(kernel, True), tool.variant(kernel, False)
    short, long_ = (8, 572, 11), (4, 2304, 768)  # the kernel takes the direct path, then the dot path
    assert kernel.path(*short, b_strides=(1, 11)) == "direct" and kernel.path(*long_, b_strides=(1, 768)) == "dot"
    assert dot.path(*short, b_strides=(1, 11)) == "dot" and other.path(*long_, b_strides=(1, 768)).startswith("direct")
    assert dot.path(37, 5, 300) == "dot" and other.path(37, 5, 300).startswith("direct")  # a row-major B, its columns copied
    for (m, n, k), transposed in ((short, True), ((37, 5, 300), False)):
        a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        b = rng.uniform(-1, 1, (n, k)).astype(np.float32).T if transposed else rng.uniform(-1, 1, (k, n)).astype(np.float32)
        for build in (dot, other):
            c = np.full((m, n), np.nan, np.float32)
            build.gemm(a, b, c)
            assert error_ratio(c, a, b, dtype="float32") <= 1


def test_the_dot_path_is_forced_and_barred_in_a_bfloat16_kernel_too(host, rng):
    """--dtype bfloat16: both of the bfloat16 kernel's dot rules (a transposed B, a row-major one's
    columns copied) are edited, and both builds compute the same products within the bound."""
    import ml_dtypes

    tool = benchmark_script("dot_choice")
    kernel = api.build(analytic.default_params(host, "bfloat16"))
    dot, other = tool.variant(kernel, True), tool.variant(kernel, False)
    for (m, n, k), transposed in (((9, 300, 40), True), ((300, 5, 2), False)):
        strides = (1, k) if transposed else (n, 1)
        assert dot.path(m, n, k, b_strides=strides) == "dot" and other.path(m, n, k, b_strides=strides) == "packed"
        a = rng.uniform(-1, 1, (m, k)).astype(ml_dtypes.bfloat16)
        b = rng.uniform(-1, 1, (n, k) if transposed else (k, n)).astype(ml_dtypes.bfloat16)
        b = b.T if transposed else b
        for build in (dot, other):
            c = np.full((m, n), np.nan, np.float32)
            build.gemm(a, b, c)
            assert error_ratio(c, a, b, dtype="bfloat16") <= 1
