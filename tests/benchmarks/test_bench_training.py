"""The training benchmark runs end to end and prints a consistent table.

Tiny settings: this checks the script, not the speed (no timed assertion).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_tiny_run_writes_one_row_per_contender(tmp_path):
    out = tmp_path / "table.md"
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "bench_training.py"),
            "--sizes", "16", "--precisions", "float32", "--norms", "per-domain",
            "--repeats", "2", "--steps", "1", "--warmup", "1", "--batch-size", "4",
            "--width-multiplier", "0.125", "--no-torch", "--eigen",
            "--out", str(out),
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert table.strip() == result.stdout.strip()
    assert "oneDNN CPU kernels" in table.splitlines()[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if "| 16 (" in line]
    labels = [cells[2].strip() for cells in rows]
    # `batch`, the baseline, is always measured, first.
    assert labels == [
        "kpair `batch`", "kpair `per-domain`", "kpair `batch`, Eigen kernels",
    ]
    for cells in rows:
        ms, pairs_per_s = float(cells[3]), float(cells[4])
        assert ms > 0
        # ms is printed rounded to 1 ms, pairs/s to 0.1: 4 pairs per step.
        slowest, fastest = 4e3 / (ms + 0.5), 4e3 / max(ms - 0.5, 1e-9)
        assert slowest - 0.05 <= pairs_per_s <= fastest + 0.05
        assert float(cells[8]) > 0  # peak RSS MiB
    assert rows[0][6].strip() == "1.00x"
    assert rows[1][6].strip().endswith("x")
    assert rows[1][7].strip() == "-"  # no PyTorch column without torch


def test_ratios_pair_the_contenders_repeat_by_repeat():
    bench = load_script("bench_training")
    # Per repeat: 2x, 1x, 3x; the medians alone (4 and 4) would say 1x.
    assert bench.paired_ratio([2.0, 4.0, 30.0], [1.0, 4.0, 10.0]) == 2.0
    # A contender that failed midway: the ratio of the medians.
    assert bench.paired_ratio([2.0, 4.0], [1.0, 2.0, 3.0]) == 1.5


@pytest.mark.slow
def test_the_step_profile_names_the_convolutions_and_adds_up():
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "profile_step.py"),
            "--size", "16", "--width-multiplier", "0.125", "--batch-size", "4",
            "--warmup", "1", "--top", "50",
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "oneDNN CPU kernels" in lines[0]
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ")][1:]
    ops = {cells[0].strip(): cells for cells in rows}
    # The backbone's convolutions, forward and both gradients, as oneDNN ops.
    for op in ("_MklNativeConv2D", "_MklNativeConv2DBackpropFilter"):
        assert op in ops, sorted(ops)
    assert "Process" not in ops  # the executor's span, not a kernel
    shares = [float(cells[3].strip().rstrip("%")) for cells in rows]
    # Each share is printed rounded to 0.1%.
    assert sum(shares) == pytest.approx(100, abs=0.05 * len(shares) + 1e-6)
