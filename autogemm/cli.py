"""`autogemm` command line: a table of subcommands, each a function returning an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__, analytic, api, bench, machine, toolchain
from .peak import measure_peak
from .params import DTYPES


def _print_json(data, path: str | None) -> None:
    text = json.dumps(data, indent=2, default=str)
    if path and path != "-":
        Path(path).write_text(text + "\n")
    else:
        print(text)


def cmd_info(args) -> int:
    host = machine.detect()
    info = host.describe()
    info["version"] = __version__
    info["default_kernels"] = {d: analytic.default_params(host, d).name for d in DTYPES}
    if args.peak:
        info["peak_gflops"] = {f"{d}/{t}": round(measure_peak(d, t), 1) for d in DTYPES for t in (1, host.cores)}
    if args.json:
        _print_json(info, args.json)
        return 0
    for key, value in info.items():
        print(f"{key:>16}: {value}")
    return 0


def cmd_export(args) -> int:
    for path in api.export(args.dtype, args.output):
        print(path)
    return 0


def _threads_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"autogemm: --threads takes a comma-separated list of integers, got {text!r}")
    if not values or min(values) < 1:
        raise SystemExit("autogemm: --threads values must be positive")
    return values


def _shapes(args) -> list[tuple[int, int, int]]:
    shapes = [bench.parse_shape(s) for s in args.shape or []]
    for suite in (args.suite.split(",") if args.suite else []):
        if suite not in bench.SUITES:
            raise SystemExit(f"autogemm: unknown suite {suite!r}; choose from {', '.join(bench.SUITES)}")
        shapes += bench.SUITES[suite]
    return shapes or bench.SUITES["quick"]


def cmd_bench(args) -> int:
    kernels = {"default": api.load(args.dtype)}
    rows, peaks = [], {}
    for threads in _threads_list(args.threads):
        peaks[(args.dtype, threads)] = measure_peak(args.dtype, threads)
        for shape in _shapes(args):
            rows += bench.compare(kernels, shape, threads, rounds=args.rounds, peak=peaks[(args.dtype, threads)])
            if not args.json:
                print(bench.format_table(rows[-len(kernels) - 1:], {}).splitlines()[-2], flush=True)
    report = {
        "machine": machine.detect().describe(),
        "blas": bench.openblas_coretype(),
        "peak_gflops": {f"{d}/{t}": v for (d, t), v in peaks.items()},
        "kernels": {name: k.params.to_dict() for name, k in kernels.items()},
        "rows": [bench.row_dict(r) for r in rows],
    }
    if args.json:
        _print_json(report, args.json)
        if args.json == "-":
            return 0
    print(bench.format_table(rows, peaks))
    print(f"numpy: {report['blas']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autogemm", description="Code-generating GEMM autotuner.")
    parser.add_argument("--version", action="version", version=f"autogemm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="machine id, ISAs, cores, compiler, default kernels")
    info.add_argument("--peak", action="store_true", help="also measure the FMA peak")
    info.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout)")
    info.set_defaults(func=cmd_info)

    export = sub.add_parser("export", help="write standalone C source and header")
    export.add_argument("--dtype", choices=DTYPES, default="float32")
    export.add_argument("-o", "--output", default=".", help="directory to write into")
    export.set_defaults(func=cmd_export)

    bench_ = sub.add_parser("bench", help="autogemm beside numpy: GFLOP/s, %% of peak, ratio")
    bench_.add_argument("--dtype", choices=DTYPES, default="float32")
    bench_.add_argument("--shape", action="append", help="MxNxK, repeatable")
    bench_.add_argument("--suite", help=f"comma-separated: {', '.join(bench.SUITES)}")
    bench_.add_argument("--threads", default=str(machine.available_cores()), help="comma-separated list")
    bench_.add_argument("--rounds", type=int, default=7, help="timed rounds per implementation")
    bench_.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout)")
    bench_.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (toolchain.CompilerNotFound, toolchain.CompileError, ValueError, TypeError, OSError) as exc:
        print(f"autogemm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
