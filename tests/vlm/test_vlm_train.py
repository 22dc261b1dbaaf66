"""probes.vlm.train: tiny Pythia-VL and Mamba-VL trained end to end on CPU on synthetic scenes,
every connector in the VLM path, the run directory, two stages, resume."""

import json
import math

import pandas as pd
import pytest
import torch
import yaml

from analysis import load, plots
from probes.errors import UserError
from probes.rundir import latest_checkpoint
from probes.runtime import resolve_device
from probes.vlm.config import VLMTrainConfig
from probes.vlm.model import build_vlm
from probes.vlm.train import METRIC_COLUMNS, lr_at, stage_of, train_vlm

TINY_DATA = {"train_size": 32, "eval_size": 8, "image_size": 32, "max_objects": 2}


def tiny(out, **kw) -> VLMTrainConfig:
    base = dict(model="pythia-tiny", encoder="siglip-tiny", instruction="", max_steps=12, stage1_steps=4,
                eval_every=4, batch_size=8, eval_batch_size=8, lr=1e-3, out=str(out), data=TINY_DATA)
    return VLMTrainConfig(**{**base, **kw})


def losses(run) -> list[float]:
    return pd.read_parquet(run / "metrics.parquet")["loss"].tolist()


@pytest.fixture(scope="module")
def pythia_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "pythia-vl"
    summary = train_vlm(tiny(run))
    return run, summary


def test_pythia_vl_trains_and_writes_a_complete_run_directory(pythia_run):
    run, summary = pythia_run
    assert summary["status"] == "not_reached" and summary["final_step"] == 12
    loss = losses(run)
    assert loss[-1] < loss[0] - 0.5  # held-out answer loss falls
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert list(metrics.columns) == METRIC_COLUMNS
    assert metrics["step"].tolist() == [0, 4, 8, 12] and metrics["stage"].tolist() == [1, 1, 2, 2]
    assert metrics["examples_seen"].tolist() == [0, 32, 64, 96]
    assert metrics["accuracy"].between(0, 1).all() and metrics["parse_rate"].between(0, 1).all()
    positions = pd.read_parquet(run / "positions.parquet")
    assert list(positions.columns) == ["step", "position", "accuracy", "count"]
    assert len(positions) == 4 * 9 and positions.groupby("step")["count"].sum().eq(8).all()
    preds = sorted((run / "predictions").glob("*.parquet"))
    assert [p.name for p in preds] == [f"step_{s:07d}.parquet" for s in (0, 4, 8, 12)]
    last = pd.read_parquet(preds[-1])
    assert len(last) == 8 and {"index", "expression", "target", "prediction", "parsed", "iou", "correct",
                                "position"} <= set(last.columns)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["model"], config["encoder"], config["connector"], config["layout"]) == \
        ("pythia-tiny", "siglip-tiny", "mlp", "task-agnostic")
    assert VLMTrainConfig.model_validate(config).max_steps == 12
    saved = json.loads((run / "summary.json").read_text())
    for key in ("status", "threshold", "step_reached", "examples_to_threshold", "final_accuracy", "wall_seconds"):
        assert key in saved
    assert (run / "checkpoint" / "state.pt").is_file() and latest_checkpoint(run)[1]["step"] == 12


def test_the_analysis_package_reads_vlm_runs(pythia_run):
    run, _ = pythia_run
    tables = load.load(run)
    assert tables.runs["model"].tolist() == ["pythia-tiny"] and tables.runs["status"].tolist() == ["not_reached"]
    assert tables.metrics["pct"].tolist() == pytest.approx([0.0, 100 / 3, 200 / 3, 100.0])
    assert set(tables.positions["position"]) == set(range(9))


def test_probes_plot_draws_a_real_vlm_run_as_image_cells_and_layouts(pythia_run, tmp_path, plot_files):
    run, _ = pythia_run
    written = plots.plot_runs(run, out=tmp_path, formats=["png"])
    assert sorted(p.name for p in written) == plot_files(["png"])
    tables = load.load(run)
    heat = plots.plot_heatmap(tables.positions)
    assert all(ax.images[0].get_array().shape == (3, 3) for ax in heat.axes if ax.get_label() != "<colorbar>")
    eff = plots.plot_efficiency(tables.runs).axes[-1]
    assert [t.get_text() for t in eff.get_xticklabels()] == ["task-agnostic"] and eff.get_xlabel() == "prompt layout"


