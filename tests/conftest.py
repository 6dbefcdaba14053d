"""Test-wide settings: a private expert cache, no stray data dir, quiet thread spinning."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EXMODEL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "expert-cache"))
    monkeypatch.delenv("EXMODEL_DATA_DIR", raising=False)
