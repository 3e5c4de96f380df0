"""The public calls: load a kernel, multiply, export standalone C."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np

from . import analytic, machine, render, store, toolchain
from .kernel import Kernel, computed_dtype
from .params import DTYPES, KernelParams


class IsaUnavailable(RuntimeError):
    """The parameters ask for an ISA this CPU does not have."""


def _check_dtype(dtype) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) or dtype in ("f4", "f8", "float", "double") else dtype
    if name not in DTYPES:
        raise TypeError(f"autogemm supports {', '.join(DTYPES)}; got {dtype}")
    return name


def check_runnable(params: KernelParams) -> None:
    """Refuses parameters whose ISA this CPU lacks, before any C is built or run."""
    host = machine.detect()
    if not host.supports(params.isa):
        raise IsaUnavailable(f"{params.name} needs {params.isa}; this CPU offers {', '.join(host.isas)}")


@functools.lru_cache(maxsize=64)
def build(params: KernelParams) -> Kernel:
    """Renders, compiles (cached on disk) and loads the kernel for `params`."""
    check_runnable(params)
    source = render.render_gemm(params, harness=True)
    library = toolchain.build_shared(source, params.name)
    return Kernel(params, machine.detect(), library, source)


@functools.lru_cache(maxsize=8)
def _entries_cached(machine_id: str, tuned_dir, signature) -> list:
    return store.find_entries(machine_id, tuned_dir)


def tuned_entries(tuned_dir=None) -> list:
    """This machine's validated tuned entries (re-read when a tuned file changes)."""
    host = machine.detect()
    files = [store.path_for(host.machine_id, d) for d in store.search_dirs(tuned_dir)]
    signature = tuple((str(f), f.stat().st_mtime_ns if f.exists() else None) for f in files)
    return _entries_cached(host.machine_id, str(tuned_dir) if tuned_dir else None, signature)


def load(dtype="float32", *, params: KernelParams | None = None, shape=None, threads: int | None = None,
         tuned_dir=None) -> Kernel:
    """The kernel to use for `dtype` on this machine.

    `params` if given; else this machine's tuned entry nearest to `shape` (M, N, K) and `threads`;
    else the analytic default. Tuned files of other machines are never used.

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
    entry = store.nearest(tuned_entries(tuned_dir), dtype, shape, threads)
    if entry is None:
        return build(analytic.default_params(machine.detect(), dtype))
    kernel = copy.copy(build(entry.params))
    kernel.tuned = entry.record
    kernel.default_threads = entry.record.get("tuning", {}).get("run_threads")
    return kernel


def matmul(a, b, out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """`numpy.matmul` for float32 and float64, computed by this machine's autogemm kernel.

    Example:
        >>> a = np.arange(6, dtype=np.float64).reshape(2, 3)
        >>> matmul(a, a.T).tolist()
        [[5.0, 14.0], [14.0, 50.0]]
    """
    a, b = np.asarray(a), np.asarray(b)
    shape = (a.shape[-2] if a.ndim > 1 else 1, b.shape[-1] if b.ndim > 1 else 1, a.shape[-1] if a.ndim else 1)
    return load(computed_dtype(a, b).name, shape=shape, threads=threads)(a, b, out=out, threads=threads)


def export(dtype="float32", out_dir=".", *, params: KernelParams | None = None) -> list[Path]:
    """Writes standalone `autogemm_sgemm.c/.h` (or `autogemm_dgemm.*`) with the parameters baked in.

    Returns the paths written. The files need no Python: `cc -O3 -march=native [-fopenmp] -c`.
    """
    dtype = _check_dtype(dtype)
    params = params or load(dtype).params
    stem = "autogemm_sgemm" if dtype == "float32" else "autogemm_dgemm"
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in ((".c", render.render_gemm(params)), (".h", render.render_header(dtype, params.name))):
        path = directory / f"{stem}{suffix}"
        path.write_text(text)
        written.append(path)
    return written
