import numpy as np
import pytest
import tensorflow as tf

from kpair.data import (
    BATCHINGS,
    DataError,
    count_split,
    make_batches,
    read_split,
    records,
    steps_per_epoch,
)
from kpair.data import batching as batching_module
from kpair.errors import ConfigError
from kpair.pair_types import TYPE_KEYS
from tests.kpair.conftest import DOMAIN_PIXEL

COUNTS = {"A-A": 7, "B-B": 8, "A-B": 10}


@pytest.fixture
def split(tiny_split):
    return tiny_split(COUNTS)


def _plain(split):
    """The same elements, as a dataset batching knows nothing about."""
    return split.dataset.map(lambda features, y: (features, y))


def _assert_domain(images, domains, domain):
    assert set(np.asarray(domains).tolist()) == {domain}
    np.testing.assert_allclose(images, DOMAIN_PIXEL[domain] / 255, atol=1e-6)


@pytest.mark.parametrize("plain", [False, True])
def test_per_type_batches_hold_one_pair_type_each(split, plain):
    ds = read_split(split, 8)
    # Both paths: filtering serialized records (the Split from read_split) and
    # filtering decoded elements (any other dataset).
    assert ds.counts == COUNTS
    ds = _plain(ds) if plain else ds
    batches = list(make_batches(ds, "per-type", 7, seed=1))
    # 2 pairs per type; A-A (7 pairs) runs out first.
    assert len(batches) == steps_per_epoch(COUNTS, "per-type", 7) == 3
    for features, y in batches:
        assert sorted(features) == sorted(
            f"{p}_{k}"
            for p in TYPE_KEYS
            for k in ("left", "right", "left_domain", "right_domain")
        )
        assert features["aa_left"].shape == (2, 8, 8, 3)
        assert y.shape == (6, 2)
        assert y[:, 1].numpy().tolist() == [0, 0, 1, 1, 2, 2]
        for prefix, (left, right) in zip(TYPE_KEYS, [(0, 0), (1, 1), (0, 1)]):
            _assert_domain(
                features[f"{prefix}_left"], features[f"{prefix}_left_domain"], left
            )
            _assert_domain(
                features[f"{prefix}_right"], features[f"{prefix}_right_domain"], right
            )


def test_balanced_batches_have_equal_type_counts(split):
    ds = read_split(split, 8)
    batches = list(make_batches(ds, "balanced", 6, seed=0))
    assert len(batches) == steps_per_epoch(COUNTS, "balanced", 6) == 3
    grouped = 0
    targets = set()
    for features, y in batches:
        types = y[:, 1].numpy().astype(int)
        assert np.bincount(types, minlength=3).tolist() == [2, 2, 2]
        grouped += types.tolist() == sorted(types.tolist())
        # Rows stay aligned after the shuffle: each row's images and domains
        # agree with its pair type.
        expected_right = np.where(types == 0, 0, 1)
        assert features["right_domain"].numpy().tolist() == expected_right.tolist()
        for row, kind in enumerate(types):
            left = 1 if kind == 1 else 0
            _assert_domain(features["left"][row], [features["left_domain"][row]], left)
        targets |= set(y[:, 0].numpy().tolist())
    assert grouped < len(batches)  # rows are shuffled, not left in type order
    assert len(targets) == 18  # no pair twice in one epoch


def test_mixed_batches_hold_all_pairs(split):
    ds = read_split(split, 8)
    batches = list(make_batches(ds, "mixed", 5, seed=0))
    assert len(batches) == steps_per_epoch(COUNTS, "mixed", 5) == 5
    targets = np.concatenate([y[:, 0].numpy() for _, y in batches])
    assert sorted(targets.tolist()) == list(range(25))
    types = np.concatenate([y[:, 1].numpy() for _, y in batches])
    assert set(types.tolist()) == {0.0, 1.0, 2.0}
    assert not np.array_equal(targets, np.sort(targets))
    assert sorted(batches[0][0]) == ["left", "left_domain", "right", "right_domain"]

    spec = make_batches(ds, "mixed", 4).element_spec
    assert spec[0]["left"].shape == (4, 8, 8, 3) and spec[1].shape == (4, 2)
    partial = list(make_batches(ds, "mixed", 4, drop_remainder=False))
    assert partial[-1][1].shape == (1, 2)


@pytest.mark.parametrize("batching", BATCHINGS)
def test_same_seed_same_batches_and_repeat(split, batching):
    ds = read_split(split, 8)

    def targets(seed, repeat=False, take=-1):
        batches = make_batches(ds, batching, 6, seed=seed, repeat=repeat).take(take)
        return [y[:, 0].numpy().tolist() for _, y in batches]

    first = targets(0)
    assert first == targets(0)
    assert first != targets(5)
    steps = steps_per_epoch(COUNTS, batching, 6)
    assert len(targets(0, repeat=True, take=3 * steps)) == 3 * steps
    if batching != "mixed":
        static = make_batches(ds, batching, 6, repeat=True).element_spec[1]
        assert static.shape == (6, 2)


