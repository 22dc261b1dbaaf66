"""Sample efficiency: steps / examples to reach the threshold (`analysis.efficiency`), one dot per
run, the per-model median as a diamond, a run that never got there an open triangle at its budget,
a run still going (below the threshold) an open circle at its last evaluation.
Probe runs: x = N (log2), one panel per layout; VLM runs, which have no N: x = prompt layout
(`plot_vlm_efficiency`). `plot_efficiency` picks the variant from EFFICIENCY."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

from analysis.efficiency import efficiency, efficiency_summary
from analysis.load import PROBE, VLM, NoRunsError, model_order
from analysis.plots.style import (
    CENSORED_LABEL,
    CENSORED_MARKER,
    STAGE1_STYLE,
    facets,
    figure_legend,
    int_formatter,
    log_axis,
    model_palette,
    panel_grid,
    panel_title,
    select,
    style,
    variant,
)

RUNNING_MARKER = {"marker": "o", "markerfacecolor": "none", "markersize": 6, "markeredgewidth": 1.3,
                  "linestyle": "none"}
RUNNING_LABEL = "still running (drawn at its last evaluation)"


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
    per-model medians; a run that never reached the threshold is an open triangle at its budget, one
    still running below it an open circle at its last evaluation (both lower bounds). VLM runs have no N: their figure is `plot_vlm_efficiency` (x = prompt layout); EFFICIENCY picks
    the variant for the kind of run. With `threshold` (and `metrics`), "reached" is the first
    evaluation at or above it (`efficiency`)."""
    eff = _measured(runs, metrics, threshold)
    return variant(EFFICIENCY, eff, "sample-efficiency figure")(eff, runs, measures)


def _measured(runs: pd.DataFrame, metrics: pd.DataFrame | None, threshold: float | None) -> pd.DataFrame:
    eff = efficiency(runs, metrics, threshold)
    if not len(eff):
        raise NoRunsError("no evaluated runs to measure efficiency on (status reached / not_reached, "
                          "or running with an evaluation)")
    return eff


def _draw_by_n(eff: pd.DataFrame, runs: pd.DataFrame, measures: Sequence[str]) -> Figure:
    """Probe runs: x = context length N (log2), one panel per layout."""
    eff = eff.assign(n=pd.to_numeric(eff["n"], errors="coerce")) if "n" in eff else eff.assign(n=1)
    summary = efficiency_summary(eff)
    layouts, _ = facets(eff, "layout", None)
    models = model_order(eff["label"])
    palette = model_palette(models)
    ns = sorted(pd.unique(eff["n"].dropna()))
    gap = float(np.diff(np.log2(ns)).min()) if len(ns) > 1 else 1.0  # closest Ns, in log2 units
    offsets = _log2_offsets(models, width=min(0.2, 0.3 * gap))
    spread = min(0.04, 0.06 * gap)  # jitter of single runs around their model's position
    rng = np.random.default_rng(0)
    with style():
        fig, axes = panel_grid(len(measures), len(layouts), 4.2, 3.0, sharex=True, sharey="row")
        for i, measure in enumerate(measures):
            for j, layout in enumerate(layouts):
                ax = axes[i, j]
                sub = select(eff, layout=layout)
                summ = select(summary, layout=layout) if "layout" in summary else summary
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
                log_axis(ax.yaxis)
                ax.xaxis.set_major_locator(FixedLocator(ns))
                ax.xaxis.set_major_formatter(int_formatter())
                ax.xaxis.set_minor_locator(NullLocator())
                ax.xaxis.set_minor_formatter(NullFormatter())
                if ns:
                    pad = 2 ** max(0.5 * min(gap, 1.0), 0.25)
                    ax.set_xlim(min(ns) / pad, max(ns) * pad)
                ax.set_title(panel_title(layout) if i == 0 else "")
                ax.set_xlabel("context length N" if i == len(measures) - 1 else "")
                ax.set_ylabel(f"{measure} to threshold" if j == 0 else "")
        figure_legend(fig, _efficiency_handles(palette, line=True, running=_any_running(eff)))
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
    return _draw_by_layout(_measured(runs, metrics, threshold), runs, measures)


