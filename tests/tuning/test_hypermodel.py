"""The search space of PairHyperModel, tested without training."""

import keras_tuner
import pytest

from kpair import layers
from kpair.config import ConfigError
from kpair.data import BATCHINGS
from kpair.tuning import PairHyperModel
from kpair.tuning.hypermodel import NORM_CHOICES, WHOLE_BATCH


def space(hp):
    return {p.name: p for p in hp.space}


def test_defaults_are_explicit(base_config):
    hp = keras_tuner.HyperParameters()
    config = PairHyperModel(base_config).config_for(hp)
    # Norm choices come from the registry; the default is the base config's.
    norm = space(hp)["norm"]
    assert list(norm.values) == list(layers.names())
    assert norm.default == "per-domain" == config.norm
    # per-domain takes momentum only: warm-up and groups stay inactive.
    assert hp.values["momentum"] == layers.options("per-domain")["momentum"]
    assert "groups" not in hp.values and "warmup_steps" not in hp.values
    assert config.norm_options == {"momentum": 0.9}
    assert config.learning_rate == base_config.learning_rate
    assert space(hp)["learning_rate"].sampling == "log"
    assert list(space(hp)["batching"].values) == list(BATCHINGS)
    assert config.batching == "mixed"  # the base config's


@pytest.mark.parametrize(
    "norm, expected",
    [
        ("batch", {"momentum": 0.99}),
        ("per-domain", {"momentum": 0.9}),
        ("group", {"groups": 32}),
        ("eval-mode", {"momentum": 0.99, "warmup_steps": 0}),
        ("batch-renorm", {"momentum": 0.99}),
    ],
)
def test_conditional_hyperparameters_only_for_their_norm(base_config, norm, expected):
    # The search's default norm is the norm itself, as when `kpair tune`
    # is given one norm: every default is then that norm's registry default.
    hp = keras_tuner.HyperParameters()
    hp.Fixed("norm", norm)
    config = PairHyperModel(base_config.replace(norm=norm)).config_for(hp)
    assert config.norm == norm
    assert config.norm_options == expected
    active = {k for k in hp.values if k in NORM_CHOICES}
    assert active == set(expected)
    for key, value in expected.items():
        assert value == layers.options(norm)[key]


@pytest.mark.parametrize(
    "base_norm, norms, expected",
    [
        ("per-domain", None, 0.9),  # the default norm's own
        ("batch", None, 0.99),
        ("group", ["group", "batch", "per-domain"], 0.99),  # first with momentum
        ("group", ["group", "per-domain", "batch"], 0.9),
    ],
)
def test_one_momentum_default_from_the_default_norm(
    base_config, base_norm, norms, expected
):
    hp = keras_tuner.HyperParameters()
    PairHyperModel(base_config.replace(norm=base_norm), norms=norms).config_for(hp)
    assert space(hp)["momentum"].default == expected


def test_scopes_follow_the_registry(base_config):
    hp = keras_tuner.HyperParameters()
    PairHyperModel(base_config).config_for(hp)
    for key in NORM_CHOICES:
        (condition,) = space(hp)[key].conditions
        assert condition.name == "norm"
        assert list(condition.values) == [
            n for n in layers.names() if key in layers.options(n)
        ]


def test_a_subset_of_norms_drops_scopes_nobody_uses(base_config):
    hp = keras_tuner.HyperParameters()
    hm = PairHyperModel(base_config, norms=["group", "batch"], batchings=["per-type"])
    config = hm.config_for(hp)
    assert list(space(hp)["norm"].values) == ["group", "batch"]
    assert config.norm == "group"  # base norm not listed: the first
    assert "warmup_steps" not in space(hp)
    assert list(space(hp)["batching"].values) == ["per-type"]
    assert config.batching == "per-type"


def test_fixed_overrides_reach_the_config(base_config):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("norm", "eval-mode")
    hp.Fixed("momentum", 0.997)
    hp.Fixed("warmup_steps", 500)
    hp.Fixed("learning_rate", 3e-3)
    hp.Fixed("batching", "balanced")
    config = PairHyperModel(base_config).config_for(hp)
    assert config.norm_options == {"momentum": 0.997, "warmup_steps": 500}
    assert config.learning_rate == 3e-3
    assert config.batching == "balanced"
    # Fixed arguments are the base config's.
    assert config.width_multiplier == 0.125 and config.image_size == 16


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"norms": ["batch", "instance"]}, "Received: norms=['batch', 'instance']"),
        ({"norms": []}, "Received: norms=[]"),
        ({"batchings": ["shuffled"]}, "'per-type'"),
    ],
)
def test_bad_choices_are_refused(base_config, kwargs, needle):
    with pytest.raises(ConfigError, match="per-domain|per-type") as info:
        PairHyperModel(base_config, **kwargs)
    assert needle in str(info.value)


