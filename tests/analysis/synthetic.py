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
    last_step: int | None = None,
) -> Path:
    """A finished run. `learn_at` = the step at which each position (dict) or all positions (int)
    jump to accuracy 1.0 (from 1/n); None = never learned (a not_reached run at max_steps).
    `last_step`: evaluations stop there (a run still going, with `status="running"`)."""
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
        learn_at = dict.fromkeys(range(n), learn_at)
    learn_at = learn_at or {}
    pos_rows, met_rows, step_reached = [], [], None
    for step in range(0, (max_steps if last_step is None else last_step) + 1, eval_every):
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
        "final_step": met_rows[-1]["step"],
        "wall_seconds": 1.0,
        "max_steps": max_steps,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


VLM_CELLS = 9  # a VLM run's positions: the 3 × 3 image cells of the target's centre, row-major


def write_vlm_run(
    root: Path,
    model: str = "pythia-tiny",
    connector: str = "mlp",
    scan: str | None = None,
    layout: str = "task-agnostic",
    lr: float = 1e-3,
    seed: int = 0,
    max_steps: int = 100,
    stage1_steps: int = 20,
    eval_every: int = 10,
    batch_size: int = 8,
    threshold: float = 0.9,
    learn_at: dict[int, int] | int | None = 40,
    empty_cells: tuple[int, ...] = (),
    name: str | None = None,
    summary: bool = True,
) -> Path:
    """A finished VLM run (`probes vlm train`'s format: no `n`, an encoder and a connector,
    positions = image cells 0..8). `learn_at` as in `write_run`, per cell; `empty_cells` had no
    evaluation examples (accuracy None, count 0, as the real writer leaves them); `summary=False`
    leaves a run still starting (no summary.json: only its config says it is a VLM run)."""
    name = name or f"{model}+siglip-tiny+{connector}+{layout}+lr{lr:g}+s{seed}"
    run = write_run(
        root,
        model=model,
        n=VLM_CELLS,
        layout=layout,
        lr=lr,
        seed=seed,
        max_steps=max_steps,
        eval_every=eval_every,
        batch_size=batch_size,
        threshold=threshold,
        learn_at=learn_at,
        name=name,
    )
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("n", "init", "tokens"):
        del cfg[key]
    cfg.update(
        encoder="siglip-tiny",
        connector=connector,
        scan=scan,
        stage1_steps=stage1_steps,
        data={"kind": "synthetic", "image_size": 32, "seed": 0},
    )
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    positions = pd.read_parquet(run / "positions.parquet")
    empty = positions["position"].isin(list(empty_cells))
    positions["accuracy"] = positions["accuracy"].astype(object).where(~empty, None)
    positions.loc[empty, "count"] = 0
    positions["accuracy"] = positions["accuracy"].astype(float)
    positions.to_parquet(run / "positions.parquet")
    if summary:
        data = json.loads((run / "summary.json").read_text())
        data.update(kind="vlm", stage1_steps=stage1_steps, final_step=max_steps)
        (run / "summary.json").write_text(json.dumps(data))
    else:
        (run / "summary.json").unlink()
    return run
