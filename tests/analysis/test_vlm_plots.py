"""The figures of VLM runs (no N; positions are the 3 × 3 image cells of the target's centre):
efficiency per prompt layout, heatmaps and learning order as the image's grid; text figures kept."""

import numpy as np
import pytest
from synthetic import write_run, write_vlm_run

from analysis.load import load
from analysis.plots import (
    cell_snapshots,
    plot_curves,
    plot_efficiency,
    plot_heatmap,
    plot_learning_order,
    plot_runs,
)
from cli import app

LAYOUTS = ["task-agnostic", "task-aware"]
MODELS = [("pythia-tiny", "mlp", None), ("mamba-tiny", "vss-l2", "csm")]
ROWS, COLS = ["top", "middle", "bottom"], ["left", "centre", "right"]
CHANCE = 1 / 9  # synthetic.write_run's accuracy before a cell is learned


@pytest.fixture(scope="module")
def vlm_grid(tmp_path_factory):
    """2 models (+ connector) × 2 layouts × 2 seeds of hand-written VLM runs, 100 steps, evaluated
    every 10. Mamba learns the bottom row first (step 20), then the top (40), then the middle
    (60); Pythia every cell at once (50); seed 1 ten steps later. One Pythia run never gets there."""
    root = tmp_path_factory.mktemp("vlm")
    for model, connector, scan in MODELS:
        for layout in LAYOUTS:
            for seed in (0, 1):
                if model == "mamba-tiny":
                    learn_at = {p: (20 if p >= 6 else 40 if p < 3 else 60) + 10 * seed for p in range(9)}
                else:
                    learn_at = 50 + 10 * seed
                if model == "pythia-tiny" and layout == "task-aware" and seed == 1:
                    learn_at = None  # censored at its budget
                write_vlm_run(
                    root / layout,
                    model=model,
                    connector=connector,
                    scan=scan,
                    layout=layout,
                    seed=seed,
                    learn_at=learn_at,
                    max_steps=100,
                    stage1_steps=20,
                )
    return root


def panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def ticks(axis) -> list[str]:
    """The tick labels of an axis (also where a shared axis hides them)."""
    return list(axis.get_major_formatter().format_ticks(axis.get_majorticklocs()))


# === Sample efficiency ===


def test_vlm_efficiency_is_drawn_per_prompt_layout_not_against_a_made_up_n(vlm_grid):
    fig = plot_efficiency(load(vlm_grid).runs)
    steps, examples = fig.axes  # one panel per measure: x = layout
    for ax in (steps, examples):
        assert ticks(ax.xaxis) == LAYOUTS  # was "1": VLM runs have no N
        assert "N" not in ax.get_xlabel() and not any("N = " in t for t in ticks(ax.xaxis))
    assert examples.get_xlabel() == "prompt layout"
    assert [ax.get_ylabel() for ax in fig.axes] == ["steps to threshold", "examples to threshold"]


def test_vlm_efficiency_draws_censored_runs_as_open_triangles_at_the_budget(vlm_grid):
    steps = plot_efficiency(load(vlm_grid).runs).axes[0]
    triangles = [ln for ln in steps.get_lines() if ln.get_marker() == "^" and len(ln.get_xdata())]
    assert len(triangles) == 1 and list(triangles[0].get_ydata()) == [100]  # the budget
    assert triangles[0].get_markerfacecolor() == "none"
    assert abs(triangles[0].get_xdata()[0] - LAYOUTS.index("task-aware")) < 0.5  # in its layout's slot
    dots = [ln for ln in steps.get_lines() if ln.get_marker() == "o"]
    assert sum(len(ln.get_xdata()) for ln in dots) == 2 * 2 * 2 - 1  # every other run, at its step
    stage1 = [ln for ln in steps.get_lines() if ln.get_linestyle() == "-." and ln.get_ydata()[0] == 20]
    assert stage1  # the end of stage 1 (connector only)


def test_text_efficiency_keeps_n_on_its_x_axis(tmp_path):
    for n in (4, 8):
        write_run(tmp_path, n=n, learn_at=5 * n, max_steps=120)
    fig = plot_efficiency(load(tmp_path).runs)
    assert ticks(fig.axes[1].xaxis) == ["4", "8"] and fig.axes[1].get_xlabel() == "context length N"


# === Heatmap: accuracy per image cell ===


