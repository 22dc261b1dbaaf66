"""The paper's figures and the sample-efficiency figures, from the tidy tables of `analysis.load`.

One function per figure kind, each returning a matplotlib `Figure` (built without pyplot, so
nothing global changes and no display is needed); `save_figure` writes it as PNG and PDF.

    plot_curves(metrics)          Fig. 6 / 11: held-out accuracy vs % of training, per N × layout
    plot_heatmap(positions)       Fig. 7 / 12: accuracy per target position vs % of training, per model
    plot_efficiency(runs)         steps / examples to threshold vs N (log), censored runs marked
    plot_learning_order(positions)  % of training at which each position first passes the threshold
    plot_runs(DIR, out=FIGDIR)    all of them for the runs under DIR, as `probes plot` does

VLM runs (`analysis.load.run_kind`) have no N and their positions are the 3 × 3 image cells of the
target's centre, so the same calls draw their own figures: `plot_vlm_heatmap` (accuracy per cell as
the image's grid at 25 / 50 / 100% of training), `plot_vlm_efficiency` (x = prompt layout) and
`plot_vlm_learning_order` (when each cell is learned, as the image's grid); curves are the same.

Colour is per model (Pythia blues, Mamba oranges, darker = larger), line style per learning rate,
the threshold is a dashed grey line, and % of training is `step / max_steps * 100`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
    PercentFormatter,
)
from pydantic import Field

from analysis.efficiency import efficiency, efficiency_summary, learning_order, learning_order_summary
from analysis.load import (
    PROBE,
    VLM,
    VLM_GRID,
    NoRunsError,
    Tables,
    is_vlm,
    kind_of,
    load_metrics,
    load_positions,
    load_runs,
    model_family,
    model_order,
)
from probes.config import Config
from probes.errors import UserError

KINDS = ("curves", "heatmap", "efficiency")
Kind = Literal["curves", "heatmap", "efficiency", "all"]
LAYOUT_ORDER = ("suffix", "prefix", "task-agnostic", "task-aware", "query-first")  # text, then VLM
_FAMILY_SHADES = {  # light → dark; the largest model of a family gets the darkest shade
    "pythia": ("#6baed6", "#08306b", "#2171b5"),
    "mamba": ("#fdae6b", "#a63603", "#e6550d"),
}
_OTHER = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_LR_STYLES = ["-", ":", "-.", (0, (8, 2)), (0, (3, 1, 1, 1, 1, 1))]
THRESHOLD_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 1.2, "zorder": 1}
CENSORED_MARKER = {
    "marker": "^",
    "markerfacecolor": "none",
    "markersize": 8,
    "markeredgewidth": 1.5,
    "linestyle": "none",
}
CENSORED_LABEL = "never reached (drawn at the budget)"
STAGE1_STYLE = {"color": "0.45", "linestyle": "-.", "linewidth": 0.9, "zorder": 1.5}


# === Style ===


@contextlib.contextmanager
def style():
    """Readable defaults for every figure here, without touching global matplotlib state."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        yield


def model_palette(models: Iterable[str]) -> dict[str, str]:
    """A fixed colour per model: Pythia blues, Mamba oranges (by size), others distinct colours."""
    palette: dict[str, str] = {}
    ordered = model_order(models)
    for family, (light, dark, base) in _FAMILY_SHADES.items():
        members = [m for m in ordered if model_family(m) == family]
        shades = [base] if len(members) == 1 else sns.blend_palette([light, dark], len(members))
        palette.update({m: _hex(c) for m, c in zip(members, shades)})
    others = [m for m in ordered if model_family(m) == "other"]
    palette.update({m: _OTHER[i % len(_OTHER)] for i, m in enumerate(others)})
    return palette


def _hex(c) -> str:
    from matplotlib.colors import to_hex

    return to_hex(c)


def fmt_lr(lr) -> str:
    """1e-3 → "1e-3", 5e-05 → "5e-5", "x" → "x"."""
    try:
        mant, exp = f"{float(lr):.0e}".split("e")
    except (TypeError, ValueError):
        return str(lr)
    return f"{mant}e{int(exp)}"


def lr_styles(lrs: Iterable) -> dict:
    vals = sorted({v for v in lrs if pd.notna(v)}, key=lambda v: (not isinstance(v, (int, float)), v))
    return {v: _LR_STYLES[i % len(_LR_STYLES)] for i, v in enumerate(vals)}


def _facets(df: pd.DataFrame, row: str | None, col: str | None) -> tuple[list, list]:
    def values(name):
        if name is None or name not in df or df[name].isna().all():
            return [None]
        vals = list(pd.unique(df[name].dropna()))
        if name == "layout":
            return [v for v in LAYOUT_ORDER if v in vals] + sorted(v for v in vals if v not in LAYOUT_ORDER)
        return sorted(vals)

    return values(row), values(col)


