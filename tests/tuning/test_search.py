"""run_search: outputs, resuming, failed trials, refused directories.

Trials run eagerly here (see conftest); test_cli.py runs graph-mode ones.
"""

import csv
import json
import subprocess
import sys

import keras_tuner
import pytest

from kpair.config import ConfigError, TrainConfig
from kpair.training.callbacks import TrainingDiverged
from kpair.tuning import PairHyperModel, run_search, search_directory
from kpair.tuning.search import TUNERS
from kpair.utils import files


def statuses(result):
    return {row["trial"]: row["status"] for row in result["trials"]}


@pytest.mark.slow
def test_killed_search_resumes_with_the_remaining_trials(base_config, tmp_path, trials):
    out_dir = tmp_path / "tune"
    kwargs = dict(norms=["batch", "group"], max_trials=3, out_dir=out_dir)
    # Killed while its third trial starts: two trials finished.
    trials.fail_on = {3: KeyboardInterrupt()}
    with pytest.raises(KeyboardInterrupt):
        run_search(base_config, **kwargs)
    assert len(trials.run) == 2
    in_flight = trials.started[-1]

    # Started again: only the trial in flight runs, from its start.
    trials.run.clear()
    result = run_search(base_config, **kwargs)
    assert trials.run == [in_flight]
    assert statuses(result) == {"0": "completed", "1": "completed", "2": "completed"}

    # Started again once more: nothing left to run, the outputs are rewritten.
    trials.run.clear()
    result = run_search(base_config, **kwargs)
    assert trials.run == []
    assert len(result["trials"]) == 3

    for name in ("summary.csv", "summary.md", "val_loss_by_norm.png",
                 "best/model.keras", "best/config.json", "search.json"):
        assert (out_dir / name).is_file(), name
    left = [p for p in out_dir.rglob("*") if files.is_partial(p)]
    assert not left, f"a state file left half-written: {left}"

    best = result["best"]
    assert best == result["trials"][0]
    assert best["val_loss"] == min(r["val_loss"] for r in result["trials"])
    with open(out_dir / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == [r["trial"] for r in result["trials"]]
    assert {"norm", "learning_rate", "val_loss", "gap_ratio", "seconds",
            "status"} <= set(rows[0])
    # gap = inference-mode over training-mode loss on the same training pairs.
    for row in rows:
        assert float(row["gap_ratio"]) == pytest.approx(
            float(row["train_loss_inference_mode"])
            / float(row["train_loss_training_mode"]), rel=1e-6
        )
    markdown = (out_dir / "summary.md").read_text()
    assert markdown.startswith("| trial | status | norm |")
    table, note = markdown.split("\n\n")
    assert table.count("\n") == 2 + 2  # heading, rule, three trials
    assert note == "Keras backend: tensorflow. Devices per trial: 1 (the " \
        "`devices` column: as each trial saw them).\n"

    # The best model's config.json is a kpair run config of the best trial.
    config = TrainConfig.load(out_dir / "best" / "config.json")
    assert config.norm == best["norm"]
    assert config.learning_rate == best["hyperparameters"]["learning_rate"]
    assert config.out == str(out_dir / "best")
    assert config.width_multiplier == 0.125


@pytest.mark.slow
def test_graph_mode_trial_and_best_model_in_a_fresh_process(base_config, tmp_path):
    # The one trial of these tests that runs as `kpair tune` runs it: traced.
    result = run_search(
        base_config, norms=["per-domain"], max_trials=1, out_dir=tmp_path
    )
    assert statuses(result) == {"0": "completed"}
    script = (
        "import keras, kpair, sys\n"
        "m = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
        "print(type(m).__name__, m.dtype_policy.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "best" / "model.keras")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["PairModel", "float32"]


def test_failed_trial_is_recorded_and_the_search_goes_on(
    base_config, tmp_path, trials, capsys
):
    trials.fail_on = {1: TrainingDiverged(1, 1, float("nan"))}
    result = run_search(base_config, norms=["batch"], max_trials=2, out_dir=tmp_path)
    assert statuses(result) == {"0": "failed", "1": "completed"}
    failed = result["trials"][-1]
    assert failed["reason"] == (
        "TrainingDiverged: the training loss became nan at epoch 1, step 1"
    )
    assert result["best"]["trial"] == "1"
    assert (tmp_path / "best" / "model.keras").is_file()
    assert "TrainingDiverged: the training loss became nan" in (
        tmp_path / "summary.md"
    ).read_text()
    assert "Trial 0 failed: TrainingDiverged" in capsys.readouterr().out


def test_failures_never_stop_a_search(base_config, tmp_path, trials):
    # keras-tuner's default stops after 3 consecutive failures; kpair goes on.
    trials.fail_on = {i: MemoryError("out of memory") for i in range(1, 5)}
    result = run_search(base_config, norms=["batch"], max_trials=4, out_dir=tmp_path)
    assert list(statuses(result).values()) == ["failed"] * 4
    assert {row["reason"] for row in result["trials"]} == {"MemoryError: out of memory"}
    assert result["best"] is None
    assert not (tmp_path / "best").exists()
    assert (tmp_path / "summary.csv").is_file()


def no_training(self, hp, model, *args, **kwargs):
    """A `fit` that trains nothing and reports a loss made of the hyperparameters."""
    return {"val_loss": hp.values["learning_rate"] + len(hp.values["norm"])}


@pytest.mark.parametrize("kind", [k for k in TUNERS if k != "random"])
def test_other_tuners_run_the_space(base_config, tmp_path, monkeypatch, kind):
    monkeypatch.setattr(PairHyperModel, "fit", no_training)
    result = run_search(
        base_config, norms=["batch", "group", "eval-mode"], tuner=kind,
        max_trials=None if kind == "hyperband" else 3, out_dir=tmp_path,
    )
    rows = result["trials"]
    assert rows and all(row["status"] == "completed" for row in rows)
    assert rows[0]["val_loss"] == min(row["val_loss"] for row in rows)
    if kind == "hyperband":
        assert all(row["hyperparameters"]["epochs"] == 1 for row in rows)


def test_resume_with_other_settings_is_refused(base_config, tmp_path, monkeypatch):
    monkeypatch.setattr(PairHyperModel, "fit", no_training)
    run_search(base_config, norms=["batch"], max_trials=1, out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"differs in \['norms'\]"):
        run_search(base_config, norms=["group"], max_trials=1, out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"differs in \['precision'\]"):
        run_search(
            base_config.replace(precision="mixed_bfloat16"), norms=["batch"],
            max_trials=1, out_dir=tmp_path,
        )
    # More trials is a continuation, not another search.
    result = run_search(base_config, norms=["batch"], max_trials=2, out_dir=tmp_path)
    assert len(result["trials"]) == 2


def test_a_search_resumes_on_its_own_backend_only(base_config, tmp_path,
                                                  monkeypatch):
    monkeypatch.setattr(PairHyperModel, "fit", no_training)
    run_search(base_config, norms=["batch"], max_trials=1, out_dir=tmp_path)
    settings_path = tmp_path / "search.json"
    settings = json.loads(settings_path.read_text())
    assert settings["backend"] == "tensorflow"
    # Recorded on another backend: its trials and these would share a table.
    settings_path.write_text(json.dumps({**settings, "backend": "jax"}))
    with pytest.raises(ConfigError, match=r"differs in \['backend'\]"):
        run_search(base_config, norms=["batch"], max_trials=2, out_dir=tmp_path)
    # Written before searches recorded their backend: it resumes.
    del settings["backend"]
    settings_path.write_text(json.dumps(settings))
    result = run_search(base_config, norms=["batch"], max_trials=2, out_dir=tmp_path)
    assert len(result["trials"]) == 2
    # On more devices, the same global batches: it resumes (the table says
    # how many devices each trial had).
    settings["base_config"]["devices"] = "all"
    search_directory._claim(tmp_path, {**settings, "backend": "tensorflow"})


def test_half_written_state_is_refused_in_one_line(base_config, tmp_path, monkeypatch):
    # keras-tuner #987: a kill while it writes trial.json leaves half a file.
    monkeypatch.setattr(PairHyperModel, "fit", no_training)
    run_search(base_config, norms=["batch"], max_trials=1, out_dir=tmp_path)
    trial_json = tmp_path / "search" / "trial_0" / "trial.json"
    trial_json.write_text(trial_json.read_text()[:40])
    with pytest.raises(ConfigError, match="trial_0/trial.json is unreadable"):
        run_search(base_config, norms=["batch"], max_trials=2, out_dir=tmp_path)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"tuner": "grid"}, "Received: tuner='grid'"),
        ({"max_trials": 0}, "Received: max_trials=0"),
        ({"tuner": "hyperband", "max_trials": 4}, "pass max_trials=None"),
        ({"norms": ["instance"]}, "Received: norms=['instance']"),
    ],
)
def test_bad_arguments_are_refused(base_config, tmp_path, kwargs, needle):
    with pytest.raises(ConfigError) as info:
        run_search(base_config, **{"out_dir": tmp_path, **kwargs})
    assert needle in str(info.value)


