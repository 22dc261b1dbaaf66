"""`probes sweep --backend ray`: a local Ray instance runs tiny runs into ordinary run directories,
skips finished ones, and survives a worker killed mid-run without losing or repeating evaluations."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray")

from probes.config import SweepConfig, TrainConfig  # noqa: E402
from probes.errors import UserError  # noqa: E402
from probes.sweep import VLMSweepConfig, expand_grid, run_sweep  # noqa: E402
from probes.sweep_ray import WORKER_PID_FILE, connect  # noqa: E402
from probes.train import train_run  # noqa: E402

TINY = {"max_steps": 20, "eval_every": 10, "train_size": 160, "eval_size": 32, "batch_size": 16}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    connect(None, num_cpus=2)
    yield
    ray.shutdown()


def sweep(tmp_path, **kw) -> SweepConfig:
    grid = {"model": "pythia-tiny", "n": 4, "lr": [1e-3, 2e-3], "init": "default", "seed": 0}
    return SweepConfig(**{**grid, "train": TINY, "out": tmp_path / "sweep", "backend": "ray", **kw})


def test_ray_backend_writes_the_same_run_directories_as_the_local_backend(tmp_path):
    cfg = sweep(tmp_path)
    results = run_sweep(cfg, progress=False)
    assert [r["status"] for r in results] == ["not_reached", "not_reached"]
    for run in expand_grid(cfg):
        files = {p.name for p in Path(run.out).iterdir()}
        assert {"config.yaml", "metrics.parquet", "positions.parquet", "summary.json", "checkpoint"} <= files
        assert pd.read_parquet(Path(run.out) / "metrics.parquet")["step"].tolist() == [0, 10, 20]


def test_ray_backend_skips_finished_runs(tmp_path):
    cfg = sweep(tmp_path, lr=[1e-3])
    run_sweep(cfg, progress=False)
    summary = Path(expand_grid(cfg)[0].out) / "summary.json"
    before = summary.stat().st_mtime_ns
    results = run_sweep(cfg, progress=False)
    assert results[0]["action"] == "skipped"
    assert summary.stat().st_mtime_ns == before


def test_ray_backend_runs_a_vlm_grid(tmp_path):
    train = {"instruction": "", "max_steps": 2, "stage1_steps": 1, "eval_every": 1, "batch_size": 2,
             "eval_batch_size": 4, "device": "cpu",
             "data": {"train_size": 8, "eval_size": 4, "image_size": 32, "max_objects": 2}}
    cfg = VLMSweepConfig(model="pythia-tiny", lr=1e-3, train=train, out=tmp_path / "vlm", backend="ray")
    results = run_sweep(cfg, progress=False, threads=1)
    assert [(r["action"], r["status"]) for r in results] == [("new", "not_reached")]
    run = Path(expand_grid(cfg)[0].out)
    assert (run / WORKER_PID_FILE).exists() and '"kind": "vlm"' in (run / "summary.json").read_text()
    assert pd.read_parquet(run / "metrics.parquet")["step"].tolist() == [0, 1, 2]


def test_a_killed_worker_is_retried_and_resumes_without_lost_or_duplicated_evaluations(tmp_path):
    settings = {**TINY, "max_steps": 120, "eval_every": 10, "threshold": 1.0}
    cfg = sweep(tmp_path, lr=[1e-3], train=settings)
    run = Path(expand_grid(cfg)[0].out)
    done = threading.Thread(target=run_sweep, args=(cfg,), kwargs={"progress": False})
    done.start()
    first_pid = _wait_for_progress(run, min_evaluations=3)
    os.kill(first_pid, signal.SIGKILL)
    done.join(timeout=600)
    assert not done.is_alive()

    assert int((run / WORKER_PID_FILE).read_text()) != first_pid  # another worker took over
    resumed = pd.read_parquet(run / "metrics.parquet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray worker: the same reductions, the same floats
    try:
        reference = train_run(TrainConfig(**{**expand_grid(cfg)[0].model_dump(), "out": tmp_path / "ref"}),
                              progress=False)
    finally:
        torch.set_num_threads(threads)
    uninterrupted = pd.read_parquet(tmp_path / "ref" / "metrics.parquet")
    assert resumed["step"].tolist() == list(range(0, 121, 10))  # none lost, none twice
    assert resumed["accuracy"].tolist() == uninterrupted["accuracy"].tolist()
    assert resumed["loss"].tolist() == uninterrupted["loss"].tolist()
    assert reference["status"] == "not_reached"


def _wait_for_progress(run: Path, min_evaluations: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = len(pd.read_parquet(run / "metrics.parquet"))
            if rows >= min_evaluations and (run / "checkpoint").exists():
                return int((run / WORKER_PID_FILE).read_text())
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{run} made no progress in {timeout} s")


def test_an_unreachable_address_is_one_line_error(tmp_path, cli_runner):
    from cli import app

    ray.shutdown()
    try:
        with pytest.raises(UserError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
            connect("127.0.0.1:1")
        with pytest.raises(UserError, match="is not HOST:PORT"):
            connect("nonsense")
        r = cli_runner.invoke(app, ["sweep", "--backend", "ray", "--address", "127.0.0.1:1", "--model", "pythia-tiny",
                                    "--n", "4", "--lr", "1e-3", "--init", "default", "--set", "max_steps=2",
                                    "--out", str(tmp_path / "s")])
        assert r.exit_code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in r.output
        assert r.output.strip().count("\n") == 0, r.output
    finally:
        connect(None, num_cpus=2)


def test_an_address_of_another_cluster_than_the_session_is_one_line_error(tmp_path, cli_runner):
    from cli import app

    current = ray.get_runtime_context().gcs_address
    port = current.rpartition(":")[2]
    for same in (None, current, f"127.0.0.1:{port}", f"localhost:{port}"):
        assert connect(same) is ray  # the session's own cluster: reused
    with pytest.raises(UserError, match=f"already connected to {current}, not to --address 127.0.0.1:1;"):
        connect("127.0.0.1:1")
    r = cli_runner.invoke(app, ["sweep", "--backend", "ray", "--address", "127.0.0.1:1", "--model", "pythia-tiny",
                                "--n", "4", "--lr", "1e-3", "--init", "default", "--set", "max_steps=2",
                                "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and f"already connected to {current}, not to --address 127.0.0.1:1" in r.output
    assert r.output.strip().count("\n") == 0, r.output
    assert ray.is_initialized() and ray.get_runtime_context().gcs_address == current  # left as it was


def test_missing_ray_names_the_extra_to_install(monkeypatch):
    from probes import sweep_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'probes\[ray\]'"):
        sweep_ray.import_ray()


def test_a_task_out_of_gpu_memory_raises_the_exception_ray_retries(tmp_path, monkeypatch):
    import json

    import probes.sweeps.ray_backend as backend

    def oom(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(backend, "run_job", oom)
    with pytest.raises(backend.GPUOutOfMemory, match="CUDA out of memory"):
        backend.train_task("text", json.dumps({"out": str(tmp_path / "run")}), 1)
