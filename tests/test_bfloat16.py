"""bfloat16: exact products summed in float32, float32 callers rounded while packing, AMX tiles
where the CPU and OS allow them, and the fallback that widens bf16 on CPUs without vdpbf16ps. Kernel-level edge sizes, layouts, threads
and NaN/Inf for every bf16 ISA are in test_kernels.py."""

import dataclasses

import ml_dtypes
import numpy as np
import pytest

import autogemm
from autogemm import analytic, api, machine, params, search
from autogemm.check import error_ratio

BF16 = ml_dtypes.bfloat16
HOST = machine.detect()
BF16_ISAS = [pytest.param(isa, marks=pytest.mark.skipif(not HOST.supports(isa), reason=f"CPU lacks {isa}"))
             for isa in params.ISAS]


def bf16_kernel(isa):
    return api.build(analytic.default_params(HOST, "bfloat16", isa))


def frobenius_error(result, a, b):
    expected = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    return np.linalg.norm(np.asarray(result, np.float64) - expected) / np.linalg.norm(expected)


@pytest.mark.parametrize("isa", BF16_ISAS)
def test_relative_frobenius_error_at_k_4096(isa, rng):
    """The issue's accuracy bar: <= 1e-5 against float64 on the same bf16 inputs, float32 out."""
    a = rng.standard_normal((24, 4096)).astype(BF16)
    b = rng.standard_normal((4096, 40)).astype(BF16)
    c = np.empty((24, 40), np.float32)
    bf16_kernel(isa).gemm(a, b, c, threads=2, force_threads=True)
    assert frobenius_error(c, a, b) <= 1e-5


def test_float64_reference_is_sensitive_to_rounding_the_inputs_again(rng):
    """The bar above can fail: rounding the float32 output to bf16 breaks it by orders of magnitude."""
    a = rng.standard_normal((24, 4096)).astype(BF16)
    b = rng.standard_normal((4096, 40)).astype(BF16)
    assert frobenius_error(autogemm.matmul(a, b, out_dtype="bfloat16"), a, b) > 1e-4


@pytest.mark.parametrize("isa", BF16_ISAS)
@pytest.mark.parametrize("k", [1, 2, 3, 33, 97])
def test_odd_k_pairs_are_zero_padded(isa, k, rng):
    """vdpbf16ps multiplies pairs of k: an odd K leaves half a pair that must count as zero."""
    kernel = bf16_kernel(isa)
    m, n = kernel.params.mr + 1, kernel.params.nr - 1
    a = rng.uniform(0.5, 1.5, (m, k)).astype(BF16)
    b = rng.uniform(0.5, 1.5, (k, n)).astype(BF16)
    c = np.full((m, n), np.nan, np.float32)
    kernel.gemm(a, b, c)
    assert error_ratio(c, a, b, dtype="bfloat16") <= 1


def test_float32_inputs_round_to_nearest_even_like_ml_dtypes():
    """compute="bf16" rounds float32 while packing exactly as ml_dtypes does: ties to even, NaN stays NaN."""
    bits = np.array([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F807FFF, 0xBF808000, 0x7F7FFFFF, 0x00008000,
                     0x7FC00001, 0xFF800000, 0x00000001, 0x80000000, 0x3FFFFFFF], np.uint32)
    a = bits.view(np.float32).reshape(-1, 1)
    one = np.ones((1, 1), BF16)
    got = autogemm.matmul(a, one, compute="bf16")
    expected = a.astype(BF16).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(got[finite], expected[finite])  # -0.0 * 1 sums to +0.0: equal values


def test_float32_operands_pack_to_the_bits_ml_dtypes_rounds_them_to(rng):
    """Whole rows and tiles of float32 (A: 64 values of k per row, B: full NR-column panels) take the
    vectorised rounding: the product equals that of the same operands rounded by ml_dtypes first, bit
    for bit, over ties, values just either side of them and negatives."""
    ties = np.array([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F807FFF, 0xBF808000, 0x3FFFFFFF, 0x3E2AAAAB,
                     0xC0490FDB, 0x3F7F8000, 0x3DCCCCCD], np.uint32).view(np.float32)
    a = rng.choice(ties, (35, 70))
    b = rng.choice(ties, (70, 2 * bf16_kernel(None).params.nr + 5))
    got = autogemm.matmul(a, b, compute="bf16")
    np.testing.assert_array_equal(got, autogemm.matmul(a.astype(BF16), b.astype(BF16)))
    assert error_ratio(got, a.astype(BF16), b.astype(BF16), dtype="bfloat16") <= 1


