"""The search directory of `run_search` and the role of a process in it.

`search.json` holds the settings of a search (a search started again in the
same directory must use the same ones), `max_gap` among them (a search
started again without one keeps it); keras-tuner's project lies in
`search/`. In chief/worker mode (keras-tuner's own) the chief owns the
directory, and workers wait for the chief before they search.
"""

import functools
import json
import math
import numbers
import os
import socket
import time

import keras

import kpair
from kpair.config import ConfigError, TrainConfig
from kpair.data import count_split
from kpair.training.run_directory import claim, read_settings
from kpair.training.trainer import resolve_data
from kpair.utils import files

TUNERS = ("random", "bayesian", "hyperband")
PROJECT = "search"
SETTINGS_FILE = "search.json"


def role():
    """keras-tuner's rule: chief/worker mode when KERASTUNER_ORACLE_IP is set."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    missing = [
        name
        for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID")
        if not os.environ.get(name)
    ]
    if missing:
        raise ConfigError(
            f"KERASTUNER_ORACLE_IP is set, so {missing} must be set too: "
            "KERASTUNER_TUNER_ID=chief on the chief, a unique id (tuner0, "
            "tuner1, ...) on each worker."
        )
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def check_tuner(tuner, max_trials):
    """Refuses an unknown tuner, or a number of trials it cannot take."""
    if tuner not in TUNERS:
        raise ConfigError(
            f"Unknown tuner. Expected one of {list(TUNERS)}. Received: tuner={tuner!r}"
        )
    if tuner == "hyperband":
        if max_trials is not None:
            raise ConfigError(
                "Hyperband chooses its number of trials from the epochs; "
                f"pass max_trials=None. Received: max_trials={max_trials!r}"
            )
    elif isinstance(max_trials, bool) or not isinstance(max_trials, int) or (
        max_trials < 1
    ):
        raise ConfigError(
            "`max_trials` must be a positive integer. "
            f"Received: max_trials={max_trials!r}"
        )


def check_max_gap(max_gap):
    """Refuses a `max_gap` that is neither None nor a positive finite number."""
    if max_gap is None:
        return
    if (isinstance(max_gap, bool) or not isinstance(max_gap, numbers.Real)
            or not math.isfinite(max_gap) or max_gap <= 0):
        raise ConfigError(
            "`max_gap` must be a positive number (the largest gap, inference- "
            "over training-mode loss, a trial may have to rank first). "
            f"Received: max_gap={max_gap!r}"
        )


def prepare(role, hypermodel, tuner, out_dir, out, max_gap=None):
    """What a process checks before it searches, by its role; returns the
    `max_gap` in effect.

    Trials read the data, so the chief (which runs none) does not; workers
    do not own `out_dir`, so they neither claim nor check it (nor rank
    trials: `max_gap` is the chief's). A search resumed with `max_gap`
    None keeps the one in `search.json`; another value is refused.
    """
    if role == "worker":
        _wait_for_chief(out)
    if role != "chief":
        # Fail now on unreadable data, not once per trial.
        data_dir = resolve_data(hypermodel.base_config, out)
        count_split(data_dir / "train")
        count_split(data_dir / "val")
    if role != "worker":
        max_gap = _stored_max_gap(out_dir, max_gap, out)
        _claim(out_dir, _settings(hypermodel, tuner, max_gap))
        _check_state(out_dir / PROJECT)
    return max_gap


def _stored_max_gap(out_dir, max_gap, out):
    """The `max_gap` of a resumed search: the stored one if `max_gap` is
    None (said so), else `max_gap`, refused if it differs from the stored.

    A search.json without the key (a search started before kpair had
    `max_gap`) holds no constraint.
    """
    path = out_dir / SETTINGS_FILE
    if not path.exists():
        return max_gap
    stored = read_settings(path).get("max_gap")
    if max_gap is None:
        if stored is not None:
            print(f"The search in {out_dir} keeps its --max-gap {stored:g} "
                  f"(stored in {SETTINGS_FILE}).", file=out, flush=True)
        return stored
    if stored != max_gap:
        started = (f"with --max-gap {stored:g}" if stored is not None
                   else "without --max-gap")
        raise ConfigError(
            f"{out_dir} holds a search started {started}; a search keeps the "
            "constraint it started with. Resume it with the same --max-gap "
            "(or none, which keeps the stored one), or use another --out. "
            f"Received: max_gap={max_gap!r}"
        )
    return max_gap


def _wait_for_chief(out, poll_seconds=1.0):
    """Waits, saying so, until the chief's oracle server takes connections.

    keras-tuner's workers wait up to an hour for the chief without a word;
    a worker started first says what it waits for.
    """
    ip = os.environ["KERASTUNER_ORACLE_IP"]
    port = int(os.environ["KERASTUNER_ORACLE_PORT"])
    tuner_id = os.environ["KERASTUNER_TUNER_ID"]
    waiting = False
    while True:
        try:
            socket.create_connection((ip, port), timeout=5).close()
            break
        except OSError:
            if not waiting:
                print(
                    f"Worker {tuner_id}: waiting for the chief at {ip}:{port} "
                    "(a process started with KERASTUNER_TUNER_ID=chief)...",
                    file=out, flush=True,
                )
                waiting = True
            time.sleep(poll_seconds)
    if waiting:
        print(f"Worker {tuner_id}: the chief is up.", file=out, flush=True)


def _settings(hypermodel, tuner, max_gap=None):
    config = hypermodel.base_config.to_dict()
    config.pop("out")
    return {
        # The gap a trial may have to rank first; kept by resumes.
        "max_gap": max_gap,
        # Trials of one search train on one backend: its table says which.
        "backend": keras.backend.backend(),
        "tuner": tuner,
        "norms": list(hypermodel.norms),
        "batchings": list(hypermodel.batchings),
        "base_config": config,
        "kpair_version": kpair.__version__,
    }


def _claim(out_dir, settings):
    """Writes search.json, or checks that a resumed search has its settings."""
    path = out_dir / SETTINGS_FILE
    saved = claim(
        path, settings, "a search with other settings",
        "Use another --out, or the same settings to resume.",
        load=functools.partial(_saved_settings, backend=settings["backend"]),
        # The global batch is the same on any number of devices; the table
        # says, trial by trial, how many each trained on.
        resumable=("devices",),
        expand=("base_config",),
    )
    if saved is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        files.write_json(path, settings, end="")


def _saved_settings(path, backend):
    """The settings in `path`; one written before searches recorded their
    backend resumes on any, and a base config written before a field
    existed reads as that field's default (as a run's config.json does)."""
    saved = {"backend": backend, **read_settings(path)}
    if isinstance(saved.get("base_config"), dict):
        config = TrainConfig.from_dict(saved["base_config"]).to_dict()
        config.pop("out")
        saved["base_config"] = config
    return saved


def _check_state(project_dir):
    """Refuses, in one line, keras-tuner state files that do not parse.

    kpair writes them aside and renames them, so a kill cannot leave half a
    file (keras-tuner #987); a file written otherwise still might.
    """
    if not project_dir.is_dir():
        return
    for path in sorted(project_dir.glob("*.json")) + sorted(
        project_dir.glob("trial_*/trial.json")
    ):
        if files.is_partial(path):
            continue  # a write a kill cut short; the file it was to replace is whole
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"The search state file {path} is unreadable ({error}); the "
                "search cannot resume from it. Start it in another --out."
            ) from None
