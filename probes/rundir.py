"""Run directories (SPEC §6): the files one run writes, and how a run starts, resumes and ends.

Text runs (probes.train) and VLM runs (probes.vlm.train) share this format, so `analysis/` reads
both with the same loaders; the names below are probes.schema's:

    config.yaml        the run's config (TrainConfig, VLMTrainConfig), written first
    metrics.parquet    one row per evaluation (the trainer's METRIC_COLUMNS)
    positions.parquet  one row per evaluation × position (POSITION_COLUMNS)
    summary.json       kind (probe | vlm | pretrain), status (running | reached | not_reached |
                       failed) and the outcome (run_summary)
    checkpoint/        the latest state: the model (save_pretrained) and state.pt (step, optimizer,
                       RNG, the record of evaluations so far: new_record)
    train.log, worker.pid   written by sweep workers (probes.sweep, probes.sweep_ray), not the run

Lifecycle: `inspect_run(cfg, run)` says what the directory holds for `cfg`:

    new       absent, empty, or only worker files: start_run_dir writes config.yaml and the run
              starts at step 0
    resume    an unfinished run of the same config (settings in `resumable` may differ): it goes on
              from latest_checkpoint, restore_record dropping rows written after that checkpoint
              (or from step 0 when it was killed before its first checkpoint)
    finished  summary.json says reached, not_reached or failed: the trainer refuses to run it again
              (describe_finished) unless asked to overwrite, which starts it as new: start_run_dir
              removes what the run wrote (clear_run) and nothing else

Anything else (a directory of other files, an unfinished run of another config, a damaged
config.yaml, summary.json or checkpoint) is a UserError that names --overwrite where it helps.
Trainers (probes.train, probes.vlm.train) decide with `start_state(cfg, run, resumable,
overwrite)`: 'new' or 'resume', where overwrite turns a finished, damaged or different run into new.

Writes are atomic: metrics, positions, summary and checkpoint state go to a temporary `.NAME.tmp`
beside NAME and are renamed over it, so a SIGKILL never leaves half a file. save_checkpoint writes
checkpoint.new completely (state.pt last), then swaps it in for checkpoint/ through checkpoint.old;
latest_checkpoint takes the most advanced of the three with a readable state.pt, so a kill at any
moment leaves a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from probes.config import format_validation_error, save_config
from probes.errors import UserError
from probes.schema import (  # noqa: F401 - re-exported: the schema's names, as rundir offered them before
    FINISHED,
    LOG_FILE,
    POSITION_COLUMNS,
    RUN_FILES,
    RUN_KINDS,
    STATUSES,
    WORKER_FILES,
    WORKER_PID_FILE,
)

if TYPE_CHECKING:
    import torch

    from probes.backbones import Backbone


C = TypeVar("C", bound=BaseModel)


# === Atomic writes ===


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    _atomic(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))


def write_parquet(path: Path, rows: list[dict], columns: list[str]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=columns)
    _atomic(path, lambda p: frame.to_parquet(p, index=False))


# === Reading a run directory ===


def read_summary(run: Path) -> dict | None:
    """summary.json of a run directory, None when there is none; a damaged one is a UserError."""
    path = Path(run) / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
        if summary.get("status") not in STATUSES:
            raise ValueError(f"status {summary.get('status')!r}")
        return summary
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"{path} is damaged ({err}); pass --overwrite to start the run again") from None


def read_config(run: Path, config_class: type[C],
                hint: str = "pass --overwrite to start the run again") -> C | None:
    """config.yaml of a run directory as `config_class`, None when there is none; a damaged one
    (or one of another kind of run) is a UserError that ends with `hint`."""
    path = Path(run) / "config.yaml"
    if not path.exists():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
        return config_class.model_validate(data)
    except ValidationError as err:  # the value and what is allowed, as for a config file
        first = format_validation_error(err, config_class)
    except Exception as err:  # noqa: BLE001 - any damage means the same thing to the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise UserError(f"{path} is damaged ({first})" + (f"; {hint}" if hint else ""))


def config_differences(a: BaseModel, b: BaseModel, resumable: Collection[str] = ()) -> list[str]:
    """Keys (dotted) whose values differ, ignoring the settings in `resumable`."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(a.model_dump(mode="json")), flat(b.model_dump(mode="json"))
    return [k for k in fa if k not in resumable and fa[k] != fb.get(k)]


