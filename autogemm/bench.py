"""Side-by-side timing: autogemm kernels and numpy in one run, interleaved, as medians and ratios."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import threadpoolctl

from .kernel import Kernel
from .params import accumulator_dtype, numpy_dtype
from .peak import PeakMeter, measure_peak
from .workload import Problem

SUITES = {
    "square": [(n, n, n) for n in (256, 512, 1024, 2048, 4096)],
    "gpt2": [(4096, 2304, 768), (4096, 768, 768), (4096, 3072, 768), (4096, 768, 3072),
             (4096, 50304, 768), (768, 2304, 4096), (4096, 768, 2304)],
    "quick": [(1024, 1024, 1024)],
    # Timed as Python calls (see compare_calls): sizes where the call itself is much of the cost.
    "small": [(n, n, n) for n in (1, 8, 16, 32, 64, 100, 128, 200)] + [(7, 300, 5), (199, 1, 73), (97, 101, 103)],
    # Timed as Python calls, in every layout: a narrow C (n below a vector or two) or a small one
    # beside k, which tiles along C's rows would mostly pad.
    "narrow": [(501, 1, 74), (750, 2, 131), (353, 3, 811), (71, 5, 189), (4096, 8, 768), (663, 22, 34),
               (19, 8, 2000), (9, 74, 1352), (20, 20, 200), (209, 2, 1249)],
}
#: Suites whose shapes are timed as whole Python calls rather than inside C.
CALL_SUITES = ("small", "narrow")
#: A and B stored as they are (n) or as transposed views (t): numpy's matmul of a.T or b.T.
LAYOUTS = ("nn", "nt", "tn", "tt")
#: Suites whose shapes are timed in every layout.
LAYOUT_SUITES = ("narrow",)


def parse_shape(text: str) -> tuple[int, int, int]:
    """'MxNxK' (or one N for a cube) -> (M, N, K)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"shape {text!r} is not MxNxK") from None
    if len(dims) == 1:
        dims = dims * 3
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"shape {text!r} is not MxNxK with positive sizes")
    return dims


def parse_call_shape(text: str) -> tuple[tuple[int, int, int], str]:
    """'MxNxK' or 'MxNxK:LAYOUT' (nn, nt, tn, tt: A and B as transposed views where t) ->
    (shape, layout)."""
    shape, _, layout = text.partition(":")
    layout = layout.lower() or "nn"
    if layout not in LAYOUTS:
        raise ValueError(f"shape {text!r}: the layout after ':' is one of {', '.join(LAYOUTS)}")
    return parse_shape(shape), layout


def openblas_coretype() -> str:
    """The kernel family OpenBLAS runs (threadpoolctl), or what numpy uses instead."""
    for info in threadpoolctl.threadpool_info():
        if info.get("internal_api") == "openblas":
            return f"OpenBLAS {info.get('version')} {info.get('architecture')}"
    apis = [info.get("internal_api") for info in threadpoolctl.threadpool_info() if info.get("user_api") == "blas"]
    return ", ".join(apis) or "unknown"


#: Seconds to wait after an implementation runs, before another is timed. OpenBLAS's idle threads
#: spin for ~0.2 s after a call (and libgomp's briefly), stealing cores from whatever runs next: on
#: 2 cores, a 2-thread 200^3 call measured 8 ms instead of 0.08 ms within 0.15 s of numpy's.
SETTLE_AFTER = {"numpy": 0.3, "torch": 0.3, "kernel": 0.01}
#: compare's peak_meter: the best of this many FMA-peak readings this long ends each round. Short and
#: many: on a 2-vCPU guest, one 30 ms reading in fifteen ran both threads on one vCPU (half the peak).
ROUND_PEAK_READINGS, ROUND_PEAK_SECONDS = 8, 0.002
#: compare's shortest turn: small GEMMs are called until this much time has passed, so that one
#: hiccup of the host (a vCPU lent elsewhere for a millisecond) spoils a few of many samples rather
#: than a whole turn of three (256^3 on two threads takes 0.16 ms a call).
BURST_SECONDS = 0.02


