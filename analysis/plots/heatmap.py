"""Fig. 7 / 12: accuracy per target position during training. Probe runs: position × % of
training (`plot_position_heatmap`); VLM runs, whose positions are image cells: the image's 3 × 3
grid at 25 / 50 / 100% of training (`plot_vlm_heatmap`). `plot_heatmap` picks the variant from
HEATMAPS (kind of run → drawer)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from analysis.load import PROBE, VLM, model_order
from analysis.plots.cells import cell_grid, draw_cells, vlm_groups
from analysis.plots.style import (
    ACC_VLM,
    cell_edges,
    colorbar_shrink,
    colormap,
    facet_eq,
    facets,
    human,
    need_columns,
    panel_grid,
    panel_title,
    select,
    style,
    variant,
    wrap_label,
)
from probes.errors import UserError

VLM_SNAPSHOTS = (25.0, 50.0, 100.0)  # % of training at which plot_vlm_heatmap shows the image grid


def representative_runs(positions: pd.DataFrame, by=("label", "n", "layout")) -> list[str]:
    """Per group, the run with the median steps to threshold (never reached counts as +∞)."""
    by = [b for b in by if b in positions]
    per_run = positions.drop_duplicates("run")
    reached = pd.to_numeric(per_run.get("step_reached"), errors="coerce")
    ok = per_run.get("status", pd.Series("reached", index=per_run.index)).eq("reached")
    per_run = per_run.assign(_key=reached.where(ok, np.inf).fillna(np.inf))
    chosen = []
    for _, g in per_run.groupby(by, sort=False, dropna=False) if by else [(None, per_run)]:
        g = g.sort_values(["_key", "run"])
        chosen.append(g.iloc[(len(g) - 1) // 2]["run"])
    return chosen


def heatmap_matrix(positions: pd.DataFrame, aggregate: str = "representative") -> pd.DataFrame:
    """position (rows, 0-based) × % of training (columns) → accuracy for one group of runs.
    `representative`: the group's median run; `mean`: the mean over runs, a run that stopped
    early (it passed the threshold) keeping its last accuracies afterwards."""
    if aggregate == "representative":
        run = representative_runs(positions, by=())[0]
        sub = positions[positions["run"] == run]
        return sub.pivot_table(index="position", columns="pct", values="accuracy", aggfunc="mean")
    if aggregate != "mean":
        raise UserError(f"unknown heatmap aggregate '{aggregate}' (allowed: representative, mean)")
    per_run = positions.pivot_table(index=["run", "position"], columns="pct", values="accuracy")
    per_run = per_run.T.ffill().T  # along % of training within each run
    return per_run.groupby(level="position").mean()


def plot_heatmap(
    positions: pd.DataFrame,
    aggregate: str = "representative",
    cmap: str = "viridis",
    row: str | None = "layout",
    col: str | None = "n",
) -> Figure:
    """Accuracy per target position during training, the variant of HEATMAPS for the kind of run
    in `positions`: `plot_position_heatmap` for probe runs (x = % of training, y = position; one
    panel per model × N × layout), `plot_vlm_heatmap` for VLM runs (3 × 3 image grids; `row`
    and `col` do not apply)."""
    need_columns(positions, ["run", "label", "step", "position", "accuracy", "pct"], "per-position heatmap")
    return variant(HEATMAPS, positions, "per-position heatmap")(positions, aggregate, cmap, row, col)


def _vlm_heatmap(positions: pd.DataFrame, aggregate: str, cmap: str, row, col) -> Figure:
    return plot_vlm_heatmap(positions, aggregate=aggregate, cmap=cmap)


def plot_position_heatmap(
    positions: pd.DataFrame,
    aggregate: str = "representative",
    cmap: str = "viridis",
    row: str | None = "layout",
    col: str | None = "n",
) -> Figure:
    """x = evaluation step (% of training), y = target position (1-based, 1 at the bottom),
    colour = held-out accuracy; one panel per model (columns) and N × layout (rows). Each panel
    runs to its own last evaluation, so a run that learned fast has a short x axis (as Fig. 7).
    The heatmap of probe runs (`plot_heatmap` picks it)."""
    need_columns(positions, ["run", "label", "step", "position", "accuracy", "pct"], "per-position heatmap")
    rows_a, rows_b = facets(positions, row, col)
    panels = [(a, b) for a in rows_a for b in rows_b]
    panels = [p for p in panels if len(select(positions, **facet_eq(row, p[0], col, p[1])))]
    models = model_order(positions["label"])
    with style():
        fig, axes = panel_grid(len(panels), len(models), 3.6, 2.9)
        mesh = None
        for i, (a, b) in enumerate(panels):
            for j, model in enumerate(models):
                ax = axes[i, j]
                sub = select(positions, label=model, **facet_eq(row, a, col, b))
                if not len(sub):
                    ax.set_axis_off()
                    continue
                mat = heatmap_matrix(sub, aggregate)
                xs = np.asarray(mat.columns, dtype=float)
                ys = np.asarray(mat.index, dtype=float) + 1
                mesh = ax.pcolormesh(
                    cell_edges(xs),
                    cell_edges(ys),
                    mat.to_numpy(),
                    cmap=cmap,
                    vmin=0,
                    vmax=1,
                    shading="flat",
                    rasterized=True,
                )
                ax.set_xlim(max(cell_edges(xs)[0], 0.0), min(cell_edges(xs)[-1], 100.0))
                ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
                ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
                ax.set_xlabel("% of training steps")
                ax.set_ylabel("target position" if j == 0 else "")
                ax.grid(False)
                runs = sub["run"].nunique()
                what = (
                    f"median run of {runs}"
                    if aggregate == "representative" and runs > 1
                    else f"mean of {runs} runs"
                    if runs > 1
                    else None
                )
                ax.set_title(
                    panel_title(a if row == "layout" else None, b if col == "n" else None, None)
                    + f"\n{wrap_label(model)}"
                    + (f" ({what})" if what else ""),
                    fontsize=10,
                )
        if mesh is not None:
            fig.colorbar(mesh, ax=axes.ravel().tolist(), label="held-out accuracy", shrink=0.9)
        fig.suptitle("Accuracy per target position during training")
    return fig



# === VLM runs: accuracy per image cell ===


def cell_snapshots(positions: pd.DataFrame, at: Sequence[float] = VLM_SNAPSHOTS) -> pd.DataFrame:
    """Per run × snapshot (`at`, % of training) × cell: the positions rows of the run's first
    evaluation at or after `at` % of training, or of its last one if it stopped before (a run
    that reached the threshold early keeps its last accuracies, as `heatmap_matrix` does)."""
    evals = positions[["run", "step", "pct"]].drop_duplicates(["run", "step"]).sort_values(["run", "step"])
    picks = []
    for run, g in evals.groupby("run", sort=False):
        pct = g["pct"].to_numpy(float)
        for target in at:
            later = np.flatnonzero(pct >= float(target) - 1e-9)
            picks.append(
                {"run": run, "at": float(target), "step": g["step"].iloc[later[0] if len(later) else -1]}
            )
    return pd.DataFrame(picks).merge(positions, on=["run", "step"], how="left")



def _steps_text(sub: pd.DataFrame, target: float) -> str:
    """Which evaluation a snapshot shows: "step 40 (33%)"; "…, last)" where the run had stopped
    before `target` % of training (it reached the threshold); a step range for a mean over runs."""
    steps = sorted(pd.unique(sub["step"].dropna()))
    if not steps:
        return "no evaluation"
    if len(steps) > 1:
        return f"steps {human(steps[0])}–{human(steps[-1])}"
    pct = sub["pct"].dropna()
    if not len(pct):
        return f"step {human(steps[0])}"
    last = ", last" if pct.iloc[0] < float(target) - 1e-9 else ""
    return f"step {human(steps[0])} ({pct.iloc[0]:.0f}%{last})"



def plot_vlm_heatmap(
    positions: pd.DataFrame,
    aggregate: str = "representative",
    cmap: str = "viridis",
    at: Sequence[float] = VLM_SNAPSHOTS,
) -> Figure:
    """The per-position heatmap of VLM runs, whose positions are the 3 × 3 image cells of the
    target box's centre: held-out Acc@IoU≥0.5 per cell, drawn as the image's grid (top left =
    top left of the image), at 25 / 50 / 100% of training (`at`; columns: the first evaluation
    at or after it, the last one for a run that stopped earlier), one row per model (+ connector)
    × layout: the group's median run (`aggregate="representative"`) or the mean over its runs.
    A cell with no evaluation examples is grey."""
    need_columns(positions, ["run", "label", "step", "position", "accuracy", "pct"], "per-cell heatmap")
    if aggregate not in ("representative", "mean"):
        raise UserError(f"unknown heatmap aggregate '{aggregate}' (allowed: representative, mean)")
    snaps = cell_snapshots(positions, at)
    groups = vlm_groups(positions)
    colours = colormap(cmap)
    with style():
        fig, axes = panel_grid(len(groups), len(at), 2.4, 2.3)
        image = None
        for i, (label, layout) in enumerate(groups):
            group = select(positions, label=label, **facet_eq("layout", layout, None, None))
            runs = group["run"].nunique()
            shown = (
                [representative_runs(group, by=())[0]]
                if aggregate == "representative"
                else list(group["run"].unique())
            )
            what = (
                (f"median run of {runs}" if aggregate == "representative" else f"mean of {runs} runs")
                if runs > 1
                else ""
            )
            for j, target in enumerate(at):
                ax = axes[i, j]
                sub = snaps[snaps["run"].isin(shown) & (snaps["at"] == float(target))]
                grid = cell_grid(sub.set_index("position")["accuracy"])
                image = draw_cells(ax, grid, colours, 0.0, 1.0, lambda v: f"{v:.0%}")
                header = f"{target:g}% of training\n" if i == 0 else ""
                ax.set_title(header + _steps_text(sub, target), fontsize=9)
                if j == 0:
                    name = f"{label}\n{layout}" if layout is not None else str(label)
                    ax.set_ylabel(name + (f"\n({what})" if what else ""), fontsize=9)
                else:
                    ax.set_yticklabels([])
                if i < len(groups) - 1:
                    ax.set_xticklabels([])
        if image is not None:
            fig.colorbar(image, ax=axes.ravel().tolist(), label=ACC_VLM, shrink=colorbar_shrink(len(groups)))
        fig.suptitle("Accuracy per image cell of the target's centre during training")
    return fig



HEATMAPS = {PROBE: plot_position_heatmap, VLM: _vlm_heatmap}
