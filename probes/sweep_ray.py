"""Ray backend for `probes sweep`: each run is a Ray task with fractional resources.

    probes sweep --config sweep.yaml --backend ray                       # a local Ray instance
    probes sweep --config sweep.yaml --backend ray --address HEAD:6379   # an existing cluster

Ray schedules the tasks (`cpus_per_run`, `gpus_per_run`: 0.25 packs four runs on a GPU) and
retries a task whose worker died (`retries`). A retried task calls the same `train_run` on the
same run directory, so it resumes from the last checkpoint: evaluations after that checkpoint
are computed again and replace nothing twice. Skip-finished / resume semantics and results are
those of the local backend; run directories must be on storage every node sees.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from probes.errors import UserError
from probes.rundir import WORKER_PID_FILE, clear_run, read_summary
from probes.sweep import Job, _Display, _result


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("the ray backend needs Ray: pip install 'probes[ray]'") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when nothing listens at HOST:PORT (ray.init would wait long)."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not HOST:PORT or ray://HOST:PORT (or 'auto')")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise UserError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}") from None


def connect(address: str | None = None, num_cpus: int | None = None):
    """The `ray` module, initialised: a new local instance when `address` is None, an existing
    cluster otherwise ('auto' = the one started on this machine with `ray start --head`)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    quiet = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address is None:
        ray.init(num_cpus=num_cpus, **quiet)
        return ray
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot connect to the Ray cluster at {address}: {first}") from None
    return ray


def _train_task(cfg_json: str, threads: int) -> dict:
    """Body of one Ray task: train (or resume) one run in this worker process."""
    from probes.config import TrainConfig
    from probes.train import train_run, with_threads

    cfg = with_threads(TrainConfig.model_validate_json(cfg_json), threads)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / WORKER_PID_FILE).write_text(f"{os.getpid()}\n")
    return train_run(cfg, overwrite=False, progress=False)


def run_ray(jobs_todo: list[Job], jobs: int = 1, progress: bool = True, threads: int | None = None,
            on_done: Callable[[dict], None] | None = None, total: int | None = None,
            address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
            retries: int = 3) -> list[dict]:
    """Submit every run as a Ray task and collect one result per run (local backend's format).

    `jobs` has no effect here: Ray runs as many tasks at once as the cluster's resources allow.
    """
    ray = connect(address, num_cpus=None if address else max(jobs, os.cpu_count() or 1))
    threads = threads or max(1, int(cpus_per_run))
    task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=retries)(_train_task)
    display = _Display(progress, total or len(jobs_todo), (total or len(jobs_todo)) - len(jobs_todo))
    pending: dict = {}
    for job in jobs_todo:
        if job.action == "restart":  # a failed run asked to start again: clear it once, here
            clear_run(job.dir)
        pending[task.remote(job.cfg.model_dump_json(), threads)] = job
    shown: set[str] = set()
    results = []
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for job in pending.values():
                if job.name not in shown and _started(job):
                    display.add(job)
                    shown.add(job.name)
                if job.name in shown:
                    display.update(job)
            for ref in ready:
                job = pending.pop(ref)
                result = _collect(ray, ref, job)
                results.append(result)
                if job.name not in shown:
                    display.add(job)
                display.done(job, result)
                shown.discard(job.name)
                if on_done:
                    on_done(result)
    except BaseException:
        for ref in pending:  # unfinished runs stay resumable from their checkpoints
            ray.cancel(ref, force=True)
        raise
    finally:
        display.stop()
    return results


def _started(job: Job) -> bool:
    try:
        summary = read_summary(job.dir)
    except UserError:
        return False
    return summary is not None and summary.get("status") == "running"


def _collect(ray, ref, job: Job) -> dict:
    try:
        summary = ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # the run raised (a UserError, a bug)
        cause = err.cause if getattr(err, "cause", None) is not None else err
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        return _result(job.cfg, None, job.action, f"{type(cause).__name__}: {first}")
    except ray.exceptions.RayError as err:  # retries exhausted, cluster lost, …
        return _result(job.cfg, None, job.action, f"{type(err).__name__}: {str(err).splitlines()[0]}")
    return _result(job.cfg, summary, job.action)
