"""Workloads: the GEMMs of a training step, as data. Built in: GPT-2 124M as llm.c runs it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One GEMM of a workload: C[m x n] = op(A) op(B) (+ bias) + beta * C, run `count` times a step.

    `role` says what it is in a training step (forward, dinp, dweight, or a free label); the
    llm.c-style baseline knows the first three.
    """

    m: int
    n: int
    k: int
    trans_a: bool = False
    trans_b: bool = False
    beta: float = 0.0
    count: int = 1
    bias: bool = False
    name: str = ""
    role: str = ""

    def __post_init__(self):
        for field in ("m", "n", "k", "count"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"workload GEMM {self.name or '?'}: {field} must be a positive integer, got {value!r}")
        if self.beta not in (0, 0.0, 1, 1.0):
            raise ValueError(f"workload GEMM {self.name or '?'}: beta must be 0 or 1, got {self.beta!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.m, self.n, self.k)

    @property
    def layout(self) -> str:
        return ("t" if self.trans_a else "n") + ("t" if self.trans_b else "n")

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k * self.count

    def key(self) -> tuple:
        return (self.m, self.n, self.k, self.trans_a, self.trans_b, float(self.beta), self.bias)

    def label(self) -> str:
        bias = "+bias" if self.bias else ""
        return f"{self.name or self.role} {self.layout.upper()} {self.m}x{self.n}x{self.k} b{self.beta:g}{bias}"


def gpt2_124m(tokens: int = 256, channels: int = 768, layers: int = 12, vocab: int = 50304) -> list[Problem]:
    """The 147 GEMMs of one llm.c GPT-2 124M training step (M = B*T = `tokens`), as distinct problems.

    Weights are stored [out, in]: forward is out = inp W^T + bias (NT with bias), backward
    dinp += dout W (NN, accumulating) and dW += dout^T inp (TN, accumulating).
    """
    c = channels
    linears = [("qkv", 3 * c, c, True), ("attproj", c, c, True), ("fc", 4 * c, c, True),
               ("fcproj", c, 4 * c, True), ("lm_head", vocab, c, False)]
    problems = []
    for name, out_features, in_features, has_bias in linears:
        count = 1 if name == "lm_head" else layers
        problems += [
            Problem(tokens, out_features, in_features, False, True, 0.0, count, has_bias, name, "forward"),
            Problem(tokens, in_features, out_features, False, False, 1.0, count, False, name, "dinp"),
            Problem(out_features, in_features, tokens, True, False, 1.0, count, False, name, "dweight"),
        ]
    return problems


BUILTIN = {"gpt2-124m": gpt2_124m}


def _from_item(item) -> Problem:
    if isinstance(item, dict):
        known = {f for f in Problem.__dataclass_fields__}
        unknown = set(item) - known
        if unknown:
            raise ValueError(f"workload entry has unknown keys {sorted(unknown)}")
        return Problem(**{k: (bool(v) if k in ("trans_a", "trans_b", "bias") else v) for k, v in item.items()})
    if isinstance(item, (list, tuple)) and len(item) == 7:
        m, n, k, ta, tb, beta, count = item
        return Problem(m, n, k, bool(ta), bool(tb), beta, count)
    raise ValueError(f"workload entry {item!r} is neither an object nor [M, N, K, trans_a, trans_b, beta, count]")


def load(spec: str, tokens: int = 256) -> list[Problem]:
    """A built-in workload by name (`gpt2-124m`, sized by `tokens`) or a JSON file: a list of
    [M, N, K, trans_a, trans_b, beta, count] rows or of objects with those keys (plus bias, name)."""
    if spec in BUILTIN:
        return BUILTIN[spec](tokens)
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"workload {spec!r} is neither built in ({', '.join(BUILTIN)}) nor a file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"workload file {path}: not JSON ({exc})") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"workload file {path}: expected a non-empty list of GEMMs")
    return [_from_item(item) for item in data]


def distinct(problems: list[Problem]) -> list[Problem]:
    """Identical GEMMs merged, their counts added, largest share of the flops first."""
    merged: dict[tuple, Problem] = {}
    for p in problems:
        if p.key() in merged:
            q = merged[p.key()]
            merged[p.key()] = Problem(**{**asdict(q), "count": q.count + p.count})
        else:
            merged[p.key()] = p
    return sorted(merged.values(), key=lambda p: -p.flops)


def total_flops(problems: list[Problem]) -> float:
    return sum(p.flops for p in problems)
