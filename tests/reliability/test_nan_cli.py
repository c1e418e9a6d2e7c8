"""`kpair train` whose loss becomes NaN, on the traced path: one line, exit 1,
and the last good checkpoint and the backup kept in the run directory."""

import json
import re

import pytest

from kpair.training.callbacks import backup_epochs_done, read_history


@pytest.mark.slow
def test_nan_through_the_command_names_epoch_step_and_run_directory(
    demo_data, tiny_config, kpair_cli, tmp_path, monkeypatch
):
    # A relative --out, as typed: the message names it as given.
    monkeypatch.chdir(tmp_path)
    config = tiny_config(demo_data, epochs=1, steps_per_epoch=2,
                         precision="float32", norm="batch", batching="mixed")
    (tmp_path / "tiny.json").write_text(json.dumps(config.to_dict()))
    flags = ("train", "--config", "tiny.json", "--out", "runs/nan")
    code, _, err = kpair_cli(*flags)
    assert (code, err) == (0, [])

    # Trained on with an absurd rate: Adam's first step of epoch 2 throws
    # every weight to ~1e30, and the next step's loss is no longer finite.
    code, out, err = kpair_cli(*flags, "--epochs", "3", "--learning-rate", "1e30")
    assert code == 1, (out, err)
    assert len(err) == 1, err
    named = re.fullmatch(
        r"kpair: error: the training loss became (nan|inf|-inf) at epoch 2, "
        r"step 2\. The last good checkpoint and the backup are kept in "
        r"(.+); resume with a lower --learning-rate\.",
        err[0],
    )
    assert named is not None, err
    assert named[2] == "runs/nan"
    run = tmp_path / named[2]
    assert (run / "checkpoints" / "last.weights.h5").is_file()
    assert backup_epochs_done(run / "backup") == 1
    assert [int(r["epoch"]) for r in read_history(run / "history.csv")] == [1]
