"""`probes plot`: every figure for the runs under some directories (PlotConfig says which), each
kind of run drawn apart (its file names prefixed by NAME_PREFIX where kinds are mixed)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from analysis.efficiency import efficiency, efficiency_summary
from analysis.load import (
    PROBE,
    VLM,
    NoRunsError,
    Tables,
    at_step,
    load_metrics,
    load_positions,
    load_runs,
    relabel_runs,
    select_runs,
)
from analysis.plot_config import Kind
from analysis.plots.curves import plot_curves
from analysis.plots.efficiency import plot_efficiency
from analysis.plots.heatmap import plot_heatmap
from analysis.plots.learning_order import plot_learning_order
from analysis.plots.style import save_figure
from probes.errors import UserError

KINDS = ("curves", "heatmap", "efficiency")
NAME_PREFIX = {PROBE: "", VLM: "vlm-"}  # kinds of run with figures; the prefix of their files where kinds mix


def plot_runs(
    *paths,
    kind: Kind = "all",
    out: str | Path = "figures",
    threshold: float | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    heatmap: str = "representative",
    dpi: int = 150,
    only: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    prefix: str = "",
    order_rule: str = "stays",
    on_skip: Callable[[str], None] | None = None,
    until: int | None = None,
) -> list[Path]:
    """Every figure of `kind` for the runs under `paths` (those matching `only`), written to `out`
    as `prefix` + curves.*, heatmap.*, efficiency.* and learning_order.*; returns the files.
    The efficiency figure's numbers go beside it as tidy tables: `efficiency.csv` (one row per run,
    `analysis.efficiency.efficiency`) and `efficiency_summary.csv` (per model × N × layout).
    `labels` ({GLOB: NAME}, `analysis.load.relabel_runs`) draws the runs of the models matching GLOB as
    one model, NAME.
    Probe and VLM runs are drawn apart; where both are present the VLM figures are named
    `prefix` + vlm-curves.* and so on. Pretraining runs have no grounding figures.
    `until` draws the runs as they stood at that training step (`analysis.load.at_step`).

    With kind "all", a figure that has nothing to draw (efficiency while every run is still
    running, say) is skipped: `on_skip(reason)` hears why (default: a warning). A kind asked for
    by name raises instead."""
    kinds = KINDS if kind == "all" else (kind,)
    if any(k not in KINDS for k in kinds):
        raise UserError(f"unknown figure kind '{kind}' (allowed: {', '.join(KINDS)}, all)")
    runs = relabel_runs(select_runs(load_runs(*paths), only), labels)
    run_kinds = [k for k in NAME_PREFIX if runs["kind"].eq(k).any()]
    if not run_kinds:
        found = ", ".join(sorted(set(runs["kind"])))
        raise NoRunsError(f"no run to draw: the runs are of kind {found}; "
                          f"figures are drawn for {', '.join(NAME_PREFIX)} runs")
    written = []
    for run_kind in run_kinds:  # probe and VLM runs under one DIR: each kind its own figures
        name = prefix + (NAME_PREFIX[run_kind] if len(run_kinds) > 1 else "")
        selected = runs[runs["kind"] == run_kind]
        tables = Tables(selected, load_metrics(selected), load_positions(selected))
        if until is not None:
            tables = at_step(tables, until)
        for file, make in _figures(tables, kinds, threshold, heatmap, order_rule):
            try:
                figure = make()
            except NoRunsError as err:
                if kind != "all":
                    raise
                (on_skip or _warn)(f"{name + file}: skipped, {err}")
                continue
            written += save_figure(figure, out, name + file, formats, dpi=dpi)
            if file == "efficiency":
                written += _save_efficiency_tables(tables, threshold, out, name)
    return written


def _save_efficiency_tables(tables: Tables, threshold: float | None, out: str | Path, name: str) -> list[Path]:
    """The efficiency figure's numbers: per run, and per model × N × layout (medians, ranges, censoring)."""
    eff = efficiency(tables.runs, tables.metrics, threshold)
    paths = [Path(out) / f"{name}efficiency.csv", Path(out) / f"{name}efficiency_summary.csv"]
    eff.to_csv(paths[0], index=False)
    efficiency_summary(eff).to_csv(paths[1], index=False)
    return paths


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _figures(tables: Tables, kinds, threshold, heatmap, order_rule) -> list[tuple[str, Callable[[], Figure]]]:
    """(file name, drawer) of each figure of `kinds`, in order."""
    figures = {
        "curves": [("curves", lambda: plot_curves(tables.metrics, threshold))],
        "heatmap": [("heatmap", lambda: plot_heatmap(tables.positions, aggregate=heatmap))],
        "efficiency": [
            ("efficiency", lambda: plot_efficiency(tables.runs, metrics=tables.metrics, threshold=threshold)),
            ("learning_order", lambda: plot_learning_order(tables.positions, threshold, order_rule)),
        ],
    }
    return [figure for k in kinds for figure in figures[k]]
