"""A keras-hub image converter read as kpair's input normalization: on the
same images, the backbone's normalization layer computes what the converter
computes, whatever the converter holds; one that cannot be read is an error
that says what to pass."""

import keras
import numpy as np
import pytest

from kpair.errors import ConfigError
from kpair.models.backbone import ResNet18Backbone
from kpair.pretrained.keras_hub import converter_normalization

keras_hub = pytest.importorskip("keras_hub")

INIT = "keras-hub:test"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _normalized(normalization, images):
    """What the backbone's `input_normalization` layer makes of `images`."""
    backbone = ResNet18Backbone(
        norm="group", image_size=images.shape[1], stem="imagenet",
        width_multiplier=0.125, embedding_dim=8,
        input_normalization=normalization,
    )
    layer = backbone.get_layer("input_normalization")
    return keras.ops.convert_to_numpy(layer(images))


@pytest.mark.parametrize("pixel_range, scale, offset", [
    (255, 1 / 255, None),  # ResNetImageConverter(scale=1/255): scale only
    (255, None, -0.5),  # offset only, one number
    (255, [1 / 255, 2 / 255, 0.5 / 255], None),  # scale only, per channel
    (255, None, [-1.0, 0.0, 2.0]),  # offset only, per channel
    (255, 2 / 255, [-1.0, -0.5, 0.25]),  # one scale, an offset per channel
    # keras-hub's ResNet presets: ImageNet's mean and std on raw pixels.
    (255, [1 / (255 * s) for s in IMAGENET_STD],
     [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]),
    (255, None, None),  # the pixels as they are, in [0, 255]
    (1, 2.0, -1.0),  # a converter that takes images in [0, 1]
])
def test_backbone_normalizes_as_the_converter(pixel_range, scale, offset):
    converter = keras_hub.layers.ResNetImageConverter(scale=scale, offset=offset)
    images = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(converter(images * pixel_range))
    normalization = converter_normalization(converter, INIT, pixel_range)
    assert np.all(np.isfinite(normalization["mean"] + normalization["std"]))
    got = _normalized(normalization, images)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_scale_only_is_no_normalization():
    """The issue's converter: images in [0, 1] as they are, not NaN."""
    converter = keras_hub.layers.ResNetImageConverter(scale=1 / 255)
    normalization = converter_normalization(converter, INIT)
    assert normalization["mean"] == [0.0, 0.0, 0.0]
    assert normalization["std"] == pytest.approx([1.0] * 3, rel=1e-12)


@pytest.mark.parametrize("scale, offset, why", [
    ("1/255", None, "not a number or 3 numbers"),
    ([1.0, 2.0], None, "not a number or 3 numbers"),
    (None, [[0.0, 0.0, 0.0]], "not a number or 3 numbers"),
    (float("nan"), None, "not finite"),
    (None, float("inf"), "not finite"),
    (0.0, None, "not positive"),
    ([1.0, -1.0, 1.0], None, "not positive"),
    (1e-300, None, "not finite and positive"),  # std = 1 / (255 * scale)
    (1e-3, 1e38, "not finite and positive"),  # mean beyond float32
])
def test_unreadable_converter_says_what_to_pass(scale, offset, why):
    converter = keras_hub.layers.ResNetImageConverter(scale=scale, offset=offset)
    with pytest.raises(ConfigError, match=why) as error:
        converter_normalization(converter, INIT)
    message = str(error.value)
    assert "input_normalization=" in message and "save_to_preset" in message
    assert f"Received: init={INIT!r}, scale={scale!r}" in message
    assert "\n" not in message
