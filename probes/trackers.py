"""Optional experiment trackers behind one small interface; the run directory's parquet files stay
the record, a tracker only mirrors them.

    trackers = make_trackers("tensorboard,wandb", run_dir, cfg, start_step=0)
    trackers.log(step, {"loss": 0.7, "accuracy": 0.4})   # after each evaluation
    trackers.close()                                      # at the end of the run (or `with` it)

TRACKERS maps a name of the spec (`--log-to tensorboard,wandb`) to a builder:

    tensorboard  torch.utils.tensorboard event files under RUN_DIR/tensorboard (`tensorboard --logdir
                 runs/`); needs the `tensorboard` package: pip install 'probes[track]'. A resumed run
                 (start_step = its checkpoint's step) purges the events written after that step, so
                 none is counted twice.
    wandb        Weights & Biases, when installed (pip install wandb): offline (files under RUN_DIR/wandb,
                 `wandb sync` uploads them) unless WANDB_MODE says otherwise; project $WANDB_PROJECT or
                 "probes"; the run's id comes from its directory, so a resumed run continues the same one.

A tracker that fails while logging is closed and dropped with a warning: it never ends a run.
This module imports neither torch nor a tracker package until a tracker is made.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from probes.errors import UserError

TENSORBOARD_DIR = "tensorboard"  # under the run directory
WANDB_DIR = "wandb"


class Tracker(Protocol):
    """What a run feeds a tracker: its config once, its metrics after each evaluation."""

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def log(self, step: int, metrics: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row (None, text and NaN are left out; bools are not numbers)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def config_dict(config: Any) -> dict[str, Any]:
    """A pydantic config (or a mapping) as plain JSON-able data."""
    if hasattr(config, "model_dump"):
        return config.model_dump(mode="json")
    return json.loads(json.dumps(dict(config or {}), default=str))


# === TensorBoard ===


class TensorBoardTracker:
    def __init__(self, run_dir: Path, start_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--log-to tensorboard needs the tensorboard package "
                            "(pip install tensorboard, or pip install 'probes[track]')") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR),
                                    purge_step=start_step + 1 if start_step > 0 else None)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


# === Weights & Biases ===


class WandbTracker:
    def __init__(self, run_dir: Path, start_step: int = 0):
        try:
            import wandb
        except ImportError:
            raise UserError("--log-to wandb needs the wandb package (pip install wandb)") from None
        run_dir = Path(run_dir)
        (run_dir / WANDB_DIR).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "probes"), name=run_dir.name,
                              id=run_id(run_dir), resume="allow", dir=str(run_dir / WANDB_DIR),
                              mode=os.environ.get("WANDB_MODE", "offline"))

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.run.log(scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def run_id(run_dir: Path) -> str:
    """A stable W&B run id for a run directory: a resumed run logs to the same W&B run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


TRACKERS: dict[str, Callable[..., Tracker]] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


# === Choosing and fanning out ===


def parse_spec(spec: str | Sequence[str] | None) -> list[str]:
    """"tensorboard,wandb" (or a list of names) → the tracker names, in order, once each; "" and
    "none" are no tracker. An unknown name is a UserError naming the allowed ones."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [name.strip().lower() for name in items if name.strip() and name.strip().lower() != "none"]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise UserError(f"unknown tracker '{unknown[0]}' in --log-to (allowed: {', '.join(TRACKERS)}, none; "
                        f"comma-separated)")
    return list(dict.fromkeys(names))


class Trackers:
    """Every tracker of a run as one: each call goes to each; one that fails is dropped with a warning."""

    def __init__(self, trackers: Mapping[str, Tracker]):
        self.trackers = dict(trackers)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                call(tracker)
            except Exception as err:  # noqa: BLE001 - a tracker never ends a run: parquet is the record
                warnings.warn(f"tracker {name} failed ({type(err).__name__}: {err}); it is dropped, "
                              f"the run's parquet files are unaffected", stacklevel=3)
                del self.trackers[name]
                try:
                    tracker.close()
                except Exception:  # noqa: BLE001, S110 - already broken
                    pass

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._each(lambda t: t.log_config(config))

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._each(lambda t: t.log(step, metrics))

    def close(self) -> None:
        self._each(lambda t: t.close())
        self.trackers.clear()

    def __enter__(self):  # -> Self
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_trackers(spec: str | Sequence[str] | None, run_dir: str | Path, config: Any = None,
                  start_step: int = 0) -> Trackers:
    """The trackers named by `spec` for the run in `run_dir`, each given the run's `config` (a
    pydantic model or a mapping); `start_step` is the step a resumed run goes on from (its
    checkpoint's: what was logged after it is logged again, so TensorBoard purges it). An empty
    spec is no tracker
    (a Trackers that does nothing)."""
    names = parse_spec(spec)
    made: dict[str, Tracker] = {}
    try:
        for name in names:
            made[name] = TRACKERS[name](Path(run_dir), start_step=start_step)
    except BaseException:
        Trackers(made).close()
        raise
    trackers = Trackers(made)
    if config is not None:
        trackers.log_config(config_dict(config))
    return trackers
