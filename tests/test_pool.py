"""The helper threads of every path: never a stall, any number of callers, fork-safe."""

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from autogemm import analytic, api, machine
from autogemm.check import error_ratio

HOST = machine.detect()
LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and CPU affinity")


def default_kernel():
    return api.build(analytic.default_params(HOST, "float32"))


def run_python(code: str) -> str:
    """Runs `code` in a fresh interpreter (its own threads and CPU affinity) and returns its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@LINUX_ONLY
def test_a_call_never_waits_for_a_helper_that_cannot_run():
    """With every thread of the process on one CPU, a 2-thread call's helper cannot run beside its
    caller: the caller runs the chunks no helper has claimed and sleeps while a claimed one finishes,
    so the call costs about its serial time, never a scheduler time slice (an OpenMP team's closing
    barrier took 4-8 ms a call here, 30-50x the serial time). The packed GEMM (forced onto 2 threads)
    has six jobs a call, one per phase of each of its three k blocks. The bound is relative to the
    serial time in the same process, so it holds on any machine."""
    out = run_python("""
        import os, time, numpy as np
        from autogemm import analytic, api, machine
        kernel = api.build(analytic.default_params(machine.detect(), "float32"))
        rng = np.random.default_rng(0)
        cases = [(200, 192, 200, False, "direct"), (8, 1000, 1000, True, "dot"), (256, 320, 3 * kernel.params.kc, False, None)]
        operands = []
        for m, n, k, trans_b, path in cases:
            a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
            b = rng.uniform(-1, 1, (n, k) if trans_b else (k, n)).astype(np.float32)
            b = b.T if trans_b else b
            assert path is None or kernel.path(m, n, k, b_strides=tuple(s // 4 for s in b.strides)) == path
            operands.append((a, b, np.empty((m, n), np.float32), path is None))
        # References first: numpy's BLAS threads, pinned with the rest, would spin beside the timed calls.
        expected = [a.astype(np.float64) @ b.astype(np.float64) for a, b, _, _ in operands]
        def call(a, b, c, forced, threads):
            return kernel.gemm(a, b, c, threads=threads, force_threads=forced)
        call(*operands[0], 2)  # starts the helper
        cpu = sorted(os.sched_getaffinity(0))[0]
        for task in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(task), {cpu})
        def seconds(threads):
            start = time.perf_counter()
            for _ in range(20):
                results = [call(*operand, threads) for operand in operands]
            elapsed = time.perf_counter() - start
            for c, reference in zip(results, expected):
                assert np.abs(c - reference).max() <= 1e-3 * np.abs(reference).max()
            return elapsed
        serial = min(seconds(1) for _ in range(3))
        print(serial, min(seconds(2) for _ in range(3)))
    """)
    serial, shared = map(float, out.split())
    assert shared < 3 * serial + 0.02, f"2 threads on one CPU: {shared:.3f} s, 1 thread {serial:.3f} s"


@LINUX_ONLY
def test_helpers_start_on_first_use_and_number_threads_minus_one():
    out = run_python("""
        import os, numpy as np
        from autogemm import analytic, api, machine
        kernel = api.build(analytic.default_params(machine.detect(), "float32"))
        a = np.ones((300, 300), np.float32)
        counts = [len(os.listdir("/proc/self/task"))]
        for threads in (1, 2, 3, 3, 2):
            kernel(a, a, threads=threads)
            counts.append(len(os.listdir("/proc/self/task")))
        print(*counts)
    """)
    start, *after = map(int, out.split())
    assert [n - start for n in after] == [0, 1, 2, 2, 2]


@LINUX_ONLY
@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="no per-thread CPU time in /proc")
def test_helpers_a_job_leaves_out_sleep():
    """After a 3-thread call, 2-thread calls use one helper; the other sleeps instead of spinning for
    jobs it is not in (on 16 cores, 14 such helpers burned 14 cores beside 2-thread calls)."""
    out = run_python("""
        import os, time, numpy as np
        from autogemm import analytic, api, machine
        kernel = api.build(analytic.default_params(machine.detect(), "float32"))
        def ticks(task):  # nanoseconds on a CPU
            return int(open(f"/proc/self/task/{task}/schedstat").read().split()[0])
        before = set(os.listdir("/proc/self/task"))
        kernel(np.ones((300, 300), np.float32), np.ones((300, 300), np.float32), threads=3)
        helpers = sorted(set(os.listdir("/proc/self/task")) - before, key=int)
        a = np.ones((200, 200), np.float32)
        start = {t: ticks(t) for t in helpers}
        end_at = time.perf_counter() + 0.5
        while time.perf_counter() < end_at:
            kernel(a, a, threads=2)
        print(len(helpers), *sorted(ticks(t) - start[t] for t in helpers))
    """)
    count, idle, busy = map(int, out.split())
    assert count == 2
    assert idle < 5e6 < busy, f"ns on a CPU over 0.5 s: left-out helper {idle}, working helper {busy}"


@LINUX_ONLY
def test_a_helper_stays_awake_for_calls_a_fraction_of_a_millisecond_apart():
    """Between a program's GEMMs there is often under a millisecond of other work; a helper that fell
    asleep in such a gap costs the next call a wake-up (50-300 us in a VM, longer than a 256^3 call).
    So after small 2-thread calls 0.3 ms apart the helper sleeps (a voluntary context switch, on its
    condition variable) after almost none of them: it spun for 0.1 ms and slept after each before."""
    out = run_python("""
        import os, time, numpy as np
        from autogemm import analytic, api, machine
        kernel = api.build(analytic.default_params(machine.detect(), "float32"))
        a = np.ones((200, 200), np.float32)
        c = np.empty((200, 200), np.float32)
        before = set(os.listdir("/proc/self/task"))
        kernel.gemm(a, a, c, threads=2, force_threads=True)
        (helper,) = set(os.listdir("/proc/self/task")) - before
        def sleeps():
            for line in open(f"/proc/self/task/{helper}/status"):
                if line.startswith("voluntary_ctxt_switches"):
                    return int(line.split()[1])
        start = sleeps()
        for _ in range(100):
            until = time.perf_counter() + 3e-4
            while time.perf_counter() < until:  # the caller's other work
                pass
            kernel.gemm(a, a, c, threads=2, force_threads=True)
        print(sleeps() - start)
    """)
    assert int(out) < 20, f"the helper slept {out} times between 100 calls 0.3 ms apart"


@LINUX_ONLY
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                    reason="needs two CPUs to keep a helper off one")
def test_a_helper_woken_off_its_callers_cpu_gets_every_cpu_back():
    """A sleeping helper is woken with the caller's CPU taken out of its affinity (so that it does not
    queue behind the caller); once awake it must take every CPU back, or it would stay off that CPU
    for good. Each call comes after the helper has fallen asleep; the answers stay right."""
    out = run_python("""
        import os, time, numpy as np
        from autogemm import analytic, api, machine
        from autogemm.check import error_ratio
        kernel = api.build(analytic.default_params(machine.detect(), "float32"))
        rng = np.random.default_rng(0)
        a, b = rng.uniform(-1, 1, (300, 200)).astype(np.float32), rng.uniform(-1, 1, (200, 250)).astype(np.float32)
        allowed = os.sched_getaffinity(0)
        right = True
        for i in range(20):
            time.sleep(0.03)  # longer than a helper waits awake for the next job
            c = np.empty((300, 250), np.float32)
            kernel.gemm(a, b, c, threads=2, force_threads=i % 2 == 1)
            right &= bool(error_ratio(c, a, b) <= 1)
        time.sleep(0.03)
        tasks = [int(t) for t in os.listdir("/proc/self/task")]
        print(right, len(tasks), sum(os.sched_getaffinity(t) == allowed for t in tasks))
    """)
    right, tasks, on_every_cpu = out.split()
    assert right == "True"
    assert int(tasks) >= 2 and on_every_cpu == tasks, out


def test_concurrent_callers_get_their_own_answers(rng):
    """Callers on several Python threads (the GIL is released in C): one runs its job on the helpers,
    the others, finding them busy, alone; every answer is its own. Half the callers run the packed
    path (forced onto 2 threads), whose phases are separate jobs, between which another caller's job
    can start."""
    kernel = default_kernel()
    problems = [(rng.uniform(-1, 1, (150 + i, 90)).astype(np.float32), rng.uniform(-1, 1, (90, 130 - i)).astype(np.float32))
                for i in range(4)]
    failures = []

    def work(a, b, packed):
        for _ in range(30):
            c = np.full((a.shape[0], b.shape[1]), np.nan, np.float32)
            kernel.gemm(a, b, c, threads=2, force_threads=packed)
            if not error_ratio(c, a, b) <= 1:
                failures.append((a.shape, b.shape, packed))

    threads = [threading.Thread(target=work, args=(*problem, i % 2 == 1)) for i, problem in enumerate(problems)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def _two_thread_gemms(seed):
    """Whether a 2-thread direct GEMM and a 2-thread packed one (forced) are both right."""
    kernel = default_kernel()
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(-1, 1, (200, 120)).astype(np.float32), rng.uniform(-1, 1, (120, 170)).astype(np.float32)
    c = np.empty((200, 170), np.float32)
    kernel.gemm(a, b, c, threads=2, force_threads=True)
    return bool(error_ratio(kernel(a, b, threads=2), a, b) <= 1 and error_ratio(c, a, b) <= 1)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_forked_child_computes_after_its_parent_started_helpers():
    """A GNU OpenMP team, used by the packed path before, hung a child forked after it ran."""
    assert _two_thread_gemms(0)  # the parent's helper is running
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert all(pool.map_async(_two_thread_gemms, range(1, 5), chunksize=1).get(timeout=120))
