"""The system C compiler: finding it, the flags it accepts, and building cached shared libraries."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import filelock
import platformdirs

BASE_FLAGS = ("-O3", "-fPIC", "-shared", "-pthread")


class CompilerNotFound(RuntimeError):
    """No working C compiler."""


class CompileError(RuntimeError):
    """The compiler rejected a generated source; `source_path` keeps the source for inspection."""

    def __init__(self, message: str, source_path: Path | None = None):
        super().__init__(message)
        self.source_path = source_path


@dataclass(frozen=True)
class Compiler:
    command: tuple[str, ...]
    family: str
    version: str
    banner: str

    @functools.cached_property
    def arch_flags(self) -> tuple[str, ...]:
        """Tune for this CPU: -march=native, or -mcpu=native where the compiler wants that (Arm)."""
        for flag in ("-march=native", "-mcpu=native"):
            if _accepts(self.command, (flag,)):
                return (flag,)
        return ()

    @functools.cached_property
    def vectorizer_flags(self) -> tuple[str, ...]:
        """-fvect-cost-model=very-cheap where the compiler has it (GCC 11 on): GCC then vectorizes only
        loops that need no runtime checks or epilogue. The kernels' loops that count are written as
        vectors in the templates, and GCC 12 spent a fifth of each kernel's build on the rest (Zen 4:
        float32 5.3 -> 4.4 s, bfloat16 4.1 -> 3.1 s, float64 4.6 -> 3.9 s), with the kernels level within
        1% (both builds in one process: 60 shape, layout and thread cases over every dtype and ISA)."""
        flag = ("-fvect-cost-model=very-cheap",)
        return flag if self.family == "gcc" and _accepts(self.command, flag) else ()

    @functools.cached_property
    def openmp_flags(self) -> tuple[str, ...]:
        """-fopenmp if the compiler can build and link it, else (): only the llm.c-style baseline uses
        OpenMP; kernels and the peak loops thread with their own pthreads."""
        return ("-fopenmp",) if _accepts(self.command, ("-fopenmp",), "#include <omp.h>\n") else ()

    @property
    def flags(self) -> tuple[str, ...]:
        """What every kernel is built with."""
        return BASE_FLAGS + self.arch_flags + self.vectorizer_flags

    def describe(self) -> dict:
        return {"command": " ".join(self.command), "family": self.family, "version": self.version,
                "flags": " ".join(self.flags)}


def _accepts(command: tuple[str, ...], flags: tuple[str, ...], prelude: str = "") -> bool:
    with tempfile.TemporaryDirectory(prefix="autogemm-probe-") as tmp:
        src = Path(tmp, "probe.c")
        src.write_text(prelude + "int autogemm_probe(void) { return 0; }\n")
        try:
            proc = subprocess.run([*command, *BASE_FLAGS, *flags, str(src), "-o", str(Path(tmp, "p.so"))],
                                  capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return proc.returncode == 0


@functools.lru_cache(maxsize=None)
def detect() -> Compiler:
    """The compiler named by $CC, else the first of cc, gcc, clang on PATH."""
    env_cc = os.environ.get("CC", "").strip()
    candidates = [shlex.split(env_cc)] if env_cc else [["cc"], ["gcc"], ["clang"]]
    for command in candidates:
        if command and shutil.which(command[0]):
            try:
                out = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                continue
            if out.returncode == 0:
                return _identify(tuple(command), out.stdout)
    where = f"$CC={env_cc!r} was not found or does not run" if env_cc else "no cc, gcc or clang on PATH"
    raise CompilerNotFound(
        f"autogemm needs a C compiler: {where}. Install one (Debian/Ubuntu: `apt-get install gcc`, "
        "macOS: `xcode-select --install`) or point $CC at it."
    )


def _identify(command: tuple[str, ...], version_text: str) -> Compiler:
    banner = version_text.splitlines()[0].strip() if version_text else command[0]
    family = "clang" if "clang" in version_text.lower() else "gcc" if re.search(r"gcc|GCC|Free Software", version_text) else Path(command[0]).name
    match = re.search(r"(\d+\.\d+(?:\.\d+)?)", banner)
    return Compiler(command=command, family=family, version=match[1] if match else "unknown", banner=banner)


def cache_dir() -> Path:
    """Where built kernels live: $AUTOGEMM_CACHE_DIR, else the user cache directory; if that
    cannot be written, a private directory under the system's temporary directory (with a warning)."""
    chosen = Path(os.environ.get("AUTOGEMM_CACHE_DIR") or platformdirs.user_cache_dir("autogemm"))
    try:
        chosen.mkdir(parents=True, exist_ok=True)
        if os.access(chosen, os.W_OK):
            return chosen
        problem = "is not writable"
    except OSError as exc:
        problem = f"cannot be created ({exc.strerror or exc})"
    fallback = Path(tempfile.gettempdir()) / f"autogemm-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    fallback.mkdir(mode=0o700, parents=True, exist_ok=True)
    warnings.warn(f"autogemm: the kernel cache {chosen} {problem}; using {fallback} "
                  "(set AUTOGEMM_CACHE_DIR to choose another)", stacklevel=3)
    return fallback


def compile_library(source_path: Path, library: Path, compiler: Compiler | None = None,
                    extra_flags: tuple[str, ...] = ()) -> Path:
    """Compiles one C file into a shared library that appears at `library` by an atomic rename.

    A failure raises CompileError naming the source, which is left where it is.
    """
    compiler = compiler or detect()
    fd, tmp = tempfile.mkstemp(prefix=f".{library.stem}-", suffix=".so.tmp", dir=library.parent)
    os.close(fd)
    try:
        try:
            proc = subprocess.run([*compiler.command, *compiler.flags, *extra_flags, str(source_path), "-o", tmp, "-lm"],
                                  capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as exc:
            raise CompileError(f"compiling {source_path} took over 600 s (source kept)", source_path) from exc
        if proc.returncode != 0:
            raise CompileError(f"{compiler.command[0]} failed on {source_path} (source kept):\n{proc.stderr[-4000:]}",
                               source_path)
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


def build_shared(source: str, name: str, compiler: Compiler | None = None, extra_flags: tuple[str, ...] = (),
                 cache_key: str | None = None) -> Path:
    """Compiles `source` into a shared library, cached by a hash of source, compiler and flags, or
    by `cache_key` when given (the compiler is then looked for only if the library is not built yet).

    Concurrent builders of the same source wait on a file lock; the library appears by an atomic
    rename, so no process ever loads a half-written file. A failed build raises CompileError and
    keeps the source next to the cache for inspection.
    """
    if cache_key is None:
        compiler = compiler or detect()
        parts = [source, compiler.banner, *compiler.command, *compiler.flags, *extra_flags]
        cache_key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    directory = cache_dir()
    library = directory / f"{name}-{cache_key}.so"
    if library.exists():
        return library
    with filelock.FileLock(str(library) + ".lock", timeout=600):
        if library.exists():
            return library
        source_path = directory / f"{name}-{cache_key}.c"
        source_path.write_text(source)
        compile_library(source_path, library, compiler, tuple(extra_flags))
        source_path.unlink()
    return library
