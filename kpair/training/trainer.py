"""`kpair.train(config)` (kpair.training.trainer.train): one training run,
one run directory.

The run directory holds `model.keras` (computing in float32), `config.json`
(the resolved configuration), `history.csv`, `metrics.json`, TensorBoard
logs under `logs/`, the last good weights under `checkpoints/` and the
backup under `backup/` from which a killed run resumes, and a finished one
trains on when given more epochs.
"""

import os
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from kpair.config import TrainConfig
from kpair.data import (
    ensure_demo,
    make_batches,
    read_split,
    steps_per_epoch,
)
from kpair.models.model_builder import (
    build_pair_model,
    config_backbone_arguments,
    training_model,
)
from kpair.models.precision import describe_precision, detect_gpus, resolve_precision
from kpair.models.pretrained import statistics_note
from kpair.pretrained import read_source
from kpair.training import callbacks as kcb
from kpair.training import gap
from kpair.training.devices import (
    check_backend,
    data_parallel,
    replica_layout,
    synchronize_batch_norms,
)
from kpair.training.precise import check_one_device, images_record, precise_callback
from kpair.training.preflight import check_training_data
from kpair.training.processes import (
    ProcessLocalState,
    barrier,
    is_writer,
    process_count,
    process_index,
)
from kpair.training.run_directory import claim, run_record
from kpair.training.run_outputs import finished_metrics, write_outputs
from kpair.utils import files
from kpair.utils.tensorflow_setup import describe_cpu_kernels

# The callbacks that write into the run directory: only its first process
# runs them.
WRITE_RUN_DIRECTORY = (kcb.HistoryCSV, kcb.LastGoodCheckpoint,
                       keras.callbacks.TensorBoard)
# Config fields a run directory may be resumed with other values of: train
# longer, on with a lower learning rate after a NaN, or on as many devices as
# are at hand (the same steps, to rounding).
RESUMABLE_CHANGES = {"epochs", "learning_rate", "devices"}


def resolve_data(config, out=None):
    """The dataset directory: `config.data`, or the cached demo data set."""
    out = out if out is not None else sys.stdout
    if config.data is not None:
        return Path(config.data)
    print("No --data given: using the built-in demo data set.", file=out)
    return ensure_demo(image_size=config.image_size)


def training_data(config, data_dir):
    """What one run trains on, shared by `kpair train` and the tuner (each
    adds `kpair.training.precise.precise_callback` where the config asks for
    statistics="precise").

    Returns `(batches, steps, probe, val_pairs)`: repeated training batches
    with a known number of steps per epoch (Keras cannot count the batches
    of a filtered, zipped dataset, and progress needs a total), the
    `kpair.training.gap.GapProbe` that measures the gap every epoch on one fixed
    sample of training pairs in the run's batches, and the validation
    `Split`.
    """
    # Domain ids are checked where the data enter, for the tuner too.
    train_pairs = read_split(
        data_dir / "train", config.image_size, num_domains=config.num_domains
    )
    val_pairs = read_split(
        data_dir / "val", config.image_size, num_domains=config.num_domains
    )
    sample = gap.fixed_sample(
        train_pairs, config.batching, config.batch_size, config.eval_pairs,
        config.seed,
    )
    probe = gap.GapProbe.for_run(
        sample, config.batching, config.batch_size, config.losses
    )
    steps = config.steps_per_epoch or steps_per_epoch(
        train_pairs.counts, config.batching, config.batch_size
    )
    # Over several processes, each decodes only the rows it feeds.
    batches = make_batches(
        train_pairs, config.batching, config.batch_size, seed=config.seed,
        repeat=True, share=(process_index(), process_count()),
    )
    return batches, steps, probe, val_pairs


