"""A non-editable install carries the templates inside the wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_templates(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True)
    wheel = next(tmp_path.glob("autogemm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in ("gemm.c.j2", "gemm.h.j2", "peak.c.j2", "ukernel/avx512.c.j2", "ukernel/avx2.c.j2",
                     "ukernel/portable.c.j2", "partials/harness.c.j2", "README.md"):
        assert f"autogemm/templates/{template}" in names, template
