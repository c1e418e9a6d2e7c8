"""`run_compare`: the post's experiment as one table.

One ordinary run per norm and batching, each in `OUT/cells/<norm>__<batching>/`
(so `kpair evaluate` and `kpair diagnose` accept every cell), then one table
of what each run's `metrics.json` says: the training-mode loss, the
inference-mode loss on training pairs, the validation loss, their ratio and
the seconds the run took. The table goes to `compare.md`, `compare.csv` and
stdout; `compare.png` draws it.

Cells are independent runs: a comparison started again with `resume=True`
skips the finished ones, and a cell that diverges is recorded as failed
while the others go on.
"""

import json
import math
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from kpair import layers
from kpair.config import ConfigError, TrainConfig
from kpair.data import BATCHINGS
from kpair.training import gap
from kpair.training.callbacks import TrainingDiverged
from kpair.training.run_directory import claim
from kpair.training.trainer import train
from kpair.utils import files, tables
from kpair.utils.progress import estimate

CELLS = "cells"
METRICS = (gap.TRAINING_MODE, gap.INFERENCE_MODE, gap.GAP, "val_loss", "seconds")
COLUMNS = ("norm", "batching", "status", *METRICS, "run", "reason")
# Failures of one cell that leave the other cells worth running; anything
# else (bad data, a bad flag) would fail every cell, so it stops the whole.
CELL_FAILURES = (TrainingDiverged, tf.errors.ResourceExhaustedError)
LEGEND = (
    "train (training mode) and train (inference mode): the loss on one fixed "
    "sample of training pairs with each run's final weights, in training mode "
    "(batch statistics, the run's own batches, nothing updated) and in "
    "inference mode; gap = inference / training mode on those same pairs "
    "(far above 1 is the post's bug; exactly 1 for a norm without a "
    "train/inference difference); val_loss: inference-mode loss on the "
    "validation split; seconds: the whole run."
)


def run_compare(base_config, norms=None, batchings=None, out_dir="runs/compare",
                resume=False, out=None):
    """Trains one run per norm and batching, then writes and prints the table.

    Args:
        base_config: `kpair.config.TrainConfig` with what every cell shares
            (data, epochs, precision, width, ...). Its `norm`, `batching` and
            `out` are replaced per cell; of its `norm_options`, each cell keeps
            those its norm accepts (`momentum` reaches every batch norm,
            `groups` only `group`).
        norms: Norm names (default: every registered norm, `kpair.layers.names()`).
        batchings: Batch compositions (default: all of `kpair.data.BATCHINGS`).
        out_dir: Comparison directory.
        resume: Finish a comparison in `out_dir`: cells whose `metrics.json`
            is there for the same configuration are not trained again.
        out: Stream for progress lines and the table (default `sys.stdout`).

    Returns:
        One dict per cell, in norm-major order, with the keys of `COLUMNS`;
        `status` is `"done"` or `"failed"` (then `reason` says why).

    Raises:
        kpair.config.ConfigError: an unknown norm or batching, a cell
            configuration kpair cannot use, or `out_dir` already holding
            cells (without `resume`) or cells of another configuration.
        kpair.data.DataError: the data cannot be read.
    """
    out = out if out is not None else sys.stdout
    out_dir = Path(out_dir)
    norms = _names("norms", norms, layers.names())
    batchings = _names("batchings", batchings, BATCHINGS)
    # Every cell's configuration is checked before the first one trains.
    configs = [
        cell_config(base_config, n, b, out_dir) for n in norms for b in batchings
    ]
    _check_out_dir(out_dir, configs, resume)
    started = time.monotonic()
    rows = []
    for i, config in enumerate(configs, 1):
        # The estimate counts the cells done, trained or read back.
        timing = estimate(time.monotonic() - started, i - 1, len(configs))
        rows.append(
            _run_cell(config, f"cell {i}/{len(configs)}", resume, out, timing)
        )
    write_csv(rows, out_dir / "compare.csv")
    write_markdown(rows, out_dir / "compare.md")
    plot(rows, norms, batchings, out_dir / "compare.png")
    print(format_table(rows), file=out)
    print(f"Wrote {out_dir / 'compare.md'}, compare.csv and compare.png.", file=out)
    return rows


def cell_config(base_config, norm, batching, out_dir):
    """The configuration of one cell: the base one with its norm and batching."""
    accepted = layers.options(norm)
    options = {k: v for k, v in base_config.norm_options.items() if k in accepted}
    return base_config.replace(
        norm=norm, batching=batching, norm_options=options,
        out=str(Path(out_dir) / CELLS / f"{norm}__{batching}"),
    )


def _names(arg, names, valid):
    """`names` checked against `valid` (all of them when `None`), deduplicated."""
    if names is None:
        return list(valid)
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        what = f"Unknown {arg} {unknown}. " if unknown else f"No {arg} given. "
        raise ConfigError(
            f"{what}Expected one or more of {list(valid)}. Received: {arg}={names}"
        )
    return names


