"""Ray sweep backend: each run is a Ray task with fractional resources.

    probes sweep --config sweep.yaml --backend ray                       # a local Ray instance
    probes sweep --config sweep.yaml --backend ray --address HEAD:6379   # an existing cluster

Ray schedules the tasks (`cpus_per_run`, `gpus_per_run`: 0.25 packs four runs on a GPU) and
retries a task whose worker died or that ran out of GPU memory (`retries`). A retried task trains
the same run directory again (probes.sweeps.worker.run_job), so it resumes from the last checkpoint:
evaluations after that checkpoint are computed again and replace nothing twice. Skip-finished / resume semantics and
results are those of the local backend; run directories must be on storage every node sees.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from probes.errors import UserError, first_line
from probes.rundir import WORKER_PID_FILE, clear_run
from probes.sweeps.jobs import BackendOptions, Display, Job, Result, job_result, running_summary
from probes.sweeps.worker import GPUOutOfMemory, out_of_memory, run_job

__all__ = ["WORKER_PID_FILE", "RayBackend", "connect", "import_ray"]


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
    cluster otherwise ('auto' = the one started on this machine with `ray start --head`).

    Ray already initialised in this process (an earlier sweep, a notebook's ray.init) is reused
    when `address` is None or names that session's cluster. An address naming another cluster is
    a one-line UserError naming both: shutting the session down to reconnect would silently take
    its tasks, actors and objects from whatever else in this process uses it, so the caller
    decides (ray.shutdown() first, or the session's address).
    """
    ray = import_ray()
    if ray.is_initialized():
        if address is not None:
            current = _session_address(ray)
            if not _same_cluster(address, current, ray):
                here = current or _connected["asked"] or "another cluster"
                raise UserError(f"Ray in this process is already connected to {here}, "
                                f"not to --address {address}; call ray.shutdown() first, or omit --address to use it")
        return ray
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is None:
        ray.init(num_cpus=num_cpus, **quiet)
        return ray
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = first_line(err)
        raise UserError(f"cannot connect to the Ray cluster at {address}: {first}") from None
    _connected.update(asked=address, session=_session_address(ray))
    return ray


_connected: dict[str, str | None] = {"asked": None, "session": None}  # what connect() last joined


def _session_address(ray) -> str | None:
    """HOST:PORT of the cluster (its GCS) this process's Ray session is connected to."""
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - a Ray client session, say: compared by the address asked
        return None


def _same_cluster(address: str, current: str | None, ray) -> bool:
    """Whether `address` (HOST:PORT, ray://HOST:PORT or auto) names the cluster at `current`."""
    if _connected["asked"] == address and _connected["session"] == current:
        return True  # the address this session was joined with (also for ray:// clients)
    if current is None:
        return False
    if address == "auto":  # the cluster Ray recorded as started on this machine
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or ""
        except Exception:  # noqa: BLE001 - none started here (or Ray's private API moved): not the same
            return False
    if address.startswith("ray://"):
        return False  # a client server's port, not the GCS's: cannot be compared
    return _host_port(address, ray) == _host_port(current, ray)


def _host_port(address: str, ray) -> tuple[str, str]:
    """(IP or 'this machine', port) of HOST:PORT, so that localhost, 127.0.0.1 and the node's IP match."""
    host, _, port = address.rpartition(":")
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        ip = host
    try:
        node_ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001
        node_ip = None
    if ip.startswith("127.") or ip == node_ip:
        ip = "this machine"
    return ip, port


def train_task(kind: str, cfg_json: str, threads: int) -> dict:
    """Body of one Ray task: train (or resume) one run in this worker process."""
    out = Path(json.loads(cfg_json)["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / WORKER_PID_FILE).write_text(f"{os.getpid()}\n")
    # `threads`: the share of a new run; a resumed run keeps the count its config.yaml records
    try:
        return run_job(kind, cfg_json, threads)
    except Exception as err:
        if out_of_memory(err):  # Ray retries this one (retry_exceptions), as it does a worker that died
            raise GPUOutOfMemory(first_line(err)) from err
        raise


class RayBackend:
    """Submits every job as a Ray task and collects one Result per job (the local backend's format).

    Ray runs as many tasks at once as the cluster's resources allow (`jobs` only sizes a new local
    instance).
    """

    def __init__(self, options: BackendOptions):
        self.options = options

    @classmethod
    def from_options(cls, options: BackendOptions) -> RayBackend:
        return cls(options)

    def run(self, jobs: list[Job], display: Display, on_done: Callable[[Result], None] | None = None) -> list[Result]:
        o = self.options
        ray = connect(o.address, num_cpus=None if o.address else max(o.jobs, os.cpu_count() or 1))
        threads = o.threads or max(1, int(o.cpus_per_run))
        task = ray.remote(num_cpus=o.cpus_per_run, num_gpus=o.gpus_per_run, max_retries=o.retries,
                          retry_exceptions=[GPUOutOfMemory])(train_task)
        pending: dict = {}
        for job in jobs:
            if job.action == "restart":  # a failed run asked to start again: clear it once, here
                clear_run(job.dir)
            pending[task.remote(job.kind, job.cfg.model_dump_json(), threads)] = job
        results = []
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for job in pending.values():
                    if running_summary(job.dir) is not None:
                        display.add(job)
                        display.update(job)
                for ref in ready:
                    job = pending.pop(ref)
                    result = collect(ray, ref, job)
                    results.append(result)
                    display.done(job, result)
                    if on_done:
                        on_done(result)
        except BaseException:
            for ref in pending:  # unfinished runs stay resumable from their checkpoints
                ray.cancel(ref, force=True)
            raise
        return results


def collect(ray, ref, job: Job) -> Result:
    """The Result of a finished task: its summary, or why it failed."""
    try:
        summary = ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # the run raised (a UserError, a bug)
        cause = err.cause if getattr(err, "cause", None) is not None else err
        first = first_line(cause)
        return job_result(job, None, f"{type(cause).__name__}: {first}")
    except ray.exceptions.RayError as err:  # retries exhausted, cluster lost, …
        return job_result(job, None, f"{type(err).__name__}: {first_line(err)}")
    return job_result(job, summary)
