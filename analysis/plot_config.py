"""What `probes plot` draws: PlotConfig, one field per option (the CLI's options come from it).

Kept apart from analysis.plots so that building the command line imports no matplotlib.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from probes.config import Config

Kind = Literal["curves", "heatmap", "efficiency", "all"]


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
    labels: dict[str, str] = Field(
        {},
        description="draw the runs whose model matches GLOB as one model named NAME ({GLOB: NAME}; "
        "the first GLOB that matches wins)",
    )
    until: int | None = Field(
        None, ge=0, description="draw every run as it stood at this training step (runs not finished by then are cut "
        "there), to compare runs stopped at different steps at the same one"
    )
    prefix: str = Field("", description="prefix of the file names (heatmap.png → PREFIXheatmap.png)")
    order_rule: Literal["stays", "first"] = Field(
        "stays",
        description="learning order: a position is learned when its accuracy stays above the "
        "threshold from then on (stays) or first passes it (first)",
    )


__all__ = ["Kind", "PlotConfig"]
