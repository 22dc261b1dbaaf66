"""analysis.efficiency: steps / examples to threshold with censoring, and the per-position learning order."""

import json

import numpy as np
from synthetic import write_run, write_vlm_run

from analysis.efficiency import (
    efficiency,
    efficiency_summary,
    efficiency_table,
    first_reach,
    half_reached,
    learning_order,
    learning_order_summary,
)
from analysis.load import load_metrics, load_positions, load_runs


def test_efficiency_marks_runs_that_never_reached_threshold_as_censored(tmp_path):
    write_run(tmp_path, name="fast", learn_at=30, batch_size=8)
    write_run(tmp_path, name="never", learn_at=None, max_steps=100, batch_size=8)
    eff = efficiency(load_runs(tmp_path)).set_index("run")
    assert (
        not eff.loc["fast", "censored"]
        and eff.loc["fast", "steps"] == 30
        and eff.loc["fast", "examples"] == 240
    )
    assert eff.loc["never", "censored"]
    assert eff.loc["never", "steps"] == 100 and eff.loc["never", "examples"] == 800  # drawn at the budget


def test_efficiency_at_another_threshold_reads_the_first_evaluation_at_or_above_it(tmp_path):
    # half the positions learned at step 30, the rest at 70: mean accuracy passes 0.5 at 30, 0.95 at 70
    write_run(tmp_path, n=4, learn_at={0: 30, 1: 30, 2: 70, 3: 70}, max_steps=100, batch_size=8, name="slow")
    write_run(tmp_path, n=4, learn_at=None, max_steps=100, batch_size=8, name="never")
    runs, metrics = load_runs(tmp_path), load_metrics(tmp_path)
    own = efficiency(runs).set_index("run")
    assert own.loc["slow", "steps"] == 70 and (own["threshold"] == 0.95).all()
    half = efficiency(runs, metrics, threshold=0.5).set_index("run")
    assert half.loc["slow", "steps"] == 30 and half.loc["slow", "examples"] == 240
    assert not half.loc["slow", "censored"] and (half["threshold"] == 0.5).all()
    assert half.loc["never", "censored"] and half.loc["never", "steps"] == 100  # at its last evaluation


def test_a_run_stopped_early_at_its_own_lower_threshold_is_censored_where_it_stopped(tmp_path):
    write_run(tmp_path, n=4, learn_at={0: 20, 1: 20, 2: 20, 3: 60}, threshold=0.7, max_steps=100, name="r")
    eff = efficiency(load_runs(tmp_path), load_metrics(tmp_path), threshold=0.95).iloc[0]
    assert eff["censored"] and eff["steps"] == 20 and eff["budget_steps"] == 100


def test_a_running_run_is_censored_at_its_last_evaluation_and_a_failed_run_is_left_out(tmp_path):
    """A study stopped early keeps its slow runs as lower bounds instead of dropping them, which would
    leave only its fast runs in the medians."""
    write_run(tmp_path, name="ok", learn_at=30)
    write_run(tmp_path, name="crashed", learn_at=30, status="failed")
    write_run(tmp_path, name="live", learn_at=None, status="running", last_step=40)
    eff = efficiency(load_runs(tmp_path)).set_index("run")
    assert sorted(eff.index) == ["live", "ok"]
    live = eff.loc["live"]
    assert live["censored"] and live["status"] == "running"
    assert (live["steps"], live["examples"], live["pct"], live["budget_steps"]) == (40, 40 * 8, 40.0, 100)
    assert not eff.loc["ok", "censored"] and eff.loc["ok", "steps"] == 30
    at = efficiency(load_runs(tmp_path), load_metrics(tmp_path), threshold=0.5).set_index("run")
    assert at.loc["live", "censored"] and at.loc["live", "steps"] == 40  # its last evaluation, not the budget


def test_a_running_run_with_no_evaluation_yet_is_left_out(tmp_path):
    write_run(tmp_path, name="ok", learn_at=30)
    run = write_run(tmp_path, name="new", learn_at=None, status="running", last_step=0)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "final_step": None}))
    assert list(efficiency(load_runs(tmp_path))["run"]) == ["ok"]


def test_the_median_of_a_study_stopped_early_counts_its_unfinished_runs(tmp_path):
    write_run(tmp_path, seed=0, learn_at=30)
    write_run(tmp_path, seed=1, learn_at=50)
    write_run(tmp_path, seed=2, learn_at=None, status="running", last_step=80)
    row = efficiency_summary(efficiency(load_runs(tmp_path))).iloc[0]
    assert (row["runs"], row["censored"], row["steps_median"]) == (3, 1, 50)  # 30, 50, ≥ 80
    assert not row["median_censored"]


def test_summary_median_counts_censored_runs_at_the_budget_and_flags_a_censored_median(tmp_path):
    for seed, learn_at in enumerate([20, None, None]):
        write_run(tmp_path, model="mamba-tiny", seed=seed, learn_at=learn_at, max_steps=100)
    row = efficiency_summary(efficiency(load_runs(tmp_path))).iloc[0]
    assert (row["runs"], row["censored"], row["steps_median"]) == (3, 2, 100)
    assert row["median_censored"]


