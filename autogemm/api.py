"""The public calls: load a kernel, multiply, export standalone C."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from . import analytic, machine, render, toolchain
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


def load(dtype="float32", *, params: KernelParams | None = None) -> Kernel:
    """The kernel to use for `dtype` on this machine: `params` if given, else the analytic default.

    Example:
        >>> k = load("float64")
        >>> k.params.dtype, k.machine.cores > 0
        ('float64', True)
    """
    dtype = _check_dtype(dtype)
    if params is None:
        params = analytic.default_params(machine.detect(), dtype)
    elif params.dtype != dtype:
        raise ValueError(f"params are for {params.dtype}, not {dtype}")
    return build(params)


def matmul(a, b, out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """`numpy.matmul` for float32 and float64, computed by this machine's autogemm kernel.

    Example:
        >>> a = np.arange(6, dtype=np.float64).reshape(2, 3)
        >>> matmul(a, a.T).tolist()
        [[5.0, 14.0], [14.0, 50.0]]
    """
    a, b = np.asarray(a), np.asarray(b)
    return load(computed_dtype(a, b).name)(a, b, out=out, threads=threads)


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
