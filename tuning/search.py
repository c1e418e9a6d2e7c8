"""`run_search`: a resumable keras-tuner search over kpair's normalizations.

The search directory (`out_dir`) holds:

- `search.json`: the settings of the search; a search started again in the
  same directory must use the same ones (only `max_trials` may change).
- `search/`: keras-tuner's project (`oracle.json`, one `trial_<id>/` per
  trial with `trial.json` and the best epoch's weights). Started again,
  finished trials are kept and the trial in flight is run again from its
  start (keras-tuner restarts, it does not resume, a trial: #439), unless
  its results were recorded before the kill.
- `summary.csv`, `summary.md`, `val_loss_by_norm.png`: the table and plot.
  With `max_gap`, trials whose gap is at most `max_gap` rank first (see
  `summary.trial_rows`); `search.json` keeps it for the search's resumes.
- `best/`: `model.keras` (float32) and `config.json` of the best trial, a
  run directory that `kpair evaluate` and `kpair train --config` accept.

Chief/worker mode is keras-tuner's own, driven by `KERASTUNER_TUNER_ID`,
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`: the chief serves the
oracle (`chief.serve`) and, once every trial is done, writes the table, the
plot and the best model; workers run trials. All of them must share `out_dir`.
A trial whose worker is not heard of for `worker_timeout` seconds goes to
the next worker that asks (`chief.Leases`); workers with nothing left to
take wait for the trials still running, in case one comes back.
"""

import functools
import os
import sys
import time
from pathlib import Path

import keras
import keras_tuner

from kpair.config import ConfigError
from kpair.utils.progress import estimate

from . import chief, oracles, search_directory, summary
from .hypermodel import PairHyperModel, trial_devices
from .search_directory import TUNERS  # noqa: F401 (kpair tune's choices)

OBJECTIVE = "val_loss"
# Seconds a worker waits before asking again for a trial when none is free
# yet (the last ones run elsewhere, and may come back to the queue).
IDLE_SECONDS = 2.0
# Failed trials never stop a search: each is recorded, and the next starts.
_NEVER = 2**31 - 1


