"""`probes runs` / analysis.overview: where each run under some directories stands."""

import json

import pandas as pd
from synthetic import write_run, write_vlm_run

from analysis.load import load_runs
from analysis.overview import runs_overview
from cli import app


def _with_progress(run, **fields):
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, **fields}))


def test_one_row_per_run_with_identity_then_progress(tmp_path):
    done = write_run(tmp_path, seed=0, learn_at=40)
    going = write_run(tmp_path, seed=1, learn_at=None, status="running")
    _with_progress(done, final_step=40, best_accuracy=1.0, train_examples_per_s=800.0)
    _with_progress(going, final_step=60, best_accuracy=0.2, train_examples_per_s=750.0)
    table = runs_overview(load_runs(tmp_path))
    assert list(table.columns) == ["run", "kind", "model", "n", "layout", "lr", "seed", "status", "step",
                                   "max_steps", "best_accuracy", "final_accuracy", "step_reached",
                                   "train_examples_per_s"]
    assert table["seed"].tolist() == [0, 1]
    assert table["status"].tolist() == ["reached", "running"]
    assert table["step"].tolist() == [40, 60]
    assert table["step_reached"].iloc[0] == 40 and pd.isna(table["step_reached"].iloc[1])


def test_vlm_runs_carry_their_connector(tmp_path):
    write_vlm_run(tmp_path, connector="mlp", name="a")
    write_vlm_run(tmp_path, connector="vss-l2", scan="csm", name="b")
    table = runs_overview(load_runs(tmp_path))
    assert "connector" in table and "n" not in table
    assert table["connector"].tolist() == ["mlp", "vss-l2"]


def test_the_command_prints_a_table_per_model_and_writes_the_csv(tmp_path, cli_runner):
    write_run(tmp_path / "runs", model="pythia-tiny", learn_at=40)
    write_run(tmp_path / "runs", model="mamba-tiny", learn_at=None, status="running")
    csv = tmp_path / "runs.csv"
    res = cli_runner.invoke(app, ["runs", str(tmp_path / "runs"), "--csv", str(csv)])
    assert res.exit_code == 0, res.output
    assert "pythia-tiny" in res.output and "mamba-tiny" in res.output
    assert "reached" in res.output and "running" in res.output
    assert len(pd.read_csv(csv)) == 2
    res = cli_runner.invoke(app, ["runs", str(tmp_path / "runs"), "--only", "model=mamba-tiny"])
    assert "mamba-tiny" in res.output and "pythia-tiny" not in res.output


def test_a_selection_that_matches_nothing_is_one_line_and_exit_2(tmp_path, cli_runner):
    write_run(tmp_path)
    res = cli_runner.invoke(app, ["runs", str(tmp_path), "--only", "n=99"])
    assert res.exit_code == 2
    assert res.output.strip() == "error: no run matches n=99"
    res = cli_runner.invoke(app, ["runs", str(tmp_path), "--only", "n"])
    assert res.exit_code == 2 and "--only takes KEY=VALUE" in res.output


def test_a_csv_in_a_missing_directory_is_one_line_and_exit_2(tmp_path, cli_runner):
    write_run(tmp_path / "runs")
    res = cli_runner.invoke(app, ["runs", str(tmp_path / "runs"), "--csv", str(tmp_path / "no" / "such" / "r.csv")])
    assert res.exit_code == 2
    assert res.output.strip().endswith("r.csv: No such file or directory; check the path")
    assert "Traceback" not in res.output
