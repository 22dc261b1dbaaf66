"""Where the runs under some directories stand: one tidy row per run (`probes runs`).

    runs_overview(load_runs(DIR))  -> run, model, n, layout, seed, status, step, max_steps, best_accuracy,
                                      final_accuracy, step_reached, train_examples_per_s
"""

from __future__ import annotations

import pandas as pd

# the identity of a run first (columns a run kind lacks are left out), then how far it got
IDENTITY = ("run", "kind", "model", "connector", "n", "layout", "lr", "seed")
PROGRESS = ("status", "step", "max_steps", "best_accuracy", "final_accuracy", "step_reached",
            "train_examples_per_s")


def runs_overview(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run of `runs` (analysis.load.load_runs), sorted by run: what it is and how far it
    got. `step` is the step of its last evaluation; `step_reached` is empty until it passes its
    threshold; `train_examples_per_s` is the run's own average (its summary.json)."""
    table = runs.rename(columns={"final_step": "step"})
    for col in PROGRESS:
        if col not in table:
            table[col] = None
    cols = [c for c in IDENTITY if c in table and table[c].notna().any()] + list(PROGRESS)
    return table[cols].sort_values("run").reset_index(drop=True)
