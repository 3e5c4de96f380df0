"""A/B of two versions of the templates: one kernel rendered by each, timed in one process.

On a noisy VM, kernels timed in separate processes drift with the host between runs. Here both
builds live in one process and their calls alternate (A B B A A B ...), each call timed inside C,
so drift hits both alike; the figure that counts is the median of the per-pair ratios. `--pause MS`
sleeps before each turn, as a program does between its GEMMs, so that idle helper threads fall asleep;
`--burst N` makes each turn N untimed calls and N timed ones, counted by their median (two threads on
small GEMMs: `--burst 5 --pause 4`, so that neither build's call shares a core with the other's helper).

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/ab_templates.py /tmp/before --dtype float32 --shape 2048 --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from autogemm import analytic, api, bench, machine, toolchain
from autogemm.kernel import Kernel
from autogemm.params import KernelParams
from autogemm.workload import Problem

#: Renders in the other checkout; parameters that its KernelParams does not have yet are left out, so
#: that it builds the kernel as it was before they existed.
_RENDER = ("import dataclasses, json, sys; sys.path.insert(0, sys.argv[1]); from autogemm import params, render; "
           "known = {f.name for f in dataclasses.fields(params.KernelParams)}; "
           "given = {k: v for k, v in json.loads(sys.argv[2]).items() if k in known}; "
           "print(render.render_gemm(params.KernelParams.from_dict(given), harness=True), end='')")


def build_from(checkout: str, params: KernelParams) -> Kernel:
    """`params` rendered by the templates of another checkout, compiled and loaded here."""
    source = subprocess.run([sys.executable, "-c", _RENDER, checkout, json.dumps(params.to_dict())],
                            capture_output=True, text=True, check=True).stdout
    return Kernel(params, machine.detect(), toolchain.build_shared(source, params.name), source)


def alternate(before: Kernel, after: Kernel, shape, threads: int, pairs: int, seed: int = 0,
              pause: float = 0.0, burst: int = 1, layout: str = "nn") -> dict:
    """GFLOP/s of both kernels in pairs of turns whose order flips each time, each turn `pause`
    seconds after the one before: one timed call, or with `burst` > 1 that many calls untimed and
    then that many timed, counted by their median. Bursts 3 ms or more apart suit two threads on
    small GEMMs: each build has its own helper threads, which spin 2 ms after a call, so single
    calls alternated make one build's call share a core with the other's spinning helper. `layout`
    "tn" stores A as k x m and multiplies its transpose, "nt" likewise B, "tt" both."""
    m, n, k = shape
    trans = {"trans_a": layout[0] == "t", "trans_b": layout[1] == "t"}
    a, b, c, _ = bench.operands(Problem(m, n, k, **trans), before.params.dtype, np.random.default_rng(seed))
    kernels = {"before": before, "after": after}
    for kernel in kernels.values():
        kernel.bench(a, b, threads=threads, warmup=1, reps=1, c=c, **trans)
    gflops = {name: [] for name in kernels}
    for i in range(pairs):
        for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
            if pause:
                time.sleep(pause)
            seconds = kernels[name].bench(a, b, threads=threads, warmup=burst if burst > 1 else 0, reps=burst, c=c,
                                          **trans)
            gflops[name].append(2.0 * m * n * k / float(np.median(seconds)) * 1e-9)
    ratios = np.array(gflops["after"]) / np.array(gflops["before"])
    return {"kernel": after.params.name, "shape": list(shape), "layout": layout, "threads": threads, "pairs": pairs,
            "before": float(np.median(gflops["before"])), "after": float(np.median(gflops["after"])),
            "ratio": bench.stats(list(ratios))}


def _value(text: str):
    """A --set value: JSON (768, true) or, failing that, the word itself (2d)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _settings(items: list[str]) -> dict:
    """NAME=VALUE options as parameters."""
    return {name: _value(text) for name, text in (item.split("=", 1) for item in items)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="a checkout (git worktree) holding the templates to compare against")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16"))
    parser.add_argument("--shape", default="2048", help="MxNxK, or N for a cube")
    parser.add_argument("--isa", help="the analytic default on this ISA (avx2, portable) rather than the best")
    parser.add_argument("--layout", default="nn", choices=("nn", "nt", "tn", "tt"),
                        help="t: that operand stored transposed (tn: A^T, as dout^T in a weight gradient)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--pause", type=float, default=0.0, metavar="MS", help="milliseconds between turns")
    parser.add_argument("--burst", type=int, default=1, metavar="N",
                        help="calls a turn times (after as many untimed), by their median; with --pause 3 "
                             "or more for two threads on small GEMMs")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a kernel parameter other than the analytic default's, as JSON or a bare word "
                             "(kc=768, prefetch_c=true, parallel=2d; repeatable)")
    parser.add_argument("--before-set", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter of the before build only, as --set: with this checkout as `before`, an "
                             "A/B of two parameter values (stream_b=false)")
    args = parser.parse_args(argv)
    params = analytic.default_params(machine.detect(), args.dtype, isa=args.isa).replace(**_settings(args.set))
    result = alternate(build_from(args.before, params.replace(**_settings(args.before_set))), api.build(params),
                       bench.parse_shape(args.shape),
                       args.threads, args.pairs, pause=args.pause * 1e-3, burst=args.burst, layout=args.layout)
    r = result["ratio"]
    pause = (f" bursts of {args.burst}" if args.burst > 1 else "") + (f" {args.pause:g} ms apart" if args.pause else "")
    print(f"{result['kernel']} {args.shape} {args.layout} t{args.threads}{pause}: before {result['before']:.1f}, after "
          f"{result['after']:.1f} GFLOP/s; after/before per pair: median {r['median']:.4f} "
          f"(p20 {r['p20']:.4f}, p80 {r['p80']:.4f}) over {args.pairs} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
