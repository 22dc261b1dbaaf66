"""Sample efficiency and learning order, as tidy tables (the figures draw these).

* `efficiency(runs)`: steps and examples to the threshold, one row per run that has been evaluated
  and did not fail; a run that never reached it is *censored* at its budget (`max_steps`,
  `max_steps × batch_size`), and a run still going below it at its last evaluation (a lower bound
  too: leaving it out would keep only the fast runs of a study stopped early).
  `efficiency(runs, metrics, threshold=0.5)` measures them at another threshold, from the metrics.
* `efficiency_summary(eff)`: per model × N × layout: runs, how many censored, median / min / max.
  The median is the lower median (the step by which half of the runs had got there), censored runs
  counted where they are censored; `median_censored` says when it is a censored run (a lower bound).
* `efficiency_table(summary)`: that summary as one row per model and one column per N × layout cell,
  each cell one string ("3,600 (3/3)": median steps, runs that got there; "> 20,000 (0/3)" where the
  median run had not got there by the step shown): the table a README or paper prints.
* `first_reach(positions)`: per run × target position, the first evaluation step at which that
  position's held-out accuracy is ≥ the threshold (NaN if never): by default the first from which it
  STAYS there (`rule="stays"`), since an early model that gives one answer to every query passes
  the threshold on that one position for an evaluation; `rule="first"` takes the first at all.
* `learning_order(positions)`: the same per model × N × layout (`half_reached` over runs: the step
  by which half of them had got there, NaN if fewer did), with the position's region (beginning /
  middle / end third of the context); `learning_order_summary` orders the regions by when they were learned:
  the paper's Mamba order is "end → beginning → middle" (Fig. 7).

A VLM run (`analysis.load.run_kind`) has no N: its positions are the 9 cells of a 3×3 grid over the
image, row-major, so its thirds (beginning / middle / end) are the image's top, middle and bottom
rows; its groups are per model (+ connector: `label`) × layout.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from analysis.load import SEED_KEYS, VLM_GRID, is_vlm

DEFAULT_THRESHOLD = 0.95
GROUP = ("model", "label", "n", "layout")
REGIONS = ("beginning", "middle", "end")
RULES = ("stays", "first")
Rule = Literal["stays", "first"]
_RUN_COLS = (
    "run",
    "kind",
    "model",
    "label",
    "family",
    "n",
    "encoder",
    "connector",
    "scan",
    "layout",
    "lr",
    "init",
    "seed",
    *SEED_KEYS,
)


def _present(df: pd.DataFrame, cols) -> list[str]:
    return [c for c in cols if c in df.columns]


def half_reached(values) -> float:
    """The step by which half of the runs (or positions) had got there: the lower median, with
    never (NaN) counted as +∞, as a Kaplan–Meier median would; NaN when fewer than half got there.
    [20, NaN] → 20, [10, 30, NaN] → 30, [10, NaN, NaN] → NaN."""
    vals = np.sort(np.nan_to_num(np.asarray(values, dtype=float), nan=np.inf))
    if not len(vals):
        return np.nan
    v = float(vals[(len(vals) - 1) // 2])
    return v if np.isfinite(v) else np.nan


def _threshold(df: pd.DataFrame, threshold: float | None) -> pd.Series:
    if threshold is not None:
        return pd.Series(float(threshold), index=df.index)
    if "threshold" in df:
        return pd.to_numeric(df["threshold"], errors="coerce").fillna(DEFAULT_THRESHOLD)
    return pd.Series(DEFAULT_THRESHOLD, index=df.index)


# === Steps / examples to threshold ===


MEASURED = ("reached", "not_reached", "running")  # statuses `efficiency` measures (not failed)


def efficiency(
    runs: pd.DataFrame, metrics: pd.DataFrame | None = None, threshold: float | None = None
) -> pd.DataFrame:
    """One row per measured run (status reached, not_reached, or running with an evaluation; failed
    runs are left out): `steps`, `examples`, `pct` (of the run's budget), `censored` (not reached:
    the values are a lower bound, the budget of a run that ended, the last evaluation of a run still
    running), `status`, `budget_steps`, `budget_examples`, `threshold`, plus the run's grid columns.

    By default "reached" is the run's own verdict at its own threshold. With `threshold` (and the
    `metrics` table) it is the first evaluation whose held-out accuracy is ≥ `threshold`; a run
    that never got there is censored at its last evaluation (its budget, unless it stopped early
    at its own, lower threshold, or is still running)."""
    done = runs[runs["status"].isin(MEASURED)].copy()
    budget = pd.to_numeric(done.get("max_steps"), errors="coerce")
    batch = pd.to_numeric(done["batch_size"], errors="coerce") if "batch_size" in done else np.nan
    running = done["status"].eq("running")
    if threshold is None:
        censored = done["status"].ne("reached")
        step_reached = pd.to_numeric(done["step_reached"], errors="coerce")
        examples = pd.to_numeric(done["examples_to_threshold"], errors="coerce")
        last = pd.to_numeric(done["final_step"], errors="coerce") if "final_step" in done else np.nan
        end = budget.where(~running, last)
        thr = _threshold(done, None)
    else:
        if metrics is None:
            raise ValueError("efficiency(threshold=...) reads the accuracies from the metrics table: pass metrics")
        step_reached, examples, last = _first_at_or_above(metrics, done["run"], float(threshold))
        censored = step_reached.isna()
        end = last.fillna(budget).where(~running, last)
        thr = pd.Series(float(threshold), index=done.index)
    measured = ~(running & censored & end.isna())  # a run still running with no evaluation has nothing to show
    done, censored, step_reached, examples, end, thr, budget = (
        x[measured] for x in (done, censored, step_reached, examples, end, thr, budget))
    batch = batch[measured] if isinstance(batch, pd.Series) else batch
    examples = examples.fillna(step_reached * batch)
    out = done[_present(done, _RUN_COLS)].copy()
    out["status"] = done["status"]
    out["censored"] = censored
    out["threshold"] = thr
    out["budget_steps"] = budget
    out["budget_examples"] = budget * batch
    out["steps"] = step_reached.where(~censored, end)
    out["examples"] = examples.where(~censored, end * batch)
    out["pct"] = out["steps"] / budget * 100.0
    return out.reset_index(drop=True)


def _first_at_or_above(metrics: pd.DataFrame, runs: pd.Series, threshold: float):
    """Per run in `runs` (aligned to it): the step and examples_seen of its first evaluation with
    accuracy ≥ threshold (NaN if none), and its last evaluated step."""
    m = metrics.sort_values(["run", "step"])
    hit = m[pd.to_numeric(m["accuracy"], errors="coerce") >= threshold].groupby("run").first()
    last = m.groupby("run")["step"].max()
    seen = hit["examples_seen"] if "examples_seen" in hit else pd.Series(np.nan, index=hit.index)
    return (runs.map(hit["step"]).astype(float), runs.map(seen).astype(float), runs.map(last).astype(float))


def efficiency_summary(eff: pd.DataFrame, by=GROUP) -> pd.DataFrame:
    """Per group: `runs`, `censored`, `steps_median` / `_min` / `_max` (and the same for
    `examples`), `median_censored` (the lower median is a censored run: most had not got there)."""
    by = _present(eff, by)

    def one(g: pd.DataFrame) -> pd.Series:
        row = {"runs": len(g), "censored": int(g["censored"].sum())}
        for col in ("steps", "examples"):
            # lower median; censored runs sit where they were censored (after a reached run of equal value)
            order = np.lexsort((g["censored"].to_numpy(), g[col].to_numpy(float)))
            mid = order[(len(g) - 1) // 2]
            row[f"{col}_median"] = float(g[col].iloc[mid])
            row[f"{col}_min"] = g[col].min()
            row[f"{col}_max"] = g[col].max()
            if col == "steps":
                row["median_censored"] = bool(g["censored"].iloc[mid])
        return pd.Series(row)

    return eff.groupby(by, sort=True, dropna=False)[list(eff.columns)].apply(one).reset_index()


def efficiency_table(summary: pd.DataFrame, row: str = "label") -> pd.DataFrame:
    """`efficiency_summary` wide: one row per `row` value (a model), columns `(n, layout)` (a VLM's
    have no N: `layout`), each cell "MEDIAN (REACHED/RUNS)" with the median in steps, prefixed by
    "> " when the median run had not reached the threshold by that step (its budget, or where it
    was cut off); NaN where the cell did not run."""
    cols = [c for c in ("n", "layout") if c in summary.columns and summary[c].notna().any()]

    def cell(r: pd.Series) -> str:
        bound = "> " if r["median_censored"] else ""
        return f"{bound}{r['steps_median']:,.0f} ({int(r['runs'] - r['censored'])}/{int(r['runs'])})"

    cells = summary.assign(cell=summary.apply(cell, axis=1))
    return cells.pivot(index=row, columns=cols, values="cell").sort_index(axis=1)


# === Learning order per target position ===


def region_of(position: pd.Series, n: pd.Series) -> pd.Series:
    """Beginning / middle / end third of the context for a 0-based position."""
    rel = (position.astype(float) + 0.5) / n.astype(float)
    return pd.cut(rel, [0, 1 / 3, 2 / 3, 1.0 + 1e-9], labels=list(REGIONS), include_lowest=True)


def first_reach(
    positions: pd.DataFrame, threshold: float | None = None, rule: Rule = "stays"
) -> pd.DataFrame:
    """Per run × position: `step` and `pct` of the first evaluation at which that position's
    accuracy is ≥ the threshold (the run's own unless given), NaN if never; plus the run's grid
    columns, the 1-based `position1` and the `region` of the position.

    rule "first": the first such evaluation. rule "stays" (default): the first evaluation from
    which the accuracy stays ≥ the threshold until the run's last one. A model that answers one
    position for every query early in training scores 100% on that position for one evaluation;
    "first" counts that as learned, "stays" does not."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r} (allowed: {', '.join(RULES)})")
    keys = ["run", "position"]
    pos = positions.assign(_thr=_threshold(positions, threshold).to_numpy()).sort_values([*keys, "step"])
    ok = (pos["accuracy"] >= pos["_thr"]).astype(int)
    if rule == "stays":  # ok here and at every later evaluation: reversed running minimum
        ok = ok.iloc[::-1].groupby([pos["run"].iloc[::-1], pos["position"].iloc[::-1]]).cummin().iloc[::-1]
    hit = pos[ok.astype(bool).to_numpy()]
    first = hit.sort_values("step").groupby(keys, as_index=False).first()[keys + ["step"]]
    base = pos[_present(pos, [*_RUN_COLS, "max_steps", "position"])].drop_duplicates(keys)
    out = base.merge(first, on=keys, how="left")
    out["threshold"] = pos.groupby("run")["_thr"].first().reindex(out["run"]).to_numpy()
    out["pct"] = out["step"] / out["max_steps"] * 100.0 if "max_steps" in out else np.nan
    out["position1"] = out["position"] + 1
    out["region"] = region_of(out["position"], _positions_per_run(out))
    return out.sort_values(keys).reset_index(drop=True)


