"""analysis.load: run directories (any depth) → tidy runs / metrics / positions tables."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from synthetic import write_run, write_vlm_run

from analysis.load import (
    VLM_GRID,
    NoRunsError,
    at_step,
    find_runs,
    is_vlm,
    kind_of,
    load,
    load_metrics,
    load_positions,
    load_runs,
    model_family,
    relabel_runs,
    short_model_names,
)
from probes.errors import UserError
from probes.schema import SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[2]


def test_load_runs_finds_runs_at_any_depth(tmp_path):
    write_run(tmp_path, model="pythia-tiny", name="a")
    write_run(tmp_path / "sweep" / "suffix", model="mamba-tiny", name="b")
    write_run(tmp_path / "x" / "y" / "z", model="mamba-tiny", layout="prefix", name="c")
    runs = load_runs(tmp_path)
    assert sorted(runs["run"]) == ["a", "sweep/suffix/b", "x/y/z/c"]
    assert len(find_runs(tmp_path / "x", tmp_path / "x" / "y")) == 1  # no duplicates


def test_a_run_directory_can_be_given_itself(tmp_path):
    run = write_run(tmp_path, name="only")
    assert list(load_runs(run)["run"]) == ["only"]


def test_runs_table_has_config_fields_and_summary_as_columns(tmp_path):
    write_run(tmp_path, model="mamba-tiny", n=6, layout="prefix", lr=3e-3, learn_at=30)
    row = load_runs(tmp_path).iloc[0]
    assert (row["model"], row["n"], row["layout"], row["lr"]) == ("mamba-tiny", 6, "prefix", 3e-3)
    assert bool(row["tokens.eos_target"]) and row["tokens.answer_offset"] == 2  # nested keys, dotted
    assert row["status"] == "reached" and row["step_reached"] == 30 and row["family"] == "mamba"


def test_metrics_and_positions_are_tidy_with_run_columns_and_percent_of_training(tmp_path):
    write_run(tmp_path, n=4, max_steps=100, eval_every=10, learn_at=None, name="r")
    metrics, positions = load_metrics(tmp_path), load_positions(tmp_path)
    assert list(metrics["step"]) == list(range(0, 101, 10))  # one row per evaluation, step 0 included
    assert metrics["pct"].iloc[-1] == 100.0 and (metrics["model"] == "pythia-tiny").all()
    assert len(positions) == 11 * 4 and set(positions["position"]) == {0, 1, 2, 3}
    assert {"run", "model", "n", "layout", "lr", "step", "pct", "accuracy", "count"} <= set(positions.columns)


def test_load_returns_all_three_tables_in_one_call(tmp_path):
    write_run(tmp_path, name="a")
    write_run(tmp_path, model="mamba-tiny", name="b")
    tables = load(tmp_path)
    assert len(tables.runs) == 2 and set(tables.metrics["run"]) == set(tables.positions["run"]) == {"a", "b"}


def test_a_run_still_starting_is_running_and_has_no_rows(tmp_path):
    write_run(tmp_path, name="done")
    starting = tmp_path / "starting"
    starting.mkdir()
    (starting / "config.yaml").write_text("model: mamba-tiny\nn: 4\nmax_steps: 10\n")
    pd.DataFrame({"step": [0], "examples_seen": [0], "loss": [1.0], "accuracy": [0.25]}).to_parquet(
        starting / "metrics.parquet"
    )
    runs = load_runs(tmp_path).set_index("run")
    assert runs.loc["starting", "status"] == "running"
    assert set(load_positions(tmp_path)["run"]) == {"done"}


def test_a_half_written_table_is_skipped_with_a_warning(tmp_path):
    write_run(tmp_path, name="good")
    bad = write_run(tmp_path, name="bad")
    (bad / "metrics.parquet").write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="unreadable"):
        assert set(load_metrics(tmp_path)["run"]) == {"good"}


def test_a_damaged_config_skips_the_run_and_a_damaged_summary_keeps_it_as_running(tmp_path):
    write_run(tmp_path, name="good")
    (write_run(tmp_path, name="no_config") / "config.yaml").write_text("model: [unclosed\n")
    (write_run(tmp_path, name="no_summary") / SUMMARY_FILE).write_text("{truncated")
    with pytest.warns(UserWarning) as seen:
        runs = load_runs(tmp_path).set_index("run")
    assert set(runs.index) == {"good", "no_summary"}
    assert runs.loc["no_summary", "status"] == "running" and runs.loc["good", "status"] != "running"
    messages = " ".join(str(w.message) for w in seen)
    assert "no_config" in messages and "no_summary" in messages and "treating the run as running" in messages


def test_directories_without_runs_are_one_clear_error(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "config.yaml").write_text("model: x\n")
    with pytest.raises(NoRunsError, match="no run directories under"):
        load_runs(tmp_path)
    with pytest.raises(NoRunsError, match="no such directory"):
        load_runs(tmp_path / "missing")


def test_summary_fields_win_over_config_fields_of_the_same_name(tmp_path):
    run = write_run(tmp_path, max_steps=100, name="r")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "max_steps": 50}))
    assert load_runs(tmp_path)["max_steps"].iloc[0] == 50


@pytest.mark.parametrize(
    "name, family",
    [
        ("pythia-1.4b", "pythia"),
        ("mamba-tiny", "mamba"),
        ("hf:state-spaces/mamba-130m-hf", "mamba"),
        ("hf:gpt2", "other"),
    ],
)
def test_model_family_is_read_from_the_name(name, family):
    assert model_family(name) == family


def test_models_given_by_path_are_labelled_by_the_last_parts_that_tell_them_apart(tmp_path):
    models = {
        "hf:/root/w10/pretrain/mamba-20m/model": "hf:…/mamba-20m/model",
        "hf:/root/w10/pretrain/pythia-20m/model": "hf:…/pythia-20m/model",
        "config:/root/w10/init/mamba-20m": "config:…/init/mamba-20m",
        "pythia-tiny": "pythia-tiny",  # presets, short hub ids and short paths stay as they are
        "hf:EleutherAI/pythia-160m": "hf:EleutherAI/pythia-160m",
        "config:init/pythia-20m": "config:init/pythia-20m",
    }
    for i, model in enumerate(models):
        write_run(tmp_path, model=model, name=f"r{i}")
    runs = load_runs(tmp_path)
    assert dict(zip(runs["model"], runs["label"])) == models


def test_a_short_name_grows_until_it_is_unique_and_keeps_the_family():
    assert short_model_names(["hf:/a/w9/pretrain/mamba-20m/model", "hf:/a/w10/pretrain/mamba-20m/model"]) == {
        "hf:/a/w9/pretrain/mamba-20m/model": "hf:…/w9/pretrain/mamba-20m/model",
        "hf:/a/w10/pretrain/mamba-20m/model": "hf:…/w10/pretrain/mamba-20m/model",
    }
    assert short_model_names(["hf:/data/mamba/ckpt-1/model"]) == {
        "hf:/data/mamba/ckpt-1/model": "hf:…/mamba/ckpt-1/model"  # "…/ckpt-1/model" would lose "mamba"
    }


def test_relabelled_models_from_several_directories_are_one_model_in_every_table(tmp_path):
    for window, learn_at in (("w1", 30), ("w2", 50)):
        write_run(tmp_path / window, model=f"hf:/root/{window}/pretrain/pythia-20m/model", name="p", learn_at=learn_at)
    write_run(tmp_path / "w2", model="config:/root/w2/init/pythia-20m", name="twin", learn_at=None)
    runs = relabel_runs(load_runs(tmp_path), {"hf:*/pythia-20m/model": "Pythia-20M pretrained", "hf:*": "unused"})
    by_run = runs.set_index("run")
    assert set(by_run.loc[["w1/p", "w2/p"], "model"]) == {"Pythia-20M pretrained"}
    assert set(by_run.loc[["w1/p", "w2/p"], "label"]) == {"Pythia-20M pretrained"}
    assert by_run.loc["w1/p", "source_model"] == "hf:/root/w1/pretrain/pythia-20m/model"  # what was loaded
    assert by_run.loc["w2/twin", "model"] == "config:/root/w2/init/pythia-20m"  # no GLOB matches: unchanged
    assert set(load_metrics(runs)["label"]) == {"Pythia-20M pretrained", "config:…/init/pythia-20m"}
    assert relabel_runs(runs, {}) is runs


def test_a_label_glob_that_matches_no_model_is_refused_naming_the_models(tmp_path):
    write_run(tmp_path, model="pythia-tiny")
    with pytest.raises(UserError, match=r"no run's model matches 'mamba-\*' \(models: pythia-tiny\)"):
        relabel_runs(load_runs(tmp_path), {"mamba-*": "Mamba"})


def test_probe_and_vlm_runs_are_told_apart_in_the_kind_column(tmp_path):
    write_run(tmp_path / "text", name="t")  # an old run: its summary names no kind
    write_vlm_run(tmp_path / "vlm", name="v")
    write_vlm_run(tmp_path / "vlm", name="starting", summary=False)  # no summary yet: its config says so
    runs = load_runs(tmp_path).set_index("run")
    assert runs["kind"].to_dict() == {"text/t": "probe", "vlm/starting": "vlm", "vlm/v": "vlm"}
    assert runs.loc["vlm/starting", "status"] == "running"
    positions = load_positions(tmp_path)
    assert is_vlm(positions).tolist() == positions["run"].str.startswith("vlm/").tolist()  # inherited
    assert (
        kind_of(load_metrics(tmp_path / "vlm")) == "vlm"
        and kind_of(load_metrics(tmp_path / "text")) == "probe"
    )
    with pytest.raises(UserError, match="mixes runs of kinds probe, vlm"):
        kind_of(positions)
    by_hand = positions.drop(columns="kind")  # a table without the column: read from the run's config keys
    assert is_vlm(by_hand).equals(is_vlm(positions))


def test_the_kind_written_in_the_summary_wins_over_the_config_guess(tmp_path):
    run = write_run(tmp_path, name="p")
    summary = json.loads((run / SUMMARY_FILE).read_text())
    (run / SUMMARY_FILE).write_text(json.dumps({**summary, "kind": "pretrain"}))
    assert load_runs(tmp_path)["kind"].tolist() == ["pretrain"]
    assert kind_of(load_runs(tmp_path)) == "pretrain"


def test_the_vlm_grid_is_the_training_codes():
    from probes.vlm.grounding import GRID

    assert VLM_GRID == GRID


def test_analysis_never_imports_training_code_or_torch():
    code = (
        "import sys, analysis, analysis.load, analysis.efficiency, analysis.plots; "
        "bad = [m for m in ('torch', 'probes.train', 'probes.sweep', 'probes.backbones', 'transformers')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


# === Runs made by the real training code ===


def test_real_runs_load_into_tidy_tables_with_one_row_per_evaluation(real_runs):
    runs, metrics, positions = load(real_runs)
    assert len(runs) == 8 and set(runs["model"]) == {"pythia-tiny", "mamba-tiny"}
    assert set(runs["layout"]) == {"suffix", "prefix"} and set(runs["lr"]) == {1e-3, 3e-3}
    assert set(runs["status"]) <= {"reached", "not_reached"}
    for run, m in metrics.groupby("run"):
        assert m["step"].iloc[0] == 0 and m["step"].is_monotonic_increasing  # step 0 is logged
        p = positions[positions["run"] == run]
        assert len(p) == len(m) * 6 and set(p["step"]) == set(m["step"])  # every evaluation × position
    assert metrics["pct"].between(0, 100).all()
    assert (metrics["examples_seen"] == metrics["step"] * metrics["batch_size"]).all()


def test_real_runs_summary_agrees_with_their_metrics(real_runs):
    runs, metrics = load_runs(real_runs), load_metrics(real_runs)
    for _, run in runs.iterrows():
        m = metrics[metrics["run"] == run["run"]]
        passed = m[m["accuracy"] >= run["threshold"]]
        assert (run["status"] == "reached") == (len(passed) > 0)
        if len(passed):
            assert run["step_reached"] == passed["step"].iloc[0] == m["step"].iloc[-1]  # stopped there


def test_runs_differing_only_in_a_seed_key_are_separate_grid_cells(tmp_path):
    import yaml

    from analysis.efficiency import efficiency
    from analysis.load import GRID_KEYS
    from probes.config import GRID_KEYS as TRAIN_GRID_KEYS

    assert GRID_KEYS == TRAIN_GRID_KEYS
    old = write_run(tmp_path, seed=3, name="old")  # written before the seed keys: each is `seed`
    for key in ("init_seed", "order_seed", "data_seed"):
        run = write_run(tmp_path, seed=3, name=key)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump(cfg | {"init_seed": None, "order_seed": None,
                                                               "data_seed": None, key: 7}))
    runs = load_runs(tmp_path).set_index("run")
    assert runs.loc["old", ["init_seed", "order_seed", "data_seed"]].tolist() == [3, 3, 3]
    assert runs.loc["order_seed", ["init_seed", "order_seed", "data_seed"]].tolist() == [3, 7, 3]
    assert runs.groupby(list(GRID_KEYS)).ngroups == 4  # no two runs merged into one cell
    eff = efficiency(load_runs(tmp_path))
    assert eff.groupby(list(GRID_KEYS)).ngroups == 4
    assert load_positions(tmp_path).groupby([*GRID_KEYS, "step", "position"]).size().max() == 1
    assert (old / "config.yaml").exists()


def test_at_step_shows_every_run_as_it_stood_then(tmp_path):
    """Runs stopped at different steps compared at one: a run that reached its threshold by then keeps its result,
    one that reached it later, or never, is a running run cut there, and one that was already cut earlier stays
    where it was cut."""
    write_run(tmp_path, name="early", learn_at=30)
    write_run(tmp_path, name="late", learn_at=70)
    write_run(tmp_path, name="never", learn_at=None)
    write_run(tmp_path, name="cut", learn_at=None, status="running", last_step=40)
    tables = load(tmp_path)
    runs = at_step(tables, 50).runs.set_index("run")
    assert runs.loc["early", "status"] == "reached" and runs.loc["early", "step_reached"] == 30
    for name in ("late", "never"):
        row = runs.loc[name]
        assert row["status"] == "running" and row["final_step"] == 50 and pd.isna(row["step_reached"]), name
        assert pd.isna(row["examples_to_threshold"]) and row["final_accuracy"] < 0.95, name
    assert runs.loc["cut", "status"] == "running" and runs.loc["cut", "final_step"] == 40
    cut = at_step(tables, 50)
    assert cut.metrics["step"].max() == 50 and cut.positions["step"].max() == 50
    assert at_step(tables, 100).runs.equals(tables.runs)  # after every run had ended: unchanged
    with pytest.raises(ValueError, match="whole number"):
        at_step(tables, 2.5)
