"""One candidate through the pipeline compile -> verify -> time, isolated in a worker process.

A candidate that fails is data, not an exception: its `Result.status` says which step failed
(compile, correctness, crash, timeout). The worker is long-lived and started with spawn (a fork of a
process with threads, such as numpy's OpenBLAS, can deadlock); it is restarted after a crash or a hang.
"""

from __future__ import annotations

import importlib
import multiprocessing
import time
from dataclasses import dataclass, field

import numpy as np

from .workload import Problem

OK, COMPILE, CORRECTNESS, CRASH, TIMEOUT, UNSUPPORTED = "ok", "compile", "correctness", "crash", "timeout", "unsupported"


#: Largest M or K a candidate is timed at, and largest N. A bigger GEMM (the 50304-wide GPT-2 head)
#: runs the same loops over more blocks, so a capped copy ranks candidates alike in a fraction of the
#: time, as long as every block size the search tries still leaves at least two blocks: N is capped
#: above the widest NC (8192), or NC = 4096 and 8192 would time alike (on the head, 4096x50304x768
#: NT on Zen 4, 2 threads: 212 against 201 GFLOP/s).
TIMING_CAP = 4096
TIMING_CAP_N = 12288


@dataclass(frozen=True)
class Request:
    """One candidate (`params`) on one GEMM (`problem`: a Problem, or (M, N, K))."""

    params: dict
    problem: Problem
    threads: int
    rounds: int = 3
    reps: int = 3
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.problem, Problem):
            object.__setattr__(self, "problem", Problem(*self.problem))

    def timed(self) -> Problem:
        """The GEMM this candidate is timed on: the request's, capped (`timed_problem`)."""
        return timed_problem(self.problem)


def timed_problem(problem: Problem) -> Problem:
    """`problem` once, with M and K capped at TIMING_CAP and N at TIMING_CAP_N."""
    m, n, k = min(problem.m, TIMING_CAP), min(problem.n, TIMING_CAP_N), min(problem.k, TIMING_CAP)
    return Problem(m, n, k, problem.trans_a, problem.trans_b, problem.beta, 1, problem.bias)


@dataclass
class Result:
    status: str
    gflops: dict = field(default_factory=dict)  # median, p20, p80
    seconds: dict = field(default_factory=dict)  # wall time of each step
    message: str = ""
    source_path: str | None = None


def _check(kernel, problem, rng, rows: int | None = None) -> str:
    """Runs `problem` once on fresh data (NaN in C when beta == 0) and checks it, or `rows` random
    rows of it, against float64; '' if correct, else what is wrong."""
    from .bench import operands
    from .check import error_ratio

    dtype = kernel.params.dtype
    a, b, c, bias = operands(problem, dtype, rng)
    if problem.beta == 0:
        c[...] = np.nan
    op_a, op_b = (a.T if problem.trans_a else a), (b.T if problem.trans_b else b)
    before = c.copy()
    kernel.gemm(op_a, op_b, c, beta=problem.beta, bias=bias, threads=2)
    picked = np.sort(rng.choice(problem.m, size=min(rows or problem.m, problem.m), replace=False))
    expected_c = before[picked] if problem.beta else None
    result = c[picked] - (bias if bias is not None else 0)
    ratio = error_ratio(result, op_a[picked], op_b, expected_c, 1.0, problem.beta, dtype)
    return "" if ratio <= 1 else f"{problem.label()}: error {ratio:.3g} x the bound"


def evaluate(request: Request) -> Result:
    """Runs in the worker: build, verify on an edge shape and on the timed shape, then time."""
    from . import api, toolchain
    from .bench import operands
    from .params import InvalidParams, KernelParams

    steps: dict[str, float] = {}
    start = time.perf_counter()
    try:
        params = KernelParams.from_dict(request.params)
        api.check_runnable(params)
        kernel = api.build(params)
    except toolchain.CompileError as exc:
        return Result(COMPILE, message=str(exc)[-2000:], source_path=str(exc.source_path))
    except (InvalidParams, api.IsaUnavailable) as exc:
        return Result(UNSUPPORTED, message=str(exc))
    steps["compile"] = time.perf_counter() - start

    rng = np.random.default_rng(request.seed)
    problem = request.timed()
    start = time.perf_counter()
    edge = Problem(2 * params.mr + 3, 2 * params.nr + 5, params.kc + 7, problem.trans_a, problem.trans_b,
                   problem.beta, 1, problem.bias)
    problem_found = _check(kernel, edge, rng)
    if problem_found:
        return Result(CORRECTNESS, message=problem_found, seconds=steps)
    steps["verify"] = time.perf_counter() - start

    start = time.perf_counter()
    flops = 2.0 * problem.m * problem.n * problem.k
    rates = []
    for round_ in range(request.rounds):
        a, b, c, bias = operands(problem, params.dtype, rng)
        seconds = kernel.bench(a, b, threads=request.threads, warmup=1 if round_ == 0 else 0, reps=request.reps,
                               trans_a=problem.trans_a, trans_b=problem.trans_b, beta=problem.beta, c=c, bias=bias)
        rates += list(flops / seconds * 1e-9)
    steps["time"] = time.perf_counter() - start
    problem_found = _check(kernel, problem, rng, rows=32)
    if problem_found:
        return Result(CORRECTNESS, message=problem_found, seconds=steps)
    p20, median, p80 = np.percentile(rates, [20, 50, 80])
    return Result(OK, {"median": float(median), "p20": float(p20), "p80": float(p80)}, steps)


def _serve(connection, function_path: str) -> None:
    import threadpoolctl

    # numpy only computes references here: one BLAS thread, so no idle BLAS thread spins on a
    # core while a candidate is being timed.
    threadpoolctl.threadpool_limits(1, user_api="blas")
    module, name = function_path.rsplit(":", 1)
    function = getattr(importlib.import_module(module), name)
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        connection.send(function(request))


class Worker:
    """A spawned process that evaluates candidates one at a time, with a timeout each.

    `function` ("module:name") lets tests substitute a candidate that crashes or hangs.
    """

    def __init__(self, timeout: float = 120.0, function: str = "autogemm.evaluate:evaluate"):
        self.timeout = timeout
        self.function = function
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._connection = None
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child, self.function), daemon=True)
        self._process.start()
        child.close()
        self._connection = parent

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
            self._connection.close()
        self._process = self._connection = None

    def run(self, request) -> Result:
        if self._process is None or not self._process.is_alive():
            self._start()
        try:
            self._connection.send(request)
            if self._connection.poll(self.timeout):
                return self._connection.recv()
            status, message = TIMEOUT, f"no answer in {self.timeout:.0f} s"
        except (EOFError, OSError, BrokenPipeError):
            status, message = CRASH, "the worker died"
        self._process.join(1)
        code = self._process.exitcode
        self._stop()
        self.restarts += 1
        if code is not None and code < 0:
            message = f"the worker died of signal {-code}"
        return Result(status, message=message)

    def close(self) -> None:
        self._stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
