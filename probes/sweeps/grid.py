"""A sweep's grid: the sweep config from YAML (its `kind`), every grid point as a run config,
and the plan (which runs are new, resumed, started again, or skipped)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from probes.config import read_yaml, set_dotted, validate
from probes.errors import UserError
from probes.rundir import RunDirError
from probes.sweeps.jobs import Job, Result, make_result
from probes.sweeps.kinds import KINDS, get_kind, kind_of, kind_of_run

SWEEP_ADVICE = "move or remove that directory and run the sweep again"
KIND_KEY = "kind"  # top-level key of a sweep YAML: text (default) | vlm


def load_sweep_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """YAML file (optional) + dotted overrides → the sweep config of the file's `kind` (text:
    probes.config.SweepConfig, vlm: probes.sweeps.config.VLMSweepConfig); overrides win."""
    data = read_yaml(path) if path is not None else {}
    name = data.pop(KIND_KEY, "text")
    if not isinstance(name, str) or name not in KINDS:
        raise UserError(f"{KIND_KEY}: {name!r} is not a sweep kind (allowed: {', '.join(KINDS)})")
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return validate(get_kind(name).sweep_config, data)


def expand_grid(sweep) -> list:
    """Every grid point as a run config whose `out` is `sweep.out / run_name` (grid order)."""
    kind = kind_of(sweep)
    cfgs = []
    for values in itertools.product(*(getattr(sweep, k) for k in kind.grid_keys)):
        cfg = validate(kind.run_config, sweep.run_settings(dict(zip(kind.grid_keys, values))))
        cfgs.append(cfg.model_copy(update={"out": Path(sweep.out) / kind.run_name(cfg)}))
    names = [Path(c.out).name for c in cfgs]
    if len(set(names)) != len(names):  # e.g. two hf: paths that sanitise to the same name
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"two grid points share the run directory name {dup}; make the model names distinct")
    return cfgs


def plan(cfgs: list, retry_failed: bool = False) -> tuple[list[Job], list[Result]]:
    """(jobs to run, results of runs that are not run: finished ones, skipped, and damaged or
    conflicting ones, reported as failed with what to do). One bad run directory never stops
    the others."""
    jobs, skipped = [], []
    for cfg in cfgs:
        kind = kind_of_run(cfg)
        name = kind.run_name(cfg)
        try:
            state, summary = kind.inspect(cfg)
        except RunDirError as err:  # damaged, another config, another kind: report it, carry on
            skipped.append(make_result(name, cfg.out, None, "skipped", f"{err.reason}; {SWEEP_ADVICE}"))
            continue
        if state == "finished" and not (retry_failed and summary["status"] == "failed"):
            skipped.append(make_result(name, cfg.out, summary, "skipped"))
        else:
            action = {"new": "new", "resume": "resume", "finished": "restart"}[state]
            jobs.append(Job(kind.name, cfg, name, action))
    return jobs, skipped


def expected_cost(sweep, cfgs: list) -> list[str]:
    """Lines of expected GPU-hours of `cfgs`, runs of `sweep` (`probes sweep --dry-run`)."""
    return kind_of(sweep).cost(cfgs)