def _select(df: pd.DataFrame, **eq) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for key, value in eq.items():
        if value is not None:
            mask &= df[key] == value
    return df[mask]


def _panel_title(layout=None, n=None, extra: str | None = None) -> str:
    parts = [str(layout)] if layout is not None else []
    if n is not None:
        parts.append(f"N = {int(n)}" if float(n).is_integer() else f"N = {n}")
    if extra:
        parts.append(extra)
    return " · ".join(parts)


def _grid(nrows: int, ncols: int, width: float, height: float, **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols + 1.6, height * nrows + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False, **kw))
    return fig, axes


def _legend(fig: Figure, handles: list) -> None:
    """One legend for the whole figure, below the panels (panels keep their width)."""
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)


def _thresholds(df: pd.DataFrame, threshold: float | None) -> list[float]:
    if threshold is not None:
        return [float(threshold)]
    if "threshold" in df and df["threshold"].notna().any():
        return sorted(pd.unique(pd.to_numeric(df["threshold"], errors="coerce").dropna()))
    return []


def _need(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    if df is None or not len(df):
        raise NoRunsError(f"nothing to draw for the {what}: the table is empty")
    missing = [c for c in cols if c not in df]
    if missing:
        raise UserError(f"cannot draw the {what}: the table lacks column(s) {', '.join(missing)}")


# === Fig. 6 / 11: learning curves ===


def plot_curves(
    metrics: pd.DataFrame,
    threshold: float | None = None,
    row: str | None = "layout",
    col: str | None = "n",
    x: str = "pct",
    y: str = "accuracy",
) -> Figure:
    """Held-out accuracy vs % of training steps, one line per run (colour = model, line style =
    learning rate), a dashed line at the threshold, one panel per N (columns) and layout (rows)."""
    _need(metrics, ["run", "label", x, y], "learning curves")
    vlm = bool(is_vlm(metrics).all())  # VLM runs: accuracy is Acc@IoU≥0.5, training has 2 stages
    rows, cols = _facets(metrics, row, col)
    palette = model_palette(metrics["label"])
    has_lr = "lr" in metrics and metrics["lr"].notna().any()
    styles = lr_styles(metrics["lr"]) if has_lr else {}
    with style():
        fig, axes = _grid(len(rows), len(cols), 4.2, 3.0, sharex=True, sharey=True)
        for i, rv in enumerate(rows):
            for j, cv in enumerate(cols):
                ax = axes[i, j]
                sub = _select(metrics, **{k: v for k, v in ((row, rv), (col, cv)) if k})
                for run, g in sub.sort_values(x).groupby("run", sort=False):
                    first = g.iloc[0]
                    ax.plot(
                        g[x],
                        g[y],
                        color=palette[first["label"]],
                        linewidth=1.6,
                        alpha=0.9,
                        linestyle=styles.get(first["lr"], "-") if has_lr else "-",
                    )
                for thr in _thresholds(sub, threshold):
                    ax.axhline(thr, **THRESHOLD_STYLE)
                    ax.annotate(
                        f"{thr:.0%}",
                        (0.005, thr),
                        xycoords=("axes fraction", "data"),
                        xytext=(2, 3),
                        textcoords="offset points",
                        fontsize=8,
                        color="0.35",
                    )
                ax.set_title(_panel_title(rv if row == "layout" else None, cv if col == "n" else None))
                ax.set_ylim(-0.02, 1.02)
                if x == "pct":
                    ax.set_xlim(0, 100)
                    ax.xaxis.set_major_formatter(PercentFormatter(100, decimals=0))
                ax.set_xlabel(("% of training steps" if x == "pct" else x) if i == len(rows) - 1 else "")
                ax.set_ylabel(
                    (_ACC_VLM if vlm and y == "accuracy" else "held-out accuracy") if j == 0 else ""
                )
                if vlm and x == "pct":
                    for v in _stage1_pcts(sub)[:3]:
                        ax.axvline(v, **STAGE1_STYLE)
        handles = [Line2D([], [], color=c, linewidth=2.5, label=m) for m, c in palette.items()]
        if has_lr and len(styles) > 0:
            handles += [
                Line2D([], [], color="0.2", linestyle=s, label=f"lr {fmt_lr(v)}") for v, s in styles.items()
            ]
        handles.append(Line2D([], [], label="threshold", **THRESHOLD_STYLE))
        if vlm and x == "pct" and _stage1_pcts(metrics):
            handles.append(Line2D([], [], label="end of stage 1 (connector only)", **STAGE1_STYLE))
        _legend(fig, handles)
        fig.suptitle("Held-out accuracy during training (one line per run)")
    return fig


def _stage1_pcts(df: pd.DataFrame) -> list[float]:
    """Where stage 1 of VLM runs ends, in % of training (`stage1_steps / max_steps * 100`)."""
    if "stage1_steps" not in df or "max_steps" not in df:
        return []
    pct = pd.to_numeric(df["stage1_steps"], errors="coerce") / pd.to_numeric(df["max_steps"], errors="coerce")
    return sorted(v for v in pd.unique((pct * 100).dropna()) if 0 < v < 100)


# === Fig. 7 / 12: per-position heatmaps ===


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
    """x = evaluation step (% of training), y = target position (1-based, 1 at the bottom),
    colour = held-out accuracy; one panel per model (columns) and N × layout (rows). Each panel
    runs to its own last evaluation, so a run that learned fast has a short x axis (as Fig. 7).
    VLM runs, whose positions are image cells, get `plot_vlm_heatmap` (3 × 3 image grids)."""
    _need(positions, ["run", "label", "step", "position", "accuracy", "pct"], "per-position heatmap")
    if kind_of(positions) == VLM:
        return plot_vlm_heatmap(positions, aggregate=aggregate, cmap=cmap)
    rows_a, rows_b = _facets(positions, row, col)
    panels = [(a, b) for a in rows_a for b in rows_b]
    panels = [p for p in panels if len(_select(positions, **_eq(row, p[0], col, p[1])))]
    models = model_order(positions["label"])
    with style():
        fig, axes = _grid(len(panels), len(models), 3.6, 2.9)
        mesh = None
        for i, (a, b) in enumerate(panels):
            for j, model in enumerate(models):
                ax = axes[i, j]
                sub = _select(positions, label=model, **_eq(row, a, col, b))
                if not len(sub):
                    ax.set_axis_off()
                    continue
                mat = heatmap_matrix(sub, aggregate)
                xs = np.asarray(mat.columns, dtype=float)
                ys = np.asarray(mat.index, dtype=float) + 1
                mesh = ax.pcolormesh(
                    _edges(xs),
                    _edges(ys),
                    mat.to_numpy(),
                    cmap=cmap,
                    vmin=0,
                    vmax=1,
                    shading="flat",
                    rasterized=True,
                )
                ax.set_xlim(max(_edges(xs)[0], 0.0), min(_edges(xs)[-1], 100.0))
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
                    _panel_title(a if row == "layout" else None, b if col == "n" else None, None)
                    + f"\n{model}"
                    + (f" ({what})" if what else ""),
                    fontsize=10,
                )
        if mesh is not None:
            fig.colorbar(mesh, ax=axes.ravel().tolist(), label="held-out accuracy", shrink=0.9)
        fig.suptitle("Accuracy per target position during training")
    return fig


