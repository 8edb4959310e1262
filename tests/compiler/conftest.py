"""Shared fixtures: every compiler test writes its tile cache into a temporary directory."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NPAS_CACHE_DIR", str(tmp_path / "npas-cache"))
