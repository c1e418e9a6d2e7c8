"""`benchmarks/exact_statistics.py`, the device check of the per-domain
statistics, on this CPU: plain, and under the TF32 emulation of the layer
tests, where its control (a one-hot matmul) must miss and the layer hold."""

from tests.benchmarks import scripts
from tests.layers.test_tf32_emulation import tf32  # noqa: F401  (fixture)


def load_script():
    return scripts.load_script("exact_statistics")


def table_rows(text):
    """`{check: holds}` from the printed table."""
    cells = [line.split(" | ") for line in text.splitlines()
             if line.startswith("| ") and not line.startswith("| check")]
    return {c[0][2:]: c[2].rstrip(" |") == "yes" for c in cells}


def run(tmp_path):
    out = tmp_path / "table.md"
    status = load_script().main(["--out", str(out)])
    return status, table_rows(out.read_text())


def test_every_check_holds_in_float32(tmp_path):
    status, rows = run(tmp_path)
    assert status == 0
    # Eager and compiled x 2 means x (2 affines + 1 large shape) x 4 figures;
    # 3 against Keras; 2 controls.
    assert len(rows) == 53
    assert all(rows.values()), [name for name, ok in rows.items() if not ok]


def test_reduced_precision_fails_the_control_not_the_layer(tmp_path, tf32):  # noqa: F811
    status, rows = run(tmp_path)
    control = [name for name in rows if name.startswith("control")]
    assert [rows[name] for name in control] == [False, False]
    assert status == 0
    assert all(ok for name, ok in rows.items() if name not in control)
