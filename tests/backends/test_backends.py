"""kpair's models on the JAX and torch backends, each in a fresh process."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kpair.inspection.adapt import adapt_model
from kpair.models.model_builder import build_pair_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tensorflow_model(tmp_path_factory, tiny_config):
    """A tiny per-domain pair model saved by this (TensorFlow) process, with
    moving statistics moved off their initial values, and what it predicts."""
    model = build_pair_model(
        tiny_config(norm="per-domain", precision="float32", num_domains=2)
    )
    rng = np.random.default_rng(0)
    size = model.inputs[0].shape[1]

    def batch(shift):
        images = rng.uniform(size=(4, size, size, 3)).astype("float32") + shift
        return {
            "left": images,
            "right": images[::-1].copy(),
            "left_domain": np.array([0, 1, 0, 1], "int32"),
            "right_domain": np.array([1, 1, 0, 0], "int32"),
        }

    for _ in range(3):
        model(batch(0.5), training=True)
    inputs = batch(0.0)
    folder = tmp_path_factory.mktemp("tf-model")
    model.save(folder / "model.keras")
    expected = model.predict(inputs, verbose=0)
    # `kpair adapt`'s statistics of domain 1 from these images, on TensorFlow.
    adapted = adapt_model(keras.saving.load_model(folder / "model.keras"),
                          inputs["left"], domain=1)
    statistics = {f"adapted/{v.path}": np.asarray(v)
                  for v in adapted.non_trainable_variables}
    np.savez(folder / "inputs.npz", expected=expected, **inputs, **statistics)
    return folder / "model.keras", folder / "inputs.npz"


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_models_on_backend(backend, tensorflow_model):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.backends.backend_checks"]
        + [str(path) for path in tensorflow_model],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"backend checks passed on {backend}" in result.stdout
