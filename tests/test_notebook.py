"""notebooks/analysis.ipynb runs top to bottom on real fixture runs and draws every figure."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "analysis"))

from realruns import make_fixture_runs  # noqa: E402 - after the path it lives on

NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"


def test_analysis_notebook_executes_top_to_bottom_and_draws_every_figure(
    tmp_path_factory, tmp_path, monkeypatch
):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    runs = make_fixture_runs(tmp_path_factory)
    monkeypatch.setenv("PROBES_RUNS", str(runs))
    monkeypatch.setenv("PROBES_FIGURES", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 4  # curves, heatmap, efficiency, learning order
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "curves.png",
        "efficiency.png",
        "heatmap.png",
        "learning_order.png",
    ]
