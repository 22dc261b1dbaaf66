"""Sweeps (SPEC §6): a grid of runs → one run directory each, on a backend.

    from probes.sweep import load_sweep_config, run_sweep

    sweep = load_sweep_config("configs/ci-tiny.yaml")          # kind: text (default) | vlm
    results = run_sweep(sweep, backend="local", jobs=2)

Finished runs are skipped, unfinished ones resume from their checkpoints, new ones start; a
damaged run directory is reported (failed, with what to do) and the others go on.

Modules (data flows down this list; none imports one above it):

    config.py       VLMSweepConfig (the text sweep's is probes.config.SweepConfig)
    kinds.py        KINDS: text | vlm (run config, grid keys, run name, state, train, cost)
    jobs.py         Job, Result, Display, BackendOptions: the types every backend shares
    cost.py         expected GPU-hours of text runs (`--dry-run`)
    grid.py         load_sweep_config, expand_grid, plan
    worker.py       run_job / `python -m probes.sweeps.worker`: one run in one process
    local.py        LocalBackend: worker subprocesses, `jobs` at a time
    ray_backend.py  RayBackend: Ray tasks
    backend.py      SweepBackend (protocol), BACKENDS (registry)
    run.py          run_sweep

probes.sweep re-exports the public names; this package imports nothing itself, so that
`python -m probes.sweeps.worker` loads only what a worker needs.
"""
