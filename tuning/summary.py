"""The table and plot of a search, one row per trial read from the oracle,
and the best trial's model saved as a run directory (`best/`).

Everything here comes from the oracle's trials (their hyperparameters,
reported metrics, status and message) plus the `failure.txt` a trial leaves
in its directory: in chief/worker mode a trial's message does not travel
over gRPC, its directory on the shared file system does.

keras-tuner ranks trials by one objective (`val_loss`); a search's
`max_gap` is applied here, where the chief (or the one process of a local
search) reads the trials: a finished trial whose gap exceeds it ranks after
every finished trial that meets it. The objective's values are left as they
are.
"""

import math
from pathlib import Path

import keras

from kpair.models.model_builder import build_pair_model, float32_copy, training_model
from kpair.training import gap
from kpair.training.run_directory import run_record
from kpair.utils import files, tables

# A failed trial's one-line reason, written into its trial directory.
FAILURE_FILE = "failure.txt"
# Metrics of a trial, as reported for its best epoch (`seconds`: the trial).
METRICS = ("val_loss", gap.GAP, gap.TRAINING_MODE, gap.INFERENCE_MODE, "seconds",
           "devices")
# The column that says whether a trial meets the search's max_gap: "yes",
# "no", or "" for a trial that did not finish.
MAX_GAP_MET = "max_gap_met"
# The metrics' formats; other floats (hyperparameters) take "{:.3g}".
_SPECS = {
    "val_loss": "{:.4f}",
    gap.TRAINING_MODE: "{:.4f}",
    gap.INFERENCE_MODE: "{:.4f}",
    gap.GAP: "{:.2f}",
    "seconds": "{:.1f}",
    "devices": "{:.0f}",
}


def trial_rows(oracle, project_dir, max_gap=None):
    """One dict per trial, best first; unfinished and failed ones last.

    With `max_gap`, each row gets `MAX_GAP_MET`, and finished trials whose
    gap is at most `max_gap` come first; those above it (or without a
    finite gap) follow, each group by `val_loss`.
    """
    rows = []
    for trial_id, trial in oracle.trials.items():
        values = dict(trial.hyperparameters.values)
        row = {"trial": trial_id, "status": _status(trial)}
        row["norm"] = values.pop("norm", "")
        epochs = values.get("tuner/epochs")
        values = {k: v for k, v in values.items() if not k.startswith("tuner/")}
        if epochs is not None:
            values["epochs"] = epochs
        row["hyperparameters"] = values
        for name in METRICS:
            row[name] = (
                float(trial.metrics.get_last_value(name))
                if trial.metrics.exists(name)
                else math.nan
            )
        row["reason"] = _reason(trial, Path(project_dir) / f"trial_{trial_id}")
        if max_gap is not None:
            row[MAX_GAP_MET] = (
                ("yes" if meets_max_gap(row, max_gap) else "no")
                if _finished(row) else ""
            )
        rows.append(row)
    return sorted(rows, key=_order)


def meets_max_gap(row, max_gap):
    """Whether the trial of `row` has a finite gap of at most `max_gap`."""
    return math.isfinite(row[gap.GAP]) and row[gap.GAP] <= max_gap


def _status(trial):
    status = str(trial.status)
    return status.rsplit(".", 1)[-1].lower()


def _finished(row):
    return row["status"] == "completed" and math.isfinite(row["val_loss"])


def _order(row):
    done = _finished(row)
    # Without a max_gap, every row's MAX_GAP_MET is missing: no effect.
    above = row.get(MAX_GAP_MET) == "no"
    return (not done, above, row["val_loss"] if done else 0.0, row["trial"])


def _reason(trial, trial_dir):
    if _status(trial) in ("completed", "running"):
        return ""
    path = trial_dir / FAILURE_FILE
    if path.is_file():
        return path.read_text().strip()
    lines = [line for line in (trial.message or "").splitlines() if line.strip()]
    if lines:
        return lines[-1].strip()
    if not math.isfinite(trial.score if trial.score is not None else math.nan):
        return "val_loss is not finite"
    return ""


