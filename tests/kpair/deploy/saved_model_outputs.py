"""Calls every signature of SavedModels in a fresh process, as a client with
plain TensorFlow does (no kpair, no Keras import): `python
saved_model_outputs.py INPUTS.npz OUTPUTS.npz NAME=SAVED_MODEL ...`.

INPUTS holds batches named `<batch>/<input>`; OUTPUTS gets, for each
SavedModel, batch and signature, `<name>/<batch>/<signature>` (or the error
message under `<name>/<batch>/<signature>/error`, so that the test names
what failed), and what the process ran with: `process/onednn` (whether
TensorFlow's oneDNN optimizations are on) and `process/kpair_modules` (the
kpair modules it imported: none). `serve` takes the four inputs;
`serving_domain_<d>` takes `left`, `right`. `tests/kpair/deploy/serving.py`
runs it.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Whether oneDNN is on in this process (TF_ENABLE_ONEDNN_OPTS, else the
# CPU's default): the public API does not say.
from tensorflow.python.util import _pywrap_util_port  # noqa: E402


def main(inputs_path, outputs_path, *saved_models):
    inputs = np.load(inputs_path)
    batches = sorted({name.split("/")[0] for name in inputs.files})
    outputs = {}
    for entry in saved_models:
        model_name, _, path = entry.partition("=")
        loaded = tf.saved_model.load(path)
        for batch in batches:
            features = {name.split("/")[1]: tf.constant(inputs[name])
                        for name in inputs.files if name.startswith(batch + "/")}
            for signature, function in loaded.signatures.items():
                wanted = {k: features[k]
                          for k in function.structured_input_signature[1]}
                key = f"{model_name}/{batch}/{signature}"
                try:
                    (result,) = function(**wanted).values()
                    outputs[key] = result.numpy()
                except Exception as error:  # reported by the test, with its text
                    outputs[key + "/error"] = np.array(
                        " ".join(str(error).split())[:600])
    outputs["process/onednn"] = np.array(_pywrap_util_port.IsMklEnabled())
    outputs["process/kpair_modules"] = np.array(
        sorted(m for m in sys.modules if m.split(".")[0] == "kpair"), dtype=str)
    np.savez(outputs_path, **outputs)


if __name__ == "__main__":
    main(*sys.argv[1:])
