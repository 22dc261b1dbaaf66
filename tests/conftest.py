"""Shared test set-up: small, deterministic, CPU-only unless a test asks for CUDA."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def cli_runner():
    from typer.testing import CliRunner

    return CliRunner()