def test_search_directory_is_keras_tuner_state(base_config, tmp_path, monkeypatch):
    # The project is plain keras-tuner: a user's own tuner can read it.
    monkeypatch.setattr(PairHyperModel, "fit", no_training)
    run_search(base_config, norms=["batch"], max_trials=1, out_dir=tmp_path)
    state = json.loads((tmp_path / "search" / "trial_0" / "trial.json").read_text())
    assert state["status"] == "COMPLETED"
    assert state["metrics"]["metrics"]["val_loss"]


def test_users_own_tuner_around_the_hypermodel(base_config, tmp_path, trials):
    hypermodel = PairHyperModel(base_config, norms=["group"], batchings=["mixed"])
    tuner = keras_tuner.RandomSearch(
        hypermodel, objective=keras_tuner.Objective("val_loss", "min"),
        max_trials=1, directory=str(tmp_path), project_name="mine",
    )
    tuner.search()
    (trial,) = tuner.oracle.get_best_trials()
    assert trial.status == "COMPLETED" and len(trials.run) == 1
    # The objective is the inference-mode loss; the gap is kept beside it.
    for name in ("val_loss", "gap_ratio", "train_loss_training_mode",
                 "train_loss_inference_mode", "running_loss", "seconds"):
        assert trial.metrics.exists(name), name
    assert trial.score == trial.metrics.get_best_value("val_loss")
    (model,) = tuner.get_best_models(1)  # keras-tuner's own reload path
    assert model.get_layer("backbone").norm == "group"
    config = hypermodel.config_for(tuner.get_best_hyperparameters()[0])
    assert config.norm == "group" and config.norm_options == {
        "groups": trial.hyperparameters.values["groups"]
    }


@pytest.mark.parametrize("kind", ["random", "bayesian"])
def test_every_norm_gets_a_trial_at_its_defaults_first(
    base_config, tmp_path, monkeypatch, kind
):
    monkeypatch.setattr(PairHyperModel, "fit", no_training)
    norms = ["group", "batch", "eval-mode", "per-domain"]
    result = run_search(base_config.replace(norm="group"), norms=norms,
                        tuner=kind, max_trials=5, out_dir=tmp_path)
    by_id = sorted(result["trials"], key=lambda row: int(row["trial"]))
    # The first trials sweep the norms, at every default; then sampling.
    assert [row["norm"] for row in by_id[:4]] == norms
    for row in by_id[:4]:
        values = row["hyperparameters"]
        assert values["learning_rate"] == base_config.learning_rate
        assert values["batching"] == base_config.batching
    assert by_id[0]["hyperparameters"]["groups"] == 32
    assert by_id[2]["hyperparameters"]["warmup_steps"] == 0
    # Each norm's own momentum, though the norms share one hyperparameter.
    assert [by_id[i]["hyperparameters"]["momentum"] for i in (1, 2, 3)] == [
        0.99, 0.99, 0.9
    ]
    assert len(by_id) == 5