def operands(problem: Problem, dtype: str, rng) -> tuple:
    """Stored (row-major) A and B, an initial C and a bias for `problem`, random and never zero.
    For bfloat16, A and B are bfloat16 and C and the bias float32."""
    m, n, k = problem.shape
    inputs, accumulator = numpy_dtype(dtype), np.dtype(accumulator_dtype(dtype))
    a = rng.standard_normal((k, m) if problem.trans_a else (m, k), dtype=np.float32).astype(inputs)
    b = rng.standard_normal((n, k) if problem.trans_b else (k, n), dtype=np.float32).astype(inputs)
    c = rng.standard_normal((m, n), dtype=np.float32).astype(accumulator)
    bias = rng.standard_normal(n, dtype=np.float32).astype(accumulator) if problem.bias else None
    return a, b, c, bias


def numpy_gemm(problem: Problem, a, b, c, bias) -> None:
    """The same GEMM the numpy way: transposed views, `+=` to accumulate, a broadcast bias add."""
    op_a = a.T if problem.trans_a else a
    op_b = b.T if problem.trans_b else b
    if problem.beta:
        c += op_a @ op_b
    else:
        np.matmul(op_a, op_b, out=c)
    if bias is not None:
        c += bias


def time_numpy(problem: Problem, a, b, c, bias) -> float:
    """Seconds of one `numpy_gemm`; the caller sets OpenBLAS's thread count once for a whole burst
    (setting it costs ~0.2 ms and leaves its threads cold for the next call)."""
    start = time.perf_counter()
    numpy_gemm(problem, a, b, c, bias)
    return time.perf_counter() - start


