"""The test run is sealed from the user's machine: what passes here passes on a fresh one."""

from __future__ import annotations

import os
from pathlib import Path

from ragctx.settings import load_settings
from tests.conftest import TEST_HOME


def test_the_home_folder_and_ragctx_defaults_point_into_the_sealed_test_home():
    assert Path.home() == TEST_HOME
    defaults = load_settings()
    assert defaults.resolved_cache_dir().is_relative_to(TEST_HOME)
    assert defaults.resolved_index_dir().is_relative_to(TEST_HOME)
    assert not [v for v in os.environ if v.startswith("RAGCTX_")]
