"""The micro-kernel contract, checked on every template and dtype this CPU can run."""

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from autogemm import analytic, api, machine, params
from autogemm.check import error_ratio

from conftest import random_matrix, route

HOST = machine.detect()


def acc(dtype):
    """C's dtype: the accumulator (float32 for bfloat16 inputs)."""
    return params.accumulator_dtype(dtype)


def biased_gemm_error(kernel, a, b, c, bias, beta, dtype, threads, alpha=1.0, forced=True):
    """c := alpha * (a @ b + bias) + beta * c on `threads` threads (forced, or as many as the kernel
    takes), C first filled with NaN when beta = 0 (it must not be read); the error_ratio against
    float64, the bias as one more column of a and one more row of b."""
    if beta == 0:
        c[...] = np.nan
    before = np.array(c, np.float64)
    kernel.gemm(a, b, c, alpha=alpha, beta=beta, bias=bias * alpha, threads=threads, force_threads=forced)
    with_bias_a = np.hstack([np.asarray(a, np.float64), np.ones((a.shape[0], 1))])
    with_bias_b = np.vstack([np.asarray(b, np.float64), bias.astype(np.float64)])
    return error_ratio(c, with_bias_a, with_bias_b, before, alpha, beta, dtype)


TEMPLATES = [
    pytest.param(isa, dtype, marks=pytest.mark.skipif(not HOST.supports(isa), reason=f"CPU lacks {isa}"))
    for isa in params.ISAS
    for dtype in params.DTYPES
    if isa not in params.PAIRED_ISAS or dtype == "bfloat16"
]
#: The templates whose accumulators are vector registers (not AMX tiles): narrow-panel kernels and
#: packing by in-register transposes are theirs.
VECTOR_TEMPLATES = [t for t in TEMPLATES if t.values[0] not in params.TILE_ISAS]


def param_grid(isa, dtype):
    """The analytic default plus variants with tiny blocks, so every loop runs several times,
    k-blocks leave an unroll remainder, every parallel loop is used, both ways of prefetching C, and
    a shared B block packed with and without non-temporal stores."""
    base = analytic.default_params(HOST, dtype, isa)
    vw = base.vw
    if isa in params.TILE_ISAS:  # the smallest tiles: one of A's rows, k blocks of one tile
        tiny = dict(mr=params.TILE_ROWS, nr=2 * vw, mc=2 * params.TILE_ROWS, kc=params.TILE_K, nc=4 * vw)
        short_kc = params.TILE_K
    else:
        tiny = dict(mr=3, nr=2 * vw, mc=6, kc=10, nc=4 * vw)
        short_kc = 8 if isa in params.PAIRED_ISAS else 7
    return [
        base,
        base.replace(**tiny, ku=4, parallel="ic", prefetch=2, prefetch_c=True, stream_b=True),
        base.replace(**tiny, ku=8, parallel="jr", stream_b=True),
        base.replace(ku=1, mc=2 * base.mr, kc=short_kc,
                     nc=2 * base.nr, parallel="jr", prefetch=1, stream_b=False),
        base.replace(**tiny, ku=2, parallel="2d", prefetch_c=True, stream_b=False),
        base.replace(**tiny, ku=4, parallel="jp", prefetch=1),
    ]


def sizes(p):
    ms = sorted({1, p.mr - 1, p.mr, p.mr + 1, 2 * p.mr + 3, 37} - {0})
    ns = sorted({1, p.nr - 1, p.nr + 1, 53})
    ks = [0, 1, 7, p.kc + 3, 41]
    return ms, ns, ks


@pytest.mark.parametrize("isa, dtype", TEMPLATES)
@pytest.mark.parametrize("variant", range(6))
def test_edge_sizes_match_float64_reference(isa, dtype, variant, rng):
    p = param_grid(isa, dtype)[variant]
    kernel = api.build(p)
    ms, ns, ks = sizes(p)
    for m, n, k in itertools.product(ms, ns, ks):
        a = random_matrix(rng, (m, k), dtype)
        b = random_matrix(rng, (k, n), dtype)
        c = np.full((m, n), np.nan, acc(dtype))
        kernel.gemm(a, b, c, threads=2, force_threads=True)
        ratio = error_ratio(c, a, b, dtype=dtype)
        assert ratio <= 1, f"{p.name}: {m}x{n}x{k} error ratio {ratio}"


@pytest.mark.parametrize("isa, dtype", TEMPLATES)
@pytest.mark.parametrize("layout_a, layout_b, layout_c", [
    ("C", "C", "C"), ("F", "T", "F"), ("T", "F", "strided"), ("strided", "negative", "T"),
    ("negative", "strided", "negative"), ("T", "T", "C"),
])
@pytest.mark.parametrize("variant", [1, 5])  # parallel ic, jp
def test_layouts_alpha_beta(isa, dtype, layout_a, layout_b, layout_c, variant, rng):
    p = param_grid(isa, dtype)[variant]
    kernel = api.build(p)
    m, n, k = 2 * p.mr + 5, 3 * p.nr - 1, 2 * p.kc + 1
    a = random_matrix(rng, (m, k), dtype, layout_a)
    b = random_matrix(rng, (k, n), dtype, layout_b)
    for alpha, beta in [(1.0, 0.0), (-0.5, 0.0), (1.0, 1.0), (2.0, -0.75), (0.0, 0.5)]:
        c0 = random_matrix(rng, (m, n), acc(dtype), layout_c)
        if beta == 0:
            c0[...] = np.nan  # beta == 0 must never read C
        c = c0.copy(order="K") if layout_c in ("C", "F") else c0
        before = np.array(c0, np.float64)
        kernel.gemm(a, b, c, alpha=alpha, beta=beta, threads=2, force_threads=True)
        ratio = error_ratio(c, a, b, before, alpha, beta, dtype)
        assert ratio <= 1, f"{p.name} {layout_a}/{layout_b}/{layout_c} alpha={alpha} beta={beta}: {ratio}"



@pytest.mark.parametrize("isa, dtype", VECTOR_TEMPLATES)
def test_a_narrow_last_panel_takes_a_kernel_of_the_vectors_it_needs(isa, dtype, rng):
    """Four vectors a row: the last panel of 1 to 3 vectors, whole or not, takes ukernel_n1..n3; each
    one matches float64 on row-major C (stores from registers when whole) and on strided C, with a
    bias, over NaN (beta = 0) and accumulating (beta = -0.5)."""
    base = param_grid(isa, dtype)[0]
    vw = base.vw
    p = base.replace(mr=2, nr=4 * vw, mc=4, kc=24, nc=8 * vw, parallel="ic")  # 2 x 4 vectors fit AVX2
    kernel = api.build(p)
    assert all(f"ukernel_n{v}(" in kernel.source for v in (1, 2, 3)) and "ukernel_n4(" not in kernel.source
    m, k = 2 * p.mr + 1, 2 * p.kc + 5
    a = random_matrix(rng, (m, k), dtype)
    for extra in (1, vw, vw + 1, 2 * vw, 3 * vw - 1, 3 * vw):
        n = p.nr + extra
        b = random_matrix(rng, (k, n), dtype)
        bias = rng.uniform(-1, 1, n).astype(acc(dtype))
        for layout_c, beta in (("C", 0.0), ("C", -0.5), ("strided", 0.0), ("strided", -0.5)):
            c = random_matrix(rng, (m, n), acc(dtype), layout_c)
            ratio = biased_gemm_error(kernel, a, b, c, bias, beta, dtype, threads=1)
            assert ratio <= 1, f"{p.name} n={n} {layout_c} beta={beta}: {ratio}"


@pytest.mark.parametrize("isa, dtype", VECTOR_TEMPLATES)
@pytest.mark.parametrize("mr", [1, 5, 7, 8])
def test_row_major_a_packs_in_vector_blocks_at_every_mr(isa, dtype, mr, rng):
    """Row-major A is packed a vector of k at a time by in-register transposes (AVX-512, MR <= 8):
    odd MR pairs its last row with itself; k is two blocks, a remainder and (bfloat16) an odd value;
    the last micro-panel is partial; A's rows are further apart than their length."""
    base = param_grid(isa, dtype)[0]
    p = base.replace(mr=mr, nr=base.vw, mc=2 * mr, kc=96, nc=4 * base.vw, parallel="ic")
    kernel = api.build(p)
    for m, k in [(3 * mr + 1, 2 * 32 + 9), (2 * mr, 96 + 37)]:
        a = random_matrix(rng, (m, k + 5), dtype)[:, 2:k + 2]
        b = random_matrix(rng, (k, 2 * p.nr + 3), dtype)
        c = np.full((m, b.shape[1]), np.nan, acc(dtype))
        kernel.gemm(a, b, c, threads=2, force_threads=True)
        ratio = error_ratio(c, a, b, dtype=dtype)
        assert ratio <= 1, f"{p.name}: {m}x{b.shape[1]}x{k} error ratio {ratio}"


