"""Trials on TensorFlow over two logical CPUs: `devices=2` trains each
under a `tf.distribute.MirroredStrategy`, set up as `kpair train --devices`
sets it up (stock batch norm on the global batch's moments, per-type targets laid out
replica by replica), whose equality with one device
tests/backends/test_devices_tensorflow.py proves.

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
import keras
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from kpair.config import TrainConfig
from kpair.training.devices import takes_global_moments
from kpair.tuning import hypermodel, run_search

seen = []
fit = hypermodel.PairHyperModel.fit
layout = hypermodel.replica_layout

def spying_layout(batches, batching, count):
    seen[-1]["layout"] = [batching, count]
    return layout(batches, batching, count)

def spying_fit(self, hp, model, *args, **kwargs):
    strategy = model.distribute_strategy
    norms = [layer for layer in model._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    seen.append({
        "replicas": strategy.num_replicas_in_sync,
        "mirrored": type(model.trainable_variables[0].value).__name__,
        "norm": hp.values["norm"],
        "synchronized": sorted({takes_global_moments(layer) for layer in norms}),
    })
    return fit(self, hp, model, *args, **kwargs)

hypermodel.PairHyperModel.fit = spying_fit
hypermodel.replica_layout = spying_layout
config = TrainConfig.from_dict(json.loads(sys.argv[1]))
result = run_search(
    config, norms=["batch"], batchings=["per-type"], max_trials=1,
    out_dir=sys.argv[2],
)
print("RESULT", json.dumps({"seen": seen, "statuses": [
    row["status"] for row in result["trials"]]}))
"""


@pytest.mark.slow
def test_each_trial_runs_on_both_devices_as_kpair_train_does(base_config, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    config = base_config.replace(batch_size=12, steps_per_epoch=2, devices=2)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(config.to_dict()),
         str(tmp_path / "tune")],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Each trial trains on 2 devices (MirroredStrategy)." in result.stdout
    report = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert report["statuses"] == ["completed"]
    (trial,) = report["seen"]
    assert trial["replicas"] == 2
    assert trial["mirrored"] == "MirroredVariable", trial
    # Every stock batch norm takes the global batch's moments.
    assert trial["synchronized"] == [True], trial
    assert trial["layout"] == ["per-type", 2], trial
    assert (tmp_path / "tune" / "best" / "model.keras").is_file()
    settings = json.loads((tmp_path / "tune" / "search.json").read_text())
    assert settings["backend"] == "tensorflow"
