"""The Ray sweep backend's public names (kept for `from probes.sweep_ray import connect`);
the backend lives in probes.sweeps.ray_backend."""

from probes.sweeps.ray_backend import WORKER_PID_FILE, RayBackend, connect, import_ray

__all__ = ["WORKER_PID_FILE", "RayBackend", "connect", "import_ray"]
