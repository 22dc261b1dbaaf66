"""When each target position is learned: % of training at which it passes the threshold (for good,
or the first time; `analysis.efficiency.learning_order`). Probe runs: one line per model over the
context's positions (`plot_position_learning_order`); VLM runs: the image's 3 × 3 grid of cells
(`plot_vlm_learning_order`). `plot_learning_order` picks the variant from ORDERS."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter

from analysis.efficiency import learning_order, learning_order_summary
from analysis.load import PROBE, VLM, model_order
from analysis.plots.cells import cell_grid, draw_cells
from analysis.plots.style import (
    CENSORED_MARKER,
    blank_empty_panels,
    colorbar_shrink,
    colormap,
    facet_eq,
    facets,
    figure_legend,
    model_palette,
    need_columns,
    panel_grid,
    panel_title,
    select,
    style,
    variant,
)

_ROW_OF_REGION = {"beginning": "top", "middle": "middle", "end": "bottom"}  # thirds of the cells, row-major


def plot_learning_order(
    positions: pd.DataFrame, threshold: float | None = None, rule: str = "stays"
) -> Figure:
    """% of training at which each target position passes the threshold (for good with `rule`
    "stays", the default; the first time with "first"; see `analysis.efficiency.first_reach`),
    by half of a group's runs, one line per model, one panel per N × layout. Positions never
    learned are open triangles at 100%. Each panel names the order in which the context's thirds
    were learned. The variant of ORDERS for the kind of run in `positions`: VLM runs, whose
    positions are image cells, get `plot_vlm_learning_order`."""
    need_columns(positions, ["run", "label", "step", "position", "accuracy", "pct"], "learning order")
    return variant(ORDERS, positions, "learning order")(positions, threshold, rule)


def plot_position_learning_order(
    positions: pd.DataFrame, threshold: float | None = None, rule: str = "stays"
) -> Figure:
    """The learning order of probe runs (`plot_learning_order` picks it): one line per model over
    the target positions, one panel per N × layout."""
    need_columns(positions, ["run", "label", "step", "position", "accuracy", "pct"], "learning order")
    order = learning_order(positions, threshold, rule=rule)
    summary = learning_order_summary(order)
    rows, cols = facets(order, "layout", "n")
    palette = model_palette(order["label"])
    with style():
        fig, axes = panel_grid(len(rows), len(cols), 4.4, 3.0, sharey=True)
        empty = np.zeros(axes.shape, dtype=bool)
        for i, layout in enumerate(rows):
            for j, n in enumerate(cols):
                ax = axes[i, j]
                sub = select(order, **facet_eq("layout", layout, "n", n))
                ax.set_title(panel_title(layout, n))
                empty[i, j] = not len(sub)
                if empty[i, j]:
                    continue
                notes = []
                for model in model_order(sub["label"]):
                    g = sub[sub["label"] == model].sort_values("position")
                    colour = palette[model]
                    ax.plot(g["position1"], g["pct"], "-o", color=colour, markersize=3.5, linewidth=1.6)
                    never = g[g["pct"].isna()]
                    ax.plot(never["position1"], np.full(len(never), 100.0), color=colour, **CENSORED_MARKER)
                    s = select(summary, label=model, **facet_eq("layout", layout, "n", n))
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
                ax.set_xlabel("target position (1 = start of context)")
                ax.set_ylabel(
                    ("passes threshold for good at" if rule == "stays" else "first passes threshold at")
                    if j == 0
                    else ""
                )
        blank_empty_panels(axes, empty, "target position (1 = start of context)")
        handles = [Line2D([], [], color=c, marker="o", linewidth=2, label=m) for m, c in palette.items()]
        handles.append(Line2D([], [], color="0.3", label="never reached (drawn at 100%)", **CENSORED_MARKER))
        figure_legend(fig, handles)
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



# === VLM runs: the image's cells ===


def plot_vlm_learning_order(
    positions: pd.DataFrame, threshold: float | None = None, rule: str = "stays", cmap: str = "plasma_r"
) -> Figure:
    """The learning order of VLM runs: per image cell of the target's centre (3 × 3, as in the
    image), the % of training at which half of a group's runs had learned it (accuracy stays
    ≥ the threshold from then on with `rule` "stays", first passes it with "first"); "never"
    where fewer did, "–" where the cell had no evaluation examples. One panel per model
    (+ connector, rows) × layout (columns); each names the order in which the image's rows
    (top, middle, bottom: the thirds of the row-major cells) were learned."""
    need_columns(positions, ["run", "label", "step", "position", "accuracy", "pct"], "learning order")
    order = learning_order(positions, threshold, rule=rule)
    summary = learning_order_summary(order)
    labels = model_order(order["label"])
    layouts, _ = facets(order, "layout", None)
    colours = colormap(cmap)
    with style():
        fig, axes = panel_grid(len(labels), len(layouts), 2.6, 2.5)
        image = None
        for i, label in enumerate(labels):
            for j, layout in enumerate(layouts):
                ax = axes[i, j]
                where = {"label": label, **facet_eq("layout", layout, None, None)}
                sub = select(order, **where)
                if not len(sub):
                    ax.set_axis_off()
                    continue
                examples = select(positions, **where).groupby("position")["accuracy"].count()
                missing = np.where(cell_grid(examples) > 0, "never", "–")  # never learned / no examples
                grid = cell_grid(sub.set_index("position")["pct"])
                image = draw_cells(ax, grid, colours, 0.0, 100.0, lambda v: f"{v:.0f}%", missing)
                runs = int(sub["runs"].max())
                s = select(summary, **where)
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
                shrink=colorbar_shrink(len(labels)),
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



def _rows_order(order: str) -> str:
    """A `learning_order_summary` order in image terms (the thirds of the row-major cells are the
    image's rows): "end → beginning; never: middle" → "rows: bottom → top; never: middle"."""
    if order == "never: " + ", ".join(_ROW_OF_REGION):
        return "no row learned"
    return "rows: " + re.sub(r"\b(beginning|end)\b", lambda m: _ROW_OF_REGION[m.group(1)], order)



ORDERS = {PROBE: plot_position_learning_order, VLM: plot_vlm_learning_order}
