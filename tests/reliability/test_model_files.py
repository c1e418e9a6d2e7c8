"""Model files that kpair must refuse, through every command that loads one:
`kpair evaluate`, `predict`, `diagnose`, `adapt`, `check` and `export`.

Each refusal is one line on stderr naming the file and what was refused,
exit code 2, no traceback, and nothing written (`--out`, `--plot`). Files
that run or import code (a Lambda layer, a TFSMLayer, a class of another
package) are refused from their config.json, before Keras builds anything;
hostile arguments of kpair's own classes are refused by their validation,
before any weight is allocated. The models are tiny, built and saved once
per module, never trained.
"""

import contextlib
import functools
import json
import math
import shutil
import zipfile

import keras
import numpy as np
import pytest

from kpair.models.model_builder import build_pair_model, training_model
from kpair.models.pair_model import PairModel
from kpair.runs import model_files as runs
from tests.reliability.test_bad_input import png, write_csv, write_data


@keras.saving.register_keras_serializable(package="evil")
class Evil(keras.layers.Layer):
    """A class registered in this process only, under another package: Keras
    would build it from a file; kpair must not."""

    def call(self, x):
        return x


def small_model(layer):
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(1)(layer(inputs)))


def rewrite(src, dst, config=None, files=None):
    """A copy of the `.keras` archive `src` with config.json edited in place by
    `config(dict)` and members replaced by `files` ({name: bytes})."""
    files = files or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = files.get(item.filename) or zin.read(item.filename)
            if item.filename == "config.json" and config is not None:
                tree = json.loads(data)
                config(tree)
                data = json.dumps(tree)
            zout.writestr(item, data)
    return dst


def backbone_config(tree):
    return tree["config"]["backbone"]["config"]


def set_norm_option(key, value):
    return lambda tree: backbone_config(tree)["norm_options"].update({key: value})


def set_backbone(key, value):
    return lambda tree: backbone_config(tree).update({key: value})