def test_the_efficiency_table_has_a_row_per_model_and_a_cell_per_n_and_layout(tmp_path):
    for seed, learn_at in enumerate([1200, 1400, None]):  # two got there, one never in its 2,000 steps
        write_run(tmp_path, seed=seed, learn_at=learn_at, max_steps=2000, eval_every=100)
    for seed in range(3):  # a cell where the median run had not got there
        write_run(tmp_path, model="mamba-tiny", layout="prefix", seed=seed, learn_at=None if seed else 300,
                  max_steps=2000, eval_every=100)
    table = efficiency_table(efficiency_summary(efficiency(load_runs(tmp_path))))
    assert list(table.index) == ["mamba-tiny", "pythia-tiny"]
    assert list(table.columns) == [(6, "prefix"), (6, "suffix")]
    assert table.loc["pythia-tiny", (6, "suffix")] == "1,400 (2/3)"
    assert table.loc["mamba-tiny", (6, "prefix")] == "> 2,000 (1/3)"
    assert table.isna().sum().sum() == 2  # the cells a model did not run


def test_a_vlm_efficiency_table_has_a_column_per_prompt_layout(tmp_path):
    write_vlm_run(tmp_path, layout="task-agnostic", name="a")
    write_vlm_run(tmp_path, layout="query-first", learn_at=None, name="q")
    table = efficiency_table(efficiency_summary(efficiency(load_runs(tmp_path))))
    assert list(table.columns) == ["query-first", "task-agnostic"]
    assert table.iloc[0].str.fullmatch(r"(> )?[\d,]+ \([01]/1\)").all()


def test_first_reach_is_the_first_evaluation_at_or_above_threshold_and_nan_if_never(tmp_path):
    write_run(tmp_path, n=3, learn_at={0: 20, 2: 50}, max_steps=60, eval_every=10, name="r")
    fr = first_reach(load_positions(tmp_path)).set_index("position")
    assert fr.loc[0, "step"] == 20 and fr.loc[2, "step"] == 50 and np.isnan(fr.loc[1, "step"])
    assert fr.loc[2, "pct"] == 50 / 60 * 100


def test_learning_order_makes_end_then_beginning_then_middle_visible(tmp_path):
    n = 9  # thirds: positions 0-2 beginning, 3-5 middle, 6-8 end
    learn_at = {p: 10 if p >= 6 else 30 if p < 3 else 60 for p in range(n)}
    write_run(tmp_path, model="mamba-tiny", n=n, learn_at=learn_at, name="mamba")
    write_run(tmp_path, model="pythia-tiny", n=n, learn_at=20, name="pythia")
    summary = learning_order_summary(learning_order(load_positions(tmp_path))).set_index("model")
    assert summary.loc["mamba-tiny", "order"] == "end → beginning → middle"
    assert summary.loc["pythia-tiny", "order"] == "beginning = middle = end"  # uniform, as in the paper
    assert (summary.loc["mamba-tiny", "end"], summary.loc["mamba-tiny", "middle"]) == (10.0, 60.0)


def test_learning_order_takes_the_median_over_runs_counting_never_as_infinite(tmp_path):
    for seed, step in enumerate([10, 30, None]):
        write_run(
            tmp_path,
            n=2,
            seed=seed,
            learn_at={0: 10, 1: step} if step else {0: 10},
            max_steps=50,
            threshold=1.1,
        )  # threshold above 1: runs never stop early
    order = learning_order(load_positions(tmp_path), threshold=0.95).set_index("position")
    assert order.loc[0, "step"] == 10 and order.loc[1, "step"] == 30
    assert (order.loc[1, "runs"], order.loc[1, "reached_runs"]) == (3, 2)


def test_half_reached_is_the_step_by_which_half_had_got_there():
    assert half_reached([20, np.nan]) == 20
    assert half_reached([10, 30, np.nan]) == 30
    assert np.isnan(half_reached([10, np.nan, np.nan])) and np.isnan(half_reached([]))


def test_a_one_evaluation_spike_counts_as_learned_only_under_the_first_rule(tmp_path):
    """An early model that answers position 0 to every query scores 100% there for one evaluation."""
    run = write_run(tmp_path, n=2, learn_at={0: 40, 1: 40}, max_steps=60, name="r")
    positions = load_positions(run)
    spike = (positions["step"] == 10) & (positions["position"] == 0)
    positions.loc[spike, "accuracy"] = 1.0
    stays = first_reach(positions).set_index("position")
    first = first_reach(positions, rule="first").set_index("position")
    assert first.loc[0, "step"] == 10 and stays.loc[0, "step"] == 40 and stays.loc[1, "step"] == 40


def test_vlm_runs_learning_order_has_no_n_and_its_thirds_are_the_image_rows(tmp_path):
    """A VLM run has no N: its positions are the 9 image cells, row-major (0-2 the top row)."""
    learn_at = {p: 20 if p >= 6 else 40 if p < 3 else 60 for p in range(9)}  # bottom, top, middle
    write_vlm_run(tmp_path, model="mamba-tiny", learn_at=learn_at, name="vlm")
    fr = first_reach(load_positions(tmp_path))
    assert "n" not in fr  # not a made-up N = 9
    assert fr["region"].tolist() == ["beginning"] * 3 + ["middle"] * 3 + ["end"] * 3
    order = learning_order(load_positions(tmp_path))
    assert "n" not in order and order["region"].tolist() == fr["region"].tolist()
    summary = learning_order_summary(order)
    assert summary["order"].tolist() == ["end → beginning → middle"]
    assert efficiency_summary(efficiency(load_runs(tmp_path)))[["label", "layout"]].values.tolist() == [
        ["mamba-tiny+mlp", "task-agnostic"]
    ]