@pytest.mark.parametrize("batching", BATCHINGS)
def test_every_iterator_yields_the_same_batches_whatever_others_read(
    split, batching
):
    # Keras makes one more iterator of the training batches under a
    # distribution, and reads ahead: a run's batches must not depend on it.
    batches = make_batches(read_split(split, 8), batching, 6, seed=0, repeat=True)
    steps = steps_per_epoch(COUNTS, batching, 6)

    def targets(iterator, count):
        return [next(iterator)[1].numpy().tolist() for _ in range(count)]

    first = targets(iter(batches), 3 * steps)
    assert targets(iter(batches), 1) == first[:1]
    # Passes part: each is shuffled anew.
    assert first[:steps] != first[steps:2 * steps]
    # A fresh iterator after others have run, and read, over several passes.
    assert targets(iter(batches), 3 * steps) == first
    # So does a rebuilt pipeline.
    again = make_batches(read_split(split, 8), batching, 6, seed=0, repeat=True)
    assert targets(iter(again), 3 * steps) == first


@pytest.mark.parametrize("batching", ["per-type", "balanced"])
@pytest.mark.parametrize("plain", [False, True])
def test_missing_pair_type_is_named(tiny_split, batching, plain):
    path = tiny_split({"A-A": 4, "A-B": 4})
    ds = read_split(path, 8)
    ds = _plain(ds) if plain else ds
    with pytest.raises(DataError, match="has no B-B pairs"):
        make_batches(ds, batching, 6)
    # Mixed batches need no particular type.
    assert len(list(make_batches(ds, "mixed", 4))) == 2


def test_unknown_batching_lists_valid_names(split):
    ds = read_split(split, 8)
    with pytest.raises(ValueError) as info:
        make_batches(ds, "shuffled", 6)
    message = str(info.value)
    assert "Expected one of 'per-type', 'mixed', 'balanced'" in message
    assert "Received: batching='shuffled'" in message
    with pytest.raises(ValueError, match="Received: batch_size=2"):
        make_batches(ds, "per-type", 2)
    with pytest.raises(ValueError, match="Received: batching='x'"):
        steps_per_epoch(COUNTS, "x", 6)


def test_steps_per_epoch(split):
    counts = count_split(split)
    assert counts == COUNTS
    assert steps_per_epoch(counts, "mixed", 4) == 6
    assert steps_per_epoch(counts, "per-type", 9) == 2
    assert steps_per_epoch(counts, "balanced", 8) == 3  # 2 of each type
    assert steps_per_epoch({"A-A": 100, "A-B": 100}, "per-type", 3) == 0


def _arrays(batch):
    return tf.nest.map_structure(lambda t: np.asarray(t), batch)


@pytest.mark.parametrize("batching", BATCHINGS)
@pytest.mark.parametrize("count", [2, 3])
def test_process_shares_put_back_in_order_are_the_global_batches(
    demo_data, batching, count
):
    # Each process's rows of every global batch, concatenated process after
    # process as a data-parallel step's global arrays are: the same bits.
    pairs = read_split(demo_data / "train", 16)
    whole = [_arrays(b) for b in make_batches(pairs, batching, 18, seed=4)]
    shares = [
        [_arrays(b) for b in make_batches(pairs, batching, 18, seed=4,
                                          share=(index, count))]
        for index in range(count)
    ]
    assert whole and all(len(s) == len(whole) for s in shares)
    for step, batch in enumerate(whole):
        parts = [share[step] for share in shares]
        joined = tf.nest.map_structure(
            lambda *t: np.concatenate(t, axis=0), *parts)
        tf.nest.assert_same_structure(joined, batch)
        for got, want in zip(tf.nest.flatten(joined), tf.nest.flatten(batch)):
            np.testing.assert_array_equal(got, want)
        # Each process holds its equal part of every tensor.
        for part in parts:
            for got, want in zip(tf.nest.flatten(part), tf.nest.flatten(batch)):
                assert got.shape[0] * count == want.shape[0]


@pytest.mark.parametrize("batching", BATCHINGS)
def test_a_process_decodes_only_its_rows(demo_data, batching, monkeypatch):
    pairs = read_split(demo_data / "train", 16)
    decoded = tf.Variable(0, dtype=tf.int64)

    def counting_decode(serialized, image_size):
        with tf.control_dependencies([decoded.assign_add(1)]):
            features, y = records.decode_pair(serialized, image_size)
            return tf.nest.map_structure(tf.identity, (features, y))

    monkeypatch.setattr(batching_module, "decode_pair", counting_decode)
    counts = {}
    for share in (None, (0, 2), (1, 2)):
        decoded.assign(0)
        batches = list(make_batches(pairs, batching, 18, seed=1, share=share))
        rows = sum(len(y) for _, y in batches)
        counts[share] = int(decoded.numpy()), rows
    steps = steps_per_epoch(pairs.counts, batching, 18)
    pairs_a_step = 18 if batching == "mixed" else 3 * (18 // 3)
    assert counts[None] == (steps * pairs_a_step, steps * pairs_a_step)
    for share in ((0, 2), (1, 2)):
        # Every pair of its rows decoded once, no other: half the work.
        assert counts[share] == (steps * pairs_a_step // 2,) * 2


def test_a_share_that_does_not_divide_the_batch_is_refused(demo_data):
    pairs = read_split(demo_data / "train", 16)
    with pytest.raises(ConfigError, match="does not divide among 4 processes"):
        make_batches(pairs, "per-type", 18, share=(0, 4))
    for share in ((2, 2), (0,), "0/2"):
        with pytest.raises(ConfigError, match="0 <= index < count"):
            make_batches(pairs, "mixed", 18, share=share)
    with pytest.raises(ConfigError, match="Only full batches of a `Split`"):
        make_batches(pairs.dataset, "mixed", 18, share=(0, 2))