def to_tfsm_layer(tree):
    """The Dense layer of a small model turned into a TFSMLayer by hand."""
    for layer in tree["config"]["layers"]:
        if layer["class_name"] == "Dense":
            layer.update(class_name="TFSMLayer", module="keras.layers", config={
                "name": "served", "filepath": "/nonexistent/saved_model",
                "call_endpoint": "serve", "trainable": False,
            })


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_run, tiny_config):
    """name -> path of every crafted model file (and `good`)."""
    root = tmp_path_factory.mktemp("models")
    good = shutil.copy(tiny_run / "model.keras", root / "good.keras")
    paths = {"good": good}

    small_model(keras.layers.Lambda(lambda x: x * 2, name="double")).save(
        root / "lambda.keras")
    small_model(Evil(name="evil")).save(root / "evil.keras")
    small_model(keras.layers.Identity()).save(root / "plain.keras")
    rewrite(root / "plain.keras", root / "tfsm.keras", to_tfsm_layer)
    paths.update({
        "lambda-layer": root / "lambda.keras",
        "class-of-another-package": root / "evil.keras",
        "tfsm-layer": root / "tfsm.keras",
    })

    hostile = {
        "num-domains-1e9": set_norm_option("num_domains", 10**9),
        "epsilon-string": set_norm_option("epsilon", "0.001"),
        "epsilon-negative": set_norm_option("epsilon", -1.0),
        "width-multiplier-string": set_backbone("width_multiplier", "0.125"),
        "embedding-dim-1e9": set_backbone("embedding_dim", 10**9),
        "image-size-1e6": set_backbone("image_size", 10**6),
    }
    for name, edit in hostile.items():
        paths[name] = rewrite(good, root / f"{name}.keras", edit)

    damaged = root / "damaged.keras"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    paths["damaged-zip"] = damaged

    wider = root / "wider.keras"
    build_pair_model(tiny_config(norm="per-domain", width_multiplier=0.25)).save(
        wider)
    with zipfile.ZipFile(wider) as archive:
        weights = archive.read("model.weights.h5")
    paths["weights-of-another-width"] = rewrite(
        good, root / "swapped.keras", files={"model.weights.h5": weights})

    no_config = root / "no-config.keras"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(no_config, "w") as zout:
        zout.writestr("model.weights.h5", zin.read("model.weights.h5"))
    paths["zip-without-config"] = no_config
    paths["h5-by-name"] = shutil.copy(good, root / "model.h5")
    return paths


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A data set (for evaluate, diagnose, adapt) and images plus a pair CSV
    (for predict)."""
    root = tmp_path_factory.mktemp("inputs")
    data = write_data(root / "data")
    images = root / "images"
    images.mkdir()
    png(images / "a.png", np.zeros((8, 8, 3)))
    pairs = write_csv(root / "pairs.csv", ["a.png,a.png,0,1,1"])
    return {"data": data, "images": images, "pairs": pairs}


def command(name, model, inputs, out):
    """(argv, paths that must not exist afterwards) of one command."""
    data = ["--data", inputs["data"]]
    if name == "evaluate":
        return ["evaluate", model, *data, "--split", "train"], []
    if name == "predict":
        csv = out / "predictions.csv"
        return ["predict", model, "--pairs", inputs["pairs"], "--root",
                inputs["images"], "--out", csv], [csv]
    if name == "diagnose":
        plot = out / "diagnose.png"
        return ["diagnose", model, *data, "--plot", plot], [plot]
    if name == "check":
        return ["check", model], []
    if name == "export":
        served = out / "served"
        return ["export", model, "--out", served], [served]
    adapted = out / "adapted.keras"
    return ["adapt", model, *data, "--domain", "0", "--out", adapted], [adapted]


COMMANDS = ["evaluate", "predict", "diagnose", "adapt", "check", "export"]

# What the one line on stderr names, for each crafted file of `models`.
REFUSALS = {
    "lambda-layer": ["Refusing", "Lambda layer 'double'"],
    "tfsm-layer": ["Refusing", "TFSMLayer layer 'served'", "SavedModel"],
    "class-of-another-package": ["Refusing", "class 'evil>Evil'", "not Keras or kpair"],
    "num-domains-1e9": ["num_domains", "1000000000", "[1, 1024]"],
    "epsilon-string": ["epsilon", "must be a number", "'0.001'"],
    "epsilon-negative": ["epsilon", "positive", "-1.0"],
    "width-multiplier-string": ["width_multiplier", "'0.125'"],
    "embedding-dim-1e9": ["embedding_dim", "at most", "1000000000"],
    "image-size-1e6": ["image_size", "at most", "1000000"],
    "damaged-zip": ["damaged"],
    "weights-of-another-width": ["Cannot load", "could not be loaded"],
    "zip-without-config": ["no config.json"],
    "h5-by-name": ["only .keras", "model.h5"],
}


@contextlib.contextmanager
def weights_allocated():
    """Counts the elements of every weight a Keras layer adds meanwhile: a
    count, not a clock, so that a loaded machine cannot make it fail."""
    allocated = [0]
    add_weight = keras.layers.Layer.add_weight

    def counting(self, shape=None, *args, **kwargs):
        allocated[0] += math.prod(shape or ())
        return add_weight(self, shape, *args, **kwargs)

    keras.layers.Layer.add_weight = counting
    try:
        yield allocated
    finally:
        keras.layers.Layer.add_weight = add_weight


@functools.cache
def good_model_size(path):
    return sum(math.prod(w.shape) for w in runs.load_model(path).weights)


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("case", REFUSALS)
def test_refused(kpair_cli, models, inputs, tmp_path, name, case):
    path, needles = models[case], REFUSALS[case]
    argv, outputs = command(name, path, inputs, tmp_path)
    with weights_allocated() as allocated:
        code, _, lines = kpair_cli(*argv)
    assert code == 2, lines
    assert len(lines) == 1, lines
    for needle in [path.name, *needles]:
        assert str(needle) in lines[0], lines[0]
    # Refused before a model of that size was built: no more weight elements
    # were allocated than the tiny good model holds.
    assert allocated[0] <= good_model_size(models["good"]), allocated[0]
    for output in outputs:
        assert not output.exists()
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())  # nothing at all


def test_kpair_models_load(models, tmp_path, tiny_config):
    """The checks pass kpair's own files: a saved pair model, and a compiled
    training model (PairLoss, per-type metrics, Adam)."""
    assert isinstance(runs.load_model(models["good"]), PairModel)
    config = tiny_config(norm="batch", batching="mixed")
    compiled = training_model(build_pair_model(config), config)
    compiled.save(tmp_path / "compiled.keras")
    runs.check_archive(tmp_path / "compiled.keras")


def test_keras_refuses_what_kpair_refuses_without_the_check(models, monkeypatch):
    """Keras's own safe_mode stops the Lambda and TFSMLayer files too, but
    builds the class of another package that this process registered: the
    archive check is what refuses it."""
    monkeypatch.setattr(runs, "check_archive", lambda path: None)
    for case in ("lambda-layer", "tfsm-layer"):
        with pytest.raises(runs.ModelFileError):
            runs.load_model(models[case])
    evil = runs.load_model(models["class-of-another-package"]).get_layer("evil")
    assert evil.__class__ is Evil
