"""`kpair train --statistics precise`: the saved statistics are float64
population statistics over the chosen training images (against a NumPy
reference), `ema`'s are not, the flag is in every command's help, a killed
run resumes onto the uninterrupted run's statistics, and several devices
are refused in one line."""

from pathlib import Path

import keras
import numpy as np
import pytest

from kpair import layers
from kpair.cli import main
from kpair.config import TrainConfig
from kpair.data import read_split
from kpair.errors import ConfigError
from kpair.inspection.adapt import DEFAULT_MAX_IMAGES, pooled_statistics_estimator
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.pair_types import PAIR_TYPES
from kpair.runs import model_files as runs
from kpair.training import precise
from kpair.training.callbacks import read_history
from kpair.training.trainer import train

from .kills import KillAtEpochStart

# The norms with moving statistics (kpair.inspection.norm_statistics).
STATEFUL = ("batch", "per-domain", "eval-mode", "batch-renorm")
# Few images: the reference runs the backbone once per norm layer.
IMAGES = 40


def reference_shares(data, batching):
    """`{domain: share}` of the images training feeds the backbone, counted
    here from the split: pair types weigh as their share of a batch."""
    split = read_split(data / "train", 16)
    sides = {}
    for features, y in split.dataset:
        kind = PAIR_TYPES[int(y[1])]
        for side in ("left", "right"):
            key = (kind, int(features[f"{side}_domain"]))
            sides[key] = sides.get(key, 0) + 1
    pairs = split.counts
    total = sum(pairs.values())
    shares = {}
    for (kind, domain), count in sides.items():
        weight = pairs[kind] / total if batching == "mixed" else 1 / 3
        shares[domain] = shares.get(domain, 0.0) + weight * count / pairs[kind]
    return shares


def reference_statistics(model, images, shares):
    """`{layer path: (mean, variance)}` in NumPy float64: per domain for a
    per-domain layer (rows), the share-weighted mixture otherwise. Each
    layer's input is that of the saved model in inference mode, whose
    earlier layers hold their final statistics: the reference of estimating
    layer after layer."""
    expected = {}
    for owner, layer in stateful_norm_layers(model):
        tensor = layer.input
        tensor = tensor[0] if isinstance(tensor, (list, tuple)) else tensor
        probe = keras.Model(owner.inputs, tensor)
        moments = {}
        for domain, x in images.items():
            ids = np.full(len(x), domain, "int32")
            activations = np.asarray(
                keras.ops.convert_to_numpy(probe([x, ids], training=False)),
                np.float64,
            )
            flat = activations.reshape(-1, activations.shape[-1])
            moments[domain] = flat
        if isinstance(layer, layers.PerDomainBatchNormalization):
            # The rows of domains without images keep what they held.
            mean = np.array(layer.moving_mean.numpy(), np.float64)
            variance = np.array(layer.moving_variance.numpy(), np.float64)
            for d in moments:
                mean[d] = moments[d].mean(0)
                variance[d] = moments[d].var(0)
        else:
            total = sum(shares.values())
            weights = {d: shares[d] / total for d in moments}
            mean = sum(weights[d] * moments[d].mean(0) for d in moments)
            variance = sum(weights[d] * np.mean((moments[d] - mean) ** 2, 0)
                           for d in moments)
        expected[layer.path] = (mean, variance)
    return expected


def relative_errors(model, expected):
    errors = []
    for _, layer in stateful_norm_layers(model):
        mean, variance = expected[layer.path]
        got_mean = np.asarray(layer.moving_mean.numpy(), np.float64)
        got_variance = np.asarray(layer.moving_variance.numpy(), np.float64)
        scale = np.sqrt(variance)  # a mean near 0 is compared on its spread
        errors.append(np.max(np.abs(got_mean - mean) / scale))
        errors.append(np.max(np.abs(got_variance - variance) / variance))
    return errors


def chosen_images(config):
    files = precise.split_files(Path(config.data) / "train")
    return precise.choose_images(files, config.image_size, config.num_domains,
                                 config.precise_images, config.seed)


