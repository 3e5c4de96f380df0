"""How well the kernel chooses to leave C's last columns to a path of their own (peel() in the templates): on
random shapes where peeling or not changes the path, time the kernel's own choice against the other
(peeling forced, or barred), both in one process and alternating, and report the speed of the choice
over the other's (below 1: the other was faster).

    .venv/bin/python benchmarks/peel_choice.py --dtype float32 --threads 1 --count 150
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from autogemm import analytic, api, machine
from autogemm.kernel import Kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_templates import alternate  # noqa: E402  (scripts beside this one)
from dot_choice import choice_parser, rebuilt  # noqa: E402

#: The comparison in peel() that decides whether C's last n mod VW columns take a path of their own.
_CHOICE = r"return \(\*how == 1 \? with_transposed : with_dot\) < 0\.97 \* \w+work\(route, m, n, k\) \? tail : 0;"


def variant(kernel: Kernel, peel: bool) -> Kernel:
    """`kernel` rebuilt peeling C's last columns wherever it may (peel) or nowhere."""
    return rebuilt(kernel, [(_CHOICE, "return tail;" if peel else "return 0;")], "_peel" if peel else "_nopeel")


def main(argv=None) -> int:
    args = choice_parser(__doc__.splitlines()[0], 150, "those where the choice matters").parse_args(argv)
    kernel = api.build(analytic.default_params(machine.detect(), args.dtype, isa=args.isa))
    builds = {True: variant(kernel, True), False: variant(kernel, False)}
    rng = np.random.default_rng(args.seed)
    results = []
    for i in range(args.count):
        m, n, k = (int(round(math.exp(rng.uniform(0, math.log(hi))))) for hi in (1000, 1000, 2000))
        layout = ("nn", "tn", "nt")[i % 3]  # the tail by the dot path (copied or not), or as its C^T
        strides = {"a_strides": (1, m) if layout[0] == "t" else (k, 1), "b_strides": (1, k) if layout[1] == "t" else (n, 1),
                   "threads": args.threads}
        paths = {peel: build.path(m, n, k, **strides) for peel, build in builds.items()}
        if paths[True] == paths[False]:
            continue
        chose = kernel.path(m, n, k, **strides) == paths[True]
        small = 2.0 * m * n * k <= 2e6
        speed = alternate(builds[not chose], builds[chose], (m, n, k), args.threads, pairs=11 if small else 7, seed=i,
                          pause=0.004 if args.threads > 1 else 0.0, burst=7 if small else 3,
                          layout=layout)["ratio"]["median"]  # the choice's speed over the other's
        results.append((speed, (m, n, k), layout, kernel.path(m, n, k, **strides), paths[not chose]))
    speeds = np.array([r[0] for r in results])
    print(f"{kernel.params.name}, {args.threads} thread(s): {len(results)} shapes where peeling changes the path "
          f"(seed {args.seed})")
    for speed, (m, n, k), layout, taken, other in sorted(results)[:args.show]:
        print(f"  {speed:5.3f}  {m}x{n}x{k} {layout}: took {taken!r}, not {other!r}")
    peeled = [r[0] for r in results if " + " in r[3]]
    print(f"the choice's speed over the other's: geometric mean {math.exp(np.log(speeds).mean()):.3f}, "
          f"below 0.95: {int((speeds < 0.95).sum())}; where it peeled: {len(peeled)} shapes, "
          f"lowest {min(peeled, default=float('nan')):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
