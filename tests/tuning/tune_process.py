"""One process of a search, for test_distributed.py and the kill tests.

Usage: python tests/tuning/tune_process.py CONFIG_JSON OUT_DIR MAX_TRIALS
Its role comes from the KERASTUNER_* variables (none: a local search).
Trials run traced, as `kpair tune` runs them; each trial this process trains is printed
as `TRAINED <id>`. With KPAIR_TEST_KILL_TRIAL=<id>, the process kills itself
with SIGKILL when that trial starts training: a real kill, as an
out-of-memory killer would do it.

With KPAIR_TEST_KILL=<point>:<trial>[:<step>] it kills itself at one of
these points (a file "cut" is written to half its size first):

- `start:T`: while oracle.json is written as trial T is created (its
  trial.json is written already);
- `batch:T:S`: after step S of trial T's first epoch;
- `eval:T`: while the inference-mode losses of trial T's first epoch are
  computed;
- `checkpoint:T`: while trial T's checkpoint.weights.h5 is written (cut);
- `results:T`: once trial T's results are in its trial.json, while the
  trial.json that ends it is written (cut);
- `end:T`: while oracle.json is written as trial T ends (its trial.json
  says COMPLETED already);
- `best:0`: while best/model.keras is written (cut).
"""

import json
import os
import signal
import sys
from pathlib import Path

import keras

from kpair.config import TrainConfig
from kpair.training import callbacks as kcb
from kpair.tuning import hypermodel, oracles, run_search, search
from kpair.utils import files

point, at, step = (os.environ.get("KPAIR_TEST_KILL", "none:-") + ":1").split(":")[:3]
step = int(step)


def die(path=None, text=None):
    """SIGKILL, after cutting `path` to half its size (or writing half of
    `text` to it)."""
    if text is not None:
        Path(path).write_text(text[: len(text) // 2])
    elif path is not None and Path(path).exists():
        with open(path, "r+b") as f:
            f.truncate(Path(path).stat().st_size // 2)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Watch(keras.callbacks.Callback):
    def __init__(self, trial_id):
        super().__init__()
        self.trial_id = trial_id

    def on_train_batch_end(self, batch, logs=None):
        if (point, at, step) == ("batch", self.trial_id, batch + 1):
            die()


def install_kill_points(running):
    """Wraps the writes and steps that KPAIR_TEST_KILL names."""
    write_state = oracles.write_state
    create_trial = oracles.KpairOracle.create_trial
    end_trial = keras_tuner_oracle().end_trial
    evaluate = kcb.evaluate_pairs
    save_weights, save = keras.Model.save_weights, keras.Model.save

    def killing_write_state(path, data):
        name = Path(path).name
        phase, trial_id = running.get("phase"), running.get("phase_trial")
        if name == "trial.json" and phase == "create":
            running["phase_trial"] = trial_id = Path(path).parent.name[6:]
        if (point, at) == ("start", trial_id) and phase == "create" and (
                name == "oracle.json"):
            die(files.partial_path(path), json.dumps(data))
        if (point, at) == ("results", trial_id) and phase == "end" and (
                name == "trial.json"):
            die(files.partial_path(path), json.dumps(data))
        if (point, at) == ("end", trial_id) and phase == "end" and (
                name == "oracle.json"):
            die(files.partial_path(path), json.dumps(data))
        return write_state(path, data)

    def phased(method, phase):
        def run(self, *args, **kwargs):
            trial = args[0] if phase == "end" else None
            before = running.get("phase"), running.get("phase_trial")
            running["phase"] = phase
            running["phase_trial"] = trial.trial_id if trial is not None else None
            try:
                return method(self, *args, **kwargs)
            finally:  # end_trial runs within create_trial for a failed trial
                running["phase"], running["phase_trial"] = before
        return run

    def killing_evaluate(*args, **kwargs):
        if (point, at) == ("eval", running.get("trial")):
            die()
        return evaluate(*args, **kwargs)

    def killing_save_weights(self, filepath, *args, **kwargs):
        save_weights(self, filepath, *args, **kwargs)
        if (point, at) == ("checkpoint", running.get("trial")) and str(
                filepath).endswith("checkpoint.weights.h5"):
            die(filepath)

    def killing_save(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        if point == "best":
            die(filepath)

    oracles.write_state = killing_write_state
    oracles.KpairOracle.create_trial = phased(create_trial, "create")
    keras_tuner_oracle().end_trial = phased(end_trial, "end")
    kcb.evaluate_pairs = killing_evaluate
    keras.Model.save_weights = killing_save_weights
    keras.Model.save = killing_save


def keras_tuner_oracle():
    import keras_tuner

    return keras_tuner.Oracle


def main(config_json, out_dir, max_trials):
    run_trial = search._KpairTrials.run_trial
    fit = hypermodel.PairHyperModel.fit
    kill_trial = os.environ.get("KPAIR_TEST_KILL_TRIAL")
    running = {}

    def printing_run_trial(self, trial, *args, **kwargs):
        print(f"TRAINED {trial.trial_id}", flush=True)
        running["trial"] = trial.trial_id
        return run_trial(self, trial, *args, **kwargs)

    def killing_fit(self, hp, model, *args, **kwargs):
        if running.get("trial") == kill_trial:
            os.kill(os.getpid(), signal.SIGKILL)
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), Watch(running["trial"])]
        return fit(self, hp, model, *args, **kwargs)

    install_kill_points(running)
    hypermodel.PairHyperModel.fit = killing_fit
    search._KpairTrials.run_trial = printing_run_trial
    config = TrainConfig.from_dict(json.loads(config_json))
    result = run_search(
        config, norms=["batch", "group"], batchings=["mixed"],
        max_trials=int(max_trials), out_dir=out_dir,
    )
    print("RESULT", json.dumps({"role": result["role"], "statuses": {
        row["trial"]: row["status"] for row in result["trials"]}}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
