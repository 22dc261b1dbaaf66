"""What every figure shares: style, colours per model, facets, panels, legends, axes, saving,
and `variant`, which picks a figure's drawer for the kind of run in a table."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.load import NoRunsError, kind_of, model_family, model_order
from probes.errors import UserError
from probes.naming import format_lr

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
ACC_VLM = "held-out Acc@IoU≥0.5"


# === Variants by kind of run ===


def variant(table: dict[str, Callable], df: pd.DataFrame, what: str) -> Callable:
    """The drawer of `what` for the one kind of run in `df` (`analysis.load.kind_of`), from `table`
    (kind → drawer); a UserError for a kind the figure has no variant for."""
    kind = kind_of(df)
    if kind not in table:
        raise UserError(f"no {what} for {kind} runs (drawn for: {', '.join(table)})")
    return table[kind]


# === Style, colours, facets ===


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


def lr_label(lr) -> str:
    """A learning rate as the run names write it (`probes.naming.format_lr`: 2.5e-4 → "2.5e-4");
    anything that is not a number as its text."""
    try:
        return format_lr(float(lr))
    except (TypeError, ValueError):
        return str(lr)


def lr_styles(lrs: Iterable) -> dict:
    vals = sorted({v for v in lrs if pd.notna(v)}, key=lambda v: (not isinstance(v, (int, float)), v))
    return {v: _LR_STYLES[i % len(_LR_STYLES)] for i, v in enumerate(vals)}


def facets(df: pd.DataFrame, row: str | None, col: str | None) -> tuple[list, list]:
    def values(name):
        if name is None or name not in df or df[name].isna().all():
            return [None]
        vals = list(pd.unique(df[name].dropna()))
        if name == "layout":
            return [v for v in LAYOUT_ORDER if v in vals] + sorted(v for v in vals if v not in LAYOUT_ORDER)
        return sorted(vals)

    return values(row), values(col)


def select(df: pd.DataFrame, **eq) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for key, value in eq.items():
        if value is not None:
            mask &= df[key] == value
    return df[mask]


def wrap_label(text: str, width: int = 32) -> str:
    """A long model name (an `hf:` or `config:` path) on several lines, broken after a '/', so that
    side-by-side panel titles do not run into each other; short names are returned as they are."""
    lines = [""]
    for part in re.split(r"(?<=/)", str(text)):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def panel_title(layout=None, n=None, extra: str | None = None) -> str:
    parts = [str(layout)] if layout is not None else []
    if n is not None:
        parts.append(f"N = {int(n)}" if float(n).is_integer() else f"N = {n}")
    if extra:
        parts.append(extra)
    return " · ".join(parts)


def panel_grid(nrows: int, ncols: int, width: float, height: float, **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols + 1.6, height * nrows + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False, **kw))
    return fig, axes


def blank_empty_panels(axes: np.ndarray, empty: np.ndarray, xlabel: str = "") -> None:
    """Turn off the panels of a layout × N grid that hold no run (`empty`: a boolean array shaped like
    `axes`; a sweep need not run every N in every layout), keeping their titles and saying "no runs",
    and give each column's lowest drawn panel the x tick labels and `xlabel` that a shared x axis keeps
    for the bottom row."""
    for ax in axes[empty]:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="0.5")
    for j in range(axes.shape[1]):
        drawn = [ax for ax, blank in zip(axes[:, j], empty[:, j]) if not blank]
        if drawn and empty[-1, j]:
            drawn[-1].xaxis.set_tick_params(labelbottom=True)
            drawn[-1].set_xlabel(xlabel)


def figure_legend(fig: Figure, handles: list) -> None:
    """One legend for the whole figure, below the panels (panels keep their width)."""
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)


def thresholds(df: pd.DataFrame, threshold: float | None) -> list[float]:
    if threshold is not None:
        return [float(threshold)]
    if "threshold" in df and df["threshold"].notna().any():
        return sorted(pd.unique(pd.to_numeric(df["threshold"], errors="coerce").dropna()))
    return []


def need_columns(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    if df is None or not len(df):
        raise NoRunsError(f"nothing to draw for the {what}: the table is empty")
    missing = [c for c in cols if c not in df]
    if missing:
        raise UserError(f"cannot draw the {what}: the table lacks column(s) {', '.join(missing)}")



def facet_eq(row, a, col, b) -> dict:
    return {k: v for k, v in ((row, a), (col, b)) if k is not None and v is not None}


def cell_edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (half-way between neighbours)."""
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate(
        [[centres[0] - (mid[0] - centres[0])], mid, [centres[-1] + (centres[-1] - mid[-1])]]
    )



def colorbar_shrink(rows: int) -> float:
    """Colour bar length for a figure of `rows` rows of 3 × 3 grids: not taller than ~2 rows."""
    return 0.9 if rows <= 2 else max(0.25, 1.8 / rows)



def colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="0.88")



def int_formatter():
    return FuncFormatter(lambda v, _: f"{v:g}")


def human(v: float) -> str:
    """1200 → "1.2k", 5e6 → "5M", 40 → "40"."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def log_axis(axis) -> None:
    """Log-scale labels as plain numbers (2k, 5k, 10k), at 1, 2 and 5 of each decade."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
    axis.set_minor_formatter(NullFormatter())



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

