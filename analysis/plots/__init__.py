"""The paper's figures and the sample-efficiency figures, from the tidy tables of `analysis.load`.

One function per figure, each returning a matplotlib `Figure` (built without pyplot, so nothing
global changes and no display is needed); `save_figure` writes it as PNG and PDF.

    plot_curves(metrics)            Fig. 6 / 11: held-out accuracy vs % of training, per N × layout
    plot_heatmap(positions)         Fig. 7 / 12: accuracy per target position vs % of training, per model
    plot_efficiency(runs)           steps / examples to threshold vs N (log), censored runs marked
    plot_learning_order(positions)  % of training at which each position passes the threshold
    plot_runs(DIR, out=FIGDIR)      all of them for the runs under DIR, as `probes plot` does

One module per figure family: `style` (colours, facets, axes, saving), `curves`, `heatmap`,
`efficiency`, `learning_order`, `cells` (the 3 × 3 image cells of VLM runs) and `runs`
(`plot_runs`, `PlotConfig`). A figure whose drawing differs by kind of run keeps its variants in
a table (kind → drawer: CURVES, HEATMAPS, EFFICIENCY, ORDERS) and picks the one for the runs it is
given (`style.variant`). VLM runs (`analysis.load.run_kind`) have no N and their positions are
the 3 × 3 image cells of the target's centre: `plot_vlm_heatmap` (accuracy per cell as the image's
grid at 25 / 50 / 100% of training), `plot_vlm_efficiency` (x = prompt layout) and
`plot_vlm_learning_order` (when each cell is learned, as the image's grid); curves are the same,
with Acc@IoU≥0.5 and the end of stage 1 marked.

Colour is per model (Pythia blues, Mamba oranges, darker = larger), line style per learning rate,
the threshold is a dashed grey line, and % of training is `step / max_steps * 100`.
"""

from analysis.load import select_runs
from analysis.plot_config import Kind, PlotConfig
from analysis.plots.cells import cell_grid
from analysis.plots.curves import CURVES, plot_curves
from analysis.plots.efficiency import EFFICIENCY, plot_efficiency, plot_vlm_efficiency
from analysis.plots.heatmap import (
    HEATMAPS,
    VLM_SNAPSHOTS,
    cell_snapshots,
    heatmap_matrix,
    plot_heatmap,
    plot_position_heatmap,
    plot_vlm_heatmap,
    representative_runs,
)
from analysis.plots.learning_order import (
    ORDERS,
    plot_learning_order,
    plot_position_learning_order,
    plot_vlm_learning_order,
)
from analysis.plots.runs import KINDS, NAME_PREFIX, plot_runs
from analysis.plots.style import (
    CENSORED_LABEL,
    CENSORED_MARKER,
    LAYOUT_ORDER,
    STAGE1_STYLE,
    THRESHOLD_STYLE,
    human,
    lr_label,
    lr_styles,
    model_palette,
    save_figure,
    style,
)

__all__ = [
    "CENSORED_LABEL", "CENSORED_MARKER", "CURVES", "EFFICIENCY", "HEATMAPS", "KINDS", "LAYOUT_ORDER", "NAME_PREFIX",
    "ORDERS", "STAGE1_STYLE", "THRESHOLD_STYLE", "VLM_SNAPSHOTS", "Kind", "PlotConfig", "cell_grid",
    "cell_snapshots", "heatmap_matrix", "human", "lr_label", "lr_styles", "model_palette", "plot_curves",
    "plot_efficiency", "plot_heatmap", "plot_learning_order", "plot_position_heatmap",
    "plot_position_learning_order", "plot_runs", "plot_vlm_efficiency", "plot_vlm_heatmap",
    "plot_vlm_learning_order", "representative_runs", "save_figure", "select_runs", "style",
]
