"""Cliffs: random shapes in random layouts, autogemm.matmul against numpy.matmul as whole Python calls
(`bench.compare_calls`, interleaved, with pauses for OpenBLAS's spinning threads); prints the lowest
ratios (numpy's time over autogemm's: below 1, autogemm is slower) and the median.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/random_shapes.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from autogemm import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--count", type=int, default=120, help="shapes")
    parser.add_argument("--largest", type=int, default=1500, help="the largest side (sides are log-uniform from 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=12, help="the lowest ratios shown")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    results = []
    for _ in range(args.count):
        shape = tuple(int(np.exp(rng.uniform(0, np.log(args.largest)))) for _ in range(3))
        layout = str(rng.choice(bench.LAYOUTS))
        rows = bench.compare_calls(shape, args.dtype, args.threads, layout=layout, rounds=3, peak=1.0)
        ours = next(r for r in rows if r.impl == "matmul")
        results.append((ours.vs_numpy, shape, layout, ours.gflops["median"]))
    results.sort()
    print(f"{args.dtype}, {args.threads} thread(s), {args.count} shapes (seed {args.seed}): numpy time / autogemm time")
    for ratio, (m, n, k), layout, gflops in results[:args.show]:
        print(f"{ratio:6.2f}  {m}x{n}x{k} {layout}  ({gflops:.1f} GFLOP/s)")
    print(f"median {statistics.median(r[0] for r in results):.2f}, "
          f"below 0.8: {sum(r[0] < 0.8 for r in results)} of {len(results)}")


if __name__ == "__main__":
    main()
