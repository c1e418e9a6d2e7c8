"""One process of a search, for test_distributed.py and the kill tests.

Usage: python tests/tuning/tune_process.py CONFIG_JSON OUT_DIR MAX_TRIALS
Its role comes from the KERASTUNER_* variables (none: a local search).
Trials run traced, as `kpair tune` runs them; each trial this process trains is printed
as `TRAINED <id>`. With KPAIR_TEST_KILL_TRIAL=<id>, the process kills itself
with SIGKILL when that trial starts training: a real kill, as an
out-of-memory killer would do it.
"""

import json
import os
import signal
import sys

from kpair.config import TrainConfig
from kpair.tuning import hypermodel, run_search, search


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
        return fit(self, hp, model, *args, **kwargs)

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
