"""The measured FMA peak: the physical limit that every GFLOP/s figure is compared against."""

from __future__ import annotations

import functools

import cffi

from . import machine, render, toolchain


@functools.lru_cache(maxsize=None)
def _peak_library(isa: str, dtype: str):
    source = render.render_peak(isa, dtype)
    library = toolchain.build_shared(source, f"ag_peak_{isa}_{dtype}")
    ffi = cffi.FFI()
    ffi.cdef("double autogemm_peak_flops_per_iter(void); double autogemm_peak_seconds(int nthreads, long iters);"
             "int autogemm_peak_threads_ran(void);")
    return ffi.dlopen(str(library))


def measure_peak(dtype: str = "float32", threads: int = 1, isa: str | None = None, repeats: int = 5) -> float:
    """Best-of-`repeats` FMA throughput in GFLOP/s on `threads` threads, on this CPU's best ISA for
    `dtype` (vdpbf16ps for bfloat16 where the CPU has it: 2 multiply-adds per float32 lane).

    Each repeat runs about 0.1 s; the best is the least disturbed by other work on the machine.
    """
    isa = isa or machine.detect().best_isa_for(dtype)
    lib = _peak_library(isa, dtype)

    def seconds_for(iters: int) -> float:
        seconds = lib.autogemm_peak_seconds(threads, iters)
        if seconds < 0:
            raise RuntimeError(f"autogemm: the FMA peak could not start {threads} threads")
        return seconds

    iters = 1 << 12
    while (seconds := seconds_for(iters)) < 0.01:
        iters *= 4
    iters = int(iters * 0.1 / seconds) + 1
    flops = lib.autogemm_peak_flops_per_iter() * iters * threads
    return max(flops / seconds_for(iters) for _ in range(repeats)) * 1e-9


_highest: dict = {}  # (dtype, threads, isa) -> the highest reading this process took


def highest_peak(dtype: str = "float32", threads: int = 1, isa: str | None = None) -> float:
    """A fresh `measure_peak` reading, or a higher one this process took before, so that a reading
    disturbed by other work (on a 2-vCPU VM both threads of a reading once shared one CPU and read
    half the peak) never stands as the peak that later figures are a percentage of."""
    key = (dtype, threads, isa)
    _highest[key] = max(_highest.get(key, 0.0), measure_peak(dtype, threads, isa))
    return _highest[key]
