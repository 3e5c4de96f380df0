import numpy as np

from autogemm.check import error_ratio, is_correct


def test_correct_result_passes_and_one_wrong_element_fails():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (50, 300)).astype(np.float32)
    b = rng.uniform(-1, 1, (300, 40)).astype(np.float32)
    c = (a @ b).astype(np.float32)
    assert is_correct(c, a, b)
    wrong = c.copy()
    wrong[7, 9] += a[7, 5] * b[5, 9]  # one term counted twice
    assert not is_correct(wrong, a, b)


def test_nan_where_finite_fails_and_matching_nan_passes():
    a = np.ones((2, 2))
    b = np.ones((2, 2))
    c = a @ b
    c[0, 0] = np.nan
    assert error_ratio(c, a, b) == float("inf")
    a[0, 0] = np.nan
    assert is_correct(np.where(np.isnan(a @ b), np.nan, c), a, b)


def test_beta_zero_ignores_c_and_beta_scales_it():
    a, b = np.eye(3), np.full((3, 3), 2.0)
    c = np.full((3, 3), np.nan)
    assert is_correct(a @ b, a, b, c, 1.0, 0.0)
    c = np.ones((3, 3))
    assert is_correct(a @ b + 0.5, a, b, c, 1.0, 0.5)
    assert not is_correct(a @ b, a, b, c, 1.0, 0.5)