def _check_out_dir(out_dir, configs, resume):
    """Refuses to mix two comparisons in one directory."""
    cells_dir = out_dir / CELLS
    existing = sorted(cells_dir.iterdir()) if cells_dir.is_dir() else []
    if existing and not resume:
        raise ConfigError(
            f"{out_dir} already holds a comparison ({len(existing)} cell(s) in "
            f"{cells_dir}). Pass resume=True to finish it, or use another "
            "`out_dir`."
        )
    for config in configs:
        # More epochs continue a cell, as `kpair train` allows.
        claim(
            Path(config.out) / "config.json", config.to_dict(),
            "a run with another configuration",
            "Resume with the same settings, or use another --out.",
            load=lambda path: TrainConfig.load(path).to_dict(), resumable={"epochs"},
        )


def _saved_config(config):
    path = Path(config.out) / "config.json"
    return TrainConfig.load(path) if path.exists() else None


def _run_cell(config, label, resume, out, timing=""):
    """Trains one cell (or reads a finished one); returns its table row.

    `timing` (see `kpair.utils.progress.estimate`) ends the line that starts a
    cell's training."""
    label = f"{label}: norm={config.norm} batching={config.batching}"
    metrics_path = Path(config.out) / "metrics.json"
    if resume and metrics_path.exists() and _saved_config(config) == config:
        print(f"{label} skipped (done)", file=out, flush=True)
        return _row(config, json.loads(metrics_path.read_text()))
    print(f"{label} -> {config.out}" + (f" ({timing})" if timing else ""),
          file=out, flush=True)
    try:
        metrics = train(config, out=out)
    except CELL_FAILURES as error:
        reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
        print(f"{label} failed: {reason}", file=out, flush=True)
        return _row(config, {}, reason)
    finally:
        # Frees the cell's graphs and models before the next one is built.
        keras.backend.clear_session()
    return _row(config, metrics)


def _row(config, metrics, reason=""):
    row = {"norm": config.norm, "batching": config.batching,
           "status": "failed" if reason else "done"}
    row.update({k: float(metrics.get(k, math.nan)) for k in METRICS})
    row.update(run=config.out, reason=reason)
    return row


# --- table and plot ----------------------------------------------------------

_SHOWN = ("norm", "batching", *METRICS, "status")
# Numbers other than losses; losses take _cells' float default, "{:.4f}".
_SPECS = {gap.GAP: "{:.2f}x", "seconds": "{:.1f}"}


def _cells(rows):
    """The shown columns as strings: a failed row's status carries its reason."""
    shown = [
        {**row, "status": f"failed: {row['reason']}" if row["reason"]
         else row["status"]}
        for row in rows
    ]
    return tables.cells(_SHOWN, shown, _SPECS, "{:.4f}", gap.HEADINGS)


def format_table(rows):
    """The table as aligned plain text, for a terminal."""
    return tables.aligned(*_cells(rows))


def write_markdown(rows, path):
    """The table as Markdown, with a line saying what each loss is."""
    tables.write_markdown(path, *_cells(rows), note=LEGEND)


def write_csv(rows, path):
    """The table as CSV: every column, full-precision numbers, NaN as empty."""
    tables.write_csv(path, COLUMNS, rows)


def plot(rows, norms, batchings, path):
    """A grouped bar chart: inference-mode loss on training pairs per cell.

    Groups are norms, bars batchings; a black line across each bar marks the
    training-mode loss, so the gap is the distance between line and bar top.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's import
    import matplotlib.pyplot as plt

    cell = {(r["norm"], r["batching"]): r for r in rows}
    width = 0.8 / len(batchings)
    fig, ax = plt.subplots(figsize=(1.2 * len(norms) * len(batchings) ** 0.5 + 3, 4.5))
    try:
        for j, batching in enumerate(batchings):
            for i, norm in enumerate(norms):
                x = i - 0.4 + width * (j + 0.5)
                _draw_cell(ax, x, width, cell[norm, batching], f"C{j}")
        values = [r[k] for r in rows for k in (gap.TRAINING_MODE, gap.INFERENCE_MODE)
                  if math.isfinite(r[k])]
        if values and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")
        ax.set_xticks(range(len(norms)))
        ax.set_xticklabels(norms)
        ax.set_xlim(-0.6, len(norms) - 0.4)
        ax.set_xlabel("normalization")
        ax.set_ylabel("inference-mode loss on training pairs")
        ax.set_title("Inference-mode (bars) vs training-mode loss (lines); label: gap")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(handles=_legend(batchings), loc="best", fontsize=8)
        fig.tight_layout()
        files.write_figure(fig, path)
    finally:
        plt.close(fig)


def _draw_cell(ax, x, width, row, color):
    """One bar, its training-mode line and gap label; or a 'failed' note."""
    inference, training = row[gap.INFERENCE_MODE], row[gap.TRAINING_MODE]
    if not (math.isfinite(inference) and math.isfinite(training)):
        ax.text(x, 0.02, "failed", transform=ax.get_xaxis_transform(),
                rotation=90, ha="center", va="bottom", fontsize=8)
        return
    ax.bar(x, inference, width, color=color)
    ax.hlines(training, x - width / 2, x + width / 2, colors="black", linewidths=2)
    ax.annotate(f"{row[gap.GAP]:.2f}x", (x, max(inference, training)),
                textcoords="offset points", xytext=(0, 2), ha="center",
                va="bottom", fontsize=7)


def _legend(batchings):
    """Legend entries that exist whichever cells failed."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [Patch(color=f"C{j}", label=b) for j, b in enumerate(batchings)] + [
        Line2D([], [], color="black", linewidth=2, label="training-mode loss")
    ]
