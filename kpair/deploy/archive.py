"""A SavedModel of serving functions whose graphs are traced once each.

`keras.export.ExportArchive.write_out` traces every endpoint twice: once to
list the variables its graph uses (outside TensorFlow's save context), and
again inside `tf.saved_model.save`, whose save context is part of the
tracing cache's key (`tf.function` re-creates its concrete functions for
serialization on purpose). Tracing a ResNet's serving function is most of
an export's time. `Archive` keeps what `ExportArchive` writes for a Keras
model on TensorFlow - the variables of every tracked layer (all of them,
as `ExportArchive` lists them too), one `tf.function` per endpoint with its
input signature, the first endpoint also as `serving_default` - and lets
`tf.saved_model.save` trace each endpoint, once, in its save context.

What it does not do: look for TensorFlow resources (lookup tables) in the
tracked layers; a kpair pair model holds none.
"""

import keras
import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"


class Archive:
    """Layers whose variables a SavedModel holds, and its endpoints."""

    def __init__(self):
        self._root = tf.__internal__.tracking.AutoTrackable()
        self._root.variables = []
        self._root.trainable_variables = []
        self._root.non_trainable_variables = []
        self._endpoints = {}

    def track(self, layer):
        """Saves `layer`'s variables (a built Keras layer or model)."""
        if not isinstance(layer, keras.layers.Layer) or not layer.built:
            raise ValueError(f"A built Keras layer is tracked. Received: {layer!r}")
        self._root.variables += layer.variables
        self._root.trainable_variables += layer.trainable_variables
        self._root.non_trainable_variables += layer.non_trainable_variables

    def add_endpoint(self, name, fn, input_signature):
        """Serves `fn` (TensorFlow ops on `input_signature`'s tensors) as
        signature and function `name`; traced when written."""
        if name in self._endpoints or name == DEFAULT_SIGNATURE:
            raise ValueError(f"Endpoint name {name!r} is taken.")
        function = tf.function(fn, input_signature=input_signature,
                               autograph=False)
        setattr(self._root, name, function)
        self._endpoints[name] = function

    def write_out(self, path):
        """Writes the SavedModel to `path` (a new or empty directory)."""
        if not self._endpoints:
            raise ValueError("An archive without endpoints is not written.")
        signatures = dict(self._endpoints)
        signatures[DEFAULT_SIGNATURE] = next(iter(self._endpoints.values()))
        tf.saved_model.save(self._root, str(path), signatures=signatures)