@pytest.mark.parametrize("parallel", params.PARALLEL_LOOPS)
@pytest.mark.parametrize("threads", [3, 7, 16])
def test_every_parallel_loop_splits_evenly_at_odd_and_many_threads(parallel, threads, rng):
    """More threads than cores, odd counts and uneven pieces: several rounds of row blocks, k blocks
    and column blocks, partial row blocks and micro-panels, each thread's share and the stolen rest."""
    base = analytic.default_params(HOST, "float32")
    p = base.replace(mc=2 * base.mr, kc=16, nc=3 * base.nr, parallel=parallel)
    kernel = api.build(p)
    for m, n, k in [(11 * p.mr + 1, 7 * p.nr + 3, 37), (3 * p.mr - 1, 2 * p.nr + 1, 16)]:
        a = random_matrix(rng, (m, k), "float32")
        b = random_matrix(rng, (k, n), "float32")
        c = np.full((m, n), np.nan, np.float32)
        kernel.gemm(a, b, c, threads=threads, force_threads=True)
        ratio = error_ratio(c, a, b, dtype="float32")
        assert ratio <= 1, f"{p.name} on {threads} threads: {m}x{n}x{k} error ratio {ratio}"

#: Templates with the direct (unpacked) path: one source type and one value of k per element.
DIRECT_TEMPLATES = [case for case in TEMPLATES if case.values[1] != "bfloat16"]


