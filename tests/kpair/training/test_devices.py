"""`devices`: the config field, its flag, and the refusals of
`kpair.training.devices` that need no second device."""

import subprocess
import sys

import pytest

from kpair.cli import _parser
from kpair.cli.train import build_config
from kpair.config import TrainConfig
from kpair.errors import ConfigError
from kpair.training import devices
from kpair.tuning import run_search


@pytest.mark.parametrize("value", [1, 4, "all"])
def test_devices_takes_a_count_or_all(value):
    assert TrainConfig(devices=value).devices == value


@pytest.mark.parametrize("value", [0, -2, "two", 1.5, True])
def test_devices_refuses_anything_else_in_one_line(value):
    with pytest.raises(ConfigError, match=r"positive integer or 'all'. "
                       rf"Received: devices={value!r}"):
        TrainConfig(devices=value)


@pytest.mark.parametrize("flag,value", [("4", 4), ("all", "all")])
def test_the_flag_gives_a_count_or_all(flag, value):
    args = _parser().parse_args(["train", "--devices", flag, "--out", "x"])
    assert build_config(args).devices == value


def test_a_run_on_one_device_needs_no_distribution():
    assert devices.device_count(TrainConfig()) == 1


def test_more_devices_than_tensorflow_sees_are_refused():
    # The tests run on TensorFlow (tests/conftest.py), on one logical CPU.
    with pytest.raises(ConfigError, match=r"sees 1 TensorFlow device\(s\)\. "
                       "Received: devices=2"):
        devices.device_count(TrainConfig(devices=2))


def test_tensorflow_multi_worker_is_refused_pointing_to_jax(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}}')
    with pytest.raises(ConfigError, match="multi-worker.*KERAS_BACKEND=jax"):
        devices.check_backend(TrainConfig())


@pytest.mark.parametrize("batching,batch_size,count,ok", [
    ("per-type", 48, 4, True),    # 16 pairs of each type: 4 a device
    ("per-type", 48, 3, False),   # 16 do not divide among 3
    ("per-type", 50, 8, True),    # 16 of each type (48 of 50 used)
    ("mixed", 48, 3, True),
    ("mixed", 50, 4, False),
    ("balanced", 50, 4, True),    # 48 in a balanced batch
])
def test_the_global_batch_must_divide_among_the_devices(batching, batch_size,
                                                        count, ok):
    if ok:
        devices.check_batch_divides(batching, batch_size, count)
        return
    with pytest.raises(ConfigError, match=f"do not divide among {count} devices"):
        devices.check_batch_divides(batching, batch_size, count)


def test_more_devices_than_jax_sees_are_refused_on_the_command_line(tmp_path):
    """On JAX, in a process of its own (the backend is chosen at import)."""
    code = (
        "import sys; from kpair.cli import main; "
        "sys.exit(main(['train', '--devices', '64', '--epochs', '1', "
        f"'--out', {str(tmp_path / 'run')!r}]))"
    )
    env = {"KERAS_BACKEND": "jax", "PATH": "/usr/bin:/bin",
           "KPAIR_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "kpair: error" in line]
    assert len(errors) == 1, done.stderr
    assert "JAX device(s)" in errors[0] and "devices=64" in errors[0], errors
    assert not (tmp_path / "run").exists()


def test_a_search_refuses_devices_instead_of_ignoring_them(tmp_path):
    # On TensorFlow, with one CPU device: more than there are, refused before
    # the search directory exists (on JAX each trial trains data parallel).
    with pytest.raises(ConfigError,
                       match="sees 1 TensorFlow device.*Received: devices=2"):
        run_search(TrainConfig(devices=2), out_dir=tmp_path / "search",
                   max_trials=1)
    assert not (tmp_path / "search").exists()
