"""Training runs killed with SIGKILL at random points of the traced path,
and started again with the same command until one finishes."""

import json
import os
import random
import signal
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from kpair.training.callbacks import backup_epochs_done, read_history

from .training_processes import BATCH_MIXED, run_training

# Kills of `make test`: each kind of point once, in a seeded random order at
# random epochs and steps, then one while model.keras is written. More with
# KPAIR_TEST_KILLS=N (the slow mode), another order with KPAIR_TEST_KILL_SEED.
KINDS = ("batch", "eval", "checkpoint", "history", "backup")
KILLS = int(os.environ.get("KPAIR_TEST_KILLS", len(KINDS) + 1))
SEED = int(os.environ.get("KPAIR_TEST_KILL_SEED", 17))


def epochs_in_history(run_dir):
    return [int(row["epoch"]) for row in read_history(run_dir / "history.csv")]


def h5_arrays(path):
    """Every array of a weights file by its name: reading them all finds a
    file cut short anywhere."""
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def same_arrays(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def kill_plan(rng, kills, epochs, steps):
    """`kills` kill points, `point:epoch[:step]`, each reachable after the
    ones before it: a kill in epoch E leaves the backup of epoch E - 1, so
    the next one lands in epoch E or later. The last one is while model.keras
    is written."""
    kinds = list(KINDS)
    rng.shuffle(kinds)
    kinds += [rng.choice(KINDS) for _ in range(kills - 1 - len(kinds))]
    kinds = kinds[:kills - 1]
    at = sorted(rng.randint(1, epochs) for _ in kinds)
    plan = []
    for kind, epoch in zip(kinds, at):
        step = f":{rng.randint(1, steps)}" if kind == "batch" else ""
        plan.append(f"{kind}:{epoch}{step}")
    return plan + ["model:0"]


def after_kill(kill, epochs):
    """(epochs in history.csv, epoch of the last whole checkpoint written)
    right after `kill`: a row and the checkpoint are written before the
    backup, the checkpoint after the row."""
    kind, epoch = kill.split(":")[:2]
    epoch = epochs if kind == "model" else int(epoch)
    rows = epoch - 1 if kind in ("batch", "eval") else epoch
    checkpoint = epoch - 1 if kind in ("batch", "eval", "checkpoint") else epoch
    return list(range(1, rows + 1)), checkpoint


# The default path users run (per-domain norm, per-type batches: three
# data streams whose positions a resume restores, a moving mean and variance
# per domain) and stock batch norm on mixed batches (one stream; its graph
# traces in a third of the per-type per-domain one's time, paid by each
# process: ~50 s a process on a loaded 2-core machine against ~15 s).
PATHS = [("per-domain", "per-type"),
         # Its uninterrupted run is test_deterministic.py's first run.
         pytest.param("batch", "mixed",
                      marks=pytest.mark.xdist_group("batch-mixed-run"))]
# The default path's kills in `make test`: one within an epoch (the three
# streams resume mid-way, the per-domain statistics of the backup restored)
# and one that damages a backup, then model.keras; stock batch norm on
# mixed batches takes every kind of point (the files written are the same
# for every norm). KPAIR_TEST_KILLS=N gives both paths N random kills.
DEFAULT_PATH_PLAN = ["batch:2:1", "backup:3", "model:0"]


@pytest.mark.slow
@pytest.mark.parametrize("norm,batching", PATHS)
def test_killed_at_random_points_ends_as_an_uninterrupted_run(
    demo_data, tiny_config, tmp_path, uninterrupted_runs, norm, batching
):
    """Bit for bit (--deterministic): a resumed run restores the weights and
    optimizer of its backup and skips the batches already trained on, so
    each kill costs the unfinished epoch and nothing else."""
    epochs = max(BATCH_MIXED["epochs"], KILLS // 2)
    steps = BATCH_MIXED["steps_per_epoch"]
    config = tiny_config(demo_data, tmp_path / "run", **{
        **BATCH_MIXED, "norm": norm, "batching": batching, "epochs": epochs})
    whole_run, reference = uninterrupted_runs(config)

    if norm == "batch" or "KPAIR_TEST_KILLS" in os.environ:
        plan = kill_plan(random.Random(SEED), KILLS, epochs, steps)
    else:
        plan = DEFAULT_PATH_PLAN
    run_dir, checkpoint, outputs = Path(config.out), 0, []
    for kill in plan:
        result = run_training(config, kill)
        outputs.append(result.stdout)
        context = (plan, kill, result.stdout[-2000:], result.stderr[-2000:])
        assert result.returncode == -signal.SIGKILL, context
        rows, written = after_kill(kill, epochs)
        assert epochs_in_history(run_dir) == rows, context
        # The backup holds the epoch before the one killed; never more.
        assert backup_epochs_done(run_dir / "backup") <= max(rows[-1:] + [0]), context
        # Never a half-written model.keras: none, until one is whole.
        assert not (run_dir / "model.keras").exists(), context
        # The last good checkpoint is whole, also when the kill cut the one
        # being written, and holds the weights of the epoch it names.
        checkpoint = max(checkpoint, written)
        if checkpoint:
            weights = h5_arrays(run_dir / "checkpoints" / "last.weights.h5")
            expected = h5_arrays(reference / f"epoch_{checkpoint}.weights.h5")
            assert same_arrays(weights, expected), context

    result = run_training(config)
    outputs.append(result.stdout)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.split("METRICS ", 1)[1])
    assert metrics["epochs"] == epochs
    assert epochs_in_history(run_dir) == list(range(1, epochs + 1))
    model = keras.saving.load_model(run_dir / "model.keras")
    uninterrupted = keras.saving.load_model(whole_run / "model.keras")
    assert len(model.weights) > 50
    if norm == "per-domain":  # a moving mean and variance row per domain
        moving = [w for w in model.weights if "moving_mean" in w.path]
        assert moving and all(w.shape[0] == 2 for w in moving), moving[:1]
    for mine, theirs in zip(model.weights, uninterrupted.weights, strict=True):
        assert np.array_equal(mine.numpy(), theirs.numpy()), (plan, mine.path)
    assert not [p for p in run_dir.rglob("*") if "partial" in p.name]

    # What each restart said about what it kept.
    for kill, output in zip(plan, outputs[1:]):
        kind, epoch = kill.split(":")[:2]
        if kind == "backup":
            damaged = "the backup is damaged" if epoch != "1" else "first backup"
            assert damaged in output, (plan, kill, output)
            assert "latest.weights.h5" in output
        if kind == "history":
            assert f"rows of epoch {epoch}, written before" in output, (
                plan, kill, output)
        if kind != "model" and int(epoch) > 1:
            assert f"{int(epoch) - 1} of {epochs} epochs done" in output
    assert f"{epochs} of {epochs} epochs done" in outputs[-1]


def test_kill_plan_reaches_every_kind_of_point():
    plan = kill_plan(random.Random(SEED), len(KINDS) + 1, 4, 2)
    assert sorted(p.split(":")[0] for p in plan[:-1]) == sorted(KINDS)
    assert plan[-1] == "model:0"
    epochs = [int(p.split(":")[1]) for p in plan[:-1]]
    assert epochs == sorted(epochs) and 1 <= epochs[0] and epochs[-1] <= 4
