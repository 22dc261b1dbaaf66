"""The sweep backend protocol and the registry `probes sweep --backend NAME` chooses from.

A backend runs the jobs still to do and returns one Result per job; it learns about a run only
through its run directory (summary.json), so any backend that can call
probes.sweeps.worker.run_job (or start `python -m probes.sweeps.worker`) somewhere can be added:
one class with `from_options` and `run`, one line in BACKENDS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from probes.errors import UserError
from probes.sweeps.jobs import BackendOptions, Display, Job, Result
from probes.sweeps.local import LocalBackend
from probes.sweeps.ray_backend import RayBackend


class SweepBackend(Protocol):
    def run(self, jobs: list[Job], display: Display,
            on_done: Callable[[Result], None] | None = None) -> list[Result]:
        """Run (or resume) every job; one Result per job, in the order they finish."""
        ...


BACKENDS: dict[str, Callable[[BackendOptions], SweepBackend]] = {
    "local": LocalBackend.from_options,  # subprocesses on this machine
    "ray": RayBackend.from_options,  # Ray tasks on a local instance or a cluster
}


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise UserError(f"unknown sweep backend '{name}' (known: {', '.join(BACKENDS)})")


def get_backend(name: str, options: BackendOptions) -> SweepBackend:
    check_backend(name)
    return BACKENDS[name](options)
