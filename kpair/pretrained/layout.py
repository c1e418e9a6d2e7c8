"""kpair's backbone layout, which every source is converted into: its block
names, and the gathering of a source's convolutions and norms under kpair's
layer names (`Pretrained.params`)."""

import keras
import numpy as np

from kpair.models.backbone import BLOCKS_PER_STAGE


def block_names():
    """`(kpair block name, stage index 1-4, block index 1-2)` in order."""
    return [
        (f"stage{stage}_block{block}", stage, block)
        for stage, blocks in enumerate(BLOCKS_PER_STAGE, start=1)
        for block in range(1, blocks + 1)
    ]


def gather(conv, norm, stem, prefix, parts):
    """kpair's backbone params, each read from a source by `conv` or `norm`
    under its name there: `stem` (conv, norm), then for each block
    `prefix(stage, block)` followed by `parts[kpair's part]`."""
    params = {"stem_conv": conv(stem[0]), "stem_norm": norm(stem[1])}
    for name, stage, block in block_names():
        kinds = ["conv1", "norm1", "conv2", "norm2"]
        if _has_shortcut(stage, block):
            kinds += ["shortcut_conv", "shortcut_norm"]
        for kind in kinds:
            read = norm if "norm" in kind else conv
            params[f"{name}_{kind}"] = read(prefix(stage, block) + parts[kind])
    return params


def _has_shortcut(stage, block):
    return stage > 1 and block == 1


def to_numpy(variable):
    """A Keras variable's value as a float32 NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype="float32")
