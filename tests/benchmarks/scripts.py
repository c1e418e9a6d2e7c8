"""Loading a script of `benchmarks/` as a module, as the tests of its
helpers do (the scripts are not a package)."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name, monkeypatch=None):
    """`benchmarks/NAME.py` as a module. With `monkeypatch`, the folder is
    put on `sys.path` first (for this test only), for a script that imports
    the scripts beside it (`bench_training`, `figures`)."""
    if monkeypatch is not None:
        monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
