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

One writer at a time: trainers run inside `open_run(cfg, run, resumable, overwrite)`, which holds
the directory's lock (DIR/.lock, probes.locks) for the run's whole life and yields start_state.

Anything else (a directory of other files, an unfinished run of another config, a damaged
config.yaml, summary.json or checkpoint) is a UserError that names --overwrite where it helps.
Trainers (probes.train, probes.vlm.train, probes.pretrain) decide with `start_state(cfg, run, resumable,
overwrite)`: 'new' or 'resume', where overwrite turns a finished, damaged or different run into new.

Writes are atomic: metrics, positions, summary and checkpoint state go to a temporary `.NAME.tmp`
beside NAME and are renamed over it, so a SIGKILL never leaves half a file. save_checkpoint writes
checkpoint.new completely (state.pt last), then swaps it in for checkpoint/ through checkpoint.old;
latest_checkpoint takes the most advanced of the three with a readable state.pt, so a kill at any
moment leaves a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from probes import locks
from probes.config import format_validation_error, save_config
from probes.errors import UserError
from probes.schema import (  # noqa: F401 - re-exported: the schema's names, as rundir offered them before
    FINISHED,
    LOCK_FILE,
    LOG_FILE,
    POSITION_COLUMNS,
    RUN_FILES,
    RUN_KINDS,
    STATUSES,
    WORKER_FILES,
    WORKER_PID_FILE,
)

if TYPE_CHECKING:
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


OVERWRITE_ADVICE = "pass --overwrite to start the run again"


class RunDirError(UserError):
    """A run directory that cannot be used as asked: `reason` (what is there) and `advice` (what
    the user does). The message is both; a sweep, which has no --overwrite, gives its own advice."""

    def __init__(self, reason: str, advice: str = OVERWRITE_ADVICE):
        self.reason, self.advice = reason, advice
        super().__init__(f"{reason}; {advice}" if advice else reason)


class OtherKindError(RunDirError):
    """The directory holds a run of another kind (a text run given to `vlm train`): never overwritten."""


def read_summary(run: Path) -> dict | None:
    """summary.json of a run directory, None when there is none; a damaged one is a RunDirError."""
    path = Path(run) / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict) or summary.get("status") not in STATUSES:
            raise ValueError(f"status {summary.get('status') if isinstance(summary, dict) else None!r}")
        return summary
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path} is damaged ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_config(run: Path, config_class: type[C], hint: str = OVERWRITE_ADVICE) -> C | None:
    """config.yaml of a run directory as `config_class`, None when there is none. A damaged one is
    a RunDirError whose advice is `hint`; one of another kind of run (keys `config_class` does not
    have) an OtherKindError, whatever `hint` says: overwriting would destroy that other run."""
    path = Path(run) / "config.yaml"
    if not path.exists():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
        return config_class.model_validate(data)
    except ValidationError as err:  # the value and what is allowed, as for a config file
        foreign = [e["loc"][0] for e in err.errors() if e["type"] == "extra_forbidden" and e["loc"]]
        if foreign:
            raise OtherKindError(f"{run} holds another kind of run (its config.yaml has {foreign[0]!r}, "
                                 f"which {config_class.__name__} has not)",
                                 "choose another --out; that run is left as it is") from None
        first = format_validation_error(err, config_class)
    except Exception as err:  # noqa: BLE001 - any damage means the same thing to the user
        first = _first_line(err)
    raise RunDirError(f"{path} is damaged ({first})", hint)


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
        raise RunDirError(f"{run} is a file, not a run directory", "choose another --out")
    saved = read_config(run, type(cfg))
    if saved is None:
        if any(p.name not in WORKER_FILES for p in run.iterdir()):
            raise OtherKindError(f"{run} is not empty and holds no run (no config.yaml)", "choose another --out")
        return "new", None
    summary = read_summary(run)
    if summary is not None and summary["status"] in FINISHED:
        return "finished", summary
    differing = config_differences(saved, cfg, resumable)
    if differing:
        shown = ", ".join(f"{k}={config_value(saved, k)!r} there, {config_value(cfg, k)!r} asked"
                          for k in differing[:3])
        raise RunDirError(f"{run} holds an unfinished run with a different config ({shown})",
                          "run the same config to resume it, or pass --overwrite")
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
    except OtherKindError:  # not this kind's run: never replaced
        raise
    except UserError:  # a damaged run, or another config: only overwrite may replace it
        if not (overwrite and (run / "config.yaml").exists()):
            raise
        state, summary = "finished", None
    if state == "finished" and not overwrite:
        raise RunDirError(describe_finished(run, summary), "pass --overwrite to start it again")
    return "new" if overwrite else state


