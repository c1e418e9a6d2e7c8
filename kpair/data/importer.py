"""`kpair data import`: image files plus a CSV of pairs -> TFRecord splits.

The CSV has the columns `left,right,left_domain,right_domain,target` and
optionally `split` (train/val/test). Image paths are relative to `root`.

Every row is checked before anything is written, and all problems are
reported together (a user fixing a 100k-row CSV should not meet them one run
at a time). Without a `split` column, rows go 80/10/10 to train/val/test by a
seeded hash of `(left, right)`, so re-importing the same CSV, or one with rows
added, keeps every pair in its split.
"""

import csv
import hashlib
import io
import itertools
import math
import sys
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath

import tensorflow as tf
from PIL import Image

from kpair.data.records import SPLITS, DataError, Pair, write_split
from kpair.data.splits import outside_domains, tf_reason, valid_domains
from kpair.utils.files import directory_aside
from kpair.utils.progress import Progress

REQUIRED_COLUMNS = ("left", "right", "left_domain", "right_domain", "target")
OPTIONAL_COLUMNS = ("split",)
_HASH_SPLIT = ((0.8, "train"), (0.9, "val"), (1.0, "test"))
_KEPT_FORMATS = {"PNG": "PNG", "JPEG": "JPEG"}
_MAX_LISTED = 200
# Pillow's threshold for a possible decompression bomb (it only warns up to
# twice this). Above it kpair refuses an image from its header: decoding
# 90M pixels takes ~1 GB as float32 in every training step.
MAX_IMAGE_PIXELS = 89_478_485


def _hash_split(left, right, seed):
    digest = hashlib.sha256(f"{seed}\0{left}\0{right}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2.0**64
    return next(name for bound, name in _HASH_SPLIT if fraction < bound)


def resolve_under_root(root, rel):
    """`root / rel` if it is a safe relative path to a file; else a problem."""
    if not rel:
        return None, "empty path"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute():
        return None, f"absolute path {rel!r} (paths must be relative to root)"
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if ".." in parts:
        return None, f"path {rel!r} leaves root through '..'"
    path = root
    for part in parts:
        path = path / part
        # Checked component by component: a link anywhere could point out of
        # root, and resolving it would hide that it was a link.
        if path.is_symlink():
            return None, f"path {rel!r} goes through symbolic link {path}"
    if not path.exists():
        return None, f"file not found: {rel!r}"
    if not path.is_file():
        return None, f"not a regular file: {rel!r}"
    return path, None


def inspect_image(path):
    """`(problem, note)`: why the image cannot be read, else a note or None.

    The note says how a readable image that is not RGB is read (TensorFlow
    decodes every image to RGB). Images over `MAX_IMAGE_PIXELS` are refused
    from their header, before a pixel is decoded.
    """
    try:
        with warnings.catch_warnings():
            # Pillow only warns up to twice its limit; kpair refuses those.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    return (
                        f"image {path.name} is {width}x{height}, more than the "
                        f"{MAX_IMAGE_PIXELS} pixels kpair decodes; resize it first",
                        None,
                    )
                image.load()
                note, kept = _mode_note(image), image.format in _KEPT_FORMATS
    except Image.DecompressionBombError as e:
        return f"image {path.name} is too large to decode safely: {e}", None
    except Exception as e:  # PIL raises many types for bad files.
        return f"cannot decode image {path.name}: {type(e).__name__}: {e}", None
    if kept:
        # Training decodes the stored bytes with TensorFlow, which is stricter
        # than PIL (a PNG without its end chunk loads in PIL, not in TF).
        try:
            tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError as e:
            return (f"cannot decode image {path.name}: TensorFlow: {tf_reason(e)}",
                    None)
    return None, note


def _mode_note(image):
    bands = image.getbands()
    notes = []
    if "A" in bands or (image.mode == "P" and "transparency" in image.info):
        notes.append("alpha dropped")
    if len(bands) - ("A" in bands) == 1 and image.mode not in ("P", "PA"):
        notes.append("grayscale copied to R, G and B")
    return f"{image.mode}: {', '.join(notes)}" if notes else None


