"""Run kinds a sweep can hold: what differs between a grid of text runs and one of VLM runs.

Each kind names its sweep config, its run config, its grid keys and four functions: the run
name, the state of a run directory (new / resume / finished), training one run (the one place
that calls the kind's public run function) and the expected cost. torch is imported only when
one of those functions runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from probes import rundir
from probes.config import GRID_KEYS, SweepConfig, TrainConfig
from probes.errors import UserError
from probes.sweeps.config import VLM_GRID_KEYS, VLMSweepConfig
from probes.vlm.config import VLMTrainConfig


@dataclass(frozen=True)
class RunKind:
    name: str
    sweep_config: type
    run_config: type
    grid_keys: tuple[str, ...]
    run_name: Callable[[Any], str]
    inspect: Callable[[Any], tuple[str, dict | None]]  # ('new' | 'resume' | 'finished', summary)
    train: Callable[[Any, bool, int], dict]  # (cfg, overwrite, CPU threads of a new run) → summary
    cost: Callable[[list], list[str]]  # lines of expected GPU-hours


# === text runs (probes.train) ===


def text_run_name(cfg: TrainConfig) -> str:
    from probes.train import run_name

    return run_name(cfg)


def text_inspect(cfg: TrainConfig) -> tuple[str, dict | None]:
    from probes.train import inspect_run

    return inspect_run(cfg)


def text_train(cfg: TrainConfig, overwrite: bool, threads: int) -> dict:
    from probes.train import train_run

    # `threads`: the share of a new run; a resumed run keeps the count its config.yaml records
    return train_run(cfg, overwrite=overwrite, progress=False, default_threads=threads)


def text_cost(cfgs: list[TrainConfig]) -> list[str]:
    from probes.sweeps.cost import describe_cost

    return describe_cost(cfgs)


# === VLM runs (probes.vlm.train) ===


def vlm_run_name(cfg: VLMTrainConfig) -> str:
    from probes.vlm.train import run_name

    return run_name(cfg)


def vlm_inspect(cfg: VLMTrainConfig) -> tuple[str, dict | None]:
    from probes.vlm.train import RESUMABLE_CHANGES, run_dir

    return rundir.inspect_run(cfg, run_dir(cfg), RESUMABLE_CHANGES)


def vlm_train(cfg: VLMTrainConfig, overwrite: bool, threads: int) -> dict:
    from probes.vlm.train import run_dir, train_vlm

    if cfg.threads == "auto":  # as text runs: a new run takes `threads`, a resumed one its recorded count
        run = run_dir(cfg)
        recorded = rundir.recorded_threads(run) if not overwrite else None
        cfg = cfg.model_copy(update={"threads": recorded or threads})
    return train_vlm(cfg, overwrite=overwrite)


def vlm_cost(cfgs: list[VLMTrainConfig]) -> list[str]:
    return ["expected GPU-hours: unknown (`probes bench` has no figures for VLM runs)"]


KINDS: dict[str, RunKind] = {
    "text": RunKind("text", SweepConfig, TrainConfig, GRID_KEYS, text_run_name, text_inspect, text_train, text_cost),
    "vlm": RunKind("vlm", VLMSweepConfig, VLMTrainConfig, VLM_GRID_KEYS, vlm_run_name, vlm_inspect, vlm_train,
                   vlm_cost),
}


def get_kind(name: str) -> RunKind:
    if name not in KINDS:
        raise UserError(f"unknown sweep kind '{name}' (known: {', '.join(KINDS)})")
    return KINDS[name]


def kind_of(sweep: Any) -> RunKind:
    """The kind whose sweep config `sweep` is."""
    for kind in KINDS.values():
        if type(sweep) is kind.sweep_config:
            return kind
    raise TypeError(f"not a sweep config: {type(sweep).__name__}")


def kind_of_run(cfg: Any) -> RunKind:
    """The kind whose run config `cfg` is."""
    for kind in KINDS.values():
        if type(cfg) is kind.run_config:
            return kind
    raise TypeError(f"not a run config: {type(cfg).__name__}")
