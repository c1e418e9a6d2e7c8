"""kpair.training.trainer.train end to end with a tiny backbone: run directory,
resume, NaN."""

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest

from kpair import layers
from kpair.data import BATCHINGS, make_batches, read_split
from kpair.models.model_builder import build_pair_model, training_model
from kpair.training import callbacks as kcb
from kpair.training.callbacks import TrainingDiverged, read_history
from kpair.training.trainer import train

from .kills import KillAtEpochStart


@pytest.mark.slow
def test_run_directory_has_everything(demo_data, tiny_config, tmp_path, capsys):
    # Stock batch norm: the directory does not depend on the norm, and its
    # per-type graphs trace in a third of per-domain's time.
    metrics = train(tiny_config(demo_data, tmp_path / "run", epochs=2, norm="batch"))
    run = tmp_path / "run"
    for name in ("model.keras", "config.json", "history.csv", "metrics.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.weights.h5").is_file()
    assert any((run / "logs").rglob("*tfevents*"))
    # The backup stays: more epochs later continue from it.
    assert kcb.backup_epochs_done(run / "backup") == 2
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("train_loss_training_mode", "train_loss_inference_mode",
                "val_loss", "gap_ratio", "running_loss", "val_loss_aa",
                "val_loss_bb", "val_loss_ab", "train_loss_training_mode_ab"):
        assert math.isfinite(saved[key]), key
    assert saved["gap_ratio"] == pytest.approx(
        saved["train_loss_inference_mode"] / saved["train_loss_training_mode"]
    )
    # Keras's running loss keeps its own name; "loss" is gone from the files.
    row = read_history(run / "history.csv")[-1]
    assert "loss" not in row and float(row["running_loss"]) == saved["running_loss"]
    assert metrics["epochs"] == 2
    assert [int(r["epoch"]) for r in read_history(run / "history.csv")] == [1, 2]
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and "(inference mode)" in printed
    # The deployment check ran on the model written.
    assert saved["check"] == "ok"
    assert "kpair check: the model passes" in printed

    # The same command again: nothing to do, the same metrics.
    assert train(tiny_config(demo_data, run, epochs=2, norm="batch")) == saved
    assert "finished run of this configuration" in capsys.readouterr().out


