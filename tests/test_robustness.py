"""Faults and concurrency: nothing half-written, nothing lost, clear errors."""

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest

import autogemm
from autogemm import analytic, api, machine, search, store, toolchain
from autogemm.check import error_ratio

HOST = machine.detect()


def _build_in(cache, seed):
    os.environ["AUTOGEMM_CACHE_DIR"] = cache
    kernel = api.build(analytic.default_params(machine.detect(), "float32"))  # the same kernel in both
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(-1, 1, (50, 70)).astype(np.float32), rng.uniform(-1, 1, (70, 30)).astype(np.float32)
    return str(kernel.library), bool(error_ratio(kernel(a, b), a, b) <= 1)


def test_two_processes_building_the_same_kernel(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_build_in, [(str(tmp_path), 0), (str(tmp_path), 1)])
    assert results[0][0] == results[1][0] and all(ok for _, ok in results)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.c"))


def _save_many(directory, start):
    base = analytic.default_params(machine.detect(), "float32")
    for i in range(start, start + 10):
        record = {"dtype": "float32", "shape": [64 + i, 64, 64], "threads": 1, "params": base.to_dict()}
        store.save(machine.detect().describe(), record, Path(directory))


def test_two_processes_saving_into_one_tuned_file(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(_save_many, [(str(tmp_path), 0), (str(tmp_path), 10)])
    entries = store.read(store.path_for(HOST.machine_id, tmp_path), HOST.machine_id)
    assert sorted(e.shape[0] for e in entries) == list(range(64, 84))


def test_a_full_disk_leaves_the_tuned_file_as_it_was(tmp_path, monkeypatch):
    base = analytic.default_params(HOST, "float32")
    record = {"dtype": "float32", "shape": [64, 64, 64], "threads": 1, "params": base.to_dict()}
    path = store.save(HOST.describe(), record, tmp_path)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.json, "dump", full)
    with pytest.raises(OSError, match="No space"):
        store.save(HOST.describe(), {**record, "shape": [128, 64, 64]}, tmp_path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.name + ".lock"])


def test_an_unusable_cache_falls_back_to_a_temporary_one(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("AUTOGEMM_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="AUTOGEMM_CACHE_DIR"):
        directory = toolchain.cache_dir()
    assert directory.is_dir() and os.access(directory, os.W_OK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library = toolchain.build_shared("int f(void) { return 7; }\n", "fallback")
    assert library.parent == directory


def test_a_compiler_without_openmp_builds_threaded_kernels(tmp_path, monkeypatch):
    """Kernels thread with their own pthreads (Apple's clang has no OpenMP): a compiler that refuses
    -fopenmp still builds kernels whose packed path starts a helper thread on a 2-thread call."""
    wrapper = tmp_path / "cc-no-openmp"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && { echo "no openmp" >&2; exit 1; }; done\n'
                       f'exec {" ".join(HOST.compiler.command)} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("AUTOGEMM_CACHE_DIR", str(tmp_path / "cache"))
    toolchain.detect.cache_clear()
    try:
        compiler = toolchain.detect()
        assert compiler.openmp_flags == () and "-fopenmp" not in compiler.flags
        params = analytic.default_params(HOST, "float64")
        source = autogemm.render.render_gemm(params, harness=True)
        from autogemm.kernel import Kernel

        kernel = Kernel(params, HOST, toolchain.build_shared(source, params.name, compiler), source)
        rng = np.random.default_rng(3)
        a, b = rng.uniform(-1, 1, (77, 55)), rng.uniform(-1, 1, (55, 66))
        tasks = Path("/proc/self/task")
        before = len(list(tasks.iterdir())) if tasks.is_dir() else None
        c = np.empty((77, 66))
        kernel.gemm(a, b, c, threads=2, force_threads=True)
        assert error_ratio(c, a, b) <= 1
        if before is not None:
            assert len(list(tasks.iterdir())) == before + 1
    finally:
        toolchain.detect.cache_clear()


def test_a_product_too_large_for_memory_raises_memory_error():
    a = np.ones((1 << 20, 1), np.float32)
    with pytest.raises(MemoryError):
        autogemm.matmul(a, a.T)


def test_a_read_only_tuned_dir_loses_no_result(tmp_path, monkeypatch):
    from autogemm.tune import tune

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("AUTOGEMM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(store, "user_tuned_dir", lambda: tmp_path / "fallback")
    with pytest.warns(UserWarning, match="cannot write the tuned file"):
        results = tune("float32", [(48, 40, 32)], threads=1, trials=2, tuned_dir=blocker / "tuned", top_k=1,
                       progress=False, evaluate_function="faulty_eval:prefer_prefetch")
    assert results[0].path.parent == tmp_path / "fallback"
    assert len(store.read(results[0].path, HOST.machine_id)) == 1
    # The analytic default always competes in the final interleaved run.
    finalists = {f["kernel"] for f in results[0].record["tuning"]["finalists"].values()}
    assert analytic.default_params(HOST, "float32").name in finalists


def test_killing_the_tuner_at_random_points_loses_no_finished_trial(tmp_path):
    env = {**os.environ, "AUTOGEMM_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    tuned = tmp_path / "tuned"
    args = [sys.executable, "-m", "autogemm", "tune", "--shape", "64x48x40", "--threads", "1", "--trials", "6",
            "--timeout", "200", "--top-k", "1", "--tuned-dir", str(tuned), "--seed", "3"]
    name = search.study_name(HOST, "float32", (64, 48, 40), 1)
    storage = f"sqlite:///{tmp_path / 'data' / 'studies.db'}"
    rng = random.Random(7)
    finished_before = set()
    for _ in range(3):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(2.0, 6.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # killed before the study was created
            continue
        finished = {t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
        assert finished_before <= finished
        finished_before = finished
        if tuned.exists():
            for path in tuned.glob("*.json"):
                store.read(path, HOST.machine_id)  # never half-written
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=600)
    study = optuna.load_study(study_name=name, storage=storage)
    finished = {t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert finished_before <= finished and len(finished) == 6
    assert len(store.read(store.path_for(HOST.machine_id, tuned), HOST.machine_id)) == 1
