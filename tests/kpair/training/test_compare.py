"""kpair compare: one ordinary run per norm x batching, then one table.

Real cells train eagerly: the tiny model costs ~15 s of graph tracing per
cell in graph mode and a few seconds eagerly, and graph-mode training is
test_train's business. Tests of the bookkeeping (refusals, failed cells,
flags) replace training with a stub and train nothing.
"""

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

import kpair.training.trainer
from kpair import layers
from kpair.cli import main
from kpair.config import ConfigError, TrainConfig
from kpair.training import compare
from kpair.training.callbacks import TrainingDiverged

CSV_COLUMNS = [
    "norm", "batching", "status", "train_loss_training_mode",
    "train_loss_inference_mode", "gap_ratio", "val_loss", "seconds", "run",
    "reason",
]
METRICS = ("train_loss_training_mode", "train_loss_inference_mode", "gap_ratio",
           "val_loss", "seconds")
NORMS, BATCHINGS = ["batch", "per-domain"], ["mixed", "balanced"]


@pytest.fixture
def trainings(monkeypatch):
    """Real, eager training; lists the (norm, batching) of every cell trained."""
    calls = []
    build, real_train = kpair.training.trainer.training_model, compare.train

    def eager_model(pair_model, config):
        model = build(pair_model, config)
        model.run_eagerly = True
        return model

    def counting_train(config, **kwargs):
        calls.append((config.norm, config.batching))
        return real_train(config, **kwargs)

    monkeypatch.setattr(kpair.training.trainer, "training_model", eager_model)
    monkeypatch.setattr(compare, "train", counting_train)
    return calls


class StubTrain:
    """Stands in for `kpair.training.trainer.train`: records each cell's config, writes
    its metrics.json, and raises what `fail` maps a (norm, batching) to."""

    def __init__(self):
        self.configs, self.fail = [], {}

    def __call__(self, config, **kwargs):
        self.configs.append(config)
        if (config.norm, config.batching) in self.fail:
            raise self.fail[config.norm, config.batching]
        metrics = dict(zip(METRICS, (0.5, 1.5, 3.0, 1.75, 2.5)))
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics))
        return metrics


@pytest.fixture
def stub(monkeypatch):
    recorder = StubTrain()
    monkeypatch.setattr(compare, "train", recorder)
    return recorder


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def cell_dir(out, norm, batching):
    return out / "cells" / f"{norm}__{batching}"


@pytest.mark.slow
def test_two_norms_by_two_batchings_then_resume(demo_data, tiny_config, tmp_path,
                                                trainings, monkeypatch):
    out = tmp_path / "cmp"
    stream = io.StringIO()
    rows = compare.run_compare(tiny_config(demo_data), NORMS, BATCHINGS, out,
                               out=stream)
    grid = [(n, b) for n in NORMS for b in BATCHINGS]
    assert trainings == grid
    assert [(r["norm"], r["batching"], r["status"]) for r in rows] == [
        (n, b, "done") for n, b in grid
    ]
    printed = stream.getvalue()
    assert "cell 3/4: norm=per-domain batching=mixed" in printed
    assert "train (inference mode)" in printed  # the table, after the runs

    header, table = read_csv(out / "compare.csv")
    assert header == CSV_COLUMNS
    assert [(r["norm"], r["batching"]) for r in table] == grid
    for row in table:
        run = cell_dir(out, row["norm"], row["batching"])
        assert row["run"] == str(run) and row["status"] == "done"
        # Every cell is an ordinary run directory.
        assert (run / "model.keras").is_file()
        saved = TrainConfig.load(run / "config.json")
        assert (saved.norm, saved.batching) == (row["norm"], row["batching"])
        metrics = json.loads((run / "metrics.json").read_text())
        for key in METRICS:
            assert float(row[key]) == pytest.approx(metrics[key]), key

    md = (out / "compare.md").read_text().splitlines()
    table_lines = [line for line in md if line.startswith("|")]
    assert len(table_lines) == 2 + 4  # header, rule, one line per cell
    assert "train (training mode)" in table_lines[0] and "gap" in table_lines[0]
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # Resume: finished cells stay as they are, a missing one is trained (by
    # a stub: real training of a cell was shown above).
    kept = {
        cell: (cell_dir(out, *cell) / "metrics.json").stat().st_mtime_ns
        for cell in grid[:3]
    }
    shutil.rmtree(cell_dir(out, *grid[3]))
    monkeypatch.setattr(compare, "train", stub := StubTrain())
    stream = io.StringIO()
    rows = compare.run_compare(tiny_config(demo_data), NORMS, BATCHINGS, out,
                               resume=True, out=stream)
    assert [(c.norm, c.batching) for c in stub.configs] == [grid[3]]
    assert stream.getvalue().count("skipped (done)") == 3
    for cell, mtime in kept.items():
        assert (cell_dir(out, *cell) / "metrics.json").stat().st_mtime_ns == mtime
    _, table = read_csv(out / "compare.csv")
    assert [r["status"] for r in rows] == ["done"] * 4 and len(table) == 4
    assert float(table[3]["train_loss_inference_mode"]) == 1.5  # the new cell's
    assert float(table[0]["train_loss_inference_mode"]) == pytest.approx(
        json.loads((cell_dir(out, *grid[0]) / "metrics.json").read_text())[
            "train_loss_inference_mode"])