# === VLM runs: accuracy per image cell ===

VLM_SNAPSHOTS = (25.0, 50.0, 100.0)  # % of training at which plot_vlm_heatmap shows the image grid
_CELL_COLS = ("left", "centre", "right")
_CELL_ROWS = ("top", "middle", "bottom")
_ROW_OF_REGION = {"beginning": "top", "middle": "middle", "end": "bottom"}  # thirds of the cells, row-major
_ACC_VLM = "held-out Acc@IoU≥0.5"


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


def cell_grid(accuracy: pd.Series) -> np.ndarray:
    """Accuracy per cell (a Series indexed by `position`, row-major) → the image's 3 × 3 grid
    (row 0 at the top); NaN where a cell had no evaluation examples."""
    values = pd.to_numeric(accuracy, errors="coerce").groupby(level=0).mean()
    return values.reindex(range(VLM_GRID * VLM_GRID)).to_numpy(float).reshape(VLM_GRID, VLM_GRID)


def _vlm_groups(df: pd.DataFrame) -> list[tuple]:
    """(label, layout) pairs present, models in `model_order`, layouts in LAYOUT_ORDER."""
    layouts, _ = _facets(df, "layout", None)
    groups = []
    for label in model_order(df["label"]):
        for layout in layouts:
            if len(_select(df, label=label, **_eq("layout", layout, None, None))):
                groups.append((label, layout))
    return groups


def _draw_cells(ax, grid: np.ndarray, cmap, vmin: float, vmax: float, fmt, missing: np.ndarray | None = None):
    """One 3 × 3 image grid: coloured cells, each with its value written in it (`fmt`), or where
    it is NaN the text of `missing` ("–" by default), axes in image terms."""
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, origin="upper")
    for (r, c), v in np.ndenumerate(grid):
        rgba = image.cmap(image.norm(v)) if np.isfinite(v) else image.cmap.get_bad()
        light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55
        text = fmt(v) if np.isfinite(v) else ("–" if missing is None else missing[r, c])
        ax.text(
            c,
            r,
            text,
            ha="center",
            va="center",
            fontsize=8 if len(text) < 5 else 7.5,
            color="0.1" if light else "white",
        )
    ax.set_xticks(range(VLM_GRID), _CELL_COLS, fontsize=7)
    ax.set_yticks(range(VLM_GRID), _CELL_ROWS, fontsize=7)
    ax.tick_params(length=0)
    ax.grid(False)
    return image