def test_stage_one_trains_the_connector_only(tmp_path):
    cfg = tiny(tmp_path / "r", max_steps=3, stage1_steps=3, eval_every=3,
               data={**TINY_DATA, "eval_size": 4})
    train_vlm(cfg)
    path, state = latest_checkpoint(tmp_path / "r")
    from transformers import AutoModelForCausalLM

    fresh = build_vlm(cfg, resolve_device(cfg.device)).cpu()  # the run's device: same random init
    trained = AutoModelForCausalLM.from_pretrained(str(path)).state_dict()
    assert all(torch.equal(v, fresh.lm.state_dict()[k]) for k, v in trained.items())  # LM and markers untouched
    assert any(not torch.equal(v.cpu(), fresh.connector.state_dict()[k]) for k, v in state["connector"].items())


def test_mamba_vl_trains_end_to_end(tmp_path):
    summary = train_vlm(tiny(tmp_path / "m", model="mamba-tiny", max_steps=6, stage1_steps=2, eval_every=3,
                             batch_size=4, data={**TINY_DATA, "eval_size": 4}))
    assert summary["status"] == "not_reached" and summary["final_step"] == 6
    loss = losses(tmp_path / "m")
    assert loss[-1] < loss[0] - 0.5


@pytest.mark.parametrize("connector, scan, encoder2", [
    ("vss-mlp", "bsm", None), ("vss-mlp", "csm", None), ("vss-l2", "bsm", None), ("vss-l2", "csm", None),
    ("mamba-projector", "cross-stitch", "dinov2-tiny"), ("mamba-projector", "cross-cat", "dinov2-tiny"),
])
def test_every_connector_trains_in_the_vlm_path(tmp_path, connector, scan, encoder2):
    cfg = tiny(tmp_path / "c", connector=connector, scan=scan, encoder2=encoder2, max_steps=4, stage1_steps=2,
               eval_every=4, batch_size=4, data={**TINY_DATA, "eval_size": 4})
    summary = train_vlm(cfg)
    assert summary["final_step"] == 4 and math.isfinite(summary["final_accuracy"])
    loss = losses(tmp_path / "c")
    assert loss[-1] < loss[0]


def test_schedule_warms_up_then_decays_per_stage():
    cfg = VLMTrainConfig(max_steps=300, stage1_steps=100, stage1_lr=1e-3, lr=2e-5, warmup=0.03)
    assert [stage_of(cfg, s) for s in (0, 99, 100, 299)] == [1, 1, 2, 2]
    assert lr_at(cfg, 0) == pytest.approx(1e-3 / 3) and lr_at(cfg, 2) == pytest.approx(1e-3)
    assert lr_at(cfg, 99) < 1e-5 and lr_at(cfg, 51) == pytest.approx(0.5e-3, rel=0.02)
    assert lr_at(cfg, 100) == pytest.approx(2e-5 / 6) and lr_at(cfg, 105) == pytest.approx(2e-5)
    assert lr_at(cfg, 299) < 1e-8