def columns(rows):
    """Column names: trial, status, `MAX_GAP_MET` (with a max_gap), norm,
    hyperparameters, metrics, reason."""
    names = []
    for row in rows:
        for name in row["hyperparameters"]:
            if name not in names:
                names.append(name)
    # The norm's own options first, then the rest, whatever trial came first.
    known = ("groups", "momentum", "warmup_steps", "learning_rate", "batching")
    names.sort(key=lambda n: known.index(n) if n in known else len(known))
    met = [MAX_GAP_MET] if any(MAX_GAP_MET in row for row in rows) else []
    return ["trial", "status", *met, "norm", *names, *METRICS, "reason"]


def _flat(rows):
    """Rows with their hyperparameters as columns of their own."""
    return [{**row, **row["hyperparameters"]} for row in rows]


def _cells(rows, max_gap=None):
    """Headings and rows of strings, in `columns(rows)` order."""
    headings = dict(gap.HEADINGS)
    if max_gap is not None:
        headings[MAX_GAP_MET] = f"gap <= {max_gap:g}"
    return tables.cells(columns(rows), _flat(rows), _SPECS, "{:.3g}", headings)


def format_table(rows, max_gap=None):
    """The table as aligned plain text, for a terminal."""
    return tables.aligned(*_cells(rows, max_gap))


def write_csv(rows, path):
    """The table as CSV, with full-precision numbers."""
    tables.write_csv(path, columns(rows), _flat(rows))


def write_markdown(rows, path, note=None, max_gap=None):
    """The table as a Markdown table, then `note` (a paragraph) if given;
    with `max_gap`, the `MAX_GAP_MET` column is headed `gap <= max_gap`."""
    tables.write_markdown(path, *_cells(rows, max_gap), note=note)


def setup_note(setup):
    """Where the search ran: `setup` is `{"backend": ..., "devices": ...}`."""
    return (f"Keras backend: {setup['backend']}. Devices per trial: "
            f"{setup['devices']} (the `devices` column: as each trial saw them).")


def max_gap_note(rows, max_gap):
    """What `max_gap` did to the ranking, a paragraph of summary.md."""
    finished = [r for r in rows if _finished(r)]
    met = sum(1 for r in finished if r[MAX_GAP_MET] == "yes")
    gap_is = ("gap (inference- over training-mode loss on a fixed sample of "
              "training pairs, the `gap` column)")
    if finished and not met:
        return (f"No trial meets --max-gap {max_gap:g}: no finished trial's "
                f"{gap_is} is at most {max_gap:g}. The trials are ranked by "
                "val_loss alone, and the best is the lowest val_loss.")
    return (f"--max-gap {max_gap:g}: {met} of {len(finished)} finished trials "
            f"have a {gap_is} of at most {max_gap:g} (`gap <= {max_gap:g}`: "
            "yes). They rank first, by val_loss; the others follow, by "
            "val_loss, even where it is lower. The best trial (best/) is the "
            "first row.")