def _cmap(name: str):
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="0.88")


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
    _need(positions, ["run", "label", "step", "position", "accuracy", "pct"], "per-cell heatmap")
    if aggregate not in ("representative", "mean"):
        raise UserError(f"unknown heatmap aggregate '{aggregate}' (allowed: representative, mean)")
    snaps = cell_snapshots(positions, at)
    groups = _vlm_groups(positions)
    colours = _cmap(cmap)
    with style():
        fig, axes = _grid(len(groups), len(at), 2.4, 2.3)
        image = None
        for i, (label, layout) in enumerate(groups):
            group = _select(positions, label=label, **_eq("layout", layout, None, None))
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
                image = _draw_cells(ax, grid, colours, 0.0, 1.0, lambda v: f"{v:.0%}")
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
            fig.colorbar(image, ax=axes.ravel().tolist(), label=_ACC_VLM, shrink=_shrink(len(groups)))
        fig.suptitle("Accuracy per image cell of the target's centre during training")
    return fig


def plot_vlm_learning_order(
    positions: pd.DataFrame, threshold: float | None = None, rule: str = "stays", cmap: str = "plasma_r"
) -> Figure:
    """The learning order of VLM runs: per image cell of the target's centre (3 × 3, as in the
    image), the % of training at which half of a group's runs had learned it (accuracy stays
    ≥ the threshold from then on with `rule` "stays", first passes it with "first"); "never"
    where fewer did, "–" where the cell had no evaluation examples. One panel per model
    (+ connector, rows) × layout (columns); each names the order in which the image's rows
    (top, middle, bottom: the thirds of the row-major cells) were learned."""
    _need(positions, ["run", "label", "step", "position", "accuracy", "pct"], "learning order")
    order = learning_order(positions, threshold, rule=rule)
    summary = learning_order_summary(order)
    labels = model_order(order["label"])
    layouts, _ = _facets(order, "layout", None)
    colours = _cmap(cmap)
    with style():
        fig, axes = _grid(len(labels), len(layouts), 2.6, 2.5)
        image = None
        for i, label in enumerate(labels):
            for j, layout in enumerate(layouts):
                ax = axes[i, j]
                where = {"label": label, **_eq("layout", layout, None, None)}
                sub = _select(order, **where)
                if not len(sub):
                    ax.set_axis_off()
                    continue
                examples = _select(positions, **where).groupby("position")["accuracy"].count()
                missing = np.where(cell_grid(examples) > 0, "never", "–")  # never learned / no examples
                grid = cell_grid(sub.set_index("position")["pct"])
                image = _draw_cells(ax, grid, colours, 0.0, 100.0, lambda v: f"{v:.0f}%", missing)
                runs = int(sub["runs"].max())
                s = _select(summary, **where)
                header = f"{layout}\n" if i == 0 and layout is not None else ""
                note = _rows_order(s["order"].iloc[0]) if len(s) else ""
                ax.set_title(header + note + (f" ({runs} runs)" if runs > 1 else ""), fontsize=9)
                ax.set_ylabel(str(label) if j == 0 else "", fontsize=9)
                if j:
                    ax.set_yticklabels([])
        if image is not None:
            fig.colorbar(
                image,
                ax=axes.ravel().tolist(),
                label="% of training when learned" + (" (for good)" if rule == "stays" else " (first)"),
                shrink=_shrink(len(labels)),
                format=PercentFormatter(100, decimals=0),
            )
        fig.suptitle(
            "Learning order: when each image cell of the target's centre is learned\n"
            + (
                "(stays above the threshold from then on)"
                if rule == "stays"
                else "(first passes the threshold)"
            )
        )
    return fig


def _shrink(rows: int) -> float:
    """Colour bar length for a figure of `rows` rows of 3 × 3 grids: not taller than ~2 rows."""
    return 0.9 if rows <= 2 else max(0.25, 1.8 / rows)


def _rows_order(order: str) -> str:
    """A `learning_order_summary` order in image terms (the thirds of the row-major cells are the
    image's rows): "end → beginning; never: middle" → "rows: bottom → top; never: middle"."""
    if order == "never: " + ", ".join(_ROW_OF_REGION):
        return "no row learned"
    return "rows: " + re.sub(r"\b(beginning|end)\b", lambda m: _ROW_OF_REGION[m.group(1)], order)


