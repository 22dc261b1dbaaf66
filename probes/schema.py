"""The run-directory schema (SPEC §6): file names, table columns, statuses and kinds of run.

Writers (probes.rundir and the trainers) and readers (analysis.load) import these names, so a file
name or a column cannot drift between the code that writes a run and the code that reads it. This
module imports nothing but the standard library: analysis reads runs without torch.

    config.yaml        CONFIG_FILE     the run's config, written first
    metrics.parquet    METRICS_FILE    one row per evaluation: METRIC_COLUMNS[kind]
    positions.parquet  POSITIONS_FILE  one row per evaluation × position: POSITION_COLUMNS
    summary.json       SUMMARY_FILE    `kind` (RUN_KINDS), `status` (STATUSES) and the outcome
    checkpoint/        CHECKPOINT_DIR  the latest state, for resume
    train.log, worker.pid               written by sweep workers (WORKER_FILES), not by the run
    .lock              LOCK_FILE       the writer's directory lock (probes.locks), also in WORKER_FILES

Kinds of run: `probe` (`probes train`: the synthetic grounding probe on a text backbone; a
position is the target's index 0..N-1 in the context), `vlm` (`probes vlm train`: grounding a box
in an image; a position is the row-major cell 0..8 of a VLM_GRID × VLM_GRID grid over the image)
and `pretrain` (causal-LM pretraining on a corpus: no positions).
"""

from __future__ import annotations

from typing import Literal, get_args

# === Files ===

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.parquet"
POSITIONS_FILE = "positions.parquet"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "train.log"  # written by sweep workers; a directory holding only it is still fresh
WORKER_PID_FILE = "worker.pid"  # written by Ray workers (probes.sweep_ray), likewise
LOCK_FILE = ".lock"  # the writer's directory lock (probes.locks); left by a dead writer, still fresh
WORKER_FILES = (LOG_FILE, WORKER_PID_FILE, LOCK_FILE)
RUN_FILES = (CONFIG_FILE, METRICS_FILE, POSITIONS_FILE, SUMMARY_FILE)

# === Statuses (summary.json `status`) ===

Status = Literal["running", "reached", "not_reached", "failed"]
STATUSES: tuple[str, ...] = get_args(Status)
RUNNING = "running"
FINISHED: tuple[str, ...] = ("reached", "not_reached", "failed")

# === Kinds of run (summary.json `kind`) ===

RunKind = Literal["probe", "vlm", "pretrain"]
RUN_KINDS: tuple[str, ...] = get_args(RunKind)
PROBE, VLM, PRETRAIN = RUN_KINDS
VLM_GRID = 3  # a VLM run's positions are the cells of a VLM_GRID × VLM_GRID grid (probes.vlm.grounding.GRID)

# === Model names (config.yaml `model`) beyond the presets: a prefix and what follows it ===

LOADED_PREFIXES = ("hf:", "config:")  # hf:ID_OR_PATH = trained weights; config:DIR = its random-init twin

# === Columns ===

POSITION_COLUMNS = ["step", "position", "accuracy", "count"]
PROBE_METRIC_COLUMNS = ["step", "examples_seen", "loss", "accuracy", "train_loss", "lr", "train_examples_per_s",
                        "train_tokens_per_s", "eval_examples_per_s", "eval_seconds", "wall_seconds"]
VLM_METRIC_COLUMNS = ["step", "examples_seen", "stage", "loss", "accuracy", "parse_rate", "mean_iou", "train_loss",
                      "lr", "train_examples_per_s", "eval_examples_per_s", "eval_seconds", "wall_seconds"]
PRETRAIN_METRIC_COLUMNS = ["step", "tokens", "train_loss", "heldout_loss", "lr", "tokens_per_s", "wall_seconds"]
METRIC_COLUMNS: dict[str, list[str]] = {PROBE: PROBE_METRIC_COLUMNS, VLM: VLM_METRIC_COLUMNS,
                                        PRETRAIN: PRETRAIN_METRIC_COLUMNS}
HAS_POSITIONS: dict[str, bool] = {PROBE: True, VLM: True, PRETRAIN: False}

# Fields of summary.json that every run writes (probes.rundir.run_summary), besides what a kind adds.
SUMMARY_FIELDS = ("kind", "status", "threshold", "step_reached", "examples_to_threshold", "final_accuracy",
                  "best_accuracy", "final_step", "max_steps", "wall_seconds", "message", "train_examples_per_s",
                  "eval_examples_per_s", "resumed_at", "threads_used", "bit_reproducible")


def metric_columns(kind: str) -> list[str]:
    """The metrics.parquet columns of a run of `kind`; an unknown kind is a ValueError naming the known ones."""
    if kind not in METRIC_COLUMNS:
        raise ValueError(f"unknown run kind {kind!r} (allowed: {', '.join(RUN_KINDS)})")
    return METRIC_COLUMNS[kind]