def plot_val_loss_by_norm(rows, norms, path):
    """A PNG: each finished trial's val_loss over its norm; the best circled."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's import
    import matplotlib.pyplot as plt

    finished = [
        r for r in rows if r["status"] == "completed" and math.isfinite(r["val_loss"])
    ]
    fig, ax = plt.subplots(figsize=(1.6 * len(norms) + 2.5, 4))
    try:
        position = {}
        for x, norm in enumerate(norms):
            mine = [r for r in finished if r["norm"] == norm]
            # Spread the points of one norm so that equal losses stay visible.
            for i, row in enumerate(mine):
                spread = 0.0 if len(mine) == 1 else -0.15 + 0.3 * i / (len(mine) - 1)
                position[row["trial"]] = x + spread
            ax.scatter(
                [position[r["trial"]] for r in mine],
                [r["val_loss"] for r in mine],
                color="C0",
                zorder=2,
            )
        if finished:
            best = finished[0]
            ax.scatter(
                [position[best["trial"]]], [best["val_loss"]], s=250,
                facecolors="none", edgecolors="C3", linewidths=2, zorder=3,
                label=f"best: trial {best['trial']}",
            )
            ax.legend(loc="best")
        failed = {n: sum(1 for r in rows if r["norm"] == n and r["status"] == "failed")
                  for n in norms}
        ax.set_xticks(range(len(norms)))
        ax.set_xticklabels(
            [f"{n}\n({failed[n]} failed)" if failed[n] else n for n in norms]
        )
        ax.set_xlim(-0.6, len(norms) - 0.4)
        ax.set_xlabel("normalization")
        ax.set_ylabel("val_loss (inference mode)")
        ax.set_title("Validation loss of each trial, by normalization")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        files.write_figure(fig, path)
    finally:
        plt.close(fig)
def report(search, hypermodel, out_dir, out, setup, max_gap=None):
    """Writes the table, the plot and `best/`; `setup` (backend, devices)
    goes into summary.md and best/metrics.json. With `max_gap`, trials are
    ranked as `trial_rows` says, and summary.md and the printed lines say
    which met it."""
    rows = trial_rows(search.oracle, Path(search.project_dir), max_gap)
    note = setup_note(setup)
    if max_gap is not None:
        note = max_gap_note(rows, max_gap) + "\n\n" + note
    write_csv(rows, out_dir / "summary.csv")
    write_markdown(rows, out_dir / "summary.md", note=note, max_gap=max_gap)
    plot_val_loss_by_norm(
        rows, hypermodel.norms, out_dir / "val_loss_by_norm.png"
    )
    print("", file=out)
    print(format_table(rows, max_gap), file=out)
    best = rows[0] if rows and rows[0]["status"] == "completed" else None
    result = {"trials": rows, "best": best}
    if max_gap is not None:
        result.update(max_gap=max_gap,
                      max_gap_met=best is not None and best[MAX_GAP_MET] == "yes")
    if best is None:
        print(f"No trial finished, so no best model ({out_dir}).", file=out)
        return result
    if max_gap is not None and not result["max_gap_met"]:
        print(f"No trial meets --max-gap {max_gap:g} (every finished trial's "
              f"gap is above {max_gap:g}): the best is ranked by val_loss "
              "alone.", file=out)
    trial = search.oracle.get_trial(best["trial"])
    best_dir = out_dir / "best"
    saved = _save_best(search, hypermodel, trial, best, best_dir, out, setup,
                       max_gap)
    among = (f" (the best of the trials with a gap of at most {max_gap:g})"
             if max_gap is not None and result["max_gap_met"] else "")
    print(
        f"Best: trial {best['trial']}{among}, norm={best['norm']}, val_loss "
        f"{best['val_loss']:.4f} (inference mode), gap {best['gap_ratio']:.2f}x "
        "(inference over training mode, same training pairs and weights)."
        + (f" Saved to {best_dir}/model.keras." if saved else ""),
        file=out,
    )
    return result


def _save_best(search, hypermodel, trial, row, best_dir, out, setup,
               max_gap=None):
    """Writes best/model.keras (float32) and its config.json; False if it cannot."""
    weights = Path(search.get_trial_dir(trial.trial_id)) / "checkpoint.weights.h5"
    if not weights.is_file():
        print(
            f"Cannot save the best model: {weights} is missing (chief and "
            "workers must share the search directory).",
            file=out,
        )
        return False
    config = hypermodel.config_for(trial.hyperparameters.copy())
    config = config.replace(out=str(best_dir))
    keras.backend.clear_session()
    pair_model = build_pair_model(config, hypermodel.pretrained())
    model = training_model(pair_model, config)
    model.optimizer.build(model.trainable_variables)  # as in build(hp)
    model.load_weights(weights)
    best_dir.mkdir(parents=True, exist_ok=True)
    files.write_json(best_dir / "config.json", run_record(config), end="")
    metrics = {k: v for k, v in row.items() if k != "hyperparameters"}
    metrics["backend"] = setup["backend"]
    if max_gap is not None:
        metrics["max_gap"] = max_gap
    # The best trial's own count; a trial of an older kpair did not report it.
    metrics["devices"] = (int(row["devices"]) if math.isfinite(row["devices"])
                          else setup["devices"])
    files.write_json(best_dir / "metrics.json", metrics, end="")
    files.write_model(float32_copy(pair_model, config), best_dir / "model.keras")
    return True
