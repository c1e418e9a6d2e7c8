"""`kpair train --init`: a run whose backbone starts from saved weights."""

import json

import keras
import keras_tuner
import numpy as np
import pytest

from kpair.cli import main
from kpair.config import TrainConfig
from kpair.errors import ConfigError
from kpair.models.backbone import ResNet18Backbone
from kpair.pretrained import read_source
from kpair.training.trainer import train
from kpair.tuning.hypermodel import PairHyperModel


@pytest.fixture
def saved_backbone(tmp_path):
    """A tiny batch-norm backbone that pads as torchvision does, epsilon
    1e-5, statistics moved off their initial values, saved as `.keras`."""
    backbone = ResNet18Backbone(
        norm="batch", norm_options={"epsilon": 1e-5}, image_size=16,
        stem="imagenet", width_multiplier=0.125, embedding_dim=16,
        padding="symmetric",
    )
    rng = np.random.default_rng(0)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, c))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))
    path = tmp_path / "start.keras"
    backbone.save(path)
    return backbone, path


def test_per_domain_run_from_a_kpair_file(saved_backbone, demo_data, tiny_config,
                                          tmp_path, capsys):
    source, path = saved_backbone
    config = tiny_config(demo_data, tmp_path / "run", norm="per-domain",
                         batching="mixed", stem="imagenet", init=str(path),
                         freeze_stages=1)
    metrics = train(config)
    assert metrics["init"] == {"source": str(path), "padding": "symmetric",
                               "epsilon": 1e-5, "input_normalization": None}
    assert f"Backbone starts from {path}: symmetric padding" in capsys.readouterr().out
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    backbone = model.backbone
    assert backbone.padding == "symmetric" and backbone.frozen_stages == 1
    assert backbone.norm_options["epsilon"] == 1e-5
    # The stem and stage 1 are frozen: after training, every domain's row
    # still holds the source's statistics, and the kernels are the source's.
    for name in ("stem_norm", "stage1_block2_norm2"):
        expected = keras.ops.convert_to_numpy(source.get_layer(name).moving_mean)
        rows = keras.ops.convert_to_numpy(backbone.get_layer(name).moving_mean)
        np.testing.assert_array_equal(rows, np.tile(expected, (2, 1)))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone.get_layer("stem_conv").kernel),
        keras.ops.convert_to_numpy(source.get_layer("stem_conv").kernel),
    )
    # Stage 2 trained.
    assert not np.array_equal(
        keras.ops.convert_to_numpy(backbone.get_layer("stage2_block1_conv1").kernel),
        keras.ops.convert_to_numpy(source.get_layer("stage2_block1_conv1").kernel),
    )


def test_cli_flags(tmp_path, capsys):
    assert main(["train", "--init", "torchvision:r18.pth", "--stem", "imagenet",
                 "--freeze-stages", "2", "--out", str(tmp_path / "o"),
                 "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["init"] == "torchvision:r18.pth" and printed["freeze_stages"] == 2


@pytest.mark.parametrize("changes, match", [
    (dict(init="torchvision:r18.pth"), "stem='imagenet'"),
    (dict(init="keras-hub:resnet_18_imagenet", stem="imagenet",
          width_multiplier=0.5), "width_multiplier=0.5"),
    (dict(init="r18.pth"), "Received: init='r18.pth'"),
    (dict(freeze_stages=5), "Received: freeze_stages=5"),
])
def test_bad_init_config(changes, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**changes)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="No such file") as error:
        read_source(f"torchvision:{tmp_path / 'none.pth'}")
    assert "\n" not in str(error.value)


def test_tuner_trials_start_from_init(saved_backbone, tiny_config):
    source, path = saved_backbone
    base = tiny_config(norm="batch", batching="mixed", stem="imagenet",
                       init=str(path))
    model = PairHyperModel(base, norms=["group"]).build(
        keras_tuner.HyperParameters()
    )
    backbone = _pair_model(model).backbone
    assert backbone.padding == "symmetric" and backbone.norm == "group"
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone.get_layer("stem_norm").gamma),
        keras.ops.convert_to_numpy(source.get_layer("stem_norm").gamma),
    )


def _pair_model(model):
    return getattr(model, "pair_model", model)
