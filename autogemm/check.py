"""Correctness against a float64 reference, with an error bound that scales with K and the data."""

from __future__ import annotations

import numpy as np

from .params import accumulator_dtype

#: Bound factor: blocked float sums stay well within c * sqrt(K) * eps relative to |alpha||A||B|,
#: while one lost or doubled term (error ~ |a||b|) exceeds it for K up to ~10^4 in float32.
TOLERANCE_FACTOR = 8.0


def reference(a, b, c=None, alpha=1.0, beta=0.0) -> np.ndarray:
    """alpha * a @ b + beta * c in float64; c is ignored (never read) when beta == 0."""
    product = alpha * (np.asarray(a, np.float64) @ np.asarray(b, np.float64))
    if beta == 0 or c is None:
        return product
    return product + beta * np.asarray(c, np.float64)


def error_ratio(result, a, b, c=None, alpha=1.0, beta=0.0, dtype=None) -> float:
    """Largest elementwise error divided by its allowed bound; the result is correct if <= 1.

    NaN or Inf where the reference is finite (or the reverse) counts as an infinite error. The bound
    uses the precision products are summed in: float32 for bfloat16, whose inputs the reference
    takes as they are (already rounded).
    """
    name = dtype if isinstance(dtype, str) else np.dtype(dtype or np.asarray(result).dtype).name
    dtype = np.dtype(accumulator_dtype(name))
    expected = reference(a, b, c, alpha, beta)
    result = np.asarray(result, np.float64)
    if result.shape != expected.shape:
        raise ValueError(f"result shape {result.shape} differs from the reference {expected.shape}")
    if result.size == 0:
        return 0.0
    k = np.asarray(a).shape[-1]
    scale = abs(alpha) * (np.abs(np.asarray(a, np.float64)) @ np.abs(np.asarray(b, np.float64)))
    if beta != 0 and c is not None:
        scale = scale + abs(beta) * np.abs(np.asarray(c, np.float64))
    eps = np.finfo(dtype).eps
    bound = TOLERANCE_FACTOR * np.sqrt(max(k, 1)) * eps * scale + np.finfo(dtype).tiny
    nan = np.isnan(expected)
    inf = np.isinf(expected)
    if not np.array_equal(nan, np.isnan(result)) or not np.array_equal(inf, np.isinf(result)):
        return float("inf")
    if np.any(expected[inf] != result[inf]):
        return float("inf")
    finite = ~(nan | inf)
    if not finite.any():
        return 0.0
    return float(np.max(np.abs(result - expected)[finite] / bound[finite]))


def is_correct(result, a, b, c=None, alpha=1.0, beta=0.0, dtype=None) -> bool:
    return error_ratio(result, a, b, c, alpha, beta, dtype) <= 1.0
