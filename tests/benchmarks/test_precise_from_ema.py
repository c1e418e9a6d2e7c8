"""`benchmarks/precise_from_ema.py`: a precise row from an ema run's weights
is what a trained `--statistics precise` run measures."""

import keras
import numpy as np
import pytest

from kpair.training import gap
from kpair.training.trainer import train
from tests.benchmarks.scripts import load_script

IMAGES = 24


@pytest.mark.parametrize("norm, batching", [("batch", "balanced"),
                                            ("per-domain", "per-type")])
def test_precise_row_from_ema_weights_is_a_trained_precise_run(
        norm, batching, demo_data, tiny_config, tmp_path, monkeypatch):
    """Three epochs, deterministic kernels: the precise run trains to the
    ema run's weights, so the row derived from the ema run gives its gap,
    losses and validation loss."""
    script = load_script("precise_from_ema", monkeypatch)
    changes = dict(norm=norm, batching=batching, epochs=3,
                   precise_images=IMAGES, deterministic=True)
    ema = tiny_config(demo_data, tmp_path / "ema", **changes)
    ema_metrics = train(ema)
    keras.backend.clear_session()
    precise = tiny_config(demo_data, tmp_path / "precise", statistics="precise",
                          **changes)
    trained = train(precise)
    keras.backend.clear_session()

    derived = script.precise_from_ema(
        tmp_path / "ema", tiny_config(demo_data, tmp_path / "ema",
                                      statistics="precise", **changes))

    keys = (gap.TRAINING_MODE, gap.INFERENCE_MODE, gap.GAP, "val_loss")
    np.testing.assert_allclose([derived[k] for k in keys],
                               [trained[k] for k in keys], rtol=1e-5)
    # The same weights as the ema run: its training-mode loss; other
    # statistics: another inference-mode loss.
    assert derived[gap.TRAINING_MODE] == pytest.approx(
        ema_metrics[gap.TRAINING_MODE], rel=1e-5)
    assert abs(derived[gap.INFERENCE_MODE]
               - ema_metrics[gap.INFERENCE_MODE]) > 1e-4


def test_norms_that_read_their_statistics_in_training_are_refused(
        tiny_config, monkeypatch):
    script = load_script("precise_from_ema", monkeypatch)
    for norm in ("eval-mode", "batch-renorm"):
        with pytest.raises(ValueError, match="train its precise run"):
            script.precise_from_ema("unused", tiny_config(norm=norm,
                                                          statistics="precise"))
