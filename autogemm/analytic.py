"""The untuned default: block sizes from the machine's caches, after Low et al. 2016,
"Analytical modeling is enough for high-performance BLIS" (ACM TOMS 43(2))."""

from __future__ import annotations

import math

from .machine import X86_ARCHS, Machine
from .params import (DIRECT_B_ELEMENTS, DIRECT_LIMITS, KU_CHOICES, REGISTER_BUDGET, TILE_ISAS,
                     TILE_K, TILE_ROWS, KernelParams, accumulator_dtype, itemsize, k_per_element, packed_itemsize,
                     registers_needed, vector_widths)
from .workload import Problem

#: FMA latency (cycles) and FMA pipes per core: 4 and 2 on Haswell..Sapphire Rapids, Zen 2..5,
#: Apple M1..M4 (which have 4 pipes, covered by the extra accumulators a large tile brings).
FMA_LATENCY, FMA_PIPES = 4, 2
#: NR at most four vectors: a C tile row of at most four cache lines (float32 AVX-512), and
#: bounded waste at the right edge of matrices whose N is not a multiple of NR.
MAX_NR_VECTORS = 4


def register_budget(machine: Machine, isa: str) -> int:
    if isa == "portable" and machine.arch in X86_ARCHS and "avx512f" not in machine.features:
        return 16
    return REGISTER_BUDGET[isa]


def portable_vector_width(machine: Machine, dtype: str) -> int:
    """Widest vector (in accumulator lanes) the compiler will lower the portable template to on this CPU."""
    bytes_ = 64 if "avx512f" in machine.features else 32 if "avx" in machine.features else 16
    return bytes_ // itemsize(accumulator_dtype(dtype))


def register_tile(budget: int, vw: int) -> tuple[int, int]:
    """MR x NR: enough independent accumulators to cover FMA latency x pipes, then the most FMAs
    per load (MR broadcasts and NR/VW vector loads feed MR * NR/VW FMAs each k), then the most
    accumulators the register file holds."""
    best, best_key = (1, vw), None
    for nv in range(1, MAX_NR_VECTORS + 1):
        for mr in range(1, 33):
            if registers_needed(mr, nv * vw, vw) > budget:
                break
            accumulators = mr * nv
            if accumulators < FMA_LATENCY * FMA_PIPES:
                continue
            key = (round(accumulators / (mr + nv), 2), accumulators)
            if best_key is None or key > best_key:
                best, best_key = (mr, nv * vw), key
    return best


