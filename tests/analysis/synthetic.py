"""Hand-written run directories with known outcomes (SPEC §6 format), for exact-value tests.

The integration fixtures in conftest.py are made by the real training code; these exist so a
test can say "this run never reached the threshold" or "this model learned the end first" and
check that the analysis reports exactly that.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def write_run(
    root: Path,
    model: str = "pythia-tiny",
    n: int = 6,
    layout: str = "suffix",
    lr: float = 1e-3,
    seed: int = 0,
    max_steps: int = 100,
    eval_every: int = 10,
    batch_size: int = 8,
    threshold: float = 0.95,
    learn_at: dict[int, int] | int | None = 40,
    name: str | None = None,
    status: str | None = None,
) -> Path:
    """A finished run. `learn_at` = the step at which each position (dict) or all positions (int)
    jump to accuracy 1.0 (from 1/n); None = never learned (a not_reached run at max_steps)."""
    name = name or f"{model}+{layout}+n{n}+lr{lr:g}+default+s{seed}"
    run = Path(root) / name
    (run / "checkpoint").mkdir(parents=True, exist_ok=True)
    cfg = {
        "model": model,
        "n": n,
        "layout": layout,
        "lr": lr,
        "init": "default",
        "seed": seed,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "threshold": threshold,
        "eval_every": eval_every,
        "out": str(run),
        "tokens": {"eos_target": True, "answer_offset": 2},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if isinstance(learn_at, int):
        learn_at = {p: learn_at for p in range(n)}
    learn_at = learn_at or {}
    pos_rows, met_rows, step_reached = [], [], None
    for step in range(0, max_steps + 1, eval_every):
        accs = [1.0 if p in learn_at and step >= learn_at[p] else 1.0 / n for p in range(n)]
        pos_rows += [{"step": step, "position": p, "accuracy": a, "count": 10} for p, a in enumerate(accs)]
        acc = float(np.mean(accs))
        met_rows.append(
            {
                "step": step,
                "examples_seen": step * batch_size,
                "loss": 2.0 * (1 - acc),
                "accuracy": acc,
                "train_tokens_per_s": 1000.0,
            }
        )
        if acc >= threshold:
            step_reached = step
            break
    pd.DataFrame(met_rows).to_parquet(run / "metrics.parquet")
    pd.DataFrame(pos_rows).to_parquet(run / "positions.parquet")
    summary = {
        "status": status or ("reached" if step_reached is not None else "not_reached"),
        "threshold": threshold,
        "step_reached": step_reached,
        "examples_to_threshold": None if step_reached is None else step_reached * batch_size,
        "final_accuracy": met_rows[-1]["accuracy"],
        "wall_seconds": 1.0,
        "max_steps": max_steps,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run
