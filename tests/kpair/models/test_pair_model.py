"""PairModel and the per-type training graph."""

import keras
import numpy as np

from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel, build_per_type_model
from kpair.pair_types import TYPE_KEYS

TINY = dict(width_multiplier=0.125, image_size=16, embedding_dim=8)


def features(n, left_domain, right_domain, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "left": rng.random((n, 16, 16, 3), "float32"),
        "right": rng.random((n, 16, 16, 3), "float32"),
        "left_domain": np.full(n, left_domain, "int32"),
        "right_domain": np.full(n, right_domain, "int32"),
    }


def test_inputs_are_named_and_the_same_for_every_norm():
    for norm in ("batch", "per-domain"):
        model = PairModel(ResNet18Backbone(norm=norm, **TINY))
        assert sorted(t.name for t in model.inputs) == [
            "left", "left_domain", "right", "right_domain"
        ]
        assert model(features(3, 0, 1)).shape == (3, 1)
        assert model.output_names == ["prediction"]


def test_per_type_model_calls_the_backbone_once_per_image_set():
    """Each backbone call in a per-type step sees images of one domain."""
    backbone = ResNet18Backbone(norm="batch", **TINY)
    pair_model = PairModel(backbone)
    seen = []

    # Record the domains of every backbone call during one training step.
    original_call = backbone.call

    def spying_call(inputs, training=None, mask=None):
        seen.append(keras.ops.convert_to_numpy(inputs[1]).tolist())
        return original_call(inputs, training=training, mask=mask)

    backbone.call = spying_call
    trainer = build_per_type_model(pair_model)
    batch = {}
    for prefix, (left, right) in zip(TYPE_KEYS, [(0, 0), (1, 1), (0, 1)]):
        for key, value in features(4, left, right).items():
            batch[f"{prefix}_{key}"] = value
    out = trainer(batch, training=True)
    assert out.shape == (12, 1)
    assert len(seen) == 6
    for domains in seen:
        assert len(set(domains)) == 1, seen
    # Two calls of A (A-A), two of B (B-B), one of each for A-B; the graph
    # may run them in any order.
    assert sorted(d[0] for d in seen) == [0, 0, 0, 1, 1, 1]


def test_per_type_model_shares_weights_and_matches_pair_model():
    pair_model = PairModel(ResNet18Backbone(norm="per-domain", **TINY))
    trainer = build_per_type_model(pair_model)
    assert len(trainer.weights) == len(pair_model.weights)
    batch, expected = {}, []
    for prefix, (left, right) in zip(TYPE_KEYS, [(0, 0), (1, 1), (0, 1)]):
        f = features(3, left, right, seed=len(expected))
        expected.append(pair_model.predict_on_batch(f))
        batch.update({f"{prefix}_{k}": v for k, v in f.items()})
    np.testing.assert_allclose(
        trainer.predict_on_batch(batch), np.concatenate(expected), rtol=1e-5
    )


def test_saved_pair_model_loads_with_safe_mode(tmp_path):
    pair_model = PairModel(ResNet18Backbone(norm="per-domain", **TINY))
    f = features(4, 0, 1)
    pair_model(f, training=True)
    pair_model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(
        restored.predict_on_batch(f), pair_model.predict_on_batch(f)
    )
    assert restored.backbone.get_config() == pair_model.backbone.get_config()


def test_prediction_is_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    model = PairModel(ResNet18Backbone(norm="batch", **TINY))
    out = model(features(2, 1, 1))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    embedding = model.backbone(
        [features(2, 1, 1)["left"], np.ones(2, "int32")]
    )
    assert keras.backend.standardize_dtype(embedding.dtype) == "float16"
    assert model.get_layer("head").kernel.dtype == "float32"
