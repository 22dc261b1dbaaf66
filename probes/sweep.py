"""Sweeps: the public names of probes.sweeps (grid, kinds, backends, run_sweep) in one place.

    sweep = load_sweep_config("configs/ci-tiny.yaml")     # or SweepConfig(...) / VLMSweepConfig(...)
    results = run_sweep(sweep, backend="local", jobs=2)

See probes/sweeps/__init__.py for the map of the package.
"""

from probes.sweeps.backend import BACKENDS, SweepBackend, check_backend, get_backend
from probes.sweeps.config import VLM_GRID_KEYS, VLMSweepConfig
from probes.sweeps.cost import BENCH_MACHINE, BENCH_TOKENS_PER_S, bench_key, describe_cost, run_gpu_hours
from probes.sweeps.grid import KIND_KEY, SWEEP_ADVICE, expand_grid, expected_cost, load_sweep_config, plan
from probes.sweeps.jobs import BackendOptions, Display, Job, Result, describe, make_result
from probes.sweeps.kinds import KINDS, RunKind
from probes.sweeps.local import LocalBackend, last_error, stop_worker
from probes.sweeps.run import SWEEP_FILE, run_sweep

__all__ = ["BACKENDS", "BENCH_MACHINE", "BENCH_TOKENS_PER_S", "KINDS", "KIND_KEY", "SWEEP_ADVICE", "SWEEP_FILE",
           "VLM_GRID_KEYS", "BackendOptions", "Display", "Job", "LocalBackend", "Result", "RunKind",
           "SweepBackend", "VLMSweepConfig", "bench_key", "check_backend", "describe", "describe_cost",
           "expand_grid", "expected_cost", "get_backend", "last_error", "load_sweep_config", "make_result", "plan",
           "run_gpu_hours", "run_sweep", "stop_worker"]
