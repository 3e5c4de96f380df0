"""Where a GEMM's time goes: packing B, packing A and the macro-kernels, timed inside a profiling
build of the kernel, against the macro-kernels' rate on data already in cache."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import api, bench
from .kernel import PHASES
from .params import KernelParams
from .peak import PeakMeter
from .workload import Problem


@dataclass
class PhaseRow:
    shape: tuple
    threads: int
    kernel: str
    path: str  # kernel.path: "packed", "direct" or "dot", and more (" of C^T"); the packed path has phases
    gflops: float  # of the median call, which the rest describe
    share: dict  # phase -> its part of the threads' time (wall seconds x threads)
    other: float  # the rest: waiting for other threads, loops and calls outside the phases
    macro_gflops: float | None  # flops over the threads' seconds in macro-kernels, x threads
    pct_peak: float | None = None  # of the measured FMA peak, once given (with_peak)
    macro_pct_peak: float | None = None
    pct_round_peak: float | None = None  # of the peak read right after the calls (profile's peak_meter)
    macro_pct_round_peak: float | None = None


def profile(params: KernelParams, shape, threads: int, *, reps: int = 10, force_threads: bool = False,
            seed: int = 0, peak_meter: PeakMeter | None = None) -> PhaseRow:
    """The median of `reps` calls (after one untimed) of the profiling build of `params` on one
    problem, each timed and read by phase on its own. With `peak_meter`, the calls are followed by the
    best of bench.ROUND_PEAK_READINGS FMA-peak readings, which the %round rates divide (on a shared
    host the clock drifts); readings between the calls would leave each call's caches cold."""
    kernel = api.build(params, phases=True)
    m, n, k = shape
    a, b, c, _ = bench.operands(Problem(m, n, k), params.dtype, np.random.default_rng(seed))
    kernel.bench(a, b, threads=threads, warmup=1, reps=1, c=c, force_threads=force_threads)
    kernel.phase_seconds()  # drops the warm-up's
    calls = []
    for _ in range(reps):
        seconds = float(kernel.bench(a, b, threads=threads, warmup=0, reps=1, c=c, force_threads=force_threads)[0])
        calls.append((seconds, kernel.phase_seconds()))
    seconds, spent = sorted(calls, key=lambda call: call[0])[len(calls) // 2]
    flops = 2.0 * m * n * k
    share = {phase: spent[phase] / (threads * seconds) for phase in PHASES}
    macro = flops * threads / spent["macro"] * 1e-9 if spent["macro"] > 0 else None
    row = PhaseRow(tuple(shape), threads, params.name,
                   "packed" if force_threads else kernel.path(m, n, k, threads=threads),
                   flops / seconds * 1e-9, share, max(0.0, 1.0 - sum(share.values())), macro)
    if peak_meter:
        peak = max(peak_meter.read() for _ in range(bench.ROUND_PEAK_READINGS))
        row.pct_round_peak = 100.0 * row.gflops / peak
        row.macro_pct_round_peak = 100.0 * macro / peak if macro is not None else None
    return row


def with_peak(row: PhaseRow, peak: float) -> PhaseRow:
    """`row` with its rates as percentages of the measured FMA peak of its thread count."""
    return dataclasses.replace(row, pct_peak=100.0 * row.gflops / peak,
                               macro_pct_peak=100.0 * row.macro_gflops / peak if row.macro_gflops else None)


def in_cache(params: KernelParams, *, reps: int = 200, peak_meter: PeakMeter | None = None) -> PhaseRow:
    """One thread on one block of A (MC x KC) and two B micro-panels, packed path forced: the
    macro-kernels' rate with A, B and C in L2, the ceiling of a large GEMM."""
    row = profile(params, (params.mc, 2 * params.nr, params.kc), 1, reps=reps, force_threads=True,
                  peak_meter=peak_meter)
    return dataclasses.replace(row, path="in L2")


def format_phases(rows: list[PhaseRow]) -> str:
    def pct(value):
        return f"{value:.1f}" if value is not None else "-"

    header = (f"{'shape':>18} {'thr':>3} {'path':>13} {'GFLOP/s':>8} {'%peak':>6} {'%round':>6} "
              + " ".join(f"{phase:>7}" for phase in PHASES)
              + f" {'other':>7} {'macro GFLOP/s':>14} {'%peak':>6} {'%round':>6}")
    lines = [header]
    for r in rows:
        macro = f"{r.macro_gflops:.1f}" if r.macro_gflops is not None else "-"
        lines.append(f"{'x'.join(map(str, r.shape)):>18} {r.threads:>3} {r.path:>13} {r.gflops:>8.1f} "
                     f"{pct(r.pct_peak):>6} {pct(r.pct_round_peak):>6} "
                     + " ".join(f"{100 * r.share[phase]:>6.1f}%" for phase in PHASES)
                     + f" {100 * r.other:>6.1f}% {macro:>14} {pct(r.macro_pct_peak):>6} {pct(r.macro_pct_round_peak):>6}")
    return "\n".join(lines)
