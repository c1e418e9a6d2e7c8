"""What `pip install .` installs: kpair alone, with its layers and tuner inside.

The layers and the tuner live at the top of the repository, but a generic
top-level `layers` or `tuning` would be shadowed by (or shadow) a user's own
module of that name.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

# One worker builds the wheel for both tests.
pytestmark = pytest.mark.xdist_group("wheel")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools, nothing downloaded.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--no-build-isolation", "--wheel-dir", str(out), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    (path,) = out.glob("kpair-*.whl")
    return path


def test_the_wheel_holds_only_the_kpair_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.startswith("kpair-")}
    assert top == {"kpair"}, top
    for module in ("kpair/layers/__init__.py", "kpair/layers/registry.py",
                   "kpair/tuning/__init__.py", "kpair/tuning/search.py",
                   "kpair/data/__init__.py", "kpair/cli/__init__.py"):
        assert module in names, module


def test_installed_kpair_has_no_generic_import_names(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    # Outside the repository, the installed copy first on the path.
    script = (
        "import importlib.util as u\n"
        "print(u.find_spec('layers'), u.find_spec('tuning'))\n"
        "import kpair.layers, kpair.tuning\n"
        "print(kpair.layers.__file__)\n"
        "print(kpair.tuning.__file__)\n"
        "import keras\n"
        "print(keras.saving.get_registered_name("
        "kpair.layers.PerDomainBatchNormalization))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
        text=True, timeout=600,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "None None", lines
    assert lines[1].startswith(str(target / "kpair" / "layers")), lines
    assert lines[2].startswith(str(target / "kpair" / "tuning")), lines
    # Saved models name their layers as before the move.
    assert lines[3] == "kpair>PerDomainBatchNormalization", lines