@pytest.mark.slow
@pytest.mark.parametrize("norm", STATEFUL)
def test_precise_statistics_are_the_float64_population(norm, demo_data,
                                                       tiny_config, tmp_path):
    config = tiny_config(demo_data, tmp_path / "run", norm=norm,
                         statistics="precise", precise_images=IMAGES)
    metrics = train(config)
    assert metrics["statistics"] == "precise"
    assert metrics["precise_images"] == {"0": IMAGES, "1": IMAGES}
    model = runs.load_model(tmp_path / "run" / "model.keras")
    keras.utils.set_random_seed(config.seed)  # the run's draw of images
    images = chosen_images(config)
    assert {d: len(x) for d, x in images.items()} == {0: IMAGES, 1: IMAGES}
    expected = reference_statistics(
        model, images, reference_shares(demo_data, config.batching))
    errors = relative_errors(model, expected)
    assert len(errors) == 2 * len(stateful_norm_layers(model)) == 40
    assert max(errors) < 1e-5, max(errors)


@pytest.mark.slow
def test_ema_statistics_are_not_the_population(demo_data, tiny_config, tmp_path):
    """The same check fails without the option: what it measures is real."""
    config = tiny_config(demo_data, tmp_path / "run", norm="batch",
                         precise_images=IMAGES)
    metrics = train(config)
    assert metrics["statistics"] == "ema" and metrics["precise_images"] is None
    model = runs.load_model(tmp_path / "run" / "model.keras")
    keras.utils.set_random_seed(config.seed)
    expected = reference_statistics(
        model, chosen_images(config), reference_shares(demo_data, "per-type"))
    assert max(relative_errors(model, expected)) > 1e-2


@pytest.mark.slow
def test_killed_precise_run_resumes_onto_the_uninterrupted_statistics(
        demo_data, tiny_config, tmp_path):
    """Eval-mode batch norm trains with its moving statistics, so the
    recomputed statistics steer the next epoch: a resumed run must restore
    them, and draw the same images, to end as the uninterrupted one."""
    changes = dict(norm="eval-mode", batching="mixed", epochs=3,
                   statistics="precise", precise_images=IMAGES,
                   deterministic=True)
    whole = tiny_config(demo_data, tmp_path / "whole", **changes)
    train(whole)
    config = tiny_config(demo_data, tmp_path / "run", **changes)
    keras.backend.clear_session()

    with pytest.raises(KeyboardInterrupt):
        train(config, extra_callbacks=[KillAtEpochStart(3)])
    assert [int(r["epoch"]) for r in read_history(tmp_path / "run" /
                                                  "history.csv")] == [1, 2]
    keras.backend.clear_session()
    train(config)
    mine = runs.load_model(tmp_path / "run" / "model.keras")
    theirs = runs.load_model(tmp_path / "whole" / "model.keras")
    statistics = 0
    for a, b in zip(mine.weights, theirs.weights, strict=True):
        assert a.path == b.path
        assert np.array_equal(a.numpy(), b.numpy()), a.path
        statistics += "moving" in a.path
    assert statistics == 2 * len(stateful_norm_layers(mine)) > 0


def test_pooled_estimator_matches_single_domain_estimates_for_per_domain_rows():
    """Two layers of per-domain batch norm over three domains, two of them
    with images: their rows from their own images, the third row untouched;
    of batch norm: the share-weighted mixture."""
    rng = np.random.default_rng(0)

    def call(layer, x, domain):
        if isinstance(layer, layers.PerDomainBatchNormalization):
            return layer([x, domain])
        return layer(x)

    def model_of(norm):
        image = keras.Input((5, 5, 3))
        domain = keras.Input((), dtype="int32")
        x = keras.layers.Conv2D(4, 3)(image)
        x = call(norm(), x, domain)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv2D(3, 2)(x)
        x = call(norm(), x, domain)
        return keras.Model([image, domain], x)

    images = {0: rng.normal(0, 1, (9, 5, 5, 3)).astype("float32"),
              1: rng.normal(2, 3, (7, 5, 5, 3)).astype("float32")}
    shares = {0: 0.25, 1: 0.75}
    for norm in (lambda: layers.PerDomainBatchNormalization(num_domains=3),
                 keras.layers.BatchNormalization):
        model = model_of(norm)
        untouched = [np.array(v.numpy()[2]) for _, layer in
                     stateful_norm_layers(model)
                     for v in (layer.moving_mean, layer.moving_variance)
                     if v.ndim == 2]
        used = pooled_statistics_estimator(model)(images, 4, shares)
        assert used == {0: 9, 1: 7}
        expected = reference_statistics(model, images, shares)
        assert max(relative_errors(model, expected)) < 1e-5
        rows = [v.numpy()[2] for _, layer in stateful_norm_layers(model)
                for v in (layer.moving_mean, layer.moving_variance) if v.ndim == 2]
        assert len(rows) == len(untouched)
        assert all(np.array_equal(a, b) for a, b in zip(rows, untouched))


