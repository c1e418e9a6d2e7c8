"""Fixtures for the fault-injection tests: the tuning tests' tiny demo data."""

import pytest

from tests.tuning.conftest import demo_data, tiny_config  # noqa: F401


@pytest.fixture(autouse=True)
def _kpair_cache(tmp_path_factory, monkeypatch):
    """No test writes into the user's cache."""
    monkeypatch.setenv("KPAIR_CACHE", str(tmp_path_factory.mktemp("kpair-cache")))
