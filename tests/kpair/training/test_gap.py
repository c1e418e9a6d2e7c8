"""The gap on equal footing (kpair.training.gap) and one domain per backbone call."""

import json
import math

import keras
import numpy as np
import pytest

from kpair.data import PAIR_TYPES, make_batches, read_split
from kpair.models.pair_model import PairModel, build_per_type_model
from kpair.training import gap
from kpair.training.callbacks import read_history
from kpair.training.trainer import train
from tests.kpair.conftest import DOMAIN_PIXEL


def counts(aa, bb, ab):
    return dict(zip(PAIR_TYPES, (aa, bb, ab)))


@pytest.mark.parametrize("batching", ["per-type", "balanced"])
def test_sample_fills_whole_batches_with_equal_types(batching):
    # 48 pairs wanted, batch 12 -> 4 of a type a batch, 16 of each type.
    assert gap.sample_sizes(counts(100, 100, 100), batching, 12, 48) == counts(
        16, 16, 16)
    # The rarest type caps the sample (9 -> two batches of 4).
    assert gap.sample_sizes(counts(100, 100, 9), batching, 12, 48) == counts(
        8, 8, 8)
    # Fewer pairs wanted than one batch holds: still one whole batch.
    assert gap.sample_sizes(counts(100, 100, 100), batching, 12, 5) == counts(
        4, 4, 4)


def test_mixed_sample_is_whole_batches_in_proportion():
    sizes = gap.sample_sizes(counts(60, 30, 10), "mixed", 12, 50)
    assert sum(sizes.values()) == 48  # four whole batches of 12
    assert sizes == counts(30, 14, 4)  # 48 * (0.6, 0.3, 0.1) rounded down: 28,
    # 14, 4; the 2 left over go to the largest type
    # Never more than the split holds, in whole batches.
    assert sum(gap.sample_sizes(counts(5, 5, 5), "mixed", 12, 480).values()) == 12


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["per-type", "mixed"])
def test_group_norm_has_no_gap_in_any_epoch(demo_data, tiny_config, tmp_path,
                                            batching):
    """Group norm computes the same in both modes: the gap is 1 every epoch.

    Dividing by Keras's running loss (weights changing over the epoch) gave
    0.80x-0.86x here.
    """
    out = tmp_path / "run"
    metrics = train(tiny_config(demo_data, out, norm="group", batching=batching,
                                epochs=2))
    rows = read_history(out / "history.csv")
    assert len(rows) == 2
    for row in rows:
        assert abs(float(row["gap_ratio"]) - 1.0) <= 1e-3, row
        # A real loss that moved: not 0/0 or a constant.
        assert float(row["train_loss_training_mode"]) > 0
    assert float(rows[0]["train_loss_training_mode"]) != float(
        rows[1]["train_loss_training_mode"])
    assert abs(metrics["gap_ratio"] - 1.0) <= 1e-3
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["sample_pairs"] == 24  # eval_pairs, in whole batches


class DomainSpy(keras.layers.Layer):
    """Records the distinct pixel values of every eager call."""

    calls = []

    def call(self, x):
        if not isinstance(x, keras.KerasTensor) and hasattr(x, "numpy"):
            self.calls.append(np.unique(x.numpy()[:, 0, 0, 0]))
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


def spy_pair_model(size):
    image = keras.Input((size, size, 3), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    x = DomainSpy(name="spy")(image)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(4, name="embed")(x)
    backbone = keras.Model([image, domain], x, name="backbone")
    return PairModel(backbone, name="pair_model")


def test_per_type_backbone_calls_hold_one_domain_with_ba_pairs(tiny_split):
    """A-B groups holding A-B and B-A pairs: each call still sees one domain,
    and each pair's prediction is that of the pair as it is (not swapped)."""
    # tf.data's seeded shuffles also read the global seed: fix both.
    keras.utils.set_random_seed(0)
    split = tiny_split({"A-A": 24, "B-B": 24, "A-B": 12, "B-A": 12})
    pair_model = spy_pair_model(8)
    trainer = build_per_type_model(pair_model)
    assert trainer.pair_model is pair_model
    batches = list(make_batches(read_split(split, 8), "per-type", 12, seed=1))
    mixed_orientation = False
    for features, _ in batches:
        DomainSpy.calls.clear()
        predictions = keras.ops.convert_to_numpy(trainer(features, training=True))
        assert len(DomainSpy.calls) == 6  # two calls per pair type
        for values in DomainSpy.calls:
            assert len(values) == 1, values  # one domain per backbone call
        left = features["ab_left_domain"].numpy()
        mixed_orientation |= len(set(left)) == 2
        # The same pairs through the pair model, left and right as given.
        group = {k[3:]: v for k, v in features.items() if k.startswith("ab_")}
        expected = keras.ops.convert_to_numpy(pair_model(group)).reshape(-1)
        np.testing.assert_allclose(predictions.reshape(-1)[8:], expected,
                                   rtol=1e-6, atol=1e-6)
    assert mixed_orientation, "no batch held both orientations: test too weak"
    assert set(DOMAIN_PIXEL) == {0, 1}


def test_gap_probe_is_the_same_pairs_in_both_modes(demo_data, tiny_config):
    """With a model whose modes agree, the two losses are equal to the bit;
    with batch norm on one-domain batches they are not."""
    from kpair.models.model_builder import build_pair_model

    pairs = read_split(demo_data / "train", 16)
    sample = gap.fixed_sample(pairs, "per-type", 12, 24, seed=0)
    probe = gap.GapProbe.for_run(sample, "per-type", 12, ("l2", "hinge", "hinge"))
    config = tiny_config(norm="batch")
    model = build_pair_model(config)
    before = [v.numpy() for v in model.non_trainable_variables]
    first = probe.measure(model)
    assert first["sample_pairs"] == 24
    assert math.isfinite(first[gap.TRAINING_MODE])
    # Nothing updated: the moving statistics are as they were, and a second
    # measure gives the same figures.
    for b, v in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())
    assert probe.measure(model) == first
    assert first[gap.TRAINING_MODE] != first[gap.INFERENCE_MODE]
