"""`autogemm` command line: a table of subcommands, each a function returning an exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from . import __version__, analytic, api, bench, fastcall, machine, search, toolchain
from .peak import PeakMeter, measure_peak
from .params import DTYPES, KernelParams


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
    info["bfloat16_isas"] = list(host.isas_for("bfloat16"))  # AMX and vdpbf16ps where the CPU and OS allow
    info["default_kernels"] = {d: analytic.default_params(host, d).name for d in DTYPES}
    info["tuned_entries"] = [_entry_line(e) for e in api.tuned_entries(args.tuned_dir)]
    info["matmul"] = fastcall.status()
    if args.peak:
        info["peak_gflops"] = {f"{d}/{t}": round(measure_peak(d, t), 1) for d in DTYPES for t in (1, host.cores)}
    if args.json:
        _print_json(info, args.json)
        return 0
    for key, value in info.items():
        print(f"{key:>16}: {value}")
    return 0


def _entry_line(entry) -> str:
    """One tuned entry, named by everything its key holds (a layout, beta = 1 or a bias when not plain)."""
    r = entry.record
    gflops = r.get("gflops", {}).get("median", 0.0)
    variant = "".join([f" {entry.layout}" if entry.layout != "nn" else "",
                       " beta=1" if entry.beta else "", " +bias" if r.get("bias") else ""])
    return (f"{entry.dtype} {'x'.join(map(str, entry.shape))} t{entry.threads}{variant}: {entry.params.name} "
            f"{gflops:.1f} GFLOP/s, {r.get('vs_numpy', 0):.2f}x numpy, {r.get('pct_peak', 0):.0f}% of peak")


def cmd_tune(args) -> int:
    from .tune import tune, tune_workload

    options = dict(sampler=args.sampler, storage=args.storage, tuned_dir=args.tuned_dir, seed=args.seed,
                   top_k=args.top_k, progress=not args.json)
    try:
        if args.workload:
            if args.shape:
                raise ValueError("give --workload or --shape, not both")
            results = tune_workload(args.workload, args.tokens, args.dtype, args.threads, trials=args.trials,
                                    timeout=args.timeout or None, **options)
        else:
            shapes = [bench.parse_shape(s) for s in args.shape] if args.shape else None
            results = tune(args.dtype, shapes, args.threads, trials=args.trials or 40,
                           timeout=90.0 if args.timeout is None else (args.timeout or None), **options)
    except KeyboardInterrupt:
        print("\nautogemm: interrupted; every finished trial is saved. Run the same command again to resume.",
              file=sys.stderr)
        return 130
    records = [r.record for r in results]
    if args.json:
        _print_json({"machine": machine.detect().describe(), "results": records,
                     "tuned_file": str(results[-1].path) if results else None}, args.json)
        if args.json == "-":
            return 0
    print(f"{'gemm':>24} {'thr':>3} {'kernel':<52} {'GFLOP/s':>8} {'numpy':>7} {'x numpy':>7} {'%peak':>6} "
          f"{'trials':>6} {'to 3%':>6}")
    for r in records:
        to3 = r["tuning"]["seconds_to_within_3pct"]
        gemm = f"{r['layout'].upper()} {'x'.join(map(str, r['shape']))}{' +C' if r['beta'] else ''}"
        print(f"{gemm:>24} {r['tuning']['run_threads']:>3} "
              f"{KernelParams.from_dict(r['params']).name:<52} {r['gflops']['median']:>8.1f} "
              f"{r['numpy_gflops']:>7.1f} {r['vs_numpy']:>7.3f} {r['pct_peak']:>6.1f} {r['tuning']['trials']:>6} "
              f"{(f'{to3:.0f}s' if to3 is not None else '-'):>6}")
    if results:
        print(f"saved: {results[-1].path}")
    return 0


def cmd_list(args) -> int:
    import optuna

    entries = api.tuned_entries(args.tuned_dir)
    storage = args.storage or search.default_storage()
    studies = [{"name": s.study_name, "trials": s.n_trials,
                "best_gflops": s.best_trial.value if s.best_trial else None}
               for s in optuna.get_all_study_summaries(storage)]
    if args.json:
        _print_json({"tuned": [e.record for e in entries], "studies": studies, "storage": storage}, args.json)
        return 0
    print(f"tuned entries for {machine.detect().machine_id}:")
    for entry in entries:
        print("  " + _entry_line(entry))
    if not entries:
        print("  (none: run `autogemm tune`)")
    print(f"studies in {storage}:")
    for s in studies:
        best = f"{s['best_gflops']:.1f} GFLOP/s" if s["best_gflops"] is not None else "-"
        print(f"  {s['name']}: {s['trials']} trials, best {best}")
    return 0


def cmd_export(args) -> int:
    if args.blas:
        paths = api.export_blas(args.output, tuned_dir=args.tuned_dir)
    elif args.workload:
        paths = api.export_workload(args.workload, args.output, tokens=args.tokens, dtype=args.dtype,
                                    tuned_dir=args.tuned_dir)
    else:
        paths = api.export(args.dtype, args.output)
    for path in paths:
        print(path)
    return 0


def _threads_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--threads takes a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError("--threads values must be positive")
    return values


def _shapes(args) -> list[tuple[tuple[int, int, int], bool, str]]:
    """(shape, timed as Python calls, layout) for --shape and --suite."""
    calls = bool(getattr(args, "calls", False))
    shapes = [(shape, calls, layout) for shape, layout in map(bench.parse_call_shape, args.shape or [])]
    if any(layout != "nn" and not calls for _, _, layout in shapes):
        raise ValueError("bench times A and B as transposed views in Python calls: add --calls")
    for suite in (args.suite.split(",") if args.suite else []):
        if suite not in bench.SUITES:
            raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(bench.SUITES)}")
        layouts = bench.LAYOUTS if suite in bench.LAYOUT_SUITES else ("nn",)
        shapes += [(shape, suite in bench.CALL_SUITES, layout) for shape in bench.SUITES[suite] for layout in layouts]
    return shapes or [(shape, False, "nn") for shape in bench.SUITES["quick"]]


def cmd_bench_workload(args) -> int:
    from . import step, workload

    if args.dtype == "bfloat16":
        raise ValueError("bench --workload times float32 or float64 steps (numpy and the llm.c-style loops have "
                         "no bfloat16 GEMM); time bfloat16 shapes with --shape")
    problems = workload.load(args.workload, args.tokens)
    reports = []
    for threads in _threads_list(args.threads):
        def show(row):
            if not args.json:
                calls = "  ".join(f"{k} {v * 1e3:8.2f} ms" for k, v in row["seconds_per_call"].items())
                print(f"  {row['gemm']:<40} x{row['count']:<3} {calls}", flush=True)

        if not args.json:
            print(f"{args.workload} tokens={args.tokens} threads={threads}: per call")
        report = step.bench_step(problems, threads, dtype=args.dtype, rounds=args.rounds, baseline=not args.no_baseline,
                                 tuned_dir=args.tuned_dir, progress=show)
        reports.append(report)
        if not args.json:
            totals = "  ".join(f"{impl} {s:.3f} s ({report['step_gflops'][impl]:.1f} GFLOP/s)"
                               for impl, s in report["step_seconds"].items())
            print(f"step: {report['gemms']} GEMMs, {report['gflop']:.1f} GFLOP: {totals}")
            speedup = report["speedup_vs_llmc"]
            print(f"autogemm time / numpy time = {report['autogemm_time_vs_numpy']:.3f}"
                  + (f"; {speedup:.1f}x faster than the llm.c-style loops" if speedup else ""))
    if args.json:
        _print_json({"machine": machine.detect().describe(), "blas": bench.openblas_coretype(),
                     "workload": args.workload, "tokens": args.tokens, "reports": reports}, args.json)
    if not args.json or args.json != "-":
        print(f"numpy: {bench.openblas_coretype()}")
    return 0


def cmd_bench_phases(args) -> int:
    """Each shape's time by phase (packing B, packing A, macro-kernels), for the kernel that
    `autogemm.load()` picks, after the default kernel's macro-kernels on data in cache."""
    from . import phases

    if any(calls for _, calls, _ in _shapes(args)):
        raise ValueError("bench --phases times the kernel's phases inside C; leave out --calls and the "
                         f"{' and '.join(bench.CALL_SUITES)} suites")
    default = analytic.default_params(machine.detect(), args.dtype)
    rows, peaks = [], {}

    def add(row, new_rows):
        new_rows.append(row)
        if not args.json:
            print(phases.format_phases([row]).splitlines()[1], flush=True)

    for threads in _threads_list(args.threads):
        peak, new_rows = measure_peak(args.dtype, threads), []
        meter = PeakMeter(args.dtype, threads, seconds=bench.ROUND_PEAK_SECONDS)
        if threads == 1:
            add(phases.in_cache(default, peak_meter=meter), new_rows)
        for shape, _, _ in _shapes(args):
            params = api.load(args.dtype, shape=shape, threads=threads, layout="nn", beta=0.0,
                              tuned_dir=args.tuned_dir).params
            add(phases.profile(params, shape, threads, peak_meter=meter), new_rows)
            # measured again after each shape, as in a comparison run: a disturbed reading cannot stand
            peak = max(peak, measure_peak(args.dtype, threads))
        peaks[threads] = peak
        rows += [phases.with_peak(r, peak) for r in new_rows]
    report = {"machine": machine.detect().describe(), "dtype": args.dtype,
              "peak_gflops": {f"{args.dtype}/{t}": v for t, v in peaks.items()},
              "rows": [dataclasses.asdict(r) for r in rows]}
    if args.json:
        _print_json(report, args.json)
        if args.json == "-":
            return 0
    print(phases.format_phases(rows))
    print("shares of the threads' time (wall x threads); other: waiting at barriers, loops outside the phases;\n"
          "in L2: one thread on one MC x KC block of A and two B micro-panels, the macro-kernels' ceiling\n"
          "%peak: of the highest peak reading of the run; %round: of the best of 8 short peak readings taken "
          "right after the shape's calls\n"
          "measured FMA peak (GFLOP/s): " + ", ".join(f"{args.dtype} {t} thr {v:.1f}" for t, v in peaks.items()))
    return 0


