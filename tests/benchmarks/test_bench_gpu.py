"""The GPU benchmark's smoke mode runs on a CPU, without TensorFlow.

Trimmed to one size, one precision, kpair's stock batch norm beside eager
PyTorch, and XLA at optimization level 0 (it compiles faster on a CPU):
this checks the script, not the speed (no timed assertion).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_mode_measures_each_contender(tmp_path):
    out = tmp_path / "table.md"
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke",
            "--sizes", "16", "--precisions", "float32",
            "--contenders", "batch,torch-eager", "--out", str(out),
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
             "XLA_FLAGS": "--xla_backend_optimization_level=0",
             "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_text().strip() == result.stdout.strip()
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines()
            if line.startswith("| 16 ")]
    assert [cells[2].strip() for cells in rows] == ["batch", "torch-eager"]
    for cells in rows:
        assert "failed" not in cells[3], cells
        assert float(cells[3].replace(",", "")) > 0
    # Each ratio to stock batch norm, the baseline of the table.
    assert rows[0][4].strip() == "1.00x"
