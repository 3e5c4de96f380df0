import dataclasses
import re

import pytest

from autogemm import analytic, machine, peak, toolchain
from autogemm.peak import measure_peak


def test_machine_id_names_microarch_isa_cores_and_compiler(host):
    mid = host.machine_id
    assert re.fullmatch(r"[A-Za-z0-9_.+-]+", mid)
    assert host.microarch in mid and host.best_isa in mid and f"{host.cores}c" in mid
    assert host.compiler.version in mid
    assert host.isas[-1] == "portable"


def _cpuinfo(vendor: str, family: int, model: int) -> str:
    return f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: x\n"


def test_x86_cpu_models_key_apart_what_archspec_names_alike():
    """Under KVM with waitpkg hidden archspec calls two Xeon generations "icelake"; their family and
    model keep their tuned files apart."""
    older, newer = machine.cpu_model(_cpuinfo("GenuineIntel", 6, 207)), machine.cpu_model(_cpuinfo("GenuineIntel", 6, 167))
    assert (older, newer) == ("intel-f6m207", "intel-f6m167")
    assert machine.cpu_model(_cpuinfo("AuthenticAMD", 25, 17)) == "amd-f25m17"
    assert machine.cpu_model("vendor_id\t: GenuineIntel\n") == "intel"
    assert machine.cpu_model("") == ""


def test_x86_machine_id_carries_the_cpu_model(host):
    if host.arch not in machine.X86_ARCHS:
        assert host.model == "" or host.microarch.startswith(("aarch64", "ppc64", "riscv"))
        return
    assert host.model == machine.cpu_model(open("/proc/cpuinfo").read())
    assert re.fullmatch(r"[a-z]+-f\d+m\d+", host.model) and host.model in host.machine_id


def test_caches_are_read_and_ordered(host):
    l1, l2, l3 = (host.caches[i] for i in (1, 2, 3))
    assert 4096 <= l1.size < l2.size <= l3.size or l2.size == l3.size
    assert l1.sets * l1.ways * l1.line == l1.size


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_analytic_default_fills_registers_and_caches(host, dtype):
    p = analytic.default_params(host, dtype)
    budget = analytic.register_budget(host, p.isa)
    accumulators = p.mr * p.nr // p.vw
    assert accumulators >= analytic.FMA_LATENCY * analytic.FMA_PIPES
    assert accumulators + p.nr // p.vw + 1 <= budget
    size = 4 if dtype == "float32" else 8
    assert p.kc * p.nr * size <= host.caches[2].size // 4  # B micro-panel: a quarter of L2
    assert p.mc * p.kc * size <= host.caches[2].size  # packed A block fits in L2


def test_kc_is_capped_in_packed_elements_not_bytes(host):
    """With a 1 MiB L2, KC reaches the cap for every dtype: 384 values of k for float32 and float64
    alike (float64 was once held to 192 by a cap in bytes), 384 pairs of k for bfloat16."""
    big_l2 = dataclasses.replace(host, features=frozenset({"avx512f", "avx512_bf16", "avx2", "fma"}),
                                 caches={**host.caches, 2: machine.Cache(1 << 20, 8, 64)})
    kcs = {dtype: analytic.default_params(big_l2, dtype, isa).kc
           for dtype, isa in (("float32", "avx512"), ("float64", "avx512"), ("bfloat16", "avx512bf16"))}
    assert kcs == {"float32": 384, "float64": 384, "bfloat16": 768}


@pytest.mark.parametrize("budget, vw", [(32, 16), (32, 8), (16, 8), (16, 4)])
def test_register_tile_is_the_best_feasible_tile(budget, vw):
    mr, nr = analytic.register_tile(budget, vw)
    nv = nr // vw
    assert mr * nv + nv + 1 <= budget and mr * nv >= analytic.FMA_LATENCY * analytic.FMA_PIPES
    intensity = mr * nv / (mr + nv)
    for other_nv in range(1, analytic.MAX_NR_VECTORS + 1):
        for other_mr in range(1, 33):
            if other_mr * other_nv + other_nv + 1 <= budget and other_mr * other_nv >= 8:
                assert other_mr * other_nv / (other_mr + other_nv) <= intensity + 0.005



@pytest.mark.parametrize("cores, loop", [(1, "ic"), (2, "ic"), (analytic.MANY_CORES, "ic"),
                                         (analytic.MANY_CORES + 1, "2d"), (16, "2d"), (128, "2d")])
def test_default_parallel_loop_follows_the_core_count(host, cores, loop):
    """Few cores: rows (ic), each thread with its own A block, and the B block they share packed with
    non-temporal stores; many: row blocks x B micro-panels (2d), packed through the cache."""
    p = analytic.default_params(dataclasses.replace(host, cores=cores), "float32")
    assert p.parallel == loop
    assert p.stream_b == (loop == "ic")


@pytest.mark.parametrize("vendor, cores, dtype, limits", [
    ("genuineintel", 2, "float32", (64, 16, 2)), ("genuineintel", 2, "float64", (64, 16, 2)),
    ("intel", 2, "float32", (64, 16, 2)), ("genuineintel", 16, "float32", (128, 128, 1)),
    ("authenticamd", 2, "float32", (128, 128, 1)), ("authenticamd", 2, "float64", (96, 24, 1)),
    ("apple", 8, "float32", (128, 128, 1))])
