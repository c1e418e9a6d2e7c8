"""`python -m tests.kpair.pretrained.pretrained_backend_checks STATE FEATURES`:
a backbone from a torchvision-layout state dict (symmetric padding, input
normalization) on the backend of `KERAS_BACKEND`; its pooled features must
equal those the TensorFlow process saved in FEATURES (an .npz with `images`
and `features`)."""

import sys

import keras
import numpy as np

import kpair

SIZE = 32


def features(state_path, images):
    backbone = kpair.pretrained_backbone(
        f"torchvision:{state_path}", norm="per-domain", image_size=SIZE
    )
    pooled = keras.Model(backbone.inputs, backbone.get_layer("pool").output)
    domains = np.array([0, 1], "int32")
    return keras.ops.convert_to_numpy(pooled([images, domains], training=False))


if __name__ == "__main__":
    state, saved = sys.argv[1:3]
    expected = np.load(saved)
    got = features(state, expected["images"])
    difference = np.abs(got - expected["features"]).max()
    scale = np.abs(expected["features"]).max()
    assert difference <= 1e-5 * scale, (difference, scale)
    print(f"pretrained backbone on {keras.backend.backend()}: "
          f"{difference / scale:.2e} relative")