def torch_module():
    """PyTorch, when installed (the optional `bench` extra), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_version() -> str | None:
    torch = torch_module()
    return f"torch {torch.__version__}" if torch else None


def torch_tensor(torch, x: np.ndarray):
    """x as a torch tensor of the same dtype and strides, copied into torch's own memory (bfloat16
    through its bits), as a torch user's tensors are: oneDNN ran bfloat16 2048^3 at 640 GFLOP/s on a
    numpy array's memory (16 bytes past a page) and at 1170 on torch's 64-byte-aligned copy (2-core
    Xeon, family 6 model 167, one thread)."""
    if x.dtype == numpy_dtype("bfloat16"):
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16).clone()
    return torch.from_numpy(x).clone()


def time_torch(torch, problem: Problem, a, b, threads: int) -> float:
    """Seconds of PyTorch's matmul of the same operands, in their dtype (bfloat16 out for bfloat16,
    as oneDNN gives it); `a` and `b` are torch tensors in the stored layout."""
    torch.set_num_threads(threads)
    op_a = a.T if problem.trans_a else a
    op_b = b.T if problem.trans_b else b
    start = time.perf_counter()
    torch.matmul(op_a, op_b)
    return time.perf_counter() - start


def stats(gflops: list[float]) -> dict:
    p20, median, p80 = np.percentile(gflops, [20, 50, 80])
    return {"median": float(median), "p20": float(p20), "p80": float(p80)}


@dataclass
class Row:
    shape: tuple
    dtype: str
    threads: int
    impl: str
    gflops: dict
    pct_peak: float
    vs_numpy: float | None
    efficiency: float | None = None  # GFLOP/s over N x its 1-thread GFLOP/s, when 1 thread was run
    vs_torch: float | None = None  # against PyTorch's bfloat16 matmul, when it ran
    pct_round_peak: float | None = None  # of the FMA peak read in each round, beside the calls (compare)
    round_medians: list | None = None  # each round's median GFLOP/s (compare)
    layout: str = "nn"  # of A and B (see LAYOUTS; compare_calls)


def paired_ratio(row: Row, reference: Row) -> float:
    """Median over rounds of `row`'s GFLOP/s over `reference`'s in the same round: drift of the
    host between rounds, which moves both alike, cancels."""
    return float(np.median(np.array(row.round_medians) / np.array(reference.round_medians)))


def _burst(call, reps: int, warm_seconds: float, burst_seconds: float) -> list[float]:
    """Seconds of back-to-back calls, at least `reps` of them and for at least `burst_seconds`,
    after untimed calls for `warm_seconds` wake every core (an idle virtual CPU can take
    milliseconds to be scheduled again)."""
    start = time.perf_counter()
    call()
    while time.perf_counter() - start < warm_seconds:
        call()
    seconds, start = [], time.perf_counter()
    while len(seconds) < reps or time.perf_counter() - start < burst_seconds:
        seconds.append(call())
    return seconds


def compare(kernels: dict[str, Kernel], shape, threads: int, *, rounds: int = 5, reps: int = 3,
            numpy: bool = True, peak: float | None = None, seed: int = 0,
            kernel_threads: dict[str, int] | None = None, warm_seconds: float = 0.02,
            burst_seconds: float = BURST_SECONDS, with_torch: bool = False,
            peak_meter: PeakMeter | None = None) -> list[Row]:
    """Times each kernel (and numpy) on one problem, interleaved round by round (A B numpy B A
    numpy ...), on fresh random inputs each round; each turn is a burst of back-to-back calls, at
    least `reps` and at least `burst_seconds` long.

    `shape` is (M, N, K) or a workload Problem (transposes, beta, bias). Every implementation runs
    on `threads` threads unless `kernel_threads` names another count. For bfloat16, "numpy" is
    float32 matmul of the same (widened) values, numpy's fastest way. PyTorch's matmul runs too
    when torch is installed, for bfloat16 always, for the other dtypes with `with_torch`.
    With `peak_meter`, each round ends with the best of ROUND_PEAK_READINGS short FMA-peak readings, and each
    row's `pct_round_peak` is the median over rounds of its round's median over that reading.
    """
    problem = shape if isinstance(shape, Problem) else Problem(*shape)
    kernel_threads = kernel_threads or {}
    dtype = next(iter(kernels.values())).params.dtype if kernels else "float32"
    torch = torch_module() if numpy and (with_torch or dtype == "bfloat16") else None
    flops = 2.0 * problem.m * problem.n * problem.k
    rng = np.random.default_rng(seed)
    turns: dict[str, list[list[float]]] = {  # GFLOP/s of each call, by round
        name: [] for name in [*kernels, *(["numpy"] if numpy else []), *(["torch"] if torch else [])]}
    round_peaks = []
    order = list(kernels)
    for round_index in range(rounds):
        a, b, c, bias = operands(problem, dtype, rng)
        shift = round_index % len(order) if order else 0
        for name in order[shift:] + order[:shift]:
            kernel, nthreads = kernels[name], kernel_threads.get(name, threads)
            seconds = _burst(lambda: float(kernel.bench(a, b, threads=nthreads, warmup=0, reps=1, trans_a=problem.trans_a,
                                                        trans_b=problem.trans_b, beta=problem.beta, c=c, bias=bias)[0]),
                             reps, warm_seconds, burst_seconds)
            turns[name].append([flops / s * 1e-9 for s in seconds])
            time.sleep(SETTLE_AFTER["kernel"])
        if numpy:
            a32, b32 = a.astype(c.dtype, copy=False), b.astype(c.dtype, copy=False)  # widens bfloat16 only
            with threadpoolctl.threadpool_limits(threads, user_api="blas"):
                seconds = _burst(lambda: time_numpy(problem, a32, b32, c, bias), reps, warm_seconds, burst_seconds)
            turns["numpy"].append([flops / s * 1e-9 for s in seconds])
            time.sleep(SETTLE_AFTER["numpy"])
        if torch:
            ta, tb = (torch_tensor(torch, x) for x in (a, b))
            seconds = _burst(lambda: time_torch(torch, problem, ta, tb, threads), reps, warm_seconds, burst_seconds)
            turns["torch"].append([flops / s * 1e-9 for s in seconds])
            time.sleep(SETTLE_AFTER["torch"])
        if peak_meter:
            round_peaks.append(max(peak_meter.read() for _ in range(ROUND_PEAK_READINGS)))
    peak = peak or measure_peak(dtype, threads)
    summary = {name: stats([g for turn in by_round for g in turn]) for name, by_round in turns.items()}
    rows = []
    for name, s in summary.items():
        round_medians = np.array([np.median(turn) for turn in turns[name]])
        rows.append(Row(problem.shape, dtype, kernel_threads.get(name, threads), name, s, 100.0 * s["median"] / peak,
                        s["median"] / summary["numpy"]["median"] if numpy else None,
                        vs_torch=s["median"] / summary["torch"]["median"] if torch else None,
                        pct_round_peak=100.0 * float(np.median(round_medians / round_peaks)) if round_peaks else None,
                        round_medians=round_medians.tolist()))
    return rows


def compare_calls(shape, dtype: str, threads: int, *, layout: str = "nn", rounds: int = 5,
                  peak: float | None = None, seed: int = 0, burst_seconds: float = 0.005) -> list[Row]:
    """`autogemm.matmul` against `numpy.matmul` as a caller sees them: whole Python calls, the
    overhead of both included, on fresh operands (C-ordered, or transposed views of C-ordered arrays
    where `layout` says t), interleaved in bursts of about `burst_seconds` with a pause after each
    (OpenBLAS's idle threads spin); the time per call of each burst is one sample."""
    import autogemm

    m, n, k = shape
    rng = np.random.default_rng(seed)
    flops = 2.0 * m * n * k
    impls = {"matmul": lambda a, b: autogemm.matmul(a, b, threads=threads), "numpy": np.matmul}
    timings: dict[str, list[float]] = {name: [] for name in impls}
    with threadpoolctl.threadpool_limits(threads, user_api="blas"):
        for _ in range(rounds):
            a = rng.standard_normal((k, m) if layout[0] == "t" else (m, k), dtype=np.float32).astype(dtype)
            b = rng.standard_normal((n, k) if layout[1] == "t" else (k, n), dtype=np.float32).astype(dtype)
            a, b = a.T if layout[0] == "t" else a, b.T if layout[1] == "t" else b
            for name, call in impls.items():
                call(a, b)
                start, calls = time.perf_counter(), 0
                while (elapsed := time.perf_counter() - start) < burst_seconds or calls < 3:
                    call(a, b)
                    calls += 1
                timings[name].append(flops / (elapsed / calls) * 1e-9)
                time.sleep(SETTLE_AFTER["numpy" if name == "numpy" else "kernel"])
    peak = peak or measure_peak(dtype, threads)
    summary = {name: stats(values) for name, values in timings.items()}
    return [Row((m, n, k), dtype, threads, name, s, 100.0 * s["median"] / peak, s["median"] / summary["numpy"]["median"],
                layout=layout) for name, s in summary.items()]


def run_copies(kernel: Kernel, copies: list[tuple], calls: int) -> list[list[float]]:
    """Runs one 1-thread GEMM per copy (stored a, b, c) at once, each on a Python thread of its own (the
    kernel releases the GIL), until every copy has made `calls` timed calls after a common start. Returns
    each copy's seconds per call for the calls that ended while every copy was still running."""
    start = threading.Barrier(len(copies) + 1)
    stop = threading.Event()
    counts = [0] * len(copies)
    ended: list[list[tuple[float, float]]] = [[] for _ in copies]
    errors: list[BaseException] = []

    def loop(index: int, a, b, c) -> None:
        try:
            kernel.bench(a, b, threads=1, warmup=0, reps=1, c=c)  # one call to warm up: buffers, caches
            start.wait()
            while not stop.is_set():
                seconds = float(kernel.bench(a, b, threads=1, warmup=0, reps=1, c=c)[0])
                ended[index].append((time.perf_counter(), seconds))
                counts[index] += 1
        except threading.BrokenBarrierError:
            pass
        except BaseException as error:  # handed to the caller below
            errors.append(error)
            start.abort()
            stop.set()

    workers = [threading.Thread(target=loop, args=(i, *copy), daemon=True) for i, copy in enumerate(copies)]
    for worker in workers:
        worker.start()
    try:
        start.wait()
        while min(counts) < calls and not stop.is_set():
            time.sleep(0.001)
    except threading.BrokenBarrierError:
        pass
    stopped = time.perf_counter()
    stop.set()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return [[seconds for end, seconds in copy if end <= stopped] for copy in ended]


def compare_independent(kernel: Kernel, shape, copies: int, *, rounds: int = 3, reps: int = 3,
                        peak: float | None = None, seed: int = 0) -> Row:
    """`copies` independent 1-thread GEMMs of `shape` at once, each on operands of its own (HPC
    Challenge's StarDGEMM): what this kernel gets from that many cores with no work shared, no
    barrier and no imbalance, only the clock under load and the shared caches and memory. Rounds
    alternate one copy alone and all copies together; the row's GFLOP/s is the sum of the copies'
    median rates and its efficiency that sum over `copies` times the rate alone, the most that any
    threading of this kernel could reach here."""
    problem = Problem(*shape)
    flops = 2.0 * problem.m * problem.n * problem.k
    dtype = kernel.params.dtype
    rng = np.random.default_rng(seed)
    inputs = [operands(problem, dtype, rng)[:3] for _ in range(copies)]
    alone, together = [], []
    for _ in range(rounds):
        a, b, c = inputs[0]
        alone += [flops / s * 1e-9 for s in kernel.bench(a, b, threads=1, warmup=1, reps=reps, c=c)]
        time.sleep(SETTLE_AFTER["kernel"])
        together.append(sum(flops / float(np.median(s)) * 1e-9 for s in run_copies(kernel, inputs, reps)))
        time.sleep(SETTLE_AFTER["kernel"])
    peak = peak or measure_peak(dtype, copies)
    s = stats(together)
    return Row(problem.shape, dtype, copies, "independent", s, 100.0 * s["median"] / peak, None,
               efficiency=s["median"] / (copies * stats(alone)["median"]))


def add_scaling(rows: list[Row]) -> None:
    """Sets each row's parallel efficiency against the same shape and implementation on 1 thread
    (rows that measured their own, as `compare_independent`'s, keep it)."""
    single = {(r.shape, r.layout, r.impl): r.gflops["median"] for r in rows if r.threads == 1}
    for r in rows:
        base = single.get((r.shape, r.layout, r.impl))
        if r.efficiency is None:
            r.efficiency = r.gflops["median"] / (r.threads * base) if base else None


def format_table(rows: list[Row], peaks: dict | None) -> str:
    """The rows under a header; with `peaks`, the peak readings and the columns' meaning below them."""
    scaling = any(r.efficiency is not None for r in rows)
    torch = any(r.vs_torch is not None for r in rows)
    round_peak = any(r.pct_round_peak is not None for r in rows)
    lines = [f"{'shape':>21} {'dtype':>8} {'thr':>3} {'impl':>10} {'GFLOP/s':>9} {'p20-p80':>15} "
             f"{'%peak':>6}" + (f" {'%round':>6}" if round_peak else "") + f" {'x numpy':>8}"
             + (f" {'x torch':>8}" if torch else "") + (f" {'effic.':>6}" if scaling else "")]
    for r in rows:
        shape = "x".join(map(str, r.shape)) + ("" if r.layout == "nn" else f" {r.layout}")
        spread = f"{r.gflops['p20']:.1f}-{r.gflops['p80']:.1f}"
        ratio = f"{r.vs_numpy:.3f}" if r.vs_numpy is not None else "-"
        in_round = (f" {r.pct_round_peak:>6.1f}" if r.pct_round_peak is not None else f" {'-':>6}") if round_peak else ""
        vs_torch = (f" {r.vs_torch:>8.3f}" if r.vs_torch is not None else f" {'-':>8}") if torch else ""
        efficiency = (f" {r.efficiency:>6.2f}" if r.efficiency is not None else f" {'-':>6}") if scaling else ""
        lines.append(f"{shape:>21} {r.dtype:>8} {r.threads:>3} {r.impl:>10} {r.gflops['median']:>9.1f} "
                     f"{spread:>15} {r.pct_peak:>6.1f}{in_round} {ratio:>8}" + vs_torch + efficiency)
    if peaks is None:
        return "\n".join(lines)
    lines.append("measured FMA peak (GFLOP/s): " + ", ".join(f"{d} {t} thr {v:.1f}" for (d, t), v in sorted(peaks.items())))
    if round_peak:
        lines.append("%peak: of the highest peak reading of the run; %round: of the peak read in each round, "
                     "beside the calls (median over rounds)")
    return "\n".join(lines)


def row_dict(row: Row) -> dict:
    return asdict(row)
