"""ResNet18Backbone: architecture pinned, every norm, config round trip."""

import keras
import numpy as np
import pytest

from kpair import layers
from kpair.models.backbone import ResNet18Backbone

TINY = dict(width_multiplier=0.125, image_size=16, embedding_dim=8)


def test_trunk_matches_torchvision_resnet18_parameter_count():
    backbone = ResNet18Backbone(norm="batch", stem="imagenet", image_size=224)
    embedding = backbone.get_layer("embedding").count_params()
    # torchvision resnet18 without fc (and keras-hub resnet_18_imagenet),
    # moving statistics included.
    assert backbone.count_params() - embedding == 11_186_112
    assert backbone.output.shape == (None, 128)


def test_small_stem_keeps_resolution_until_stage_two():
    backbone = ResNet18Backbone(**TINY)
    assert backbone.get_layer("stem_conv").output.shape[1:3] == (16, 16)
    assert backbone.get_layer("stage4_block2_out").output.shape[1:3] == (2, 2)


@pytest.mark.parametrize("norm", layers.names())
def test_every_norm_builds_and_runs(norm):
    backbone = ResNet18Backbone(norm=norm, **TINY)
    images = np.random.default_rng(0).random((6, 16, 16, 3), "float32")
    domains = np.array([0, 1, 0, 1, 1, 1], "int32")
    for training in (True, False):
        out = backbone([images, domains], training=training)
        assert out.shape == (6, 8)
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))
    # Same inputs for every norm: saved models are interchangeable.
    assert [t.name for t in backbone.inputs] == ["image", "domain"]


def test_domain_reaches_per_domain_layers():
    backbone = ResNet18Backbone(norm="per-domain", num_domains=3, **TINY)
    norm = backbone.get_layer("stem_norm")
    assert isinstance(norm, layers.PerDomainBatchNormalization)
    assert norm.num_domains == 3
    images = np.random.default_rng(1).random((4, 16, 16, 3), "float32")
    backbone([images, np.full(4, 2, "int32")], training=True)
    moved = np.abs(norm.moving_mean.numpy()).sum(axis=1) > 0
    assert moved.tolist() == [False, False, True]


def test_norm_options_num_domains_wins_over_the_argument():
    backbone = ResNet18Backbone(
        norm="per-domain", norm_options={"num_domains": 4}, num_domains=2, **TINY
    )
    assert backbone.get_layer("stage2_block1_shortcut_norm").num_domains == 4
    assert backbone.get_config()["norm_options"] == {"num_domains": 4}


def test_config_round_trip():
    backbone = ResNet18Backbone(norm="group", norm_options={"groups": 4}, **TINY)
    config = backbone.get_config()
    clone = ResNet18Backbone.from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == backbone.count_params()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stem": "cifar"}, "Received: stem='cifar'"),
        ({"width_multiplier": 0}, "width_multiplier"),
        ({"image_size": -1}, "image_size"),
        ({"embedding_dim": 0}, "embedding_dim"),
        # Bounds that keep a hostile .keras config from allocating gigabytes.
        ({"embedding_dim": 10**9}, "at most 16384"),
        ({"image_size": 10**6}, "at most 4096"),
        ({"norm": "instance"}, "Received: norm='instance'"),
        ({"norm": None}, "Received: norm=None"),
        ({"norm_options": [("groups", 4)]}, "Received: norm_options="),
        ({"norm": "batch", "norm_options": {"groups": 4}}, "groups"),
        ({"num_domains": 0}, "Received: num_domains=0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet18Backbone(**{**TINY, **kwargs})