def train(config, out=None, extra_callbacks=()):
    """Trains the pair model of `config` and writes its run directory.

    A run directory that holds a backup of an unfinished run with the same
    configuration is resumed from its last finished epoch. This is
    `kpair.train`, the function `kpair train` calls.

    Args:
        config: A `kpair.TrainConfig`; `config.out` is the run directory,
            `config.data` the dataset directory (`None`: the demo data set).
        out: Stream for kpair's lines (default `sys.stdout`). Keras's own
            progress goes to `sys.stdout`: a bar on a terminal, else one
            line per epoch.
        extra_callbacks: More `keras.callbacks.Callback`s for `fit`.

    Returns:
        The metrics dict written to `metrics.json`: the losses of the final
        weights in training and inference mode and their ratio `gap_ratio`,
        `val_loss`, per pair type, `epochs` and `seconds`.

    Example:

    >>> import kpair
    >>> metrics = kpair.train(kpair.TrainConfig(epochs=2, out="runs/mine"))
    >>> model = kpair.load_model("runs/mine")

    Trains on the Keras backend of the process (`KERAS_BACKEND`):
    TensorFlow, JAX with XLA-compiled steps, or torch (eager steps); the
    data come from the same tf.data pipeline on each.

    Raises:
        kpair.errors.TrainingDiverged: the loss became NaN or infinite;
            the last good checkpoint and the backup are kept.
        kpair.config.ConfigError: `out` holds a run of another config; the
            backend is none of `TRAINING_BACKENDS`; or `deterministic` on
            JAX with a GPU without XLA's deterministic GPU kernels.
        kpair.data.DataError: the data cannot be read, or break the data
            contract for `config` (see `kpair.training.preflight.check_training_data`);
            nothing is written then.
    """
    out = out if out is not None else sys.stdout
    # Of several processes, the first writes the run directory and speaks.
    writer = is_writer()
    if not writer:
        out = open(os.devnull, "w")  # noqa: SIM115 (the run's whole length)
    run_dir = Path(config.out)
    started = time.perf_counter()
    devices = check_backend(config)
    check_one_device(config, devices)
    # Data that cannot train fail here, in one line, before the run
    # directory exists (the data are read only after it is claimed).
    check_training_data(config)
    # A preset that cannot be downloaded fails here too, before the run exists.
    pretrained = read_init(config)
    if writer:
        _claim_run_dir(run_dir, config)
    # Before any dataset is made: tf.data's seeded shuffles also read the
    # global seed, so a run must not depend on what ran before it.
    keras.utils.set_random_seed(config.seed)
    if writer:
        # Of several processes, the first makes the demo data and may put the
        # previous backup in place of a damaged one, before the others read
        # them (the barrier).
        data_dir = resolve_data(config, out)
        kcb.restore_point(run_dir / "backup", out)
    barrier("kpair-run-directory-ready")
    if not writer:
        data_dir = resolve_data(config, out)
    batches, steps, probe, val_pairs = training_data(config, data_dir)

    if config.deterministic:
        # Same seed, same kernels: the same metrics and weights every time
        # (on JAX this covers the data pipeline; XLA's kernels are checked
        # by check_backend).
        tf.config.experimental.enable_op_determinism()
    epochs_done = kcb.backup_epochs_done(run_dir / "backup")
    finished = finished_metrics(run_dir, config, epochs_done)
    if finished is not None:
        print(f"{run_dir} is a finished run of this configuration; nothing "
              "to do.", file=out)
        return finished
    if writer:
        kcb.trim_history(run_dir / "history.csv", epochs_done, out)
    # Variables are laid out on the devices when built: build inside.
    with data_parallel(devices) as distribution:
        local_state = (ProcessLocalState(distribution)
                       if process_count() > 1 else None)
        pair_model, model, batches = _start_or_resume(
            config, batches, steps, epochs_done, data_dir, out, devices,
            local_state, pretrained,
        )
        # statistics="precise": the training images it estimates from are
        # drawn here, the same ones in a resumed run (None under "ema").
        precise = precise_callback(config, data_dir, pair_model)
        callbacks = _callbacks(config, pair_model, probe, val_pairs, out,
                               extra_callbacks, writer, precise)
        if local_state is not None:
            # First: the backup is restored into process-local copies.
            callbacks.insert(0, local_state)
        model.fit(
            batches, epochs=config.epochs,
            steps_per_epoch=steps, callbacks=callbacks,
            shuffle=False,  # make_batches shuffled already
            # Keras's bar on a terminal; in a log, one line per epoch, not a
            # redrawn bar's hundreds.
            verbose=(1 if sys.stdout.isatty() else 2) if writer else 0,
        )
    seconds = time.perf_counter() - started
    if not writer:
        barrier("kpair-outputs-written")
        return finished_metrics(run_dir, config, config.epochs) or {}
    metrics = write_outputs(run_dir, config, pair_model, seconds, out, devices,
                             pretrained, images_record(precise))
    barrier("kpair-outputs-written")
    return metrics