def test_a_killed_run_resumes_to_the_same_result(tmp_path):
    def cfg(out, **kw):
        return tiny(out, max_steps=4, stage1_steps=2, eval_every=2, batch_size=2, data={**TINY_DATA, "eval_size": 2},
                    **kw)

    full = train_vlm(cfg(tmp_path / "a"))

    class Killed(Exception):
        pass

    def kill_at_step_4(msg):
        if msg.startswith("step      4 stage"):
            raise Killed  # after step 4's evaluation, before its checkpoint: resumes from step 2

    with pytest.raises(Killed):
        train_vlm(cfg(tmp_path / "b"), log=kill_at_step_4)
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "running"
    messages = []
    resumed = train_vlm(cfg(tmp_path / "b"), log=messages.append)
    assert any(m.startswith(f"resuming {tmp_path / 'b'} from step 2") for m in messages)
    assert resumed["resumed_at"] == [2] and resumed["final_step"] == full["final_step"] == 4
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-5)
    assert pd.read_parquet(tmp_path / "b" / "metrics.parquet")["step"].tolist() == [0, 2, 4]
    assert sorted(p.name for p in (tmp_path / "b" / "predictions").iterdir()) == \
        [f"step_{s:07d}.parquet" for s in (0, 2, 4)]

    with pytest.raises(UserError, match="holds a finished run"):
        train_vlm(cfg(tmp_path / "b"))
    (tmp_path / "b" / "summary.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(UserError, match=r"different config \(lr=0.001 there, 0.0005 asked"):
        train_vlm(cfg(tmp_path / "b", lr=5e-4))


def test_overwrite_starts_a_finished_run_again(tmp_path):
    cfg = tiny(tmp_path / "r", max_steps=1, stage1_steps=0, eval_every=1, batch_size=2,
               data={**TINY_DATA, "eval_size": 2})
    train_vlm(cfg)
    (tmp_path / "r" / "predictions" / "step_0000099.parquet").write_bytes(b"stale")
    summary = train_vlm(cfg, overwrite=True)
    assert summary["resumed_at"] == [] and summary["final_step"] == 1
    assert sorted(p.name for p in (tmp_path / "r" / "predictions").iterdir()) == \
        ["step_0000000.parquet", "step_0000001.parquet"]


def test_vlm_runs_take_their_cpu_threads_from_the_config(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)  # the module's fixture restores one thread afterwards
    cfg = tiny(tmp_path / "r", max_steps=1, stage1_steps=0, eval_every=1, batch_size=2, device="cpu",
               data={**TINY_DATA, "eval_size": 2})
    assert train_vlm(cfg)["threads"] == 1 and torch.get_num_threads() == 2  # auto: one on CPU, then restored
    assert train_vlm(cfg.model_copy(update={"threads": 2}), overwrite=True)["threads"] == 2


def test_vlm_run_directories_follow_the_shared_rundir_lifecycle(tmp_path):
    """probes.rundir decides for VLM runs as for text runs (start_state): worker files are no obstacle,
    differing settings are named as dotted keys, and --overwrite replaces a different or damaged run."""
    from probes.vlm.config import VLMEvalConfig
    from probes.vlm.train import evaluate_run

    run = tmp_path / "r"
    cfg = tiny(run, max_steps=1, stage1_steps=0, eval_every=1, batch_size=2, data={**TINY_DATA, "eval_size": 2})
    run.mkdir()
    (run / "train.log").write_text("a sweep worker's log\n")
    assert train_vlm(cfg)["final_step"] == 1 and (run / "train.log").exists()

    (run / "summary.json").write_text(json.dumps({"status": "running"}))  # killed after its last checkpoint
    assert train_vlm(cfg.model_copy(update={"eval_batch_size": 4, "threads": 1}))["resumed_at"] == [1]
    (run / "summary.json").write_text(json.dumps({"status": "running"}))
    other = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train_size": 16})})
    with pytest.raises(UserError, match=r"different config \(data.train_size=32 there, 16 asked\)"):
        train_vlm(other)
    assert train_vlm(other, overwrite=True)["resumed_at"] == []
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["train_size"] == 16

    (run / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UserError, match=r"config.yaml is damaged \(.*\); pass --overwrite"):
        train_vlm(other)
    with pytest.raises(UserError, match=r"config.yaml is damaged \([^;]*\)$"):  # eval has no --overwrite
        evaluate_run(VLMEvalConfig(run=run))
    assert train_vlm(other, overwrite=True)["final_step"] == 1

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty and holds no run"):
        train_vlm(tiny(tmp_path / "mine"))


def test_vlm_runs_honour_checkpoint_every_and_keep_every_rng(tmp_path, checkpoint_steps):
    cfg = tiny(tmp_path / "r", max_steps=6, stage1_steps=3, eval_every=1, batch_size=2, stage1_batch_size=4, checkpoint_every=4,
               threshold=1.0, data={**TINY_DATA, "eval_size": 2})
    summary = train_vlm(cfg)
    assert checkpoint_steps == [4, 6]  # evaluations at every step; checkpoints 4 steps apart, and the end
    _, state = latest_checkpoint(tmp_path / "r")
    assert set(state["rng"]) == {"cpu", "cuda", "numpy", "python"} and state["batch_order"]["seed"] == cfg.seed
    assert summary["kind"] == "vlm" and state["train_examples"] == cfg.examples_seen(6) == 3 * 4 + 3 * 2
