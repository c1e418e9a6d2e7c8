"""`precision="auto"`: every branch of the choice, driven by fake machines."""

import pytest

from kpair.config import ConfigError, TrainConfig
from kpair.models import precision
from kpair.models.precision import describe_precision, read_cpu_flags, resolve_precision

NO_GPU = []
NO_FLAGS = {"sse4_2", "avx2", "fma"}


def gpu(major, minor):
    return {"device_name": "fake", "compute_capability": (major, minor)}


@pytest.fixture
def no_detection(monkeypatch):
    """Fails a test that looks at the real machine."""

    def refuse(*args, **kwargs):
        raise AssertionError("looked at the real machine")

    monkeypatch.setattr(precision, "detect_gpus", refuse)
    monkeypatch.setattr(precision, "read_cpu_flags", refuse)


@pytest.mark.parametrize("name", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_a_policy_name_is_kept_without_looking_at_the_machine(name, no_detection):
    assert resolve_precision(name) == name


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'auto'.*Received: precision='float16'"):
        resolve_precision("float16", gpus=NO_GPU, cpu_flags=NO_FLAGS)


@pytest.mark.parametrize(
    "gpus, expected",
    [
        ([gpu(7, 0)], "mixed_float16"),
        ([gpu(7, 5)], "mixed_float16"),
        ([gpu(9, 0), gpu(8, 0)], "mixed_bfloat16"),
        # The slowest GPU decides: a Turing card among Ampere ones.
        ([gpu(8, 6), gpu(7, 5)], "mixed_float16"),
        ([gpu(6, 1)], "float32"),
        # One old GPU among new ones: it would slow every step down.
        ([gpu(8, 0), gpu(6, 1)], "float32"),
        # No capability reported (not CUDA): no claim of fast float16.
        ([{"device_name": "other"}], "float32"),
    ],
)
def test_auto_on_gpus(gpus, expected):
    assert resolve_precision("auto", gpus=gpus, cpu_flags=NO_FLAGS) == expected


def test_auto_follows_the_gpu_not_the_cpu_when_there_is_a_gpu():
    flags = NO_FLAGS | {"avx512_bf16"}
    assert resolve_precision("auto", gpus=[gpu(7, 0)], cpu_flags=flags) == (
        "mixed_float16"
    )
    assert resolve_precision("auto", gpus=[gpu(6, 0)], cpu_flags=flags) == "float32"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (NO_FLAGS | {"avx512_bf16"}, "mixed_bfloat16"),
        (NO_FLAGS | {"amx_bf16", "amx_tile"}, "mixed_bfloat16"),
        (NO_FLAGS | {"avx512f", "avx512_vnni"}, "float32"),
        (NO_FLAGS, "float32"),
        (set(), "float32"),
    ],
)
def test_auto_on_cpus(flags, expected):
    assert resolve_precision("auto", gpus=NO_GPU, cpu_flags=flags) == expected


def test_the_printed_line_names_the_choice_and_why():
    line = describe_precision(
        "auto", gpus=NO_GPU, cpu_flags={"avx512_bf16", "amx_bf16"}
    )
    assert line == (
        "precision auto -> mixed_bfloat16 (CPU with native bfloat16: "
        "avx512_bf16/amx_bf16)"
    )
    line = describe_precision("auto", gpus=[gpu(8, 6)], cpu_flags=NO_FLAGS)
    assert line == "precision auto -> mixed_bfloat16 (GPU with compute capability 8.6)"
    assert "float32" in describe_precision("auto", gpus=NO_GPU, cpu_flags=NO_FLAGS)


def test_auto_without_inputs_asks_the_machine(monkeypatch):
    monkeypatch.setattr(precision, "detect_gpus", lambda: [])
    monkeypatch.setattr(precision, "read_cpu_flags", lambda: {"amx_bf16"})
    assert resolve_precision("auto") == "mixed_bfloat16"


def test_the_real_machine_gives_a_policy():
    assert resolve_precision("auto") in precision.POLICIES


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Fake CPU\n"
        "flags\t\t: fpu sse2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert read_cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert read_cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert read_cpu_flags(tmp_path / "absent") == set()


def test_config_keeps_auto_and_still_rejects_unknown_names():
    config = TrainConfig(precision="auto")
    assert TrainConfig.from_dict(config.to_dict()).precision == "auto"
    assert TrainConfig().precision == "float32"
    with pytest.raises(ConfigError, match="'auto'"):
        TrainConfig(precision="bfloat16")


@pytest.mark.parametrize(
    "flags, expected",
    [([], "auto"), (["--precision", "mixed_float16"], "mixed_float16")],
)
def test_kpair_train_defaults_to_auto(flags, expected):
    from kpair.cli import _parser
    from kpair.cli.train import build_config

    config = build_config(_parser().parse_args(["train", *flags]))
    assert config.precision == expected


def test_a_saved_config_keeps_its_precision(tmp_path):
    from kpair.cli import _parser
    from kpair.cli.train import build_config

    path = tmp_path / "config.json"
    path.write_text('{"precision": "float32"}')
    config = build_config(_parser().parse_args(["train", "--config", str(path)]))
    assert config.precision == "float32"


def test_an_auto_config_builds_a_model_in_the_resolved_policy(monkeypatch,
                                                              tiny_config):
    from kpair.models.model_builder import build_pair_model

    monkeypatch.setattr(precision, "detect_gpus", lambda: [])
    monkeypatch.setattr(precision, "read_cpu_flags", lambda: {"avx512_bf16"})
    config = tiny_config(precision="auto", embedding_dim=8, image_size=8)
    model = build_pair_model(config)
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert model.backbone.dtype_policy.name == "mixed_bfloat16"


@pytest.mark.slow
def test_a_run_prints_auto_keeps_it_in_config_and_records_the_policy(
    tmp_path, monkeypatch, capsys, tiny_config
):
    import json

    from kpair.data import build_demo
    from kpair.training.trainer import train

    monkeypatch.setattr(precision, "detect_gpus", lambda: [])
    monkeypatch.setattr("kpair.training.trainer.detect_gpus", lambda: [])
    monkeypatch.setattr(precision, "read_cpu_flags", lambda: {"amx_bf16"})
    data = build_demo(tmp_path / "data", image_size=8, pairs_per_type=(12, 12, 12))
    config = tiny_config(
        data, tmp_path / "run", precision="auto", batching="mixed",
        steps_per_epoch=1, batch_size=6, eval_pairs=6, image_size=8,
        embedding_dim=8,
    )
    metrics = train(config)
    printed = capsys.readouterr().out
    assert "precision auto -> mixed_bfloat16 (CPU with native bfloat16: amx_bf16)" in (
        printed
    )
    assert "precision=mixed_bfloat16" in printed
    assert metrics["precision"] == "mixed_bfloat16"
    # The tests load TensorFlow with oneDNN asked for, as `import kpair` does.
    assert "CPU kernels: oneDNN" in printed
    assert metrics["onednn"] is True
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["precision"] == (
        "mixed_bfloat16"
    )
    assert json.loads((run / "config.json").read_text())["precision"] == "auto"