def test_compute_bf16_on_float32_and_float64_views(rng):
    base = rng.standard_normal((90, 70)).astype(np.float32)
    a = base[::2, 1:]          # strided rows
    b = rng.standard_normal((50, 69)).astype(np.float64).T  # transposed float64, converted to float32
    got = autogemm.matmul(a, b, compute="bf16")
    assert got.dtype == np.float32
    rounded_a, rounded_b = a.astype(BF16), b.astype(np.float32).astype(BF16)
    assert error_ratio(got, rounded_a, rounded_b, dtype="bfloat16") <= 1
    # And it is not the float32 product: the inputs really were rounded.
    assert np.abs(got - a.astype(np.float64) @ b).max() > 1e-3


@pytest.mark.parametrize("layout", ["T", "strided", "negative", "F"])
def test_bf16_views_are_read_in_place(layout, rng):
    from conftest import random_matrix

    a = random_matrix(rng, (45, 31), "bfloat16", layout)
    b = random_matrix(rng, (31, 67), "bfloat16", "T" if layout != "T" else "strided")
    got = autogemm.matmul(a, b)
    assert got.dtype == np.float32
    assert error_ratio(got, a, b, dtype="bfloat16") <= 1


def test_out_dtype_and_bf16_out(rng):
    a = rng.standard_normal((20, 30)).astype(BF16)
    b = rng.standard_normal((30, 10)).astype(BF16)
    wide = autogemm.matmul(a, b)
    narrow = autogemm.matmul(a, b, out_dtype="bfloat16")
    assert narrow.dtype == BF16
    np.testing.assert_array_equal(narrow.astype(np.float32), wide.astype(BF16).astype(np.float32))
    out = np.empty((20, 10), BF16)
    assert autogemm.matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out.astype(np.float32), narrow.astype(np.float32))
    with pytest.raises(TypeError, match="out_dtype"):
        autogemm.matmul(a, b, out_dtype=np.float64)


def test_gemm_accumulates_into_bf16_and_float32_c_with_bias(rng):
    x = rng.standard_normal((16, 40)).astype(BF16)
    w = rng.standard_normal((24, 40)).astype(BF16)
    bias = rng.standard_normal(24).astype(np.float32)
    c32 = rng.standard_normal((16, 24)).astype(np.float32)
    expected = x.astype(np.float64) @ w.astype(np.float64).T + bias + c32
    got = autogemm.gemm(x, w, c32.copy(), beta=1.0, trans_b=True, bias=bias)
    assert np.abs(got - expected).max() < 1e-4
    c16 = c32.astype(BF16)
    expected16 = x.astype(np.float64) @ w.astype(np.float64).T + bias + c16.astype(np.float64)
    autogemm.gemm(x, w, c16, beta=1.0, trans_b=True, bias=bias)
    assert c16.dtype == BF16
    # One bf16 rounding of the float32 result: within half a bf16 ulp (2^-8 relative).
    assert np.all(np.abs(c16.astype(np.float64) - expected16) <= np.abs(expected16) * 2.0 ** -8 + 1e-6)


def test_mixed_bf16_and_float32_follows_numpy_promotion(rng):
    a = rng.standard_normal((8, 9)).astype(BF16)
    b = rng.standard_normal((9, 7)).astype(np.float32)
    got = autogemm.matmul(a, b)
    assert got.dtype == np.float32
    assert error_ratio(got, a, b, dtype="float32") <= 1  # b was not rounded


def test_float32_times_a_bfloat16_weight_is_numpys_float32_product(rng):
    """x @ W.T and W @ x (W read in place on the dot path), a stacked x @ W (one GEMM of its rows, W read
    in place on rows_direct) and a product that packs: float32, exact products of the float32 values and
    the widened bfloat16 ones."""
    w = rng.standard_normal((300, 200)).astype(BF16)
    x = rng.standard_normal((3, 200)).astype(np.float32)
    stack = rng.standard_normal((4, 5, 300)).astype(np.float32)
    big = rng.standard_normal((200, 200)).astype(np.float32)
    for a, b in [(x, w.T), (w, x[0]), (stack, w), (big, w.T[:, :200])]:
        got = autogemm.matmul(a, b)
        assert got.dtype == np.float32
        wide = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert got.shape == np.matmul(*wide).shape
        flat_a = wide[0].reshape(-1, wide[0].shape[-1]) if wide[0].ndim > 1 else wide[0][np.newaxis]
        flat_b = wide[1] if wide[1].ndim > 1 else wide[1][:, np.newaxis]
        assert error_ratio(got.reshape(flat_a.shape[0], -1), flat_a, flat_b, dtype="float32") <= 1


