"""What this machine is: CPU microarchitecture and features, usable ISAs, caches, cores, compiler."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import archspec.cpu
import archspec.cpu.detect

from . import toolchain


@dataclass(frozen=True)
class Cache:
    """One data cache level, as one core sees it."""

    size: int
    ways: int
    line: int

    @property
    def sets(self) -> int:
        return max(1, self.size // (self.ways * self.line))


X86_ARCHS = ("x86_64", "AMD64", "i686")

# Used only where the OS reports nothing: a common modern core.
_FALLBACK_CACHES = {1: Cache(32 * 1024, 8, 64), 2: Cache(1024 * 1024, 8, 64), 3: Cache(8 * 1024 * 1024, 16, 64)}


@dataclass(frozen=True)
class Machine:
    arch: str
    microarch: str
    vendor: str
    model: str
    features: frozenset = field(repr=False)
    cores: int
    caches: dict = field(repr=False)
    compiler: toolchain.Compiler = field(repr=False)

    @property
    def isas(self) -> tuple[str, ...]:
        """ISAs whose templates this CPU can run, best first. The portable one always works."""
        found = []
        if "avx512f" in self.features:
            found.append("avx512")
        if {"avx2", "fma"} <= self.features:
            found.append("avx2")
        found.append("portable")
        return tuple(found)

    @property
    def best_isa(self) -> str:
        """The best ISA for float32 and float64 (the one the machine id names)."""
        return self.isas[0]

    def isas_for(self, dtype: str) -> tuple[str, ...]:
        """ISAs that can compute `dtype`, best first: bfloat16 adds AMX tiles (tdpbf16ps) where the CPU
        has them and the OS lets this process use them, and vdpbf16ps where the CPU has it, and
        otherwise runs on the float32 kernels, widening while it packs."""
        if dtype == "bfloat16" and "avx512_bf16" in self.features and "avx512f" in self.features:
            amx = ("amxbf16",) if {"amx_bf16", "amx_tile"} <= self.features and amx_permitted() else ()
            return amx + ("avx512bf16",) + self.isas
        return self.isas

    def best_isa_for(self, dtype: str) -> str:
        return self.isas_for(dtype)[0]

    @property
    def machine_id(self) -> str:
        """Stable key for tuned results: microarchitecture, ISA, cores, compiler and its version."""
        parts = [self.microarch]
        if self.model:
            parts.append(self.model)
        parts += [self.best_isa, f"{self.cores}c", f"{self.compiler.family}{self.compiler.version}"]
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "-".join(parts))

    def supports(self, isa: str) -> bool:
        """Whether this CPU runs `isa` for some dtype (bfloat16's list holds every other one)."""
        return isa in self.isas_for("bfloat16")

    def describe(self) -> dict:
        return {
            "machine_id": self.machine_id,
            "arch": self.arch,
            "microarch": self.microarch,
            "vendor": self.vendor,
            "model": self.model,
            "isas": list(self.isas),
            "cores": self.cores,
            "caches": {f"L{level}": c.size for level, c in sorted(self.caches.items())},
            "compiler": self.compiler.describe(),
        }


#: Linux x86-64: arch_prctl's system call number, its request for permission to use an extended state
#: component, and AMX tile data's component number (Documentation/arch/x86/xstate.rst).
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


@functools.lru_cache(maxsize=1)
def amx_permitted() -> bool:
    """Whether Linux lets this process use AMX tile data, asking once (from 5.16 a process must ask;
    the permission then holds for all its threads, and the kernels ask again themselves)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


@functools.lru_cache(maxsize=1)
def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one), read once."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)", text.upper())
    if not match:
        return 0
    return int(match[1]) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match[2]]


def _linux_caches() -> dict[int, Cache]:
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        if _read(index / "type") not in ("Data", "Unified"):
            continue
        size = _parse_size(_read(index / "size"))
        level = _read(index / "level")
        if size and level.isdigit():
            ways = int(_read(index / "ways_of_associativity") or 0) or 8
            line = int(_read(index / "coherency_line_size") or 0) or 64
            caches[int(level)] = Cache(size, ways, line)
    return caches


def _darwin_caches() -> dict[int, Cache]:
    caches = {}
    for level, key in ((1, "hw.l1dcachesize"), (2, "hw.l2cachesize"), (3, "hw.l3cachesize")):
        try:
            out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if out.strip().isdigit() and int(out):
            caches[level] = Cache(int(out), _FALLBACK_CACHES[level].ways, 128 if level == 1 else 64)
    return caches


def detect_caches() -> dict[int, Cache]:
    found = _linux_caches() or _darwin_caches()
    return {level: found.get(level, default) for level, default in _FALLBACK_CACHES.items()}


def cpu_model(cpuinfo: str) -> str:
    """Vendor, family and model from /proc/cpuinfo's text, as `intel-f6m207`; the vendor alone
    where the text has no family and model, empty where it has neither."""
    vendor = vendor_from_cpuinfo(cpuinfo)
    family = re.search(r"^cpu family\s*:\s*(\d+)", cpuinfo, re.M)
    model = re.search(r"^model\s*:\s*(\d+)", cpuinfo, re.M)
    if not (family and model):
        return vendor
    return f"{vendor}-f{family[1]}m{model[1]}".strip("-")


@functools.lru_cache(maxsize=None)
def detect() -> Machine:
    """Detects this machine once per process."""
    host = archspec.cpu.host()
    arch = platform.machine()
    generic = host.vendor == "generic" or host.name.startswith(("x86_64", "aarch64", "ppc64", "riscv"))
    cpuinfo = _read(Path("/proc/cpuinfo"))
    return Machine(
        arch=arch,
        microarch=host.name,
        vendor=str(host.vendor).lower() if host.vendor != "generic" else vendor_from_cpuinfo(cpuinfo),
        # On x86 the family/model joins archspec's name, which a VM can make ambiguous: with waitpkg
        # hidden, two Xeon generations (family 6 models 207 and 167 under KVM) are both "icelake".
        model=cpu_model(cpuinfo) if generic or arch in X86_ARCHS else "",
        # The named microarchitecture lists only its canonical features; what this CPU reports
        # (avx512_bf16 on a Zen 4 seen as x86_64_v4, say) comes from the raw detection.
        features=frozenset(host.features) | frozenset(archspec.cpu.detect.detected_info().features),
        cores=available_cores(),
        caches=detect_caches(),
        compiler=toolchain.detect(),
    )


def vendor_from_cpuinfo(cpuinfo: str) -> str:
    match = re.search(r"^vendor_id\s*:\s*(\S+)", cpuinfo, re.M)
    return {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(match[1], match[1].lower()) if match else ""