def run_search(
    base_config,
    norms=None,
    tuner="random",
    max_trials=10,
    epochs=None,
    out_dir="runs/tune",
    batchings=None,
    distribution_strategy=None,
    out=None,
    watch=None,
    max_gap=None,
    worker_timeout=chief.WORKER_TIMEOUT,
):
    """Runs (or resumes) a search; returns its trials, best first.

    Args:
        base_config: `kpair.config.TrainConfig` with the fixed arguments
            (data, precision, image size, width, batch size, ...).
        norms: Norm names to search over (default: every registered norm).
        tuner: `"random"`, `"bayesian"` or `"hyperband"`. No grid search:
            keras-tuner 1.4.8's GridSearch does not resume (#1055).
        max_trials: Trials in all, counting those of earlier runs in the same
            `out_dir`. Hyperband decides its own number of trials from
            `epochs`: pass `None` with it.
        epochs: Epochs per trial (Hyperband: the most a trial gets); default
            `base_config.epochs`.
        out_dir: Search directory; the same one resumes the search.
        batchings: Batch compositions to search over (default all).
        distribution_strategy: Optional `tf.distribute` strategy each trial
            runs under (TensorFlow), with `base_config.devices` 1. Else
            `base_config.devices` decides, as in `kpair train`: each trial
            data parallel over that many local devices (JAX's
            `DataParallel`; on TensorFlow a `MirroredStrategy`).
        out: Stream for progress and the table (default `sys.stdout`).
        watch: On the chief, optional object whose `started()` is called
            once the oracle serves and `check()` every second while it does
            (see `chief.serve`).
        max_gap: Optional positive number: a finished trial whose gap
            (`gap_ratio`, inference- over training-mode loss on a fixed
            sample of training pairs, at the epoch whose weights the trial
            keeps) exceeds it ranks after every trial that meets it, whatever
            their `val_loss`; the best is the best of those that meet it (of
            all trials, by `val_loss`, when none does). Recorded in
            `search.json`: a resumed search keeps it when given `None`, and
            refuses another value.
        worker_timeout: On the chief, seconds without word of a trial from
            the worker running it (a worker reports when it starts a trial,
            at each epoch's end and when it ends it) after which the trial
            goes to the next worker that asks, and that worker's late report
            is dropped. It must exceed a live worker's longest silence: from
            a trial's start to its first epoch's end, and one epoch.

    Returns:
        A dict: `role` (`"local"`, `"chief"` or `"worker"`), `trials` (the
        rows of the summary table, best first; empty on a worker) and `best`
        (the best row, or `None`). With a `max_gap` in effect, each row has
        `max_gap_met` (`"yes"`, `"no"`, `""` for an unfinished trial) and
        the dict `max_gap` (the value in effect) and `max_gap_met` (whether
        the best row meets it).

    Raises:
        kpair.config.ConfigError: bad arguments, or `out_dir` holds a search
            with other settings (another `max_gap` among them) or
            unreadable state.
        kpair.data.DataError: the data cannot be read.
    """
    out = out if out is not None else sys.stdout
    search_directory.check_tuner(tuner, max_trials)
    search_directory.check_max_gap(max_gap)
    chief.check_worker_timeout(worker_timeout)
    if distribution_strategy is not None and base_config.devices != 1:
        raise ConfigError(
            "A trial runs under distribution_strategy (TensorFlow) or data "
            "parallel over `devices` (JAX), not both. "
            f"Received: devices={base_config.devices!r}"
        )
    if epochs is not None:
        base_config = base_config.replace(epochs=epochs)
    out_dir = Path(out_dir)
    role = search_directory.role()
    hypermodel = PairHyperModel(base_config, norms=norms, batchings=batchings, out=out)
    if role != "chief":  # the chief trains nothing: it leaves the devices alone
        distribution_strategy = trial_devices(
            base_config, hypermodel.batchings, distribution_strategy, out)
    if role != "local":
        chief.quiet_scope_protos()
    max_gap = search_directory.prepare(role, hypermodel, tuner, out_dir, out,
                                       max_gap=max_gap)
    search = _make_tuner(
        tuner, hypermodel, max_trials, base_config, out_dir, distribution_strategy
    )
    search.kpair_watch = watch
    search.kpair_worker_timeout = worker_timeout
    if role == "worker":
        search.oracle.stub = _NamedStub(
            search.oracle.stub, os.environ["KERASTUNER_TUNER_ID"])
    search.search()
    if role == "worker":
        print(f"Worker {os.environ['KERASTUNER_TUNER_ID']} finished.", file=out)
        return {"role": role, "trials": [], "best": None}
    setup = {"backend": keras.backend.backend(), "devices": base_config.devices}
    return {"role": role, **summary.report(search, hypermodel, out_dir, out, setup,
                                           max_gap=max_gap)}


# --- the tuner -----------------------------------------------------------------


class _NamedStub:
    """A worker's gRPC stub that sends its tuner id with every call, by which
    the chief tells a trial's worker from one it took the trial from."""

    def __init__(self, stub, tuner_id):
        self._stub = stub
        self._metadata = ((chief.TUNER_ID_KEY, tuner_id),)

    def __getattr__(self, name):
        return functools.partial(getattr(self._stub, name), metadata=self._metadata)