def test_bf16_compute_rounds_a_few_float32_rows_first_so_w_is_not_packed(rng):
    """compute="bf16" with float32 x beside a bfloat16 W eight times its size or more: x is rounded to
    bfloat16 before the call, as packing would round it, so the product is the bfloat16 x's, bit for bit,
    on rows_direct (x @ W) or the dot path (x @ W.T, W @ x), not packed; a larger float32 operand stays
    float32 and is rounded while packing."""
    kernel = autogemm.load("bfloat16")
    w = rng.standard_normal((300, 260)).astype(BF16)
    for a, b in [(rng.standard_normal((3, 300)).astype(np.float32), w),
                 (rng.standard_normal((5, 260)).astype(np.float32), w.T),
                 (w, rng.standard_normal((260, 1)).astype(np.float32)),
                 (rng.standard_normal((300, 7)).astype(np.float32).T, w)]:
        rounded = [x.astype(BF16) if x.dtype == np.float32 else x for x in (a, b)]
        assert kernel.path(a.shape[0], b.shape[1], a.shape[1]) != "packed"
        for threads in (1, 2):
            got = autogemm.matmul(a, b, compute="bf16", threads=threads)
            np.testing.assert_array_equal(got, autogemm.matmul(*rounded, threads=threads))
            assert error_ratio(got, *rounded, dtype="float32") <= 1
    big = rng.standard_normal((100, 300)).astype(np.float32)  # 30000 values beside W's 78000: packed, rounded there
    got = autogemm.matmul(big, w, compute="bf16")
    assert error_ratio(got, big.astype(BF16), w, dtype="float32") <= 1


def test_nan_in_c_is_not_read_when_beta_is_zero_and_inf_propagates(rng):
    a = rng.standard_normal((13, 17)).astype(BF16)
    b = rng.standard_normal((17, 11)).astype(BF16)
    a[3, 4] = np.inf
    b[6, 2] = np.nan
    c = np.full((13, 11), np.nan, np.float32)
    autogemm.gemm(a, b, c)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(c), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(c), np.isinf(expected))
    assert np.isfinite(c).sum() == np.isfinite(expected).sum() > 0


def test_without_avx512_bf16_the_float32_kernels_take_over():
    """A CPU without vdpbf16ps never gets a paired kernel: the default widens bf16 while packing."""
    no_bf16 = dataclasses.replace(HOST, features=frozenset(HOST.features) - {"avx512_bf16"})
    assert "avx512bf16" not in no_bf16.isas_for("bfloat16")
    fallback = analytic.default_params(no_bf16, "bfloat16")
    assert fallback.isa == no_bf16.best_isa and params.k_per_element(fallback.isa) == 1
    plain = dataclasses.replace(HOST, arch="x86_64", features=frozenset())
    assert analytic.default_params(plain, "bfloat16").isa == "portable"
    with_bf16 = dataclasses.replace(HOST, features=frozenset({"avx512f", "avx512_bf16", "avx2", "fma"}))
    assert analytic.default_params(with_bf16, "bfloat16").isa == "avx512bf16"


def test_paired_isa_is_bfloat16_only_and_needs_an_even_kc():
    with pytest.raises(params.InvalidParams, match="bfloat16 only"):
        params.KernelParams("float32", "avx512bf16", mr=6, nr=64, vw=16, ku=4, mc=96, kc=256, nc=4096)
    with pytest.raises(params.InvalidParams, match="even"):
        params.KernelParams("bfloat16", "avx512bf16", mr=6, nr=64, vw=16, ku=4, mc=96, kc=255, nc=4096)
    p = params.KernelParams("bfloat16", "avx512bf16", mr=6, nr=64, vw=16, ku=4, mc=96, kc=768, nc=4096)
    assert p.name.startswith("ag_bgemm_avx512bf16_6x64")


def test_amx_is_offered_only_with_both_flags_and_the_os_permission(monkeypatch):
    vector_bf16 = frozenset({"avx512f", "avx512_bf16", "avx2", "fma"})
    with_amx = dataclasses.replace(HOST, features=vector_bf16 | {"amx_bf16", "amx_tile"})
    monkeypatch.setattr(machine, "amx_permitted", lambda: True)
    assert with_amx.isas_for("bfloat16")[:2] == ("amxbf16", "avx512bf16")
    assert "amxbf16" not in with_amx.isas_for("float32") and with_amx.best_isa == "avx512"
    default = analytic.default_params(with_amx, "bfloat16")
    assert (default.isa, default.mr, default.nr) == ("amxbf16", 32, 32)
    assert default.kc % params.TILE_K == 0 and default.mc % default.mr == 0
    assert "amxbf16" not in dataclasses.replace(HOST, features=vector_bf16 | {"amx_tile"}).isas_for("bfloat16")
    monkeypatch.setattr(machine, "amx_permitted", lambda: False)
    assert with_amx.isas_for("bfloat16")[0] == "avx512bf16"


