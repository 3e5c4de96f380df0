"""Jinja templates -> C text. The only place that turns parameters into source."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path

import jinja2

from . import __version__
from .params import (BLAS_LETTER, DIRECT_B_ELEMENTS, KernelParams, accumulator_dtype, k_per_element, packed_itemsize,
                     vector_widths)

#: FMA chains in the peak microbenchmark: enough to hide latency x pipes on current cores,
#: few enough to stay in registers with the two constant operands.
PEAK_CHAINS = {"amxbf16": 4, "avx512bf16": 24, "avx512": 24, "avx2": 12, "portable": 12}


def templates_dir() -> Path:
    """The templates: inside the installed package, or the checkout's top-level templates/."""
    packaged = Path(str(resources.files("autogemm"))) / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


@functools.lru_cache(maxsize=1)
def templates_fingerprint() -> str:
    """A short hash of every template's text: measurements of one version's kernels are not another's."""
    digest = hashlib.sha256()
    root = templates_dir()
    for path in sorted(root.rglob("*.j2")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _ctype(dtype: str) -> str:
    """The C type of accumulators and C: float for bfloat16 inputs."""
    return {"float32": "float", "float64": "double"}[accumulator_dtype(dtype)]


def _kernel_values(params: KernelParams) -> dict:
    kp = k_per_element(params.isa)
    return dict(**params.to_dict(), name=params.name, ctype=_ctype(params.dtype), kp=kp, direct_b=DIRECT_B_ELEMENTS,
                letter=BLAS_LETTER[params.dtype], elem_bytes=packed_itemsize(params.dtype, params.isa) * kp)


def _kernel_section(params: KernelParams, ns: str) -> str:
    """One kernel's static section, its identifiers prefixed with `ns`."""
    return _environment().get_template("partials/kernel.c.j2").render(**_kernel_values(params), ns=ns)


def render_workload(name: str, dtype: str, kernels: list[KernelParams], table: list[dict]) -> str:
    """One translation unit holding several kernels (each under its own prefix), a dispatcher over
    `table` (rows of m, n, k, trans_a, trans_b, kernel index) and llm.c's matmul entry points."""
    sections = [_kernel_section(p, f"agk{i}_") for i, p in enumerate(kernels)]
    return _environment().get_template("workload.c.j2").render(
        workload=name, dtype=dtype, ctype=_ctype(dtype), sections=sections, kernels=kernels, table=table,
        version=__version__)


def render_blas(kernels: dict[str, KernelParams]) -> str:
    """libautogemm_blas: Fortran and CBLAS SGEMM/DGEMM over the float32 and float64 kernels."""
    sections = {dtype: _kernel_section(p, "ags_" if dtype == "float32" else "agd_") for dtype, p in kernels.items()}
    return _environment().get_template("blas.c.j2").render(sections=sections, kernels=kernels, version=__version__)


def render_workload_header(name: str, dtype: str, table: list[dict]) -> str:
    return _environment().get_template("workload.h.j2").render(
        workload=name, dtype=dtype, ctype=_ctype(dtype), table=table, version=__version__)


def render_gemm(params: KernelParams, *, harness: bool = False, phases: bool = False) -> str:
    """The complete translation unit for `params`; `harness` appends the timing entry point, and
    `phases` (with it) times each phase of the packed path, read by `autogemm_?gemm_phases`."""
    if not isinstance(params, KernelParams):
        raise TypeError("render_gemm takes a KernelParams")
    if phases and not harness:
        raise ValueError("phases are read through the timing harness: render with harness=True")
    return _environment().get_template("gemm.c.j2").render(**_kernel_values(params), harness=harness,
                                                           phases=phases, version=__version__)


def render_template(name: str, **values) -> str:
    """A template that takes no kernel parameters (the llm.c-style baseline)."""
    return _environment().get_template(name).render(version=__version__, **values)


def render_header(dtype: str, kernel_name: str) -> str:
    return _environment().get_template("gemm.h.j2").render(
        dtype=dtype, ctype=_ctype(dtype), letter=BLAS_LETTER[dtype], name=kernel_name, version=__version__
    )


def render_peak(isa: str, dtype: str) -> str:
    """Peak-FMA microbenchmark for one ISA and dtype, at that ISA's widest vector."""
    return _environment().get_template("peak.c.j2").render(
        isa=isa,
        dtype=dtype,
        ctype=_ctype(dtype),
        vw=max(vector_widths(isa, dtype)),
        chains=PEAK_CHAINS[isa],
        kp=k_per_element(isa),
        version=__version__,
    )
