"""`kpair train --statistics precise` on TensorFlow, JAX and torch, each in a
fresh process: every stateful norm's saved statistics equal the NumPy
float64 population reference over the run's images within 1e-5 relative.

`python -m tests.backends.test_precise_statistics_backends DATA OUT NORM...`
(with `KERAS_BACKEND` set) trains one tiny run per norm on that backend and
prints one line of JSON: the backend and, per norm, the largest relative
error of the run's statistics against the reference.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NORMS = ("batch", "per-domain", "eval-mode", "batch-renorm")
IMAGES = 24
# Images of each domain in the runs: fewer than the tiny demo holds.
FLAGS = [
    # Mixed batches: one stream of batches a step traces and compiles
    # faster than per-type's three; the shares of the domains are the same
    # on the demo data (as many training pairs of each type), and which
    # each batching gives is tests/kpair/training/test_precise_statistics.py's.
    "--batching", "mixed",
    "--width-multiplier", "0.125", "--image-size", "16", "--embedding-dim",
    "16", "--batch-size", "12", "--eval-pairs", "12", "--epochs", "1",
    "--steps-per-epoch", "1", "--precision", "float32",
    "--statistics", "precise", "--precise-images", str(IMAGES),
]


def _installed(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_precise_statistics_on_every_backend(backend, demo_data, tmp_path):
    if not _installed(backend):
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.backends.test_precise_statistics_backends",
         str(demo_data), str(tmp_path), *NORMS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    assert set(result["errors"]) == set(NORMS)
    for norm, (layers, error) in result["errors"].items():
        assert layers > 0, (norm, layers)
        assert error < 1e-5, (backend, norm, error)


def main(data, out, norms):
    """Trains one run per norm on this process's backend; prints the errors."""
    import keras

    from kpair.cli import main as kpair_main
    from kpair.config import TrainConfig
    from kpair.inspection.norm_statistics import stateful_norm_layers
    from kpair.runs import model_files
    from tests.kpair.training.test_precise_statistics import (
        chosen_images,
        reference_shares,
        reference_statistics,
        relative_errors,
    )

    errors = {}
    for norm in norms:
        run = Path(out) / norm
        code = kpair_main(["train", "--data", data, "--out", str(run),
                           "--norm", norm, *FLAGS])
        assert code in (0, None), code
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["backend"] == keras.backend.backend(), metrics["backend"]
        assert metrics["precise_images"] == {"0": IMAGES, "1": IMAGES}
        config = TrainConfig.load(run / "config.json")
        model = model_files.load_model(run / "model.keras")
        keras.utils.set_random_seed(config.seed)  # the run's draw of images
        expected = reference_statistics(
            model, chosen_images(config), reference_shares(Path(data),
                                                           config.batching))
        errors[norm] = (len(stateful_norm_layers(model)),
                        float(max(relative_errors(model, expected))))
    print(json.dumps({"backend": keras.backend.backend(), "errors": errors}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