def _positions_per_run(df: pd.DataFrame) -> pd.Series:
    """How many positions each row's run has: N for a text run, the 9 image cells for a VLM run
    (whose thirds, in row-major order, are the image's top, middle and bottom rows)."""
    n = pd.to_numeric(df["n"], errors="coerce") if "n" in df else pd.Series(np.nan, index=df.index)
    n = n.where(~is_vlm(df), VLM_GRID * VLM_GRID)
    return n.fillna(df.groupby("run")["position"].transform("max") + 1)  # no N given: count them


def learning_order(
    positions: pd.DataFrame, threshold: float | None = None, by=GROUP, rule: Rule = "stays"
) -> pd.DataFrame:
    """Per group × position: `step` / `pct` by which half of the group's runs had first reached
    the threshold there (`half_reached`; NaN if fewer did), `runs`, `reached_runs`, `region`."""
    fr = first_reach(positions, threshold, rule)
    by = _present(fr, by)

    keys = [*by, "position"]
    grouped = fr.groupby(keys, sort=True, dropna=False, observed=True)
    out = grouped.agg(
        step=("step", half_reached),
        pct=("pct", half_reached),
        runs=("run", "nunique"),
        reached_runs=("step", "count"),
        region=("region", "first"),
    ).reset_index()
    out["position1"] = out["position"] + 1
    out["region"] = pd.Categorical(out.pop("region"), categories=list(REGIONS))
    return out


def learning_order_summary(order: pd.DataFrame, by=GROUP) -> pd.DataFrame:
    """Per group: the % of training by which half of each region's positions had been learned
    (`beginning`, `middle`, `end`; `half_reached`), and `order`, the regions sorted by that, e.g.
    "end → beginning → middle"; regions learned at the same evaluation are joined with " = ", and
    regions fewer than half of whose positions were learned are listed last:
    "end; never: beginning, middle"."""
    by = _present(order, by)
    rows = []
    for key, g in order.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        for region in REGIONS:
            row[region] = half_reached(g.loc[g["region"] == region, "pct"])
        learned = sorted((row[r], i, r) for i, r in enumerate(REGIONS) if not np.isnan(row[r]))
        steps: list[list[str]] = []
        for i, (value, _, region) in enumerate(learned):
            if i and value == learned[i - 1][0]:
                steps[-1].append(region)  # learned at the same evaluation: a tie, not an order
            else:
                steps.append([region])
        never = [r for r in REGIONS if np.isnan(row[r])]
        order = " → ".join(" = ".join(s) for s in steps)
        row["order"] = "; ".join(filter(None, [order, f"never: {', '.join(never)}" if never else ""]))
        rows.append(row)
    return pd.DataFrame(rows)