def read_init(config):
    """The `Pretrained` weights of `config.init`, or None (random weights)."""
    if config.init is None:
        return None
    return read_source(config.init, config_backbone_arguments(config))


def _claim_run_dir(run_dir, config):
    """Writes config.json, refusing a directory that holds another run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    claim(
        path, config.to_dict(), "a run with another configuration",
        "Use another --out, or remove it.", load=_readable_config,
        resumable=RESUMABLE_CHANGES,
    )
    files.write_json(path, run_record(config))


def _readable_config(path):
    """The saved config as a dict; None if unreadable: the run is claimed anew."""
    try:
        return TrainConfig.load(path).to_dict()
    except ValueError:
        return None


def _start_or_resume(config, batches, steps, epochs_done, data_dir, out,
                     devices=1, local_state=None, pretrained=None):
    """Builds the model and says what trains; a resumed run skips done batches.

    Returns `(pair_model, model, batches)`: the pair model, the model that
    trains it and the batches from where the run goes on.
    """
    run_dir = Path(config.out)
    if config.precision == "auto":
        print(describe_precision(config.precision), file=out, flush=True)
    backend = keras.backend.backend()
    if not detect_gpus() and backend == "tensorflow":
        print(describe_cpu_kernels(), file=out, flush=True)
    pair_model = build_pair_model(config, pretrained)
    if pretrained is not None:
        note = statistics_note(config.norm, pretrained)
        print(pretrained.line() + (f" {note}" if note else ""), file=out, flush=True)
    synchronize_batch_norms(pair_model, devices)
    model = training_model(pair_model, config)
    batches = replica_layout(batches, config.batching, devices)
    _build(model, batches, local_state)
    if epochs_done:
        print(
            f"Resuming {run_dir}: {epochs_done} of {config.epochs} epochs "
            "done, continuing from the backup.",
            file=out,
        )
        # The batches a run that was never stopped would see next.
        batches = batches.skip(epochs_done * steps)
    on_devices = f" devices={devices}" if devices > 1 else ""
    print(
        f"Training norm={config.norm} batching={config.batching} "
        f"precision={resolve_precision(config.precision)} backend={backend}"
        f"{on_devices} on {data_dir} -> {run_dir}",
        file=out,
        flush=True,
    )
    return pair_model, model, batches


def _callbacks(config, pair_model, probe, val_pairs, out, extra_callbacks=(),
               writer=True, precise=None):
    """The callbacks of a run, in the order their epoch ends must run.

    `precise`: the `PreciseStatistics` of statistics="precise", or None.

    Of a run's processes but the first, which writes nothing: no history,
    checkpoint or logs, and a backup that is only read (to resume).
    """
    run_dir = Path(config.out)
    callbacks = [
        # First: its line ends the epoch with Keras's running losses, before
        # the gap measured below adds its keys to the epoch's logs.
        keras.callbacks.ProgbarLogger(),
        kcb.StopOnNonFiniteLoss(),
        # Before everything that measures or saves the model: the epoch's
        # statistics are the population ones.
        *([precise] if precise is not None else []),
        kcb.EpochLosses(
            pair_model, probe, val_pairs, config.losses, config.epochs, out
        ),
        kcb.HistoryCSV(run_dir / "history.csv"),
        kcb.LastGoodCheckpoint(run_dir / "checkpoints"),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
        kcb.ReleaseFreeMemory(),
        *extra_callbacks,
        # Last at an epoch's end: once the backup says an epoch is done, its
        # history row and checkpoint are written already.
        kcb.backup_callback(run_dir / "backup", writes=writer),
        # After the restore, which brings back the optimizer's old rate: a
        # run resumed after a NaN trains on with the lower rate it was given.
        kcb.SetLearningRate(config.learning_rate),
    ]
    if writer:
        return callbacks
    return [c for c in callbacks if not isinstance(c, WRITE_RUN_DIRECTORY)]


def _build(model, batches, local_state=None):
    """Builds model and optimizer so that BackupAndRestore can load into them.

    With several processes, the variables are global: the model is called on
    this process's copies (`ProcessLocalState`), after the optimizer's
    variables are laid out on the devices.
    """
    features, _ = next(iter(batches.take(1)))
    if local_state is None:
        model(features, training=False)
        model.optimizer.build(model.trainable_variables)
        return
    model.optimizer.build(model.trainable_variables)
    local_state.set_model(model)
    local_state.to_local()
    model(features, training=False)
    local_state.to_global()