def parse_domain(text, column, num_domains=None):
    """`(id, None)` from a CSV field, or `(None, problem)`.

    Integers, also written as `1.0` (as a float column is saved), within
    `0..num_domains-1` of the model when it is known, else >= 0 (see
    `kpair.data.splits.outside_domains`). Shared by `kpair data import` and
    `kpair predict`, so that a CSV one accepts the other does too.
    """
    try:
        value = int(text.strip())
    except (ValueError, AttributeError):
        try:
            number = float(text.strip())
        except (ValueError, AttributeError):
            number = math.nan
        if not (math.isfinite(number) and number == int(number)):
            return None, f"{column} must be an integer, got {text!r}"
        value = int(number)
    if outside_domains(value, num_domains):
        return None, f"{column} is {value}; {valid_domains(num_domains)}"
    return value, None


def _parse_target(text):
    try:
        value = float(text.strip())
    except (ValueError, AttributeError):
        return None, f"target must be a number, got {text!r}"
    if not math.isfinite(value):
        return None, f"target must be finite, got {text!r}"
    return value, None


def _check_header(fieldnames, path):
    if not fieldnames:
        raise DataError(f"{path} is empty: expected a header row {REQUIRED_COLUMNS}")
    names = [n.strip() for n in fieldnames]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    extra = [c for c in names if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or extra or len(set(names)) != len(names):
        raise DataError(
            f"{path} has the wrong columns. Expected "
            f"{','.join(REQUIRED_COLUMNS)} and optionally 'split'. "
            f"Missing: {missing or 'none'}; unexpected: {extra or 'none'}. "
            f"Received: header={','.join(names)}"
        )
    return names


def _validate(rows, names, root, seed, progress):
    """Checks every row; returns parsed rows, problems as 'row N: ...', and
    notes on images that are read as RGB although they are not."""
    has_split = "split" in names
    parsed, problems, images, notes = [], [], {}, {}
    bar = Progress("checking rows", len(rows), enabled=progress)
    for number, values in enumerate(rows, start=1):
        bar.update(number)
        if _is_blank(values):
            continue
        if len(values) != len(names):
            problems.append(
                f"row {number}: expected {len(names)} fields, got {len(values)}"
            )
            continue
        row = dict(zip(names, values))
        errors, paths = [], []
        for side in ("left", "right"):
            rel = row[side].strip()
            if rel not in images:
                path, error = resolve_under_root(root, rel)
                if error is None:
                    error, note = inspect_image(path)
                    if note:
                        notes[rel] = note
                images[rel] = (path, error)
            path, error = images[rel]
            paths.append(path)
            if error:
                errors.append(f"{side}: {error}")
        left_domain, error = parse_domain(row["left_domain"], "left_domain")
        errors += [error] if error else []
        right_domain, error = parse_domain(row["right_domain"], "right_domain")
        errors += [error] if error else []
        target, error = _parse_target(row["target"])
        errors += [error] if error else []
        if has_split:
            split = row["split"].strip()
            if split not in SPLITS:
                errors.append(
                    f"split must be one of {', '.join(SPLITS)}, got {split!r}"
                )
        else:
            split = _hash_split(row["left"].strip(), row["right"].strip(), seed)
        problems += [f"row {number}: {e}" for e in errors]
        if not errors:
            parsed.append((split, *paths, left_domain, right_domain, target))
    bar.close()
    return parsed, problems, notes


def _is_blank(values):
    return not any(v.strip() for v in values)


def _stored_bytes(path):
    """Original bytes for PNG and JPEG (no quality loss), else PNG."""
    with Image.open(path) as image:
        if image.format in _KEPT_FORMATS:
            return path.read_bytes()
        buffer = io.BytesIO()
        if image.mode not in ("RGB", "RGBA", "L", "LA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.save(buffer, format="PNG")
        return buffer.getvalue()


def import_pairs(
    pairs_csv,
    root,
    out_dir,
    seed=0,
    records_per_shard=1000,
    progress=True,
    overwrite=False,
):
    """Imports a CSV of image pairs into `out_dir/{train,val,test}`.

    Args:
        pairs_csv: CSV with `left,right,left_domain,right_domain,target` and
            optionally `split`.
        root: directory the image paths are relative to. Absolute paths,
            paths through `..` and symbolic links are refused.
        out_dir: data set directory to create; written aside, then renamed.
        seed: seed of the hash split (ignored when the CSV has `split`).
        records_per_shard: records per TFRecord shard.
        progress: count the rows checked and written on stderr (see
            `kpair.utils.progress.Progress`).
        overwrite: replace an existing `out_dir`.

    Every image must decode (in PIL and in TensorFlow, which training
    uses) and hold at most `MAX_IMAGE_PIXELS` pixels. Images that are not RGB
    (grayscale, with alpha) are stored as they are and read as RGB; one
    warning line on stderr names them.

    Returns:
        Pairs written per split, `{"train": n, "val": n, "test": n}`.

    Raises:
        DataError: listing every bad row as `row N: problem`; nothing is
            written then.
    """
    pairs_csv, root, out_dir = Path(pairs_csv), Path(root), Path(out_dir)
    _check_locations(pairs_csv, root, out_dir, overwrite)
    names, rows = _read_rows(pairs_csv)
    parsed, problems, notes = _validate(rows, names, root, seed, progress)
    if problems:
        raise _problems_error(pairs_csv, problems)
    counts = _write_splits(parsed, out_dir, records_per_shard, progress)
    if notes:
        _warn_not_rgb(notes)
    return counts


def _check_locations(pairs_csv, root, out_dir, overwrite):
    if not pairs_csv.is_file():
        raise DataError(f"Pairs CSV not found: {pairs_csv}")
    if not root.is_dir():
        raise DataError(f"Image root directory not found: {root}")
    if out_dir.exists() and not overwrite:
        raise DataError(
            f"Output directory {out_dir} already exists; pass overwrite=True "
            "to replace it."
        )


def _read_rows(pairs_csv):
    """`(column names, rows)` of a CSV with a valid header and some data."""
    with open(pairs_csv, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        names = _check_header(header, pairs_csv)
        # Blank lines are skipped but keep their number, so that "row N"
        # matches what the user counts.
        rows = list(reader)
    if all(_is_blank(r) for r in rows):
        raise DataError(f"{pairs_csv} has a header but no data rows.")
    return names, rows


def _problems_error(pairs_csv, problems):
    listed = problems[:_MAX_LISTED]
    more = len(problems) - len(listed)
    return DataError(
        f"{pairs_csv}: {len(problems)} problem(s); nothing was written. "
        "Rows are numbered from 1, not counting the header.\n"
        + "\n".join(listed)
        + (f"\n... and {more} more" if more else "")
    )


def _write_splits(parsed, out_dir, records_per_shard, progress):
    """Pairs written per split, into `out_dir` as a whole (`directory_aside`):
    an interrupted import leaves no half data set."""
    bar = Progress("writing pairs", len(parsed), enabled=progress)
    written = itertools.count(1)

    def _pairs(split):
        for row_split, left, right, left_domain, right_domain, target in parsed:
            if row_split != split:
                continue
            bar.update(next(written))
            yield Pair(
                _stored_bytes(left),
                _stored_bytes(right),
                left_domain,
                right_domain,
                target,
            )

    with directory_aside(out_dir) as tmp_dir:
        counts = {
            split: write_split(_pairs(split), tmp_dir / split, records_per_shard)
            for split in SPLITS
        }
    bar.close()
    return counts


def _warn_not_rgb(notes):
    listed = "; ".join(f"{rel} ({note})" for rel, note in list(notes.items())[:3])
    more = f"; and {len(notes) - 3} more" if len(notes) > 3 else ""
    print(
        f"kpair: warning: {len(notes)} image(s) are not RGB and are read as "
        f"RGB: {listed}{more}",
        file=sys.stderr,
    )
