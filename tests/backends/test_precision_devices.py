"""`precision="auto"` per device, and the device query of each backend."""

import sys
import types

import keras
import pytest

from kpair.config import TrainConfig
from kpair.models import precision
from kpair.models.model_builder import build_pair_model, training_model


@pytest.mark.parametrize(
    "kind, capability, flags, expected",
    [
        ("gpu", (9, 0), (), "mixed_bfloat16"),
        ("gpu", (8, 0), (), "mixed_bfloat16"),
        ("gpu", (7, 5), (), "mixed_float16"),
        ("gpu", (7, 0), ("avx512_bf16",), "mixed_float16"),
        ("gpu", (6, 1), (), "float32"),
        ("gpu", None, (), "float32"),
        ("cpu", None, ("amx_bf16",), "mixed_bfloat16"),
        ("cpu", None, ("avx2",), "float32"),
    ],
)
def test_choose_policy_is_a_pure_function(kind, capability, flags, expected):
    assert precision.choose_policy(kind, capability, flags)[0] == expected


def test_an_unknown_device_kind_is_refused():
    with pytest.raises(ValueError, match="Received: device_kind='tpu'"):
        precision.choose_policy("tpu", None, ())


def test_jax_query_reads_device_capability(monkeypatch):
    class Device:
        device_kind = "NVIDIA H200"
        compute_capability = "9.0"

    fake = types.SimpleNamespace(devices=lambda kind: [Device()])
    monkeypatch.setitem(sys.modules, "jax", fake)
    assert precision._jax_gpus() == [
        {"device_name": "NVIDIA H200", "compute_capability": (9, 0)}
    ]


def test_jax_query_without_gpu_is_empty(monkeypatch):
    def no_gpu(kind):
        raise RuntimeError("Unknown backend: 'gpu' requested")

    monkeypatch.setitem(sys.modules, "jax", types.SimpleNamespace(devices=no_gpu))
    assert precision._jax_gpus() == []


def test_torch_query_reads_device_capability(monkeypatch):
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        get_device_name=lambda i: f"card {i}",
        get_device_capability=lambda i: (7, 5) if i else (8, 6),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    gpus = precision._torch_gpus()
    assert [g["compute_capability"] for g in gpus] == [(8, 6), (7, 5)]
    assert precision.resolve_precision("auto", gpus=gpus) == "mixed_float16"


def test_mixed_float16_is_loss_scaled_and_bfloat16_is_not():
    for policy, scaled in (("mixed_float16", True), ("mixed_bfloat16", False)):
        config = TrainConfig(
            width_multiplier=0.125, image_size=16, embedding_dim=16,
            norm="batch", precision=policy,
        )
        model = training_model(build_pair_model(config), config)
        is_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert is_scaled == scaled, policy
