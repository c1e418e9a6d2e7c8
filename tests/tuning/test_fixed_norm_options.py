"""`kpair tune --norm-option`: fixed options reach every trial that takes them;
options the search varies, or that no searched norm takes, are refused."""

import keras_tuner
import pytest

from kpair.config import ConfigError
from kpair.tuning import PairHyperModel


def _config_of(model, norm):
    hp = keras_tuner.HyperParameters()
    hp.values["norm"] = norm
    return model.config_for(hp)


@pytest.mark.parametrize("norm", ["batch", "per-domain", "group"])
def test_a_fixed_epsilon_reaches_every_trial(base_config, norm):
    model = PairHyperModel(base_config.replace(norm_options={"epsilon": 0.01}))
    assert _config_of(model, norm).norm_options["epsilon"] == 0.01


def test_an_option_of_one_norm_reaches_only_its_trials(base_config):
    """Was: the base config's options never reached a trial."""
    config = base_config.replace(norm_options={"per_domain_affine": False})
    model = PairHyperModel(config, norms=["per-domain", "group"])
    assert _config_of(model, "per-domain").norm_options["per_domain_affine"] is False
    assert "per_domain_affine" not in _config_of(model, "group").norm_options


@pytest.mark.parametrize("norm, key, value", [
    ("per-domain", "momentum", 0.95),
    ("group", "groups", 8),
    ("eval-mode", "warmup_steps", 10),
])
def test_a_searched_option_given_fixed_is_refused(base_config, norm, key, value):
    config = base_config.replace(norm=norm, norm_options={key: value})
    with pytest.raises(ConfigError, match=f"searches {key} over"):
        PairHyperModel(config)


def test_an_option_no_searched_norm_takes_is_refused(base_config):
    config = base_config.replace(norm_options={"per_domain_affine": False})
    with pytest.raises(ConfigError, match="No searched norm takes"):
        PairHyperModel(config, norms=["batch", "group"])
