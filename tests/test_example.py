"""The training example learns, and autogemm's GEMMs track numpy's step for step."""

import importlib.util
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_char_mlp.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_char_mlp", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loss_falls_and_backends_agree(capsys):
    example = load_example()
    text = example.corpus()
    numpy_losses = example.train(example.Backend("numpy"), text, steps=40, batch=64)
    autogemm_losses = example.train(example.Backend("autogemm"), text, steps=40, batch=64)
    assert np.mean(autogemm_losses[-5:]) < np.mean(autogemm_losses[:5]) - 0.4
    np.testing.assert_allclose(autogemm_losses, numpy_losses, rtol=2e-3)
    assert "ms/step" in capsys.readouterr().out
