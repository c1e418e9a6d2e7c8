"""`benchmarks/reproduce_post.py`: its precise row, taken from the ema run's
weights, is what a trained `--statistics precise` run measures; only the
post's two goals fail the script."""

import keras
import numpy as np
import pytest

from kpair.training import gap
from kpair.training.trainer import train
from tests.benchmarks.scripts import load_script

IMAGES = 24


def test_precise_row_from_ema_weights_is_a_trained_precise_run(
        demo_data, tiny_config, tmp_path, monkeypatch):
    """Batch norm on balanced batches, three epochs, deterministic kernels:
    the precise run trains to the ema run's weights, so the row derived
    from the ema run gives its gap, losses and validation loss."""
    script = load_script("reproduce_post", monkeypatch)
    changes = dict(norm="batch", batching="balanced", epochs=3,
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
    # The same weights as the ema run: its training-mode loss, other
    # statistics: another inference-mode loss.
    assert derived[gap.TRAINING_MODE] == pytest.approx(
        ema_metrics[gap.TRAINING_MODE], rel=1e-5)
    assert abs(derived[gap.INFERENCE_MODE]
               - ema_metrics[gap.INFERENCE_MODE]) > 1e-4


def test_only_the_posts_goals_fail_the_script(monkeypatch):
    script = load_script("reproduce_post", monkeypatch)

    def record(norm, batching, stats, gap_ratio):
        run = next(r for r in script.RUNS if r[:3] == (norm, batching, stats))
        return {"seed": 0, "precision": "float32", "norm": norm,
                "batching": batching, "statistics": stats, "goal": run[3],
                "gap": gap_ratio, "holds": bool(run[4](gap_ratio)),
                "post": run[5], "train_loss_training_mode": 0.5,
                "train_loss_inference_mode": 0.5 * gap_ratio, "val_loss": 1.0,
                "batch_stats": "-"}

    def verdict(*records):
        result = {"setting": "demo", "title": "t", "rows": list(records),
                  "summary": script.summarize(records)}
        return script.report([result])

    lines, ok = verdict(record("batch", "per-type", "ema", 3.0),
                        record("per-domain", "per-type", "ema", 0.9),
                        record("batch", "balanced", "ema", 1.39))
    assert ok
    assert lines[-2].startswith("The post's goals (its bug")
    assert "batch on balanced batches (float32, ema statistics, max 1.39x)" \
        in lines[-1]
    lines, ok = verdict(record("batch", "per-type", "ema", 2.4),
                        record("per-domain", "per-type", "ema", 0.9))
    assert not ok and "do NOT hold" in lines[-2]
