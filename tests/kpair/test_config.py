"""TrainConfig: validation, round trip, unknown keys."""

import json

import pytest

from kpair.config import ConfigError, TrainConfig


def test_round_trip_through_json(tmp_path):
    config = TrainConfig(norm="group", norm_options={"groups": 4}, epochs=3)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**config.to_dict(), "kpair_version": "x"}))
    assert TrainConfig.load(path) == config


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match=r"Unknown configuration key\(s\) \['lr'\]"):
        TrainConfig.from_dict({"lr": 0.1})


def test_unknown_norm_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        TrainConfig(norm="instance")
    for name in ("batch", "per-domain", "group", "eval-mode", "batch-renorm"):
        assert name in str(error.value)
    assert "Received: norm='instance'" in str(error.value)


@pytest.mark.parametrize(
    "field, value",
    [("batch_size", 0), ("epochs", -1), ("image_size", 0), ("epochs", 2.5),
     ("learning_rate", 0.0), ("batching", "random"), ("precision", "float16")],
)
def test_bad_values(field, value):
    with pytest.raises(ConfigError, match=f"{field}"):
        TrainConfig(**{field: value})


def test_norm_options_are_checked_against_the_norm():
    with pytest.raises(ValueError, match="groups"):
        TrainConfig(norm="batch", norm_options={"groups": 4})


def test_norm_options_that_are_not_a_mapping_are_a_config_error():
    # A hand-edited config.json may hold a list; the CLI must answer in one line.
    with pytest.raises(ConfigError, match=r"Received: norm_options=\['abc'\]"):
        TrainConfig(norm_options=["abc"])


def test_num_domains_reaches_domain_aware_norms_only():
    assert TrainConfig(num_domains=3).resolved_norm_options() == {"num_domains": 3}
    assert TrainConfig(norm="batch").resolved_norm_options() == {}


def test_per_type_needs_three_pairs_per_batch():
    with pytest.raises(ConfigError, match="at least 3"):
        TrainConfig(batching="balanced", batch_size=2)
    TrainConfig(batching="mixed", batch_size=2)


def test_cli_flags_override_a_saved_config(tmp_path):
    from kpair.cli import _parser
    from kpair.cli.train import build_config

    saved = TrainConfig(norm="group", norm_options={"groups": 4}, epochs=3)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved.to_dict()))
    args = _parser().parse_args(
        ["train", "--config", str(path), "--epochs", "7",
         "--norm-option", "groups=8", "--losses", "l1,hinge,logistic"]
    )
    config = build_config(args)
    assert config.epochs == 7 and config.norm == "group"
    assert config.norm_options == {"groups": 8}
    assert config.losses == ("l1", "hinge", "logistic")


def test_cli_rejects_a_malformed_norm_option():
    from kpair.cli import _parser
    from kpair.cli.train import build_config

    args = _parser().parse_args(["train", "--norm-option", "momentum"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        build_config(args)
