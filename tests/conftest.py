import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from autogemm import machine


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Kernels built by the tests go to a cache of their own, never the user's; pytest-xdist's workers
    share one (in the run's directory, above each worker's), as builds of one kernel are safe to race."""
    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.getbasetemp()
    run = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    mp.setenv("AUTOGEMM_CACHE_DIR", str(run / "kernel-cache"))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def host():
    return machine.detect()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def random_matrix(rng, shape, dtype, layout="C"):
    """A random (never zero) matrix of `shape` in one of several memory layouts, as a view."""
    m, n = shape
    if layout == "C":
        return rng.uniform(-1, 1, (m, n)).astype(dtype)
    if layout == "F":
        return np.asfortranarray(rng.uniform(-1, 1, (m, n)).astype(dtype))
    if layout == "T":  # transposed view of a C-ordered array
        return rng.uniform(-1, 1, (n, m)).astype(dtype).T
    if layout == "strided":  # every other row and third column of a bigger array
        return rng.uniform(-1, 1, (2 * m + 1, 3 * n + 2)).astype(dtype)[::2, ::3][:m, :n]
    if layout == "negative":  # reversed rows and columns
        return rng.uniform(-1, 1, (m, n)).astype(dtype)[::-1, ::-1]
    raise ValueError(layout)


LAYOUTS = ("C", "F", "T", "strided", "negative")


def benchmark_script(name):
    """A script of benchmarks/ loaded as a module (they are not a package)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def route(kernel, *shape, **strides_and_threads):
    """kernel.path without the last columns it leaves to a path of their own: the path its limits choose."""
    return kernel.path(*shape, **strides_and_threads).split(" + ")[0]
