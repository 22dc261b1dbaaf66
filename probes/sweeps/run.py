"""`probes sweep`: expand the grid, skip finished runs, run (or resume) the rest on a backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

from probes import locks
from probes.errors import UserError
from probes.sweeps.backend import check_backend, get_backend
from probes.sweeps.grid import expand_grid, plan
from probes.sweeps.jobs import BackendOptions, Display, Result

SWEEP_FILE = "sweep.json"


def backend_options(sweep, jobs: int, threads: int | None) -> BackendOptions:
    return BackendOptions(jobs=jobs, threads=threads, address=sweep.address, cpus_per_run=sweep.cpus_per_run,
                          gpus_per_run=sweep.gpus_per_run, retries=sweep.retries)


def run_sweep(sweep, backend: str | None = None, jobs: int | None = None, progress: bool = True,
              retry_failed: bool = False, threads: int | None = None) -> list[Result]:
    """Expand the grid, skip finished runs, run (or resume) the rest; one result per grid point.

    `sweep` is a text (probes.config.SweepConfig) or VLM (probes.sweeps.config.VLMSweepConfig)
    sweep config; `backend` and `jobs` default to its own. Failed runs are reported, not retried,
    unless `retry_failed`. Holds the sweep directory's lock; writes DIR/sweep.json (results in grid
    order) when done.
    """
    backend = backend or sweep.backend
    jobs = jobs or sweep.jobs
    check_backend(backend)
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: allowed: 1 or more threads per run")
    with locks.hold(sweep.out, what="sweep"):  # one sweep per directory; each run also holds its own
        cfgs = expand_grid(sweep)
        todo, skipped = plan(cfgs, retry_failed)
        if progress and skipped:
            from rich.console import Console

            Console(stderr=True).print(f"{len(skipped)} of {len(cfgs)} runs already finished: skipped",
                                       highlight=False)
        ran = run_jobs(todo, get_backend(backend, backend_options(sweep, jobs, threads)),
                       Display(progress, len(cfgs), len(skipped)))
        by_dir = {r["dir"]: r for r in [*skipped, *ran]}
        results = [by_dir[str(c.out)] for c in cfgs]
        write_results(Path(sweep.out), results)
        return results


def run_jobs(todo, backend, display: Display) -> list[Result]:
    if not todo:
        display.stop()
        return []
    try:
        return backend.run(todo, display)
    finally:
        display.stop()


def write_results(out: Path, results: list[Result]) -> None:
    """DIR/sweep.json, atomically."""
    tmp = out / f".{SWEEP_FILE}.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out / SWEEP_FILE)