@contextlib.contextmanager
def open_run(cfg: BaseModel, run: Path, resumable: Collection[str] = (), overwrite: bool = False,
             log: Callable[[str], None] | None = None) -> Iterator[str]:
    """Hold the run directory's lock (probes.locks, created with the directory) for the block and
    yield start_state(...): 'new' or 'resume'. A trainer runs its whole life inside this block, so
    a second writer of `run` (another process, another machine) gets a UserError naming the
    holder. A lock left by a killed writer is taken over, and `log` says so."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise UserError(f"{run} is a file, not a run directory; choose another --out")
    with locks.hold(run, what="run") as stale:
        if stale is not None and log is not None:
            log(f"{run}: took over the lock of {stale.describe()}, which ended without releasing it")
        yield start_state(cfg, run, resumable, overwrite)


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
            "train_seconds": 0.0, "train_steps": 0, "train_examples": 0, "eval_seconds": 0.0,
            "eval_examples": 0, "threads_used": [], "open_interval": None}


def note_threads(rec: dict[str, Any], count: int) -> None:
    """Record the CPU thread count of the segment of the run starting now (summary: threads_used)."""
    rec["threads_used"] = [*rec["threads_used"], int(count)]


def recorded_threads(run: Path) -> int | None:
    """The CPU thread count config.yaml records (trainers write the count in effect), None when
    it records none ('auto' or 0 from an older version, or no config.yaml)."""
    import yaml

    try:
        value = (yaml.safe_load((Path(run) / "config.yaml").read_text()) or {}).get("threads")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def restore_record(rec: dict[str, Any], ckpt_state: dict, run: Path, metric_columns: list[str],
                   positions: bool = True) -> None:
    """Continue `rec` from a checkpoint; rows written after that checkpoint are dropped from disk
    (they are computed again, so no evaluation is lost or counted twice). `positions`: whether
    the run writes positions.parquet (pretraining runs do not)."""
    rec.update({k: ckpt_state.get(k, rec[k]) for k in rec})  # threads_used: absent before it existed
    rec["resumed_at"] = [*rec["resumed_at"], rec["step"]]
    write_parquet(run / "metrics.parquet", rec["metrics"], metric_columns)
    if positions:
        write_parquet(run / "positions.parquet", rec["positions"], POSITION_COLUMNS)


def rate(amount: float, seconds: float) -> float | None:
    return amount / seconds if seconds > 0 else None


def run_summary(rec: dict[str, Any], cfg: Any, status: str, message: str, wall_seconds: float, *,
                kind: str, same_bits: bool = True) -> dict:
    """summary.json fields every run has (SPEC §6, probes.schema.SUMMARY_FIELDS), from the record of
    its evaluations; `kind` is the caller's kind of run (probes.schema.RUN_KINDS).

    `cfg` needs threshold and max_steps; the training throughput counts the examples the run
    actually saw (rec["train_examples"]: a VLM run's stages have different batch sizes). `same_bits`: whether
    the run's kernels give the same bits every time (probes.runtime.same_bits_each_run).
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
        "train_examples_per_s": rate(rec["train_examples"], rec["train_seconds"]),
        "eval_examples_per_s": rate(rec["eval_examples"], rec["eval_seconds"]),
        "resumed_at": rec["resumed_at"], **reproducibility(rec["threads_used"], same_bits),
    }


def reproducibility(threads_used: list[int], same_bits: bool = True) -> dict:
    """summary.json's threads_used (the CPU threads of each segment: start, then each resume) and
    bit_reproducible: float sums depend on the thread count, so a run resumed with another count no longer
    matches an uninterrupted run bit for bit, and nor does any run whose kernels do not give the same bits
    every time (`same_bits` False: a Mamba scan that sums with float atomics on CUDA)."""
    return {"threads_used": threads_used, "bit_reproducible": len(set(threads_used)) <= 1 and same_bits}


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
            check_model_files(path)
            found.append((state["step"], path, state))
        except Exception as err:  # noqa: BLE001 - damaged file: try the others
            damaged.append(f"{path.name}: {type(err).__name__}")
    if not found:
        if damaged:
            raise RunDirError(f"{run} has only damaged checkpoints ({'; '.join(damaged)})")
        return None
    _, path, state = max(found, key=lambda t: t[0])
    return path, state


def check_model_files(path: Path) -> None:
    """Raise ValueError when a saved model's config.json or safetensors files are unreadable
    (a garbage config, a truncated weights file): cheap checks, the headers only."""
    from safetensors import safe_open

    if (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text())
        if not isinstance(config, dict) or "model_type" not in config:
            raise ValueError("config.json names no model_type")
    for weights in sorted(path.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:  # checks the header against the file size
            f.keys()


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
