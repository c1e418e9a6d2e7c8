"""Each trial's model computes in the requested precision.

keras-tuner's `_try_build` calls `keras.backend.clear_session()` before each
build, which in Keras 3 resets the global dtype policy to float32. These
tests look at the model a trial actually trains (inside `fit`, after that
reset), not at a model built before the search.
"""

import keras
import keras_tuner
import pytest

from kpair.tuning import PairHyperModel


class InspectingHyperModel(PairHyperModel):
    """Records what a trial's model looks like instead of training it."""

    seen = []

    def fit(self, hp, model, *args, **kwargs):
        backbone = model.pair_model.backbone if (
            model.name == "per_type_trainer") else model.backbone
        convs = [
            layer for layer in backbone.layers
            if isinstance(layer, keras.layers.Conv2D)
        ]
        norms = [layer for layer in backbone.layers if layer.name.endswith("norm")
                 or "_norm" in layer.name]
        self.seen.append({
            "global_policy": keras.config.dtype_policy().name,
            "model_policy": model.dtype_policy.name,
            "conv_compute": {layer.compute_dtype for layer in convs},
            "conv_variables": {layer.variable_dtype for layer in convs},
            "norm_variables": {w.dtype for layer in norms for w in layer.weights},
            "loss_scaled": isinstance(
                model.optimizer, keras.optimizers.LossScaleOptimizer
            ),
        })
        return {"val_loss": 1.0}


@pytest.mark.parametrize(
    "precision, batching, compute, loss_scaled",
    [
        ("mixed_float16", "per-type", "float16", True),
        ("mixed_bfloat16", "mixed", "bfloat16", False),
    ],
)
def test_trial_model_runs_in_requested_precision(
    base_config, tmp_path, precision, batching, compute, loss_scaled
):
    InspectingHyperModel.seen = []
    config = base_config.replace(precision=precision)
    tuner = keras_tuner.RandomSearch(
        InspectingHyperModel(config, norms=["batch"], batchings=[batching]),
        objective=keras_tuner.Objective("val_loss", "min"),
        max_trials=1,
        directory=str(tmp_path),
    )
    tuner.search()
    (seen,) = InspectingHyperModel.seen
    # clear_session() did reset the global policy; the model does not rely on it.
    assert seen["global_policy"] == "float32"
    assert seen["model_policy"] == precision
    assert seen["conv_compute"] == {compute}
    assert seen["conv_variables"] == {"float32"}
    assert seen["norm_variables"] == {"float32"}
    assert seen["loss_scaled"] is loss_scaled