def test_vlm_heatmap_draws_each_group_as_the_3x3_image_at_three_points_of_training(vlm_grid):
    fig = plot_heatmap(load(vlm_grid).positions)
    axes = np.array(panels(fig)).reshape(4, 3)  # (model × layout) rows × (25, 50, 100%) columns
    for ax in axes.ravel():
        assert len(ax.images) == 1 and ax.images[0].get_array().shape == (3, 3)
    assert ticks(axes[-1, 0].xaxis) == COLS and ticks(axes[0, 0].yaxis) == ROWS
    assert [ax.get_title().splitlines()[0] for ax in axes[0]] == [
        "25% of training",
        "50% of training",
        "100% of training",
    ]
    labels = [ax.get_ylabel().splitlines()[:2] for ax in axes[:, 0]]
    assert labels == [["pythia-tiny+mlp", layout] for layout in LAYOUTS] + [
        ["mamba-tiny+vss-l2/csm", layout] for layout in LAYOUTS
    ]
    # Mamba, task-agnostic, its median run (seed 0, reached at step 60): bottom row first, then top
    mamba = [np.asarray(ax.images[0].get_array().filled(np.nan)) for ax in axes[2]]
    expected_25 = [[CHANCE] * 3, [CHANCE] * 3, [1.0] * 3]  # step 30
    expected_50 = [[1.0] * 3, [CHANCE] * 3, [1.0] * 3]  # step 50
    np.testing.assert_allclose(mamba[0], expected_25)
    np.testing.assert_allclose(mamba[1], expected_50)
    np.testing.assert_allclose(mamba[2], np.ones((3, 3)))  # its last evaluation: it stopped at 60%
    assert (
        axes[2, 0].get_title().endswith("step 30 (30%)") and axes[2, 2].get_title() == "step 60 (60%, last)"
    )
    assert [t.get_text() for t in axes[2, 0].texts][-3:] == ["100%"] * 3  # values written in the cells


def test_vlm_heatmap_greys_out_a_cell_without_evaluation_examples(tmp_path):
    write_vlm_run(tmp_path, learn_at=30, empty_cells=(2,), name="r")
    ax = panels(plot_heatmap(load(tmp_path).positions))[0]
    grid = ax.images[0].get_array()
    assert grid.mask[0, 2] and not grid.mask.ravel()[[0, 1, 3]].any()  # top right: no examples
    assert ax.texts[2].get_text() == "–"


def test_cell_snapshots_take_the_first_evaluation_at_or_after_each_point_else_the_last(vlm_grid):
    positions = load(vlm_grid).positions
    run = positions.loc[positions["label"].eq("mamba-tiny+vss-l2/csm"), "run"].iloc[0]  # stopped at 60
    snaps = cell_snapshots(positions[positions["run"] == run], at=(25, 50, 100))
    assert snaps.groupby("at")["step"].unique().map(list).to_dict() == {25: [30], 50: [50], 100: [60]}
    assert (snaps.groupby("at").size() == 9).all()


def test_text_heatmap_is_unchanged_a_position_by_evaluation_mesh(tmp_path):
    write_run(tmp_path, n=6, learn_at=40)
    ax = panels(plot_heatmap(load(tmp_path).positions))[0]
    assert not ax.images and ax.collections and ax.get_ylabel() == "target position"


# === Learning order per image cell ===


def test_vlm_learning_order_is_the_image_grid_with_its_rows_named_in_order(vlm_grid):
    fig = plot_learning_order(load(vlm_grid).positions)
    axes = np.array(panels(fig)).reshape(2, 2)  # models × layouts
    for ax in axes.ravel():
        assert ax.images[0].get_array().shape == (3, 3)
    assert "rows: bottom → top → middle" in axes[1, 0].get_title()
    assert "rows: top = middle = bottom" in axes[0, 0].get_title()
    pct = axes[1, 0].images[0].get_array()  # half of 2 runs: the earlier run's step (lower median)
    np.testing.assert_allclose(pct[:, 0], [40.0, 60.0, 20.0])
    assert "N = " not in " ".join(ax.get_title() for ax in axes.ravel())


def test_vlm_learning_order_writes_never_where_half_the_runs_never_learned_a_cell(tmp_path):
    write_vlm_run(tmp_path, learn_at=dict.fromkeys(range(6), 30), max_steps=60, empty_cells=(8,), name="r")
    ax = panels(plot_learning_order(load(tmp_path).positions))[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts[:6] == ["50%"] * 6 and texts[6:] == ["never", "never", "–"]  # 8: no examples
    assert ax.get_title().endswith("rows: top = middle; never: bottom")


# === Curves, plot_runs and `probes plot` ===


def test_vlm_curves_say_acc_at_iou_and_mark_the_end_of_stage_1(vlm_grid):
    fig = plot_curves(load(vlm_grid).metrics)
    assert fig.axes[0].get_ylabel() == "held-out Acc@IoU≥0.5"
    assert any(ln.get_linestyle() == "-." and ln.get_xdata()[0] == 20 for ln in fig.axes[0].get_lines())


def test_probes_plot_draws_every_kind_for_vlm_runs(vlm_grid, tmp_path, cli_runner, plot_files):
    res = cli_runner.invoke(app, ["plot", str(vlm_grid), "--format", "png", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == plot_files(["png"])
    assert all((tmp_path / n).stat().st_size > 5_000 for n in names if n.endswith(".png"))


def test_text_and_vlm_runs_under_one_directory_get_their_own_figures(tmp_path, cli_runner, plot_files):
    write_run(tmp_path / "text", n=6, learn_at=40)
    write_vlm_run(tmp_path / "vlm", learn_at=40)
    written = plot_runs(tmp_path, out=tmp_path / "figs", formats=["png"])
    assert sorted(p.name for p in written) == sorted(plot_files(["png"]) + plot_files(["png"], prefix="vlm-"))
    res = cli_runner.invoke(
        app,
        ["plot", str(tmp_path), "--only", "kind=vlm", "--kind", "heatmap", "--out", str(tmp_path / "only")],
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "only").iterdir()) == ["heatmap.pdf", "heatmap.png"]