class _KpairTrials:
    """A failing trial is recorded as FAILED with a one-line reason.

    keras-tuner 1.4.8 marks a trial that raised as INVALID (to be retried
    `max_retries_per_trial` times, then FAILED) and keeps the traceback as
    its message; kpair does not retry (a NaN or an out-of-memory comes back)
    and writes the reason beside the trial, where a chief can read it.
    """

    def run_trial(self, trial, *args, **kwargs):
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        (trial_dir / summary.FAILURE_FILE).unlink(missing_ok=True)
        # Counted before training: a process that dies mid-trial cannot
        # count afterwards (see oracles.KpairOracle.create_trial).
        oracles.write_state(trial_dir / oracles.ATTEMPTS_FILE,
                            oracles.read_attempts(trial_dir) + 1)
        stream = getattr(self.hypermodel, "out", None) or sys.stdout
        print(self._trial_line(trial), file=stream, flush=True)
        try:
            return super().run_trial(trial, *args, **kwargs)
        except keras_tuner.errors.FatalError:
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
            oracles.write_failure(trial_dir, reason)
            print(f"Trial {trial.trial_id} failed: {reason}", file=stream, flush=True)
            raise keras_tuner.errors.FailedTrialError(reason) from error
        finally:
            self._kpair_trials_run = getattr(self, "_kpair_trials_run", 0) + 1

    def pre_create_trial(self):
        # keras-tuner asks again at once after an IDLE answer: a worker waits
        # a little first (`_kpair_asked` stays set when no trial began).
        if getattr(self, "_kpair_asked", False):
            time.sleep(IDLE_SECONDS)
        self._kpair_asked = True
        super().pre_create_trial()

    def on_trial_begin(self, trial):
        self._kpair_asked = False
        super().on_trial_begin(trial)

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs=logs)
        if self._is_worker():  # a sign of life to the chief (chief.Leases)
            self.oracle.get_trial(trial.trial_id)

    def _trial_line(self, trial):
        """`trial 3/10 (id 02), 2 min 10 s elapsed, about 5 min left`.

        The count takes in the trials of earlier runs of the search; the
        time, only this process's, whose trials the estimate extrapolates.
        Hyperband sets its own number of trials, so it gets no total.
        """
        started = self.__dict__.setdefault("_kpair_started", time.monotonic())
        run_here = getattr(self, "_kpair_trials_run", 0)
        try:
            number = len(self.oracle.trials)  # a worker's oracle has no trials
        except AttributeError:
            number = None
        total = getattr(self.oracle, "max_trials", None)
        if isinstance(self, keras_tuner.Hyperband):
            total = None
        if number:
            head = f"trial {number}/{total}" if total else f"trial {number}"
            head += f" (id {trial.trial_id})"
        else:  # a worker: `trial (id 3) of 10`
            head = f"trial (id {trial.trial_id})" + (f" of {total}" if total else "")
        left = total - number + 1 if number and total else None
        timing = estimate(
            time.monotonic() - started, run_here,
            run_here + left if left is not None else None,
        )
        return f"{head}, {timing}"

    def _populate_initial_space(self):
        # keras-tuner builds the model once per conditional scope to find the
        # space; PairHyperModel.config_for declares every hyperparameter,
        # active or not, so one call finds it without building a model.
        hp = self.oracle.get_space()
        self.hypermodel.config_for(hp)
        self.oracle.update_space(hp)

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        oracles.write_state(self._get_tuner_fname(), self.get_state())

    def search(self, *args, **kwargs):
        if search_directory.role() != "chief":
            return super().search(*args, **kwargs)
        self.save()  # as keras-tuner's chief does; then kpair's server loop
        self.oracle.kpair_leases = chief.Leases(
            getattr(self, "kpair_worker_timeout", chief.WORKER_TIMEOUT))
        chief.serve(self.oracle, getattr(self, "kpair_watch", None))


class _Tuner(_KpairTrials, keras_tuner.Tuner):
    pass


class _HyperbandTuner(_KpairTrials, keras_tuner.Hyperband):
    def __init__(self, oracle, hypermodel, **kwargs):
        # Hyperband's own __init__ only makes a HyperbandOracle; kpair's is
        # made already. Its run_trial and model building are kept.
        keras_tuner.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)


def _make_tuner(kind, hypermodel, max_trials, config, out_dir, strategy):
    objective = keras_tuner.Objective(OBJECTIVE, direction="min")
    common = dict(
        objective=objective,
        seed=config.seed,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=_NEVER,
    )
    if kind == "random":
        oracle = oracles.RandomOracle(max_trials=max_trials, **common)
    elif kind == "bayesian":
        oracle = oracles.BayesianOracle(max_trials=max_trials, **common)
    else:
        oracle = oracles.HyperbandOracle(max_epochs=config.epochs, factor=3, **common)
    tuner_class = _HyperbandTuner if kind == "hyperband" else _Tuner
    return tuner_class(
        oracle=oracle,
        hypermodel=hypermodel,
        directory=str(out_dir),
        project_name=search_directory.PROJECT,
        overwrite=False,  # the same out_dir resumes
        distribution_strategy=strategy,
    )
