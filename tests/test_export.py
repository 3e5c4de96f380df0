"""The exported C stands alone: plain cc compiles it, a C driver calls it, numpy agrees."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import autogemm
from autogemm import analytic, machine, params as kernel_params
from autogemm.check import error_ratio

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "autogemm_%(p)sgemm.h"
static void *slurp(const char *path, size_t count, size_t size) {
    void *buf = malloc(count * size + 1);
    FILE *f = fopen(path, "rb");
    if (!f || fread(buf, size, count, f) != count) { perror(path); exit(2); }
    fclose(f);
    return buf;
}
int main(int argc, char **argv) {
    int ta = atoi(argv[1]), tb = atoi(argv[2]);
    ptrdiff_t m = atol(argv[3]), n = atol(argv[4]), k = atol(argv[5]);
    ptrdiff_t lda = atol(argv[6]), ldb = atol(argv[7]), ldc = atol(argv[8]);
    T alpha = (T)atof(argv[9]), beta = (T)atof(argv[10]);
    size_t na = atol(argv[11]), nb = atol(argv[12]), nc = atol(argv[13]);
    TI *a = slurp("a.bin", na, sizeof(TI)), *b = slurp("b.bin", nb, sizeof(TI));
    T *c = slurp("c.bin", nc, sizeof(T));
    autogemm_%(p)sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    FILE *f = fopen("out.bin", "wb");
    fwrite(c, sizeof(T), nc, f);
    fclose(f);
    return 0;
}
"""


ARM_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"


def arm_machine():
    """A 64-bit Arm CPU (NEON, 32 vector registers), as an Apple M or Neoverse core looks to us."""
    host = machine.detect()
    return machine.Machine(arch="aarch64", microarch="neoverse_n1", vendor="arm", model="", features=frozenset({"asimd"}),
                           cores=2, caches=host.caches, compiler=host.compiler)


def _build(directory, letter, command, flags):
    for src in (f"autogemm_{letter}gemm.c", "driver.c"):
        subprocess.run([*command, *flags, "-c", src, "-o", src[:-2] + ".o"], check=True, cwd=directory)
    subprocess.run([*command, *flags, "driver.o", f"autogemm_{letter}gemm.o", "-o", "driver"], check=True,
                   cwd=directory)


@pytest.fixture(scope="module", params=[(dtype, target) for target in ("host", "aarch64") for dtype in kernel_params.DTYPES],
                ids=lambda p: "-".join(p))
def program(request, tmp_path_factory):
    """The exported C built with plain cc for this machine, or cross-built for 64-bit Arm from the
    portable template and run under qemu (Apple Silicon and Arm servers take that template)."""
    dtype, target = request.param
    directory = tmp_path_factory.mktemp(f"export-{dtype}-{target}")
    params = None
    if target == "aarch64":
        if not (shutil.which(ARM_CC) and shutil.which(QEMU)):
            if os.environ.get("CI"):
                pytest.fail(f"{ARM_CC} and {QEMU} are missing: .ci/run installs them")
            pytest.skip("no aarch64 cross compiler and qemu (apt-get install gcc-aarch64-linux-gnu qemu-user)")
        params = analytic.default_params(arm_machine(), dtype)
        assert params.isa == "portable"
    written = autogemm.export(dtype, directory, params=params)
    letter = kernel_params.BLAS_LETTER[dtype]
    assert [p.name for p in written] == [f"autogemm_{letter}gemm.c", f"autogemm_{letter}gemm.h"]
    header = written[1].read_text()
    assert f"void autogemm_{letter}gemm(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k" in header
    ctype = "double" if dtype == "float64" else "float"
    itype = "uint16_t" if dtype == "bfloat16" else ctype  # bfloat16 travels as its bit pattern
    (directory / "driver.c").write_text(f"#define T {ctype}\n#define TI {itype}\n" + DRIVER % {"p": letter})
    if target == "aarch64":
        _build(directory, letter, [ARM_CC], ["-O3", "-march=armv8-a", "-pthread", "-static"])
        return dtype, directory, [QEMU]
    cc = machine.detect().compiler
    flags = ["-O3", *cc.arch_flags, "-pthread"]
    # The header must agree with the definitions: compile the source with its header included first.
    (directory / "check_header.c").write_text(f'#include "autogemm_{letter}gemm.h"\n#include "autogemm_{letter}gemm.c"\n')
    subprocess.run([*cc.command, *flags, "-Werror=implicit-function-declaration", "-c", "check_header.c", "-o",
                    "check_header.o"], check=True, cwd=directory)
    _build(directory, letter, cc.command, flags)
    return dtype, directory, []


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("m, n, k, alpha, beta", [(37, 45, 29, 1.0, 0.0), (1, 200, 3, -2.0, 0.5), (300, 3, 200, 1.0, 0.0),
                                                 (130, 1, 257, 0.5, 1.0), (5, 7, 0, 1.0, 0.0)])
