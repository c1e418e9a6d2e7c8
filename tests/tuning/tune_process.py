"""One worker process of a chief/worker search, for test_distributed.py.

Usage: python tests/tuning/tune_process.py CONFIG_JSON OUT_DIR MAX_TRIALS
Its role comes from the KERASTUNER_* variables. As in conftest.py, trials
run eagerly; each trial this process trains is printed as `TRAINED <id>`.
"""

import json
import sys

from kpair.config import TrainConfig
from tuning import hypermodel, run_search, search


def main(config_json, out_dir, max_trials):
    build, run_trial = hypermodel.PairHyperModel.build, search._KpairTrials.run_trial

    def eager_build(self, hp):
        model = build(self, hp)
        model.run_eagerly = True
        return model

    def printing_run_trial(self, trial, *args, **kwargs):
        print(f"TRAINED {trial.trial_id}", flush=True)
        return run_trial(self, trial, *args, **kwargs)

    hypermodel.PairHyperModel.build = eager_build
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
