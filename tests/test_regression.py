"""CI regression: both tiny backbones learn the task, in both layouts, within a fixed step budget.

The settings are configs/ci-tiny.yaml (N=8, batch 64, lr 1e-3, 1000 steps at most, the whole
512-example held-out set every 25 steps), run as `probes sweep` runs: 2 at a time, 1 thread each,
on the 2-core CPU. Seeds are fixed, so a failure here is a change in behaviour, not bad luck:
measured steps to 95% over seeds 0-3 were 250-375 (pythia-tiny), 175-425 (mamba-tiny).
"""

from pathlib import Path

import pandas as pd
import pytest

from probes.config import SweepConfig, load_config
from probes.sweep import expand_grid, run_sweep

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ci-tiny.yaml"
RUNS = [(m, layout) for m in ("pythia-tiny", "mamba-tiny") for layout in ("suffix", "prefix")]


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    sweep = load_config(SweepConfig, CONFIG, {"out": str(tmp_path_factory.mktemp("ci-tiny"))})
    results = run_sweep(sweep, jobs=2, threads=1, progress=False)
    return sweep, {(r["run"].split("+")[0], r["run"].split("+")[1]): r for r in results}


def test_the_regression_grid_is_both_tiny_models_in_both_layouts():
    cfgs = expand_grid(load_config(SweepConfig, CONFIG))
    assert sorted((c.model, c.layout) for c in cfgs) == sorted(RUNS)
    assert {c.n for c in cfgs} == {8} and {c.threshold for c in cfgs} == {0.95}


@pytest.mark.slow
@pytest.mark.parametrize("model, layout", RUNS)
def test_tiny_models_reach_95_percent_within_the_step_budget(regression, model, layout):
    sweep, results = regression
    r = results[model, layout]
    budget = sweep.train["max_steps"]
    assert r["status"] == "reached", (f"{model} {layout}: {r['status']} (final accuracy {r['final_accuracy']}, "
                                      f"{r['message']}) within {budget} steps")
    assert r["step_reached"] <= budget
    m = pd.read_parquet(Path(r["dir"]) / "metrics.parquet")
    assert m.accuracy.iloc[0] < 0.5  # it was learned, not given: step 0 is near chance (1/8)
    pos = pd.read_parquet(Path(r["dir"]) / "positions.parquet")
    last = pos[pos.step == r["step_reached"]]
    assert len(last) == 8 and (last.accuracy > 0.7).all()  # every position, not a few