def config_value(cfg: BaseModel, dotted: str) -> Any:
    """The setting `dotted` (`tokens.eos_target`) of `cfg`; paths as strings."""
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return str(value) if isinstance(value, Path) else value


def inspect_run(cfg: BaseModel, run: Path, resumable: Collection[str] = ()) -> tuple[str, dict | None]:
    """('new' | 'resume' | 'finished', summary) of the run directory `run` for `cfg`.

    config.yaml is read as type(cfg). A directory that is not a run, or holds an unfinished run
    whose config differs in settings outside `resumable`, is a UserError.
    """
    run = Path(run)
    if not run.exists():
        return "new", None
    if not run.is_dir():
        raise UserError(f"{run} is a file, not a run directory")
    saved = read_config(run, type(cfg))
    if saved is None:
        if any(p.name not in WORKER_FILES for p in run.iterdir()):
            raise UserError(f"{run} is not empty and holds no run (no config.yaml); choose another --out")
        return "new", None
    summary = read_summary(run)
    if summary is not None and summary["status"] in FINISHED:
        return "finished", summary
    differing = config_differences(saved, cfg, resumable)
    if differing:
        shown = ", ".join(f"{k}={config_value(saved, k)!r} there, {config_value(cfg, k)!r} asked"
                          for k in differing[:3])
        raise UserError(f"{run} holds an unfinished run with a different config ({shown}); "
                        f"run the same config to resume it, or pass --overwrite")
    return "resume", summary


def start_state(cfg: BaseModel, run: Path, resumable: Collection[str] = (), overwrite: bool = False) -> str:
    """How a trainer starts `run` for `cfg`: 'resume' (an unfinished run of this config) or 'new'
    (start_run_dir then clears what a run wrote there, once the trainer has loaded its model and data).

    A finished run is a UserError naming its outcome, and a damaged run or an unfinished run of
    another config the UserError of inspect_run, unless `overwrite`: then each starts as new.
    """
    run = Path(run)
    try:
        state, summary = inspect_run(cfg, run, resumable)
    except UserError:  # a damaged run, or another config: only overwrite may replace it
        if not (overwrite and (run / "config.yaml").exists()):
            raise
        state, summary = "finished", None
    if state == "finished" and not overwrite:
        raise UserError(f"{describe_finished(run, summary)}; pass --overwrite to start it again")
    return "new" if overwrite else state


def describe_finished(run: Path, summary: dict) -> str:
    status = summary["status"]
    detail = {"reached": f"reached {summary.get('threshold')} at step {summary.get('step_reached')}",
              "not_reached": f"did not reach {summary.get('threshold')} in {summary.get('max_steps')} steps",
              "failed": f"failed: {summary.get('message')}"}[status]
    return f"{run} holds a finished run ({detail})"


# === Starting and restarting ===


def clear_run(run: Path, extra_dirs: tuple[str, ...] = ()) -> None:
    """Remove what a run wrote (and nothing else) so that it can start again."""
    for name in RUN_FILES:
        (run / name).unlink(missing_ok=True)
    for name in ("checkpoint", "checkpoint.new", "checkpoint.old", *extra_dirs):
        shutil.rmtree(run / name, ignore_errors=True)


def start_run_dir(run: Path, cfg: BaseModel, state: str, extra_dirs: tuple[str, ...] = ()) -> None:
    """A new run starts in an emptied directory whose first file is config.yaml; others are left as they are."""
    if state == "new":
        if run.exists():
            clear_run(run, extra_dirs)
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")


# === The record of a run and its summary ===


def new_record() -> dict[str, Any]:
    """What a run accumulates and its checkpoint carries: step, timings, metrics and positions rows."""
    return {"step": 0, "wall_seconds": 0.0, "metrics": [], "positions": [], "resumed_at": [],
            "train_seconds": 0.0, "train_steps": 0, "eval_seconds": 0.0, "eval_examples": 0}


