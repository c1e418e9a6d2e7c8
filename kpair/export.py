"""`kpair export`: a TensorFlow SavedModel for serving."""

from pathlib import Path

from kpair import runs
from kpair.errors import ConfigError
from kpair.model_builder import with_precision


def export_saved_model(model_path, out_dir, precision="float32"):
    """Exports the model of a run or `.keras` file as a SavedModel.

    The saved `.keras` model computes in float32; `precision` rebuilds it
    under another policy (e.g. mixed_float16 for GPU serving) first. The
    serving signature takes `left`, `right` (float32 images in [0, 1]),
    `left_domain` and `right_domain` (int32), and returns the prediction.
    """
    run = runs.resolve(model_path)
    model = runs.load_model(run.model_path)
    if precision != "float32":
        model = with_precision(model, precision)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"--out {out_dir} exists and is not empty.")
    model.export(str(out_dir), format="tf_saved_model", verbose=False)
    return out_dir
