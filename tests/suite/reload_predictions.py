"""Reloads `model.keras` files on the Keras backend of this process and
predicts batches, as a user's own code does after `import kpair`:
`KERAS_BACKEND=jax python reload_predictions.py INPUTS.npz OUTPUTS.npz
NAME=MODEL.keras ...`.

INPUTS holds batches named `<batch>/<input>` (`tests/kpair/deploy/
serving.client_batches`); OUTPUTS gets `<name>/<batch>` (the inference-mode
predictions, 0 rows for a batch of 0 pairs) or the error's text under
`<name>/<batch>/error`, and `process/backend`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kpair  # noqa: E402,F401  (registers kpair's layers for loading)


def main(inputs_path, outputs_path, *models):
    inputs = np.load(inputs_path)
    batches = sorted({name.split("/")[0] for name in inputs.files})
    outputs = {"process/backend": np.array(keras.backend.backend())}
    for entry in models:
        name, _, path = entry.partition("=")
        try:
            model = keras.saving.load_model(path, safe_mode=True)
        except Exception as error:  # reported by the test, with its text
            outputs[f"{name}/load/error"] = np.array(_short(error))
            continue
        for batch in batches:
            features = {key.split("/")[1]: inputs[key] for key in inputs.files
                        if key.startswith(batch + "/")}
            try:
                outputs[f"{name}/{batch}"] = keras.ops.convert_to_numpy(
                    model(features, training=False))
            except Exception as error:  # reported by the test, with its text
                outputs[f"{name}/{batch}/error"] = np.array(_short(error))
    np.savez(outputs_path, **outputs)


def _short(error):
    return " ".join(f"{type(error).__name__}: {error}".split())[:600]


if __name__ == "__main__":
    main(*sys.argv[1:])
