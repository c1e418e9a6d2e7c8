"""Fixtures for kpair tests: tiny pair splits, and two trained tiny models."""

import io

import numpy as np
import pytest
from PIL import Image

from kpair.data import Pair, build_demo, write_split
from kpair.training.trainer import train

# Pixel value of every image of a domain in `tiny_split`: a batch's images
# then show which domain they came from.
DOMAIN_PIXEL = {0: 51, 1: 204}  # 0.2 and 0.8 after scaling to [0, 1]
# "B-A" pairs are of pair type A-B, with the domains the other way round.
TYPE_DOMAINS = {"A-A": (0, 0), "B-B": (1, 1), "A-B": (0, 1), "B-A": (1, 0)}


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def tiny_split(tmp_path):
    """Factory: writes a split with `counts` pairs per type; returns its path.

    Images are `size` x `size`, uniformly `DOMAIN_PIXEL[domain]`; the target
    of the i-th pair is i, so pairs can be told apart.
    """

    def make(counts, name="train", size=8, records_per_shard=5):
        images = {
            d: png_bytes(np.full((size, size, 3), v)) for d, v in DOMAIN_PIXEL.items()
        }
        pairs = []
        for kind, count in counts.items():
            left, right = TYPE_DOMAINS[kind]
            for _ in range(count):
                pairs.append(Pair(images[left], images[right], left, right, len(pairs)))
        # Interleave the types as a real split would be.
        order = np.random.default_rng(0).permutation(len(pairs))
        path = tmp_path / "data" / name
        write_split([pairs[i] for i in order], path, records_per_shard)
        return path

    return make


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_config):
    """A batch-norm model trained on per-type batches, and a per-domain one."""
    root = tmp_path_factory.mktemp("diag")
    data = build_demo(root / "data", image_size=16, pairs_per_type=(120, 30, 30))
    # Longer than TINY's run: the diagnosis wants models that learned.
    longer = dict(
        batch_size=24, epochs=3, steps_per_epoch=10, eval_pairs=48,
        learning_rate=3e-3, norm_options={"momentum": 0.9},
    )
    train(tiny_config(data, root / "bug", norm="batch", batching="per-type",
                      **longer))
    # Mixed batches trace faster; per-domain statistics do not care.
    train(tiny_config(data, root / "fixed", norm="per-domain", batching="mixed",
                      **longer))
    return root
