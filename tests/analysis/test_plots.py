"""analysis.plots and `probes plot`: one Figure per kind, PNG + PDF, clear errors."""

import json

import pandas as pd
import pytest
from matplotlib.figure import Figure
from synthetic import write_run, write_vlm_run

from analysis.load import load, relabel_runs
from analysis.plots import (
    PlotConfig,
    model_palette,
    plot_curves,
    plot_efficiency,
    plot_heatmap,
    plot_learning_order,
    plot_runs,
    save_figure,
)
from analysis.plots.efficiency import RUNNING_LABEL
from cli import app
from probes.errors import UserError


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """2 models × 2 layouts × 2 N × 2 lrs of hand-written runs; one Mamba run never gets there."""
    root = tmp_path_factory.mktemp("grid")
    for model in ("pythia-tiny", "mamba-tiny"):
        for layout in ("suffix", "prefix"):
            for n in (4, 8):
                for lr in (1e-3, 3e-3):
                    learn_at = 10 * n if model == "mamba-tiny" else 5 * n
                    never = model == "mamba-tiny" and layout == "suffix" and n == 8 and lr == 1e-3
                    write_run(
                        root / layout,
                        model=model,
                        layout=layout,
                        n=n,
                        lr=lr,
                        learn_at=None if never else learn_at,
                        max_steps=120,
                    )
    return root


def test_every_figure_function_returns_a_figure_with_a_panel_per_facet(grid):
    tables = load(grid)
    curves = plot_curves(tables.metrics)
    assert isinstance(curves, Figure) and len(curves.axes) == 2 * 2  # layouts × N
    heat = plot_heatmap(tables.positions)
    assert len([ax for ax in heat.axes if ax.get_label() != "<colorbar>"]) == 4 * 2  # (layout × N) × models
    assert len(plot_efficiency(tables.runs).axes) == 2 * 2  # (steps, examples) × layouts
    assert len(plot_learning_order(tables.positions).axes) == 2 * 2


def test_curves_draw_one_line_per_run_and_a_dashed_threshold(grid):
    fig = plot_curves(load(grid).metrics)
    ax = fig.axes[0]  # suffix, N = 4: 2 models × 2 lrs
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(ax.get_lines()) - len(dashed) == 4
    assert [ln.get_ydata()[0] for ln in dashed] == [0.95]


def test_efficiency_draws_censored_runs_as_open_triangles_at_the_budget(grid):
    fig = plot_efficiency(load(grid).runs)
    steps_suffix = fig.axes[0]
    triangles = [ln for ln in steps_suffix.get_lines() if ln.get_marker() == "^" and len(ln.get_xdata())]
    assert len(triangles) == 1 and list(triangles[0].get_ydata()) == [120]
    assert triangles[0].get_markerfacecolor() == "none"
    assert any("never reached" in t.get_text() for t in fig.legends[0].get_texts())


def test_colours_are_per_model_family():
    pal = model_palette(["mamba-1.4b", "pythia-160m", "pythia-1.4b", "mamba-130m"])
    blues = [pal["pythia-160m"], pal["pythia-1.4b"]]
    assert all(int(c[5:7], 16) > int(c[1:3], 16) for c in blues)  # more blue than red
    assert all(int(c[1:3], 16) > int(c[5:7], 16) for c in (pal["mamba-130m"], pal["mamba-1.4b"]))
    assert len(set(pal.values())) == 4


def test_save_figure_writes_png_and_pdf(grid, tmp_path):
    paths = save_figure(plot_curves(load(grid).metrics), tmp_path, "curves")
    assert [p.name for p in paths] == ["curves.png", "curves.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_plot_runs_writes_every_kind(grid, tmp_path, plot_files):
    written = plot_runs(grid, out=tmp_path, formats=["png"])
    assert sorted(p.name for p in written) == plot_files(["png"])


def test_the_efficiency_figure_comes_with_its_numbers_as_tidy_tables(grid, tmp_path):
    """efficiency.csv: one row per run (steps / examples to the threshold, censored or not);
    efficiency_summary.csv: per model × N × layout, the medians the figure's lines join."""
    plot_runs(grid, kind="efficiency", out=tmp_path, formats=["png"])
    per_run = pd.read_csv(tmp_path / "efficiency.csv")
    runs = load(grid).runs
    assert sorted(per_run["run"]) == sorted(runs["run"])
    reached = runs.set_index("run")["step_reached"].dropna()
    assert per_run.set_index("run").loc[reached.index, "steps"].tolist() == reached.tolist()
    assert per_run["censored"].tolist() == per_run["run"].map(runs.set_index("run")["status"].ne("reached")).tolist()
    summary = pd.read_csv(tmp_path / "efficiency_summary.csv")
    assert summary["runs"].sum() == len(per_run)
    one = summary.iloc[0]
    group = per_run[(per_run["label"] == one["label"]) & (per_run["n"] == one["n"])
                    & (per_run["layout"] == one["layout"])]
    assert one["steps_min"] == group["steps"].min() and one["steps_max"] == group["steps"].max()


def test_probes_plot_command_writes_the_kind_asked_for(grid, tmp_path, cli_runner):
    res = cli_runner.invoke(app, ["plot", str(grid), "--kind", "heatmap", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heatmap.pdf", "heatmap.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["{empty}"], "no run directories under"),
        (["{empty}/missing"], "no such directory"),
        (["{grid}", "--kind", "pie"], "kind"),
    ],
)
def test_probes_plot_on_an_empty_or_wrong_directory_is_one_line_and_nonzero(
    args, message, grid, tmp_path, cli_runner
):
    args = [a.format(empty=tmp_path, grid=grid) for a in args]
    res = cli_runner.invoke(app, ["plot", *args, "--out", str(tmp_path / "figs")])
    assert res.exit_code == 2
    assert message in res.output and len(res.output.strip().splitlines()) == 1


