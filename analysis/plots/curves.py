"""Fig. 6 / 11: held-out accuracy during training, one line per run; the variant per kind of run
is a row of CURVES (VLM runs: Acc@IoU≥0.5, and where stage 1 ends)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from analysis.load import PROBE, VLM, kind_of
from analysis.plots.style import (
    ACC_VLM,
    STAGE1_STYLE,
    THRESHOLD_STYLE,
    blank_empty_panels,
    facets,
    figure_legend,
    lr_label,
    lr_styles,
    model_palette,
    need_columns,
    panel_grid,
    panel_title,
    select,
    style,
    thresholds,
)
from probes.errors import UserError


@dataclass(frozen=True)
class CurveSpec:
    """What differs between kinds of run in the learning curves."""

    ylabel: str  # of `accuracy`
    stage_lines: bool  # mark where stage 1 ends (`stage1_steps`)


CURVES = {PROBE: CurveSpec("held-out accuracy", stage_lines=False), VLM: CurveSpec(ACC_VLM, stage_lines=True)}


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
    need_columns(metrics, ["run", "label", x, y], "learning curves")
    spec = curve_spec(metrics)
    rows, cols = facets(metrics, row, col)
    palette = model_palette(metrics["label"])
    has_lr = "lr" in metrics and metrics["lr"].notna().any()
    styles = lr_styles(metrics["lr"]) if has_lr else {}
    with style():
        fig, axes = panel_grid(len(rows), len(cols), 4.2, 3.0, sharex=True, sharey=True)
        empty = np.zeros(axes.shape, dtype=bool)
        xlabel = "% of training steps" if x == "pct" else x
        for i, rv in enumerate(rows):
            for j, cv in enumerate(cols):
                ax = axes[i, j]
                sub = select(metrics, **{k: v for k, v in ((row, rv), (col, cv)) if k})
                ax.set_title(panel_title(rv if row == "layout" else None, cv if col == "n" else None))
                empty[i, j] = not len(sub)
                if empty[i, j]:
                    continue
                for _run, g in sub.sort_values(x).groupby("run", sort=False):
                    first = g.iloc[0]
                    ax.plot(
                        g[x],
                        g[y],
                        color=palette[first["label"]],
                        linewidth=1.6,
                        alpha=0.9,
                        linestyle=styles.get(first["lr"], "-") if has_lr else "-",
                    )
                for thr in thresholds(sub, threshold):
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
                ax.set_ylim(-0.02, 1.02)
                if x == "pct":
                    ax.set_xlim(0, 100)
                    ax.xaxis.set_major_formatter(PercentFormatter(100, decimals=0))
                ax.set_xlabel(xlabel if i == len(rows) - 1 else "")
                ax.set_ylabel(
                    (spec.ylabel if y == "accuracy" else "held-out accuracy") if j == 0 else ""
                )
                if spec.stage_lines and x == "pct":
                    for v in _stage1_pcts(sub)[:3]:
                        ax.axvline(v, **STAGE1_STYLE)
        blank_empty_panels(axes, empty, xlabel)
        handles = [Line2D([], [], color=c, linewidth=2.5, label=m) for m, c in palette.items()]
        if has_lr and len(styles) > 0:
            handles += [
                Line2D([], [], color="0.2", linestyle=s, label=f"lr {lr_label(v)}") for v, s in styles.items()
            ]
        handles.append(Line2D([], [], label="threshold", **THRESHOLD_STYLE))
        if spec.stage_lines and x == "pct" and _stage1_pcts(metrics):
            handles.append(Line2D([], [], label="end of stage 1 (connector only)", **STAGE1_STYLE))
        figure_legend(fig, handles)
        fig.suptitle("Held-out accuracy during training (one line per run)")
    return fig


def curve_spec(metrics: pd.DataFrame) -> CurveSpec:
    """The CURVES row of the runs in `metrics`; a table that mixes kinds is drawn as probe runs."""
    try:
        return CURVES.get(kind_of(metrics), CURVES[PROBE])
    except UserError:
        return CURVES[PROBE]


def _stage1_pcts(df: pd.DataFrame) -> list[float]:
    """Where stage 1 of VLM runs ends, in % of training (`stage1_steps / max_steps * 100`)."""
    if "stage1_steps" not in df or "max_steps" not in df:
        return []
    pct = pd.to_numeric(df["stage1_steps"], errors="coerce") / pd.to_numeric(df["max_steps"], errors="coerce")
    return sorted(v for v in pd.unique((pct * 100).dropna()) if 0 < v < 100)

