"""A search whose process is killed with SIGKILL, for real, and restarted."""

import collections
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from kpair.tuning.oracles import ATTEMPTS_FILE

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "tests" / "tuning" / "tune_process.py"
# The kill points of tune_process.py, in the order a trial reaches them;
# `best` comes once every trial has ended.
POINTS = ("start", "batch", "eval", "checkpoint", "results", "end", "best")
# Points within a trial's training: a trial killed there runs again from its
# start, and may be killed so only once (oracles.MAX_ATTEMPTS - 1) to finish.
TRAINING = ("batch", "eval", "checkpoint")
# Once a trial's results are recorded it is never run again, so it can reach
# only one of these points.
RECORDED = ("results", "end")
# Kills of `make test`: one at each point, in a seeded random order over 3
# trials (`search_kill_plan` takes every point once before any twice), so
# that `make test` reaches every point. Another order with
# KPAIR_TEST_KILL_SEED; more kills with KPAIR_TEST_KILLS=N (points again, at
# random).
KILLS = int(os.environ.get("KPAIR_TEST_KILLS", len(POINTS)))
SEED = int(os.environ.get("KPAIR_TEST_KILL_SEED", 17))


def run_search_process(config, out_dir, max_trials, kill_trial=None, kill=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    env.pop("KPAIR_TEST_KILL_TRIAL", None)
    env.pop("KPAIR_TEST_KILL", None)
    if kill_trial is not None:
        env["KPAIR_TEST_KILL_TRIAL"] = kill_trial
    if kill is not None:
        env["KPAIR_TEST_KILL"] = kill
    result = subprocess.run(
        [sys.executable, str(HELPER), json.dumps(config.to_dict()), str(out_dir),
         str(max_trials)],
        env=env, capture_output=True, text=True, timeout=400,
    )
    trained = [line.split()[1] for line in result.stdout.splitlines()
               if line.startswith("TRAINED ")]
    return result, trained


@pytest.mark.slow
def test_killed_search_restarts_the_trial_in_flight_then_gives_up_on_it(
    base_config, tmp_path
):
    out_dir = tmp_path / "tune"

    # Killed while its second trial trains: one trial finished.
    result, trained = run_search_process(base_config, out_dir, 3, kill_trial="1")
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert trained == ["0", "1"]

    # Started again: only the trial in flight runs, from its start; the
    # process is killed again.
    result, trained = run_search_process(base_config, out_dir, 3, kill_trial="1")
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert trained == ["1"]
    trial_dir = out_dir / "search" / "trial_1"
    assert (trial_dir / ATTEMPTS_FILE).read_text() == "2"

    # Started a third time: the trial that killed its process twice is
    # failed without running, and the search goes on with the last trial.
    result, trained = run_search_process(base_config, out_dir, 3)
    assert result.returncode == 0, result.stderr[-2000:]
    assert trained == ["2"]
    assert "Trial 1 failed: ProcessDied: the trial's process died 2 times" in (
        result.stdout
    )
    final = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert final["statuses"] == {"0": "completed", "2": "completed", "1": "failed"}
    assert "ProcessDied" in (out_dir / "summary.md").read_text()
    assert (out_dir / "best" / "model.keras").is_file()
    state = json.loads((trial_dir / "trial.json").read_text())
    assert state["status"] == "FAILED"


@pytest.mark.slow
def test_chief_and_worker_killed_and_restarted_resume_the_search(
    base_config, tmp_path
):
    import time

    from tests.tuning.processes import Worker, loopback_env

    config = json.dumps(base_config.to_dict())
    out_dir = tmp_path / "tune"
    env = loopback_env()
    chief = Worker("chief", config, out_dir, 3, env)
    worker = Worker("tuner0", config, out_dir, 3, env)
    try:
        deadline = time.monotonic() + 400
        while "1" not in worker.trained() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.trained() == ["0", "1"], worker.lines[-20:]
    finally:
        for process in (chief, worker):  # everything dies, the chief first
            process.kill()

    chief = Worker("chief", config, out_dir, 3, env)
    worker = Worker("tuner0", config, out_dir, 3, env)
    try:
        output = worker.finish()
        chief_output = chief.finish()
    finally:
        chief.kill()
        worker.kill()
    assert worker.process.returncode == 0, output[-3000:]
    assert chief.process.returncode == 0, chief_output[-3000:]
    # Trial 0 is kept; trial 1, in flight at the kill, runs again; then 2.
    assert worker.trained() == ["1", "2"]
    result = json.loads(chief_output.split("RESULT ", 1)[1])
    assert result["statuses"] == {"0": "completed", "1": "completed",
                                  "2": "completed"}


def search_kill_plan(rng, kills, steps):
    """`(trials, plan)`: the trials of the search and `kills` kill points,
    `point:trial[:step]`, in the order the search reaches them. Each trial
    is killed in its training at most once and at `results` or `end` at
    most once; a search has at least 2 trials."""
    points = list(POINTS)
    rng.shuffle(points)
    points += [rng.choice(POINTS) for _ in range(kills - len(points))]
    points = points[:kills]
    groups = (TRAINING, RECORDED)
    trials = max(2, *(sum(p in group for p in points) for group in groups))
    pools = {group: rng.sample(range(trials), trials) for group in groups}
    plan = []
    for point in points:
        group = next((g for g in pools if point in g), None)
        trial = pools[group].pop() if group else rng.randrange(trials)
        if point == "best":
            trial, name = trials, "best:0"
        else:
            name = f"{point}:{trial}"
            if point == "batch":
                name += f":{rng.randint(1, steps)}"
        plan.append((trial, POINTS.index(point), name))
    return trials, [name for *_, name in sorted(plan)]


def test_search_kill_plan_is_reachable():
    for kills in (3, 7, 12):
        trials, plan = search_kill_plan(random.Random(SEED), kills, 2)
        assert len(plan) == kills
        at = [(int(p.split(":")[1]), POINTS.index(p.split(":")[0])) for p in plan]
        at = [(trials if p.startswith("best") else t, i) for (t, i), p in zip(at, plan)]
        assert at == sorted(at)
        for group in (TRAINING, RECORDED):
            killed = [p.split(":")[1] for p in plan if p.split(":")[0] in group]
            assert len(killed) == len(set(killed)) <= trials
    # What `make test` runs (KILLS unset) reaches every point, whatever the
    # seed.
    for seed in (SEED, 0, 1, 2):
        plan = search_kill_plan(random.Random(seed), len(POINTS), 2)[1]
        assert sorted(p.split(":")[0] for p in plan) == sorted(POINTS), plan


def metric_observations(trial_json):
    """Every reported value of a trial: `{metric: [(step, [values])]}`."""
    metrics = json.loads(trial_json.read_text())["metrics"]["metrics"]
    return {name: [(obs["step"], obs["value"]) for obs in metric["observations"]]
            for name, metric in metrics.items()}


@pytest.mark.slow
def test_search_killed_at_random_points_finishes_each_trial_once(
    base_config, tmp_path
):
    """A traced search killed at random points, then run to its end: every
    trial ends completed with the results of one run, a trial killed in its
    training runs again, one killed after its results were recorded does not."""
    steps = 2
    config = base_config.replace(steps_per_epoch=steps)
    trials, plan = search_kill_plan(random.Random(SEED), KILLS, steps)
    out_dir = tmp_path / "tune"
    trained = []
    for kill in plan:
        result, run = run_search_process(config, out_dir, trials, kill=kill)
        trained += run
        context = (plan, kill, result.stdout[-2000:], result.stderr[-2000:])
        assert result.returncode == -signal.SIGKILL, context

    result, run = run_search_process(config, out_dir, trials)
    trained += run
    assert result.returncode == 0, (plan, result.stderr[-3000:])
    ids = [str(t) for t in range(trials)]
    statuses = json.loads(result.stdout.split("RESULT ", 1)[1])["statuses"]
    assert statuses == {t: "completed" for t in ids}, (plan, result.stdout[-3000:])
    # Trained once, and once more after each kill in its training.
    again = [p.split(":")[1] for p in plan if p.split(":")[0] in TRAINING]
    assert collections.Counter(trained) == collections.Counter(ids + again), plan

    project = out_dir / "search"
    oracle = json.loads((project / "oracle.json").read_text())
    assert sorted(oracle["start_order"]) == ids, (plan, oracle["start_order"])
    assert sorted(oracle["end_order"]) == ids, (plan, oracle["end_order"])
    assert oracle["ongoing_trials"] == {} and oracle["retry_queue"] == []
    for trial_id in ids:
        trial_json = project / f"trial_{trial_id}" / "trial.json"
        assert json.loads(trial_json.read_text())["status"] == "COMPLETED"
        observations = metric_observations(trial_json)
        assert "val_loss" in observations
        # One value of each metric: the results of one run, not two averaged.
        for name, values in observations.items():
            assert len(values) == 1 and len(values[0][1]) == 1, (
                plan, trial_id, name, values)

    rows = (out_dir / "summary.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == ids
    best = json.loads((out_dir / "best" / "metrics.json").read_text())
    assert best["trial"] == rows[0].split(",")[0]
    model = keras.saving.load_model(out_dir / "best" / "model.keras")
    assert len(model.weights) > 20
    assert not [p for p in out_dir.rglob("*") if "partial" in p.name], plan
