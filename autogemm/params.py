"""Kernel parameters: a frozen, validated value that is the only input to the C templates."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import ml_dtypes
import numpy as np

DTYPES = ("float32", "float64", "bfloat16")
ISAS = ("amxbf16", "avx512bf16", "avx512", "avx2", "portable")
#: ISAs that only bfloat16 kernels use: they multiply pairs of k (vdpbf16ps, tdpbf16ps), so packing
#: interleaves pairs.
PAIRED_ISAS = ("amxbf16", "avx512bf16")
#: ISAs whose accumulators are AMX tiles, not vector registers: a tile holds 16 rows of C (16 float32
#: each), of A (32 values of k each) or of B (16 pairs of k, each pair for 16 columns), so MR and NR are
#: multiples of 16 and KC of 32 (see templates/ukernel/amxbf16.c.j2).
TILE_ISAS = ("amxbf16",)
TILE_ROWS, TILE_K = 16, 32
PARALLEL_LOOPS = ("ic", "jr", "2d", "jp")
KU_CHOICES = (1, 2, 4, 8)
#: Rows, and million flops per thread, up to which the direct path skips packing, unless a kernel says
#: otherwise: Zen 4's float32 crossover (see analytic.direct_limits).
DIRECT_LIMITS = (128, 128)
#: The most elements of B (k x n) with which the flops limit alone lets a GEMM skip packing: such a B
#: stays in cache while every row tile reads it.
DIRECT_B_ELEMENTS = 1 << 20
#: The limits of kernels recorded before they were parameters (then 512 rows and 400 Mflop in all): a
#: tuned entry without them keeps the path it was measured on.
RECORDED_DIRECT_LIMITS = (512, 400)

#: Vector registers each ISA's register file holds. The portable template targets whatever the
#: compiler lowers it to; 32 matches AArch64 NEON/SVE and AVX-512, the widest common case.
REGISTER_BUDGET = {"amxbf16": 8, "avx512bf16": 32, "avx512": 32, "avx2": 16, "portable": 32}
_VECTOR_BYTES = {"amxbf16": (64,), "avx512bf16": (64,), "avx512": (64,), "avx2": (32,), "portable": (16, 32, 64)}
#: The BLAS-style prefix letter of each dtype's routines: sgemm, dgemm, bgemm.
BLAS_LETTER = {"float32": "s", "float64": "d", "bfloat16": "b"}
_ITEMSIZE = {"float32": 4, "float64": 8, "bfloat16": 2}

_LIMITS = {  # inclusive ranges that keep the generated code and its stack tile reasonable
    "mr": (1, 32),
    "nr": (1, 128),
    "mc": (1, 1 << 16),
    "kc": (1, 1 << 14),
    "nc": (1, 1 << 20),
    "prefetch": (0, 64),
    "direct_m": (0, 1 << 16),
    "direct_mflops": (0, 1 << 20),
    "direct_threaded": (1, 64),
}


class InvalidParams(ValueError):
    """A parameter is out of range or inconsistent with the others."""


def itemsize(dtype: str) -> int:
    """Bytes of one input element."""
    return _ITEMSIZE[dtype]


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of an input element (bfloat16 is ml_dtypes')."""
    return np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)


def accumulator_dtype(dtype: str) -> str:
    """The type products are summed in and C is stored in: float32 for bfloat16 inputs."""
    return "float32" if dtype == "bfloat16" else dtype


def k_per_element(isa: str) -> int:
    """Values of k in one packed element: 2 for the paired bf16 ISAs, else 1."""
    return 2 if isa in PAIRED_ISAS else 1


def packed_itemsize(dtype: str, isa: str) -> int:
    """Bytes per k of one packed row: bf16 on the paired ISAs, else the accumulator type (the
    fallback ISAs widen bf16 to float32 while packing)."""
    return itemsize(dtype) if isa in PAIRED_ISAS else itemsize(accumulator_dtype(dtype))


