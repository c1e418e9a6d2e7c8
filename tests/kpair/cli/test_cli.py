"""The kpair command as a user runs it: real processes, exit codes, output."""

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

KPAIR = [sys.executable, "-m", "kpair.cli"]
TINY_FLAGS = [
    "--width-multiplier", "0.125", "--image-size", "16", "--batch-size", "12",
    "--steps-per-epoch", "2", "--eval-pairs", "24", "--embedding-dim", "16",
    "--batching", "mixed",
]


def run(args, env_extra=None, timeout=600):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        KPAIR + [str(a) for a in args], capture_output=True, text=True,
        timeout=timeout, env=env,
    )


def assert_clean_error(result, code, *needles):
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_norm_lists_valid_names(tmp_path):
    result = run(["train", "--norm", "instance", "--out", tmp_path / "r"])
    assert_clean_error(result, 2, "Received: norm='instance'", "'per-domain'",
                       "'batch-renorm'")


def test_bad_batch_size_is_one_line(tmp_path):
    result = run(["train", "--batch-size", "0", "--out", tmp_path / "r"])
    assert_clean_error(result, 2, "batch_size")


def test_truncated_shard_names_the_file(demo_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    shard = sorted((data / "train").glob("*.tfrecord"))[0]
    shard.write_bytes(shard.read_bytes()[:-7])
    result = run(["train", "--data", data, "--out", tmp_path / "r", *TINY_FLAGS])
    assert_clean_error(result, 2, shard.name)


def run_here(args, capsys):
    """`kpair ARGS` in this process, through the `main` that `python -m
    kpair.cli` calls: its exit code and stdout. No TensorFlow start-up per
    command (several seconds each)."""
    from kpair.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.mark.slow
def test_train_evaluate_predict_export_and_load_in_a_fresh_process(demo_data,
                                                                   tmp_path,
                                                                   capsys):
    """`kpair train` in its own process, and the model it saved loaded in
    another; evaluate, predict and export in this one (`run_here`)."""
    out = tmp_path / "run"
    result = run(["train", "--data", demo_data, "--out", out, "--epochs", "1",
                  "--norm", "per-domain", *TINY_FLAGS])
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout and "(inference mode)" in result.stdout
    # TensorFlow's start-up noise stays out of the CLI's output.
    assert "cuda" not in result.stderr.lower() and "absl" not in result.stderr

    scores = json.loads(run_here(["evaluate", out, "--split", "val", "--json"],
                                 capsys))
    assert set(scores) >= {"A-A", "B-B", "A-B", "total"}
    batch_stats = json.loads(run_here(
        ["evaluate", out, "--json", "--mode", "batch-stats"], capsys))
    assert batch_stats["pairs"] == scores["pairs"]

    # A CSV of pairs over images on disk.
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        for side in ("l", "r"):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), "uint8")).save(
                root / f"{side}{i}.png"
            )
        rows.append({"left": f"l{i}.png", "right": f"r{i}.png",
                     "left_domain": i % 2, "right_domain": 1})
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    preds_csv = tmp_path / "preds.csv"
    run_here(["predict", out / "model.keras", "--pairs", pairs, "--root", root,
              "--out", preds_csv], capsys)
    with open(preds_csv, newline="") as f:
        preds = [float(r["prediction"]) for r in csv.DictReader(f)]
    assert len(preds) == 5

    # The same predictions from a fresh process that only imports kpair.
    script = textwrap.dedent(
        f"""
        import os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import numpy as np, keras, tensorflow as tf
        import kpair
        from kpair.data.records import decode_image
        model = keras.saving.load_model({str(out / "model.keras")!r})
        root = {str(root)!r}
        load = lambda name: decode_image(tf.io.read_file(os.path.join(root, name)), 16)
        feats = {{
            "left": np.stack([load(f"l{{i}}.png") for i in range(5)]),
            "right": np.stack([load(f"r{{i}}.png") for i in range(5)]),
            "left_domain": np.array([i % 2 for i in range(5)], "int32"),
            "right_domain": np.ones(5, "int32"),
        }}
        print(" ".join(f"{{p:.8g}}" for p in model.predict(feats, verbose=0)[:, 0]))
        """
    )
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True,
                           text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    np.testing.assert_allclose(
        [float(v) for v in fresh.stdout.split()], preds, rtol=1e-5, atol=1e-6
    )

    # `kpair export` from the command line: a SavedModel that plain
    # TensorFlow loads and that serves model.keras's predictions, for pairs
    # of every domain combination in one batch and for each domain's own
    # signature.
    served_dir = tmp_path / "served"
    run_here(["export", out / "model.keras", "--out", served_dir], capsys)
    assert (served_dir / "saved_model.pb").is_file()
    import keras
    import tensorflow as tf

    import kpair  # noqa: F401  (registers kpair's classes for load_model)

    model = keras.saving.load_model(out / "model.keras")
    served = tf.saved_model.load(str(served_dir))
    domains = np.repeat([(0, 0), (0, 1), (1, 0), (1, 1)], 3, axis=0)
    feats = {
        "left": rng.random((12, 16, 16, 3), "float32"),
        "right": rng.random((12, 16, 16, 3), "float32"),
        "left_domain": domains[:, 0].astype("int32"),
        "right_domain": domains[:, 1].astype("int32"),
    }
    expected = model.predict(feats, verbose=0)
    assert np.ptp(expected) > 0  # predictions that differ, not a constant
    np.testing.assert_allclose(served.serve(feats).numpy(), expected, rtol=1e-5,
                               atol=1e-6)
    for domain in (0, 1):
        ids = np.full(12, domain, "int32")
        expected = model.predict(dict(feats, left_domain=ids, right_domain=ids),
                                 verbose=0)
        serve_domain = getattr(served, f"serving_domain_{domain}")
        np.testing.assert_allclose(
            serve_domain(feats["left"], feats["right"]).numpy(), expected,
            rtol=1e-5, atol=1e-6)