@pytest.mark.parametrize("norm", layers.names())
@pytest.mark.parametrize("batching", BATCHINGS)
def test_each_norm_trains_a_step_in_each_batching(norm, batching, demo_data,
                                                   tiny_config):
    """One eager training step of the model `kpair train` builds."""
    config = tiny_config(demo_data, norm=norm, batching=batching)
    model = training_model(build_pair_model(config), config)
    model.run_eagerly = True  # Tracing 15 models would cost minutes.
    batches = make_batches(
        read_split(demo_data / "train", 16), batching, config.batch_size
    )
    features, y = next(iter(batches))
    before = [w.numpy().copy() for w in model.trainable_weights]
    logs = model.train_on_batch(features, y, return_dict=True)
    assert math.isfinite(logs["loss"])
    changed = [
        not np.array_equal(b, w.numpy())
        for b, w in zip(before, model.trainable_weights)
    ]
    assert all(changed)


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_epoch(demo_data, tiny_config, tmp_path,
                                                capsys):
    out = tmp_path / "run"
    # Stock batch norm on mixed batches: the cheapest graph to trace; resume
    # and the NaN stop do not depend on the norm.
    config = tiny_config(demo_data, out, epochs=3, norm="batch", batching="mixed")

    with pytest.raises(KeyboardInterrupt):
        train(config, extra_callbacks=[KillAtEpochStart(3)])
    assert (out / "backup").exists()
    assert [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1, 2]
    capsys.readouterr()
    metrics = train(config)
    assert "Resuming" in capsys.readouterr().out
    assert metrics["epochs"] == 3
    assert [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1, 2, 3]


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(
    demo_data, tiny_config, tmp_path
):
    out = tmp_path / "run"
    config = tiny_config(demo_data, out, epochs=3, norm="batch", batching="mixed")

    class Poison(keras.callbacks.Callback):
        """After one good epoch, the head's weights become NaN."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                head = self.model.get_layer("head")
                head.kernel.assign(np.full(head.kernel.shape, np.nan))

    with pytest.raises(TrainingDiverged) as error:
        train(config, extra_callbacks=[Poison()])
    assert (error.value.epoch, error.value.step) == (2, 1)
    assert "epoch 2, step 1" in str(error.value)
    # The last good checkpoint and the backup of epoch 1 survive.
    assert (out / "checkpoints" / "last.weights.h5").is_file()
    assert kcb.backup_epochs_done(out / "backup") == 1
    assert [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1]

    # Resumed with a lower learning rate, as the error message advises: it
    # goes on from epoch 2 at the new rate (not the restored optimizer's).
    class Rate(keras.callbacks.Callback):
        seen = []

        def on_epoch_begin(self, epoch, logs=None):
            self.seen.append(float(self.model.optimizer.learning_rate.numpy()))

    metrics = train(config.replace(learning_rate=1e-4), extra_callbacks=[Rate()])
    assert metrics["epochs"] == 3
    assert Rate.seen == pytest.approx([1e-4, 1e-4])  # epochs 2 and 3 only
    assert [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1, 2, 3]


@pytest.mark.slow
def test_mixed_float16_trains_with_loss_scaling_and_saves_float32(
    demo_data, tiny_config, tmp_path
):
    from kpair.models.model_builder import build_pair_model, training_model

    config = tiny_config(demo_data, tmp_path / "run", precision="mixed_float16",
                         epochs=1, batching="mixed")
    pair_model = build_pair_model(config)
    model = training_model(pair_model, config)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # The precision is in the layers, not in a global policy that leaks.
    assert keras.config.dtype_policy().name == "float32"
    assert pair_model.backbone.get_layer("stem_conv").compute_dtype == "float16"
    train(config)
    # The file itself says float32: even a process whose global policy is
    # mixed_float16 loads a float32 model.
    keras.config.set_dtype_policy("mixed_float16")
    loaded = keras.saving.load_model(tmp_path / "run" / "model.keras")
    keras.config.set_dtype_policy("float32")
    policies = {
        layer.dtype_policy.name
        for layer in _all_layers(loaded)
        if not isinstance(layer, keras.layers.InputLayer)  # computes nothing
    }
    assert policies == {"float32"}, policies
    config_bf16 = tiny_config(demo_data, tmp_path / "bf16",
                              precision="mixed_bfloat16", epochs=1, norm="batch",
                              batching="mixed")
    assert math.isfinite(train(config_bf16)["val_loss"])


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


@pytest.mark.slow
def test_same_seed_same_data_order(demo_data, tiny_config, tmp_path):
    same = dict(epochs=1, norm="batch", batching="mixed")
    a = train(tiny_config(demo_data, tmp_path / "a", **same))
    b = train(tiny_config(demo_data, tmp_path / "b", **same))
    np.testing.assert_allclose(a["running_loss"], b["running_loss"], rtol=1e-4)
    assert a["train_loss_training_mode"] == pytest.approx(
        b["train_loss_training_mode"], rel=1e-4
    )


def test_cli_names_the_run_directory_of_a_diverged_run(tmp_path, monkeypatch,
                                                       capsys):
    """Without --out the run goes to a fresh directory under runs/, and the
    error names it (it once said "kept in None")."""
    import kpair.training.trainer
    from kpair.cli import main

    seen = []

    def diverges(config, *args, **kwargs):
        seen.append(config.out)
        raise TrainingDiverged(2, 1, float("nan"))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(kpair.training.trainer, "train", diverges)
    assert main(["train", "--epochs", "1"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert seen == [str(Path("runs") / "per-domain-per-type-1")], seen
    assert lines == [
        "kpair: error: the training loss became nan at epoch 2, step 1. The last "
        f"good checkpoint and the backup are kept in {seen[0]}; resume "
        "with a lower --learning-rate."
    ]


def test_a_failed_deployment_check_is_reported_line_by_line(tmp_path):
    """What `kpair train` prints and records when its model fails `kpair check`
    (its passing case: test_run_directory_has_everything)."""
    import io

    from kpair.inspection.check import Finding
    from kpair.training import run_outputs as training

    findings = [Finding("statistics", "ok", "finite"),
                Finding("every domain trained", "warning", "domain 1 at 0/1"),
                Finding("batch invariance", "failure", "differ by at most 0.3")]
    assert training._check_status(findings) == "failure"
    assert training._check_status(findings[:2]) == "warning"
    assert training._check_status(findings[:1]) == "ok"
    out = io.StringIO()
    training._print_check(findings, tmp_path / "run", out)
    lines = out.getvalue().splitlines()
    assert lines[:2] == [
        "kpair check: WARNING  every domain trained: domain 1 at 0/1",
        "kpair check: FAILURE  batch invariance: differ by at most 0.3",
    ]
    assert str(tmp_path / "run") in lines[2] and len(lines) == 3
