"""Claiming a directory for one experiment: a run, a comparison cell, a search.

A directory records the settings it was made for (a run's `config.json`, a
search's `search.json`). Started again with other settings it is refused,
naming the keys that differ, unless they differ only in keys that continue
the same experiment (more epochs, say): two experiments never mix in one
directory, and their results never mix in one table.
"""

import json
from pathlib import Path

import kpair
from kpair.config import SAVED_EXTRAS, ConfigError


def run_record(config):
    """What a run directory's `config.json` holds: the config, and how saved."""
    return {
        **config.to_dict(),
        "kpair_version": kpair.__version__,
        "saved_compute_dtype": "float32",
    }


def read_settings(path):
    """The JSON object saved in `path`.

    Raises:
        kpair.config.ConfigError: `path` cannot be read or parsed.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"Cannot read {path}: {error}") from None


def claim(path, settings, holds, advice, load=read_settings, resumable=(),
          expand=()):
    """Checks that the directory of `path` may take `settings`.

    Args:
        path: The file that records the settings the directory was made for.
        settings: The settings now, a dict. Keys kpair adds when saving
            (`kpair.config.SAVED_EXTRAS`) are not compared.
        holds: What the directory holds, for the message: "a run with
            another configuration".
        advice: The message's last sentence: what to do instead.
        load: `load(path)` returns the saved settings as a dict, or `None`
            to claim the directory anew; called only if `path` exists.
        resumable: Keys whose saved value may differ: the experiment goes
            on with the new one.
        expand: Keys that hold dicts: the message names their keys that
            differ instead.

    Returns:
        The saved settings, or `None` if there are none.

    Raises:
        kpair.config.ConfigError: the saved settings differ in another key.
    """
    path = Path(path)
    saved = load(path) if path.exists() else None
    if saved is None:
        return None
    saved, settings = _compared(saved), _compared(settings)
    changed = _changed(saved, settings, expand)
    if not set(changed) <= set(resumable):
        raise ConfigError(
            f"{path.parent} holds {holds} (differs in {changed}). {advice}"
        )
    return saved


def _compared(settings):
    return {k: v for k, v in settings.items() if k not in SAVED_EXTRAS}


def _changed(saved, settings, expand=()):
    """Sorted keys whose values differ; those of `expand` by their own keys."""
    changed = sorted(
        k for k in saved.keys() | settings.keys() if saved.get(k) != settings.get(k)
    )
    for key in expand:
        if key in changed:
            changed.remove(key)
            changed += _changed(saved.get(key, {}), settings.get(key, {}))
    return changed
