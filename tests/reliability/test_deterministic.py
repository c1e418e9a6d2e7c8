"""--deterministic: the same metrics and weights twice, on the traced path
`kpair train` runs. That a run killed (SIGKILL) and resumed ends where an
uninterrupted one does is test_training_kills.py's.

enable_op_determinism is process-wide and cannot be undone, so each run
happens in a fresh process (train_process.py): the same metrics and weights
from two processes.
"""

import json

import keras
import numpy as np
import pytest

from .training_processes import BATCH_MIXED, run_training


@pytest.mark.slow
@pytest.mark.xdist_group("batch-mixed-run")
def test_same_seed_same_metrics_and_weights(demo_data, tiny_config, tmp_path,
                                            uninterrupted_runs):
    # Stock batch norm on mixed batches: seeds, data order and kernels are
    # what make a run repeat, the same for every norm; its graph traces
    # fastest. The first run is the kill test's uninterrupted one.
    config = tiny_config(demo_data, tmp_path / "again", **BATCH_MIXED)
    first, _ = uninterrupted_runs(config)
    result = run_training(config)
    assert result.returncode == 0, result.stderr[-3000:]
    second = tmp_path / "again"

    def without_time(run):
        metrics = json.loads((run / "metrics.json").read_text())
        return {k: v for k, v in metrics.items() if k != "seconds"}

    assert without_time(first) == without_time(second)
    a, b = (keras.saving.load_model(run / "model.keras").weights
            for run in (first, second))
    assert len(a) == len(b) > 50
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.numpy(), y.numpy()), x.path
