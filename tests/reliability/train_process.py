"""A `kpair train` process that can be killed at a chosen point, for real.

Usage: python tests/reliability/train_process.py CONFIG_JSON
Training runs eagerly (a traced step costs more than these tiny runs). With
KPAIR_TEST_KILL=<point>:<epoch>, the process kills itself with SIGKILL:

- `batch:E`: after the first step of epoch E;
- `eval:E`: while the inference-mode losses of epoch E are computed;
- `backup:E`: while the backup of epoch E is written, leaving it half
  written (the file is cut to half its size first);
- `model:0`: while model.keras is written (the file it writes is cut).
"""

import json
import os
import signal
import sys
from pathlib import Path

import keras

from kpair import callbacks as kcb
from kpair import training as ktrain
from kpair.config import TrainConfig

point, _, at = os.environ.get("KPAIR_TEST_KILL", "none:0").partition(":")
at = int(at)
state = {"epoch": 0}


def die(path=None):
    if path is not None and Path(path).exists():
        size = Path(path).stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Watch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        state["epoch"] = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if point == "batch" and state["epoch"] == at and batch == 0:
            die()


def eager(builder):
    def build(*args, **kwargs):
        model = builder(*args, **kwargs)
        model.run_eagerly = True
        return model
    return build


def killing_evaluate(evaluate):
    def run(*args, **kwargs):
        if point == "eval" and state["epoch"] == at:
            die()
        return evaluate(*args, **kwargs)
    return run


def killing_save_weights(save_weights):
    def run(self, filepath, *args, **kwargs):
        save_weights(self, filepath, *args, **kwargs)
        if (point == "backup" and state["epoch"] == at
                and str(filepath).endswith(kcb.BACKUP_WEIGHTS)):
            die(filepath)
    return run


def killing_save(save):
    def run(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        if point == "model":
            die(filepath)
    return run


def main(config_json):
    ktrain.training_model = eager(ktrain.training_model)
    kcb.evaluate_pairs = killing_evaluate(kcb.evaluate_pairs)
    keras.Model.save_weights = killing_save_weights(keras.Model.save_weights)
    keras.Model.save = killing_save(keras.Model.save)
    config = TrainConfig.from_dict(json.loads(config_json))
    metrics = ktrain.train(config, extra_callbacks=[Watch()])
    print("METRICS", json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
