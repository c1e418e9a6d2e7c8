"""Serving SavedModels as a client does, and comparing with Keras.

A test makes the batches a server may receive (`client_batches`), the
predictions Keras makes of them for each signature
(`expected_predictions`), serves its SavedModels in one fresh process per
oneDNN setting (`served_outputs`, which runs `saved_model_outputs.py`) and
compares (`assert_serves_like`):

    batches = client_batches(image_size=16, num_domains=2)
    expected = expected_predictions(model, batches, num_domains=2)
    for onednn in (True, False):
        served = served_outputs({"m": out_dir}, batches, tmp_path, onednn)
        assert_serves_like(served["m"], expected)
"""

import os
import subprocess
import sys
import tempfile
from itertools import product
from pathlib import Path

import numpy as np

# The issue's bound: a served prediction within 1e-4 of the predictions'
# scale of the Keras model's (folding rounds the kernels once more).
TOLERANCE = 1e-4
CHILD = Path(__file__).with_name("saved_model_outputs.py")


def client_batches(image_size, num_domains, pairs=2, seed=0):
    """`{name: features}`: the batches a server may receive.

    0 pairs; one pair (B-A); each domain alone (`only_<d>`); B-A pairs only
    and A-B pairs only (one pair type, each orientation); every
    (left domain, right domain) of the `num_domains` domains mixed, `pairs`
    of each. A batch that lacks a domain leaves that domain's folded
    backbone nothing to compute.
    """
    layouts = {
        "empty": np.zeros((0, 2), int),
        "one_pair": np.array([(1, 0)]),
        "b_a": np.repeat([(1, 0)], 3, axis=0),
        "a_b": np.repeat([(0, 1)], 3, axis=0),
        "every_mix": np.repeat(list(product(range(num_domains), repeat=2)), pairs,
                               axis=0),
    }
    for domain in range(num_domains):
        layouts[f"only_{domain}"] = np.full((3, 2), domain)
    rng = np.random.default_rng(seed)
    batches = {}
    for name, domains in layouts.items():
        count = len(domains)
        batches[name] = {
            "left": rng.random((count, image_size, image_size, 3), "float32"),
            "right": rng.random((count, image_size, image_size, 3), "float32"),
            "left_domain": domains[:, 0].astype("int32"),
            "right_domain": domains[:, 1].astype("int32"),
        }
    return batches


def expected_predictions(model, batches, num_domains):
    """`{batch: {signature: predictions}}` of a Keras pair model, for every
    signature of its export: `serve` and `serving_default` (the batch's own
    domain ids) and `serving_domain_<d>` (every id `d`). A batch of 0 pairs
    expects 0 rows (not asked of Keras, whose oneDNN kernels fail on it)."""
    rows = tuple(model.output.shape[1:])
    expected = {}
    for name, features in batches.items():
        count = len(features["left"])
        signatures = {"serve": features}
        for domain in range(num_domains):
            ids = np.full(count, domain, "int32")
            signatures[f"serving_domain_{domain}"] = dict(
                features, left_domain=ids, right_domain=ids)
        expected[name] = {
            signature: (np.asarray(model.predict_on_batch(inputs)) if count
                        else np.zeros((0, *rows), "float32"))
            for signature, inputs in signatures.items()
        }
        expected[name]["serving_default"] = expected[name]["serve"]
    return expected


def served_outputs(saved_models, batches, workdir, onednn=True):
    """Every signature of every SavedModel called on every batch, in one
    fresh process that never imports kpair.

    Args:
        saved_models: `{name: SavedModel directory}`.
        batches: `{batch name: features}` (see `client_batches`).
        workdir: A directory for the process's input and output files.
        onednn: TF_ENABLE_ONEDNN_OPTS of the process (set before TensorFlow
            is imported there); asserted to have taken effect.

    Returns:
        `{name: {batch: {signature: predictions, or the error's text}}}`.
    """
    return start_serving(saved_models, batches, workdir, onednn)()


def start_serving(saved_models, batches, workdir, onednn=True):
    """Starts `served_outputs`'s process and returns at once a function
    that waits for it and returns what `served_outputs` does: a test runs
    other processes meanwhile."""
    workdir = Path(workdir)
    tag = "onednn" if onednn else "plain"
    inputs, outputs = workdir / f"inputs_{tag}.npz", workdir / f"outputs_{tag}.npz"
    np.savez(inputs, **{f"{b}/{k}": v for b, features in batches.items()
                        for k, v in features.items()})
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1" if onednn else "0")
    wait = start_process(
        [sys.executable, str(CHILD), str(inputs), str(outputs),
         *(f"{name}={path}" for name, path in saved_models.items())], env)

    def served():
        wait()
        raw = dict(np.load(outputs))
        assert bool(raw.pop("process/onednn")) == onednn, (
            "TF_ENABLE_ONEDNN_OPTS ignored")
        assert list(raw.pop("process/kpair_modules")) == [], (
            "the client imported kpair")
        result = {name: {} for name in saved_models}
        for key, value in raw.items():
            name, batch, signature, *error = key.split("/")
            result[name].setdefault(batch, {})[signature] = (
                str(value) if error else value)
        return result

    return served


def start_process(command, env, timeout=600):
    """Starts `command`; returns a function that waits for it (at most
    `timeout` seconds) and asserts it exited 0, with the end of its output.

    The output goes to a file, not a pipe: a process that writes more than
    a pipe holds goes on while the test waits for another."""
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               text=True, env=env)

    def wait():
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        finally:
            log.seek(0)
            output = log.read()
            log.close()
        assert process.returncode == 0, output[-3000:]

    return wait


def max_differences(served, expected):
    """`({(batch, signature): max |served - expected|}, scale)`, the scale
    being the largest |prediction| of `expected` over every batch and
    signature. Asserts every signature served every batch, with the
    expected shape and no error."""
    errors = {(b, s): v for b, outputs in served.items()
              for s, v in outputs.items() if isinstance(v, str)}
    assert not errors, errors
    assert set(served) == set(expected)
    differences, scale = {}, 0.0
    for batch, signatures in expected.items():
        assert set(served[batch]) == set(signatures), batch
        for signature, want in signatures.items():
            got = served[batch][signature]
            assert got.shape == want.shape, (batch, signature, got.shape)
            differences[batch, signature] = float(np.max(np.abs(got - want),
                                                         initial=0.0))
            scale = max(scale, float(np.max(np.abs(want), initial=0.0)))
    return differences, scale


def assert_serves_like(served, expected, tolerance=TOLERANCE):
    """Every served prediction within `tolerance` times the predictions'
    scale (`max_differences`); returns `(differences, scale)`."""
    differences, scale = max_differences(served, expected)
    assert scale > 0.1, scale  # predictions that say something, not zeros
    worst = max(differences, key=differences.get)
    assert differences[worst] <= tolerance * scale, (
        worst, differences[worst], scale)
    return differences, scale
