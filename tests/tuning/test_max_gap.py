"""`kpair tune --max-gap R`: trials whose gap exceeds R rank after those that
meet it, whatever their val_loss; the search keeps R when resumed.

Most trials here train nothing: `fit` reports made-up results (val_loss and
gap by norm), so that which trial meets R is known; the CLI test runs real
trials of the tiny demo.
"""

import csv
import json
import math

import pytest

from kpair.cli import main
from kpair.config import ConfigError
from kpair.tuning import PairHyperModel, chief, run_search
from kpair.tuning import summary as summary_module
from tests.tuning.test_cli import TINY_FLAGS

# Made-up results by norm: batch has the lower val_loss and a large gap.
RESULTS = {
    "batch": {"val_loss": 0.5, "gap_ratio": 3.0},
    "group": {"val_loss": 0.9, "gap_ratio": 1.0},
}


def made_up_results(self, hp, model, *args, **kwargs):
    """A `fit` that trains nothing and reports RESULTS for the trial's norm."""
    return dict(RESULTS[hp.values["norm"]])


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(PairHyperModel, "fit", made_up_results)


def ranked(result):
    return [(row["norm"], row.get("max_gap_met")) for row in result["trials"]]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_trial_above_max_gap_ranks_after_one_that_meets_it(
    base_config, tmp_path, no_training, capsys
):
    kwargs = dict(norms=["batch", "group"], max_trials=2)
    plain = run_search(base_config, out_dir=tmp_path / "plain", **kwargs)
    # By the objective alone, batch's lower val_loss ranks first...
    assert [row["norm"] for row in plain["trials"]] == ["batch", "group"]
    capsys.readouterr()

    result = run_search(base_config, out_dir=tmp_path / "gap", max_gap=1.5, **kwargs)
    # ...with --max-gap 1.5, group (gap 1.0) ranks before batch (gap 3.0).
    assert ranked(result) == [("group", "yes"), ("batch", "no")]
    assert result["best"]["norm"] == "group"
    assert result["max_gap"] == 1.5 and result["max_gap_met"] is True
    # The objective's values are the trials' own.
    by_norm = {row["norm"]: row for row in result["trials"]}
    for norm, values in RESULTS.items():
        assert by_norm[norm]["val_loss"] == values["val_loss"]
        assert by_norm[norm]["gap_ratio"] == values["gap_ratio"]
    printed = capsys.readouterr().out
    assert "Best: trial" in printed
    assert "(the best of the trials with a gap of at most 1.5)" in printed
    assert "norm=group" in printed.split("Best: trial")[1]
    rows = read_csv(tmp_path / "gap" / "summary.csv")
    assert [(r["norm"], r["max_gap_met"]) for r in rows] == ranked(result)
    assert [float(r["val_loss"]) for r in rows] == [0.9, 0.5]


def test_summary_md_has_a_column_of_the_trials_that_meet_it(
    base_config, tmp_path, no_training
):
    run_search(base_config, norms=["batch", "group"], max_trials=2,
               out_dir=tmp_path, max_gap=1.5)
    table, ranking, setup = (tmp_path / "summary.md").read_text().split("\n\n")
    header, rule, first, second = table.splitlines()
    assert header.startswith("| trial | status | gap <= 1.5 | norm |")
    assert first.split(" | ")[2:4] == ["yes", "group"]
    assert second.split(" | ")[2:4] == ["no", "batch"]
    assert ranking.startswith("--max-gap 1.5: 1 of 2 finished trials")
    assert setup.startswith("Keras backend:")
    # Without --max-gap, no such column.
    run_search(base_config, norms=["batch", "group"], max_trials=2,
               out_dir=tmp_path / "plain")
    assert (tmp_path / "plain" / "summary.md").read_text().startswith(
        "| trial | status | norm |")


def test_when_no_trial_meets_it_the_objective_ranks_and_it_is_said(
    base_config, tmp_path, no_training, capsys
):
    result = run_search(base_config, norms=["batch", "group"], max_trials=2,
                        out_dir=tmp_path, max_gap=0.5)
    assert ranked(result) == [("batch", "no"), ("group", "no")]
    assert result["best"]["norm"] == "batch" and result["max_gap_met"] is False
    assert "No trial meets --max-gap 0.5" in capsys.readouterr().out
    markdown = (tmp_path / "summary.md").read_text()
    assert "No trial meets --max-gap 0.5" in markdown
    assert "ranked by val_loss alone" in markdown


def test_a_trial_without_a_finite_gap_does_not_meet_it(base_config, tmp_path,
                                                       no_training, monkeypatch):
    # A completed trial without a gap (one that reported none) cannot show
    # that it meets R.
    monkeypatch.setitem(RESULTS, "group", {"val_loss": 0.9})
    result = run_search(base_config, norms=["batch", "group"], max_trials=2,
                        out_dir=tmp_path, max_gap=4.0)
    assert ranked(result) == [("batch", "yes"), ("group", "no")]
    assert summary_module.meets_max_gap({"gap_ratio": 4.0}, 4.0)
    assert not summary_module.meets_max_gap({"gap_ratio": 4.01}, 4.0)