def _eq(row, a, col, b) -> dict:
    return {k: v for k, v in ((row, a), (col, b)) if k is not None and v is not None}


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (half-way between neighbours)."""
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate(
        [[centres[0] - (mid[0] - centres[0])], mid, [centres[-1] + (centres[-1] - mid[-1])]]
    )


# === Sample efficiency ===


def _log2_offsets(models: list[str], width: float) -> dict[str, float]:
    """Side-by-side positions (in log2 units) of each model's points around an N."""
    k = len(models)
    if k == 1:
        return {models[0]: 0.0}
    return {m: (i - (k - 1) / 2) * width / (k - 1) for i, m in enumerate(models)}


def plot_efficiency(
    runs: pd.DataFrame,
    measures: Sequence[str] = ("steps", "examples"),
    metrics: pd.DataFrame | None = None,
    threshold: float | None = None,
) -> Figure:
    """Steps (top) and examples (bottom) to reach the threshold vs N, one panel per layout, log
    scales. Each run is a small dot (spread over seeds, learning rates, inits), the line joins the
    per-model medians; a run that never reached the threshold is an open triangle at its budget.
    VLM runs have no N: their figure is `plot_vlm_efficiency` (x = prompt layout). With
    `threshold` (and `metrics`), "reached" is the first evaluation at or above it (`efficiency`)."""
    eff = efficiency(runs, metrics, threshold)
    if not len(eff):
        raise NoRunsError("no finished runs (status reached / not_reached) to measure efficiency on")
    if kind_of(eff) == VLM:
        return plot_vlm_efficiency(runs, measures, metrics, threshold)
    eff = eff.assign(n=pd.to_numeric(eff["n"], errors="coerce")) if "n" in eff else eff.assign(n=1)
    summary = efficiency_summary(eff)
    layouts, _ = _facets(eff, "layout", None)
    models = model_order(eff["label"])
    palette = model_palette(models)
    ns = sorted(pd.unique(eff["n"].dropna()))
    gap = float(np.diff(np.log2(ns)).min()) if len(ns) > 1 else 1.0  # closest Ns, in log2 units
    offsets = _log2_offsets(models, width=min(0.2, 0.3 * gap))
    spread = min(0.04, 0.06 * gap)  # jitter of single runs around their model's position
    rng = np.random.default_rng(0)
    with style():
        fig, axes = _grid(len(measures), len(layouts), 4.2, 3.0, sharex=True, sharey="row")
        for i, measure in enumerate(measures):
            for j, layout in enumerate(layouts):
                ax = axes[i, j]
                sub = _select(eff, layout=layout)
                summ = _select(summary, layout=layout) if "layout" in summary else summary
                for model in models:
                    colour, g = palette[model], sub[sub["label"] == model]
                    if not len(g):
                        continue
                    jitter = rng.uniform(-spread, spread, len(g))
                    xs = g["n"].to_numpy(float) * 2 ** (offsets[model] + jitter)
                    _efficiency_runs(ax, xs, g, measure, colour)
                    s = summ[summ["label"] == model].sort_values("n")
                    sx = s["n"].to_numpy(float) * 2 ** offsets[model]
                    _efficiency_medians(ax, sx, s, measure, colour, line=True)
                _efficiency_budgets(ax, sub, measure)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                _log_axis(ax.yaxis)
                ax.xaxis.set_major_locator(FixedLocator(ns))
                ax.xaxis.set_major_formatter(_int_formatter())
                ax.xaxis.set_minor_locator(NullLocator())
                ax.xaxis.set_minor_formatter(NullFormatter())
                if ns:
                    pad = 2 ** max(0.5 * min(gap, 1.0), 0.25)
                    ax.set_xlim(min(ns) / pad, max(ns) * pad)
                ax.set_title(_panel_title(layout) if i == 0 else "")
                ax.set_xlabel("context length N" if i == len(measures) - 1 else "")
                ax.set_ylabel(f"{measure} to threshold" if j == 0 else "")
        _legend(fig, _efficiency_handles(palette, line=True))
        fig.suptitle(f"Sample efficiency: training needed to reach {_threshold_text(eff)}")
    return fig


