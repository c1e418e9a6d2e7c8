"""A `kpair train` process that can be killed at a chosen point, for real.

Usage: python tests/reliability/train_process.py CONFIG_JSON
Training runs traced, as `kpair train` does. With
KPAIR_TEST_KILL=<point>:<epoch>[:<step>], the process kills itself with
SIGKILL:

- `batch:E[:S]`: after step S (default 1) of epoch E;
- `eval:E`: while the inference-mode losses of epoch E are computed;
- `checkpoint:E`: while `checkpoints/last.weights.h5` of epoch E is written
  (its partial file is cut to half its size first);
- `history:E`: after epoch E's history.csv row and checkpoint are written,
  before its backup;
- `backup:E`: while the backup of epoch E is written, leaving it half
  written (the file is cut to half its size first);
- `model:0`: while model.keras is written (the file it writes is cut).

With KPAIR_TEST_EPOCH_WEIGHTS=DIR, the weights after each epoch are also
saved as DIR/epoch_E.weights.h5 (the reference of an uninterrupted run).
"""

import json
import os
import signal
import sys
from pathlib import Path

import keras

from kpair.config import TrainConfig
from kpair.training import callbacks as kcb
from kpair.training import trainer as ktrain
from kpair.utils import files

point, at, step = (os.environ.get("KPAIR_TEST_KILL", "none:0") + ":1").split(":")[:3]
at, step = int(at), int(step)
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
        if point == "batch" and state["epoch"] == at and batch + 1 == step:
            die()

    def on_epoch_end(self, epoch, logs=None):
        # After HistoryCSV and LastGoodCheckpoint, before the backup.
        if point == "history" and epoch + 1 == at:
            die()
        if "KPAIR_TEST_EPOCH_WEIGHTS" in os.environ:
            self.model.save_weights(
                Path(os.environ["KPAIR_TEST_EPOCH_WEIGHTS"])
                / f"epoch_{epoch + 1}.weights.h5"
            )


def killing_evaluate(evaluate):
    def run(*args, **kwargs):
        if point == "eval" and state["epoch"] == at:
            die()
        return evaluate(*args, **kwargs)
    return run


def killing_save_weights(save_weights):
    def run(self, filepath, *args, **kwargs):
        save_weights(self, filepath, *args, **kwargs)
        if state["epoch"] != at:
            return
        if point == "backup" and str(filepath).endswith(kcb.BACKUP_WEIGHTS):
            die(filepath)
        if point == "checkpoint" and str(filepath).endswith(
                files.partial_path("last.weights.h5").name):
            die(filepath)
    return run


def killing_save(save):
    def run(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        if point == "model":
            die(filepath)
    return run


def main(config_json):
    kcb.evaluate_pairs = killing_evaluate(kcb.evaluate_pairs)
    keras.Model.save_weights = killing_save_weights(keras.Model.save_weights)
    keras.Model.save = killing_save(keras.Model.save)
    config = TrainConfig.from_dict(json.loads(config_json))
    metrics = ktrain.train(config, extra_callbacks=[Watch()])
    print("METRICS", json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
