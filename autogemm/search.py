"""The Optuna search over template parameters for one (dtype, shape, threads) problem."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import optuna
import platformdirs

from . import analytic, render
from .evaluate import OK, Request, Result
from .machine import Machine
from .params import (KU_CHOICES, PARALLEL_LOOPS, TILE_ISAS, TILE_ROWS, InvalidParams, KernelParams, registers_needed,
                     vector_widths)
from .workload import Problem

SAMPLERS = ("tpe", "random", "cmaes", "grid")
KC_CHOICES = (64, 96, 128, 160, 192, 256, 320, 384, 512, 768)
#: bfloat16 packs two bytes per k, so its useful KC reach twice as far, and AMX tiles further (MAX_TILE_KC).
KC_CHOICES_BF16 = (128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
MC_CHOICES = (48, 96, 192, 288, 384, 576, 768, 1024, 1536)
NC_CHOICES = (512, 1024, 2048, 4096, 8192)
PREFETCH_CHOICES = (0, 2, 4, 8, 16)
MAX_MR, MAX_NV = 16, analytic.MAX_NR_VECTORS


def default_storage() -> str:
    """SQLite in the user data directory (~/.local/share/autogemm/studies.db on Linux)."""
    directory = Path(os.environ.get("AUTOGEMM_DATA_DIR") or platformdirs.user_data_dir("autogemm"))
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'studies.db'}"


def study_name(machine: Machine, dtype: str, problem, threads: int) -> str:
    """One study per machine, dtype, problem (shape, layout, beta, bias), thread budget and version of
    the templates: an interrupted run resumes its study, but trials of other generated code are not reused."""
    problem = problem if isinstance(problem, Problem) else Problem(*problem)
    suffix = "" if (problem.layout, problem.beta, problem.bias) == ("nn", 0.0, False) else (
        f":{problem.layout}:b{problem.beta:g}{':bias' if problem.bias else ''}")
    return (f"{machine.machine_id}:{dtype}:{'x'.join(map(str, problem.shape))}{suffix}:t{threads}"
            f":g{render.templates_fingerprint()}")


def kc_choices(dtype: str) -> tuple[int, ...]:
    return KC_CHOICES_BF16 if dtype == "bfloat16" else KC_CHOICES


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


#: Which path the searched problem takes: the analytic limits' choice, or the direct (unpacked) or
#: packed path whichever those limits pick, by moving a kernel's limits just past the problem.
PATHS = ("default", "direct", "packed")


def params_from_choices(machine: Machine, dtype: str, choices: dict, problem: Problem | None = None) -> KernelParams:
    """Maps raw search choices onto valid parameters; InvalidParams if they break a constraint.
    The path choice needs the `problem` searched (without it, or without the choice: the default)."""
    isa = choices["isa"]
    vw = (analytic.portable_vector_width(machine, dtype) if isa == "portable" else max(vector_widths(isa, dtype)))
    mr, nr = choices["mr"], choices["nv"] * vw
    if isa in TILE_ISAS:  # MR is one tile of rows or two: the choice's lower half picks one
        mr = TILE_ROWS * (1 + (mr > MAX_MR // 2))
    if registers_needed(mr, nr, vw, isa) > analytic.register_budget(machine, isa):
        raise InvalidParams(f"{mr}x{nr} exceeds the {isa} register budget")
    direct_m, direct_mflops, direct_threaded = (
        analytic.direct_limits(machine, dtype) if problem is None else
        analytic.path_limits(machine, dtype, problem, choices["threads"], choices.get("path", "default")))
    return KernelParams(dtype=dtype, isa=isa, mr=mr, nr=nr, vw=vw, ku=choices["ku"],
                        mc=_round_to(choices["mc"], mr), kc=choices["kc"], nc=_round_to(choices["nc"], nr),
                        parallel=choices["parallel"], prefetch=choices["prefetch"], prefetch_c=choices["prefetch_c"],
                        stream_b=choices.get("stream_b", False),
                        direct_m=direct_m, direct_mflops=direct_mflops, direct_threaded=direct_threaded)


def choices_from_params(p: KernelParams, threads: int) -> dict:
    """The search choices that reproduce `p` (used to enqueue the analytic default)."""
    def nearest(options, value):
        return min(options, key=lambda o: abs(math.log(o / value)))
    mr = (MAX_MR if p.mr > TILE_ROWS else MAX_MR // 2) if p.isa in TILE_ISAS else p.mr
    return {"isa": p.isa, "mr": mr, "nv": p.nr // p.vw, "ku": p.ku, "kc": nearest(kc_choices(p.dtype), p.kc),
            "mc": nearest(MC_CHOICES, p.mc), "nc": nearest(NC_CHOICES, p.nc), "parallel": p.parallel,
            "prefetch": p.prefetch, "prefetch_c": p.prefetch_c, "stream_b": p.stream_b, "threads": threads,
            "path": "default"}


def grid_space(machine: Machine, dtype: str, threads: int) -> dict:
    """A small grid over the choices that matter most, for --sampler grid."""
    kc = [256, 512, 768] if dtype == "bfloat16" else [128, 256, 384]
    return {"isa": [machine.best_isa_for(dtype)], "mr": [4, 6, 8, 12, 14], "nv": [1, 2, 4], "ku": [4],
            "kc": kc, "mc": [192, 576], "nc": [4096], "parallel": list(PARALLEL_LOOPS),
            "prefetch": [0, 8], "prefetch_c": [False, True], "stream_b": [False, True], "threads": [threads],
            "path": ["default"]}


def warm_start(machine: Machine, dtype: str, problem: Problem, threads: int) -> list[dict]:
    """The first trials of a new study: the analytic default, then its nearest neighbours along the
    axes that most often matter (prefetch, KC, the parallel loop, streaming the shared B), KC
    taking all of a short K at once, so C is loaded and stored once rather than once per k block,
    and the default on the other path (direct or packed) where its limits decide the problem."""
    default = choices_from_params(analytic.default_params(machine, dtype), threads)
    changes = [{}, {"prefetch": 8}, {"prefetch_c": not default["prefetch_c"]}, {"kc": 256},
               {"parallel": "jr"}, {"parallel": "jp"}, {"stream_b": not default["stream_b"]}]
    one_pass = [kc for kc in kc_choices(dtype) if kc >= problem.k]
    if one_pass and one_pass[0] > default["kc"]:
        changes.append({"kc": one_pass[0]})
    limits = analytic.direct_limits(machine, dtype)
    changes += [{"path": path} for path in ("direct", "packed")
                if analytic.path_limits(machine, dtype, problem, threads, path) != limits]
    trials = [{**default, **change} for change in changes]
    return [t for i, t in enumerate(trials) if t not in trials[:i]]


def suggest(trial: optuna.Trial, machine: Machine, dtype: str, max_threads: int) -> dict:
    return {
        "isa": trial.suggest_categorical("isa", list(machine.isas_for(dtype))),
        "mr": trial.suggest_int("mr", 1, MAX_MR),
        "nv": trial.suggest_int("nv", 1, MAX_NV),
        "ku": trial.suggest_categorical("ku", list(KU_CHOICES)),
        "kc": trial.suggest_categorical("kc", list(kc_choices(dtype))),
        "mc": trial.suggest_categorical("mc", list(MC_CHOICES)),
        "nc": trial.suggest_categorical("nc", list(NC_CHOICES)),
        "parallel": trial.suggest_categorical("parallel", list(PARALLEL_LOOPS)),
        "prefetch": trial.suggest_categorical("prefetch", list(PREFETCH_CHOICES)),
        "prefetch_c": trial.suggest_categorical("prefetch_c", [False, True]),
        "stream_b": trial.suggest_categorical("stream_b", [False, True]),
        "threads": trial.suggest_int("threads", 1, max_threads),
        "path": trial.suggest_categorical("path", list(PATHS)),
    }


def make_sampler(name: str, machine: Machine, dtype: str, threads: int,
                 seed: int | None = None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_space(machine, dtype, threads), seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


def kernel_key(params: KernelParams, threads: int) -> str:
    """What a trial measured: one kernel on one thread count (its `kernel` user attribute)."""
    return f"{params.name}:t{threads}"


@dataclass
class Outcome:
    """What a finished search found, from the study's completed trials."""

    best_params: KernelParams | None
    best_threads: int
    best_gflops: float
    trials: int
    statuses: dict
    seconds: float
    seconds_to_within_3pct: float | None  # of the best single trial, itself a noisy measurement


