"""libautogemm_blas: the reference BLAS level-3 testers for GEMM, and linking it directly."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import autogemm
from autogemm import machine

TESTERS = Path("/usr/lib/x86_64-linux-gnu/blas")
OTHER_ROUTINES = ("SYMM", "TRMM", "TRSM", "SYRK", "SYR2K")


@pytest.fixture(scope="module")
def blas(tmp_path_factory):
    directory = tmp_path_factory.mktemp("blas")
    paths = autogemm.export_blas(directory)
    assert [p.name for p in paths] == ["autogemm_blas.c", "autogemm_blas.h", "libautogemm_blas.so"]
    return directory


def _gemm_only(template: Path, destination: Path) -> Path:
    """The tester's input with every routine but GEMM switched off."""
    lines = []
    for line in template.read_text().splitlines():
        name = line.split(" ")[0].upper()
        if any(name.endswith(r) for r in OTHER_ROUTINES) and (name[:1] in "SD" or name.startswith("CBLAS_")):
            line = line.replace(" T ", " F ", 1)
        lines.append(line)
    destination.write_text("\n".join(lines) + "\n")
    return destination


@pytest.mark.parametrize("tester, inputs, expect", [
    ("xblat3s", "sblat3.in", ["SGEMM  PASSED THE TESTS OF ERROR-EXITS", "SGEMM  PASSED THE COMPUTATIONAL TESTS"]),
    ("xblat3d", "dblat3.in", ["DGEMM  PASSED THE TESTS OF ERROR-EXITS", "DGEMM  PASSED THE COMPUTATIONAL TESTS"]),
    ("xscblat3", "sin3", ["cblas_sgemm  PASSED THE TESTS OF ERROR-EXITS",
                          "cblas_sgemm  PASSED THE COLUMN-MAJOR COMPUTATIONAL TESTS",
                          "cblas_sgemm  PASSED THE ROW-MAJOR    COMPUTATIONAL TESTS"]),
    ("xdcblat3", "din3", ["cblas_dgemm  PASSED THE TESTS OF ERROR-EXITS",
                          "cblas_dgemm  PASSED THE COLUMN-MAJOR COMPUTATIONAL TESTS",
                          "cblas_dgemm  PASSED THE ROW-MAJOR    COMPUTATIONAL TESTS"]),
])
def test_reference_blas_testers_pass_with_the_library_preloaded(blas, tmp_path, tester, inputs, expect):
    program = TESTERS / tester
    if not program.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{program} is missing: .ci/run installs Debian's libblas-test")
        pytest.skip("Debian's libblas-test is not installed (apt-get install libblas-test)")
    stdin = _gemm_only(TESTERS / inputs, tmp_path / inputs).read_text()
    env = {**os.environ, "LD_PRELOAD": str(blas / "libautogemm_blas.so"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([str(program)], input=stdin, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    report = proc.stdout + proc.stderr + "".join(p.read_text() for p in tmp_path.glob("*.out"))
    for line in expect:
        assert line in report, report[-3000:]
    assert "FAIL" not in report


CALLER = r"""
#include <stdio.h>
#include "autogemm_blas.h"
int main(void) {
    float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {7, 8, 9, 10, 11, 12}, c[4] = {0};
    /* row-major: (2x3) @ (3x2) */
    cblas_sgemm(101, 111, 111, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2);
    printf("%g %g %g %g\n", c[0], c[1], c[2], c[3]);
    double da[4] = {1, 2, 3, 4}, db[4] = {5, 6, 7, 8}, dc[4] = {1, 1, 1, 1};
    int n = 2; double one = 1.0;
    dgemm_("T", "N", &n, &n, &n, &one, da, &n, db, &n, &one, dc, &n);   /* column-major, A^T B + C */
    printf("%g %g %g %g\n", dc[0], dc[1], dc[2], dc[3]);
    int bad = -1; float f1 = 1.0f;
    sgemm_("N", "N", &bad, &n, &n, &f1, a, &n, b, &n, &f1, c, &n);     /* reported through xerbla_ */
    return 0;
}
"""


def test_linking_with_lautogemm_blas(blas):
    (blas / "caller.c").write_text(CALLER)
    cc = machine.detect().compiler
    subprocess.run([*cc.command, "caller.c", "-o", "caller", "-L.", "-lautogemm_blas", "-Wl,-rpath,$ORIGIN"],
                   check=True, cwd=blas)
    proc = subprocess.run(["./caller"], capture_output=True, text=True, check=True, cwd=blas)
    rows = [list(map(float, line.split())) for line in proc.stdout.splitlines()]
    a, b = np.arange(1, 7.0).reshape(2, 3), np.arange(7, 13.0).reshape(3, 2)
    assert rows[0] == (a @ b).ravel().tolist()
    da, db = np.arange(1, 5.0).reshape(2, 2, order="F"), np.arange(5, 9.0).reshape(2, 2, order="F")
    assert rows[1] == (da.T @ db + 1).ravel(order="F").tolist()
    assert "parameter number 3" in proc.stderr and "SGEMM" in proc.stderr
