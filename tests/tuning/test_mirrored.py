"""Trials under tf.distribute.MirroredStrategy, over two logical CPUs.

Logical devices must be set before TensorFlow starts, so the search runs in
a fresh process; it reports what each trial saw from inside `fit`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from kpair.config import TrainConfig
from kpair.tuning import hypermodel, run_search

seen = []
fit = hypermodel.PairHyperModel.fit

def spying_fit(self, hp, model, *args, **kwargs):
    strategy = model.distribute_strategy
    seen.append({
        "replicas": strategy.num_replicas_in_sync,
        "mirrored": type(model.trainable_variables[0].value).__name__,
        "norm": hp.values["norm"],
    })
    return fit(self, hp, model, *args, **kwargs)

hypermodel.PairHyperModel.fit = spying_fit
config = TrainConfig.from_dict(json.loads(sys.argv[1]))
result = run_search(
    config, norms=["per-domain"], batchings=["mixed"], max_trials=1,
    out_dir=sys.argv[2],
    distribution_strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
)
print("RESULT", json.dumps({"seen": seen, "statuses": [
    row["status"] for row in result["trials"]]}))
"""


@pytest.mark.slow
def test_each_trial_runs_on_both_devices(base_config, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    config = base_config.replace(batch_size=12, steps_per_epoch=2)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(config.to_dict()),
         str(tmp_path / "tune")],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert report["statuses"] == ["completed"]
    (trial,) = report["seen"]
    assert trial["replicas"] == 2
    assert trial["mirrored"] == "MirroredVariable", trial
    assert (tmp_path / "tune" / "best" / "model.keras").is_file()
