"""Fixtures every test directory shares: a clean Keras session, a cache that
is not $HOME, the tiny demo data set, the tiny training configuration and the
base config of a search."""

import os

# Before TensorFlow is imported anywhere: keep its start-up noise out of logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# The CPU kernels `import kpair` asks for, so tests run what users run.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import pytest  # noqa: E402

# kpair.config and kpair.data load TensorFlow (the data pipeline is tf.data):
# they are imported inside the fixtures that need them, so that test modules
# that need no TensorFlow also run where only Keras and JAX or PyTorch are
# installed (a lent GPU machine; see CONTRIBUTING.md).

# The tiny model (flax's `_ResNet1`) trained for a step or two: a run costs
# seconds, not minutes.
TINY = dict(
    width_multiplier=0.125, image_size=16, embedding_dim=16, batch_size=12,
    eval_pairs=24, epochs=1, steps_per_epoch=2,
)


def pytest_collection_modifyitems(items):
    """The longest work first: tests marked `slow` and the groups that share
    a session fixture (`xdist_group`), then the rest, each part in file order.

    `pytest -n 2 --dist loadgroup` hands out tests in this order as workers
    free up; a two-minute test started last would keep one worker busy
    while the other idles."""
    def later(item):
        marks = {mark.name for mark in item.iter_markers()}
        return not marks & {"slow", "xdist_group"}

    items.sort(key=later)  # stable: file order within each part


@pytest.fixture(autouse=True)
def _float32_policy_and_clean_session():
    """Each test starts in float32 and leaves no global policy behind."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()


@pytest.fixture(autouse=True)
def _kpair_cache(tmp_path_factory, monkeypatch):
    """No test writes into the user's cache."""
    monkeypatch.setenv("KPAIR_CACHE", str(tmp_path_factory.mktemp("kpair-cache")))


@pytest.fixture(autouse=True)
def _no_progress_lines_off_a_terminal(monkeypatch):
    """Tests that count the lines on stderr (one clear error line, none on
    success) must not depend on the machine's speed: off a terminal, kpair's
    long steps write a progress line every 30 s, which a slow or loaded
    machine reaches. None here, in this process and the commands it starts
    (they inherit the environment). The tests of `kpair.progress` pass
    `every` themselves."""
    monkeypatch.setenv("KPAIR_PROGRESS_EVERY", "inf")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The demo data set at 16 pixels, 40/12/12 training pairs per type.

    Shared by every test of the session: read it, never write into it."""
    from kpair.data import build_demo

    return build_demo(
        tmp_path_factory.mktemp("demo") / "data", image_size=16,
        pairs_per_type=(40, 12, 12),
    )


@pytest.fixture(scope="session")
def tiny_config():
    """Factory: `tiny_config(data=None, out=None, **changes)` is the
    `TrainConfig` of `TINY`, with `changes` over it (paths may be `Path`s)."""
    from kpair.config import TrainConfig

    def make(data=None, out=None, **changes):
        paths = {"data": data, "out": out}
        paths = {k: str(v) for k, v in paths.items() if v is not None}
        return TrainConfig(**{**TINY, **paths, **changes})

    return make


@pytest.fixture
def base_config(demo_data, tiny_config):
    """The base config of a search (tuning's tests and the tuner kill tests):
    one step a trial, on mixed batches."""
    return tiny_config(demo_data, norm="per-domain", batching="mixed",
                       steps_per_epoch=1)