def plot_vlm_efficiency(
    runs: pd.DataFrame,
    measures: Sequence[str] = ("steps", "examples"),
    metrics: pd.DataFrame | None = None,
    threshold: float | None = None,
) -> Figure:
    """The sample-efficiency figure of VLM runs, which have no N: steps (top) and examples (bottom)
    to reach the threshold (Acc@IoU≥0.5) per prompt layout (x: task-agnostic, task-aware,
    query-first), colour = model + connector, log scale. Each run is a small dot, each model's
    median a diamond (open when most of its runs never got there), a run that never reached the
    threshold an open triangle at its budget; steps count both stages, and a dash-dotted line marks
    the end of stage 1 (connector only)."""
    eff = efficiency(runs, metrics, threshold)
    if not len(eff):
        raise NoRunsError("no finished runs (status reached / not_reached) to measure efficiency on")
    if "layout" not in eff or eff["layout"].isna().all():
        eff = eff.assign(layout="default")
    summary = efficiency_summary(eff)
    layouts, _ = _facets(eff, "layout", None)
    models = model_order(eff["label"])
    palette = model_palette(models)
    width = 0.7  # of each layout's slot, shared by its models
    offsets = {m: (k - (len(models) - 1) / 2) * width / len(models) for k, m in enumerate(models)}
    spread = min(0.05, 0.2 * width / len(models))  # jitter of single runs around their model's position
    stage1 = pd.to_numeric(runs.get("stage1_steps", pd.Series(dtype=float)), errors="coerce")
    stage1 = sorted(v for v in pd.unique(stage1.dropna()) if v > 0)
    rng = np.random.default_rng(0)
    with style():
        fig, axes = _grid(len(measures), 1, max(4.6, 1.6 * len(layouts) + 1.0), 3.0, sharex=True)
        for i, measure in enumerate(measures):
            ax = axes[i, 0]
            for x, layout in enumerate(layouts):
                sub, summ = _select(eff, layout=layout), _select(summary, layout=layout)
                for model in models:
                    colour, g = palette[model], sub[sub["label"] == model]
                    if not len(g):
                        continue
                    xs = x + offsets[model] + rng.uniform(-spread, spread, len(g))
                    _efficiency_runs(ax, xs, g, measure, colour)
                    s = summ[summ["label"] == model]
                    _efficiency_medians(
                        ax, np.full(len(s), x + offsets[model]), s, measure, colour, line=False
                    )
            _efficiency_budgets(ax, eff, measure)
            lines = stage1[:3] if measure == "steps" else []
            for v in lines:
                ax.axhline(v, **STAGE1_STYLE)
            ax.set_yscale("log")
            shown = np.concatenate(
                [eff[measure].to_numpy(float), eff[f"budget_{measure}"].to_numpy(float), lines]
            )
            shown = shown[np.isfinite(shown) & (shown > 0)]
            if len(shown):  # room around the points and lines, which may sit at the very edges
                ax.set_ylim(shown.min() / 1.4, shown.max() * 1.4)
            _log_axis(ax.yaxis)
            ax.set_xticks(range(len(layouts)), [str(v) for v in layouts])
            ax.set_xlim(-0.5, len(layouts) - 0.5)
            ax.grid(axis="x", visible=False)
            ax.set_xlabel("prompt layout" if i == len(measures) - 1 else "")
            ax.set_ylabel(f"{measure} to threshold")
        handles = _efficiency_handles(palette, line=False)
        if stage1:
            handles.append(Line2D([], [], label="end of stage 1 (connector only)", **STAGE1_STYLE))
        _legend(fig, handles)
        fig.suptitle(f"Sample efficiency (VLM): training needed to reach\n{_threshold_text(eff)} (Acc@IoU≥0.5)")
    return fig


def _threshold_text(eff: pd.DataFrame) -> str:
    """'held-out accuracy 0.95', or 'each run's threshold' when they differ."""
    values = pd.unique(pd.to_numeric(eff["threshold"], errors="coerce").dropna())
    return f"held-out accuracy {values[0]:g}" if len(values) == 1 else "each run's threshold"


def _efficiency_runs(ax, xs: np.ndarray, g: pd.DataFrame, measure: str, colour: str) -> None:
    """One dot per run that reached the threshold, an open triangle at its budget per one that did not."""
    done = ~g["censored"].to_numpy()
    ax.plot(
        xs[done],
        g[measure].to_numpy(float)[done],
        "o",
        color=colour,
        alpha=0.55,
        markersize=4.5,
        markeredgewidth=0,
    )
    ax.plot(xs[~done], g[measure].to_numpy(float)[~done], color=colour, **CENSORED_MARKER)


def _efficiency_medians(ax, sx: np.ndarray, s: pd.DataFrame, measure: str, colour: str, line: bool) -> None:
    """The group medians of `efficiency_summary` as diamonds (joined by a line if `line`); open
    where most of the group's runs were censored."""
    if line:
        ax.plot(sx, s[f"{measure}_median"], "-", color=colour, linewidth=2)
    open_ = s["median_censored"].to_numpy(bool)
    med = s[f"{measure}_median"].to_numpy(float)
    ax.plot(sx[~open_], med[~open_], "D", color=colour, markersize=6, markeredgecolor="white")
    ax.plot(
        sx[open_],
        med[open_],
        "D",
        color=colour,
        markersize=6,
        markerfacecolor="none",
        markeredgewidth=1.5,
    )  # most runs censored: the median is a lower bound


def _efficiency_budgets(ax, eff: pd.DataFrame, measure: str) -> None:
    for budget in pd.unique(eff[f"budget_{measure}"].dropna())[:3]:
        ax.axhline(budget, color="0.6", linewidth=0.8, linestyle=":", zorder=0)


