"""One candidate through the pipeline compile -> verify -> time, isolated in a worker process.

A candidate that fails is data, not an exception: its `Result.status` says which step failed
(compile, correctness, crash, timeout). The worker is long-lived and started with spawn (OpenMP
after fork can deadlock); it is restarted after a crash or a hang.
"""

from __future__ import annotations

import importlib
import multiprocessing
import time
from dataclasses import dataclass, field

import numpy as np

OK, COMPILE, CORRECTNESS, CRASH, TIMEOUT, UNSUPPORTED = "ok", "compile", "correctness", "crash", "timeout", "unsupported"


@dataclass(frozen=True)
class Request:
    params: dict
    shape: tuple
    threads: int
    rounds: int = 3
    reps: int = 3
    seed: int = 0


@dataclass
class Result:
    status: str
    gflops: dict = field(default_factory=dict)  # median, p20, p80
    seconds: dict = field(default_factory=dict)  # wall time of each step
    message: str = ""
    source_path: str | None = None


def _verify(kernel, rng) -> str:
    """Checks an odd shape that exercises every edge, with NaN in C and beta = 0; '' if correct."""
    from .check import error_ratio

    p = kernel.params
    m, n, k = 2 * p.mr + 3, 2 * p.nr + 5, p.kc + 7
    a = rng.uniform(-1, 1, (m, k)).astype(p.dtype)
    b = rng.uniform(-1, 1, (k, n)).astype(p.dtype)
    c = np.full((m, n), np.nan, p.dtype)
    kernel.gemm(a, b, c, threads=2)
    ratio = error_ratio(c, a, b, dtype=p.dtype)
    return "" if ratio <= 1 else f"{m}x{n}x{k}: error {ratio:.3g} x the bound"


def evaluate(request: Request) -> Result:
    """Runs in the worker: build, verify on an edge shape and on the timed shape, then time."""
    from . import api, toolchain
    from .check import error_ratio
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
    start = time.perf_counter()
    problem = _verify(kernel, rng)
    if problem:
        return Result(CORRECTNESS, message=problem, seconds=steps)
    steps["verify"] = time.perf_counter() - start

    start = time.perf_counter()
    m, n, k = request.shape
    flops = 2.0 * m * n * k
    rates = []
    for round_ in range(request.rounds):
        a = rng.standard_normal((m, k), dtype=np.float32).astype(params.dtype)
        b = rng.standard_normal((k, n), dtype=np.float32).astype(params.dtype)
        seconds = kernel.bench(a, b, threads=request.threads, warmup=1 if round_ == 0 else 0, reps=request.reps)
        rates += list(flops / seconds * 1e-9)
    steps["time"] = time.perf_counter() - start
    c = kernel(a, b, threads=request.threads)
    if error_ratio(c, a, b, dtype=params.dtype) > 1:
        return Result(CORRECTNESS, message=f"wrong result at {m}x{n}x{k}", seconds=steps)
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
