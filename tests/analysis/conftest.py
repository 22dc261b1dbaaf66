"""Fixtures of tests/analysis: run directories made by the real training code, once per session."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # synthetic.py, realruns.py

from realruns import make_fixture_runs


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> Path:
    """2 models × 2 layouts × 2 lrs of tiny runs trained by probes.train.train_run."""
    return make_fixture_runs(tmp_path_factory)
