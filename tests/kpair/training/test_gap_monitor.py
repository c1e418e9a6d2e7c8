"""kpair.GapMonitor on Keras models of a user's own (not kpair's)."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import kpair
from tests.kpair.training import gap_monitor_checks as checks

ROOT = Path(__file__).resolve().parents[3]


def test_one_class_batches_batch_norm():
    history, monitor, _ = checks.run("batch")
    ratios = history.history["gap_ratio"]
    assert len(ratios) == 4 and ratios[-1] >= 2
    for key in ("train_loss_training_mode", "train_loss_inference_mode"):
        assert len(history.history[key]) == 4
    # Once, in words, naming the batch norm layer.
    assert len(monitor.caught) == 1
    message = str(monitor.caught[0].message)
    assert "inference mode" in message and "batch_normalization" in message


def test_group_norm_has_no_gap():
    history, monitor, _ = checks.run("group")
    assert history.history["gap_ratio"] == pytest.approx([1.0] * 4, abs=1e-3)
    assert not monitor.caught


def test_mixed_batches_have_no_gap():
    history, monitor, _ = checks.run("batch", mixed=True)
    assert max(history.history["gap_ratio"]) <= 1.3
    assert not monitor.caught


class Subclassed(keras.Model):
    """A subclassed model whose batch norm sits inside a nested block."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = keras.Sequential([keras.layers.Dense(16),
                                       keras.layers.BatchNormalization()])
        self.head = keras.layers.Dense(1)

    def call(self, x, training=None):
        return self.head(keras.ops.relu(self.block(x, training=training)))


def test_subclassed_model_restored_and_logged(tmp_path):
    x, y = checks.data()
    model = Subclassed(name="subclassed")
    model.compile("adam", loss="mse")
    model(x[:2])
    norm = model.block.layers[1]
    norm.moving_mean.assign(np.full(16, 0.5, "float32"))
    before = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
    monitor = kpair.GapMonitor([(x[:32], y[:32]), (x[32:64], y[32:64])],
                               threshold=1e9)
    monitor.set_model(model)
    figures, shifts = monitor.measure()
    after = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)
    assert list(shifts) == [norm.name] and shifts[norm.name] > 0
    assert figures["gap_ratio"] == pytest.approx(
        figures["train_loss_inference_mode"] / figures["train_loss_training_mode"]
    )
    # CSVLogger after the monitor writes its keys.
    log = tmp_path / "log.csv"
    model.fit(x, y, batch_size=32, epochs=1, verbose=0,
              callbacks=[monitor, keras.callbacks.CSVLogger(str(log))])
    with open(log) as f:
        row = next(csv.DictReader(f))
    assert float(row["gap_ratio"]) > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one batch"):
        kpair.GapMonitor([])
    with pytest.raises(ValueError, match="Received: threshold=0"):
        kpair.GapMonitor([(np.zeros((1, 2)), np.zeros(1))], threshold=0)
    with pytest.raises(ValueError, match="Received: steps=0"):
        kpair.GapMonitor([(np.zeros((1, 2)), np.zeros(1))], steps=0)


def test_fit_unchanged_by_the_monitor():
    """The same shuffled fit of a model with dropout and batch norm, at the
    top and in a sub-model, ends on the same variables with the monitor as
    without it (PyTorch's run: test_on_backend)."""
    assert checks.fit_difference() == 0.0


def test_random_states_restored():
    """A layer that draws unseeded random numbers in inference mode too:
    measuring leaves Keras's, NumPy's and Python's random states as they
    were (and PyTorch's: test_on_backend)."""
    kept = checks.random_states_kept()
    assert kept == {"keras": True, "numpy": True, "python": True}


def test_ratio_is_the_norms_alone():
    """Dropout is off in both measuring calls: a model with dropout measures
    as the same weights without it, and the norm inside the sub-model runs
    on batch statistics (its shift is read from that call)."""
    x, y = checks.data()
    figures = {}
    for rate in (0.5, 0.0):
        net = checks.nested_model(dropout=rate)
        if rate:
            weights = net.get_weights()
        else:
            net.set_weights(weights)
        # Batches of the second class (shifted and scaled), far from the
        # initial moving statistics.
        monitor = kpair.GapMonitor([(x[32:64], y[32:64]), (x[96:128], y[96:128])])
        monitor.set_model(net)
        figures[rate], shifts = monitor.measure()
        assert len(shifts) == 2 and min(shifts.values()) > 0, shifts
    for key, value in figures[0.0].items():
        assert figures[0.5][key] == pytest.approx(value, rel=1e-6), key
    # The norms' two modes differ on these batches (an untrained model: the
    # ratio may fall either side of 1).
    assert abs(figures[0.5]["gap_ratio"] - 1) > 0.05


def test_endless_dataset_needs_steps():
    x, y = checks.data()
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    monitor = kpair.GapMonitor(endless, steps=3)
    assert len(monitor.batches) == 3
    np.testing.assert_array_equal(monitor.batches[2][0], x[64:96])
    with pytest.raises(ValueError, match="pass `steps=`"):
        kpair.GapMonitor(endless)

    def forever():
        while True:
            yield x[:32], y[:32]

    assert len(kpair.GapMonitor(forever(), steps=2).batches) == 2


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_on_backend(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.kpair.training.gap_monitor_checks"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = dict(
        ((norm, mixed), (float(ratio), int(warned)))
        for norm, mixed, ratio, warned in re.findall(
            rf"{backend} (\w+) mixed=(\w+) gap_ratio=([\d.]+) warnings=(\d)",
            result.stdout,
        )
    )
    assert found[("batch", "False")][0] >= 2 and found[("batch", "False")][1] == 1
    assert found[("group", "False")] == (pytest.approx(1.0, abs=1e-3), 0)
    assert found[("batch", "True")][0] <= 1.3
    # With dropout the gap is the norm's: still above the threshold.
    dropout = re.search(rf"{backend} dropout gap_ratio=([\d.]+) warnings=(\d)",
                        result.stdout)
    assert float(dropout[1]) >= 2 and dropout[2] == "1"
    assert f"{backend} fit_difference=0.0\n" in result.stdout
    assert f"{backend} random_states_kept=True" in result.stdout
