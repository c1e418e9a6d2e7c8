"""`kpair tune` as a user runs it, through kpair's own entry point.

`tune` is an ordinary subcommand: the config flags of `train`, plus the
search's own (`--norms`, `--batchings`, `--tuner`, `--max-trials`, ...).
"""

import json

import pytest

from kpair.cli import main
from kpair.config import TrainConfig

TINY_FLAGS = [
    "--width-multiplier", "0.125", "--image-size", "16", "--batch-size", "12",
    "--steps-per-epoch", "1", "--embedding-dim", "16", "--eval-pairs", "24",
    "--epochs", "1",
]


@pytest.mark.slow
def test_tune_over_the_demo_data(demo_data, tmp_path, trials, capsys):
    out_dir = tmp_path / "tune"
    code = main([
        # Two norms, a trial each: every norm's trial is run_search's
        # (tests/tuning/test_search.py); here, the command around it.
        "tune", "--data", str(demo_data), "--norms", "batch,per-domain",
        "--batching", "mixed", "--max-trials", "2", "--out", str(out_dir),
        *TINY_FLAGS,
        # float32, not `auto`: evaluate's float32 copy must match the trials'
        # validation loss to 1e-4, which bfloat16 trials would not.
        "--precision", "float32",
    ])
    printed = capsys.readouterr().out
    assert code == 0
    assert len(trials.run) == 2
    assert "trial  status     norm" in printed
    assert "Best: trial" in printed and "(inference mode)" in printed
    for name in ("summary.csv", "summary.md", "val_loss_by_norm.png",
                 "best/model.keras", "best/config.json"):
        assert (out_dir / name).is_file(), name
    config = TrainConfig.load(out_dir / "best" / "config.json")
    assert config.data == str(demo_data) and config.batching == "mixed"

    # `kpair evaluate` takes the best model's directory as a run.
    assert main(["evaluate", str(out_dir / "best"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    best_val_loss = json.loads((out_dir / "best" / "metrics.json").read_text())
    assert result["total"] == pytest.approx(best_val_loss["val_loss"], rel=1e-4)


def test_flags_reach_the_search(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(
        "kpair.tuning.search.run_search", lambda config, **kwargs: seen.update(
            config=config, **kwargs)
    )
    code = main([
        "tune", "--norms", "batch, per-domain", "--precision", "mixed_float16",
        "--tuner", "bayesian", "--out", str(tmp_path), *TINY_FLAGS,
    ])
    assert code == 0
    assert seen["norms"] == ["batch", "per-domain"]
    assert seen["tuner"] == "bayesian" and seen["max_trials"] == 10
    assert seen["batchings"] is None  # all searched
    assert seen["config"].precision == "mixed_float16"
    assert seen["config"].width_multiplier == 0.125
    assert seen["config"].data is None  # the demo data set


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--norms", "batch,instance"], "Received: norms=['batch', 'instance']"),
        (["--tuner", "hyperband", "--max-trials", "3"], "--max-trials does not apply"),
        (["--max-trials", "0"], "Received: max_trials=0"),
        (["--batchings", "shuffled"], "Received: batchings=['shuffled']"),
        (["--batching", "shuffled"], "Received: batching='shuffled'"),
    ],
)
def test_bad_flags_end_in_one_line(tmp_path, capsys, flags, needle):
    code = main(["tune", "--out", str(tmp_path), *TINY_FLAGS, *flags])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err


def test_flags_right_after_tune(tmp_path, capsys):
    code = main(["tune", "--max-trials", "0", "--out", str(tmp_path)])
    assert code == 2
    assert "Received: max_trials=0" in capsys.readouterr().err


def test_one_norm_and_batching_fix_the_search(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(
        "kpair.tuning.search.run_search", lambda config, **kwargs: seen.update(kwargs)
    )
    main(["tune", "--norm", "group", "--batching", "mixed", "--out", str(tmp_path),
          *TINY_FLAGS])
    assert seen["norms"] == ["group"] and seen["batchings"] == ["mixed"]


def test_print_config_is_the_base_of_every_trial(tmp_path, capsys):
    code = main(["tune", "--print-config", "--out", str(tmp_path / "t"),
                 "--learning-rate", "0.01", *TINY_FLAGS])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and not (tmp_path / "t").exists()
    assert printed["out"] == str(tmp_path / "t")
    assert printed["learning_rate"] == 0.01 and printed["precision"] == "auto"