def _efficiency_handles(palette: dict[str, str], line: bool) -> list:
    handles = [
        Line2D([], [], color=c, marker="D", linewidth=2 if line else 0, label=f"{m} (median)")
        for m, c in palette.items()
    ]
    handles += [
        Line2D([], [], color="0.4", marker="o", linestyle="none", alpha=0.6, label="one run"),
        Line2D([], [], color="0.3", label=CENSORED_LABEL, **CENSORED_MARKER),
        Line2D(
            [],
            [],
            color="0.3",
            marker="D",
            markerfacecolor="none",
            linestyle="none",
            label="median ≥ (most runs censored)",
        ),
        Line2D([], [], color="0.6", linestyle=":", label="budget (max steps)"),
    ]
    return handles


def _int_formatter():
    return FuncFormatter(lambda v, _: f"{v:g}")


def human(v: float) -> str:
    """1200 → "1.2k", 5e6 → "5M", 40 → "40"."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def _log_axis(axis) -> None:
    """Log-scale labels as plain numbers (2k, 5k, 10k), at 1, 2 and 5 of each decade."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
    axis.set_minor_formatter(NullFormatter())


def plot_learning_order(
    positions: pd.DataFrame, threshold: float | None = None, rule: str = "stays"
) -> Figure:
    """% of training at which each target position passes the threshold (for good with `rule`
    "stays", the default; the first time with "first"; see `analysis.efficiency.first_reach`),
    by half of a group's runs, one line per model, one panel per N × layout. Positions never
    learned are open triangles at 100%. Each panel names the order in which the context's thirds
    were learned. VLM runs, whose positions are image cells, get `plot_vlm_learning_order`."""
    _need(positions, ["run", "label", "step", "position", "accuracy", "pct"], "learning order")
    if kind_of(positions) == VLM:
        return plot_vlm_learning_order(positions, threshold, rule)
    order = learning_order(positions, threshold, rule=rule)
    summary = learning_order_summary(order)
    rows, cols = _facets(order, "layout", "n")
    palette = model_palette(order["label"])
    with style():
        fig, axes = _grid(len(rows), len(cols), 4.4, 3.0, sharey=True)
        for i, layout in enumerate(rows):
            for j, n in enumerate(cols):
                ax = axes[i, j]
                sub = _select(order, **_eq("layout", layout, "n", n))
                notes = []
                for model in model_order(sub["label"]):
                    g = sub[sub["label"] == model].sort_values("position")
                    colour = palette[model]
                    ax.plot(g["position1"], g["pct"], "-o", color=colour, markersize=3.5, linewidth=1.6)
                    never = g[g["pct"].isna()]
                    ax.plot(never["position1"], np.full(len(never), 100.0), color=colour, **CENSORED_MARKER)
                    s = _select(summary, label=model, **_eq("layout", layout, "n", n))
                    if len(s):
                        notes.append(f"{model}: {s['order'].iloc[0]}")
                ax.grid(axis="x", visible=False)
                _mark_regions(ax, sub)
                top = 106 + 9 * len(notes)  # headroom above 100% for the notes, clear of the data
                ax.text(
                    0.02,
                    0.985,
                    "\n".join(notes),
                    transform=ax.transAxes,
                    va="top",
                    fontsize=7.5,
                    bbox={
                        "facecolor": "white",
                        "edgecolor": "0.85",
                        "alpha": 0.9,
                        "boxstyle": "round,pad=0.3",
                    },
                )
                ax.set_ylim(-9, top)
                ax.set_yticks(range(0, 101, 20))
                ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
                ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
                ax.set_title(_panel_title(layout, n))
                ax.set_xlabel("target position (1 = start of context)")
                ax.set_ylabel(
                    ("passes threshold for good at" if rule == "stays" else "first passes threshold at")
                    if j == 0
                    else ""
                )
        handles = [Line2D([], [], color=c, marker="o", linewidth=2, label=m) for m, c in palette.items()]
        handles.append(Line2D([], [], color="0.3", label="never reached (drawn at 100%)", **CENSORED_MARKER))
        _legend(fig, handles)
        fig.suptitle(
            "Learning order: when each target position is learned"
            + (
                " (stays above the threshold from then on)"
                if rule == "stays"
                else " (first passes the threshold)"
            )
        )
    return fig


def _mark_regions(ax, order: pd.DataFrame) -> None:
    """Thin lines between the beginning / middle / end thirds and their names along the bottom."""
    if "region" not in order or not len(order):
        return
    spans = order.groupby("region", observed=True)["position1"].agg(["min", "max"])
    for k, (region, (lo, hi)) in enumerate(spans.iterrows()):
        if k:
            ax.axvline(lo - 0.5, color="0.75", linewidth=0.9, zorder=0)
        ax.text((lo + hi) / 2, -4.5, region, ha="center", va="center", fontsize=7.5, color="0.45")


# === Saving ===