@pytest.mark.parametrize("command", ["train", "compare", "tune"])
def test_every_command_takes_the_statistics_flags(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--statistics {ema,precise}" in text
    assert "--precise-images PRECISE_IMAGES" in text
    assert f"(default: {DEFAULT_MAX_IMAGES})" in text
    assert main([command, "--statistics", "precise", "--precise-images", "64",
                 "--print-config"]) in (0, None)
    printed = capsys.readouterr().out
    assert '"statistics": "precise"' in printed
    assert '"precise_images": 64' in printed


def test_default_is_ema_and_bad_values_are_refused():
    assert TrainConfig().statistics == "ema"
    assert TrainConfig().precise_images == DEFAULT_MAX_IMAGES
    with pytest.raises(ConfigError, match="Unknown statistics"):
        TrainConfig(statistics="exact")
    with pytest.raises(ConfigError, match="precise_images"):
        TrainConfig(statistics="precise", precise_images=0)
    with pytest.raises(ConfigError, match="one device in one process"):
        TrainConfig(statistics="precise", devices=2)
    TrainConfig(statistics="ema", devices=2)  # accepted


def test_several_devices_are_refused_in_one_line(demo_data, tiny_config, tmp_path,
                                                 capsys):
    code = main(["train", "--data", str(demo_data), "--out", str(tmp_path / "r"),
                 "--statistics", "precise", "--devices", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "one device in one process" in err[0]
    assert not (tmp_path / "r").exists()
    config = tiny_config(demo_data, tmp_path / "r", statistics="precise")
    with pytest.raises(ConfigError, match="processes=1"):
        precise.check_one_device(config, 2)
    precise.check_one_device(config.replace(statistics="ema"), 2)


def test_shares_and_images_follow_the_split_and_the_seed(demo_data):
    files = precise.split_files(demo_data / "train")
    for batching in ("per-type", "mixed"):
        got = precise.domain_shares(files, batching, 2)
        expected = reference_shares(demo_data, batching)
        assert got.keys() == expected.keys()
        for domain in got:
            assert got[domain] == pytest.approx(expected[domain], rel=1e-12)
    keras.utils.set_random_seed(0)
    first = precise.choose_images(files, 16, 2, 10, seed=0)
    keras.utils.set_random_seed(0)
    again = precise.choose_images(files, 16, 2, 10, seed=0)
    keras.utils.set_random_seed(0)
    other = precise.choose_images(files, 16, 2, 10, seed=1)
    for domain in (0, 1):
        assert first[domain].shape == (10, 16, 16, 3)
        assert np.array_equal(first[domain], again[domain])
    assert not np.array_equal(first[0], other[0])


@pytest.mark.slow
def test_a_tuned_trial_ends_on_the_float64_population(demo_data, tmp_path,
                                                      capsys):
    """`kpair tune --statistics precise`: each trial's epochs end on
    population statistics, as kpair train's do (was: refused).

    Per-domain batch norm (a moving row per domain) on mixed batches, one
    step: one stream of batches traces faster than per-type's three, and
    the shares each batching gives the domains are
    test_shares_and_images_follow_the_split_and_the_seed's."""
    out = tmp_path / "search"
    tiny = ["--width-multiplier", "0.125", "--image-size", "16",
            "--embedding-dim", "16", "--batch-size", "12", "--eval-pairs", "24",
            "--epochs", "1", "--steps-per-epoch", "1", "--precision", "float32"]
    code = main(["tune", "--data", str(demo_data), "--out", str(out), *tiny,
                 "--norms", "per-domain", "--batchings", "mixed",
                 "--statistics", "precise", "--precise-images", str(IMAGES),
                 "--max-trials", "1"])
    assert code == 0, capsys.readouterr().err
    model = runs.load_model(out / "best" / "model.keras")
    config = TrainConfig(data=str(demo_data), image_size=16,
                         precise_images=IMAGES)
    keras.utils.set_random_seed(config.seed)
    expected = reference_statistics(
        model, chosen_images(config), reference_shares(demo_data, "mixed"))
    assert max(relative_errors(model, expected)) < 1e-5
