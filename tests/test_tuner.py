"""The tuner: isolation of bad candidates, resume, tuned files, and the search logic."""

import json
import os
import stat
import subprocess
import sys
import warnings

import numpy as np
import optuna
import pytest

from autogemm import analytic, api, machine, render, search, store
from autogemm import kernel as kernel_module
from autogemm.evaluate import CORRECTNESS, CRASH, OK, TIMEOUT, Request, Result, Worker
from autogemm.params import KernelParams
from autogemm.workload import Problem
from conftest import route

HOST = machine.detect()


def small_params(mr):
    vw = analytic.portable_vector_width(HOST, "float32")
    return KernelParams("float32", "portable", mr=mr, nr=vw, vw=vw, ku=2, mc=4 * mr, kc=32, nc=4 * vw).to_dict()


def test_worker_survives_crash_and_hang_and_restarts():
    with Worker(timeout=10, function="faulty_eval:evaluate") as worker:
        crashed = worker.run(Request(small_params(2), (32, 32, 32), 1))
        assert crashed.status == CRASH and "signal 11" in crashed.message
        worker.timeout = 3
        hung = worker.run(Request(small_params(3), (32, 32, 32), 1))
        assert hung.status == TIMEOUT
        worker.timeout = 120
        fine = worker.run(Request(small_params(4), (48, 40, 36), 1))
        assert fine.status == OK and fine.gflops["median"] > 0
        assert worker.restarts == 2


def test_compile_failure_is_a_status_and_keeps_the_source(monkeypatch, tmp_path):
    from autogemm import evaluate, toolchain

    def broken_build(params):
        path = tmp_path / "kept.c"
        path.write_text("broken")
        raise toolchain.CompileError("cc failed", path)

    monkeypatch.setattr(api, "build", broken_build)
    result = evaluate.evaluate(Request(small_params(4), (8, 8, 8), 1))
    assert result.status == "compile" and result.source_path.endswith("kept.c")


def test_wrong_results_are_caught_before_timing(monkeypatch):
    from autogemm import evaluate

    real = api.build

    def sabotaged(params):
        kernel = real(params)

        class Wrong:
            def __init__(self):
                self.params = kernel.params

            def gemm(self, a, b, c, **kw):
                kernel.gemm(a, b, c, **kw)
                c[0, 0] += 1.0

        return Wrong()

    monkeypatch.setattr(api, "build", sabotaged)
    result = evaluate.evaluate(Request(small_params(4), (8, 8, 8), 1))
    assert result.status == CORRECTNESS


