"""benchmarks/peel_choice.py: its two builds force and bar peeling C's last columns, and compute the same products."""

import numpy as np

from autogemm import analytic, api
from autogemm.check import error_ratio
from conftest import benchmark_script


def test_peeling_is_forced_in_one_build_and_barred_in_the_other(host, rng):
    tool = benchmark_script("peel_choice")
    kernel = api.build(analytic.default_params(host, "float32"))
    peel, whole = tool.variant(kernel, True), tool.variant(kernel, False)
    vw = kernel.params.vw
    for m, n, k in ((46, 17 * vw + 6, 213), (34, 2 * vw + 1, 1021)):  # a wide C, a narrow one
        tail = f" + dot on the last {n % vw} column" + ("s" if n % vw > 1 else "")
        assert peel.path(m, n, k) == "direct" + tail and whole.path(m, n, k) == "direct"
        a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        b = rng.uniform(-1, 1, (k, n)).astype(np.float32)
        for build in (peel, whole):
            c = np.full((m, n), np.nan, np.float32)
            build.gemm(a, b, c)
            assert error_ratio(c, a, b, dtype="float32") <= 1
