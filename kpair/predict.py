"""`kpair predict`: predictions for the pairs listed in a CSV."""

import csv
from pathlib import Path

import numpy as np
import tensorflow as tf

from kpair import files, runs
from kpair.data.importer import inspect_image, parse_domain, resolve_under_root
from kpair.data.records import DataError, decode_image
from kpair.progress import Progress

COLUMNS = ("left", "right", "left_domain", "right_domain")


def predict_csv(model_path, pairs_csv, root, out_csv, batch_size=64):
    """Writes `out_csv`: the rows of `pairs_csv` with a `prediction` column.

    Images are read under `root` only (no absolute paths, `..` or symbolic
    links), checked as `kpair data import` checks them (no image over
    `MAX_IMAGE_PIXELS`) and preprocessed exactly as in training. Domain ids
    must be ids of the model, `0..num_domains-1`: checked here, because the
    normalization layers check them only when run eagerly, and predictions
    run traced. Every bad row is reported, with its row number, in one
    `DataError`; nothing is written then.

    Returns:
        The number of pairs predicted.
    """
    opened = runs.open_for_evaluation(model_path, with_data=False)
    model, size = opened.model, opened.image_size
    rows, fields = _read_rows(Path(pairs_csv), Path(root), opened.num_domains)
    if not rows:
        raise DataError(f"{pairs_csv} has a header but no pairs.")
    lefts = [str(r["_left"]) for r in rows]
    rights = [str(r["_right"]) for r in rows]
    domains = [np.array([r[k] for r in rows], "int32") for k in COLUMNS[2:]]

    def load(left, right, left_domain, right_domain):
        return {
            "left": decode_image(tf.io.read_file(left), size),
            "right": decode_image(tf.io.read_file(right), size),
            "left_domain": left_domain,
            "right_domain": right_domain,
        }

    dataset = (
        tf.data.Dataset.from_tensor_slices((lefts, rights, *domains))
        .map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    preds = []
    with Progress("predicting pairs", len(rows)) as progress:
        for batch in dataset:
            preds.append(np.asarray(model.predict_on_batch(batch)).reshape(-1))
            progress.advance(len(preds[-1]))
    preds = np.concatenate(preds)
    files.write_csv(out_csv, [*fields, "prediction"], [
        {**{k: row[k] for k in fields}, "prediction": f"{float(pred):.8g}"}
        for row, pred in zip(rows, preds)
    ])
    return len(rows)


def _read_rows(pairs_csv, root, num_domains=None):
    try:
        with open(pairs_csv, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"Cannot read {pairs_csv}: {error}") from None
    missing = [c for c in COLUMNS if c not in fields]
    if missing:
        raise DataError(
            f"{pairs_csv} lacks column(s) {missing}. Expected at least "
            f"{list(COLUMNS)}. Received: columns={fields}"
        )
    rows, problems = [], []
    for number, row in enumerate(raw, start=1):
        row = dict(row)
        for side in ("left", "right"):
            path, problem = resolve_under_root(root, (row[side] or "").strip())
            if path is not None:
                # As at import: a bomb or a broken file is refused here, not
                # by TensorFlow's decoder halfway through the predictions.
                problem, _ = inspect_image(path)
            if problem:
                problems.append(f"row {number}: {side}: {problem}")
            row["_" + side] = path
        for key in COLUMNS[2:]:
            row[key], problem = parse_domain(row[key], key, num_domains)
            if problem:
                problems.append(f"row {number}: {problem}")
        rows.append(row)
    if problems:
        raise DataError(
            f"{pairs_csv}: {len(problems)} problem(s) (rows counted from 1 after "
            "the header): " + "; ".join(problems[:50])
        )
    return rows, fields