def unit_column_stride(rng, shape, dtype, layout):
    """A random matrix whose rows are contiguous: C order, every other row of a bigger array,
    reversed rows, or rows 4 KiB apart (forwards or reversed: the direct path's prefetch distance
    for rows that share cache sets), as the direct path reads B and writes C."""
    m, n = shape
    if layout == "C":
        return rng.uniform(-1, 1, (m, n)).astype(dtype)
    if layout == "rows":
        return rng.uniform(-1, 1, (2 * m, n + 3)).astype(dtype)[::2, :n]
    if layout == "negative-rows":
        return rng.uniform(-1, 1, (m, n)).astype(dtype)[::-1]
    if layout.endswith("4k-rows"):
        page = rng.uniform(-1, 1, (m, 4096 // np.dtype(dtype).itemsize)).astype(dtype)[:, :n]
        return page[::-1] if layout.startswith("negative") else page
    raise ValueError(layout)


def elements(x):
    """x's strides in elements."""
    return tuple(s // x.itemsize for s in x.strides)


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
def test_paths_without_packing_take_the_problems_packing_cannot_pay_for(isa, dtype):
    kernel = api.build(param_grid(isa, dtype)[0].replace(direct_m=128, direct_mflops=128))
    assert route(kernel, 1, 2, 1) == "direct"
    assert route(kernel, 100, 100, 100) == "direct"
    assert route(kernel, 384, 384, 384) == "direct"  # B stays in cache and the flops are few
    assert route(kernel, 512, 512, 512) == "packed"  # 268 Mflop on one thread: packing pays for itself
    assert route(kernel, 128, 768, 50304) == "direct"  # few rows: packed B would serve only 128
    assert route(kernel, 129, 768, 50304) == "packed"
    assert route(kernel, 100, 100, 100, b_strides=(1, 100)) == "direct"  # a transposed B, packed a panel at a time
    assert route(kernel, 129, 768, 50304, b_strides=(1, 50304)) == "packed"
    assert route(kernel, 100, 100, 100, c_strides=(200, 2)) == "direct"  # C's rows stored value by value
    assert route(kernel, 2048, 2048, 2048) == "packed"
    assert route(kernel, 4096, 768, 768) == "packed"
    assert route(kernel, 199, 1, 73) == "dot"  # a matrix times a column
    assert route(kernel, 1, 300, 17, b_strides=(1, 17)) == "dot"  # a row times a transposed matrix
    assert route(kernel, 8, 2304, 768, b_strides=(1, 768)) == "dot"  # a small batch times a transposed weight
    assert route(kernel, 4, 300, 2048, b_strides=(1, 2048)) == "dot"  # long k: the sums across lanes are cheap
    assert route(kernel, 8, 300, 17, b_strides=(1, 17)) == "direct"  # short k: the sums across lanes are not
    assert route(kernel, 2, 1000, 4, b_strides=(1, 4)) == "direct"
    assert route(kernel, 199, 1, 73, a_strides=(1, 199)) == "direct of C^T"  # a column-major A times a column
    assert route(kernel, 1, 300, 17) == "direct"  # a row times a row-major matrix


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
def test_a_narrow_or_column_major_c_is_computed_as_c_transposed(isa, dtype):
    """C^T = B^T A^T where its path does less work, storing C included: a narrow C, whose rows
    would pad lanes that C^T's do not, and a column-major C where C^T needs no more packing."""
    kernel = api.build(param_grid(isa, dtype)[0].replace(direct_m=128, direct_mflops=128))
    vw = kernel.params.vw
    assert route(kernel, 1000, 5, 300, a_strides=(1, 1000)) == "direct of C^T"  # B^T's rows times A^T
    assert route(kernel, 1000, 5, 300, a_strides=(1, 1000), bias=True) == "direct"
    assert route(kernel, 1000, 5, 300, b_strides=(1, 300)) == "dot"  # C small beside k: along k, as it is
    assert route(kernel, 1024, vw - 3, 300, a_strides=(1, 1024)) == "direct of C^T"
    nr = kernel.params.nr  # whole tiles either way: C as it is, stored by rows
    assert route(kernel, 1024, nr, 300, a_strides=(1, 1024)) == "direct"
    assert route(kernel, 1, 1, 100) == "dot" and route(kernel, vw, vw, vw) == "direct"  # square: C as it is
    assert route(kernel, 2048, 2048, 2048, c_strides=(1, 2048)) == "packed of C^T"  # column-major C
    if dtype == "float32":  # C^T packs B^T's panels and stores by rows: 5% less work by every float32 template's tiles
        assert route(kernel, 100, 100, 100, c_strides=(1, 100)) == "direct of C^T"
    assert route(kernel, 40, 300, 300, c_strides=(1, 40)) == "direct"  # ... where that saves too little
    assert route(kernel, 128, 3000, 768, c_strides=(1, 128)) == "direct"  # C^T would need packing A too
    assert route(kernel, 100, 100, 100, a_strides=(1, 100), c_strides=(1, 100)) == "direct of C^T"
    tight = api.build(param_grid(isa, dtype)[0].replace(direct_m=48, direct_mflops=16))
    # Too many flops for the direct path: B's few columns copied to rows, or A^T's rows read in place.
    assert route(tight, 8192, vw // 2, 768) == "dot"
    assert route(tight, 8192, vw // 2, 768, a_strides=(1, 8192)) == "direct of C^T"


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
@pytest.mark.parametrize("threads", [1, 2])
def test_c_transposed_matches_float64_reference(isa, dtype, threads, rng):
    """Narrow C (n of a quarter of the vector width to a half, m up to two threads' worth) and
    column-major C, for every layout of A and B: alpha, beta = 0 over NaN and beta != 0."""
    kernel = api.build(param_grid(isa, dtype)[0])
    vw = kernel.params.vw
    transposed = 0
    for (m, n, k), layout_a, layout_b in itertools.product(
            [(37, 1, 41), (300, 2, 7), (97, vw // 4 + 1, 300), (2001, 2, 160), (13, vw // 2, 1), (40, 40, 40)],
            ("C", "T", "strided"), ("C", "T", "negative")):
        a = random_matrix(rng, (m, k), dtype, layout_a)
        b = random_matrix(rng, (k, n), dtype, layout_b)
        for layout_c, (alpha, beta) in itertools.product(("C", "F", "strided"), [(1.0, 0.0), (-1.5, 0.75)]):
            c = random_matrix(rng, (m, n), dtype, layout_c)
            if beta == 0:
                c[...] = np.nan
            before = np.array(c, np.float64)
            transposed += kernel.path(m, n, k, elements(a), elements(b), elements(c), threads).endswith("C^T")
            kernel.gemm(a, b, c, alpha=alpha, beta=beta, threads=threads)
            ratio = error_ratio(c, a, b, before, alpha, beta, dtype)
            assert ratio <= 1, f"{m}x{n}x{k} {layout_a}/{layout_b}/{layout_c} beta={beta}: {ratio}"
    assert transposed >= 9 * 3 * 2  # one shape's worth at least


def test_the_direct_flops_limit_is_per_thread():
    """Each thread takes up to direct_mflops: more threads keep larger GEMMs unpacked, but only the
    threads a GEMM gets (at least ~1 Mflop each), not those offered."""
    kernel = api.build(analytic.default_params(HOST, "float32").replace(direct_m=0, direct_mflops=10,
                                                                       direct_threaded=1))
    assert route(kernel, 160, 160, 160) == "direct"  # 8.2 Mflop
    assert route(kernel, 200, 200, 200) == "packed"  # 16 Mflop
    assert route(kernel, 200, 200, 200, threads=2) == "direct"
    assert route(kernel, 280, 280, 280, threads=2) == "packed"  # 44 Mflop
    assert route(kernel, 280, 280, 280, threads=5) == "direct"
    few = api.build(analytic.default_params(HOST, "float32").replace(direct_m=0, direct_mflops=1,
                                                                    direct_threaded=1))
    assert route(few, 110, 110, 110, threads=3) == "packed"  # 2.7 Mflop gets two threads, not three
    assert route(few, 110, 110, 110, threads=64) == "packed"


def test_the_direct_limits_are_the_kernels_own():
    """Tighter limits (a few Intel cores' default) pack what Zen 4's would compute in place. The choice
    of path is code that every template shares, so one template checks it."""
    base = analytic.default_params(HOST, "float32")
    kernel = api.build(base.replace(direct_m=48, direct_mflops=16))
    assert route(kernel, 48, 3072, 768) == "direct"  # few rows, however large B
    assert route(kernel, 49, 3072, 768) == "packed"
    assert route(kernel, 256, 768, 50304) == "packed"
    assert route(kernel, 160, 160, 160) == "direct"  # 8.2 Mflop
    assert route(kernel, 256, 256, 256) == "packed"  # 34 Mflop
    assert route(kernel, 512, 512, 512) == "packed"
    off = api.build(base.replace(direct_m=0, direct_mflops=0))
    assert off.path(1, 300, 17) == "packed" and off.path(8, 8, 8) == "packed"
    assert off.path(199, 1, 73) == "dot"  # the dot path has its own limits


def test_the_direct_limits_grow_on_several_threads():
    """direct_threaded = 2 (a few Intel cores' default): twice the rows, and twice the flops a thread,
    on two threads or more; one thread keeps the limits as they are."""
    kernel = api.build(analytic.default_params(HOST, "float32").replace(direct_m=64, direct_mflops=16,
                                                                       direct_threaded=2))
    assert kernel.path(64, 3072, 768) == "direct" and kernel.path(65, 3072, 768) == "packed"
    assert kernel.path(128, 3072, 768, threads=2) == "direct"
    assert kernel.path(129, 3072, 768, threads=2) == "packed"
    assert kernel.path(256, 256, 256) == "packed"  # 34 Mflop on one thread
    assert kernel.path(256, 256, 256, threads=2) == "direct"  # 17 Mflop a thread, up to 32
    assert kernel.path(384, 384, 384, threads=2) == "packed"  # 57 Mflop a thread
    assert kernel.path(400, 400, 400, threads=4) == "direct"  # 32 Mflop a thread
    same = api.build(analytic.default_params(HOST, "float32").replace(direct_m=64, direct_mflops=16,
                                                                     direct_threaded=1))
    assert same.path(65, 3072, 768, threads=2) == "packed" and same.path(256, 256, 256, threads=2) == "packed"


def test_a_row_times_a_matrix_takes_a_thread_for_each_256_kib_it_reads(rng):
    """A GEMV is bound by moving its matrix, and a short k by storing C: threads by the bytes of A, B
    and C when they outnumber the Mflops, at most those offered; on two threads the product still
    matches float64."""
    kernel = api.build(analytic.default_params(HOST, "float32"))
    assert kernel.threads_used(1, 768, 768, 2) == 2  # 1.2 Mflop, 2.4 MB
    assert kernel.threads_used(768, 1, 768, 2) == 2  # a matrix times a column
    assert kernel.threads_used(1, 768, 768, 16) == 9 and kernel.threads_used(1, 768, 768, 1) == 1
    assert kernel.threads_used(1, 256, 256, 2) == 1  # 256 KiB
    assert kernel.threads_used(64, 64, 64, 2) == 1  # 0.5 Mflop, 48 KiB
    assert kernel.threads_used(400, 400, 4, 2) == 2  # 1.3 Mflop, but C's 640 KB stored
    assert kernel.threads_used(100, 100, 100, 2) == 2  # 2 Mflop
    assert api.build(analytic.default_params(HOST, "float64")).threads_used(1, 512, 512, 16) == 8
    for m, n, k in [(1, 768, 768), (768, 1, 768), (2, 1000, 300), (400, 400, 4)]:
        a = random_matrix(rng, (m, k), "float32")
        b = random_matrix(rng, (k, n), "float32")
        c = np.full((m, n), np.nan, np.float32)
        kernel.gemm(a, b, c, threads=2)
        assert error_ratio(c, a, b, dtype="float32") <= 1, (m, n, k)


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
@pytest.mark.parametrize("layout_a, layout_b, layout_c", [
    ("C", "C", "C"), ("F", "rows", "rows"), ("T", "negative-rows", "C"), ("strided", "C", "rows"),
    ("negative", "rows", "negative-rows"), ("C", "4k-rows", "C"), ("F", "negative-4k-rows", "rows"),
])
def test_the_direct_path_matches_float64_reference(isa, dtype, layout_a, layout_b, layout_c, rng):
    """Edge sizes around MR, NR and the vector width (masked columns), alpha, beta = 0 over NaN, beta != 0
    and a bias (checked as an extra column of A of ones and row of B), on one thread."""
    for p in param_grid(isa, dtype)[:2]:
        kernel = api.build(p)
        ms, ns, _ = sizes(p)
        ns = sorted(set(ns) | {p.vw - 1, p.vw + 1} - {0})
        for m, n, k in itertools.product(ms, ns, [1, 7, 41, 1100]):  # 1100: three blocks of k
            a = random_matrix(rng, (m, k), dtype, layout_a)
            b = unit_column_stride(rng, (k, n), dtype, layout_b)
            bias = rng.uniform(-1, 1, n).astype(dtype)
            with_bias_a = np.hstack([a, np.ones((m, 1), dtype)])
            with_bias_b = np.vstack([b, bias])
            for alpha, beta in [(1.0, 0.0), (-1.5, 0.0), (0.5, 1.0), (2.0, -0.75)]:
                c = unit_column_stride(rng, (m, n), dtype, layout_c)
                if beta == 0:
                    c[...] = np.nan  # beta == 0 must never read C
                before = np.array(c, np.float64)
                if n > 1:  # (or dot products along rows of A, for a C small beside k)
                    path = route(kernel, m, n, k, elements(a), elements(b), elements(c), bias=True)
                    assert path == "direct" or path == "dot" and elements(a)[1] == 1
                kernel.gemm(a, b, c, alpha=alpha, beta=beta, bias=bias * alpha, threads=1)
                ratio = error_ratio(c, with_bias_a, with_bias_b, before, alpha, beta, dtype)
                assert ratio <= 1, f"{p.name}: {m}x{n}x{k} {layout_a}/{layout_b}/{layout_c} beta={beta}: {ratio}"


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
@pytest.mark.parametrize("layout_a, layout_bt, layout_c", [
    ("C", "C", "C"), ("T", "rows", "rows"), ("strided", "negative-rows", "C"), ("F", "C", "negative-rows"),
])
def test_the_direct_path_packs_a_transposed_b_a_panel_at_a_time(isa, dtype, layout_a, layout_bt, layout_c, rng):
    """B's columns contiguous (x @ W.T, W's rows any distance apart): each NR-column panel of B packed
    just before A's rows, read in place, use it. Edge sizes around MR, NR and the vector width, k over
    three blocks, alpha, beta = 0 over NaN, beta != 0 and a bias; on two threads, a panel each."""
    p = param_grid(isa, dtype)[0].replace(direct_m=128, direct_mflops=128)
    kernel = api.build(p)
    ms = sorted({1, p.mr - 1, p.mr + 1, 37} - {0})
    ns = sorted({2, p.vw - 1, p.nr + 1, 2 * p.nr + 3} - {0, 1})
    cases = [(shape, 1) for shape in itertools.product(ms, ns, [1, 7, 1100])]
    cases += [((37, 2 * p.nr + 3, 1100), 2), ((13, 800, 600), 2)]  # a share of the panels each
    cases += [((700, 300, 8), 2), ((3000, p.nr - 3, 64), 2)]  # of the rows: short k, or one panel
    direct = 0
    for (m, n, k), threads in cases:
        a = random_matrix(rng, (m, k), dtype, layout_a)
        b = unit_column_stride(rng, (n, k), dtype, layout_bt).T
        bias = rng.uniform(-1, 1, n).astype(dtype)
        for alpha, beta in [(1.0, 0.0), (-1.5, 0.5)]:
            c = unit_column_stride(rng, (m, n), dtype, layout_c)
            if beta == 0:
                c[...] = np.nan  # beta == 0 must never read C
            before = np.array(c, np.float64)
            path = route(kernel, m, n, k, elements(a), elements(b), elements(c), threads, bias=True)
            assert path == "direct" or path == "dot" and (elements(a)[1] == 1 or k == 1), (m, n, k, path)
            direct += path == "direct"
            assert threads == 1 or kernel.threads_used(m, n, k, threads) == threads
            kernel.gemm(a, b, c, alpha=alpha, beta=beta, bias=bias * alpha, threads=threads)
            ratio = error_ratio(c, np.hstack([a, np.ones((m, 1), dtype)]), np.vstack([b, bias]), before,
                                alpha, beta, dtype)
            assert ratio <= 1, f"{m}x{n}x{k} on {threads} {layout_a}/{layout_bt}/{layout_c} beta={beta}: {ratio}"
    assert 2 * direct >= len(cases)  # a quarter of the runs at least (two a case; the rest few rows along k)


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
@pytest.mark.parametrize("m, n, k", [(150, 130, 60), (5, 2000, 200), (16, 900, 300)])  # rows, then columns, split
def test_the_direct_path_on_two_threads(isa, dtype, m, n, k, rng):
    kernel = api.build(param_grid(isa, dtype)[0])
    assert 2 * m * n * k >= 2e6 and route(kernel, m, n, k) == "direct"  # enough work for a second thread
    a = random_matrix(rng, (m, k), dtype, "T")
    b = random_matrix(rng, (k, n), dtype)
    c = np.full((m, n), np.nan, dtype)
    kernel.gemm(a, b, c, threads=2)
    assert error_ratio(c, a, b, dtype=dtype) <= 1


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
@pytest.mark.parametrize("threads", [1, 2])
def test_the_dot_path(isa, dtype, threads, rng):
    """A matrix times a column, and 1 to 8 rows times a transposed matrix (x @ W.T at a small batch):
    dot products along k, with k around the vector width (masked tails), rows of A and of W around
    the groups of four; big enough on two threads to split. Rows times a transposed matrix take the
    dot path where it does less work, which every k, batch and row count here does at least once."""
    kernel = api.build(param_grid(isa, dtype)[0])
    vw = kernel.params.vw
    ks = sorted({1, 2, vw - 1, vw, vw + 1, 3 * vw + 5} - {0})
    sizes = [1, 3, 4, 5, 9, 37]
    if threads == 2:
        sizes, ks = sizes + [3001], ks + [400]  # 2.4 MFLOP at 3001 x 400: two threads
    cases = [(r, 1, "column") for r in sizes] + [(batch, r, "rows") for batch in (1, 2, 5, 8) for r in sizes]
    dotted = set()
    for (m, n, shape), k in itertools.product(cases, ks):
        a = unit_column_stride(rng, (m, k), dtype, "rows" if shape == "column" else "C")
        b = random_matrix(rng, (k, n), dtype, "C" if shape == "column" else "T")
        bias = rng.uniform(-1, 1, n).astype(dtype)
        for alpha, beta in [(1.0, 0.0), (-2.0, 0.5)]:
            c = rng.uniform(-1, 1, (m, n)).astype(dtype)
            if beta == 0:
                c[...] = np.nan
            before = np.array(c, np.float64)
            path = kernel.path(m, n, k, elements(a), elements(b), elements(c), threads=threads, bias=True)
            if shape == "column":
                assert path == "dot"
            elif path == "dot":
                dotted.add((m, n, k))
            kernel.gemm(a, b, c, alpha=alpha, beta=beta, bias=bias * alpha, threads=threads)
            ratio = error_ratio(c, np.hstack([a, np.ones((m, 1), dtype)]), np.vstack([b, bias]), before,
                                alpha, beta, dtype)
            assert ratio <= 1, f"{shape} {m}x{n}x{k} alpha={alpha} beta={beta}: {ratio}"
    for index, wanted in enumerate(((1, 2, 5, 8), set(sizes) - {1}, set(ks) - {1})):  # a 1 x n B is read directly
        assert set(wanted) <= {shape[index] for shape in dotted}


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
@pytest.mark.parametrize("threads", [1, 2])
def test_the_dot_path_from_memory(isa, dtype, threads, rng):
    """The dot path where its outer rows come from memory (past 2 x NC x KC: the tiny blocks' kernel),
    whose steps prefetch the next group: a column, and batches times a transposed matrix, with and
    without a bias (W's rows outer, or A's as C^T's), k around the vector width. One or two rows on the
    inner side take eight outer rows at a time: whole groups of eight and a part of one; and the last
    column of a row-major B peeled off to the dot path, A's rows outer, one bias for all of them."""
    kernel = api.build(param_grid(isa, dtype)[1])
    vw = kernel.params.vw
    dotted = peeled = 0
    shapes = [(9, 1), (37, 1), (40, 1), (1, 37), (1, 40), (2, 9), (2, 37), (37, 2), (5, 37), (8, 13), (37, 6)]
    cases = [(m, n, k, "C" if n == 1 else "T") for (m, n), k in itertools.product(shapes, [vw + 1, 3 * vw + 5, 8 * vw + 3])]
    for m, n, k, layout_b in cases + [(37, 2 * vw + 1, 100, "C")]:
        a = random_matrix(rng, (m, k), dtype)
        b = random_matrix(rng, (k, n), dtype, layout_b)
        for bias in (None, rng.uniform(-1, 1, n).astype(dtype)):
            path = kernel.path(m, n, k, elements(a), elements(b), threads=threads, bias=bias is not None)
            dotted += path == "dot"
            peeled += path.endswith("dot on the last 1 column")
            c = np.full((m, n), np.nan, dtype)
            kernel.gemm(a, b, c, bias=bias, threads=threads)
            with_bias = np.zeros(n) if bias is None else bias.astype(np.float64)
            ratio = error_ratio(c, np.hstack([a, np.ones((m, 1), dtype)]), np.vstack([b, with_bias.astype(dtype)]),
                                dtype=dtype)
            assert ratio <= 1, f"{m}x{n}x{k} bias={bias is not None}: {ratio}"
    assert dotted >= 8 and peeled == 2


def alpha_beta_within_bound(kernel, a, b, layout_c, threads, rng, dtype="float32"):
    """kernel.gemm(a, b) into a C on `layout_c`, alpha 1 and beta 0 over NaN, then alpha -2 and beta 0.5:
    each within the error bound against float64."""
    (m, _), n = a.shape, b.shape[1]
    for alpha, beta in [(1.0, 0.0), (-2.0, 0.5)]:
        c = random_matrix(rng, (m, n), np.float32, layout_c)
        if beta == 0:
            c[...] = np.nan
        before = np.array(c, np.float64)
        kernel.gemm(a, b, c, alpha=alpha, beta=beta, threads=threads)
        assert error_ratio(c, a, b, before, alpha, beta, dtype) <= 1, (kernel.params.name, a.shape, b.shape, layout_c)


def path_within_bound(kernel, a, b, threads, dtype, rng):
    """Asserts a @ b + bias by `kernel` (alpha and beta over NaN, C contiguous and strided) within the
    error bound; the path the kernel takes for these operands' strides."""
    (m, k), n = a.shape, b.shape[1]
    bias = rng.uniform(-1, 1, n).astype(np.float32)
    for layout_c, (alpha, beta) in [("C", (1.0, 0.0)), ("strided", (-2.0, 0.5))]:
        c = random_matrix(rng, (m, n), np.float32, layout_c)
        ratio = biased_gemm_error(kernel, a, b, c, bias, beta, dtype, threads, alpha, forced=False)
        assert ratio <= 1, f"{kernel.params.name} {m}x{n}x{k} {layout_c}: {ratio}"
    return kernel.path(m, n, k, elements(a), elements(b), threads=threads, bias=True)


@pytest.mark.parametrize("isa, dtype", [case for case in TEMPLATES if case.values[1] == "bfloat16"])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_dot_path_reads_bfloat16_rows_in_place(isa, dtype, threads, rng):
    """bfloat16 rows of A times a transposed bfloat16 B, and a matrix times a column, by dot products
    along k (vdpbf16ps on pairs of k, or widened to float32): k short of a step, odd, a step and a bit,
    long; alpha and beta over NaN, a bias, C contiguous and strided; on the default kernel and on the
    tiny blocks' one, whose outer rows count as coming from memory (the prefetching loops, eight rows
    at a time). float32 operands are still packed, rounded to bfloat16."""
    bf16 = params.numpy_dtype("bfloat16")
    dotted = 0
    for kernel in (api.build(p) for p in param_grid(isa, dtype)[:2]):
        for (m, n), k in itertools.product([(1, 37), (2, 9), (3, 40), (8, 13), (37, 1), (40, 2)], [1, 3, 17, 33, 100]):
            a = random_matrix(rng, (m, k), bf16)
            b = random_matrix(rng, (k, n), bf16, "C" if n == 1 else "T")
            dotted += path_within_bound(kernel, a, b, threads, dtype, rng) == "dot"
        a32 = rng.uniform(-1, 1, (2, 300)).astype(np.float32)
        b = random_matrix(rng, (300, 40), bf16, "T")
        c = np.full((2, 40), np.nan, np.float32)
        kernel.gemm(a32, b, c, threads=threads)
        assert error_ratio(c, a32.astype(bf16), b, dtype=dtype) <= 1
        assert np.abs(c - a32.astype(np.float64) @ b.astype(np.float64)).max() > 1e-4
    assert dotted >= 30


@pytest.mark.parametrize("isa, dtype", [case for case in TEMPLATES if case.values[1] == "bfloat16"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_few_bfloat16_rows_stream_a_row_major_b_unpacked(isa, dtype, threads, rng):
    """Up to 16 rows (vdpbf16ps, in groups of 8), 8 (widened) or 4 (16 vector registers) of bfloat16 A
    times a row-major bfloat16 B take rows_direct, B's rows interleaved in pairs for vdpbf16ps or
    widened as loaded, except (widened) a whole row tile with B in cache and, without AVX-512, a narrow
    C that ends in a partial vector (packed): n about the vector width, odd and past a strip's columns,
    k from 1 to long, A's columns strided, B's rows padded, alpha and beta over NaN, a bias, C
    contiguous and strided; on the default kernel and the tiny blocks' one, for which B comes from
    memory (the prefetching passes)."""
    bf16 = params.numpy_dtype("bfloat16")
    wide = isa in ("avx512", "avx512bf16", "amxbf16")  # 32 vector registers, masked loads of 16-bit values
    paired = isa in params.PAIRED_ISAS  # vdpbf16ps on B's rows interleaved in pairs: a whole row tile too
    rows_max = 16 if paired else 8 if wide else 4  # paired: two groups of eight
    unpacked = set()
    for p in param_grid(isa, dtype)[:2]:
        kernel = api.build(p)
        for m, n, k in [(1, 2, 1), (1, p.vw, 100), (2, 16 * p.vw + 3, 3), (3, 2 * p.vw - 1, 17), (4, 4 * p.vw, 33),
                        (5, 2100, 7), (rows_max, 16 * p.vw + 1, 40), (p.mr, 2 * p.nr, 30), (rows_max + 1, 40, 20),
                        (11, 70, 41),
                        (1, 5000, 60), (rows_max - 1, 3000, 50), (rows_max, 40000, 200)]:  # these take two threads
            a = random_matrix(rng, (m, k), bf16, "strided")
            b = rng.uniform(-1, 1, (k, n + 7)).astype(bf16)[:, :n]
            path = path_within_bound(kernel, a, b, threads, dtype, rng)
            expected = (m <= rows_max and (paired or m != p.mr or k * n > p.nc * p.kc)
                        and (wide or n % p.vw == 0 or n >= 16 * p.vw))  # else a partial vector widened value by value
            assert (path == "direct") == expected, (p.name, m, n, k, path)
            if expected:
                unpacked.add((m, n, k))
    assert len(unpacked) >= 5


@pytest.mark.parametrize("isa, dtype", [case for case in DIRECT_TEMPLATES if case.values[1] == "float32"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_float32_kernel_reads_a_bfloat16_w_in_place_on_the_dot_path(isa, dtype, threads, rng):
    """numpy's float32 product of float32 rows and a bfloat16 W (x @ W.T, and W @ x for a column): on
    the dot path W is read as stored and widened as loaded; elsewhere it is copied to float32. The default
    and the tiny blocks' kernel (W from memory: eight rows at a time, and a part of eight), k around the
    vector width, alpha and beta over NaN, a bias, C contiguous and strided."""
    bf16 = params.numpy_dtype("bfloat16")
    widened = 0
    for kernel in (api.build(p) for p in param_grid(isa, dtype)[:2]):
        for (m, n), k in itertools.product([(1, 37), (2, 9), (3, 40), (8, 13), (37, 1), (64, 70)], [1, 5, 17, 100]):
            column = n == 1
            a = random_matrix(rng, (m, k), bf16 if column else np.float32)
            b = random_matrix(rng, (k, n), np.float32 if column else bf16, "C" if column else "T")
            widened += path_within_bound(kernel, a, b, threads, dtype, rng) == "dot"
    assert widened >= 20


@pytest.mark.parametrize("isa, dtype", [case for case in TEMPLATES if case.values[1] == "bfloat16"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_bfloat16_kernel_takes_w_times_a_few_columns_on_the_dot_path(isa, dtype, threads, rng):
    """bfloat16 W @ X for a few columns of a row-major X, which would pack W, takes the dot path in C, X's
    columns copied into rows (dot_copied): a phases build counts no packing and no macro-kernel, through
    gemm (alpha and beta over NaN, C on several layouts, a bias) and product (matmul's short path). X
    whose columns lie apart, and k = 1, are packed."""
    bf16 = params.numpy_dtype("bfloat16")
    kernel = api.build(param_grid(isa, dtype)[0], phases=True)
    for m, n, k, layout_x, layout_c, dot in [(300, 2, 200, "C", "C", True), (400, 8, 1000, "C", "F", True),
                                             (1000, 4, 500, "C", "strided", True), (200, 11, 300, "C", "C", True),
                                             (500, 5, 33, "strided", "C", False), (70, 3, 1, "C", "C", False)]:
        w, x = random_matrix(rng, (m, k), bf16), random_matrix(rng, (k, n), bf16, layout_x)
        c_strides = elements(random_matrix(rng, (m, n), np.float32, layout_c))
        assert kernel.path(m, n, k, elements(w), elements(x), c_strides, threads=threads) == ("dot" if dot else "packed")
        kernel.phase_seconds()  # read, so zeroed
        alpha_beta_within_bound(kernel, w, x, layout_c, threads, rng)
        assert error_ratio(kernel.product(w, x, threads=threads), w, x, dtype="float32") <= 1
        bias = rng.uniform(-1, 1, n).astype(np.float32)
        assert biased_gemm_error(kernel, w, x, np.empty((m, n), np.float32), bias, 0.0, "float32", threads,
                                 forced=False) <= 1
        assert (sum(kernel.phase_seconds().values()) == 0) == dot, (m, n, k)


@pytest.mark.parametrize("isa, dtype", [case for case in DIRECT_TEMPLATES if case.values[1] == "float32"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_bfloat16_w_times_a_few_float32_columns_is_read_in_place(isa, dtype, threads, rng):
    """W @ X for a bfloat16 W and a few float32 columns, without a bias: where the float32 product would
    take the dot path, it is computed as C^T = X^T @ W.T on the widened dot path (X's columns copied
    into rows), W read in place; alpha and beta over NaN, X and C on several layouts, k around the vector
    width. With a bias it copies W to float32, as before."""
    bf16 = params.numpy_dtype("bfloat16")
    kernel = api.build(param_grid(isa, dtype)[0])
    calls = []
    entry = kernel._w16
    kernel._w16 = lambda *args: calls.append(args[:3]) or entry(*args)
    read = 0
    shapes = [(37, 2, 100), (70, 3, 17), (200, 8, 301), (64, 5, 1), (300, 4, 2 * kernel.params.vw)]
    layouts = zip(("C", "T", "strided", "C", "F"), ("C", "strided", "F", "C", "strided"))
    for (m, n, k), (layout_x, layout_c) in zip(shapes, layouts):
        w = random_matrix(rng, (m, k), bf16)
        x = random_matrix(rng, (k, n), np.float32, layout_x)
        c_strides = elements(random_matrix(rng, (m, n), np.float32, layout_c))
        dot = kernel.path(m, n, k, elements(w), elements(x), c_strides, threads=threads) == "dot"
        calls.clear()
        alpha_beta_within_bound(kernel, w, x, layout_c, threads, rng)
        assert calls == ([(n, m, k)] if dot else []) * 2, (m, n, k)
        read += dot
    assert read >= 2  # two shapes or more
    bias = rng.uniform(-1, 1, 3).astype(np.float32)
    w, x = random_matrix(rng, (70, 40), bf16), random_matrix(rng, (40, 3), np.float32)
    calls.clear()
    c = np.full((70, 3), np.nan, np.float32)
    assert biased_gemm_error(kernel, w, x, c, bias, 0.0, "float32", threads, forced=False) <= 1 and calls == []


@pytest.mark.parametrize("isa, dtype", [case for case in DIRECT_TEMPLATES if case.values[1] == "float32"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_float32_kernel_streams_a_row_major_bfloat16_w_on_rows_direct(isa, dtype, threads, rng):
    """numpy's float32 product of up to 256 float32 rows (64 on the portable template) and a bfloat16 W
    stored in x out (x @ W): W is read in place on rows_direct_w16, widened as loaded, in groups of four
    rows (whole groups and a part; one row); more rows copy W to float32 instead. n about the vector width, odd and past a strip
    of columns, k from 1 to long, x strided or transposed, W's rows padded, alpha and beta over NaN, a
    bias, C contiguous and strided; on the default kernel and the tiny blocks' one, for which W comes
    from memory (the prefetching passes). Two shapes are long enough for two threads at once."""
    bf16 = params.numpy_dtype("bfloat16")
    for p in param_grid(isa, dtype)[:2]:
        kernel = api.build(p)
        statuses = []
        entry = kernel._w16_rows
        kernel._w16_rows = lambda *args: statuses.append(entry(*args)) or statuses[-1]
        cases = [(1, 2, 1, "C"), (1, p.vw - 1, 100, "T"), (2, p.vw + 1, 7, "strided"), (3, 3 * p.vw + 5, 33, "C"),
                 (8, 2100, 17, "T"), (9, 40, 200, "strided"), (17, 70, 41, "C"), (64, 33, 20, "C"),
                 (65, 33, 20, "C"), (257, 20, 5, "C"), (5, 5000, 60, "C"), (12, 3000, 50, "T")]
        for m, n, k, layout_a in cases:
            a = random_matrix(rng, (m, k), np.float32, layout_a)
            b = rng.uniform(-1, 1, (k, n + 5)).astype(bf16)[:, :n]
            path_within_bound(kernel, a, b, threads, dtype, rng)
        most = 64 if isa == "portable" else 256
        assert statuses == [int(m > most) for m, *_ in cases for _ in range(2)]  # 1: declined, W copied


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
@pytest.mark.parametrize("threads", [1, 2])
def test_the_dot_path_for_a_row_major_b(isa, dtype, threads, rng):
    """Rows of A times a row-major B whose few columns are copied into rows first: with more rows of A
    than columns of B, each thread copies all of B and takes a share of A's rows; with fewer, each
    copies the columns it takes. alpha and beta over NaN, a bias, C contiguous and strided."""
    kernel = api.build(param_grid(isa, dtype)[0])
    dotted = set()
    for m, n, k in [(200, 5, 1500), (300, 3, 4000), (37, 5, 3000), (1, 2, 2000), (2, 2, 500), (3, 6, 8000),
                    (1, 8, 8000)]:
        a = random_matrix(rng, (m, k), dtype)
        b = random_matrix(rng, (k, n), dtype)
        bias = rng.uniform(-1, 1, n).astype(dtype)
        if kernel.path(m, n, k, threads=threads, bias=True) == "dot":
            dotted.add((m, n, k))
        for layout_c, (alpha, beta) in itertools.product(("C", "strided"), [(1.0, 0.0), (-2.0, 0.5)]):
            c = random_matrix(rng, (m, n), dtype, layout_c)
            ratio = biased_gemm_error(kernel, a, b, c, bias, beta, dtype, threads, alpha, forced=False)
            assert ratio <= 1, f"{m}x{n}x{k} on {threads} {layout_c} beta={beta}: {ratio}"
    for shape in [(200, 5, 1500), (300, 3, 4000)]:  # B's columns copied, on every thread offered
        assert shape in dotted and kernel.threads_used(*shape, threads) == threads


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
@pytest.mark.parametrize("threads", [1, 2])
def test_the_columns_past_the_last_whole_vector_take_the_dot_path(isa, dtype, threads, rng):
    """C's last n mod VW columns by the dot path (B row-major: their copy; transposed: its rows), the
    rest direct or packed: alpha and beta over NaN, a bias, C contiguous and strided; and the last
    columns of C^T where the kernel computes C^T (A, B and C column-major)."""
    base = param_grid(isa, dtype)[0]
    vw, nr = base.vw, base.nr
    kernels = {"direct": api.build(base), "packed": api.build(base.replace(direct_m=0, direct_mflops=0))}
    for way, (m, n, k), layout_b in [("direct", (34, 2 * vw + 1, 1021), "C"), ("direct", (300, 3 * vw + 2, 160), "C"),
                                     ("packed", (600, 8 * nr + 1, 96), "C"), ("direct", (669, 2 * vw + 1, 27), "T"),
                                     ("packed", (600, 8 * nr + 1, 96), "T")]:
        kernel = kernels[way]
        a = random_matrix(rng, (m, k), dtype)
        b = random_matrix(rng, (k, n), dtype, layout_b)
        path = kernel.path(m, n, k, b_strides=elements(b), threads=threads, bias=True)
        tail = f" + dot on the last {n % vw} column" + ("s" if n % vw > 1 else "")
        # packed, two threads: where the tail takes one, its work counts twice, and it may not pay
        assert path == way + tail or way == "packed" and threads > 1 and path == way, (m, n, k, path)
        bias = rng.uniform(-1, 1, n).astype(dtype)
        for layout_c, (alpha, beta) in itertools.product(("C", "strided"), [(1.0, 0.0), (-2.0, 0.5)]):
            c = random_matrix(rng, (m, n), dtype, layout_c)
            ratio = biased_gemm_error(kernel, a, b, c, bias, beta, dtype, threads, alpha, forced=False)
            assert ratio <= 1, f"{way} {m}x{n}x{k} on {threads} {layout_c} beta={beta}: {ratio}"
    m, n, k = 2 * vw + 1, 34, 1021  # column-major: C^T = B^T A^T, 34 x (2 VW + 1)
    a, b = np.asfortranarray(random_matrix(rng, (m, k), dtype)), np.asfortranarray(random_matrix(rng, (k, n), dtype))
    c = np.full((m, n), np.nan, dtype, order="F")
    kernel = kernels["direct"]
    assert kernel.path(m, n, k, elements(a), elements(b), elements(c), threads) == "direct of C^T + dot on the last 1 column"
    kernel.gemm(a, b, c, threads=threads)
    assert error_ratio(c, a, b, dtype=dtype) <= 1


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
@pytest.mark.parametrize("threads", [1, 2])
def test_the_columns_past_the_last_whole_vector_of_a_transposed_a_take_their_c_transposed(isa, dtype, threads, rng):
    """With A's columns contiguous (A transposed), C's last n mod VW columns as their C^T = B_tail^T A^T
    on the direct path, the rest direct (B row-major, or transposed: its panels packed) or packed: alpha
    and beta over NaN, C contiguous and strided. Not with a bias, which runs along C^T's columns."""
    base = param_grid(isa, dtype)[0]
    vw, nr = base.vw, base.nr
    kernels = {"direct": api.build(base), "packed": api.build(base.replace(direct_m=0, direct_mflops=0))}
    for way, (m, n, k), layout_b in [("direct", (669, 2 * vw + 1, 27), "T"), ("direct", (300, 3 * vw + 2, 160), "C"),
                                     ("packed", (600, 8 * nr + 1, 96), "C")]:
        kernel = kernels[way]
        a = random_matrix(rng, (m, k), dtype, "T")
        b = random_matrix(rng, (k, n), dtype, layout_b)
        tail = f" + direct of C^T on the last {n % vw} column" + ("s" if n % vw > 1 else "")
        path = kernel.path(m, n, k, elements(a), elements(b), threads=threads)
        assert path == way + tail or way == "packed" and path == way, (m, n, k, path)  # packed: where it pays
        assert kernel.path(m, n, k, elements(a), elements(b), threads=threads, bias=True) == way
        for layout_c, (alpha, beta) in itertools.product(("C", "strided"), [(1.0, 0.0), (-2.0, 0.5)]):
            c = random_matrix(rng, (m, n), dtype, layout_c)
            if beta == 0:
                c[...] = np.nan
            before = np.array(c, np.float64)
            kernel.gemm(a, b, c, alpha=alpha, beta=beta, threads=threads)
            ratio = error_ratio(c, a, b, before, alpha, beta, dtype)
            assert ratio <= 1, f"{way} {m}x{n}x{k} on {threads} {layout_c} beta={beta}: {ratio}"


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
@pytest.mark.parametrize("threads", [1, 2])
def test_one_row_times_a_row_major_b(isa, dtype, threads, rng):
    """x B for one row x (and y = A^T x, its C^T): B streamed row by row in strips of 8 KiB, eight rows a
    pass. Widths across a vector and a strip, k across a pass, B's rows forwards and backwards, C
    contiguous and strided, alpha and beta over NaN, a bias; on two threads, shares of the columns."""
    kernel = api.build(param_grid(isa, dtype)[0])
    vw, strip = kernel.params.vw, 8192 // np.dtype(dtype).itemsize
    cases, direct = list(itertools.product([1, vw - 1, vw + 1, strip - 1, strip + vw + 3, 2 * strip + 5], [1, 7, 8, 9, 83])), 0
    for n, k in cases:
        a = random_matrix(rng, (1, k), dtype)
        b = random_matrix(rng, (k, n), dtype)[::(-1) ** (n + k)]  # rows forwards or backwards
        bias = rng.uniform(-1, 1, n).astype(dtype)
        direct += kernel.path(1, n, k, elements(a), elements(b), threads=threads, bias=True) == "direct"
        for layout_c, (alpha, beta) in itertools.product(("C", "strided"), [(1.0, 0.0), (-2.0, 0.5)]):
            c = random_matrix(rng, (1, n), dtype, layout_c)
            ratio = biased_gemm_error(kernel, a, b, c, bias, beta, dtype, threads, alpha, forced=False)
            assert ratio <= 1, f"1x{n}x{k} on {threads} {layout_c} beta={beta}: {ratio}"
        y = np.full((n, 1), np.nan, dtype)  # y = B^T x^T: C^T is the row above
        kernel.gemm(b.T, a.T, y, threads=threads)
        assert n < strip or k == 1 or kernel.path(n, 1, k, elements(b.T), elements(a.T), threads=threads) == "direct of C^T"
        assert error_ratio(y, b.T, a.T, dtype=dtype) <= 1, f"{n}x1x{k} on {threads}"
    assert 3 * direct >= 2 * len(cases)  # the rest a column, or the dot path


@pytest.mark.parametrize("isa, dtype", DIRECT_TEMPLATES)
@pytest.mark.parametrize("threads", [1, 2])
def test_a_few_rows_times_a_row_major_b(isa, dtype, threads, rng):
    """2 to 8 rows x B, B streamed row by row once for up to 8 of them (4 on 16-register ISAs) where it is
    read from memory (past NC x KC: the tiny blocks' kernel), for up to 4 where its rows lie 4 KiB apart
    (the default's, on a wider array), and for two always: widths across a vector and a strip of sums, k
    across a pass, B's rows forwards and backwards, A row-major and transposed, C contiguous and strided,
    alpha and beta over NaN, a bias."""
    vw, itemsize = param_grid(isa, dtype)[0].vw, np.dtype(dtype).itemsize
    direct = total = 0
    for kernel, wide in [(api.build(param_grid(isa, dtype)[0]), 4096 // itemsize), (api.build(param_grid(isa, dtype)[1]), None)]:
        strip = 16384 // itemsize  # the sums of rows_direct, all rows together
        for m in range(2, 9):
            for n, k in [(kernel.params.nr + 1, 9), (strip // m + vw + 3, 83), (strip // m - 1, 8), (2 * strip // m + 5, 17), (vw * 9 + 1, 7)]:
                n = min(n, wide) if wide else n
                stored = random_matrix(rng, (k, wide or n), dtype)[:, :n]
                b = stored[::(-1) ** (m + k)]  # rows forwards or backwards
                a = random_matrix(rng, (m, k), dtype, "F" if k % 2 else "C")
                bias = rng.uniform(-1, 1, n).astype(dtype)
                total += 1
                direct += kernel.path(m, n, k, elements(a), elements(b), threads=threads, bias=True) == "direct"
                for layout_c, (alpha, beta) in itertools.product(("C", "strided"), [(1.0, 0.0), (-2.0, 0.5)]):
                    c = random_matrix(rng, (m, n), dtype, layout_c)
                    ratio = biased_gemm_error(kernel, a, b, c, bias, beta, dtype, threads, alpha, forced=False)
                    assert ratio <= 1, f"{m}x{n}x{k} on {threads} {layout_c} beta={beta}: {ratio}"
    assert 3 * direct >= 2 * total  # the rest packed, or the dot path


@pytest.mark.parametrize("isa, dtype", TEMPLATES)
def test_empty_and_zero_k(isa, dtype, rng):
    kernel = api.build(param_grid(isa, dtype)[0])
    for m, n in [(0, 5), (5, 0), (0, 0)]:
        c = np.empty((m, n), acc(dtype))
        kernel.gemm(np.ones((m, 3), dtype), np.ones((3, n), dtype), c)
        assert c.shape == (m, n)
    c = rng.uniform(1, 2, (4, 6)).astype(acc(dtype))
    original = c.copy()
    kernel.gemm(np.empty((4, 0), dtype), np.empty((0, 6), dtype), c, beta=0.5)
    np.testing.assert_array_equal(c, (0.5 * original).astype(acc(dtype)))
    c[...] = np.nan
    kernel.gemm(np.empty((4, 0), dtype), np.empty((0, 6), dtype), c, beta=0.0)
    np.testing.assert_array_equal(c, np.zeros((4, 6), acc(dtype)))


@pytest.mark.parametrize("isa, dtype", TEMPLATES)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("variant", [1, 2, 4, 5])  # parallel ic, jr, 2d, jp
def test_threads_give_the_same_answer(isa, dtype, threads, variant, rng):
    p = param_grid(isa, dtype)[variant]
    kernel = api.build(p)
    a = random_matrix(rng, (101, 67), dtype)
    b = random_matrix(rng, (67, 89), dtype)
    c = np.empty((101, 89), acc(dtype))
    kernel.gemm(a, b, c, threads=threads, force_threads=True)
    assert error_ratio(c, a, b, dtype=dtype) <= 1


@pytest.mark.parametrize("isa, dtype", TEMPLATES)
@pytest.mark.parametrize("variant", [1, 2, 4, 5])  # parallel ic, jr, 2d, jp
def test_every_parallel_loop_adds_the_bias_once(isa, dtype, variant, rng):
    """The bias joins with the first of several k blocks only, on the edge tiles too, over C full of
    NaN (beta = 0) and over a C to accumulate into; two threads forced."""
    p = param_grid(isa, dtype)[variant]
    kernel = api.build(p)
    m, n, k = 3 * p.mr + 2, 2 * p.nr + 3, 3 * p.kc + 1
    a = random_matrix(rng, (m, k), dtype, "T")
    b = random_matrix(rng, (k, n), dtype, "T")
    bias = rng.uniform(-1, 1, n).astype(acc(dtype))
    for beta in (0.0, 1.0):
        c = rng.uniform(-1, 1, (m, n)).astype(acc(dtype))
        ratio = biased_gemm_error(kernel, a, b, c, bias, beta, dtype, threads=2)
        assert ratio <= 1, f"{p.name} beta={beta}: {ratio}"


@pytest.mark.parametrize("isa, dtype", TEMPLATES)
def test_nan_and_inf_propagate(isa, dtype, rng):
    kernel = api.build(param_grid(isa, dtype)[0])
    a = random_matrix(rng, (9, 12), dtype)
    b = random_matrix(rng, (12, 7), dtype)
    a[2, 3] = np.nan
    b[5, 4] = np.inf
    c = np.empty((9, 7), acc(dtype))
    kernel.gemm(a, b, c)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(c), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(c), np.isinf(expected))


def test_a_kernel_for_a_missing_isa_is_refused(monkeypatch):
    plain = machine.Machine(arch="x86_64", microarch="x86_64", vendor="test", model="", features=frozenset(),
                            cores=1, caches=HOST.caches, compiler=HOST.compiler)
    monkeypatch.setattr(machine, "detect", lambda: plain)
    p = params.KernelParams("float32", "avx2", mr=4, nr=16, vw=8, ku=4, mc=64, kc=64, nc=256)
    with pytest.raises(api.IsaUnavailable, match="avx2"):
        api.check_runnable(p)
    assert analytic.default_params(plain, "float32").isa == "portable"


@pytest.mark.parametrize("isa, flag", [("avx512", "-mavx2"), ("avx2", "-mno-avx2"), ("avx512bf16", "-mavx512f")])
def test_templates_refuse_to_compile_without_their_isa(isa, flag, tmp_path):
    """The ISA guard: no build can emit instructions for an ISA the target lacks."""
    import subprocess
    from autogemm import render

    if HOST.arch != "x86_64":
        pytest.skip("x86 ISA guard")
    dtype = "bfloat16" if isa in params.PAIRED_ISAS else "float32"
    vw = params.vector_widths(isa, dtype)[0]
    p = params.KernelParams(dtype, isa, mr=2, nr=vw, vw=vw, ku=1, mc=2, kc=8, nc=vw)
    src = tmp_path / "k.c"
    src.write_text(render.render_gemm(p))
    proc = subprocess.run([*HOST.compiler.command, "-O1", "-march=x86-64", flag, "-c", str(src), "-o",
                           str(tmp_path / "k.o")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "autogemm: this kernel uses" in proc.stderr


@pytest.mark.parametrize("dtype, vw, lines", [("float64", 4, 3), ("float32", 8, 2)])
def test_prefetch_c_covers_every_line_of_the_c_tile_rows(dtype, vw, lines):
    """A 4 x 16 tile: rows of 128 (float64) or 64 (float32) bytes take 2 or 1 lines, plus the last
    byte for rows that start mid-line. As the kernel starts, every line with prefetch_c, else each
    row's first line only; late in k (768 vector FMAs before its end) every line."""
    from autogemm import render

    p = params.KernelParams(dtype, "portable", mr=4, nr=16, vw=vw, ku=1, mc=4, kc=8, nc=16)
    row_bytes = 16 * np.dtype(dtype).itemsize
    offsets = [o for o in range(0, row_bytes, 64)] + [row_bytes - 1]
    assert len(offsets) == lines
    every_line = [f"__builtin_prefetch((const char *)(c + {i} * rsc) + {o}, 1);" for i in range(4) for o in offsets]
    first_lines = [f"__builtin_prefetch(c + {i} * rsc, 1);" for i in range(4)]
    for prefetch_c in (True, False):
        source = render.render_gemm(p.replace(prefetch_c=prefetch_c))
        steps = 768 // (4 * 16 // vw)  # 4 x 16 // vw vector FMAs a step of k
        head, tail = source.split(f"const ptrdiff_t p_late = (kc - {steps}) & ~(ptrdiff_t)0;", 1)
        start, late = head[head.rindex("AG_ZERO()"):], tail[:tail.index("AG_LOAD_P")]
        assert all(line in late for line in every_line) and "if (p == p_late)" in late
        assert all(line in start for line in (every_line if prefetch_c else first_lines))
        assert ("__builtin_prefetch(c + " if prefetch_c else "(const char *)(c + ") not in start


#: The non-temporal store each ISA's packing of B streams with: float32 lanes, or bfloat16 pairs as
#: 32-bit integers.
NON_TEMPORAL_STORE = {"avx512": "vmovntps", "avx2": "vmovntps", "avx512bf16": "vmovntdq"}


@pytest.mark.parametrize("dtype, isa, parallel", [
    ("float32", None, "ic"), ("float32", None, "2d"), ("float32", None, "jp"), ("float32", "avx2", "ic"),
    ("bfloat16", None, "ic"), ("bfloat16", None, "jp"), ("bfloat16", "avx512", "ic"),
])
def test_only_a_b_block_that_threads_share_is_packed_with_non_temporal_stores(dtype, isa, parallel, rng):
    """stream_b: the compiled kernel holds non-temporal stores exactly when it packs a shared B block
    with them (not jp, whose panels are each thread's own), a row-major B's rows and, on AVX-512, the
    rows a transposed B's blocks become where they are transposed in registers (as integers), and gives
    the same results on one and two threads, with and without them, for B stored either way. Every
    loop on the best ISA (None); AVX2's stores on ic; bfloat16 paired for vdpbf16ps (best) and widened
    to float32 (avx512)."""
    isa = isa or HOST.best_isa_for(dtype)
    if isa not in NON_TEMPORAL_STORE or not HOST.supports(isa):
        pytest.skip(f"no x86 non-temporal stores to test: {isa} on this CPU")
    a, b = random_matrix(rng, (150, 300), dtype), random_matrix(rng, (300, 200), dtype)
    b_transposed = np.ascontiguousarray(b.T).T
    for stream_b in (True, False):
        p = analytic.default_params(HOST, dtype, isa).replace(parallel=parallel, kc=64, mc=24, stream_b=stream_b)
        kernel = api.build(p)
        code = subprocess.run(["objdump", "-d", str(kernel.library)], capture_output=True, text=True,
                              check=True).stdout
        streams = stream_b and parallel != "jp"
        assert (NON_TEMPORAL_STORE[isa] in code) == streams, p.name
        transposes_b = isa != "avx2" and (dtype != "bfloat16" or isa in params.PAIRED_ISAS)  # widened: value by value
        assert ("vmovntdq" in code) == (streams and transposes_b), p.name
        for threads, operand in itertools.product((1, 2), (b, b_transposed)):
            c = np.full((150, 200), np.nan, acc(dtype))
            kernel.gemm(a, operand, c, threads=threads, force_threads=True)
            assert error_ratio(c, a, b, dtype=dtype) <= 1, (p.name, threads, operand.strides)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_dot_path_keeps_both_operands_in_registers(isa, dtype, rng):
    """Each loaded vector of the dot path's A and W feeds four FMAs from a register: GCC had folded the
    load into every FMA (20 loads per 16 FMAs), which bound the loop on loads (float32 68 x 4 x 368,
    Zen 4: 1.69x once kept). No packed FMA in dot_block reads memory; the products still match."""
    if not HOST.supports(isa):
        pytest.skip(f"CPU lacks {isa}")
    kernel = api.build(analytic.default_params(HOST, dtype, isa))
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(kernel.library)], capture_output=True,
                          text=True, check=True).stdout
    body = code[code.index("_dot_block>:"):]
    body = body[:body.index("\n\n")]
    lines = body.splitlines()
    mnemonics = [(line.split() + ["", ""])[1] for line in lines]
    fmas = [line for line, op in zip(lines, mnemonics) if op.startswith("vfmadd") and op.endswith(("ps", "pd"))]
    assert len(fmas) >= 16, fmas
    assert not [line for line in fmas if "(" in line], kernel.params.name
    shapes = [s for s in ((68, 4, 368), (207, 3, 551), (553, 2, 300), (4, 1, 100)) if kernel.path(*s) == "dot"]
    assert len(shapes) >= 2, shapes
    for m, n, k in shapes:
        a, b = random_matrix(rng, (m, k), dtype), random_matrix(rng, (k, n), dtype)
        c = np.full((m, n), np.nan, dtype)
        kernel.gemm(a, b, c)
        assert error_ratio(c, a, b, dtype=dtype) <= 1, (kernel.params.name, m, n, k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_transposed_b_whose_columns_span_64_kib_is_packed_right_while_prefetching(dtype, rng):
    """Columns of a transposed B that span AG_PACK_T_PF_BYTES are prefetched 64 packed k ahead as they
    are packed: by the direct path (all of k in one panel) and the packed one (kc at a time), with k
    not a multiple of 16 and a last panel narrower than NR."""
    kernel = api.load(dtype)
    n = 2 * kernel.params.nr + kernel.params.vw  # wide enough that the dot path does more work; whole vectors
    for m, k, packed in ((kernel.params.direct_m, 1301, False), (4 * kernel.params.mr + 1, 2 * kernel.params.kc + 37, True)):
        assert kernel.params.nr * k * np.dtype(dtype).itemsize >= 65536  # a whole panel's columns span 64 KiB
        a, b = random_matrix(rng, (m, k), dtype), random_matrix(rng, (k, n), dtype, "T")
        assert packed or kernel.path(m, n, k, a_strides=(k, 1), b_strides=(1, k)) == "direct"
        c = np.full((m, n), np.nan, dtype)
        kernel.gemm(a, b, c, threads=1, force_threads=packed)  # a forced thread count always packs
        assert error_ratio(c, a, b, dtype=dtype) <= 1, (kernel.params.name, m, n, k)


@pytest.mark.parametrize("isa, dtype", TEMPLATES)
def test_transposed_b_packs_whole_blocks_of_columns_in_registers(isa, dtype, rng):
    """A weight matrix stored [N x K] (NT): blocks of 16 (float64: 8) columns by 16 packed k are
    transposed in registers on AVX-512; partial blocks of columns, the last k and an odd k (bf16
    pairs) go element by element."""
    p = analytic.default_params(HOST, dtype, isa).replace(kc=64)
    m = 2 * p.mr + 1
    for n, k in itertools.product((16, 33, p.nr, p.nr + 7), (32, 41, 97)):
        a = random_matrix(rng, (m, k), dtype)
        b = random_matrix(rng, (k, n), dtype, "T")
        c = np.full((m, n), np.nan, acc(dtype))
        api.build(p).gemm(a, b, c)
        ratio = error_ratio(c, a, b, dtype=dtype)
        assert ratio <= 1, f"{p.name}: {m}x{n}x{k} error ratio {ratio}"


@pytest.mark.parametrize("isa, dtype", TEMPLATES)
def test_transposed_a_packs_strips_of_whole_micro_panels(isa, dtype, rng):
    """A stored [K x M] (TN, as dout^T in a weight gradient), with a wider leading dimension: blocks
    of 23 micro-panels are packed in strips of up to 256 bytes a k, the strips' shorter tails and the
    last partial panel too, over k blocks whose last is odd (bf16 pairs); one and two threads."""
    p = analytic.default_params(HOST, dtype, isa).replace(kc=64)
    p = p.replace(mc=23 * p.mr)
    kernel = api.build(p)
    n, k = p.nr + 5, 2 * p.kc + 3
    for m in (p.mr, 23 * p.mr + 1, 2 * 23 * p.mr + 3 * p.mr + 5):
        stored = random_matrix(rng, (k, m + 9), dtype)
        a = stored[:, 3:m + 3].T
        b = random_matrix(rng, (k, n), dtype)
        for threads in (1, 2):
            c = np.full((m, n), np.nan, acc(dtype))
            kernel.gemm(a, b, c, threads=threads, force_threads=True)
            ratio = error_ratio(c, a, b, dtype=dtype)
            assert ratio <= 1, f"{p.name}: {m}x{n}x{k} on {threads} threads: error ratio {ratio}"


def test_the_float32_fallback_for_bfloat16_rounds_on_every_packing_path(rng):
    """A bfloat16 kernel without vdpbf16ps takes float32 and rounds it while packing, on the paths that
    move whole vectors too (row-major A, transposed B): the product is that of the rounded inputs."""
    if not HOST.supports("avx512"):
        pytest.skip("CPU lacks avx512")
    bf16 = params.numpy_dtype("bfloat16")
    p = analytic.default_params(HOST, "bfloat16", "avx512").replace(kc=64)
    m, n, k = 2 * p.mr + 1, 40, 48
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32).T
    c = np.full((m, n), np.nan, np.float32)
    api.build(p).gemm(a, b, c)
    assert error_ratio(c, a.astype(bf16), b.astype(bf16), dtype="bfloat16") <= 1
    assert np.abs(c - a.astype(np.float64) @ b).max() > 1e-3


def _transparent_huge_pages() -> str:
    """The kernel's THP mode ('always', 'madvise' or 'never'), or '' off Linux."""
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return ""
    return text[text.index("[") + 1:text.index("]")]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_block_of_rows_packs_b_panel_by_panel_on_two_threads(dtype):
    """An ic kernel given at most MC rows takes the jp loops: each thread packs a B micro-panel into its
    own buffer and multiplies it at once, so no packed B block is shared between cores, or kept at all.
    Its workspace stays a few panels and the packed rows of A (the caller's resident memory grows by
    under half a packed B block, KC x N), where one row more packs the whole B block (3-4 MiB as float32,
    2 MiB as bfloat16 pairs). Each in a fresh interpreter, in a thread of its own, whose workspace is new."""
    code = textwrap.dedent("""
        import sys, threading, numpy as np
        from autogemm import analytic, api, machine
        from autogemm.check import error_ratio
        sys.path.insert(0, "tests")
        from conftest import random_matrix
        def resident_kib():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        dtype = sys.argv[1]
        p = analytic.default_params(machine.detect(), dtype)
        assert p.parallel == "ic"
        k, n = 512, 2048
        kernel, rng, grew = api.build(p), np.random.default_rng(0), {}
        b = random_matrix(rng, (k, n), dtype)
        for m in (p.mc, p.mc + 1):
            a = random_matrix(rng, (m, k), dtype)
            c = np.full((m, n), np.nan, np.float32)  # float32 results, bfloat16 operands too
            def work():
                before = resident_kib()
                kernel.gemm(a, b, c, threads=2, force_threads=True)
                grew[m] = resident_kib() - before
            t = threading.Thread(target=work)
            t.start()
            t.join()
            assert error_ratio(c, a, b, dtype=dtype) <= 1
        b_block_kib = min(k, p.kc) * n * b.itemsize // 1024
        print(grew[p.mc], grew[p.mc + 1], b_block_kib)
    """)
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc/self/status to read resident memory from")
    proc = subprocess.run([sys.executable, "-c", code, dtype], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    one_block, two_blocks, b_block = map(int, proc.stdout.split())
    assert one_block < b_block // 2 and two_blocks >= b_block, (one_block, two_blocks, b_block)


@pytest.mark.skipif(_transparent_huge_pages() not in ("always", "madvise"),
                    reason="no transparent huge pages on this system")
def test_a_large_packing_workspace_asks_for_huge_pages():
    """A GEMM whose packed panels take 2 MiB or more packs into huge pages (madvise), though its own
    operands (under numpy's 4 MiB threshold for asking) do not ask; fails with 4 KiB pages. Run in a fresh interpreter, in a
    thread of its own, whose workspace is new; the count is the process's AnonHugePages."""
    code = textwrap.dedent("""
        import threading, numpy as np
        from autogemm import analytic, api, machine
        def huge_kib():
            for line in open("/proc/self/smaps_rollup"):
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
        p = analytic.default_params(machine.detect(), "float32")
        k, n = p.kc, 3 * 1024 * 1024 // (4 * p.kc)  # packed B: 3 MiB; B itself 3 MiB
        m = p.mc + 1  # more than one block of rows: a packed B block (one block takes the jp loops)
        rng = np.random.default_rng(0)
        a, b = rng.uniform(-1, 1, (m, k)).astype(np.float32), rng.uniform(-1, 1, (k, n)).astype(np.float32)
        kernel = api.build(p)
        result = {}
        def work():
            c = np.full((a.shape[0], n), np.nan, np.float32)
            before = huge_kib()
            kernel.gemm(a, b, c, threads=1, force_threads=True)  # the packed path, though small
            result["grew"] = huge_kib() - before
            result["right"] = bool(np.allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4))
        t = threading.Thread(target=work)
        t.start()
        t.join()
        print(result["grew"], result["right"])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    grew, right = proc.stdout.split()
    assert right == "True"
    assert int(grew) >= 2048, f"AnonHugePages grew by {grew} KiB"