def test_plot_config_rejects_unknown_keys(tmp_path, cli_runner, grid):
    cfg = tmp_path / "plot.yaml"
    cfg.write_text("kind: curves\ncolour: red\n")
    res = cli_runner.invoke(app, ["plot", str(grid), "--config", str(cfg)])
    assert res.exit_code == 2 and "unknown config key 'colour'" in res.output
    assert PlotConfig().kind == "all"


def test_probes_plot_draws_every_figure_from_real_runs(real_runs, tmp_path, cli_runner, plot_files):
    res = cli_runner.invoke(app, ["plot", str(real_runs), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == plot_files()
    assert all((tmp_path / n).stat().st_size > 5_000 for n in names if not n.endswith(".csv"))


def test_probes_plot_only_draws_the_selected_runs_with_a_prefix(grid, tmp_path, cli_runner):
    res = cli_runner.invoke(
        app,
        [
            "plot",
            str(grid),
            "--only",
            "n=8",
            "--only",
            "layout=suffix",
            "--kind",
            "curves",
            "--prefix",
            "n8-",
            "--format",
            "png",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert [p.name for p in tmp_path.iterdir()] == ["n8-curves.png"]
    res = cli_runner.invoke(app, ["plot", str(grid), "--only", "n=3", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "no run matches n=3" in res.output


def test_a_layout_without_runs_at_some_n_gets_a_blank_panel_saying_so(tmp_path):
    for layout, ns in (("suffix", (4, 8)), ("prefix", (4,))):  # no prefix runs at N = 8
        for n in ns:
            write_run(tmp_path, layout=layout, n=n, learn_at=5 * n, name=f"{layout}{n}")
    tables = load(tmp_path)
    for fig in (plot_curves(tables.metrics, threshold=0.9), plot_learning_order(tables.positions)):
        panels = {ax.get_title(): ax for ax in fig.axes}
        blank = panels["prefix · N = 8"]
        assert not blank.axison and [t.get_text() for t in blank.texts] == ["no runs"] and not blank.lines
        assert all(panels[t].axison for t in ("suffix · N = 4", "suffix · N = 8", "prefix · N = 4"))
        above = panels["suffix · N = 8"]  # the lowest drawn panel of its column: its x axis is labelled
        assert above.get_xlabel() and all(t.get_visible() for t in above.get_xticklabels())


def test_probes_plot_label_draws_runs_of_several_models_as_one(tmp_path, cli_runner):
    for window, learn_at in (("w1", 40), ("w2", 60)):
        write_run(tmp_path / window, model=f"hf:/root/{window}/pythia-20m/model", n=4, learn_at=learn_at, name="r")
    out = tmp_path / "fig"
    args = ["plot", str(tmp_path / "w1"), str(tmp_path / "w2"), "--kind", "efficiency", "--format", "png"]
    res = cli_runner.invoke(app, [*args, "--label", "hf:*/pythia-20m/model=Pythia-20M pretrained", "--out", str(out)])
    assert res.exit_code == 0, res.output
    legend = [t.get_text() for t in plot_efficiency(relabel_runs(load(tmp_path).runs, {"hf:*": "P"})).legends[0].texts]
    assert "P (median)" in legend and not any("hf:" in t for t in legend)
    assert (out / "efficiency.png").exists()
    res = cli_runner.invoke(app, [*args, "--label", "hf:*", "--out", str(out)])
    assert res.exit_code == 2 and "--label takes GLOB=NAME" in res.output and "got 'hf:*'" in res.output
    res = cli_runner.invoke(app, [*args, "--label", "mamba*=M", "--out", str(out)])
    assert res.exit_code == 2 and "no run's model matches 'mamba*'" in res.output


def test_vlm_runs_without_n_are_drawn_apart_per_connector(tmp_path):
    """VLM runs share the run-directory format but have no N; positions are image cells
    (their own figures: tests/analysis/test_vlm_plots.py)."""
    for connector, scan in (("mlp", None), ("vss-l2", "csm")):
        write_vlm_run(
            tmp_path,
            model="mamba-tiny",
            connector=connector,
            scan=scan,
            layout="task-aware",
            name=connector,
            learn_at=30,
        )
    tables = load(tmp_path)
    assert sorted(tables.runs["label"]) == ["mamba-tiny+mlp", "mamba-tiny+vss-l2/csm"]
    written = plot_runs(tmp_path, out=tmp_path / "figs", formats=["png"])
    assert len([p for p in written if p.suffix == ".png"]) == 4
    heat = plot_heatmap(tables.positions)
    assert len([ax for ax in heat.axes if ax.get_label() != "<colorbar>"]) == 2 * 3  # connectors × snapshots


def test_learning_rates_are_labelled_as_the_run_names_write_them(tmp_path):
    for lr in (2.5e-4, 3e-4):  # the old label rounded both to "3e-4"
        write_run(tmp_path, lr=lr, name=f"lr{lr}")
    labels = {t.get_text() for t in plot_curves(load(tmp_path).metrics).legends[0].get_texts()}
    assert {"lr 2.5e-4", "lr 3e-4"} <= labels


def test_figures_pick_their_variant_by_the_kind_in_the_summary(tmp_path):
    """A run whose summary says `kind: pretrain` has no grounding figures: one clear error."""

    run = write_run(tmp_path, name="p")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "kind": "pretrain"}))
    with pytest.raises(UserError, match="no per-position heatmap for pretrain runs .drawn for: probe, vlm"):
        plot_heatmap(load(tmp_path).positions)
    with pytest.raises(UserError, match="runs are of kind pretrain; figures are drawn for probe, vlm runs"):
        plot_runs(tmp_path, out=tmp_path / "figs")


def test_long_model_paths_wrap_after_a_slash_in_panel_titles():
    from analysis.plots.style import wrap_label

    path = "hf:/root/study/pretrain/pythia-20m/model"
    assert wrap_label(path) == "hf:/root/study/pretrain/\npythia-20m/model"
    assert wrap_label(path).replace("\n", "") == path
    assert all(len(line) <= 32 for line in wrap_label(path).split("\n"))
    assert wrap_label("pythia-tiny") == "pythia-tiny"
    assert wrap_label("hf:state-spaces/mamba-1.4b-hf") == "hf:state-spaces/mamba-1.4b-hf"


def test_runs_still_running_get_every_figure_with_their_efficiency_as_lower_bounds(tmp_path):
    """A study window that ends before its runs finish still gets every figure; in the efficiency
    figure its unfinished runs are open circles at their last evaluation, in the legend too."""
    for seed in (0, 1):
        write_run(tmp_path, seed=seed, status="running", learn_at=None, last_step=40 + 20 * seed)
    skipped = []
    written = plot_runs(tmp_path, out=tmp_path / "figs", formats=["png"], on_skip=skipped.append)
    assert sorted({p.stem for p in written}) == ["curves", "efficiency", "efficiency_summary", "heatmap",
                                                 "learning_order"]
    assert skipped == []
    fig = plot_efficiency(load(tmp_path).runs)
    assert RUNNING_LABEL in [t.get_text() for t in fig.legends[0].get_texts()]
    drawn = sorted(float(y) for ax in fig.axes[:1] for line in ax.lines
                   if line.get_marker() == "o" and line.get_markerfacecolor() == "none" for y in line.get_ydata())
    assert drawn == [40.0, 60.0]  # steps panel: each run at its last evaluation, not at the budget (100)


def test_efficiency_of_runs_with_no_evaluation_yet_is_skipped_and_says_why(tmp_path):
    for seed in (0, 1):
        run = write_run(tmp_path, seed=seed, status="running", learn_at=None, last_step=0)
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "final_step": None}))
    skipped = []
    plot_runs(tmp_path, out=tmp_path / "figs", formats=["png"], on_skip=skipped.append)
    assert len(skipped) == 1 and skipped[0].startswith("efficiency: skipped, no evaluated runs")
    with pytest.raises(UserError, match="no evaluated runs"):
        plot_runs(tmp_path, kind="efficiency", out=tmp_path / "figs", formats=["png"])


def test_probes_plot_until_draws_the_runs_as_they_stood_at_that_step(tmp_path, cli_runner):
    """A run that reached the threshold after the step is a lower bound at that step, not a result."""
    for seed, learn_at in enumerate((30, 70, 90)):
        write_run(tmp_path / "runs", seed=seed, learn_at=learn_at)
    out = tmp_path / "figs"
    result = cli_runner.invoke(app, ["plot", str(tmp_path / "runs"), "--kind", "efficiency", "--format", "png",
                                     "--out", str(out), "--until", "50"])
    assert result.exit_code == 0, result.output
    eff = pd.read_csv(out / "efficiency.csv").sort_values("seed")
    assert eff["censored"].tolist() == [False, True, True] and eff["steps"].tolist() == [30, 50, 50]
    bad = cli_runner.invoke(app, ["plot", str(tmp_path / "runs"), "--out", str(out), "--until", "-1"])
    assert bad.exit_code != 0 and "until" in bad.output and len(bad.output.strip().splitlines()) == 1