def test_tile_params_take_whole_tiles_and_at_most_eight_of_them():
    p = params.KernelParams("bfloat16", "amxbf16", mr=32, nr=32, vw=16, ku=4, mc=128, kc=2048, nc=4096)
    assert p.name.startswith("ag_bgemm_amxbf16_32x32")
    assert params.registers_needed(32, 32, 16, "amxbf16") == 4 + 2 + 2
    assert params.registers_needed(16, 48, 16, "amxbf16") == 3 + 1 + 3
    for bad, match in [(dict(mr=24, mc=96), "multiples"), (dict(kc=48), "multiples"),
                       (dict(nr=48, nc=4080), "tile registers"), (dict(mr=16, nr=64), "tile registers")]:
        with pytest.raises(params.InvalidParams, match=match):
            p.replace(**bad)
    with pytest.raises(params.InvalidParams, match="bfloat16 only"):
        p.replace(dtype="float32")


def test_the_search_maps_its_row_choice_onto_one_or_two_tiles(monkeypatch):
    monkeypatch.setattr(machine, "amx_permitted", lambda: True)
    host = dataclasses.replace(HOST, features=frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}))
    default = analytic.default_params(host, "bfloat16")
    choices = search.choices_from_params(default, 1)
    assert search.params_from_choices(host, "bfloat16", choices) == default.replace(
        kc=choices["kc"], mc=search._round_to(choices["mc"], default.mr), nc=choices["nc"])
    assert search.params_from_choices(host, "bfloat16", {**choices, "mr": 1, "nv": 3}).mr == 16
    with pytest.raises(params.InvalidParams, match="register budget"):
        search.params_from_choices(host, "bfloat16", {**choices, "mr": search.MAX_MR, "nv": 3})


@pytest.mark.skipif(not HOST.supports("amxbf16"), reason="CPU or OS lacks AMX-BF16")
@pytest.mark.parametrize("source", ["bfloat16", "float32"])
def test_amx_k_padding_reads_zeros_whatever_the_workspace_held(source, rng):
    """k is padded to whole tiles of 32 in both packed operands: after a GEMM of NaN has filled the
    packing buffers, k = 1, 33, 47 and 63 (every k block's last tile partial) still match float64,
    row-major and with A and B transposed, whole tiles of C and edges."""
    kernel = api.build(analytic.default_params(HOST, "bfloat16", "amxbf16").replace(kc=64, mc=64))
    dtype = BF16 if source == "bfloat16" else np.float32
    m, n = 70, 45
    poison = np.full((m, 128), np.nan, dtype)
    for k in (1, 33, 47, 63, 64 + 33):
        kernel.gemm(poison, np.full((128, n), np.nan, dtype), np.zeros((m, n), np.float32))
        for a, b in [(rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)),
                     (rng.standard_normal((k, m)).astype(dtype).T, rng.standard_normal((n, k)).astype(dtype).T)]:
            c = np.full((m, n), np.nan, np.float32)
            kernel.gemm(a, b, c)
            assert error_ratio(c, a.astype(BF16), b.astype(BF16), dtype="bfloat16") <= 1, (source, k)


@pytest.mark.skipif(not HOST.supports("amxbf16"), reason="CPU or OS lacks AMX-BF16")
@pytest.mark.parametrize("source", ["bfloat16", "float32"])
def test_amx_transposed_a_packs_the_tiles_a_row_major_a_does(source, rng):
    """A transposed A (dout^T in a weight gradient) is packed 16 rows by 32 k at a time, transposed in
    registers: the product is bit for bit that of the same A stored row-major, over whole blocks, rows
    and k past them, and a partial last micro-panel; and it matches float64."""
    kernel = api.build(analytic.default_params(HOST, "bfloat16", "amxbf16").replace(kc=96, mc=64))
    dtype = BF16 if source == "bfloat16" else np.float32
    for m, k in [(16, 32), (70, 96 + 64 + 40), (47, 33)]:
        stored = rng.standard_normal((k, m + 3)).astype(dtype)   # A^T with lda wider than M
        a_t = stored[:, 1:m + 1].T
        b = rng.standard_normal((k, 50)).astype(dtype)
        c_t, c_row = (np.full((m, 50), np.nan, np.float32) for _ in range(2))
        kernel.gemm(a_t, b, c_t, threads=2, force_threads=True)
        kernel.gemm(np.ascontiguousarray(a_t), b, c_row, threads=2, force_threads=True)
        np.testing.assert_array_equal(c_t, c_row)
        assert error_ratio(c_t, a_t.astype(BF16), b.astype(BF16), dtype="bfloat16") <= 1, (source, m, k)


def test_unsupported_dtypes_and_compute_values_are_refused():
    a = np.ones((2, 2), np.float16)
    with pytest.raises(TypeError, match="bfloat16"):
        autogemm.matmul(a, a)
    with pytest.raises(ValueError, match="compute"):
        autogemm.matmul(np.ones((2, 2)), np.ones((2, 2)), compute="float64")
