"""`kpair predict`: predictions for the pairs listed in a CSV."""

import csv
from pathlib import Path

import numpy as np
import tensorflow as tf

from kpair.data.importer import inspect_image, parse_domain, resolve_under_root
from kpair.data.records import DataError, decode_image
from kpair.errors import ConfigError
from kpair.inspection import unknown_domains
from kpair.inspection.adapt import DEFAULT_MAX_IMAGES, check_prior
from kpair.inspection.stream_adapt import StreamAdapter
from kpair.runs.adapt import check_model_out
from kpair.runs.domain_weights import training_domain_weights
from kpair.runs.model_files import resolve
from kpair.runs.open_run import open_for_evaluation
from kpair.utils import files
from kpair.utils.progress import Progress
from kpair.utils.validation import positive_int

COLUMNS = ("left", "right", "left_domain", "right_domain")


def predict_csv(model_path, pairs_csv, root, out_csv, batch_size=64,
                domain="given", adapt=None, adapt_domains=None, like=None,
                adapt_max_images=DEFAULT_MAX_IMAGES, save_adapted=None):
    """Writes `out_csv`: the rows of `pairs_csv` with a `prediction` column.

    Images are read under `root` only (no absolute paths, `..` or symbolic
    links), checked as `kpair data import` checks them (no image over
    `MAX_IMAGE_PIXELS`) and preprocessed exactly as in training. Domain ids
    must be ids of the model, `0..num_domains-1`: checked here, because the
    normalization layers check them only when run eagerly, and predictions
    run traced. Every bad row is reported, with its row number, in one
    `DataError`; nothing is written then.

    `domain` says how images without a domain id are handled (see
    `kpair.inspection.unknown_domains`): `"given"` (ids required, `-1` is an error);
    `"nearest"` (a `-1` id is inferred from the image); `"pooled"` (a `-1`
    id gets statistics pooled over the known domains, weighted by the
    run's training images per domain); `"auto"` (every image's domain is
    inferred, whatever id the CSV gives; the domain columns may be left
    out). With `nearest` and `auto` the CSV gains `left_domain_inferred`,
    `left_domain_confidence`, `right_domain_inferred` and
    `right_domain_confidence`, empty for an image whose id was given.

    With `adapt` N (a number >= 0), the normalization statistics are
    adapted to the images as they stream in, batch after batch
    (`kpair.inspection.stream_adapt`): each batch is predicted with
    statistics estimated from every image of its domain seen so far, that
    batch's included, blended with the model's stored statistics, which
    weigh as N images (0: replaced), as `kpair adapt --prior N` blends.
    Every domain the CSV names is adapted, each from its own images, or
    only `adapt_domains`; a model with one set of statistics (batch norm)
    takes one domain, whose statistics then serve every pair. An image is
    counted once, however many pairs show it, and after `adapt_max_images`
    images of a domain its statistics stay fixed. With `like` L, pairs may
    name the next domain id, `num_domains`: a domain the model does not
    know, added as `kpair adapt --like` adds it, starting from domain L's
    affine parameters and statistics. The model file is not changed; the
    adapted model is written to `save_adapted` (a `.keras` path other than
    the model's) only if given.

    Returns:
        A dict: `pairs` predicted, the `domain` policy, `inferred` (images
        whose domain was inferred) and their mean `confidence`, `pooled`
        (images given pooled statistics) and `weights` (how the pooled
        statistics were weighted; None without pooling), `adapted` (`{domain:
        images its statistics come from}`; None without `adapt`), `prior`,
        `added` (the domain added, or None), `like`, `max_images` and
        `saved` (the path written, or None).
    """
    policy = _check_policy(domain)
    adapt = _check_adapt(adapt, policy, adapt_domains, like, save_adapted)
    if adapt is not None:
        adapt_max_images = positive_int("adapt_max_images", adapt_max_images)
    run = resolve(model_path)
    if save_adapted is not None:
        save_adapted = check_model_out(save_adapted, run.model_path,
                                       "save_adapted")
    opened = open_for_evaluation(run, with_data=False)
    model, size = opened.model, opened.image_size
    if policy != "given":
        unknown_domains.per_domain_owner(model)  # refuses before reading images
    # With `like`, the next id names a domain the model gains.
    known = opened.num_domains
    readable = known + 1 if like is not None and known is not None else known
    rows, fields = _read_rows(Path(pairs_csv), Path(root), readable, policy,
                              adapt is not None)
    if not rows:
        raise DataError(f"{pairs_csv} has a header but no pairs.")
    lefts = [str(r["_left"]) for r in rows]
    rights = [str(r["_right"]) for r in rows]
    domains = [np.array([r[k] for r in rows], "int32") for k in COLUMNS[2:]]
    summary = {"pairs": len(rows), "domain": policy, "inferred": 0,
               "confidence": None, "pooled": 0, "weights": None,
               "adapted": None, "prior": adapt, "added": None, "like": None,
               "max_images": None, "saved": None}
    adapter = None
    if adapt is not None:
        adapter = StreamAdapter(
            model, adapt, _domains_to_adapt(domains, adapt_domains, known),
            like, adapt_max_images, batch_size,
        )
        model = adapter.model
        summary.update(added=adapter.added, like=adapter.like,
                       max_images=adapter.max_images)
    if policy == "auto":
        domains = [np.full_like(d, unknown_domains.UNKNOWN) for d in domains]
    elif policy == "pooled":
        weights, summary["weights"] = training_domain_weights(
            opened.run, opened.num_domains
        )
        model, pooled_id = unknown_domains.with_pooled_domain(model, weights)
        summary["pooled"] = int(sum(np.sum(d == unknown_domains.UNKNOWN)
                                    for d in domains))
        domains = [np.where(d == unknown_domains.UNKNOWN, pooled_id, d)
                   for d in domains]

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
    preds, guesses = [], {side: [] for side in ("left", "right")}
    with Progress("predicting pairs", len(rows)) as progress:
        for start, batch in zip(range(0, len(rows), batch_size), dataset):
            batch = {name: value.numpy() for name, value in batch.items()}
            for side, found in guesses.items():
                found.append(_infer_unknown(model, batch, side))
            if adapter is not None:
                # Before the batch is predicted: its images count.
                stop = start + len(batch["left"])
                adapter.update(
                    np.concatenate([batch["left"], batch["right"]]),
                    np.concatenate([batch["left_domain"], batch["right_domain"]]),
                    [*lefts[start:stop], *rights[start:stop]],
                )
            preds.append(np.asarray(model.predict_on_batch(batch)).reshape(-1))
            progress.advance(len(preds[-1]))
    preds = np.concatenate(preds)
    if adapter is not None:
        summary["adapted"] = adapter.counts
        if save_adapted is not None:
            save_adapted.parent.mkdir(parents=True, exist_ok=True)
            files.write_model(model, save_adapted)
            summary["saved"] = str(save_adapted)
    out_fields = [*fields, "prediction"]
    extra = [{} for _ in rows]
    if policy in ("nearest", "auto"):
        confidences = []
        for side, found in guesses.items():
            inferred, confidence = (np.concatenate(v) for v in zip(*found))
            out_fields += [f"{side}_domain_inferred", f"{side}_domain_confidence"]
            for cells, d, c in zip(extra, inferred, confidence):
                given = d == unknown_domains.UNKNOWN
                cells[f"{side}_domain_inferred"] = "" if given else str(int(d))
                cells[f"{side}_domain_confidence"] = "" if given else f"{c:.4f}"
            confidences.append(confidence[inferred != unknown_domains.UNKNOWN])
        confidences = np.concatenate(confidences)
        summary["inferred"] = int(len(confidences))
        if len(confidences):
            summary["confidence"] = float(np.mean(confidences))
    files.write_csv(out_csv, out_fields, [
        {**{k: row[k] for k in fields}, "prediction": f"{float(pred):.8g}", **cells}
        for row, pred, cells in zip(rows, preds, extra)
    ])
    return summary


