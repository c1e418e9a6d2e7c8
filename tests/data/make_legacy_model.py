"""Writes `legacy_model.keras` and `legacy_predictions.npz` (issue 28).

Run once, with the code as it was before kpair's modules moved into
folders (commit 4bcf447), from the repository root:

    .venv/bin/python tests/data/make_legacy_model.py

`tests/kpair/test_legacy_model.py` loads the file with the code of today
and checks that it predicts what it predicted then. Do not rerun it: the
point of the files is that the code that wrote them is gone.
"""

import zipfile
from pathlib import Path

import keras
import numpy as np

import kpair  # noqa: F401  (registers kpair's classes)
from kpair.backbone import ResNet18Backbone
from kpair.pair_model import PairModel

HERE = Path(__file__).parent


def inputs(image_size=8, pairs=6, seed=1):
    rng = np.random.default_rng(seed)
    images = lambda: rng.random((pairs, image_size, image_size, 3), "float32")  # noqa: E731
    domains = lambda: rng.integers(0, 2, pairs).astype("int32")  # noqa: E731
    return {"left": images(), "right": images(), "left_domain": domains(),
            "right_domain": domains()}


def _deflate(path):
    """Rewrites the zip archive `path` with its members deflated: Keras
    stores them uncompressed, and the HDF5 bookkeeping of ~100 small
    variables would make the file 4x larger."""
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)


def main():
    keras.utils.set_random_seed(0)
    backbone = ResNet18Backbone(norm="per-domain", width_multiplier=0.0625,
                                image_size=8, embedding_dim=8)
    model = PairModel(backbone)
    # Statistics unlike the defaults (0 and 1), different per domain, so that
    # a load that lost or swapped them predicts differently.
    rng = np.random.default_rng(7)
    for layer in model._flatten_layers():
        for variable in getattr(layer, "non_trainable_variables", []):
            name = variable.path
            shape = tuple(variable.shape)
            if name.endswith("moving_mean"):
                variable.assign(rng.normal(0, 0.3, shape).astype("float32"))
            elif name.endswith("moving_variance"):
                variable.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
    x = inputs()
    predictions = np.asarray(model(x, training=False))
    model.save(HERE / "legacy_model.keras")
    _deflate(HERE / "legacy_model.keras")
    np.savez_compressed(HERE / "legacy_predictions.npz", predictions=predictions, **x)
    print(predictions.ravel())


if __name__ == "__main__":
    main()
