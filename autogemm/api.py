"""The public calls: load a kernel, multiply, export standalone C."""

from __future__ import annotations

import copy
import functools
import math
import time
from pathlib import Path

import numpy as np

from . import analytic, machine, render, store, toolchain
from .kernel import Kernel, computed_dtype, environment_threads
from .params import BLAS_LETTER, DTYPES, KernelParams, numpy_dtype
from .workload import Problem


class IsaUnavailable(RuntimeError):
    """The parameters ask for an ISA this CPU does not have."""


#: The dtypes of matmul's short path (two 2-D operands of one of them, no options), each with its
#: kernel, whose product is matmul's result: of the same dtype, or float32 for bfloat16.
_PLAIN = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64", numpy_dtype("bfloat16"): "bfloat16"}
_ALIASES = {"f4": "float32", "float": "float32", "f8": "float64", "double": "float64", "bf16": "bfloat16"}


def _check_dtype(dtype) -> str:
    if isinstance(dtype, str):
        name = _ALIASES.get(dtype, dtype)
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    if name not in DTYPES:
        raise TypeError(f"autogemm supports {', '.join(DTYPES)}; got {dtype}")
    return name


def _kernel_dtype(a: np.ndarray, b: np.ndarray, compute) -> str:
    """What computes a @ b: numpy's promotion, or bfloat16 for any float inputs with compute="bf16"."""
    if compute is None:
        return computed_dtype(a, b)
    if _check_dtype(compute) != "bfloat16":
        raise ValueError(f"compute must be None or 'bf16', got {compute!r}")
    computed_dtype(a, b)  # the same TypeError for unsupported inputs
    return "bfloat16"


def _result_dtype(kernel_dtype: str, out_dtype, out) -> np.dtype:
    """The dtype handed back: float32 for bfloat16 compute unless out_dtype (or out) says bfloat16."""
    natural = np.dtype("float32") if kernel_dtype == "bfloat16" else np.dtype(kernel_dtype)
    wanted = out_dtype if out_dtype is not None else (out.dtype if isinstance(out, np.ndarray) else None)
    if wanted is None:
        return natural
    wanted = numpy_dtype(_check_dtype(wanted))
    if wanted != natural and not (kernel_dtype == "bfloat16" and wanted == numpy_dtype("bfloat16")):
        raise TypeError(f"out_dtype {wanted} is not available for {kernel_dtype} compute (it gives {natural}"
                        f"{' or bfloat16' if kernel_dtype == 'bfloat16' else ''})")
    return wanted


def check_runnable(params: KernelParams) -> None:
    """Refuses parameters whose ISA this CPU lacks, before any C is built or run."""
    host = machine.detect()
    if not host.supports(params.isa):
        raise IsaUnavailable(f"{params.name} needs {params.isa}; this CPU offers {', '.join(host.isas)}")


@functools.lru_cache(maxsize=64)
def build(params: KernelParams, *, phases: bool = False) -> Kernel:
    """Renders, compiles (cached on disk) and loads the kernel for `params`; with `phases`, a build
    that times each phase of its packed path (`Kernel.phase_seconds`), for profiles only."""
    check_runnable(params)
    source = render.render_gemm(params, harness=True, phases=phases)
    library = toolchain.build_shared(source, params.name + ("_phases" if phases else ""))
    return Kernel(params, machine.detect(), library, source)


@functools.lru_cache(maxsize=8)
def _entries_cached(machine_id: str, tuned_dir, signature) -> list:
    return store.find_entries(machine_id, tuned_dir)


_signature_checked: dict = {}  # tuned_dir -> (monotonic time of the last check, files' signature)


def _tuned_signature(tuned_dir) -> tuple:
    """Paths and modification times of this machine's tuned files, re-read at most once a second."""
    now = time.monotonic()
    checked = _signature_checked.get(tuned_dir)
    if checked and now - checked[0] < 1.0:
        return checked[1]
    host = machine.detect()
    files = [store.path_for(host.machine_id, d) for d in store.search_dirs(tuned_dir)]
    signature = tuple((str(f), f.stat().st_mtime_ns if f.exists() else None) for f in files)
    _signature_checked[tuned_dir] = (now, signature)
    return signature


def tuned_entries(tuned_dir=None) -> list:
    """This machine's validated tuned entries (re-read within a second of a tuned file changing)."""
    key = str(tuned_dir) if tuned_dir else None
    return _entries_cached(machine.detect().machine_id, key, _tuned_signature(key))


