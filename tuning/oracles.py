"""keras-tuner's oracles as kpair's searches use them, and the files beside a
trial that they read: how many times a process started it, why it failed.

`tuning.search` builds its tuners on them; `write_state` is the one way a
state file is written (tests replace it to kill a search mid-write).
"""

import functools
import math
import os
from pathlib import Path

import keras_tuner
from keras_tuner.engine.trial import Trial, TrialStatus

from kpair import layers
from kpair.utils import files

from . import summary

ATTEMPTS_FILE = "attempts.txt"
# A trial whose process dies this many times before it ends is failed.
MAX_ATTEMPTS = 2
# keras-tuner's own format for its state files: compact, no final newline.
write_state = functools.partial(files.write_json, indent=None, end="")


class KpairOracle:
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
        write_state(self._get_oracle_fname(), self.get_state())

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
        write_state(os.path.join(trial_dir, "trial.json"), trial.get_state())

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
            write_failure(trial_dir, reason)
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


class RandomOracle(KpairOracle, keras_tuner.oracles.RandomSearchOracle):
    pass


class BayesianOracle(KpairOracle, keras_tuner.oracles.BayesianOptimizationOracle):
    pass


class HyperbandOracle(KpairOracle, keras_tuner.oracles.HyperbandOracle):
    # Hyperband's brackets decide which trials run: no norms-first round.
    def _untried_norm_values(self):
        return None


def read_attempts(trial_dir):
    """How many times a process started the trial in `trial_dir`."""
    try:
        return int((Path(trial_dir) / ATTEMPTS_FILE).read_text())
    except (OSError, ValueError):
        return 0


def write_failure(trial_dir, reason):
    files.write_text(Path(trial_dir) / summary.FAILURE_FILE, reason + "\n")