def test_study_goes_on_past_crashes_and_hangs(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    requested = []

    trial = {"isa": "portable", "nv": 1, "ku": 2, "kc": 64, "mc": 48, "nc": 512, "parallel": "ic", "prefetch": 0,
             "prefetch_c": False, "threads": 1}
    # The good candidate is compiled here first, so the worker's short timeout measures its run, not a
    # cold compile (which took over 3 s on a busy CI machine and counted as a second hang).
    api.build(search.params_from_choices(HOST, "float32", {**trial, "mr": 4}))
    with Worker(timeout=5, function="faulty_eval:evaluate") as worker:
        def evaluator(request):
            requested.append(request.params["mr"])
            return worker.run(request)

        study = optuna.create_study(study_name="x", storage=storage, direction="maximize")
        for mr in (2, 3, 4):  # a crash, a hang, then a good one
            study.enqueue_trial({**trial, "mr": mr})
        study, outcome = _search(storage, evaluator, trials=3, sampler="random", study=study, shape=(40, 40, 40))
    assert requested[:3] == [2, 3, 4]
    assert outcome.statuses[CRASH] == 1 and outcome.statuses[TIMEOUT] == 1 and outcome.statuses[OK] >= 1
    assert outcome.best_gflops > 0


def _search(storage, evaluator, trials, sampler="tpe", seed=0, study=None, shape=(64, 64, 64)):
    if study is not None:  # a pre-seeded study of the same name as run_search uses
        name = search.study_name(HOST, "float32", shape, 1)
        optuna.copy_study(from_study_name=study.study_name, from_storage=storage, to_storage=storage,
                          to_study_name=name)
    return search.run_search(HOST, "float32", shape, 1, evaluator, storage=storage, sampler=sampler,
                             trials=trials, seed=seed)


def recorded(request):
    """Recorded timings: a smooth function of the parameters with one best region."""
    p = request.params
    score = 100 - 3 * abs(p["mr"] - 6) - 20 * abs(p["nr"] // p["vw"] - 2) - abs(p["kc"] - 256) / 16
    return Result(OK, {"median": float(score), "p20": score - 1.0, "p80": score + 1.0})


def test_search_is_deterministic_on_recorded_timings(tmp_path):
    results = []
    for run in range(2):
        calls = []

        def evaluator(request):
            p = request.params
            assert p["mr"] * (p["nr"] // p["vw"]) + p["nr"] // p["vw"] + 1 <= analytic.register_budget(HOST, p["isa"])
            calls.append(request)
            return recorded(request)

        _, outcome = _search(f"sqlite:///{tmp_path / f'r{run}.db'}", evaluator, trials=25)
        results.append((outcome.best_params, outcome.best_gflops, [c.params for c in calls]))
        assert outcome.best_gflops == max(recorded(c).gflops["median"] for c in calls)
    assert results[0] == results[1]
    assert results[0][1] > recorded(Request(analytic.default_params(HOST, "float32").to_dict(), (1, 1, 1), 1)).gflops["median"] - 1e-9


def test_first_trial_is_the_analytic_default(tmp_path):
    seen = []
    _search(f"sqlite:///{tmp_path / 'd.db'}", lambda r: seen.append(r) or recorded(r), trials=1)
    default = analytic.default_params(HOST, "float32")
    first = seen[0].params
    assert (first["isa"], first["mr"], first["nr"], first["ku"]) == (default.isa, default.mr, default.nr, default.ku)


@pytest.mark.parametrize("k, one_pass", [(100, None), (700, 768), (768, 768), (4096, None)])
def test_warm_start_tries_all_of_a_short_k_in_one_block(k, one_pass):
    default = analytic.default_params(HOST, "float32")
    first = search.warm_start(HOST, "float32", Problem(4096, 4096, k), 2)
    assert first[0]["kc"] == search.choices_from_params(default, 2)["kc"]
    extra = [c["kc"] for c in first if c["kc"] > max(256, first[0]["kc"])]
    assert extra == ([one_pass] if one_pass and one_pass > first[0]["kc"] else [])
    assert len({tuple(sorted(c.items())) for c in first}) == len(first)  # no trial twice


@pytest.mark.parametrize("shape, threads, other", [
    ((100, 100, 100), 1, "packed"), ((2048, 2048, 2048), 2, "direct"), ((4096, 4096, 4096), 1, "direct"),
    ((100, 1, 100), 1, None)])  # one column: the dot path, which no limit moves
def test_warm_start_tries_the_default_on_the_other_path(shape, threads, other):
    """The analytic limits pick a path; the warm start also times the default kernel on the other
    one, whose limits send the problem there."""
    problem = Problem(*shape)
    first = search.warm_start(HOST, "float32", problem, threads)
    paths = [c["path"] for c in first if c["path"] != "default"]
    assert paths == ([other] if other else [])
    for choices in first:
        params = search.params_from_choices(HOST, "float32", choices, problem)
        taken = route(api.build(params), *shape, threads=threads)
        assert taken == (other if choices["path"] != "default" else route(
            api.build(analytic.default_params(HOST, "float32")), *shape, threads=threads))


def test_interrupted_search_resumes_without_losing_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    calls = []

    def interrupting(request):
        calls.append(request)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return recorded(request)

    with pytest.raises(KeyboardInterrupt):
        _search(storage, interrupting, trials=10)
    study = optuna.load_study(study_name=search.study_name(HOST, "float32", (64, 64, 64), 1), storage=storage)
    done_before = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done_before) >= 3
    resumed = []
    study, outcome = _search(storage, lambda r: resumed.append(r) or recorded(r), trials=10)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 10
    assert {t.number for t in done_before} <= {t.number for t in complete}
    assert len(resumed) <= 10 - len(done_before)


def test_changed_templates_start_a_new_study(tmp_path, monkeypatch):
    """Trials measured on other generated code are not resumed: the study name carries the templates' hash."""
    storage = f"sqlite:///{tmp_path / 'versions.db'}"
    _search(storage, recorded, trials=3)
    assert search.study_name(HOST, "float32", (64, 64, 64), 1).endswith(f":g{render.templates_fingerprint()}")
    monkeypatch.setattr(render, "templates_fingerprint", lambda: "changed")
    asked = []
    study, _ = _search(storage, lambda r: asked.append(r) or recorded(r), trials=3)
    assert len(asked) == 3 and study.study_name.endswith(":gchanged")
    assert len(optuna.get_all_study_summaries(storage)) == 2


def test_every_sampler_runs(tmp_path):
    for name in search.SAMPLERS:
        _, outcome = _search(f"sqlite:///{tmp_path / f'{name}.db'}", recorded, trials=4, sampler=name)
        assert outcome.best_params is not None, name


def _record(params, shape=(256, 256, 256), threads=2):
    return {"dtype": params.dtype, "shape": list(shape), "threads": threads, "params": params.to_dict(),
            "gflops": {"median": 10.0, "p20": 9.0, "p80": 11.0}, "numpy_gflops": 9.0, "vs_numpy": 1.1,
            "pct_peak": 50.0, "peak_gflops": 20.0, "versions": {}, "date": "2026-01-01",
            "tuning": {"run_threads": 1}}


def test_tuned_file_round_trip_and_nearest_shape(tmp_path):
    base = analytic.default_params(HOST, "float32")
    small, large = base.replace(ku=1), base.replace(ku=2)
    store.save(HOST.describe(), _record(small, (256, 256, 256)), tmp_path)
    path = store.save(HOST.describe(), _record(large, (2048, 2048, 2048)), tmp_path)
    entries = store.read(path, HOST.machine_id)
    assert {e.params for e in entries} == {small, large}
    assert store.nearest(entries, "float32", (300, 200, 256), 2).params == small
    assert store.nearest(entries, "float32", (4096, 1024, 2048), 2).params == large
    assert store.nearest(entries, "float64", (300, 200, 256), 2) is None
    assert store.nearest(entries, "float32", (40, 3000, 256), 2) is None  # 4.4 from 256^3: the default serves
    kernel = api.load("float32", shape=(200, 200, 200), tuned_dir=tmp_path)
    assert kernel.params == small and kernel.tuned["shape"] == [256, 256, 256] and kernel.default_threads == 1


def test_a_tuned_entry_serves_other_shapes_with_todays_direct_limits(tmp_path):
    """Limits an entry recorded before direct_limits changed send the shapes it is nearest to down an
    outdated path; loaded, it takes today's, except where they would move its own problem."""
    base = analytic.default_params(HOST, "float32")
    today = (base.direct_m, base.direct_mflops, base.direct_threaded)
    stale = base.replace(direct_m=1, direct_mflops=0, direct_threaded=1)  # packs everything it can
    store.save(HOST.describe(), _record(stale, (512, 512, 512), threads=2), tmp_path)
    kernel = api.load("float32", shape=(128, 512, 512), threads=2, tuned_dir=tmp_path)  # 2 away: served
    assert (kernel.params.direct_m, kernel.params.direct_mflops, kernel.params.direct_threaded) == today
    assert kernel.path(128, 512, 512, threads=2) == "direct" and kernel.tuned["params"] == stale.to_dict()
    assert kernel.params.replace(direct_m=1, direct_mflops=0, direct_threaded=1) == stale  # nothing else
    # Tuned to the direct path for its own 512^3 (limits that reach it), it stays there when loaded.
    forced = base.replace(direct_m=512, direct_mflops=300, direct_threaded=1)
    store.save(HOST.describe(), _record(forced, (512, 512, 512), threads=1), tmp_path / "forced")
    kernel = api.load("float32", shape=(512, 512, 512), threads=1, tuned_dir=tmp_path / "forced")
    assert kernel.path(512, 512, 512) == "direct" and kernel.path(1024, 1024, 1024) == "packed"


def test_a_call_without_threads_gets_the_entry_tuned_for_the_threads_it_runs_on(tmp_path, monkeypatch):
    base = analytic.default_params(HOST, "float32")
    one, four = base.replace(ku=1), base.replace(ku=2)
    store.save(HOST.describe(), _record(one, threads=1), tmp_path)
    store.save(HOST.describe(), _record(four, threads=4), tmp_path)
    monkeypatch.setattr(machine, "available_cores", lambda: 4)
    monkeypatch.delenv("AUTOGEMM_NUM_THREADS", raising=False)
    kernel_module.environment_threads.cache_clear()
    try:
        assert api.load("float32", shape=(256, 256, 256), tuned_dir=tmp_path).params == four
        assert api.load("float32", shape=(256, 256, 256), threads=1, tuned_dir=tmp_path).params == one
        monkeypatch.setenv("AUTOGEMM_NUM_THREADS", "1")
        kernel_module.environment_threads.cache_clear()
        assert api.load("float32", shape=(256, 256, 256), tuned_dir=tmp_path).params == one
    finally:
        kernel_module.environment_threads.cache_clear()


def test_tuned_file_gets_the_umask_mode_and_keeps_its_own(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = store.save(HOST.describe(), _record(analytic.default_params(HOST, "float32")), tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as open() would make it, not mkstemp's 0600
        path.chmod(0o640)
        store.save(HOST.describe(), _record(analytic.default_params(HOST, "float32").replace(ku=2)), tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old_umask)


def test_tuned_kernel_is_loaded_in_a_new_process(tmp_path):
    params = analytic.default_params(HOST, "float32").replace(ku=2, prefetch=4)
    store.save(HOST.describe(), _record(params), tmp_path)
    code = "import autogemm; print(autogemm.load('float32', shape=(256, 256, 256)).params.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "AUTOGEMM_TUNED_DIR": str(tmp_path)})
    assert out.stdout.strip() == params.name


def test_another_machines_file_is_never_used(tmp_path):
    params = analytic.default_params(HOST, "float32").replace(ku=2)
    other = {**HOST.describe(), "machine_id": "someone-elses-cpu"}
    store.save(other, _record(params), tmp_path)
    assert api.load("float32", tuned_dir=tmp_path).tuned is None
    # The same content renamed to this machine's file name is refused too.
    (tmp_path / "someone-elses-cpu.json").rename(store.path_for(HOST.machine_id, tmp_path))
    with pytest.warns(UserWarning, match="someone-elses-cpu"):
        assert store.find_entries(HOST.machine_id, tmp_path) == []


def test_corrupt_or_tampered_files_get_clear_errors_and_are_backed_up(tmp_path):
    path = store.path_for(HOST.machine_id, tmp_path)
    path.write_text("{ not json")
    with pytest.raises(store.TunedFileError, match="not readable JSON"):
        store.read(path, HOST.machine_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store.save(HOST.describe(), _record(analytic.default_params(HOST, "float32")), tmp_path)
    backups = list(tmp_path.glob(f"{path.name}.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_text() == "{ not json"
    data = json.loads(path.read_text())
    data["entries"][0]["params"]["kc"] = 999  # edited by hand: the hash no longer matches
    path.write_text(json.dumps(data))
    with pytest.raises(store.TunedFileError, match="sha256"):
        store.read(path, HOST.machine_id)
    data["schema"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(store.TunedFileError, match="schema 99"):
        store.read(path, HOST.machine_id)


def test_crafted_params_cannot_inject_c(tmp_path):
    record = _record(analytic.default_params(HOST, "float32"))
    record["params"]["isa"] = 'avx512"\n#include "/etc/passwd'
    entries = [record]
    data = {"schema": store.SCHEMA, "machine_id": HOST.machine_id, "machine": {}, "entries": entries,
            "sha256": store.entries_hash(entries)}
    path = store.path_for(HOST.machine_id, tmp_path)
    path.write_text(json.dumps(data))
    with pytest.raises(store.TunedFileError, match="invalid params"):
        store.read(path, HOST.machine_id)
    with pytest.warns(UserWarning):
        assert api.load("float32", tuned_dir=tmp_path).tuned is None


def test_end_to_end_tune_on_a_tiny_budget(tmp_path, monkeypatch):
    from autogemm.cli import main

    monkeypatch.setenv("AUTOGEMM_DATA_DIR", str(tmp_path / "data"))
    args = ["tune", "--shape", "96x80x64", "--trials", "3", "--timeout", "120", "--threads", "1",
            "--tuned-dir", str(tmp_path / "tuned"), "--seed", "1", "--top-k", "2"]
    assert main(args) == 0
    entries = store.find_entries(HOST.machine_id, tmp_path / "tuned")
    assert len(entries) == 1 and entries[0].shape == (96, 80, 64)
    record = entries[0].record
    assert record["gflops"]["median"] > 0 and record["numpy_gflops"] > 0 and record["tuning"]["trials"] >= 3
    # The winner is near its own best: the default (0 s) or a trial of the study, so never unknown.
    assert record["tuning"]["seconds_to_within_3pct"] >= 0 and "search_seconds_to_within_3pct" in record["tuning"]
    assert main(args) == 0  # resume: the study already holds its trials, nothing is lost
    study = optuna.load_study(study_name=search.study_name(HOST, "float32", (96, 80, 64), 1),
                              storage=search.default_storage())
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 3


def test_a_tune_rates_its_winner_against_the_highest_peak_read_after_the_finalists_too(tmp_path, monkeypatch):
    """A peak read while the host had lent a vCPU elsewhere must not stand: the peak is read again
    after the finalists' run and the record's % of peak uses the highest reading."""
    import importlib

    from autogemm.cli import main

    tune = importlib.import_module("autogemm.tune")  # the module, which the package's tune() shadows
    readings = iter([10.0, 1000.0])  # disturbed before the finalists, undisturbed after
    highest = []

    def fake_highest_peak(dtype, threads):
        highest.append(max(highest[-1:] + [next(readings)]))
        return highest[-1]

    monkeypatch.setattr(tune, "highest_peak", fake_highest_peak)
    monkeypatch.setenv("AUTOGEMM_DATA_DIR", str(tmp_path / "data"))
    assert main(["tune", "--shape", "64x48x40", "--trials", "1", "--threads", "1",
                 "--tuned-dir", str(tmp_path / "tuned"), "--seed", "1", "--top-k", "1"]) == 0
    (entry,) = store.find_entries(HOST.machine_id, tmp_path / "tuned")
    assert entry.record["peak_gflops"] == 1000.0
    assert entry.record["pct_peak"] == pytest.approx(100.0 * entry.record["gflops"]["median"] / 1000.0)


def test_bfloat16_tunes_saves_and_loads(tmp_path, monkeypatch):
    from autogemm.cli import main

    monkeypatch.setenv("AUTOGEMM_DATA_DIR", str(tmp_path / "data"))
    assert main(["tune", "--dtype", "bfloat16", "--shape", "64x96x80", "--trials", "2", "--threads", "1",
                 "--tuned-dir", str(tmp_path / "tuned"), "--seed", "3", "--top-k", "1"]) == 0
    entries = store.find_entries(HOST.machine_id, tmp_path / "tuned")
    assert [(e.dtype, e.shape) for e in entries] == [("bfloat16", (64, 96, 80))]
    assert entries[0].params.isa in HOST.isas_for("bfloat16")
    kernel = api.load("bfloat16", shape=(64, 96, 80), tuned_dir=tmp_path / "tuned")
    assert kernel.tuned is not None and kernel.params == entries[0].params


def test_a_finalist_must_beat_the_default_round_by_round():
    """The winner is judged by its ratio to the default within each round, so a finalist whose turns
    missed a slow spell of the host that hit the default's does not win; a small gain held in every
    round does, and a large one carried by a single round does not."""
    from autogemm.bench import Row
    from autogemm.tune import WIN_MARGIN, pick_winner

    def row(name, by_round):
        median = float(np.median(by_round))
        return Row((8, 8, 8), "float32", 1, name, {"median": median, "p20": median, "p80": median}, 50.0, 1.0,
                   round_medians=list(by_round))

    default = row("#2", [100.0, 100.0, 80.0, 80.0, 80.0])  # the host slow in its last three turns
    lucky = row("#1", [101.0, 99.0, 81.0, 79.0, 82.0])  # 2.5% ahead by medians, level round by round
    assert pick_winner([lucky, default], "#2").impl == "#2"
    drifting = [100.0, 60.0, 100.0, 60.0, 60.0]  # both slow in the same rounds
    steady = row("#1", [g * (1 + 1.3 * WIN_MARGIN) for g in drifting])
    assert pick_winner([steady, row("#2", drifting)], "#2").impl == "#1"
    one_round = row("#1", [g * f for g, f in zip(drifting, [1.3, 1.02, 0.99, 0.98, 1.02])])  # median +2%, behind twice
    assert pick_winner([one_round, row("#2", drifting)], "#2").impl == "#2"
    below = row("#1", [g * (1 + 0.5 * WIN_MARGIN) for g in drifting])  # ahead in every round, by too little
    assert pick_winner([below, row("#2", drifting)], "#2").impl == "#2"
    assert pick_winner([lucky, default], None).impl == "#1"  # no default among them: the fastest median


@pytest.mark.parametrize("shape, threads", [((512, 512, 512), 2), ((100, 100, 100), 1), ((256, 768, 3072), 2)])
def test_the_path_choice_sends_the_searched_problem_down_that_path(shape, threads):
    """The search may take the direct or the packed path for its problem whichever the analytic limits
    pick (512^3 on two threads packs by default, 100^3 goes direct, 256 x 768 x 3072 has too large a B
    for the flops limit and goes direct by its rows); "default" keeps the analytic limits."""
    default = analytic.default_params(HOST, "float32")
    choices = search.choices_from_params(default, threads)
    paths = {}
    for path in search.PATHS:
        params = search.params_from_choices(HOST, "float32", {**choices, "path": path}, Problem(*shape))
        paths[path] = route(api.build(params), *shape, threads=threads)
        if path == "default":
            assert (params.direct_m, params.direct_mflops, params.direct_threaded) == (
                default.direct_m, default.direct_mflops, default.direct_threaded)
    assert paths["direct"] == "direct" and paths["packed"] == "packed"
    assert paths["default"] == route(api.build(default), *shape, threads=threads)


def test_time_to_within_3pct_is_when_the_search_first_measured_a_near_best_kernel():
    """The default, measured first, is within 3% of the winner in the interleaved run: the search had it
    after its first trial, however high a later single trial read."""
    import datetime

    start = datetime.datetime(2026, 1, 1, 12, 0, 0)
    study = optuna.create_study(direction="maximize")
    for seconds, kernel, gflops in [(2, "default:t1", 100.0), (30, "other:t1", 90.0), (70, "lucky:t1", 109.0)]:
        trial = optuna.trial.create_trial(params={"x": 1}, distributions={"x": optuna.distributions.IntDistribution(0, 9)},
                                          value=gflops, user_attrs={"kernel": kernel, "status": OK})
        trial.datetime_start = start + datetime.timedelta(seconds=seconds - 2)
        trial.datetime_complete = start + datetime.timedelta(seconds=seconds)
        study.add_trial(trial)
    assert search.seconds_to_find(study, {"default:t1", "lucky:t1"}) == 2.0
    assert search.seconds_to_find(study, {"lucky:t1"}) == 70.0
    assert search.seconds_to_find(study, {"never:t1"}) is None


def test_big_gemms_are_timed_capped_but_with_two_blocks_of_every_size_searched():
    """The capped copy a candidate is timed on still runs every searched block size at least twice,
    so candidates that differ only in MC, KC or NC do not time alike (NC 4096 and 8192 on the
    50304-wide GPT-2 head did when N was capped at 4096)."""
    from autogemm.evaluate import timed_problem

    head = timed_problem(Problem(4096, 50304, 768, trans_b=True))
    assert (head.m, head.k, head.trans_b) == (4096, 768, True)
    assert head.n >= 1.5 * max(search.NC_CHOICES)
    tall = timed_problem(Problem(50304, 768, 50304))
    assert tall.m >= 2 * max(search.MC_CHOICES) and tall.k >= 2 * max(search.KC_CHOICES + search.KC_CHOICES_BF16)
    assert timed_problem(Problem(300, 200, 100)).shape == (300, 200, 100)
