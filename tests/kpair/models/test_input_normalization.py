"""The backbone refuses an input normalization that would poison every image."""

import math

import pytest

from kpair.errors import ConfigError
from kpair.models.backbone import ResNet18Backbone

GOOD = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _backbone(input_normalization):
    return ResNet18Backbone(width_multiplier=0.125, image_size=16,
                            input_normalization=input_normalization)


@pytest.mark.parametrize("bad", [
    {"mean": [math.inf, 0.456, 0.406], "std": GOOD["std"]},
    {"mean": [math.nan, 0.456, 0.406], "std": GOOD["std"]},
    {"mean": GOOD["mean"], "std": [math.inf, 0.224, 0.225]},
    {"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2, 0.2]},
    {"mean": GOOD["mean"], "std": [0.229, 0.0, 0.225]},
    {"mean": GOOD["mean"]},
])
def test_a_bad_input_normalization_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match="input_normalization"):
        _backbone(bad)


def test_a_finite_input_normalization_builds():
    assert _backbone(GOOD).input_normalization == GOOD
