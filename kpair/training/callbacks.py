"""Callbacks of a kpair training run.

Each one keeps one promise of the run directory: the gap on equal footing
and the validation loss every epoch, a history.csv with each epoch once
however often the run was killed, a last good checkpoint, and a clear stop
on a non-finite loss.
"""

import csv
import json
import math
import sys
import time
from pathlib import Path

import keras

from kpair.errors import BackupError, TrainingDiverged
from kpair.inspection import jax_predictions
from kpair.inspection.evaluate import evaluate_pairs
from kpair.pair_types import PAIR_TYPES, TYPE_KEYS
from kpair.training import gap
from kpair.utils import files


class EpochLosses(keras.callbacks.Callback):
    """Measures the gap at each epoch's end and prints the epoch's line.

    On the fixed sample of training pairs of `probe` (`kpair.training.gap.GapProbe`)
    and with the epoch's final weights: the training-mode loss (batch
    statistics, the run's batches, nothing updated), the inference-mode loss
    and their ratio, `gap_ratio`. Then the inference-mode loss on the
    validation split, `val_loss`. Keras's running mean of the loss over the
    epoch's steps, taken while the weights changed, is kept as
    `running_loss` (and `running_loss_aa`, ...): it is not the training-mode
    loss of any one set of weights, and nothing is divided by it.
    """

    def __init__(self, pair_model, probe, val_data, losses, epochs, out=None):
        super().__init__()
        self.pair_model = pair_model
        self.probe = probe
        self.val_data = val_data
        self.losses = losses
        self.epochs = epochs
        self.out = out if out is not None else sys.stdout
        self._started = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        for key in ("loss", *(f"loss_{k}" for k in TYPE_KEYS)):
            if key in logs:
                logs[gap.RUNNING + key[len("loss"):]] = logs.pop(key)
        logs.update(self.probe.measure(self.pair_model, runner=self.model))
        if keras.backend.backend() == "jax":
            val = jax_predictions.evaluate_pairs_jax(
                self.pair_model, self.val_data, self.losses
            )
        else:
            val = evaluate_pairs(self.pair_model, self.val_data, self.losses)
        logs["val_loss"] = val["total"]
        for name, key in zip(PAIR_TYPES, TYPE_KEYS):
            logs[f"val_loss_{key}"] = val[name]
        seconds = time.perf_counter() - (self._started or time.perf_counter())
        print(
            f"epoch {epoch + 1}/{self.epochs}  training pairs: "
            f"{logs[gap.TRAINING_MODE]:.4f} training mode, "
            f"{logs[gap.INFERENCE_MODE]:.4f} inference mode "
            f"({logs[gap.GAP]:.2f}x)  val {logs['val_loss']:.4f} (inference "
            f"mode)  running loss {logs.get(gap.RUNNING, float('nan')):.4f}  "
            f"[{seconds:.1f} s]",
            file=self.out,
            flush=True,
        )


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `TrainingDiverged` naming the epoch and step.

    Raising (rather than Keras's graceful `stop_training`) matters: a
    graceful stop runs `BackupAndRestore.on_train_end`, which deletes the
    backup, so a NaN would cost the whole run.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(self._epoch + 1, batch + 1, float(loss))


class ReleaseFreeMemory(keras.callbacks.Callback):
    """Hands freed heap memory back to the system after every epoch.

    With TensorFlow's many threads, glibc's allocator keeps freed memory in
    per-thread arenas, and the per-epoch evaluations grow resident memory
    epoch after epoch though nothing leaks (benchmarks/memory_soak.py).
    `malloc_trim(0)` returns it. Does nothing where libc has no malloc_trim.
    """

    def __init__(self):
        super().__init__()
        self._trim = _malloc_trim()

    def on_epoch_end(self, epoch, logs=None):
        if self._trim is not None:
            self._trim(0)


def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class SetLearningRate(keras.callbacks.Callback):
    """Sets the optimizer's learning rate when training begins."""

    def __init__(self, learning_rate):
        super().__init__()
        self.learning_rate = learning_rate

    def on_train_begin(self, logs=None):
        self.model.optimizer.learning_rate.assign(self.learning_rate)


class HistoryCSV(keras.callbacks.Callback):
    """history.csv with each epoch exactly once, across kills and resumes.

    Keras's CSVLogger appends: a resumed run writes the re-run epochs a
    second time. Here every epoch end rewrites the file (aside, then
    renamed) from the rows of earlier epochs plus this one. An epoch's row
    is written before its backup, so that no backup counts an epoch without
    a row; rows a kill left past the backup are dropped when the run
    resumes (`trim_history`).
    """

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        rows = [r for r in read_history(self.path) if int(r["epoch"]) < epoch + 1]
        row = {"epoch": epoch + 1}
        row.update({k: _plain(v) for k, v in sorted((logs or {}).items())})
        rows.append(row)
        fields = list(dict.fromkeys(k for r in rows for k in r))
        files.write_csv(self.path, fields, rows)


class LastGoodCheckpoint(keras.callbacks.Callback):
    """Weights after every finished epoch, written aside then renamed."""

    def __init__(self, directory):
        super().__init__()
        self.path = Path(directory) / "last.weights.h5"

    def on_epoch_end(self, epoch, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        files.write_weights(self.model, self.path)


# File names of keras.callbacks.BackupAndRestore(double_checkpoint=True).
BACKUP_WEIGHTS = "latest.weights.h5"
BACKUP_METADATA = "training_metadata.json"
PREVIOUS = ".bkp"


class ReadOnlyBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that restores and never writes."""

    def _save_model(self):
        pass

    def on_train_end(self, logs=None):
        pass


def backup_callback(backup_dir, writes=True):
    """BackupAndRestore keeping the previous backup, and kept at the end.

    Kept, so that a run killed after its last epoch (while model.keras is
    written) or trained longer later goes on from where it stopped. With
    `writes=False` (the processes of a run but the first) it only restores.
    """
    backup = keras.callbacks.BackupAndRestore if writes else ReadOnlyBackup
    return backup(str(backup_dir), double_checkpoint=True,
                  delete_checkpoint=False)


def backup_epochs_done(backup_dir):
    """Epochs finished according to a BackupAndRestore directory (0 if none)."""
    path = Path(backup_dir) / BACKUP_METADATA
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def restore_point(backup_dir, out=None):
    """Epochs done in the backup of `backup_dir`, after checking it is whole.

    Keras writes its backup in place, so a kill mid-write leaves a damaged
    file, and Keras falls back to the previous backup only on some errors
    and without a word. Here a damaged backup is named, and the previous one
    (`double_checkpoint=True`) is put in its place before training resumes.
    A damaged first backup, with none before it, is removed: no epoch was
    backed up, and the run trains from the start.

    Raises:
        BackupError: the backup and the previous one are both damaged.
    """
    out = out if out is not None else sys.stdout
    backup_dir = Path(backup_dir)
    latest = (backup_dir / BACKUP_WEIGHTS, backup_dir / BACKUP_METADATA)
    if not latest[0].exists() and not latest[1].exists():
        return 0
    problem = _backup_problem(*latest)
    if problem is None:
        return backup_epochs_done(backup_dir)
    previous = tuple(path.with_name(path.name + PREVIOUS) for path in latest)
    if not previous[0].exists() and not previous[1].exists():
        # The first backup, cut off while written: no epoch was committed.
        print(
            f"kpair: the first backup was cut off while written ({problem}); "
            "no epoch was backed up: training from the start.",
            file=out,
            flush=True,
        )
        for path in latest:
            path.unlink(missing_ok=True)
        return 0
    earlier = _backup_problem(*previous) if previous[0].exists() else "missing"
    if earlier is not None:
        raise BackupError(
            f"The backup in {backup_dir} is damaged ({problem}) and so is the "
            f"previous one ({earlier}); remove {backup_dir} to train from the "
            "start."
        )
    print(
        f"kpair: the backup is damaged ({problem}); resuming from the "
        f"previous one, {previous[0]}.",
        file=out,
        flush=True,
    )
    for good, damaged in zip(previous, latest):
        files.copy_file(good, damaged)
    return backup_epochs_done(backup_dir)


def _backup_problem(weights, metadata):
    """Why a backup's weights and metadata cannot be used, or None."""
    import h5py

    try:
        epoch = json.loads(metadata.read_text())["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            return f"{metadata}: bad epoch {epoch!r}"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{metadata}: {type(error).__name__}: {error}"
    try:
        with h5py.File(weights, "r") as f:
            # Reading every array finds a file cut short anywhere.
            f.visititems(
                lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None
            )
    except Exception as error:  # h5py raises OSError, KeyError, RuntimeError...
        message = " ".join(str(error).split())[:200]
        return f"{weights}: {type(error).__name__}: {message}"
    return None


def trim_history(path, epochs_done, out=None):
    """Drops the rows of history.csv past the backup's epoch, saying so.

    A run stopped after an epoch's row was written but before the epoch's
    backup resumes from the backup: the epochs past it train again, and
    their old rows must not stand for weights that no longer exist.

    Args:
        path: The run's history.csv.
        epochs_done: Integer, the epochs the backup holds.
        out: Where the line saying what was kept goes (default stdout).

    Returns:
        The epochs of the rows dropped, a list (empty if none).
    """
    out = out if out is not None else sys.stdout
    rows = read_history(path)
    dropped = [int(r["epoch"]) for r in rows if int(r["epoch"]) > epochs_done]
    if not dropped:
        return []
    kept = [r for r in rows if int(r["epoch"]) <= epochs_done]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    files.write_csv(path, fields, kept)
    span = _epoch_span(dropped)
    where = (
        f"the backup holds {_epoch_span(list(range(1, epochs_done + 1)))}, "
        "kept with their rows"
        if epochs_done else "no backup was written: training from the start"
    )
    print(
        f"kpair: {path} held rows of {span}, written before the run was "
        f"stopped and before their backup; dropped: {span} will train again "
        f"({where}).",
        file=out,
        flush=True,
    )
    return dropped


def _epoch_span(epochs):
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    return f"epochs {epochs[0]}-{epochs[-1]}"


def read_history(path):
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