def _check_policy(domain):
    if domain not in unknown_domains.POLICIES:
        raise ConfigError(
            f"Unknown domain policy. Expected one of "
            f"{list(unknown_domains.POLICIES)}. Received: domain={domain!r}"
        )
    return domain


def _check_adapt(adapt, policy, adapt_domains, like, save_adapted):
    """`adapt` as a float (None without it), once its companions are checked."""
    if adapt is None:
        given = {"adapt_domains": adapt_domains, "like": like,
                 "save_adapted": save_adapted}
        given = {k: v for k, v in given.items() if v is not None}
        if given:
            name, value = next(iter(given.items()))
            if name == "adapt_domains":  # the flag --adapt-domain D, repeated
                name, value = "adapt_domain", list(value)[0]
            value = str(value) if isinstance(value, Path) else value
            raise ConfigError(
                f"{name}={value!r} applies only when the statistics are "
                f"adapted: give adapt=N too. Received: {name}={value!r}"
            )
        return None
    adapt = check_prior(adapt)
    if policy != "given":
        raise ConfigError(
            "adapt=N adapts the domains the CSV names, as domain='given' reads "
            "them; it does not combine with inferred or pooled domains (images "
            "of a domain the model does not know take the next id, with "
            f"like=L). Received: domain={policy!r}"
        )
    return adapt


