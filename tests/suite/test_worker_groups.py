"""The suite's own machinery: `make test` runs `pytest -n 2 --dist loadgroup`,
and tests sharing an expensive session fixture (the trained models of
tests/kpair, built in minutes) are one `xdist_group` so that one worker
builds it. pytest 9.2 ignores the group suffix xdist writes into node ids:
nothing fails, each worker builds the fixture, and the suite takes minutes
longer (hence `pytest<9.2` in the test extra)."""

import subprocess
import sys
import textwrap

CONFTEST = '''
import os
import pytest

@pytest.fixture(scope="session")
def built_once():
    marker = os.path.join(os.path.dirname(__file__),
                          "built_" + os.environ.get("PYTEST_XDIST_WORKER", "main"))
    open(marker, "w").close()
'''

GROUPED = '''
import pytest
pytestmark = pytest.mark.xdist_group("{group}")

@pytest.mark.parametrize("i", range(4))
def test_uses_the_fixture(built_once, i):
    pass
'''


def test_a_group_runs_on_one_worker(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    # Two modules, one group: one worker takes both.
    for name in ("test_first.py", "test_second.py"):
        (tmp_path / name).write_text(textwrap.dedent(GROUPED.format(group="trained")))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup",
         "-p", "no:cacheprovider", "-q", "-c", str(tmp_path / "pytest.ini"),
         "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "8 passed" in result.stdout
    built = sorted(p.name for p in tmp_path.glob("built_*"))
    assert built in (["built_gw0"], ["built_gw1"]), built