def test_evaluate_refuses_a_file_that_is_not_a_keras_model(tmp_path):
    bogus = tmp_path / "model.keras"
    bogus.write_text("not a model")
    assert_clean_error(run(["evaluate", bogus]), 2, "model.keras")
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n")
    assert_clean_error(run(["evaluate", h5]), 2, ".keras")


def test_data_import_reports_bad_rows_and_writes_nothing(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(root / "a.png")
    (root / "bad.png").write_bytes(b"nope")
    text = io.StringIO()
    text.write("left,right,left_domain,right_domain,target\n")
    text.write("a.png,a.png,0,0,0.5\n")
    text.write("a.png,missing.png,0,1,1\n")
    text.write("a.png,bad.png,x,1,1\n")
    (tmp_path / "pairs.csv").write_text(text.getvalue())
    out = tmp_path / "out"
    result = run(["data", "import", "--pairs", tmp_path / "pairs.csv", "--root", root,
                  "--out", out])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # One line that says what happened, then one line per bad row.
    lines = result.stderr.splitlines()
    assert "3 problem(s)" in lines[0] and "nothing was written" in lines[0]
    assert lines[1].startswith("  row 2:") and "missing.png" in lines[1]
    # Row 3 has two problems: an image that does not decode, a bad domain.
    assert [line[:8] for line in lines[2:]] == ["  row 3:"] * 2, lines
    assert not out.exists()


# --- the vocabulary: flags generated from TrainConfig, parsed without training ---


def parsers():
    """`{command: parser}` of every subcommand, `data import` and `data demo`
    included."""
    from kpair.cli import _parser

    def children(parser):
        actions = [a for a in parser._actions
                   if isinstance(a, argparse._SubParsersAction)]
        return actions[0].choices if actions else {}

    found = {}
    for name, sub in children(_parser()).items():
        found[name] = sub
        for child, subsub in children(sub).items():
            found[f"{name} {child}"] = subsub
    return found


def flags(parser):
    return {a.option_strings[0]: a for a in parser._actions
            if a.option_strings and a.dest not in ("help", "version")}


def test_every_flag_has_help_and_the_config_flags_are_shared():
    from kpair.config import TrainConfig

    found = parsers()
    assert {"train", "compare", "tune", "evaluate", "data import"} <= set(found)
    for name, parser in found.items():
        for flag, action in flags(parser).items():
            assert action.help, f"kpair {name} {flag} has no help"
            if not action.required:
                assert "default" in action.help, f"kpair {name} {flag}"
    config_flags = {
        name: {f: (a.default, a.help, a.metavar) for f, a in flags(found[name]).items()
               if a.container.title == "configuration"}
        for name in ("train", "compare", "tune")
    }
    assert config_flags["train"] == config_flags["compare"] == config_flags["tune"]
    # One flag per field (but out, which each command owns), same defaults.
    fields = {f.replace("_", "-") for f in TrainConfig.__dataclass_fields__}
    names = {f.removeprefix("--") for f in config_flags["train"]}
    assert names == (fields - {"out", "norm-options"}) | {
        "norm-option", "config", "print-config"}
    assert "(default: auto)" in config_flags["train"]["--precision"][1]
    assert "per-domain,group" in flags(found["train"])["--norm"].metavar
    batch_sizes = {flags(found[n])["--batch-size"].help for n in found
                   if "--batch-size" in flags(found[n])}
    assert all("(default: 48" in text for text in batch_sizes), batch_sizes


@pytest.mark.parametrize("argv", [
    ["train", "--learning", "0.1"],
    ["compare", "--batch", "per-type"],
    ["tune", "--max-tri", "3"],
    ["data", "import", "--over", "--pairs", "p", "--root", "r", "--out", "o"],
])
def test_an_abbreviated_flag_is_refused(argv, capsys):
    from kpair.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def printed_config(argv, capsys):
    from kpair.cli import main

    assert main([*map(str, argv), "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("command", ["train", "compare", "tune"])
def test_print_config_resolves_flags_without_running(command, tmp_path, capsys):
    printed = printed_config(
        [command, "--norm", "group", "--norm-option", "groups=4", "--losses",
         "l1,hinge,hinge", "--deterministic", "--out", str(tmp_path / "o")], capsys)
    assert printed["norm"] == "group" and printed["norm_options"] == {"groups": 4}
    assert printed["losses"] == ["l1", "hinge", "hinge"]
    assert printed["deterministic"] is True and printed["precision"] == "auto"
    assert printed["batch_size"] == 48
    assert not (tmp_path / "o").exists()


def test_runs_without_out_get_a_fresh_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "batch-mixed-1").mkdir(parents=True)
    printed = printed_config(["train", "--norm", "batch", "--batching", "mixed"],
                             capsys)
    assert printed["out"] == str(Path("runs") / "batch-mixed-2")


def test_a_saved_config_does_not_write_into_its_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    from kpair.config import TrainConfig

    old = tmp_path / "runs" / "pd"
    old.mkdir(parents=True)
    saved = old / "config.json"
    saved.write_text(json.dumps(TrainConfig(out=str(old), epochs=3).to_dict()))
    printed = printed_config(["train", "--config", saved, "--epochs", "30"], capsys)
    assert printed["out"] == str(Path("runs") / "per-domain-per-type-1")
    assert printed["epochs"] == 30
    # --resume, or the same --out, continues the old run.
    printed = printed_config(["train", "--config", saved, "--resume"], capsys)
    assert printed["out"] == str(old) and printed["epochs"] == 3
    printed = printed_config(["train", "--config", saved, "--out", old], capsys)
    assert printed["out"] == str(old)


def test_resume_without_a_config_names_the_flags(capsys):
    from kpair.cli import main

    assert main(["train", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--config" in err[0] and "--out" in err[0], err


# --- errors in the user's words --------------------------------------------


@pytest.mark.parametrize("flags_of, expected", [
    (["--batching"], "Use --batching mixed or add"),
    ([], "Use kpair train --batching mixed or add"),
])
def test_advice_names_flags_not_python_arguments(flags_of, expected):
    from kpair.cli import _in_flag_words

    text = _in_flag_words(
        "batching='per-type' needs pairs of every type. Use batching='mixed' or "
        "add the missing pair type. Received: batching='per-type'", flags_of)
    assert expected in text
    # What the user gave stays quoted as given.
    assert text.endswith("Received: batching='per-type'")
    assert "batching='mixed'" not in text


def test_library_argument_names_become_their_flags():
    from kpair.cli import _in_flag_words

    text = _in_flag_words(
        "runs/c already holds a comparison (2 cell(s) in runs/c/cells). Pass "
        "resume=True to finish it, or use another `out_dir`.",
        frozenset({"--resume", "--out"}))
    assert text.endswith("Pass --resume to finish it, or use another --out.")
    # Not a flag of this command: left in the library's words.
    assert "`out_dir`" in _in_flag_words("use another `out_dir`.", frozenset())


def test_data_import_refuses_an_existing_out_naming_overwrite(tmp_path, capsys):
    from kpair.cli import main

    root = tmp_path / "img"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(root / "a.png")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("left,right,left_domain,right_domain,target,split\n"
                     "a.png,a.png,0,0,0.5,train\n")
    out = tmp_path / "out"
    out.mkdir()
    argv = ["data", "import", "--pairs", str(pairs), "--root", str(root),
            "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err, err
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "train").is_dir()


def test_many_bad_rows_are_listed_up_to_a_limit():
    from kpair.cli import MAX_LISTED_LINES, _lines
    from kpair.errors import DataError

    problems = [f"row {n}: bad" for n in range(1, 31)]
    lines = _lines(DataError("pairs.csv: 30 problem(s)\n" + "\n".join(problems)))
    lines = lines.splitlines()
    assert len(lines) == MAX_LISTED_LINES + 2
    assert lines[1] == "  row 1: bad" and lines[-1].endswith("10 more line(s)")
    # One problem stays one line.
    assert _lines(DataError("pairs.csv: 1 problem(s)\nrow 4: bad")) == (
        "pairs.csv: 1 problem(s) row 4: bad")


def test_evaluate_says_when_it_falls_back_to_the_demo_data(tmp_path, capsys):
    import zipfile

    from kpair.cli import main
    from kpair.config import TrainConfig

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with zipfile.ZipFile(run_dir / "model.keras", "w") as archive:
        archive.writestr("config.json", "{}")  # refused when loaded
    (run_dir / "config.json").write_text(json.dumps(TrainConfig().to_dict()))
    assert main(["evaluate", str(run_dir)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "using the built-in demo data set" in err[0], err


# --- start-up: --help and --version without the framework --------------------


def _imported_modules(args):
    """Runs `python -X importtime ARGS` in a fresh process: (result, modules)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args],
                            capture_output=True, text=True, timeout=600)
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:") and line.count("|") == 2}
    return result, modules


@pytest.mark.parametrize("args", [["--version"], ["--help"], []])
def test_version_and_help_in_fresh_processes_load_no_framework(args):
    import kpair

    result, modules = _imported_modules(["-m", "kpair", *args])
    assert "kpair.cli" in modules, result.stderr[-2000:]
    heavy = sorted(m for m in modules if m.split(".")[0] in (
        "tensorflow", "keras", "keras_tuner", "jax", "torch", "numpy"))
    assert not heavy, heavy[:10]
    # Nor the config, the norm registry or the tuner: no command's flags.
    assert not {"kpair.config", "kpair.layers", "kpair.tuning"} & modules
    if args == ["--version"]:
        assert result.returncode == 0
        assert result.stdout.strip() == f"kpair {kpair.__version__}", result
    else:
        assert "train a pair model" in result.stdout, result
        assert result.returncode == (0 if args else 2)


def test_the_installed_command_answers_version():
    command = Path(sys.executable).with_name("kpair")
    result = subprocess.run([str(command), "--version"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.startswith("kpair "), result


def test_backend_cannot_switch_once_keras_is_loaded(monkeypatch, capsys):
    import keras

    from kpair.cli import main

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    other = "jax" if keras.backend.backend() != "jax" else "torch"
    assert main(["train", "--backend", other, "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot switch" in err and f"Received: --backend {other}" in err
    assert "KERAS_BACKEND" not in os.environ
