"""A search written before a config field existed resumes, as a run does."""

import json

import pytest

from kpair.config import ConfigError
from kpair.tuning import PairHyperModel, search_directory


def test_a_search_saved_without_newer_fields_resumes(base_config, tmp_path):
    settings = search_directory._settings(PairHyperModel(base_config), "random")
    older = json.loads(json.dumps(settings))
    for field in ("statistics", "precise_images"):
        del older["base_config"][field]
    (tmp_path / search_directory.SETTINGS_FILE).write_text(json.dumps(older))
    search_directory._claim(tmp_path, settings)  # was: ConfigError

    # Not a blanket pass: a field saved with another value is still refused.
    older["base_config"]["learning_rate"] = 0.5
    (tmp_path / search_directory.SETTINGS_FILE).write_text(json.dumps(older))
    with pytest.raises(ConfigError, match="other settings"):
        search_directory._claim(tmp_path, settings)
