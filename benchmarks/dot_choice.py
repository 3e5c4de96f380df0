"""How well the kernel chooses the dot path: on random shapes where it may take it (a transposed B, or a
row-major one whose columns it would copy), time the kernel with the dot path forced and with it
barred, both in one process and alternating, and report the time lost to the kernel's own choice
(1.0: it always took the faster). This is how the weights of `work()` were fitted (templates/README.md).

    .venv/bin/python benchmarks/dot_choice.py --dtype float32 --threads 1 --count 400
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np

from autogemm import analytic, api, machine, toolchain
from autogemm.kernel import Kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_templates import alternate  # noqa: E402  (a script beside this one)

#: The comparisons in path() that choose the dot path for a transposed B (3) and a row-major one (4):
#: float32 and float64 kernels', then bfloat16 kernels' (their work in steps of k, against packing's).
_CHOICES = (r"(\w+)work\(3, m, n, k\) < \1work\(copied, m, n, k\)",
            r"(\w+)work\(4, m, n, k\) \+ copies \* \1copy_work\(n, k\)\s*"
            r"< \1peeled_work\(direct, m, n, k, rsa, csa, rsb, csb, 0, nthreads\)")
_BF16_CHOICES = tuple(rf"(\w+)work\({path}, m, n, steps\) < [\d.]+ \* \1work\(0, m, n, steps\)" for path in (3, 4))


def rebuilt(kernel: Kernel, rules: list[tuple[str, str]], suffix: str) -> Kernel:
    """`kernel` rebuilt with the one match in its source of each pattern of `rules` replaced by its text,
    named with `suffix` after the kernel's name."""
    source = kernel.source
    for pattern, text in rules:
        source, found = re.subn(pattern, text, source)
        if found != 1:
            raise RuntimeError(f"the kernel's source no longer reads {pattern!r}: update the script that edits it")
    return Kernel(kernel.params, kernel.machine, toolchain.build_shared(source, kernel.params.name + suffix), source)


def variant(kernel: Kernel, dot: bool) -> Kernel:
    """`kernel` rebuilt with the dot path taken wherever it is possible (dot) or nowhere."""
    choices = _BF16_CHOICES if kernel.params.dtype == "bfloat16" else _CHOICES
    return rebuilt(kernel, [(choice, "1" if dot else "0") for choice in choices], "_dot" if dot else "_nodot")


def choice_parser(description: str, count: int, counted: str,
                  dtypes: tuple[str, ...] = ("float32", "float64")) -> argparse.ArgumentParser:
    """The arguments of a script that times a kernel's choice on random shapes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dtype", default="float32", choices=dtypes)
    parser.add_argument("--isa", help="the analytic default on this ISA (avx2, portable) rather than the best")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--count", type=int, default=count, help=f"random shapes drawn ({counted} are timed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=10, help="the worst choices shown")
    return parser


def main(argv=None) -> int:
    parser = choice_parser(__doc__.splitlines()[0], 400, "those the dot path can take", ("float32", "float64", "bfloat16"))
    parser.add_argument("--layout", choices=("both", "nn", "nt"), default="both",
                        help="B row-major (nn), transposed (nt), or each in turn")
    args = parser.parse_args(argv)
    kernel = api.build(analytic.default_params(machine.detect(), args.dtype, isa=args.isa))
    kernels = {"dot": variant(kernel, True), "other": variant(kernel, False)}
    rng = np.random.default_rng(args.seed)
    lost = []
    for i in range(args.count):
        m, n, k = (int(round(math.exp(rng.uniform(0, math.log(hi))))) for hi in (600, 768, 4096))
        transposed = i % 2 == 0 if args.layout == "both" else args.layout == "nt"
        strides = (1, k) if transposed else (n, 1)
        if not kernels["dot"].path(m, n, k, b_strides=strides, threads=args.threads).startswith("dot"):
            continue
        if kernels["other"].path(m, n, k, b_strides=strides, threads=args.threads).startswith("dot"):
            continue  # a column: the dot path either way
        small = 2.0 * m * n * k <= 2e6
        faster = alternate(kernels["other"], kernels["dot"], (m, n, k), args.threads, pairs=15 if small else 9, seed=i,
                           pause=0.004 if args.threads > 1 else 0.0, burst=7 if small else 3,
                           layout="nt" if transposed else "nn")["ratio"]["median"]  # dot's speed over the other's
        chose = kernel.path(m, n, k, b_strides=strides, threads=args.threads).startswith("dot")
        lost.append((max(1.0, 1 / faster if chose else faster), (m, n, k), "nt" if transposed else "nn", chose))
    ratios = np.array([x[0] for x in lost])
    print(f"{kernel.params.name}, {args.threads} thread(s): {len(lost)} shapes the dot path can take (seed {args.seed})")
    for ratio, (m, n, k), layout, chose in sorted(lost, reverse=True)[:args.show]:
        print(f"  {ratio:5.2f}  {m}x{n}x{k} {layout}: took {'the dot path' if chose else 'the other'}")
    print(f"time lost to the kernel's choice: geometric mean {math.exp(np.log(ratios).mean()):.3f}, "
          f"above 1.15: {int((ratios > 1.15).sum())}, worst {ratios.max():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