def test_exported_c_matches_numpy(program, trans_a, trans_b, m, n, k, alpha, beta):
    dtype, directory, runner = program
    out_dtype = kernel_params.accumulator_dtype(dtype)
    rng = np.random.default_rng(m * 1000 + n + k)
    op_a = rng.uniform(-1, 1, (m, k)).astype(dtype)
    op_b = rng.uniform(-1, 1, (k, n)).astype(dtype)
    stored_a = op_a.T if trans_a else op_a
    stored_b = op_b.T if trans_b else op_b
    lda, ldb, ldc = stored_a.shape[1] + 3, stored_b.shape[1] + 2, n + 1
    a_buf = np.zeros((stored_a.shape[0], lda), dtype)
    a_buf[:, : stored_a.shape[1]] = stored_a
    b_buf = np.zeros((stored_b.shape[0], ldb), dtype)
    b_buf[:, : stored_b.shape[1]] = stored_b
    c_buf = rng.uniform(-1, 1, (m, ldc)).astype(out_dtype)
    if beta == 0:
        c_buf[:, :n] = np.nan
    c_before = c_buf.copy()
    for name, arr in (("a", a_buf), ("b", b_buf), ("c", c_buf)):
        arr.tofile(directory / f"{name}.bin")
    subprocess.run([*runner, "./driver", str(trans_a), str(trans_b), str(m), str(n), str(k), str(lda), str(ldb), str(ldc),
                    repr(alpha), repr(beta), str(a_buf.size), str(b_buf.size), str(c_buf.size)],
                   check=True, cwd=directory, env={"OMP_NUM_THREADS": "2"})
    out = np.fromfile(directory / "out.bin", out_dtype).reshape(m, ldc)
    assert error_ratio(out[:, :n], op_a, op_b, c_before[:, :n], alpha, beta, dtype) <= 1
    np.testing.assert_array_equal(out[:, n:], c_before[:, n:])  # padding beyond n untouched


def test_export_command_writes_files(tmp_path):
    from autogemm.cli import main

    assert main(["export", "--dtype", "float64", "-o", str(tmp_path)]) == 0
    source = (tmp_path / "autogemm_dgemm.c").read_text()
    assert "Do not edit" in source and "autogemm_dgemm_bench" not in source


THREAD_COUNT = r"""
import os, sys, cffi, numpy as np
ffi = cffi.FFI()
ffi.cdef("void autogemm_sgemm(int, int, ptrdiff_t, ptrdiff_t, ptrdiff_t, float, const float *, ptrdiff_t,"
         " const float *, ptrdiff_t, float, float *, ptrdiff_t);")
lib = ffi.dlopen(sys.argv[1])
a = np.ones((400, 400), np.float32)
c = np.zeros((400, 400), np.float32)
before = len(os.listdir("/proc/self/task"))
pointer = lambda x: ffi.cast("float *", x.ctypes.data)
lib.autogemm_sgemm(0, 0, 400, 400, 400, 1.0, pointer(a), 400, pointer(a), 400, 0.0, pointer(c), 400)
assert (c == 400).all()
print(len(os.listdir("/proc/self/task")) - before)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
@pytest.mark.parametrize("env, helpers", [({"AUTOGEMM_NUM_THREADS": "3", "OMP_NUM_THREADS": "2"}, 2),
                                          ({"OMP_NUM_THREADS": "2,1"}, 1),
                                          ({"AUTOGEMM_NUM_THREADS": "1"}, 0)])
def test_exported_c_takes_its_thread_count_from_the_environment(tmp_path, env, helpers):
    """Without Python, the thread count comes from AUTOGEMM_NUM_THREADS, else OMP_NUM_THREADS (its
    first number), else the CPUs: a call starts threads - 1 helpers. The process exits cleanly,
    although cffi unloads the library at exit while its helpers run (the library pins itself)."""
    autogemm.export("float32", tmp_path, params=analytic.default_params(machine.detect(), "float32"))
    cc = machine.detect().compiler
    subprocess.run([*cc.command, "-O2", *cc.arch_flags, "-pthread", "-shared", "-fPIC", "autogemm_sgemm.c", "-o",
                    "libag.so"], check=True, cwd=tmp_path)
    clean = {k: v for k, v in os.environ.items() if k not in ("AUTOGEMM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", THREAD_COUNT, str(tmp_path / "libag.so")], env={**clean, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == helpers
