"""`probes sweep` with `kind: vlm`: a grid of VLM runs with the text sweep's lifecycle (skip finished,
resume unfinished, report damaged and carry on, --dry-run), and the backend registry."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cli import app
from probes.config import SweepConfig
from probes.errors import UserError
from probes.sweep import (
    BACKENDS,
    KINDS,
    Job,
    VLMSweepConfig,
    expand_grid,
    load_sweep_config,
    make_result,
    plan,
    run_sweep,
)
from probes.vlm.config import VLMTrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = {"instruction": "", "max_steps": 2, "stage1_steps": 1, "eval_every": 1,
        "batch_size": 2, "eval_batch_size": 4, "device": "cpu",
        "data": {"train_size": 8, "eval_size": 4, "image_size": 32, "max_objects": 2}}


def vlm_yaml(path: Path, **grid) -> Path:
    path.write_text(yaml.safe_dump({"kind": "vlm", "model": "pythia-tiny", "encoder": "siglip-tiny", "lr": 1e-3,
                                    "layout": ["task-agnostic", "query-first"], "train": TINY, **grid}))
    return path


def test_the_kind_key_picks_the_sweep_config(tmp_path):
    vlm = load_sweep_config(vlm_yaml(tmp_path / "v.yaml"), {"out": str(tmp_path / "o")})
    assert isinstance(vlm, VLMSweepConfig) and vlm.layout == ["task-agnostic", "query-first"]
    (tmp_path / "t.yaml").write_text("kind: text\nmodel: pythia-tiny\n")
    assert isinstance(load_sweep_config(tmp_path / "t.yaml"), SweepConfig)
    assert isinstance(load_sweep_config(None, {"model": ["pythia-tiny"]}), SweepConfig)  # no file: text
    (tmp_path / "b.yaml").write_text("kind: audio\n")
    with pytest.raises(UserError, match=r"kind: 'audio' is not a sweep kind \(allowed: text, vlm\)"):
        load_sweep_config(tmp_path / "b.yaml")


@pytest.mark.parametrize("data, message", [
    ({"layout": ["task-agnostic", "suffix"]}, "layout.1: Input should be 'task-agnostic'"),
    ({"lr": [1e-3, 1e-3]}, "lr lists a value twice"),
    ({"train": {"max_step": 3}}, "unknown config key 'train.max_step'"),
    ({"train": {"seed": 3}}, "train.seed is set by the grid"),
    ({"n": [8]}, "unknown config key 'n'"),
    ({"connector": ["mlp"], "scan": ["bsm"]}, "connector mlp scans with none, got scan 'bsm'"),
])
def test_bad_vlm_sweep_configs_are_one_line_errors(tmp_path, data, message):
    with pytest.raises(UserError) as err:
        load_sweep_config(vlm_yaml(tmp_path / "v.yaml"), data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_vlm_grid_expands_into_vlm_run_configs_named_as_vlm_runs(tmp_path):
    sweep = VLMSweepConfig(model=["pythia-tiny", "mamba-tiny"], layout=["task-agnostic", "task-aware"],
                           seed=[0, 1], lr=1e-3, train=TINY, out=tmp_path)
    cfgs = expand_grid(sweep)
    assert len(cfgs) == 8 and all(isinstance(c, VLMTrainConfig) for c in cfgs)
    assert cfgs[0].out == tmp_path / "pythia-tiny+siglip-tiny+mlp+task-agnostic+lr1e-3+s0"
    assert {(c.max_steps, c.data.train_size) for c in cfgs} == {(2, 8)}
    jobs, skipped = plan(cfgs)
    assert skipped == [] and {(j.kind, j.action) for j in jobs} == {("vlm", "new")}


@pytest.mark.parametrize("name", ["repro-vlm", "repro-vlm-markers"])
def test_the_vlm_repro_configs_are_vlm_sweeps_of_24_runs(name):
    sweep = load_sweep_config(ROOT / "configs" / f"{name}.yaml")
    cfgs = expand_grid(sweep)
    assert len(cfgs) == 24 and {(c.model, c.layout, c.seed) for c in cfgs} == {
        (m, lay, s) for m in ("pythia-tiny", "mamba-tiny") for lay in ("task-agnostic", "task-aware", "query-first")
        for s in range(4)}
    assert {(c.max_steps, c.lr, c.device) for c in cfgs} == {({"repro-vlm": 5000}.get(name, 2000), 1e-3, "cuda")}


@pytest.fixture(scope="module")
def vlm_swept(tmp_path_factory, cli_runner_module):
    """2 tiny VLM runs through `probes sweep` on the local backend, 2 at a time."""
    tmp = tmp_path_factory.mktemp("vlm")
    config = vlm_yaml(tmp / "v.yaml")
    r = cli_runner_module.invoke(app, ["sweep", "--config", str(config), "--out", str(tmp / "o"), "--jobs", "2",
                                       "--threads", "1", "--no-progress"])
    return tmp, config, r


@pytest.fixture(scope="module")
def cli_runner_module():
    from typer.testing import CliRunner

    return CliRunner()


def test_probes_sweep_runs_a_vlm_grid(vlm_swept):
    tmp, _, r = vlm_swept
    assert r.exit_code == 0, r.output
    assert "2 runs: 0 reached, 2 not_reached, 0 failed" in r.stdout
    results = json.loads((tmp / "o" / "sweep.json").read_text())
    assert [res["run"] for res in results] == ["pythia-tiny+siglip-tiny+mlp+task-agnostic+lr1e-3+s0",
                                               "pythia-tiny+siglip-tiny+mlp+query-first+lr1e-3+s0"]
    for res in results:
        run = Path(res["dir"])
        summary = json.loads((run / "summary.json").read_text())
        assert summary["kind"] == "vlm" and summary["threads_used"] == [1]
        assert pd.read_parquet(run / "metrics.parquet")["step"].tolist() == [0, 1, 2]
        assert yaml.safe_load((run / "config.yaml").read_text())["layout"] in ("task-agnostic", "query-first")


def test_a_vlm_sweep_skips_finished_runs_and_resumes_unfinished_ones(vlm_swept, cli_runner):
    tmp, config, _ = vlm_swept
    sweep = load_sweep_config(config, {"out": str(tmp / "o")})
    run = Path(expand_grid(sweep)[1].out)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))  # as if killed at the end
    r = cli_runner.invoke(app, ["sweep", "--config", str(config), "--out", str(tmp / "o"), "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0].endswith("skip (not_reached)") and lines[1] == f"{run}  resume"
    assert "unknown" in lines[-1]  # no bench figures for VLM runs
    results = run_sweep(sweep, progress=False, threads=1)
    assert [res["action"] for res in results] == ["skipped", "resume"]
    assert results[1]["status"] == "not_reached"
    assert json.loads((run / "summary.json").read_text())["final_accuracy"] == summary["final_accuracy"]


def test_a_damaged_vlm_run_is_reported_and_the_others_go_on(tmp_path):
    sweep = load_sweep_config(vlm_yaml(tmp_path / "v.yaml", layout=["task-agnostic", "task-aware"]),
                              {"out": str(tmp_path / "o")})
    damaged = Path(expand_grid(sweep)[0].out)
    damaged.mkdir(parents=True)
    (damaged / "notes.txt").write_text("not a run")
    results = run_sweep(sweep, progress=False, threads=1)
    assert results[0]["action"] == "skipped" and results[0]["status"] == "failed"
    assert "holds no run" in results[0]["message"] and "move or remove" in results[0]["message"]
    assert results[1]["action"] == "new" and results[1]["status"] == "not_reached"


# === The backend registry ===


def test_the_backend_registry_holds_local_and_ray_and_refuses_others(tmp_path):
    assert set(BACKENDS) >= {"local", "ray"} and set(KINDS) == {"text", "vlm"}
    sweep = load_sweep_config(vlm_yaml(tmp_path / "v.yaml"), {"out": str(tmp_path / "o")})
    with pytest.raises(UserError, match=r"unknown sweep backend 'slurm' \(known: local, ray"):
        run_sweep(sweep, backend="slurm", progress=False)


class Recorder:
    """A backend that runs nothing: each job 'fails' with a message naming it."""

    def __init__(self, options):
        self.options = options

    def run(self, jobs, display, on_done=None):
        Recorder.seen.append([(j.kind, j.name, j.action, self.options.jobs, self.options.threads) for j in jobs])
        return [make_result(j.name, j.dir, None, j.action, f"recorded {j.name}") for j in jobs]


def test_run_sweep_hands_the_jobs_to_the_backend_the_registry_names(tmp_path, monkeypatch):
    monkeypatch.setitem(BACKENDS, "recorder", Recorder)
    monkeypatch.setattr(Recorder, "seen", [], raising=False)
    sweep = load_sweep_config(vlm_yaml(tmp_path / "v.yaml"), {"out": str(tmp_path / "o")})
    results = run_sweep(sweep, backend="recorder", jobs=3, threads=2, progress=False)
    names = [Path(c.out).name for c in expand_grid(sweep)]
    assert Recorder.seen == [[("vlm", n, "new", 3, 2) for n in names]]
    assert [r["message"] for r in results] == [f"recorded {n}" for n in names]
    assert json.loads((tmp_path / "o" / "sweep.json").read_text()) == results
    assert isinstance(Job("vlm", expand_grid(sweep)[0], names[0], "new").max_steps, int)
