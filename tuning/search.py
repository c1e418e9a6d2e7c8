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
import math
import os
import sys
import time
from pathlib import Path

import keras
import keras_tuner
from keras_tuner.engine.trial import Trial, TrialStatus

from kpair import layers
from kpair.config import ConfigError
from kpair.utils import files
from kpair.utils.progress import estimate

from . import chief, search_directory, summary
from .hypermodel import PairHyperModel, trial_devices
from .search_directory import TUNERS  # noqa: F401 (kpair tune's choices)

OBJECTIVE = "val_loss"
# Seconds a worker waits before asking again for a trial when none is free
# yet (the last ones run elsewhere, and may come back to the queue).
IDLE_SECONDS = 2.0
ATTEMPTS_FILE = "attempts.txt"
# A trial whose process dies this many times before it ends is failed.
MAX_ATTEMPTS = 2
# Failed trials never stop a search: each is recorded, and the next starts.
_NEVER = 2**31 - 1
# keras-tuner's own format for its state files: compact, no final newline.
_write_state = functools.partial(files.write_json, indent=None, end="")


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


class _KpairOracle:
    """keras-tuner's oracles with three changes.

    - State is written aside, then renamed: never half a JSON file (#987).
    - Every norm gets a trial at its defaults before the sampler takes over,
      so a search of at least as many trials as norms sees each of them.
    - A trial whose process died `MAX_ATTEMPTS` times before the trial ended
      (killed, out of memory) is failed instead of run again: keras-tuner
      puts an interrupted trial back in its retry queue on every restart and
      counts a run only when it ends, so such a trial would kill every
      restart of the search.
    - On a chief (`kpair_leases` set before `chief.serve`): a trial whose worker
      is silent too long goes back to the queue (`kpair_take_back_silent`),
      a report from a worker that no longer runs its trial is dropped
      (`kpair_heard`), and a worker asking when every trial was handed out
      while some still run is told to wait (IDLE), not to stop: a trial
      taken back later finds it.
    """

    kpair_leases = None

    def save(self):
        _write_state(self._get_oracle_fname(), self.get_state())

    def reload(self):
        super().reload()
        self._settle_killed_trials()

    def _settle_killed_trials(self):
        """Makes a trial's trial.json and oracle.json agree after a kill.

        keras-tuner writes a trial's trial.json, then oracle.json, and its
        `reload` puts every trial oracle.json calls ongoing back in the
        retry queue. A kill between the two writes would otherwise
        - keep a trial created just before the kill that oracle.json does not
          name: it counted towards `max_trials` and never ran. It is
          forgotten, and created again under its id;
        - run again a trial that had ended, or whose results were recorded
          (its training done, its best weights saved): the new run's
          results would be dropped (keras-tuner keeps those recorded) while
          its weights replaced the first run's, and a second kill would fail
          it. It is ended with the results it has.
        """
        settled = [t for t in self.trials if t not in self.start_order]
        for trial_id in settled:
            del self.trials[trial_id]
        for trial_id in list(self._retry_queue):
            trial = self.trials[trial_id]
            if trial.status == TrialStatus.RUNNING:
                if not trial.metrics.exists(self.objective.name):
                    continue  # killed while it trained: it runs again
                self.score_trial(trial)
                # As end_trial does: a trial without a finite score is invalid.
                finite = trial.score is not None and math.isfinite(trial.score)
                trial.status = TrialStatus.COMPLETED if finite else TrialStatus.INVALID
                self._save_trial(trial)
                print(f"Trial {trial_id}: its results were recorded before the "
                      "search stopped; kept, not run again.", flush=True)
            elif trial.status not in (TrialStatus.COMPLETED, TrialStatus.FAILED):
                continue  # not ended: a retry keras-tuner asked for
            self._retry_queue.remove(trial_id)
            if trial_id not in self.end_order:
                self.end_order.append(trial_id)
            settled.append(trial_id)
        if settled:
            self.save()

    def _save_trial(self, trial):
        trial_dir = self._get_trial_dir(trial.trial_id)
        _write_state(os.path.join(trial_dir, "trial.json"), trial.get_state())

    @keras_tuner.synchronized
    def create_trial(self, tuner_id):
        while True:
            trial = super().create_trial(tuner_id)
            if trial.status == TrialStatus.STOPPED and (
                    self.kpair_leases is not None and self.ongoing_trials):
                self.tuner_ids.add(tuner_id)  # told to wait, not to stop
                return Trial(
                    self.get_space(), status=TrialStatus.IDLE)
            if trial.status != TrialStatus.RUNNING:
                return trial
            trial_dir = Path(self._get_trial_dir(trial.trial_id))
            attempts = read_attempts(trial_dir)
            if attempts < MAX_ATTEMPTS:
                if self.kpair_leases is not None:
                    self.kpair_leases.handed(trial.trial_id, tuner_id)
                return trial
            reason = (
                f"ProcessDied: the trial's process died {attempts} times before "
                "the trial ended (killed, or out of memory)"
            )
            _write_failure(trial_dir, reason)
            print(f"Trial {trial.trial_id} failed: {reason}", flush=True)
            trial.status = TrialStatus.FAILED
            trial.message = reason
            self.end_trial(trial)

    @keras_tuner.synchronized
    def end_trial(self, trial):
        super().end_trial(trial)
        if self.kpair_leases is not None:
            self.kpair_leases.drop(trial.trial_id)

    @keras_tuner.synchronized
    def kpair_heard(self, trial_id, tuner_id):
        """Notes a report of `trial_id` from `tuner_id` (None: unnamed);
        returns False for one from a worker that no longer runs it."""
        return self.kpair_leases is None or self.kpair_leases.heard(
            trial_id, tuner_id)

    @keras_tuner.synchronized
    def kpair_take_back_silent(self):
        """Puts each trial whose worker is silent for the leases' timeout
        back in the queue; that worker counts as gone."""
        if self.kpair_leases is None:
            return
        taken = []
        for trial_id, tuner_id in self.kpair_leases.silent():
            self.kpair_leases.drop(trial_id)
            ongoing = self.ongoing_trials.get(tuner_id)
            if ongoing is None or ongoing.trial_id != trial_id:
                continue
            del self.ongoing_trials[tuner_id]
            self.tuner_ids.discard(tuner_id)  # asks again if it lives
            self._retry_queue.append(trial_id)
            taken.append(trial_id)
            print(f"Trial {trial_id}: no word from worker {tuner_id} for "
                  f"{self.kpair_leases.timeout:g} s; the trial goes to the next "
                  "worker that asks.", flush=True)
        if taken:
            self.save()

    def populate_space(self, trial_id):
        values = self._untried_norm_values()
        if values is None:
            return super().populate_space(trial_id)
        return {"status": TrialStatus.RUNNING,
                "values": values}

    def _untried_norm_values(self):
        """Defaults of the first norm without a trial yet, or None."""
        space = self.hyperparameters.space
        norm = next((hp for hp in space if hp.name == "norm"), None)
        if norm is None:
            return None
        tried = {t.hyperparameters.values.get("norm") for t in self.trials.values()}
        order = [norm.default] + [v for v in norm.values if v != norm.default]
        for name in order:
            if name in tried:
                continue
            hps = keras_tuner.HyperParameters()
            for hp in space:
                hps.merge([hp])
                if hps.is_active(hp):
                    hps.values[hp.name] = (
                        name if hp is norm else _default_under(hp, name)
                    )
            if not self._duplicate(hps.values):
                return hps.values
        return None