def run_search(machine: Machine, dtype: str, problem, threads: int, evaluator, *, storage: str | None = None,
               sampler: str = "tpe", trials: int | None = 40, timeout: float | None = None, seed: int | None = None,
               progress=None) -> tuple[optuna.Study, Outcome]:
    """Searches until the study holds `trials` measured trials or `timeout` seconds pass.

    `problem` is (M, N, K) or a workload Problem (transposes, beta, bias).
    `evaluator(Request) -> Result` runs a candidate (normally a `Worker.run`). The study persists
    in `storage`, so a second call with the same problem resumes where the first stopped. The
    analytic default is the first trial of a new study; a constraint breach prunes a trial before
    anything is compiled; a failed candidate scores 0 GFLOP/s with its status as a user attribute.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    problem = problem if isinstance(problem, Problem) else Problem(*problem)
    study = optuna.create_study(
        study_name=study_name(machine, dtype, problem, threads),
        storage=storage or default_storage(),
        sampler=make_sampler(sampler, machine, dtype, threads, seed),
        direction="maximize",
        load_if_exists=True,
    )
    if not study.trials and sampler != "grid":
        for choices in warm_start(machine, dtype, problem, threads):
            study.enqueue_trial(choices, skip_if_exists=True)
    seen = {t.user_attrs["kernel"]: t.value for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE and "kernel" in t.user_attrs}

    def objective(trial: optuna.Trial) -> float:
        choices = suggest(trial, machine, dtype, threads)
        try:
            params = params_from_choices(machine, dtype, choices, problem)
        except InvalidParams as exc:
            trial.set_user_attr("status", "constraint")
            raise optuna.TrialPruned(str(exc)) from None
        key = kernel_key(params, choices["threads"])
        trial.set_user_attr("kernel", key)
        if key in seen:  # the sampler proposed a kernel already measured in this study
            trial.set_user_attr("status", "repeat")
            return seen[key]
        result: Result = evaluator(Request(params.to_dict(), problem, choices["threads"]))
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("seconds", result.seconds)
        if result.status != OK:
            trial.set_user_attr("message", result.message[-1000:])
            if result.source_path:
                trial.set_user_attr("source_path", result.source_path)
            seen[key] = 0.0
            return 0.0
        trial.set_user_attr("gflops", result.gflops)
        seen[key] = result.gflops["median"]
        return result.gflops["median"]

    def measured(study: optuna.Study) -> int:
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))

    if trials is None and timeout is None:
        raise ValueError("give a trial budget, a timeout, or both")
    already, proposals = measured(study), [0]

    def stop_when_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        proposals[0] += 1
        # Pruned proposals (constraint breaches) cost no compile and do not count towards `trials`,
        # but a sampler stuck proposing only those is stopped too.
        if trials is not None and (measured(study) >= trials or proposals[0] >= 20 * max(trials - already, 1)):
            study.stop()

    if trials is None or already < trials:
        study.optimize(objective, timeout=timeout, callbacks=[stop_when_done, *([progress] if progress else [])],
                       gc_after_trial=False)
    return study, summarize(study, machine, dtype, problem)


def summarize(study: optuna.Study, machine: Machine, dtype: str, problem: Problem) -> Outcome:
    trials = [t for t in study.trials if t.state.is_finished()]
    statuses: dict[str, int] = {}
    for t in trials:
        status = t.user_attrs.get("status", t.state.name.lower())
        statuses[status] = statuses.get(status, 0) + 1
    good = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("status") == OK]
    if not good:
        return Outcome(None, 1, 0.0, len(trials), statuses, 0.0, None)
    best = max(good, key=lambda t: t.value)
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    within = min((t.datetime_complete for t in good if t.value >= 0.97 * best.value), default=None)
    return Outcome(
        best_params=params_from_choices(machine, dtype, best.params, problem),
        best_threads=best.params["threads"],
        best_gflops=best.value,
        trials=len(trials),
        statuses=statuses,
        seconds=(end - start).total_seconds(),
        seconds_to_within_3pct=(within - start).total_seconds() if within else None,
    )


def seconds_to_find(study: optuna.Study, kernels) -> float | None:
    """Seconds from the study's first trial to the first measured trial of any of `kernels` (keys)."""
    finished = [t for t in study.trials if t.state.is_finished()]
    found = [t.datetime_complete for t in finished
             if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("kernel") in kernels]
    if not found:
        return None
    return (min(found) - min(t.datetime_start for t in finished)).total_seconds()


def top_candidates(study: optuna.Study, machine: Machine, dtype: str, problem, k: int = 3
                   ) -> list[tuple[KernelParams, int, float]]:
    """The k best distinct (params, threads) of the study of `problem`, best first."""
    problem = problem if isinstance(problem, Problem) else Problem(*problem)
    found, keys = [], set()
    for t in sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                     and t.user_attrs.get("status") == OK), key=lambda t: -t.value):
        key = t.user_attrs["kernel"]
        if key not in keys:
            keys.add(key)
            found.append((params_from_choices(machine, dtype, t.params, problem), t.params["threads"], t.value))
        if len(found) == k:
            break
    return found