def test_existing_cells_without_resume_are_refused(demo_data, tiny_config, tmp_path,
                                                   stub):
    out = tmp_path / "cmp"
    (out / "cells" / "batch__mixed").mkdir(parents=True)
    with pytest.raises(ConfigError, match="resume=True.*another `out_dir`"):
        compare.run_compare(tiny_config(demo_data), NORMS, BATCHINGS, out)
    assert stub.configs == []


def test_cli_refuses_existing_cells_in_one_line(demo_data, tmp_path, stub, capsys):
    out = tmp_path / "cmp"
    (out / "cells" / "batch__mixed").mkdir(parents=True)
    code = main(["compare", "--data", str(demo_data), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "--resume" in err[0], err
    assert stub.configs == []


def test_resume_refuses_cells_of_another_configuration(demo_data, tiny_config,
                                                       tmp_path, stub):
    out = tmp_path / "cmp"
    config = tiny_config(demo_data)
    compare.run_compare(config, ["batch"], ["mixed"], out)
    # The stub writes no config.json: write the one train() would have.
    cell = compare.cell_config(config, "batch", "mixed", out)
    (cell_dir(out, "batch", "mixed") / "config.json").write_text(
        json.dumps(cell.to_dict()))
    with pytest.raises(ConfigError, match=r"differs in \['steps_per_epoch'\]"):
        compare.run_compare(config.replace(steps_per_epoch=3), ["batch"], ["mixed"],
                            out, resume=True)
    assert len(stub.configs) == 1
    compare.run_compare(config, ["batch"], ["mixed"], out, resume=True)
    assert len(stub.configs) == 1  # same configuration: skipped


def test_a_diverged_cell_is_recorded_and_the_rest_go_on(demo_data, tiny_config,
                                                        tmp_path, stub):
    out = tmp_path / "cmp"
    stub.fail = {("batch", "balanced"): TrainingDiverged(1, 2, float("nan"))}
    rows = compare.run_compare(tiny_config(demo_data), NORMS, BATCHINGS, out)
    assert [(c.norm, c.batching) for c in stub.configs] == [
        (n, b) for n in NORMS for b in BATCHINGS
    ]
    failed = rows[1]
    assert (failed["norm"], failed["batching"], failed["status"]) == (
        "batch", "balanced", "failed")
    assert failed["reason"] == (
        "TrainingDiverged: the training loss became nan at epoch 1, step 2")
    _, table = read_csv(out / "compare.csv")
    assert [r["status"] for r in table] == ["done", "failed", "done", "done"]
    inference = "train_loss_inference_mode"
    assert table[1][inference] == "" and table[0][inference] == "1.5"
    assert "failed: TrainingDiverged" in (out / "compare.md").read_text()
    assert (out / "compare.png").stat().st_size > 10_000


def test_cli_flags_reach_every_cell_and_defaults_cover_the_registry(
        demo_data, tmp_path, stub, capsys):
    out = tmp_path / "cmp"
    code = main([
        "compare", "--data", str(demo_data), "--out", str(out), "--epochs", "2",
        "--width-multiplier", "0.125", "--image-size", "16", "--batch-size", "12",
        "--steps-per-epoch", "3", "--embedding-dim", "16", "--eval-pairs", "24",
        "--seed", "7",
    ])
    assert code == 0, capsys.readouterr().err
    cells = [(c.norm, c.batching) for c in stub.configs]
    assert cells == [(n, b) for n in layers.names()
                     for b in ("per-type", "mixed", "balanced")]
    for config in stub.configs:
        assert (config.epochs, config.steps_per_epoch, config.seed,
                config.width_multiplier, config.image_size) == (2, 3, 7, 0.125, 16)
        assert config.out == str(cell_dir(out, config.norm, config.batching))
    printed = capsys.readouterr().out
    assert f"cell {len(cells)}/{len(cells)}: norm=batch-renorm" in printed
    assert len(read_csv(out / "compare.csv")[1]) == len(cells)


def test_norm_options_reach_only_the_norms_that_take_them(demo_data, tiny_config,
                                                          tmp_path):
    base = tiny_config(demo_data, norm="group", norm_options={"groups": 4})
    assert compare.cell_config(base, "group", "mixed", tmp_path).norm_options == {
        "groups": 4}
    assert compare.cell_config(base, "batch", "mixed", tmp_path).norm_options == {}


@pytest.mark.parametrize("flag, value, needles", [
    ("--norms", "batch,instance",
     ("Unknown norms ['instance']", "'per-domain'",
      "Received: norms=['batch', 'instance']")),
    ("--batchings", "shuffled",
     ("Unknown batchings ['shuffled']", "'per-type'",
      "Received: batchings=['shuffled']")),
])
def test_cli_bad_names_are_one_line_before_any_training(
        tmp_path, stub, capsys, flag, value, needles):
    code = main(["compare", flag, value, "--out", str(tmp_path / "cmp")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    assert stub.configs == [] and not (tmp_path / "cmp").exists()