def test_a_resumed_search_keeps_its_max_gap(base_config, tmp_path, no_training,
                                            capsys):
    kwargs = dict(norms=["batch", "group"], out_dir=tmp_path)
    run_search(base_config, max_trials=1, max_gap=1.5, **kwargs)
    assert json.loads((tmp_path / "search.json").read_text())["max_gap"] == 1.5
    capsys.readouterr()

    # Resumed without it: the stored one holds, and it is said.
    result = run_search(base_config, max_trials=2, **kwargs)
    assert "keeps its --max-gap 1.5" in capsys.readouterr().out
    assert ranked(result) == [("group", "yes"), ("batch", "no")]
    assert result["max_gap"] == 1.5

    # With another R: refused, in words that name both.
    with pytest.raises(ConfigError, match=r"started with --max-gap 1\.5.*"
                       r"Received: max_gap=2\.0"):
        run_search(base_config, max_trials=2, max_gap=2.0, **kwargs)
    # With the same R: it resumes.
    assert run_search(base_config, max_trials=2, max_gap=1.5, **kwargs)[
        "best"]["norm"] == "group"


def test_a_search_started_without_it_refuses_one(base_config, tmp_path,
                                                 no_training):
    run_search(base_config, norms=["batch"], max_trials=1, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="started without --max-gap"):
        run_search(base_config, norms=["batch"], max_trials=1, out_dir=tmp_path,
                   max_gap=1.5)


def test_the_chief_ranks_with_the_stored_max_gap(base_config, tmp_path,
                                                 no_training, monkeypatch):
    # The chief reads the trials and writes the table: a chief started
    # again over a finished search, without --max-gap, ranks by the stored one.
    # The trials run first in this process, under the chief's tuner id (so
    # that the chief reloads its state, search/chief.json), as a local search.
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    run_search(base_config, norms=["batch", "group"], max_trials=2,
               out_dir=tmp_path, max_gap=1.5)
    (tmp_path / "summary.md").unlink()
    # Served at once: the search is over (workers would be told so).
    monkeypatch.setattr(chief, "serve", lambda oracle, watch=None: None)
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    result = run_search(base_config, norms=["batch", "group"], max_trials=2,
                        out_dir=tmp_path)
    assert result["role"] == "chief"
    assert ranked(result) == [("group", "yes"), ("batch", "no")]
    assert "| gap <= 1.5 |" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, "2", True])
def test_bad_max_gap_is_refused(base_config, tmp_path, value):
    with pytest.raises(ConfigError, match="Received: max_gap="):
        run_search(base_config, out_dir=tmp_path, max_gap=value)


def test_the_flag_and_its_default_are_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-gap R" in text
    assert "(default: off, trials ranked by val_loss alone)" in text


def test_the_flag_reaches_the_search(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("kpair.tuning.search.run_search",
                        lambda config, **kwargs: seen.update(kwargs))
    main(["tune", "--out", str(tmp_path), "--max-gap", "1.2", *TINY_FLAGS])
    assert seen["max_gap"] == 1.2
    main(["tune", "--out", str(tmp_path), *TINY_FLAGS])
    assert seen["max_gap"] is None


@pytest.mark.slow
def test_tune_with_max_gap_over_the_demo_data(demo_data, tmp_path, trials, capsys):
    out_dir = tmp_path / "tune"
    # Group norm has no train/inference difference: its gap is 1.
    flags = ["tune", "--data", str(demo_data), "--norms", "batch,group",
             "--batching", "mixed", "--max-trials", "2", "--out", str(out_dir),
             *TINY_FLAGS, "--precision", "float32"]
    assert main([*flags, "--max-gap", "1.001"]) == 0
    printed = capsys.readouterr().out
    rows = read_csv(out_dir / "summary.csv")
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    met = [r["max_gap_met"] for r in rows]
    for row in rows:
        assert row["max_gap_met"] == (
            "yes" if float(row["gap_ratio"]) <= 1.001 else "no")
    assert "yes" in met and met == sorted(met, reverse=True)  # yes before no
    assert "gap <= 1.001" in printed
    best = json.loads((out_dir / "best" / "metrics.json").read_text())
    assert best["trial"] == rows[0]["trial"] and best["max_gap_met"] == "yes"
    assert best["max_gap"] == 1.001

    # Another R on the same --out: one line, exit 2, nothing run.
    assert main([*flags, "--max-gap", "3"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "started with --max-gap 1.001" in err[0]
    assert len(trials.run) == 2