def save_figure(
    fig: Figure, out_dir: str | Path, name: str, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150
) -> list[Path]:
    """Write `out_dir/name.png` and `out_dir/name.pdf` (or the formats given); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{name}.{fmt.lstrip('.')}"
        fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata=_metadata(fmt))
        paths.append(path)
    return paths


def _metadata(fmt: str) -> dict:
    # No timestamps or software versions in the files: the same runs give the same bytes.
    if fmt == "pdf":
        return {"CreationDate": None, "Producer": None, "Creator": None}
    if fmt == "png":
        return {"Software": None}
    return {}


class PlotConfig(Config):
    """What `probes plot` draws (every field is also a flag)."""

    kind: Kind = Field("all", description="curves | heatmap | efficiency | all")
    out: str = Field("figures", description="output directory for the PNG and PDF files")
    threshold: float | None = Field(
        None, gt=0, le=1, description="threshold line / steps to threshold / learning order (default: each run's own)"
    )
    formats: list[Literal["png", "pdf", "svg"]] = Field(
        ["png", "pdf"], min_length=1, description="file formats written"
    )
    heatmap: Literal["representative", "mean"] = Field(
        "representative", description="heatmap of the median run of each group, or the mean over runs"
    )
    dpi: int = Field(150, ge=50, le=600, description="PNG resolution")
    only: dict[str, Any] = Field(
        {},
        description="draw only the runs whose columns have these values "
        "(n: 10, layout: suffix; a list matches any of its items)",
    )
    prefix: str = Field("", description="prefix of the file names (heatmap.png → PREFIXheatmap.png)")
    order_rule: Literal["stays", "first"] = Field(
        "stays",
        description="learning order: a position is learned when its accuracy stays above the "
        "threshold from then on (stays) or first passes it (first)",
    )


def select_runs(runs: pd.DataFrame, only: dict[str, Any] | None) -> pd.DataFrame:
    """The runs whose columns match every `only` item ({"n": 10, "layout": "suffix"}); values
    are compared as text, and a list value matches any of its items."""
    for key, want in (only or {}).items():
        if key not in runs:
            raise UserError(
                f"cannot select on '{key}': the runs have no such column "
                f"(some are: {', '.join(c for c in runs.columns[:12])})"
            )
        wanted = {_text(w) for w in (want if isinstance(want, (list, tuple)) else [want])}
        runs = runs[runs[key].map(_text).isin(wanted)]
    if not len(runs):
        shown = [
            f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in only.items()
        ]
        raise NoRunsError(f"no run matches {' '.join(shown)}")
    return runs


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def plot_runs(
    *paths,
    kind: Kind = "all",
    out: str | Path = "figures",
    threshold: float | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    heatmap: str = "representative",
    dpi: int = 150,
    only: dict[str, Any] | None = None,
    prefix: str = "",
    order_rule: str = "stays",
) -> list[Path]:
    """Every figure of `kind` for the runs under `paths` (those matching `only`), written to `out`
    as `prefix` + curves.*, heatmap.*, efficiency.* and learning_order.*; returns the files.
    Text-probe and VLM runs are drawn apart; where both are present the VLM figures are named
    `prefix` + vlm-curves.* and so on."""
    kinds = KINDS if kind == "all" else (kind,)
    if any(k not in KINDS for k in kinds):
        raise UserError(f"unknown figure kind '{kind}' (allowed: {', '.join(KINDS)}, all)")
    runs = select_runs(load_runs(*paths), only)
    run_kinds = [k for k in (PROBE, VLM) if runs["kind"].eq(k).any()]
    written = []
    for run_kind in run_kinds:  # text-probe and VLM runs under one DIR: each kind its own figures
        name = prefix + ("vlm-" if run_kind == VLM and len(run_kinds) > 1 else "")
        selected = runs[runs["kind"] == run_kind]
        tables = Tables(selected, load_metrics(selected), load_positions(selected))
        written += _draw(tables, kinds, out, name, formats, dpi, threshold, heatmap, order_rule)
    return written


def _draw(tables: Tables, kinds, out, prefix, formats, dpi, threshold, heatmap, order_rule) -> list[Path]:
    figures = []
    if "curves" in kinds:
        figures.append(("curves", lambda: plot_curves(tables.metrics, threshold)))
    if "heatmap" in kinds:
        figures.append(("heatmap", lambda: plot_heatmap(tables.positions, aggregate=heatmap)))
    if "efficiency" in kinds:
        figures.append(("efficiency", lambda: plot_efficiency(tables.runs, metrics=tables.metrics, threshold=threshold)))
        figures.append(
            ("learning_order", lambda: plot_learning_order(tables.positions, threshold, order_rule))
        )
    written = []
    for name, make in figures:
        written += save_figure(make(), out, prefix + name, formats, dpi=dpi)
    return written
