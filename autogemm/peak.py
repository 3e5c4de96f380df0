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


class PeakMeter:
    """Readings of the FMA peak on `threads` threads, each about `seconds` long, calibrated once:
    short enough to take between the calls they rate, so that a % of peak compares the kernel with
    the core at the same clock (on a shared host the clock can drift by 10% within minutes)."""

    def __init__(self, dtype: str = "float32", threads: int = 1, isa: str | None = None, seconds: float = 0.1):
        isa = isa or machine.detect().best_isa_for(dtype)
        self._lib = _peak_library(isa, dtype)
        self.threads = threads
        iters = 1 << 12
        while (elapsed := self._seconds_for(iters)) < 0.01:
            iters *= 4
        self._iters = int(iters * seconds / elapsed) + 1

    def _seconds_for(self, iters: int) -> float:
        seconds = self._lib.autogemm_peak_seconds(self.threads, iters)
        if seconds < 0:
            raise RuntimeError(f"autogemm: the FMA peak could not start {self.threads} threads")
        return seconds

    def read(self) -> float:
        """One reading, in GFLOP/s."""
        flops = self._lib.autogemm_peak_flops_per_iter() * self._iters * self.threads
        return flops / self._seconds_for(self._iters) * 1e-9


def measure_peak(dtype: str = "float32", threads: int = 1, isa: str | None = None, repeats: int = 5) -> float:
    """Best-of-`repeats` FMA throughput in GFLOP/s on `threads` threads, on this CPU's best ISA for
    `dtype` (vdpbf16ps for bfloat16 where the CPU has it: 2 multiply-adds per float32 lane).

    Each repeat runs about 0.1 s; the best is the least disturbed by other work on the machine.
    """
    meter = PeakMeter(dtype, threads, isa)
    return max(meter.read() for _ in range(repeats))


_highest: dict = {}  # (dtype, threads, isa) -> the highest reading this process took


def highest_peak(dtype: str = "float32", threads: int = 1, isa: str | None = None) -> float:
    """A fresh `measure_peak` reading, or a higher one this process took before, so that a reading
    disturbed by other work (on a 2-vCPU VM both threads of a reading once shared one CPU and read
    half the peak) never stands as the peak that later figures are a percentage of."""
    key = (dtype, threads, isa)
    _highest[key] = max(_highest.get(key, 0.0), measure_peak(dtype, threads, isa))
    return _highest[key]