def _default_under(hp, norm):
    """`hp`'s default in a trial of `norm`: the norm's own registry default.

    A norm's option is one hyperparameter shared by the norms that take it,
    with one default; momentum's registry defaults differ by norm (0.9 for
    per-domain, 0.99 for the others), and a norm's first trial is to run as
    `kpair train --norm NAME` would.
    """
    own = layers.options(norm).get(hp.name) if hp.conditions else None
    return own if own in getattr(hp, "values", ()) else hp.default


class _RandomOracle(_KpairOracle, keras_tuner.oracles.RandomSearchOracle):
    pass


class _BayesianOracle(_KpairOracle, keras_tuner.oracles.BayesianOptimizationOracle):
    pass


class _HyperbandOracle(_KpairOracle, keras_tuner.oracles.HyperbandOracle):
    # Hyperband's brackets decide which trials run: no norms-first round.
    def _untried_norm_values(self):
        return None


class _NamedStub:
    """A worker's gRPC stub that sends its tuner id with every call, by which
    the chief tells a trial's worker from one it took the trial from."""

    def __init__(self, stub, tuner_id):
        self._stub = stub
        self._metadata = ((chief.TUNER_ID_KEY, tuner_id),)

    def __getattr__(self, name):
        return functools.partial(getattr(self._stub, name), metadata=self._metadata)


def read_attempts(trial_dir):
    """How many times a process started the trial in `trial_dir`."""
    try:
        return int((Path(trial_dir) / ATTEMPTS_FILE).read_text())
    except (OSError, ValueError):
        return 0


def _write_failure(trial_dir, reason):
    files.write_text(Path(trial_dir) / summary.FAILURE_FILE, reason + "\n")


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
        # count afterwards (see _KpairOracle.create_trial).
        _write_state(trial_dir / ATTEMPTS_FILE, read_attempts(trial_dir) + 1)
        stream = getattr(self.hypermodel, "out", None) or sys.stdout
        print(self._trial_line(trial), file=stream, flush=True)
        try:
            return super().run_trial(trial, *args, **kwargs)
        except keras_tuner.errors.FatalError:
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
            _write_failure(trial_dir, reason)
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
        _write_state(self._get_tuner_fname(), self.get_state())

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
        oracle = _RandomOracle(max_trials=max_trials, **common)
    elif kind == "bayesian":
        oracle = _BayesianOracle(max_trials=max_trials, **common)
    else:
        oracle = _HyperbandOracle(max_epochs=config.epochs, factor=3, **common)
    tuner_class = _HyperbandTuner if kind == "hyperband" else _Tuner
    return tuner_class(
        oracle=oracle,
        hypermodel=hypermodel,
        directory=str(out_dir),
        project_name=search_directory.PROJECT,
        overwrite=False,  # the same out_dir resumes
        distribution_strategy=strategy,
    )