def restore_record(rec: dict[str, Any], ckpt_state: dict, run: Path, metric_columns: list[str]) -> None:
    """Continue `rec` from a checkpoint; rows written after that checkpoint are dropped from disk
    (they are computed again, so no evaluation is lost or counted twice)."""
    rec.update({k: ckpt_state[k] for k in rec})
    rec["resumed_at"] = [*rec["resumed_at"], rec["step"]]
    write_parquet(run / "metrics.parquet", rec["metrics"], metric_columns)
    write_parquet(run / "positions.parquet", rec["positions"], POSITION_COLUMNS)


def rate(amount: float, seconds: float) -> float | None:
    return amount / seconds if seconds > 0 else None


def run_summary(rec: dict[str, Any], cfg: Any, status: str, message: str, wall_seconds: float, *,
                kind: str) -> dict:
    """summary.json fields every run has (SPEC §6, probes.schema.SUMMARY_FIELDS), from the record of
    its evaluations; `kind` is the caller's kind of run (probes.schema.RUN_KINDS).

    `cfg` needs threshold, max_steps and batch_size.
    """
    if kind not in RUN_KINDS:
        raise ValueError(f"unknown run kind {kind!r} (allowed: {', '.join(RUN_KINDS)})")
    rows = rec["metrics"]
    reached = next((r for r in rows if r["accuracy"] >= cfg.threshold), None)
    return {
        "kind": kind, "status": status, "threshold": cfg.threshold,
        "step_reached": reached["step"] if reached else None,
        "examples_to_threshold": reached["examples_seen"] if reached else None,
        "final_accuracy": rows[-1]["accuracy"] if rows else None,
        "best_accuracy": max(r["accuracy"] for r in rows) if rows else None,
        "final_step": rows[-1]["step"] if rows else 0,
        "max_steps": cfg.max_steps, "wall_seconds": wall_seconds, "message": message,
        "train_examples_per_s": rate(rec["train_steps"] * cfg.batch_size, rec["train_seconds"]),
        "eval_examples_per_s": rate(rec["eval_examples"], rec["eval_seconds"]),
        "resumed_at": rec["resumed_at"],
    }


# === Checkpoints ===


def _checkpoint_dirs(run: Path) -> list[Path]:
    return [run / "checkpoint", run / "checkpoint.new", run / "checkpoint.old"]


def latest_checkpoint(run: Path) -> tuple[Path, dict] | None:
    """(directory, state) of the most advanced complete checkpoint, or None.

    state.pt is written last, so a directory with a readable one is complete. A swap interrupted
    by a kill leaves checkpoint.new or checkpoint.old complete: both are considered.
    """
    import torch

    found, damaged = [], []
    for path in _checkpoint_dirs(run):
        if not (path / "state.pt").exists():
            continue
        try:
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
            found.append((state["step"], path, state))
        except Exception as err:  # noqa: BLE001 - damaged file: try the others
            damaged.append(f"{path.name}: {type(err).__name__}")
    if not found:
        if damaged:
            raise UserError(f"{run} has only damaged checkpoints ({'; '.join(damaged)}); "
                            f"pass --overwrite to start the run again")
        return None
    _, path, state = max(found, key=lambda t: t[0])
    return path, state


def save_checkpoint(run: Path, bb: Backbone, state: dict) -> None:
    """Write checkpoint.new completely (the model, its tokenizer if any, state.pt last), then swap it
    in for checkpoint/."""
    import torch

    current, new, old = _checkpoint_dirs(run)
    shutil.rmtree(new, ignore_errors=True)
    bb.model.save_pretrained(new)
    if bb.tokenizer is not None:
        bb.tokenizer.save_pretrained(new)
    _atomic(new / "state.pt", lambda p: torch.save(state, p))
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        os.replace(current, old)
    os.replace(new, current)
    shutil.rmtree(old, ignore_errors=True)


def rng_state(device: torch.device) -> dict:
    """torch's RNG states (CPU, and CUDA on a CUDA device), for a checkpoint."""
    import torch

    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict, device: torch.device) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
