"""`kpair check` names the cause it can see, and no other."""

import keras

from kpair.config import TrainConfig
from kpair.inspection.check import check_model
from kpair.models.model_builder import build_pair_model
from tests.conftest import TINY
from tests.kpair.inspection.test_check import _BatchMeanLeak, _summary, _wrapped


def test_a_leaking_group_norm_model_is_not_put_down_to_batch_statistics():
    """Group norm has no batch statistics: a model that leaks the batch's
    mean fails, and the finding does not blame batch statistics, which move
    nothing in it."""
    keras.utils.set_random_seed(0)
    model = build_pair_model(TrainConfig(**{**TINY, "norm": "group"}))
    finding = _summary(check_model(_wrapped(model, _BatchMeanLeak(0.05)),
                                   pairs=12))
    assert finding.level == "failure", finding.line()
    assert "uses batch statistics" not in finding.message, finding.line()
    assert "none of the model's normalization layers uses them" in finding.message, (
        finding.line())