def cache_blocks(machine: Machine, mr: int, nr: int, dtype: str, isa: str) -> tuple[int, int, int]:
    """KC, MC, NC from the caches.

    Low et al. size KC so the B micro-panel (KC x NR) stays in L1. With NR four vectors wide that
    leaves KC under 100, too short to amortise the C tile's load and store; so KC instead lets the
    B micro-panel take a quarter of L2 and the streaming prefetchers feed L1, capped at 384 packed
    elements (the C tile's cost is per micro-kernel call, so the cap counts FMAs, not bytes: float64
    at KC 384 rather than 192 measured +3% on Zen 4). MC makes the packed A block fill the L2 ways
    that B and C leave free; NC sizes the packed B panel to half of L3. Sizes are in packed bytes, and
    a bfloat16 pair is one packed element of two values of k.
    """
    size, pair = packed_itemsize(dtype, isa), k_per_element(isa)
    l2, l3 = machine.caches[2], machine.caches[3]
    kc = l2.size // 4 // (nr * size)
    if isa in TILE_ISAS:
        kc, mc = tile_blocks(l2.size, mr, kc)
    else:
        kc = max(64, min(384 * pair, kc // 16 * 16))
        ways_a = max(1, l2.ways - 2)
        mc = ways_a * l2.sets * l2.line // 2 // (kc * size)
        mc = max(mr, min(4096, mc) // mr * mr)
    nc = l3.size // 2 // (kc * size)
    nc = max(nr, min(8192, nc) // nr * nr)
    return mc, kc, nc


#: The longest KC of a tile kernel: its B micro-panel (KC x 32 bf16) then takes 128 KiB of L2.
MAX_TILE_KC = 2048


def tile_blocks(l2_bytes: int, mr: int, kc_l2: int) -> tuple[int, int]:
    """KC and MC of an AMX kernel. Its C tiles are loaded and stored once per KC block, and a 2 x 2
    step loads 4 KiB of A and B tiles for 64 cycles of tdpbf16ps, so KC runs as long as B's micro-panel
    may take a quarter of L2 (up to MAX_TILE_KC), and MC makes A's block another quarter. One thread of
    the 2-core Xeon (family 6 model 167), bfloat16 2048^3: KC 768 / MC 576 706-751 GFLOP/s, KC 2048 /
    MC 128 979-1022 (MC 64 887, 192 978)."""
    kc = max(TILE_K, min(MAX_TILE_KC, kc_l2) // TILE_K * TILE_K)
    mc = max(mr, l2_bytes // 4 // (kc * 2) // mr * mr)
    return kc, mc


def default_params(machine: Machine, dtype: str = "float32", isa: str | None = None) -> KernelParams:
    """The analytic default kernel for `machine`, on its best ISA unless `isa` is given."""
    isa = isa or machine.best_isa_for(dtype)
    vw = portable_vector_width(machine, dtype) if isa == "portable" else max(vector_widths(isa, dtype))
    if isa in TILE_ISAS:  # 2 x 2 tiles of C, 2 of A and 2 of B: the most products per tile loaded
        mr, nr = 2 * TILE_ROWS, 2 * vw
    else:
        mr, nr = register_tile(register_budget(machine, isa), vw)
    mc, kc, nc = cache_blocks(machine, mr, nr, dtype, isa)
    ku = 4 if 4 in KU_CHOICES else KU_CHOICES[-1]
    direct_m, direct_mflops, direct_threaded = direct_limits(machine, dtype)
    return KernelParams(dtype=dtype, isa=isa, mr=mr, nr=nr, vw=vw, ku=ku, mc=mc, kc=kc, nc=nc,
                        parallel=parallel_loop(machine), prefetch=a_prefetch_distance(machine),
                        direct_m=direct_m, direct_mflops=direct_mflops, direct_threaded=direct_threaded,
                        stream_b=streams_shared_b(machine))


#: Cores above which the default splits row blocks and B micro-panels (2d) rather than rows (ic).
MANY_CORES = 4


def parallel_loop(machine: Machine) -> str:
    """`ic` on few cores: each thread packs its own A block and multiplies it by all of packed B
    (2 cores of Zen 4: 0.99-1.07x 2d). `2d` on many: a shared A block, each thread on its own B
    micro-panels, so B is read from L3 once per block of A rather than once per thread (16 cores of
    Ice Lake: 1.1-1.4x ic at 1024^3-4096^3 and on the GPT-2 shapes)."""
    return "2d" if machine.cores > MANY_CORES else "ic"


def streams_shared_b(machine: Machine) -> bool:
    """Whether the threads pack the B block they share with non-temporal stores: on few cores. Two
    cores of Zen 4 (KVM), float32: +5-10% at 1024^3 and 768x2304x4096, +2% at 4096x768x768, level at
    2048^3 and on one thread; there each core otherwise writes lines the other core read in the last
    k block, and while the host keeps the two vCPUs apart that cost packing B five times its time
    alone. 16 cores of the lent Xeon: 0.94-0.95x at 1024^3, level at 2048^3 and the GPT-2 shapes."""
    return machine.cores <= MANY_CORES


def few_intel_cores(machine: Machine) -> bool:
    """An Intel CPU with at most MANY_CORES cores, whether archspec named its vendor (genuineintel)
    or only /proc/cpuinfo did (intel, under a generic microarchitecture)."""
    return machine.vendor in ("genuineintel", "intel") and machine.cores <= MANY_CORES


def a_prefetch_distance(machine: Machine) -> int:
    """k steps ahead at which the micro-kernel prefetches A into L1 (0: never). 8 on few Intel cores:
    one thread of a Xeon (family 6 model 167), both builds in one process, +1.6-3.0% at 2048^3, 4096^3
    (float32 and float64), 4096x768x768 and 4096x2304x768, level at 256^3, and its searches kept a
    prefetch on 16 of 30 entries; on Emerald Rapids +2-6%, inside that host's noise. Zen 4 needs none
    (its searches kept one on 4 of 68 entries), nor did the 16-core Xeon's searches (1 of 11)."""
    return 8 if few_intel_cores(machine) else 0


def direct_limits(machine: Machine, dtype: str = "float32") -> tuple[int, int, int]:
    """Rows, and million flops per thread, up to which `dtype` GEMMs skip packing (the direct path
    reads B in place), and how many times both grow on more than one thread. On few Intel cores B's
    rows, a page apart, outrun the prefetchers sooner: 64 rows and 16 Mflop (about 200^3) on one
    thread, twice that on two, where the packed path also waits at a barrier after packing B and
    each core reads panels the other wrote. Zen 4's crossovers elsewhere, on one thread and two alike:
    float32 128 rows and 128 Mflop (about 400^3 on one thread, 500^3 on two), float64 96 rows and
    24 Mflop (about 230^3 on one thread, 290^3 on two).
    Measurements: templates/partials/kernel.c.j2, at AG_DIRECT_M."""
    if few_intel_cores(machine):
        return 64, 16, 2
    return (96, 24, 1) if dtype == "float64" else (*DIRECT_LIMITS, 1)


def _direct_measures(problem: Problem, threads: int) -> tuple[int, bool]:
    """What the direct limits weigh besides rows: million flops a thread (rounded up), and whether B
    has at most AG_DIRECT_B elements."""
    return (math.ceil(2.0 * problem.m * problem.n * problem.k / threads / 1e6),
            problem.k * problem.n <= DIRECT_B_ELEMENTS)


def takes_direct(problem: Problem, threads: int, limits: tuple[int, int, int]) -> bool:
    """Whether direct_m, direct_mflops and direct_threaded `limits` send `problem` on `threads` threads
    down the direct path (the template's AG_DIRECT_* test, flops rounded up to whole millions)."""
    direct_m, direct_mflops, direct_threaded = limits
    grow = direct_threaded if threads > 1 else 1
    mflops, small_b = _direct_measures(problem, threads)
    return problem.m <= direct_m * grow or (small_b and mflops <= direct_mflops * grow)


def path_limits(machine: Machine, dtype: str, problem: Problem, threads: int, path: str) -> tuple[int, int, int]:
    """direct_m, direct_mflops and direct_threaded that send `problem` on `threads` threads down
    `path`, as close to the analytic limits as that allows (a forced path takes limits that do not
    grow with the threads). The analytic limits where the path does not apply (bfloat16, one column)
    or is already taken."""
    limits = direct_limits(machine, dtype)
    if (path == "default" or dtype == "bfloat16" or problem.n == 1
            or takes_direct(problem, threads, limits) == (path == "direct")):
        return limits
    direct_m, direct_mflops, _ = limits
    mflops, small_b = _direct_measures(problem, threads)
    if path == "direct":
        return (direct_m, mflops, 1) if small_b else (min(problem.m, 1 << 16), direct_mflops, 1)
    return min(direct_m, problem.m - 1), max(0, min(direct_mflops, mflops - 1)) if small_b else direct_mflops, 1


def current_limits(machine: Machine, params: KernelParams, problem: Problem, threads: int) -> KernelParams:
    """`params`, tuned for `problem` on `threads` threads, with today's direct limits as far as they keep
    that problem on the path its own limits give it: a tuned kernel also serves the shapes nearest its
    own, whose paths its limits decide, and limits recorded before `direct_limits` last changed would
    send them down an outdated path (float32 64 x 2304 x 768 with B transposed on two threads, packed
    by a 512^3 entry's limits: 0.83x numpy)."""
    own = (params.direct_m, params.direct_mflops, params.direct_threaded)
    path = "direct" if takes_direct(problem, threads, own) else "packed"
    direct_m, direct_mflops, direct_threaded = path_limits(machine, params.dtype, problem, threads, path)
    return params.replace(direct_m=direct_m, direct_mflops=direct_mflops, direct_threaded=direct_threaded)