def _draw_by_layout(eff: pd.DataFrame, runs: pd.DataFrame, measures: Sequence[str]) -> Figure:
    """VLM runs: x = prompt layout, one panel per measure."""
    if "layout" not in eff or eff["layout"].isna().all():
        eff = eff.assign(layout="default")
    summary = efficiency_summary(eff)
    layouts, _ = facets(eff, "layout", None)
    models = model_order(eff["label"])
    palette = model_palette(models)
    width = 0.7  # of each layout's slot, shared by its models
    offsets = {m: (k - (len(models) - 1) / 2) * width / len(models) for k, m in enumerate(models)}
    spread = min(0.05, 0.2 * width / len(models))  # jitter of single runs around their model's position
    stage1 = pd.to_numeric(runs.get("stage1_steps", pd.Series(dtype=float)), errors="coerce")
    stage1 = sorted(v for v in pd.unique(stage1.dropna()) if v > 0)
    rng = np.random.default_rng(0)
    with style():
        fig, axes = panel_grid(len(measures), 1, max(4.6, 1.6 * len(layouts) + 1.0), 3.0, sharex=True)
        for i, measure in enumerate(measures):
            ax = axes[i, 0]
            for x, layout in enumerate(layouts):
                sub, summ = select(eff, layout=layout), select(summary, layout=layout)
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
            log_axis(ax.yaxis)
            ax.set_xticks(range(len(layouts)), [str(v) for v in layouts])
            ax.set_xlim(-0.5, len(layouts) - 0.5)
            ax.grid(axis="x", visible=False)
            ax.set_xlabel("prompt layout" if i == len(measures) - 1 else "")
            ax.set_ylabel(f"{measure} to threshold")
        handles = _efficiency_handles(palette, line=False, running=_any_running(eff))
        if stage1:
            handles.append(Line2D([], [], label="end of stage 1 (connector only)", **STAGE1_STYLE))
        figure_legend(fig, handles)
        fig.suptitle(f"Sample efficiency (VLM): training needed to reach\n{_threshold_text(eff)} (Acc@IoU≥0.5)")
    return fig


def _threshold_text(eff: pd.DataFrame) -> str:
    """'held-out accuracy 0.95', or 'each run's threshold' when they differ."""
    values = pd.unique(pd.to_numeric(eff["threshold"], errors="coerce").dropna())
    return f"held-out accuracy {values[0]:g}" if len(values) == 1 else "each run's threshold"


def _efficiency_runs(ax, xs: np.ndarray, g: pd.DataFrame, measure: str, colour: str) -> None:
    """One dot per run that reached the threshold, an open triangle at its budget per one that did not,
    an open circle at its last evaluation per one still running."""
    done = ~g["censored"].to_numpy()
    running = ~done & g["status"].eq("running").to_numpy()
    ax.plot(
        xs[done],
        g[measure].to_numpy(float)[done],
        "o",
        color=colour,
        alpha=0.55,
        markersize=4.5,
        markeredgewidth=0,
    )
    never = ~done & ~running
    ax.plot(xs[never], g[measure].to_numpy(float)[never], color=colour, **CENSORED_MARKER)
    ax.plot(xs[running], g[measure].to_numpy(float)[running], color=colour, **RUNNING_MARKER)


def _efficiency_medians(ax, sx: np.ndarray, s: pd.DataFrame, measure: str, colour: str, line: bool) -> None:
    """The group medians of `efficiency_summary` as diamonds (joined by a line if `line`: dashed into
    and out of a censored median, which is only a lower bound); open where the median is censored."""
    open_ = s["median_censored"].to_numpy(bool)
    med = s[f"{measure}_median"].to_numpy(float)
    for k in range(len(med) - 1 if line else 0):
        ax.plot(sx[k:k + 2], med[k:k + 2], color=colour, linewidth=2,
                linestyle="--" if open_[k] or open_[k + 1] else "-")
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


def _any_running(eff: pd.DataFrame) -> bool:
    return bool((eff["censored"] & eff["status"].eq("running")).any())


def _efficiency_handles(palette: dict[str, str], line: bool, running: bool = False) -> list:
    handles = [
        Line2D([], [], color=c, marker="D", linewidth=2 if line else 0, label=f"{m} (median)")
        for m, c in palette.items()
    ]
    handles += [
        Line2D([], [], color="0.4", marker="o", linestyle="none", alpha=0.6, label="one run"),
        Line2D([], [], color="0.3", label=CENSORED_LABEL, **CENSORED_MARKER),
        *([Line2D([], [], color="0.3", label=RUNNING_LABEL, **RUNNING_MARKER)] if running else []),
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



EFFICIENCY = {PROBE: _draw_by_n, VLM: _draw_by_layout}
