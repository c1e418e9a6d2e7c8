"""kpair export: a SavedModel that serves the same predictions."""

import numpy as np
import pytest
import tensorflow as tf

from kpair.backbone import ResNet18Backbone
from kpair.export import export_saved_model
from kpair.files import write_model
from kpair.pair_model import PairModel


@pytest.fixture
def saved_model_file(tmp_path):
    model = PairModel(
        ResNet18Backbone(norm="per-domain", width_multiplier=0.125, image_size=16,
                         embedding_dim=8)
    )
    path = tmp_path / "model.keras"
    write_model(model, path)
    return model, path


def features(n=3):
    rng = np.random.default_rng(0)
    return {
        "left": rng.random((n, 16, 16, 3), "float32"),
        "right": rng.random((n, 16, 16, 3), "float32"),
        "left_domain": np.array([0, 1, 0][:n], "int32"),
        "right_domain": np.array([1, 1, 0][:n], "int32"),
    }


def test_exported_saved_model_serves_the_same_predictions(saved_model_file, tmp_path):
    model, path = saved_model_file
    out = export_saved_model(path, tmp_path / "serving")
    served = tf.saved_model.load(str(out))
    f = features()
    np.testing.assert_allclose(
        served.serve(f).numpy(), model.predict_on_batch(f), rtol=1e-5, atol=1e-6
    )


def test_export_in_mixed_precision_computes_in_float16(saved_model_file, tmp_path):
    model, path = saved_model_file
    out = export_saved_model(path, tmp_path / "fp16", precision="mixed_float16")
    served = tf.saved_model.load(str(out))
    f = features()
    got = served.serve(f).numpy()
    assert got.dtype == np.float32  # the head stays float32
    np.testing.assert_allclose(got, model.predict_on_batch(f), rtol=5e-2, atol=5e-2)


def test_export_refuses_a_non_empty_directory(saved_model_file, tmp_path):
    _, path = saved_model_file
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        export_saved_model(path, tmp_path / "busy")
