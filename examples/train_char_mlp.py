"""A tiny character-level language model in numpy whose matmuls go through autogemm.

The model reads CONTEXT characters, embeds them, and predicts the next one through two Linear
layers (Bengio et al. 2003 style). Every Linear is the llm.c trio of GEMMs:
    forward   out  = inp @ W.T + b      autogemm.gemm(inp, W, trans_b=True, bias=b)
    backward  dinp = dout @ W           autogemm.gemm(dout, W)
              dW  += dout.T @ inp       autogemm.gemm(dout, inp, dW, trans_a=True, beta=1.0)
The text is the Zen of Python, which ships with every Python. The same script runs with numpy's
matmul for comparison; both print the loss falling and the time per step.

    python examples/train_char_mlp.py --steps 300
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import time

import numpy as np

import autogemm

CONTEXT, EMBED, HIDDEN = 16, 32, 1024


def corpus() -> str:
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    return codecs.decode(this.s, "rot13") * 4


class Backend:
    """The three GEMMs of a Linear layer, by autogemm or by numpy."""

    def __init__(self, name: str):
        self.name = name

    def forward(self, inp, weight, bias):
        if self.name == "autogemm":
            return autogemm.gemm(inp, weight, trans_b=True, bias=bias)
        return inp @ weight.T + bias

    def backward(self, dout, inp, weight, dweight):
        if self.name == "autogemm":
            autogemm.gemm(dout, inp, dweight, trans_a=True, beta=1.0)
            return autogemm.gemm(dout, weight)
        dweight += dout.T @ inp
        return dout @ weight


def train(backend: Backend, text: str, steps: int, batch: int, seed: int = 0) -> list[float]:
    vocab = sorted(set(text))
    ids = np.array([vocab.index(ch) for ch in text], np.int64)
    rng = np.random.default_rng(seed)
    v = len(vocab)
    params = {
        "emb": rng.standard_normal((v, EMBED)).astype(np.float32) * 0.1,
        "w1": rng.standard_normal((HIDDEN, CONTEXT * EMBED)).astype(np.float32) / np.sqrt(CONTEXT * EMBED),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": rng.standard_normal((v, HIDDEN)).astype(np.float32) / np.sqrt(HIDDEN),
        "b2": np.zeros(v, np.float32),
    }
    losses, lr = [], 0.5
    start = time.perf_counter()
    for step in range(1, steps + 1):
        starts = rng.integers(0, len(ids) - CONTEXT - 1, batch)
        windows = ids[starts[:, None] + np.arange(CONTEXT)]
        targets = ids[starts + CONTEXT]
        x = params["emb"][windows].reshape(batch, CONTEXT * EMBED)
        pre = backend.forward(x, params["w1"], params["b1"])
        h = np.tanh(pre)
        logits = backend.forward(h, params["w2"], params["b2"])
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        loss = -np.log(probs[np.arange(batch), targets] + 1e-9).mean()
        losses.append(float(loss))
        dlogits = probs
        dlogits[np.arange(batch), targets] -= 1
        dlogits /= batch
        grads = {name: np.zeros_like(value) for name, value in params.items()}
        dh = backend.backward(dlogits, h, params["w2"], grads["w2"])
        grads["b2"] += dlogits.sum(axis=0)
        dpre = dh * (1 - h * h)
        dx = backend.backward(dpre, x, params["w1"], grads["w1"])
        grads["b1"] += dpre.sum(axis=0)
        np.add.at(grads["emb"], windows, dx.reshape(batch, CONTEXT, EMBED))
        for name in params:
            params[name] -= lr * grads[name]
        if step % max(1, steps // 6) == 0 or step == 1:
            print(f"  {backend.name:>8} step {step:4d}  loss {np.mean(losses[-20:]):.3f}")
    elapsed = time.perf_counter() - start
    print(f"  {backend.name:>8}: {1e3 * elapsed / steps:.1f} ms/step")
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    text = corpus()
    print(f"{len(text)} characters, {len(set(text))} symbols; batch {args.batch}, hidden {HIDDEN}")
    times = {}
    for name in ("numpy", "autogemm"):
        start = time.perf_counter()
        losses = train(Backend(name), text, args.steps, args.batch)
        times[name] = time.perf_counter() - start
        assert losses[-1] < losses[0], "the loss should fall"
    print(f"autogemm / numpy time per step: {times['autogemm'] / times['numpy']:.2f}")


if __name__ == "__main__":
    main()
