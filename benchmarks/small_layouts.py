"""Small GEMMs as whole Python calls into a preallocated `out`, in the four layouts of A and B
(NN, TN, NT, TT: T a transposed view), autogemm.matmul against numpy.matmul, interleaved: each figure
is the median over rounds of numpy's time over autogemm's (above 1: autogemm is faster).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/small_layouts.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import autogemm

SHAPES = [(8, 8, 8), (32, 32, 32), (64, 64, 64), (100, 100, 100), (128, 128, 128), (200, 200, 200),
          (17, 129, 71), (199, 37, 151), (1, 768, 768), (64, 768, 768)]


def operands(rng, shape, layout, dtype):
    """A (m x k) and B (k x n), each a transposed view where `layout` says T."""
    m, n, k = shape
    a = rng.standard_normal((k, m)).astype(dtype).T if layout[0] == "T" else rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T if layout[1] == "T" else rng.standard_normal((k, n)).astype(dtype)
    return a, b


def seconds_per_call(call, calls: int) -> float:
    call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"numpy time / autogemm time, {args.dtype}, {args.threads} thread(s), into out=")
    with threadpool_limits(args.threads):
        for layout in ("NN", "TN", "NT", "TT"):
            cells = []
            for shape in SHAPES:
                a, b = operands(rng, shape, layout, args.dtype)
                out = np.empty(shape[:2], args.dtype)
                calls = max(3, int(2e7 / (2 * np.prod(shape) + 2e4)))  # about 20 ms of numpy a turn
                ours = lambda: autogemm.matmul(a, b, out=out, threads=args.threads)  # noqa: E731
                theirs = lambda: np.matmul(a, b, out=out)  # noqa: E731
                ratios = []
                for turn in range(args.rounds):
                    if turn % 2:
                        theirs_s, ours_s = seconds_per_call(theirs, calls), seconds_per_call(ours, calls)
                    else:
                        ours_s, theirs_s = seconds_per_call(ours, calls), seconds_per_call(theirs, calls)
                    ratios.append(theirs_s / ours_s)
                cells.append(f"{'x'.join(map(str, shape))} {statistics.median(ratios):.2f}")
            print(layout, ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