def vector_widths(isa: str, dtype: str) -> tuple[int, ...]:
    """Accumulator lanes per vector register that `isa` offers for `dtype`."""
    return tuple(b // itemsize(accumulator_dtype(dtype)) for b in _VECTOR_BYTES[isa])


def registers_needed(mr: int, nr: int, vw: int, isa: str = "avx512") -> int:
    """Accumulators (MR x NR/VW), one register per B vector, one A broadcast; on a tile ISA, tiles of
    C (MR/16 x NR/16), of A (MR/16) and of B (NR/16)."""
    nv = nr // vw
    if isa in TILE_ISAS:
        rows = -(-mr // TILE_ROWS)
        return rows * nv + rows + nv
    return mr * nv + nv + 1


@dataclass(frozen=True)
class KernelParams:
    """One point of the template space. Construction validates; invalid values never reach C.

    Example:
        >>> p = KernelParams("float32", "avx2", mr=6, nr=16, vw=8, ku=4, mc=96, kc=256, nc=4096)
        >>> p.name
        'ag_sgemm_avx2_6x16_k4_mc96_kc256_nc4096_ic_pf0'
    """

    dtype: str
    isa: str
    mr: int
    nr: int
    vw: int
    ku: int
    mc: int
    kc: int
    nc: int
    parallel: str = "ic"
    prefetch: int = 0
    #: Prefetch every cache line of the C tile as the micro-kernel starts, not only each row's first.
    prefetch_c: bool = False
    #: Pack a B block that several threads share with non-temporal stores (not jp, whose panels are
    #: each thread's own), so that no core writes lines another core holds. Whole rows of a row-major
    #: B only; a bfloat16 kernel widening to float32 (no AVX512_BF16) streams bfloat16 B, not float32
    #: B it rounds. Off in kernels recorded before it existed; the analytic default turns it on for
    #: few cores.
    stream_b: bool = False
    #: The direct path (no packing) takes GEMMs of at most `direct_m` rows, or of at most
    #: `direct_mflops` million flops per thread with a small B (see the template's AG_DIRECT_*).
    direct_m: int = DIRECT_LIMITS[0]
    direct_mflops: int = DIRECT_LIMITS[1]
    #: On more than one thread both direct limits are this many times larger (the flops one per
    #: thread): the packed path then also waits at a barrier after packing B, and a core reads the B
    #: panels another core wrote, which the direct path never does (see analytic.direct_limits).
    direct_threaded: int = 1

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InvalidParams(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.isa not in ISAS:
            raise InvalidParams(f"isa must be one of {ISAS}, got {self.isa!r}")
        if self.isa in PAIRED_ISAS and self.dtype != "bfloat16":
            raise InvalidParams(f"isa {self.isa} computes bfloat16 only, not {self.dtype}")
        if self.parallel not in PARALLEL_LOOPS:
            raise InvalidParams(f"parallel must be one of {PARALLEL_LOOPS}, got {self.parallel!r}")
        for flag in ("prefetch_c", "stream_b"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise InvalidParams(f"{flag} must be a bool, got {getattr(self, flag)!r}")
            object.__setattr__(self, flag, bool(getattr(self, flag)))
        for field in ("mr", "nr", "vw", "ku", "mc", "kc", "nc", "prefetch", "direct_m", "direct_mflops",
                      "direct_threaded"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise InvalidParams(f"{field} must be an int, got {value!r}")
            object.__setattr__(self, field, int(value))
        for field, (low, high) in _LIMITS.items():
            value = getattr(self, field)
            if not low <= value <= high:
                raise InvalidParams(f"{field}={value} is outside [{low}, {high}]")
        widths = vector_widths(self.isa, self.dtype)
        if self.vw not in widths:
            raise InvalidParams(f"vw={self.vw} is not a {self.isa} vector width for {self.dtype}: {widths}")
        if self.ku not in KU_CHOICES:
            raise InvalidParams(f"ku must be one of {KU_CHOICES}, got {self.ku}")
        if self.nr % self.vw:
            raise InvalidParams(f"nr={self.nr} must be a multiple of the vector width {self.vw}")
        if self.mc % self.mr:
            raise InvalidParams(f"mc={self.mc} must be a multiple of mr={self.mr}")
        if self.kc % k_per_element(self.isa):
            raise InvalidParams(f"kc={self.kc} must be even: {self.isa} multiplies pairs of k")
        if self.isa in TILE_ISAS and (self.mr % TILE_ROWS or self.kc % TILE_K):
            raise InvalidParams(f"{self.isa} takes tiles of {TILE_ROWS} rows and {TILE_K} values of k: "
                                f"mr={self.mr} and kc={self.kc} must be multiples of them")
        if self.nc % self.nr:
            raise InvalidParams(f"nc={self.nc} must be a multiple of nr={self.nr}")
        need, have = registers_needed(self.mr, self.nr, self.vw, self.isa), REGISTER_BUDGET[self.isa]
        if need > have:
            kind = "tile" if self.isa in TILE_ISAS else "vector"
            raise InvalidParams(
                f"a {self.mr}x{self.nr} tile needs {need} {kind} registers; {self.isa} has {have}"
            )

    @property
    def name(self) -> str:
        """Kernel name; also its cache key and the label in tuned files."""
        letter = BLAS_LETTER[self.dtype]
        vw = f"_v{self.vw}" if self.isa == "portable" else ""
        threaded = f"x{self.direct_threaded}" if self.direct_threaded != 1 else ""
        direct = ("" if (self.direct_m, self.direct_mflops, threaded) == (*DIRECT_LIMITS, "")
                  else f"_d{self.direct_m}m{self.direct_mflops}{threaded}")
        return (
            f"ag_{letter}gemm_{self.isa}{vw}_{self.mr}x{self.nr}_k{self.ku}"
            f"_mc{self.mc}_kc{self.kc}_nc{self.nc}_{self.parallel}_pf{self.prefetch}{'c' if self.prefetch_c else ''}"
            f"{direct}{'_sb' if self.stream_b else ''}"
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "KernelParams":
        """Builds from a mapping, rejecting unknown keys (a tuned file is untrusted input); a mapping
        without the direct limits gets those of its time, RECORDED_DIRECT_LIMITS."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidParams(f"unknown parameter(s): {sorted(unknown)}")
        recorded = dict(zip(("direct_m", "direct_mflops"), RECORDED_DIRECT_LIMITS))
        return cls(**{**recorded, **data})

    def replace(self, **changes) -> "KernelParams":
        return dataclasses.replace(self, **changes)