def _domains_to_adapt(domains, adapt_domains, num_domains):
    """The domains the CSV names, or `adapt_domains` (which it must name).

    A domain new to the model is always among them: it has no statistics
    of its own until adapted.
    """
    named = sorted({int(d) for column in domains for d in column})
    if adapt_domains is None:
        return named
    chosen = sorted(set(adapt_domains))
    missing = [d for d in chosen if d not in named]
    if missing:
        raise ConfigError(
            f"No pair names domain(s) {missing}: there are no images to adapt "
            f"them from. The CSV names domains {named}. "
            f"Received: adapt_domains={chosen}"
        )
    if num_domains is not None and num_domains in named and num_domains not in chosen:
        raise ConfigError(
            f"Pairs name the new domain {num_domains}: it must be adapted, or "
            f"it has no statistics of its own: add adapt_domain={num_domains}. "
            f"Received: adapt_domains={chosen}"
        )
    return chosen


def _infer_unknown(model, batch, side):
    """Infers, in place, the `-1` domains of one side of a batch.

    Returns `(inferred, confidence)` per pair: `-1` and NaN where the id was
    given.
    """
    domains = batch[f"{side}_domain"]
    unknown = domains == unknown_domains.UNKNOWN
    inferred = np.full(len(domains), unknown_domains.UNKNOWN, "int32")
    confidence = np.full(len(domains), np.nan, "float32")
    if np.any(unknown):
        inferred[unknown], confidence[unknown] = unknown_domains.infer_domains(
            model, batch[side][unknown], batch_size=len(domains)
        )
        batch[f"{side}_domain"] = np.where(unknown, inferred, domains)
    return inferred, confidence


def _read_rows(pairs_csv, root, num_domains=None, policy="given", adapt=False):
    try:
        with open(pairs_csv, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"Cannot read {pairs_csv}: {error}") from None
    # `auto` infers every domain: the CSV need not name any.
    optional = COLUMNS[2:] if policy == "auto" else ()
    missing = [c for c in COLUMNS if c not in fields and c not in optional]
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
            row[key], problem = _parse_domain(row.get(key), key, num_domains,
                                              policy, adapt)
            if problem:
                problems.append(f"row {number}: {problem}")
        rows.append(row)
    if problems:
        raise DataError(
            f"{pairs_csv}: {len(problems)} problem(s) (rows counted from 1 after "
            "the header): " + "; ".join(problems[:50])
        )
    return rows, fields


def _parse_domain(text, key, num_domains, policy, adapt=False):
    """`parse_domain`, with `-1` (unknown) accepted by a policy that
    resolves it, and anything accepted in a column `auto` ignores."""
    if policy == "auto" and text is None:
        return unknown_domains.UNKNOWN, None
    value, problem = parse_domain(text, key, num_domains)
    if problem and adapt and num_domains is not None and value is None \
            and _number(text) == num_domains:
        problem += (f"; {num_domains} names a new domain with like=L, the "
                    "domain it starts from")
    if problem and policy != "given" and _is_unknown(text):
        return unknown_domains.UNKNOWN, None
    if problem and policy == "given" and _is_unknown(text):
        problem += ("; -1 means unknown: resolve it with domain='nearest', "
                    "domain='pooled' or domain='auto'")
    return value, problem


def _is_unknown(text):
    return _number(text) == unknown_domains.UNKNOWN


def _number(text):
    try:
        return float((text or "").strip())
    except ValueError:
        return None
