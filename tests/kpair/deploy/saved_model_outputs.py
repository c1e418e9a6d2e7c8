"""Calls every signature of a SavedModel in a fresh process, as a client
with plain TensorFlow does (no kpair, no Keras import): `python
saved_model_outputs.py SAVED_MODEL INPUTS.npz OUTPUTS.npz`.

INPUTS holds batches named `<batch>/<input>`; OUTPUTS gets, for each batch
and signature, `<batch>/<signature>` (or the error message under
`<batch>/<signature>/error`, so that the test names what failed).
`serve` takes the four inputs; `serving_domain_<d>` takes `left`, `right`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(saved_model, inputs_path, outputs_path):
    loaded = tf.saved_model.load(saved_model)
    inputs = np.load(inputs_path)
    batches = sorted({name.split("/")[0] for name in inputs.files})
    outputs = {}
    for batch in batches:
        features = {name.split("/")[1]: tf.constant(inputs[name])
                    for name in inputs.files if name.startswith(batch + "/")}
        for signature, function in loaded.signatures.items():
            wanted = {k: features[k] for k in function.structured_input_signature[1]}
            key = f"{batch}/{signature}"
            try:
                (result,) = function(**wanted).values()
                outputs[key] = result.numpy()
            except Exception as error:  # reported by the test, with its text
                outputs[key + "/error"] = np.array(" ".join(str(error).split())[:600])
    np.savez(outputs_path, **outputs)


if __name__ == "__main__":
    main(*sys.argv[1:])
