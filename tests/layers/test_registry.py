"""The norm registry: names, options, factories and the domain property."""

import keras
import pytest

from kpair import layers


def test_names_are_the_canonical_five():
    assert layers.names() == (
        "batch", "per-domain", "group", "eval-mode", "batch-renorm"
    )


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        layers.get("instance")
    message = str(error.value)
    assert "Received: norm='instance'" in message
    for name in layers.names():
        assert repr(name) in message


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"groups.*\['epsilon', 'momentum'"):
        layers.get("batch", groups=4)


def test_bad_option_value_fails_at_get_not_deep_in_a_model():
    with pytest.raises(ValueError, match="num_domains"):
        layers.get("per-domain", num_domains=0)


@pytest.mark.parametrize(
    "name, cls, takes_domain",
    [
        ("batch", keras.layers.BatchNormalization, False),
        ("per-domain", layers.PerDomainBatchNormalization, True),
        ("group", keras.layers.GroupNormalization, False),
        ("eval-mode", layers.EvalModeBatchNormalization, False),
        ("batch-renorm", keras.layers.BatchNormalization, False),
    ],
)
def test_entries_make_the_right_class(name, cls, takes_domain):
    factory = layers.get(name)
    layer = factory(16, name="n")
    assert type(layer) is cls  # Keras's own classes, not rewrites
    assert layer.name == "n"
    assert factory.takes_domain is takes_domain


def test_options_reach_the_layer():
    assert layers.get("batch", momentum=0.8)(8).momentum == 0.8
    assert layers.get("batch-renorm")(8).renorm is True
    assert layers.get("eval-mode", warmup_steps=7)(8).warmup_steps == 7
    layer = layers.get("per-domain", num_domains=3, per_domain_affine=False)(8)
    assert (layer.num_domains, layer.per_domain_affine) == (3, False)


@pytest.mark.parametrize(
    "channels, requested, expected", [(64, 32, 32), (8, 32, 8), (24, 16, 12)]
)
def test_group_count_is_the_largest_divisor_not_above_the_request(
    channels, requested, expected
):
    assert layers.get("group", groups=requested)(channels).groups == expected


def test_options_returns_a_copy_of_the_defaults():
    opts = layers.options("per-domain")
    opts["num_domains"] = 99
    assert layers.options("per-domain")["num_domains"] == 2


def test_per_domain_alone_defaults_to_a_faster_momentum():
    # Per-domain batch norm's statistics of a domain move at half the
    # backbone calls under per-type batching: 0.9. The norms that see every
    # call keep Keras's 0.99 (see the comment on `registry.MOMENTUM`).
    with_momentum = [n for n in layers.names() if "momentum" in layers.options(n)]
    assert with_momentum == ["batch", "per-domain", "eval-mode", "batch-renorm"]
    built = {n: layers.get(n)(8).momentum for n in with_momentum}
    assert built == {
        "batch": 0.99,
        "per-domain": 0.9,
        "eval-mode": 0.99,
        "batch-renorm": 0.99,
    }
    assert keras.layers.BatchNormalization().momentum == built["batch"]
