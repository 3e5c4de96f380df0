"""autogemm.matmul's and autogemm.gemm's common calls in C: a CPython extension that hands 2-D
float32, float64 or bfloat16 arrays straight to the kernel chosen for their shape, so a small product
costs about what numpy's does. Every other call goes to the Python `api.matmul` or `api.gemm`, as does
everything where the extension cannot be built (no compiler or no Python headers): `status()` says
which."""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import sys
import sysconfig
from typing import Callable

import ml_dtypes
import numpy as np

from . import render, toolchain

MODULE = "autogemm_entry"
_DTYPES = {"f": "float32", "d": "float64", "b": "bfloat16"}
_unavailable: list[str] = []  # why the Python matmul is used, once wrap() has been called


def choose(letter: str, m: int, n: int, k: int, threads: int, layout: str | None = None,
           beta: float | None = None) -> tuple[int, int]:
    """The kernel `api.matmul` (or with `layout` and `beta`, `api.gemm`) uses for an m x n x k product
    (threads 0: not given), as the address of its strided entry point and the thread count to call it with."""
    from . import api
    from .kernel import resolve_threads

    wanted = threads or None
    kernel = api.load(_DTYPES[letter], shape=(m, n, k), threads=wanted, layout=layout, beta=beta)
    return kernel.entry_address, resolve_threads(wanted, kernel.default_threads)


@functools.lru_cache(maxsize=1)
def extension():
    """The entry module, built once per Python, numpy and autogemm version and cached on disk."""
    source = render.render_template("pyentry.c.j2", module=MODULE, numpy=np.__version__,
                                    python=f"{sys.version.split()[0]} {sys.implementation.cache_tag} {sys.platform}")
    flags = (f"-I{sysconfig.get_path('include')}", f"-I{np.get_include()}")
    if sys.platform == "darwin":
        flags += ("-undefined", "dynamic_lookup")  # Python's symbols come from the running interpreter
    key = hashlib.sha256("\0".join((source, *flags)).encode()).hexdigest()[:20]
    library = toolchain.build_shared(source, MODULE, extra_flags=flags, cache_key=key)
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(library))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(MODULE, loader))
    loader.exec_module(module)
    return module


def wrap(python_matmul: Callable, python_gemm: Callable) -> tuple[Callable, Callable]:
    """`python_matmul` and `python_gemm` behind the C entry points, or themselves where those cannot
    be built."""
    _unavailable.clear()
    try:
        module = extension()
    except (toolchain.CompilerNotFound, toolchain.CompileError, OSError, ImportError) as error:
        _unavailable.append(str(error).splitlines()[0])
        return python_matmul, python_gemm
    matmul = module.configure(python_matmul, choose, python_matmul.__doc__ or "", np.dtype(ml_dtypes.bfloat16).num)
    return matmul, module.configure_gemm(python_gemm, python_gemm.__doc__ or "")


def status() -> str:
    """Which matmul serves the common call, for `autogemm info`."""
    if _unavailable:
        return f"Python (the C entry point could not be built: {_unavailable[0]})"
    return ("C entry point (2-D float32/float64/bfloat16 operands, one dtype, for matmul and gemm, and a stack of "
            "them times one matrix for matmul), Python for the rest")
