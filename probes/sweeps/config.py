"""The VLM sweep config: a grid model × encoder × connector × scan × layout × lr × seed of
`probes vlm train` runs (probes.vlm.config.VLMTrainConfig); `train` holds every other setting.

The text sweep's config is probes.config.SweepConfig; a sweep YAML picks this one with the
top-level key `kind: vlm` (probes.sweeps.grid.load_sweep_config). Where and how the runs are
run (`out`, `backend`, `jobs`, the Ray settings) are SweepConfig's fields, declared there once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from probes.config import Config, SweepConfig, as_list, check_grid
from probes.vlm.config import Layout, VLMTrainConfig

VLM_GRID_KEYS = ("model", "encoder", "connector", "scan", "layout", "lr", "seed")  # the keys of a VLM run name
_S = SweepConfig.model_fields


def _one(name: str):
    """The grid default of a key: [the run config's default]."""
    default = VLMTrainConfig.model_fields[name].default
    return Field(default_factory=lambda: [default], min_length=1)


class VLMSweepConfig(Config):
    """A grid of VLM runs. Each grid key takes one value or a list; a key left out is the run
    config's default. A grid varies only keys that name a run (VLM_GRID_KEYS), so every grid
    point gets its own run directory."""

    model: list[str] = _one("model")
    encoder: list[str] = _one("encoder")
    connector: list[str] = _one("connector")
    scan: list[str | None] = _one("scan")
    layout: list[Layout] = _one("layout")
    lr: list[float] = _one("lr")
    seed: list[int] = _one("seed")
    train: dict[str, Any] = Field(default_factory=dict, description="VLMTrainConfig settings shared by every run")
    out: Path = Field(Path("runs/vlm"), description="sweep directory: one run directory per grid point")
    backend: str = _S["backend"]
    jobs: int = _S["jobs"]
    address: str | None = _S["address"]
    cpus_per_run: float = _S["cpus_per_run"]
    gpus_per_run: float = _S["gpus_per_run"]
    retries: int = _S["retries"]

    @field_validator(*VLM_GRID_KEYS, mode="before")
    @classmethod
    def _one_value_or_a_list(cls, value: Any) -> Any:
        return as_list(value)

    @model_validator(mode="after")
    def _grid_and_settings_are_valid(self) -> VLMSweepConfig:
        check_grid(self, VLM_GRID_KEYS, VLMTrainConfig, [k for k in self.train if k in (*VLM_GRID_KEYS, "out")])
        return self

    def run_settings(self, point: dict[str, Any]) -> dict[str, Any]:
        """VLMTrainConfig data of one grid point: `train`, then the point's values."""
        return {**self.train, **point}
