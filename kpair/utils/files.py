"""Writing a file whole: aside under a partial name, then renamed over it.

A reader, or a run resumed after a kill, finds the old file or the new one,
never half of one: `os.replace` is atomic on one file system. Every file
kpair writes goes through here, so all of them are named alike while they
are written (`partial_path`).

Pure Python: `kpair --help` and the table code import it without TensorFlow.
"""

import contextlib
import csv
import json
import os
import shutil
import uuid
from pathlib import Path

PARTIAL_PREFIX = ".partial."


def partial_path(path):
    """Where `path` is written before the rename: `DIR/.partial.NAME`.

    A prefix, not a suffix: Keras and matplotlib choose the format from the
    end of the name (`.keras`, `.weights.h5`, `.png`), which must stay.
    """
    path = Path(path)
    return path.with_name(PARTIAL_PREFIX + path.name)


def is_partial(path):
    """Whether `path` is a file still being written, or left by a kill."""
    return Path(path).name.startswith(PARTIAL_PREFIX)


@contextlib.contextmanager
def aside(path):
    """Yields the partial path to write; renames it to `path` if no error."""
    path = Path(path)
    tmp = partial_path(path)
    yield tmp
    os.replace(tmp, path)


def write_text(path, text, newline=None):
    """Writes `text` (`newline` as for `open`)."""
    with aside(path) as tmp, open(tmp, "w", newline=newline) as f:
        f.write(text)


def write_json(path, data, indent=2, end="\n"):
    """Writes `data` as JSON; NumPy and TensorFlow scalars as numbers."""
    write_text(path, json.dumps(data, indent=indent, default=_json_default) + end)


def write_csv(path, fieldnames, rows):
    """Writes dict `rows` as CSV under a `fieldnames` header; missing as empty."""
    with aside(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def write_figure(fig, path, dpi=100):
    """Saves a matplotlib figure, in the format its file name ends with."""
    import matplotlib

    path = Path(path)
    if not os.path.splitext(path.name)[1][1:]:
        # As `savefig` itself: a name without a format gets the default one
        # appended (the partial name's last part would be taken as one).
        default = matplotlib.rcParams["savefig.format"]
        path = path.with_name(f"{path.name.rstrip('.')}.{default}")
    with aside(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def write_model(model, path):
    """Saves a Keras model as a `.keras` file."""
    with aside(path) as tmp:
        model.save(tmp)


def write_weights(model, path):
    """Saves a Keras model's weights as a `.weights.h5` file."""
    with aside(path) as tmp:
        model.save_weights(tmp, overwrite=True)


def copy_file(src, dst):
    """Copies `src` over `dst`."""
    with aside(dst) as tmp:
        shutil.copyfile(src, tmp)


def _json_default(value):
    # Imported here: only values plain JSON cannot write need them.
    import numpy as np

    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    import tensorflow as tf

    if isinstance(value, tf.Tensor):
        return value.numpy().item()
    raise TypeError(f"not JSON serializable: {value!r}")


def replace_dir(src, dst):
    """Renames `src` to `dst`, moving an existing `dst` out of the way first."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dst, old)
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def directory_aside(out_dir):
    """Yields a new empty sibling of `out_dir` to write into; renames it to
    `out_dir` if no error, else removes it. A reader, or a later run, finds
    the old directory or the whole new one, never half of one."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        yield tmp_dir
        replace_dir(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
