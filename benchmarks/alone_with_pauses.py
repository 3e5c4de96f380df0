"""One build of the default kernel, alone in its process: median GFLOP/s of calls PAUSE ms apart.

For changes to the helper threads' waiting, where ab_templates.py (both builds in one process) is
biased: each build's helpers spin beside the other's calls. Run the two builds in turn, repeatedly:

    git worktree add /tmp/before <commit>
    for i in 1 2 3; do for build in /tmp/before here; do
        .venv/bin/python benchmarks/alone_with_pauses.py $build --shape 256 --threads 2 --pause 0.3
    done; done
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ab_templates import build_from
from autogemm import analytic, api, bench, machine
from autogemm.workload import Problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", help="'here', or a checkout whose templates render the kernel")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--shape", type=int, default=256, help="n of an n^3 GEMM")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.3, help="milliseconds before each call")
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    params = analytic.default_params(machine.detect(), args.dtype)
    kernel = api.build(params) if args.build == "here" else build_from(args.build, params)
    n = args.shape
    a, b, c, _ = bench.operands(Problem(n, n, n), args.dtype, np.random.default_rng(0))
    kernel.bench(a, b, threads=args.threads, warmup=3, reps=1, c=c)
    gflops = []
    for _ in range(args.calls):
        time.sleep(args.pause / 1000)
        gflops.append(2.0 * n**3 / kernel.bench(a, b, threads=args.threads, warmup=0, reps=1, c=c)[0] * 1e-9)
    print(f"{args.build} {n}^3 t{args.threads} {args.pause} ms apart: median {np.median(gflops):.1f} GFLOP/s "
          f"(p20 {np.percentile(gflops, 20):.1f}, p80 {np.percentile(gflops, 80):.1f}) over {args.calls} calls")


if __name__ == "__main__":
    main()