def load(dtype="float32", *, params: KernelParams | None = None, shape=None, threads: int | None = None,
         layout: str | None = None, beta: float | None = None, tuned_dir=None) -> Kernel:
    """The kernel to use for `dtype` on this machine.

    `params` if given; else this machine's tuned entry nearest to `shape` (M, N, K), `threads`
    (default: $AUTOGEMM_NUM_THREADS or every core we may use, as a call without `threads` runs on),
    `layout` ("nn", "nt", "tn", "tt") and `beta`; else the analytic default. Tuned files of other
    machines are never used.

    Example:
        >>> k = load("float64")
        >>> k.params.dtype, k.machine.cores > 0
        ('float64', True)
    """
    dtype = _check_dtype(dtype)
    if params is not None:
        if params.dtype != dtype:
            raise ValueError(f"params are for {params.dtype}, not {dtype}")
        return build(params)
    key = str(tuned_dir) if tuned_dir else None
    shape = tuple(shape) if shape is not None else None
    if threads is None:
        threads = environment_threads() or machine.available_cores()
    return _load_tuned(dtype, shape, threads, layout, beta, key, _tuned_signature(key))


@functools.lru_cache(maxsize=4096)
def _load_tuned(dtype, shape, threads, layout, beta, tuned_dir, signature) -> Kernel:
    entry = store.nearest(_entries_cached(machine.detect().machine_id, tuned_dir, signature), dtype, shape, threads,
                          layout, beta)
    if entry is None:
        return build(analytic.default_params(machine.detect(), dtype))
    m, n, k = entry.shape
    problem = Problem(m, n, k, trans_a=entry.layout[0] == "t", trans_b=entry.layout[1] == "t", beta=entry.beta,
                      bias=bool(entry.record.get("bias")))
    kernel = copy.copy(build(analytic.current_limits(machine.detect(), entry.params, problem, entry.threads)))
    kernel.tuned = entry.record
    kernel.default_threads = entry.record.get("tuning", {}).get("run_threads")
    return kernel


def matmul(a, b, out: np.ndarray | None = None, threads: int | None = None, *, compute=None,
           out_dtype=None) -> np.ndarray:
    """`numpy.matmul` for float32, float64 and bfloat16, computed by this machine's autogemm kernel.

    bfloat16 inputs (ml_dtypes.bfloat16) are multiplied exactly and summed in float32; the result is
    float32, or bfloat16 with `out_dtype` (or a bfloat16 `out`). `compute="bf16"` rounds float
    inputs to bfloat16 while packing, so float32 callers get the bfloat16 speed.

    Example:
        >>> a = np.arange(6, dtype=np.float64).reshape(2, 3)
        >>> matmul(a, a.T).tolist()
        [[5.0, 14.0], [14.0, 50.0]]
        >>> matmul(a.astype(np.float32), a.T.astype(np.float32), compute="bf16").dtype
        dtype('float32')
    """
    if (out is None and compute is None and out_dtype is None and type(a) is np.ndarray and type(b) is np.ndarray
            and a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype and a.dtype in _PLAIN
            and a.shape[1] == b.shape[0]):
        # The common call, on the shortest path: for small matrices the Python around the C is the cost.
        kernel = load(_PLAIN[a.dtype], shape=(a.shape[0], b.shape[1], a.shape[1]), threads=threads)
        return kernel.product(a, b, threads)
    a, b = np.asarray(a), np.asarray(b)
    kernel_dtype = _kernel_dtype(a, b, compute)
    result_dtype = _result_dtype(kernel_dtype, out_dtype, out)
    # a stack times one matrix is one GEMM of all the stack's rows (Kernel.__call__)
    rows = math.prod(a.shape[:-1]) if a.ndim > 2 and b.ndim <= 2 else a.shape[-2] if a.ndim > 1 else 1
    shape = (rows, b.shape[-1] if b.ndim > 1 else 1, a.shape[-1] if a.ndim else 1)
    kernel = load(kernel_dtype, shape=shape, threads=threads)
    if result_dtype == kernel.dtype:
        return kernel(a, b, out=out, threads=threads)
    result = kernel(a, b, threads=threads)  # float32, narrowed to bfloat16 below
    if out is None:
        return result.astype(result_dtype)
    if out.shape != result.shape:
        raise ValueError(f"out has shape {out.shape}; matmul of {a.shape} and {b.shape} gives {result.shape}")
    out[...] = result
    return out


