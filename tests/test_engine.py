"""probes.engine: the one loop of every kind of run (text kind here; VLM and pretraining kinds in
their own tests): NaN policy, checkpoint cadence, RNG and batch order in checkpoints, trackers."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from probes import engine as engine_mod
from probes import train as train_mod
from probes.config import TrainConfig
from probes.rundir import RunDirError, latest_checkpoint
from probes.train import train_run


def tiny(tmp_path, **kw) -> TrainConfig:
    base = {"model": "pythia-tiny", "n": 6, "lr": 1e-3, "max_steps": 20, "eval_every": 5, "batch_size": 16,
            "train_size": 600, "eval_size": 60, "out": str(tmp_path / "run"), "device": "cpu", "threads": 1}
    return TrainConfig(**{**base, **kw})


def nan_after(monkeypatch, calls: int) -> None:
    """compute_loss gives NaN from its `calls`-th training call on (evaluation is inference mode)."""
    real, seen = train_mod.compute_loss, []

    def loss(*args, **kwargs):
        out = real(*args, **kwargs)
        if torch.is_grad_enabled():
            seen.append(1)
            if len(seen) >= calls:
                return out * float("nan")
        return out

    monkeypatch.setattr(train_mod, "compute_loss", loss)


def test_nan_is_found_at_the_next_check_not_every_step(tmp_path, monkeypatch):
    nan_after(monkeypatch, 3)
    s = train_run(tiny(tmp_path, eval_every=20), progress=False)
    assert s["status"] == "failed"
    assert "between steps 1 and 10" in s["message"]  # the check every NAN_CHECK_EVERY steps, not step 3
    assert engine_mod.NAN_CHECK_EVERY == 10


def test_the_nan_message_names_weight_decay_when_it_is_on(tmp_path, monkeypatch):
    nan_after(monkeypatch, 1)
    s = train_run(tiny(tmp_path, weight_decay=0.5), progress=False)
    assert "lr=0.001" in s["message"] and "weight_decay=0.5" in s["message"]
    assert s["message"].endswith("try a lower lr or a lower weight_decay")
    plain = train_run(tiny(tmp_path / "b"), progress=False)
    assert "weight_decay" not in plain["message"] and plain["message"].endswith("try a lower lr")


def test_checkpoint_every_sets_the_checkpoint_cadence(tmp_path, checkpoint_steps):
    train_run(tiny(tmp_path, eval_every=2, checkpoint_every=5, max_steps=12, threshold=1.0), progress=False)
    assert checkpoint_steps == [6, 12]  # the first evaluation >= 5 steps after the last checkpoint, and the end
    checkpoint_steps.clear()
    train_run(tiny(tmp_path / "b", eval_every=4, max_steps=12, threshold=1.0), progress=False)
    assert checkpoint_steps == [4, 8, 12]  # checkpoint_every None: every evaluation


def test_a_checkpoint_holds_every_rng_and_the_batch_order(tmp_path):
    cfg = tiny(tmp_path, max_steps=5, threshold=1.0)
    train_run(cfg, progress=False)
    _, state = latest_checkpoint(Path(cfg.out))
    assert set(state["rng"]) == {"cpu", "cuda", "numpy", "python"}
    assert state["batch_order"] == {"size": 600, "batch_size": 16, "seed": 0}
    assert state["train_examples"] == 5 * 16


def test_a_checkpoint_of_another_batch_order_is_refused():
    class Order:
        def state(self):
            return {"size": 10, "batch_size": 2, "seed": 0}

    engine_mod.check_order({}, Order(), Path("r"))  # an old checkpoint records none
    with pytest.raises(RunDirError, match="batch order"):
        engine_mod.check_order({"batch_order": {"size": 12, "batch_size": 2, "seed": 0}}, Order(), Path("r"))


def test_log_to_takes_a_list_or_a_comma_separated_string():
    assert TrainConfig(log_to="tensorboard, wandb").log_to == ["tensorboard", "wandb"]
    assert TrainConfig(log_to=["tensorboard"]).log_to == ["tensorboard"] and TrainConfig().log_to == []
    assert TrainConfig(log_to="none").log_to == []
    with pytest.raises(Exception, match="unknown tracker 'tb'"):
        TrainConfig(log_to="tb")


def test_log_to_may_change_when_a_run_resumes(tmp_path):
    cfg = tiny(tmp_path)
    train_mod.start_run_dir(Path(cfg.out), cfg, "new")
    assert train_mod.inspect_run(cfg.model_copy(update={"log_to": ["tensorboard"]}))[0] == "resume"


def tensorboard_scalars(run: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_a_run_with_tensorboard_logs_the_losses_of_metrics_parquet(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny(tmp_path, log_to="tensorboard", threshold=1.0)
    train_run(cfg, progress=False)
    run = Path(cfg.out)
    m = pd.read_parquet(run / "metrics.parquet")
    logged = tensorboard_scalars(run, "loss")
    assert sorted(logged) == m.step.tolist() == [0, 5, 10, 15, 20]
    assert [logged[s] for s in m.step] == pytest.approx(m.loss.tolist(), rel=1e-6)
    train_logged = tensorboard_scalars(run, "train_loss")  # step 0 has none (NaN in the parquet)
    assert [train_logged[s] for s in m.step[1:]] == pytest.approx(m.train_loss[1:].tolist(), rel=1e-6)


def test_overwrite_removes_a_runs_tracker_files(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny(tmp_path, log_to="tensorboard", max_steps=5)
    train_run(cfg, progress=False)
    assert any((Path(cfg.out) / "tensorboard").iterdir())
    train_run(cfg.model_copy(update={"log_to": []}), overwrite=True, progress=False)
    assert not (Path(cfg.out) / "tensorboard").exists()


def test_a_kinds_summary_is_not_bit_reproducible_when_its_scan_sums_with_atomics_on_cuda(tmp_path):
    kind = engine_mod.RunKind(tiny(tmp_path), tmp_path / "run", "new")
    kind.kind = "probe"
    rec = {**engine_mod.new_record(), "threads_used": [1], "metrics": []}
    kind.info = {"device": "cpu", "scan_backend": "torch"}
    assert kind.summary(rec, "running", "", 1.0)["bit_reproducible"] is True
    kind.info = {"device": "cuda", "scan_backend": "triton"}  # what a GPU Mamba run records
    assert kind.summary(rec, "running", "", 1.0)["bit_reproducible"] is False
