"""The image cells of VLM runs: a VLM run's positions are the row-major cells of a VLM_GRID ×
VLM_GRID grid over the image (the cell of the target box's centre), drawn as that grid."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.load import VLM_GRID, model_order
from analysis.plots.style import facet_eq, facets, select

CELL_COLS = ("left", "centre", "right")
CELL_ROWS = ("top", "middle", "bottom")


def cell_grid(accuracy: pd.Series) -> np.ndarray:
    """Accuracy per cell (a Series indexed by `position`, row-major) → the image's 3 × 3 grid
    (row 0 at the top); NaN where a cell had no evaluation examples."""
    values = pd.to_numeric(accuracy, errors="coerce").groupby(level=0).mean()
    return values.reindex(range(VLM_GRID * VLM_GRID)).to_numpy(float).reshape(VLM_GRID, VLM_GRID)



def vlm_groups(df: pd.DataFrame) -> list[tuple]:
    """(label, layout) pairs present, models in `model_order`, layouts in LAYOUT_ORDER."""
    layouts, _ = facets(df, "layout", None)
    groups = []
    for label in model_order(df["label"]):
        for layout in layouts:
            if len(select(df, label=label, **facet_eq("layout", layout, None, None))):
                groups.append((label, layout))
    return groups



def draw_cells(ax, grid: np.ndarray, cmap, vmin: float, vmax: float, fmt, missing: np.ndarray | None = None):
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
    ax.set_xticks(range(VLM_GRID), CELL_COLS, fontsize=7)
    ax.set_yticks(range(VLM_GRID), CELL_ROWS, fontsize=7)
    ax.tick_params(length=0)
    ax.grid(False)
    return image

