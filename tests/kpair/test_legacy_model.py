"""A `.keras` file written before kpair's modules moved into folders
(issue 28) loads, with `safe_mode=True`, and predicts what it did then."""

import json
import zipfile
from pathlib import Path

import keras
import numpy as np

import kpair  # noqa: F401  (registers kpair's classes for loading)

DATA = Path(__file__).resolve().parents[1] / "data"


def test_legacy_model_predicts_as_before():
    model = keras.saving.load_model(DATA / "legacy_model.keras", safe_mode=True)
    saved = np.load(DATA / "legacy_predictions.npz")
    inputs = {name: saved[name]
              for name in ("left", "right", "left_domain", "right_domain")}
    predictions = np.asarray(model(inputs, training=False))
    np.testing.assert_allclose(predictions, saved["predictions"], rtol=1e-5,
                               atol=1e-6)
    assert type(model).__name__ == "PairModel"


def test_legacy_model_names_its_classes_under_kpair():
    with zipfile.ZipFile(DATA / "legacy_model.keras") as archive:
        config = json.loads(archive.read("config.json"))
    assert config["registered_name"] == "kpair>PairModel"
    backbone = config["config"]["backbone"]
    assert backbone["registered_name"] == "kpair>ResNet18Backbone"
