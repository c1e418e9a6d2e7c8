"""--deterministic: the same metrics and weights twice, on the traced path
`kpair train` runs. That a run killed (SIGKILL) and resumed ends where an
uninterrupted one does is test_training_kills.py's.

enable_op_determinism is process-wide and cannot be undone, so the runs
happen in a fresh process, which reports what it saw.
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
from pathlib import Path
import keras, numpy as np
from kpair.training import trainer as ktrain
from kpair.config import TrainConfig

config = TrainConfig.from_dict(json.loads(sys.argv[1]))
root = Path(config.out)

def run(name):
    return ktrain.train(config.replace(out=str(root / name)))

def weights(name):
    model = keras.saving.load_model(root / name / "model.keras")
    return [w.numpy() for w in model.weights]

first, second = run("a"), run("b")
a, b = weights("a"), weights("b")
print("RESULT " + json.dumps({
    "first": first, "second": second,
    "same_weights_twice": all(np.array_equal(x, y) for x, y in zip(a, b)),
    "weights": len(a),
}))
"""


@pytest.mark.slow
def test_same_seed_same_metrics_and_weights(demo_data, tiny_config, tmp_path):
    # Stock batch norm: seeds, data order and kernels are what make a run
    # repeat, the same for every norm; its graph traces fastest.
    config = tiny_config(
        demo_data, tmp_path, norm="batch", batching="mixed", epochs=3,
        steps_per_epoch=3, deterministic=True, seed=7,
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(config.to_dict())],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("RESULT ", 1)[1])

    def without_time(metrics):
        return {k: v for k, v in metrics.items() if k != "seconds"}

    assert without_time(report["first"]) == without_time(report["second"])
    assert report["same_weights_twice"]
    assert report["weights"] > 50