def test_default_learning_rate_must_lie_in_the_range(base_config):
    with pytest.raises(ConfigError, match="Received: learning_rate=0.5"):
        PairHyperModel(base_config.replace(learning_rate=0.5))


def test_build_is_the_kpair_train_model(base_config):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("norm", "group")
    hp.Fixed("batching", "per-type")
    model = PairHyperModel(base_config).build(hp)
    assert model.name == "per_type_trainer"  # kpair's per-type wrapper
    assert model.compiled and model.optimizer.built
    backbone = model.pair_model.backbone
    kinds = {type(layer).__name__ for layer in backbone.layers}
    assert "GroupNormalization" in kinds and "BatchNormalization" not in kinds


def test_tuner_discovers_every_conditional_scope(base_config, tmp_path):
    tuner = keras_tuner.RandomSearch(
        PairHyperModel(base_config),
        objective=keras_tuner.Objective("val_loss", "min"),
        max_trials=1,
        directory=str(tmp_path),
    )
    names = {p.name for p in tuner.oracle.get_space().space}
    assert names == {"norm", "learning_rate", "batching", *NORM_CHOICES}


# --- ghost batches: searched when the base config names a size -----------


def ghost_config(base_config, size=4, **changes):
    return base_config.replace(norm_options={"virtual_batch_size": size}, **changes)


def test_without_a_virtual_batch_size_the_space_is_unchanged(base_config):
    hp = keras_tuner.HyperParameters()
    PairHyperModel(base_config).config_for(hp)
    assert "virtual_batch_size" not in space(hp)
    assert set(space(hp)) == {"norm", "learning_rate", "batching", *NORM_CHOICES}


def test_a_virtual_batch_size_is_searched_against_the_whole_batch(base_config):
    hp = keras_tuner.HyperParameters()
    config = PairHyperModel(ghost_config(base_config)).config_for(hp)
    choice = space(hp)["virtual_batch_size"]
    assert list(choice.values) == [WHOLE_BATCH, 4]
    assert choice.default == 4  # the first trial is what `kpair train` runs
    (condition,) = choice.conditions
    assert list(condition.values) == [
        n for n in layers.names() if "virtual_batch_size" in layers.options(n)
    ] == ["batch", "per-domain"]
    assert config.norm_options == {"momentum": 0.9, "virtual_batch_size": 4}


@pytest.mark.parametrize(
    "norm, size, expected",
    [
        ("per-domain", WHOLE_BATCH, {"momentum": 0.9}),
        # Momentum's one default is the search's default norm's (per-domain).
        ("batch", 4, {"momentum": 0.9, "virtual_batch_size": 4}),
        ("batch", WHOLE_BATCH, {"momentum": 0.9}),
        ("group", None, {"groups": 32}),
        ("eval-mode", None, {"momentum": 0.9, "warmup_steps": 0}),
    ],
)
def test_virtual_batch_size_reaches_only_the_norms_that_take_it(
    base_config, norm, size, expected
):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("norm", norm)
    if size is not None:
        hp.Fixed("virtual_batch_size", size)
    config = PairHyperModel(ghost_config(base_config)).config_for(hp)
    assert config.norm_options == expected
    assert ("virtual_batch_size" in hp.values) is (size is not None)


def test_a_norms_subset_without_ghost_batches_declares_none(base_config):
    hp = keras_tuner.HyperParameters()
    PairHyperModel(ghost_config(base_config), norms=["group", "eval-mode"]
                   ).config_for(hp)
    assert "virtual_batch_size" not in space(hp)


@pytest.mark.parametrize(
    "norm, kind",
    [("per-domain", "PerDomainBatchNormalization"),
     ("batch", "GhostBatchNormalization")],
)
def test_build_makes_ghost_batch_norms(base_config, norm, kind):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("norm", norm)
    hp.Fixed("batching", "mixed")
    model = PairHyperModel(ghost_config(base_config)).build(hp)
    backbone = getattr(model, "pair_model", model).backbone
    norms = [layer for layer in backbone.layers
             if type(layer).__name__ == kind]
    assert norms and all(layer.virtual_batch_size == 4 for layer in norms)
