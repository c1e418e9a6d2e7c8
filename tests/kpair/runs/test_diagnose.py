"""`kpair diagnose` at the path level (`kpair.runs.diagnose`): a model that
trained on per-type batches with stock batch norm is named for its batch
composition, with the fixes."""

import pytest

from kpair.runs import model_files as runs
from kpair.runs.diagnose import diagnose

# With `pytest -n`, one worker trains the shared `trained` models once.
pytestmark = pytest.mark.xdist_group("trained-models")


def test_diagnose_names_batch_composition_and_the_fixes(trained):
    model = runs.load_model(trained / "bug" / "model.keras")
    report = diagnose(model, trained / "data" / "train", ("l2", "hinge", "hinge"),
                      (16, 16))
    assert report["layers"][0]["shift"] == max(r["shift"] for r in report["layers"])
    assert "batch composition" in report["verdict"]
    assert "--norm per-domain" in report["verdict"]
    assert "--batching balanced" in report["verdict"]
