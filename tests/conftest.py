"""Shared test set-up: small, deterministic, CPU-only unless a test asks for CUDA."""

import contextlib
import os
import signal
import subprocess
import time

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def cli_runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def plot_files():
    """plot_files(formats, prefix): the sorted names of the files `probes plot` writes for one kind of run:
    curves, heatmap, efficiency and learning_order in each format, and the efficiency figure's numbers as CSV.
    `prefix` is the VLM runs' "vlm-" beside text runs. One list, so that a new output changes one place."""

    def names(formats=("png", "pdf"), prefix=""):
        kinds = ("curves", "heatmap", "efficiency", "learning_order")
        figures = [f"{prefix}{k}.{ext}" for k in kinds for ext in formats]
        return sorted(figures + [f"{prefix}efficiency.csv", f"{prefix}efficiency_summary.csv"])

    return names


# === offline hub (tests of hf: loading without network) ===


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to resolve a host or open a connection is recorded and fails at once."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def checkpoint_steps(monkeypatch) -> list[int]:
    """The step of every checkpoint the engine saves from now on (each one still written)."""
    from probes import engine

    real, steps = engine.save_checkpoint, []

    def save(run, bb, state):
        steps.append(state["step"])
        real(run, bb, state)

    monkeypatch.setattr(engine, "save_checkpoint", save)
    return steps


# === kill a run mid-way (resume tests) ===


@pytest.fixture
def kill_after_checkpoint():
    """kill_after_checkpoint(cmd, run_dir, step=30): start `cmd`, wait until RUN_DIR/checkpoint/state.pt holds a step
    of at least `step`, then SIGKILL the process, the way a crash or an out-of-memory kill stops a run."""

    def kill(cmd, run_dir, step=30, timeout=240):
        import torch

        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state = run_dir / "checkpoint" / "state.pt"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists():
                with contextlib.suppress(Exception):  # being replaced right now: look again
                    if torch.load(state, weights_only=True)["step"] >= step:
                        break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    return kill