def gemm(a, b, c: np.ndarray | None = None, *, alpha: float = 1.0, beta: float = 0.0, trans_a: bool = False,
         trans_b: bool = False, bias=None, threads: int | None = None, compute=None,
         out_dtype=None) -> np.ndarray:
    """c := alpha * op(a) @ op(b) + bias + beta * c, op(x) = x.T when its trans flag is set.

    Transposes are handled in packing, without copies; `beta=1` accumulates into `c`; `bias`
    (length N) is added to every row in the kernel's epilogue. Without `c`, a new array is
    returned (beta must then be 0). The kernel is this machine's tuned entry nearest to the shape.
    bfloat16 (inputs, or `compute="bf16"`) sums in float32 and returns float32 unless `out_dtype`
    or a bfloat16 `c` asks for bfloat16, as in `matmul`.

    Example:
        >>> x, w, bias = np.ones((4, 3)), np.ones((5, 3)), np.arange(5.0)
        >>> gemm(x, w, trans_b=True, bias=bias)[0].tolist()   # a Linear layer: x @ w.T + bias
        [3.0, 4.0, 5.0, 6.0, 7.0]
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm takes 2-D operands, got {a.ndim}-D and {b.ndim}-D")
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    (m, k), (k2, n) = op_a.shape, op_b.shape
    if k != k2:
        raise ValueError(f"gemm: op(a) is {m}x{k} but op(b) is {k2}x{n}")
    kernel_dtype = _kernel_dtype(a, b, compute)
    if c is not None and (not isinstance(c, np.ndarray) or c.shape != (m, n)):
        raise ValueError(f"gemm: c must be an array of shape {(m, n)}")
    try:
        result_dtype = _result_dtype(kernel_dtype, out_dtype, c)
    except TypeError as error:
        raise TypeError(f"gemm: {error}") from None
    if c is not None and c.dtype.newbyteorder("=") != result_dtype:
        raise TypeError(f"gemm: c has dtype {c.dtype}; the operands compute {result_dtype}")
    if c is None and beta != 0:
        raise ValueError("gemm: beta != 0 needs c")
    layout = ("t" if trans_a else "n") + ("t" if trans_b else "n")
    kernel = load(kernel_dtype, shape=(m, n, k), threads=threads, layout=layout, beta=1.0 if beta else 0.0)
    op_a, op_b = kernel.as_input(op_a), kernel.as_input(op_b)
    if result_dtype == kernel.dtype:
        target = c if c is not None else np.empty((m, n), kernel.dtype)
        return kernel.gemm(op_a, op_b, target, alpha=alpha, beta=beta, bias=bias, threads=threads)
    wide = c.astype(kernel.dtype) if c is not None else np.empty((m, n), kernel.dtype)
    kernel.gemm(op_a, op_b, wide, alpha=alpha, beta=beta, bias=bias, threads=threads)
    if c is None:
        return wide.astype(result_dtype)
    c[...] = wide
    return c


def export(dtype="float32", out_dir=".", *, params: KernelParams | None = None) -> list[Path]:
    """Writes standalone `autogemm_sgemm.c/.h` (`autogemm_dgemm.*`, `autogemm_bgemm.*` for bfloat16)
    with the parameters baked in.

    Returns the paths written. The files need no Python: `cc -O3 -march=native -pthread -c`.
    """
    dtype = _check_dtype(dtype)
    params = params or load(dtype).params
    if params.dtype != dtype:
        raise ValueError(f"params are for {params.dtype}, not {dtype}")
    stem = f"autogemm_{BLAS_LETTER[dtype]}gemm"
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in ((".c", render.render_gemm(params)), (".h", render.render_header(dtype, params.name))):
        path = directory / f"{stem}{suffix}"
        path.write_text(text)
        written.append(path)
    return written


def export_workload(spec: str, out_dir=".", *, tokens: int = 256, dtype="float32", tuned_dir=None) -> list[Path]:
    """Writes one C file (and header) with a kernel for every GEMM of a workload, a dispatcher, and,
    for float32, llm.c's `matmul_forward` / `matmul_backward` entry points.

    Each GEMM gets this machine's tuned entry nearest to it, or the analytic default.
    """
    import re

    from . import workload

    dtype = _check_dtype(dtype)
    if dtype == "bfloat16":
        raise ValueError("workload export is float32 or float64 (llm.c's matmuls are float32); "
                         "for bfloat16 use `autogemm export --dtype bfloat16`")
    problems = workload.distinct(workload.load(spec, tokens))
    kernels: list[KernelParams] = []
    table = []
    for p in problems:
        params = load(dtype, shape=p.shape, layout=p.layout, beta=p.beta, tuned_dir=tuned_dir).params
        if params not in kernels:
            kernels.append(params)
        table.append({"m": p.m, "n": p.n, "k": p.k, "trans_a": int(p.trans_a), "trans_b": int(p.trans_b),
                      "kernel": kernels.index(params), "label": p.label()})
    name = re.sub(r"[^A-Za-z0-9]+", "_", Path(spec).stem if spec not in workload.BUILTIN else spec).strip("_").lower()
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in ((".c", render.render_workload(name, dtype, kernels, table)),
                         (".h", render.render_workload_header(name, dtype, table))):
        path = directory / f"autogemm_{name}{suffix}"
        path.write_text(text)
        written.append(path)
    return written


def export_blas(out_dir=".", *, tuned_dir=None) -> list[Path]:
    """Writes and builds `libautogemm_blas.so` (with its C source and header): the Fortran `sgemm_`,
    `dgemm_` and CBLAS `cblas_sgemm`, `cblas_dgemm`, for `LD_PRELOAD` or `-lautogemm_blas`."""
    kernels = {dtype: load(dtype, shape=(2048, 2048, 2048), tuned_dir=tuned_dir).params
               for dtype in ("float32", "float64")}
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    source, header = directory / "autogemm_blas.c", directory / "autogemm_blas.h"
    source.write_text(render.render_blas(kernels))
    header.write_text(render.render_template("blas.h.j2"))
    library = toolchain.compile_library(source, directory / "libautogemm_blas.so")
    return [source, header, library]
