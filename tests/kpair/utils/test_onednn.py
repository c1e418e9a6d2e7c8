"""kpair asks for TensorFlow's oneDNN CPU kernels before TensorFlow loads."""

import os
import subprocess
import sys
from pathlib import Path

from kpair.utils import tensorflow_setup as onednn


def test_it_is_asked_for_when_unset_and_tensorflow_not_loaded():
    environ, modules = {}, {"numpy": object()}
    assert onednn.request_onednn(environ, modules) is True
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}


def test_the_users_own_setting_stands():
    environ = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert onednn.request_onednn(environ, {}) is False
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "0"}


def test_nothing_is_set_once_tensorflow_is_loaded():
    environ = {}
    assert onednn.request_onednn(environ, {"tensorflow": object()}) is False
    assert environ == {}


def test_the_printed_line_says_which_kernels_and_why():
    assert onednn.describe_cpu_kernels(True, {}) == "CPU kernels: oneDNN"
    assert onednn.describe_cpu_kernels(False, {"TF_ENABLE_ONEDNN_OPTS": "0"}) == (
        "CPU kernels: Eigen (TF_ENABLE_ONEDNN_OPTS=0)"
    )
    late = onednn.describe_cpu_kernels(False, {})
    assert late.startswith("CPU kernels: Eigen (TensorFlow was imported before kpair")
    assert "TF_ENABLE_ONEDNN_OPTS=1" in late


def _in_fresh_python(code, **env):
    environ = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    environ.update(env, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ,
        cwd=Path(__file__).resolve().parents[3], check=True,
    )
    return result.stdout.split()


def test_import_kpair_turns_onednn_on_unless_told_otherwise():
    code = (
        "import os, kpair; from kpair.utils.tensorflow_setup import onednn_enabled; "
        "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], onednn_enabled())"
    )
    assert _in_fresh_python(code) == ["1", "True"]
    assert _in_fresh_python(code, TF_ENABLE_ONEDNN_OPTS="0") == ["0", "False"]


def test_import_tuning_loads_tensorflow_through_kpair():
    # keras_tuner imports keras, which would load TensorFlow first.
    code = (
        "import kpair.tuning; from kpair.utils.tensorflow_setup import onednn_enabled; "
        "print(onednn_enabled())"
    )
    assert _in_fresh_python(code) == ["True"]