def cmd_bench(args) -> int:
    if args.workload:
        return cmd_bench_workload(args)
    if args.phases:
        return cmd_bench_phases(args)
    default = api.load(args.dtype, params=analytic.default_params(machine.detect(), args.dtype))
    rows, peaks, used = [], {}, {"default": default.params.name}
    for threads in _threads_list(args.threads):
        key, first_row = (args.dtype, threads), len(rows)
        peaks[key] = measure_peak(args.dtype, threads)
        meter = PeakMeter(args.dtype, threads, seconds=bench.ROUND_PEAK_SECONDS)
        for shape, calls, layout in _shapes(args):
            if calls:
                new_rows = bench.compare_calls(shape, args.dtype, threads, layout=layout, rounds=args.rounds,
                                               peak=peaks[key])
            else:
                kernels = {"default": default}
                tuned = api.load(args.dtype, shape=shape, threads=threads, layout="nn", beta=0.0,
                                 tuned_dir=args.tuned_dir)
                if tuned.tuned is not None:
                    label = f"tuned {'x'.join(map(str, shape))} t{threads}"
                    if tuned.params == default.params:  # timed once: two rows would only show the noise
                        used[label] = f"{tuned.params.name} (the default: its row)"
                    else:
                        kernels = {"tuned": tuned, **kernels}
                        used[label] = tuned.params.name
                new_rows = bench.compare(kernels, shape, threads, rounds=args.rounds, peak=peaks[key],
                                         with_torch=args.torch, peak_meter=meter)
                if args.independent and threads > 1:
                    single = api.load(args.dtype, shape=shape, threads=1, layout="nn", beta=0.0,
                                      tuned_dir=args.tuned_dir)
                    single = single if single.tuned is not None else default
                    used[f"independent {'x'.join(map(str, shape))}"] = single.params.name
                    new_rows.append(bench.compare_independent(single, shape, threads, rounds=args.rounds,
                                                              peak=peaks[key]))
            rows += new_rows
            if not args.json:
                print("\n".join(bench.format_table(new_rows, None).splitlines()[1:]), flush=True)
            # The peak is a maximum: measured again between shapes, a disturbed first reading cannot stand.
            peaks[key] = max(peaks[key], measure_peak(args.dtype, threads))
        rows[first_row:] = [dataclasses.replace(r, pct_peak=100.0 * r.gflops["median"] / peaks[key]) for r in rows[first_row:]]
    bench.add_scaling(rows)
    report = {
        "machine": machine.detect().describe(),
        "blas": bench.openblas_coretype(),
        "torch": bench.torch_version() if args.dtype == "bfloat16" or args.torch else None,
        "peak_gflops": {f"{d}/{t}": v for (d, t), v in peaks.items()},
        "kernels": used,
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
    info.add_argument("--tuned-dir", help="read tuned files from this directory")
    info.set_defaults(func=cmd_info)

    tune_ = sub.add_parser("tune", help="search kernels with Optuna and save the best for this machine")
    tune_.add_argument("--dtype", choices=DTYPES, default="float32")
    tune_.add_argument("--shape", action="append", help="MxNxK, repeatable (default: 512^3, 1024^3, 4096x768x768)")
    tune_.add_argument("--workload", help="tune every GEMM of a workload: gpt2-124m, or a JSON file")
    tune_.add_argument("--tokens", type=int, default=256, help="tokens per step (B*T) of a built-in workload")
    tune_.add_argument("--threads", type=int, help="thread budget (default: $AUTOGEMM_NUM_THREADS or all cores)")
    tune_.add_argument("--trials", type=int, help="measured trials per shape, counting resumed ones (default 40); "
                       "with --workload, the total shared out by flops (default 10 per distinct GEMM)")
    tune_.add_argument("--timeout", type=float, help="search seconds per shape (default 90, 0: no limit); "
                       "with --workload, the total (default: none)")
    tune_.add_argument("--sampler", choices=search.SAMPLERS, default="tpe")
    tune_.add_argument("--storage", help="Optuna storage URL (default: SQLite in the user data directory)")
    tune_.add_argument("--tuned-dir", help="write the tuned file here")
    tune_.add_argument("--seed", type=int, help="sampler seed")
    tune_.add_argument("--top-k", type=int, default=3, help="finalists re-measured beside numpy")
    tune_.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout)")
    tune_.set_defaults(func=cmd_tune)

    list_ = sub.add_parser("list", help="tuned entries and studies")
    list_.add_argument("--tuned-dir", help="read tuned files from this directory")
    list_.add_argument("--storage", help="Optuna storage URL")
    list_.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout)")
    list_.set_defaults(func=cmd_list)

    export = sub.add_parser("export", help="write standalone C source and header")
    export.add_argument("--dtype", choices=DTYPES, default="float32")
    export.add_argument("-o", "--output", default=".", help="directory to write into")
    export.add_argument("--workload", help="one file for every GEMM of a workload (gpt2-124m, or a JSON file), "
                        "with llm.c's matmul_forward/matmul_backward")
    export.add_argument("--tokens", type=int, default=256, help="tokens per step (B*T) of a built-in workload")
    export.add_argument("--blas", action="store_true",
                        help="build libautogemm_blas.so: sgemm_/dgemm_ and cblas_sgemm/cblas_dgemm")
    export.add_argument("--tuned-dir", help="read tuned files from this directory")
    export.set_defaults(func=cmd_export)

    bench_ = sub.add_parser("bench", help="autogemm beside numpy: GFLOP/s, %% of peak, ratio")
    bench_.add_argument("--dtype", choices=DTYPES, default="float32")
    bench_.add_argument("--shape", action="append",
                        help="MxNxK, repeatable; MxNxK:nt (or tn, tt) with --calls: A and/or B as transposed views")
    bench_.add_argument("--suite", help=f"comma-separated: {', '.join(bench.SUITES)} (small and narrow: timed as "
                        "Python calls; narrow in every layout)")
    bench_.add_argument("--calls", action="store_true",
                        help="time --shape as whole Python calls of autogemm.matmul and numpy.matmul, overhead included")
    bench_.add_argument("--threads", default=str(machine.available_cores()), help="comma-separated list")
    bench_.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each a burst of at least 3 timed calls and 20 ms)")
    bench_.add_argument("--workload", help="time every GEMM of a step: gpt2-124m, or a JSON file")
    bench_.add_argument("--tokens", type=int, default=256, help="tokens per step (B*T) of a built-in workload")
    bench_.add_argument("--no-baseline", action="store_true", help="skip the llm.c-style loops (slow)")
    bench_.add_argument("--torch", action="store_true",
                        help="also time PyTorch's matmul when it is installed (bfloat16 always does)")
    bench_.add_argument("--independent", action="store_true",
                        help="on N > 1 threads, also N independent 1-thread GEMMs at once, the scaling ceiling "
                             "(N copies of the operands in memory)")
    bench_.add_argument("--phases", action="store_true",
                        help="time packing B, packing A and the macro-kernels of each shape in a profiling build, "
                             "instead of comparing with numpy")
    bench_.add_argument("--tuned-dir", help="read tuned files from this directory")
    bench_.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout)")
    bench_.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (toolchain.CompilerNotFound, toolchain.CompileError, RuntimeError, ValueError, TypeError, OSError) as exc:
        print(f"autogemm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
