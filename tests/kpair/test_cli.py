"""The kpair command as a user runs it: real processes, exit codes, output."""

import csv
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
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


def test_train_evaluate_predict_and_load_in_a_fresh_process(demo_data, tmp_path):
    out = tmp_path / "run"
    result = run(["train", "--data", demo_data, "--out", out, "--epochs", "1",
                  "--norm", "per-domain", *TINY_FLAGS])
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout and "(inference mode)" in result.stdout
    # TensorFlow's start-up noise stays out of the CLI's output.
    assert "cuda" not in result.stderr.lower() and "absl" not in result.stderr

    result = run(["evaluate", out, "--split", "val", "--json"])
    assert result.returncode == 0, result.stderr
    import json

    scores = json.loads(result.stdout)
    assert set(scores) >= {"A-A", "B-B", "A-B", "total"}
    result = run(["evaluate", out, "--json", "--mode", "batch-stats"])
    batch_stats = json.loads(result.stdout)
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
    result = run(["predict", out / "model.keras", "--pairs", pairs, "--root", root,
                  "--out", preds_csv])
    assert result.returncode == 0, result.stderr
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
    assert_clean_error(result, 2, "row 2", "row 3")
    assert not out.exists()
