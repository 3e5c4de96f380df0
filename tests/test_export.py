"""The exported C stands alone: plain cc compiles it, a C driver calls it, numpy agrees."""

import subprocess

import numpy as np
import pytest

import autogemm
from autogemm import machine
from autogemm.check import error_ratio

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "autogemm_%(p)sgemm.h"
static T *slurp(const char *path, size_t count) {
    T *buf = malloc(count * sizeof(T) + 1);
    FILE *f = fopen(path, "rb");
    if (!f || fread(buf, sizeof(T), count, f) != count) { perror(path); exit(2); }
    fclose(f);
    return buf;
}
int main(int argc, char **argv) {
    int ta = atoi(argv[1]), tb = atoi(argv[2]);
    ptrdiff_t m = atol(argv[3]), n = atol(argv[4]), k = atol(argv[5]);
    ptrdiff_t lda = atol(argv[6]), ldb = atol(argv[7]), ldc = atol(argv[8]);
    T alpha = (T)atof(argv[9]), beta = (T)atof(argv[10]);
    size_t na = atol(argv[11]), nb = atol(argv[12]), nc = atol(argv[13]);
    T *a = slurp("a.bin", na), *b = slurp("b.bin", nb), *c = slurp("c.bin", nc);
    autogemm_%(p)sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    FILE *f = fopen("out.bin", "wb");
    fwrite(c, sizeof(T), nc, f);
    fclose(f);
    return 0;
}
"""


@pytest.fixture(scope="module", params=["float32", "float64"])
def program(request, tmp_path_factory):
    dtype = request.param
    directory = tmp_path_factory.mktemp(f"export-{dtype}")
    written = autogemm.export(dtype, directory)
    letter = "s" if dtype == "float32" else "d"
    assert [p.name for p in written] == [f"autogemm_{letter}gemm.c", f"autogemm_{letter}gemm.h"]
    header = written[1].read_text()
    assert f"void autogemm_{letter}gemm(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k" in header
    ctype = "float" if dtype == "float32" else "double"
    (directory / "driver.c").write_text(f"#define T {ctype}\n" + DRIVER % {"p": letter})
    cc = machine.detect().compiler
    flags = ["-O3", *cc.arch_flags, *cc.openmp_flags]
    # The header must agree with the definitions: compile the source with its header included first.
    (directory / "check_header.c").write_text(f'#include "autogemm_{letter}gemm.h"\n#include "autogemm_{letter}gemm.c"\n')
    subprocess.run([*cc.command, *flags, "-Werror=implicit-function-declaration", "-c", "check_header.c", "-o",
                    "check_header.o"], check=True, cwd=directory)
    for src in (written[0], directory / "driver.c"):
        subprocess.run([*cc.command, *flags, "-c", str(src), "-o", str(src.with_suffix(".o"))], check=True,
                       cwd=directory)
    subprocess.run([*cc.command, *flags, "driver.o", written[0].with_suffix(".o").name, "-o", "driver"],
                   check=True, cwd=directory)
    return dtype, directory


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("m, n, k, alpha, beta", [(37, 45, 29, 1.0, 0.0), (1, 200, 3, -2.0, 0.5),
                                                 (130, 1, 257, 0.5, 1.0), (5, 7, 0, 1.0, 0.0)])
def test_exported_c_matches_numpy(program, trans_a, trans_b, m, n, k, alpha, beta):
    dtype, directory = program
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
    c_buf = rng.uniform(-1, 1, (m, ldc)).astype(dtype)
    if beta == 0:
        c_buf[:, :n] = np.nan
    c_before = c_buf.copy()
    for name, arr in (("a", a_buf), ("b", b_buf), ("c", c_buf)):
        arr.tofile(directory / f"{name}.bin")
    subprocess.run(["./driver", str(trans_a), str(trans_b), str(m), str(n), str(k), str(lda), str(ldb), str(ldc),
                    repr(alpha), repr(beta), str(a_buf.size), str(b_buf.size), str(c_buf.size)],
                   check=True, cwd=directory, env={"OMP_NUM_THREADS": "2"})
    out = np.fromfile(directory / "out.bin", dtype).reshape(m, ldc)
    assert error_ratio(out[:, :n], op_a, op_b, c_before[:, :n], alpha, beta, dtype) <= 1
    np.testing.assert_array_equal(out[:, n:], c_before[:, n:])  # padding beyond n untouched


def test_export_command_writes_files(tmp_path):
    from autogemm.cli import main

    assert main(["export", "--dtype", "float64", "-o", str(tmp_path)]) == 0
    source = (tmp_path / "autogemm_dgemm.c").read_text()
    assert "Do not edit" in source and "autogemm_dgemm_bench" not in source
