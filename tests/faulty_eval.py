"""Candidate evaluators that misbehave on purpose, for the tuner's robustness tests."""

import os
import signal
import time

from autogemm.evaluate import Result, evaluate as real_evaluate


def evaluate(request):
    """mr == 2 crashes the worker with SIGSEGV, mr == 3 hangs, everything else runs for real."""
    if request.params["mr"] == 2:
        os.kill(os.getpid(), signal.SIGSEGV)
    if request.params["mr"] == 3:
        time.sleep(3600)
    return real_evaluate(request)


def echo(request):
    return Result("ok", {"median": float(request.params["mr"]), "p20": 0.0, "p80": 0.0})


def prefer_prefetch(request):
    """Scores a kernel by its prefetch distance, so the analytic default (no prefetch) ranks last."""
    return Result("ok", {"median": 1.0 + request.params["prefetch"], "p20": 0.0, "p80": 0.0})
