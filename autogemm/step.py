"""A whole training step's GEMMs, timed three ways in one run: autogemm, numpy, llm.c-style loops."""

from __future__ import annotations

import functools

import cffi
import numpy as np

from . import api, bench, render, toolchain, workload
from .workload import Problem

ROLES = {"forward": 0, "dinp": 1, "dweight": 2}


@functools.lru_cache(maxsize=1)
def _baseline():
    source = render.render_template("baseline/llmc.c.j2")
    library = toolchain.build_shared(source, "ag_llmc_baseline", extra_flags=toolchain.detect().openmp_flags)
    ffi = cffi.FFI()
    ffi.cdef("double autogemm_baseline(int role, float *y, const float *x, const float *w, const float *bias,"
             " int BT, int C, int OC, int nthreads);")
    return ffi, ffi.dlopen(str(library))


def time_baseline(problem: Problem, threads: int, seed: int = 0) -> float | None:
    """Seconds of one llm.c-style call of `problem`, or None if its role has no such loop."""
    if problem.role not in ROLES:
        return None
    ffi, lib = _baseline()
    a, b, c, bias = bench.operands(problem, "float32", np.random.default_rng(seed))
    if problem.role == "forward":  # out[m, n] = inp[m, k] W[n, k]^T + bias
        dims = (problem.m, problem.k, problem.n)
    elif problem.role == "dinp":  # dinp[m, n] += dout[m, k] W[k, n]
        dims = (problem.m, problem.n, problem.k)
    else:  # dweight[m, n] += dout[k, m]^T inp[k, n]
        dims = (problem.k, problem.n, problem.m)

    def ptr(x):
        return ffi.cast("float *", x.ctypes.data) if x is not None else ffi.NULL

    return lib.autogemm_baseline(ROLES[problem.role], ptr(c), ptr(a), ptr(b), ptr(bias), *dims, threads)


def bench_step(problems: list[Problem], threads: int, *, dtype: str = "float32", rounds: int = 3,
               baseline: bool = True, tuned_dir=None, progress=None) -> dict:
    """Times every distinct GEMM of a step and adds them up by count.

    autogemm and numpy run interleaved in bursts (median of `rounds`); the llm.c-style loops,
    slow by design, run once per GEMM. Returns per-GEMM rows and the step totals.
    """
    rows, totals = [], {"autogemm": 0.0, "numpy": 0.0, "llmc": 0.0}
    for problem in workload.distinct(problems):
        kernel = api.load(dtype, shape=problem.shape, threads=threads, layout=problem.layout,
                          beta=problem.beta, tuned_dir=tuned_dir)
        measured = bench.compare({"autogemm": kernel}, problem, threads, rounds=rounds, reps=1, peak=1.0)
        per_call = {r.impl: 2.0 * problem.m * problem.n * problem.k / (r.gflops["median"] * 1e9) for r in measured}
        if baseline and dtype == "float32":
            seconds = time_baseline(problem, threads)
            if seconds is not None:
                per_call["llmc"] = seconds
        for impl, seconds in per_call.items():
            totals[impl] = totals.get(impl, 0.0) + seconds * problem.count
        rows.append({"gemm": problem.label(), "count": problem.count, "kernel": kernel.params.name,
                     "tuned": kernel.tuned is not None, "seconds_per_call": per_call})
        if progress:
            progress(rows[-1])
    flops = workload.total_flops(problems)
    if len(rows) != sum("llmc" in r["seconds_per_call"] for r in rows):
        totals.pop("llmc")
    return {
        "gemms": sum(p.count for p in problems),
        "gflop": flops * 1e-9,
        "threads": threads,
        "rows": rows,
        "step_seconds": totals,
        "step_gflops": {impl: flops / s * 1e-9 for impl, s in totals.items()},
        "autogemm_time_vs_numpy": totals["autogemm"] / totals["numpy"],
        "speedup_vs_llmc": totals["llmc"] / totals["autogemm"] if "llmc" in totals else None,
    }