def test_direct_path_limits_follow_the_vendor_core_count_and_dtype(host, vendor, cores, dtype, limits):
    """Few Intel cores pack from 64 rows or 16 Mflop on one thread and twice that on more; Zen 4's
    crossover (and 16 Xeon cores') is later, the same on any thread count, and earlier for float64
    than for float32."""
    p = analytic.default_params(dataclasses.replace(host, vendor=vendor, cores=cores), dtype)
    assert (p.direct_m, p.direct_mflops, p.direct_threaded) == limits
    assert ("_d64m16x2" in p.name) == (limits == (64, 16, 2))
    assert ("_d" in p.name) == (limits != (128, 128, 1))  # the usual float32 limits keep the usual names


@pytest.mark.parametrize("vendor, cores, distance", [
    ("genuineintel", 2, 8), ("intel", 2, 8), ("genuineintel", 16, 0), ("authenticamd", 2, 0), ("apple", 8, 0)])
def test_the_default_prefetches_a_on_few_intel_cores(host, vendor, cores, distance):
    """Few Intel cores prefetch A 8 k steps ahead (pf8 in the name); Zen 4 and 16 Xeon cores do not."""
    for dtype in ("float32", "float64"):
        p = analytic.default_params(dataclasses.replace(host, vendor=vendor, cores=cores), dtype)
        assert p.prefetch == distance and re.search(rf"_pf{distance}c?(_|$)", p.name)


def test_register_tile_for_avx512_float32():
    assert analytic.register_tile(32, 16) == (6, 64)  # 24 accumulators, 2.4 FMAs per load


def test_missing_compiler_gets_a_clear_message(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    toolchain.detect.cache_clear()
    try:
        with pytest.raises(toolchain.CompilerNotFound, match=r"\$CC=.*/nonexistent/cc.*apt-get install gcc"):
            toolchain.detect()
    finally:
        monkeypatch.undo()
        toolchain.detect.cache_clear()


def test_gcc_alone_is_given_the_cheap_vectorizer_and_only_if_it_takes_it(monkeypatch):
    """-fvect-cost-model=very-cheap is GCC's (11 on): a compiler that rejects it, or is not GCC, builds
    without it; the flags name it where it is given."""
    accepted = []
    monkeypatch.setattr(toolchain, "_accepts", lambda command, flags, prelude="": accepted.append(flags) or True)
    gcc = toolchain.Compiler(command=("gcc",), family="gcc", version="12.2.0", banner="gcc 12.2.0")
    clang = toolchain.Compiler(command=("clang",), family="clang", version="17.0.0", banner="clang 17")
    assert gcc.vectorizer_flags == ("-fvect-cost-model=very-cheap",) and "-fvect-cost-model=very-cheap" in gcc.flags
    assert clang.vectorizer_flags == () and not any(f.startswith("-fvect") for f in clang.flags)
    monkeypatch.setattr(toolchain, "_accepts", lambda command, flags, prelude="": False)
    old_gcc = toolchain.Compiler(command=("gcc-10",), family="gcc", version="10.2.0", banner="gcc 10.2.0")
    assert old_gcc.vectorizer_flags == ()
    assert ("-fvect-cost-model=very-cheap",) in accepted


def test_compile_errors_keep_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGEMM_CACHE_DIR", str(tmp_path))
    with pytest.raises(toolchain.CompileError) as info:
        toolchain.build_shared("this is not C;", "broken")
    assert info.value.source_path.read_text() == "this is not C;"
    assert not list(tmp_path.glob("*.so"))


def test_builds_are_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGEMM_CACHE_DIR", str(tmp_path))
    first = toolchain.build_shared("int f(void) { return 1; }\n", "tiny")
    assert toolchain.build_shared("int f(void) { return 1; }\n", "tiny") == first
    assert toolchain.build_shared("int f(void) { return 2; }\n", "tiny") != first


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_peak_is_measured_not_folded_away(host, dtype):
    """A folded-away loop would report absurd rates; 6 GHz x 4 FMA pipes bounds any real core."""
    lanes = 64 // (4 if dtype == "float32" else 8)
    ceiling = 6.0 * 4 * 2 * lanes
    rate = measure_peak(dtype, 1, repeats=1)
    assert 0.5 < rate < ceiling
    assert 0.5 < peak.PeakMeter(dtype, 1, seconds=0.01).read() < ceiling  # the short readings bench interleaves


def test_a_disturbed_peak_reading_never_stands(monkeypatch):
    """The tuner's %-of-peak figures use the highest reading: a reading taken while both threads shared
    one CPU (half the peak) once recorded a tuned entry at 178% of peak."""
    readings = iter([230.0, 115.0, 232.0, 50.0])
    monkeypatch.setattr(peak, "measure_peak", lambda dtype, threads, isa=None: next(readings))
    monkeypatch.setattr(peak, "_highest", {})
    assert [peak.highest_peak("float32", 2) for _ in range(3)] == [230.0, 230.0, 232.0]
    assert peak.highest_peak("float64", 2) == 50.0  # each dtype and thread count its own


def test_every_thread_of_a_peak_reading_runs(host):
    """The peak loops run on pthreads of their own, built without -fopenmp: where an OpenMP pragma was
    ignored (Apple's clang) a reading on N threads ran one and reported one core's rate as N cores' peak."""
    lib = peak._peak_library(host.best_isa_for("float32"), "float32")
    for threads in (1, 3, 2):
        assert lib.autogemm_peak_seconds(threads, 2000) > 0
        assert lib.autogemm_peak_threads_ran() == threads

