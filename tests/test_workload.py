"""Workloads: GPT-2 as data, user files, the step benchmark, tuning and the llm.c drop-in export."""

import json
import subprocess

import numpy as np
import pytest

import autogemm
from autogemm import machine, step, store, workload
from autogemm.workload import Problem


def test_gpt2_124m_step_is_147_gemms_and_190_gflop():
    problems = workload.gpt2_124m(256)
    assert sum(p.count for p in problems) == 147
    assert workload.total_flops(problems) == pytest.approx(189.8e9, rel=1e-3)
    distinct = workload.distinct(problems)
    assert len(distinct) == 15
    assert {p.layout for p in distinct} == {"nt", "nn", "tn"}
    assert distinct[0].name == "lm_head"  # the largest share of the flops comes first
    forward = [p for p in distinct if p.role == "forward"]
    assert all(p.trans_b and p.beta == 0 for p in forward)
    assert [p.bias for p in forward if p.name == "lm_head"] == [False]


def test_workload_files_rows_and_objects(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps([[64, 32, 16, 0, 1, 0, 3],
                                {"m": 8, "n": 8, "k": 8, "trans_a": 1, "beta": 1, "count": 2, "name": "x"}]))
    problems = workload.load(str(path))
    assert problems[0] == Problem(64, 32, 16, False, True, 0, 3)
    assert problems[1].trans_a and problems[1].beta == 1 and problems[1].name == "x"
    merged = workload.distinct(problems + problems)
    assert [p.count for p in merged] == [6, 4]


@pytest.mark.parametrize("content, message", [
    ("[]", "non-empty"), ("{", "not JSON"), ("[[1, 2, 3]]", "neither"), ('[{"m": 1, "n": 1, "k": 1, "x": 1}]', "unknown"),
    ("[[0, 1, 1, 0, 0, 0, 1]]", "positive"), ("[[1, 1, 1, 0, 0, 0.5, 1]]", "beta"),
])
def test_bad_workload_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        workload.load(str(path))
    with pytest.raises(ValueError, match="neither built in"):
        workload.load(str(tmp_path / "missing.json"))


def test_llmc_baseline_computes_the_same_gemms(rng):
    ffi, lib = step._baseline()
    bt, c, oc = 19, 24, 40
    inp = rng.standard_normal((bt, c)).astype(np.float32)
    w = rng.standard_normal((oc, c)).astype(np.float32)
    bias = rng.standard_normal(oc).astype(np.float32)
    dout = rng.standard_normal((bt, oc)).astype(np.float32)

    def ptr(x):
        return ffi.cast("float *", x.ctypes.data)

    out = np.empty((bt, oc), np.float32)
    lib.autogemm_baseline(0, ptr(out), ptr(inp), ptr(w), ptr(bias), bt, c, oc, 2)
    np.testing.assert_allclose(out, inp @ w.T + bias, rtol=1e-4, atol=1e-4)
    dinp = np.ones((bt, c), np.float32)
    lib.autogemm_baseline(1, ptr(dinp), ptr(dout), ptr(w), ffi.NULL, bt, c, oc, 2)
    np.testing.assert_allclose(dinp, 1 + dout @ w, rtol=1e-4, atol=1e-4)
    dw = np.ones((oc, c), np.float32)
    lib.autogemm_baseline(2, ptr(dw), ptr(dout), ptr(inp), ffi.NULL, bt, c, oc, 2)
    np.testing.assert_allclose(dw, 1 + dout.T @ inp, rtol=1e-4, atol=1e-4)


def test_step_benchmark_times_three_implementations():
    problems = [Problem(48, 40, 32, False, True, 0.0, 2, True, "lin", "forward"),
                Problem(48, 32, 40, False, False, 1.0, 2, False, "lin", "dinp"),
                Problem(40, 32, 48, True, False, 1.0, 2, False, "lin", "dweight")]
    report = step.bench_step(problems, 1, rounds=1)
    assert report["gemms"] == 6 and len(report["rows"]) == 3
    assert set(report["step_seconds"]) == {"autogemm", "numpy", "llmc"}
    assert all(s > 0 for s in report["step_seconds"].values())
    assert report["speedup_vs_llmc"] > 0 and report["autogemm_time_vs_numpy"] > 0


DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "autogemm_tiny.h"
static float *slurp(const char *path, size_t n) {
    float *p = malloc(n * sizeof(float)); FILE *f = fopen(path, "rb");
    if (!f || fread(p, sizeof(float), n, f) != n) { perror(path); exit(2); }
    fclose(f); return p;
}
static void spill(const char *path, const float *p, size_t n) {
    FILE *f = fopen(path, "wb"); fwrite(p, sizeof(float), n, f); fclose(f);
}
int main(int argc, char **argv) {
    int B = atoi(argv[1]), T = atoi(argv[2]), C = atoi(argv[3]), OC = atoi(argv[4]);
    size_t bt = (size_t)B * T;
    float *inp = slurp("inp.bin", bt * C), *w = slurp("w.bin", (size_t)OC * C), *bias = slurp("bias.bin", OC);
    float *dout = slurp("dout.bin", bt * OC), *dinp = slurp("dinp.bin", bt * C);
    float *dw = slurp("dw.bin", (size_t)OC * C), *dbias = slurp("dbias.bin", OC);
    float *out = malloc(bt * OC * sizeof(float));
    matmul_forward(out, inp, w, bias, B, T, C, OC);
    matmul_backward(dinp, dw, dbias, dout, inp, w, B, T, C, OC);
    spill("out.bin", out, bt * OC); spill("dinp.out", dinp, bt * C);
    spill("dw.out", dw, (size_t)OC * C); spill("dbias.out", dbias, OC);
    return 0;
}
"""


@pytest.mark.parametrize("B, T, C, OC", [(2, 19, 40, 72), (1, 64, 48, 48), (3, 7, 33, 65)])
def test_exported_workload_drops_into_llmc(tmp_path, B, T, C, OC, rng):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps([
        {"m": 38, "n": 72, "k": 40, "trans_b": 1, "bias": True, "role": "forward"},
        {"m": 38, "n": 40, "k": 72, "beta": 1, "role": "dinp"},
        {"m": 72, "n": 40, "k": 38, "trans_a": 1, "beta": 1, "role": "dweight"},
    ]))
    paths = autogemm.export_workload(str(spec), tmp_path)
    assert [p.name for p in paths] == ["autogemm_tiny.c", "autogemm_tiny.h"]
    (tmp_path / "driver.c").write_text(DRIVER)
    cc = machine.detect().compiler
    subprocess.run([*cc.command, "-O2", *cc.arch_flags, "-pthread", "driver.c", "autogemm_tiny.c", "-o",
                    "driver", "-lm"], check=True, cwd=tmp_path)
    bt = B * T
    data = {"inp": rng.standard_normal((bt, C)), "w": rng.standard_normal((OC, C)), "bias": rng.standard_normal(OC),
            "dout": rng.standard_normal((bt, OC)), "dinp": rng.standard_normal((bt, C)),
            "dw": rng.standard_normal((OC, C)), "dbias": rng.standard_normal(OC)}
    data = {k: v.astype(np.float32) for k, v in data.items()}
    for name, value in data.items():
        value.tofile(tmp_path / f"{name}.bin")
    subprocess.run(["./driver", str(B), str(T), str(C), str(OC)], check=True, cwd=tmp_path,
                   env={"OMP_NUM_THREADS": "2"})
    f64 = {k: v.astype(np.float64) for k, v in data.items()}
    read = lambda name, shape: np.fromfile(tmp_path / name, np.float32).reshape(shape)  # noqa: E731
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(read("out.bin", (bt, OC)), f64["inp"] @ f64["w"].T + f64["bias"], **tol)
    np.testing.assert_allclose(read("dinp.out", (bt, C)), f64["dinp"] + f64["dout"] @ f64["w"], **tol)
    np.testing.assert_allclose(read("dw.out", (OC, C)), f64["dw"] + f64["dout"].T @ f64["inp"], **tol)
    np.testing.assert_allclose(read("dbias.out", (OC,)), f64["dbias"] + f64["dout"].sum(0), **tol)


def test_tune_workload_saves_an_entry_per_gemm(tmp_path, monkeypatch):
    from autogemm.tune import tune_workload

    monkeypatch.setenv("AUTOGEMM_DATA_DIR", str(tmp_path / "data"))
    spec = tmp_path / "w.json"
    spec.write_text(json.dumps([[96, 64, 48, 0, 1, 0, 4], [64, 48, 96, 1, 0, 1, 1]]))
    results = tune_workload(str(spec), threads=1, trials=6, tuned_dir=tmp_path / "tuned", seed=0, top_k=1,
                            progress=False)
    assert [r.record["tuning"]["trials"] >= 4 for r in results] == [True, True]
    entries = store.find_entries(machine.detect().machine_id, tmp_path / "tuned")
    assert {(e.shape, e.layout, e.beta) for e in entries} == {((96, 64, 48), "nt", 0.0), ((64, 48, 96), "tn", 1.0)}
    kernel = autogemm.load("float32", shape=(64, 48, 96), layout="tn", beta=1.0, tuned_dir=tmp_path / "tuned")
    assert kernel.tuned["layout"] == "tn"
