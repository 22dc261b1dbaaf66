"""probes.rundir: atomic writes, reading a run directory, new / resume / finished, checkpoints.

No model is trained here: tests/test_train.py and tests/vlm/test_vlm_train.py drive the same
functions through whole runs (resume after SIGKILL, damaged files, --overwrite).
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from probes import rundir, schema
from probes.config import TrainConfig, save_config
from probes.errors import UserError
from probes.rundir import (
    clear_run,
    config_differences,
    inspect_run,
    latest_checkpoint,
    new_record,
    read_config,
    read_summary,
    restore_record,
    run_summary,
    save_checkpoint,
    start_run_dir,
    write_json,
    write_parquet,
)

RESUMABLE = ("out", "device")


def cfg(run: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"model": "pythia-tiny", "n": 6, "lr": 1e-3, "max_steps": 20, "batch_size": 4,
                          "out": str(run), **kw})


def started(run: Path, status: str | None = None, **kw) -> TrainConfig:
    c = cfg(run, **kw)
    start_run_dir(run, c, "new")
    if status is not None:
        write_json(run / "summary.json", {"status": status, "threshold": 0.95, "step_reached": 5, "max_steps": 20})
    return c


def hidden_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob(".*"))


# === Atomic writes ===


def test_writes_replace_the_file_and_leave_no_temporary_file(tmp_path):
    write_json(tmp_path / "s.json", {"a": 1})
    write_json(tmp_path / "s.json", {"a": 2})
    write_parquet(tmp_path / "m.parquet", [{"step": 0, "loss": 1.0}], ["step", "loss"])
    write_parquet(tmp_path / "m.parquet", [{"step": 5}], ["step", "loss"])
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": 2}
    frame = pd.read_parquet(tmp_path / "m.parquet")
    assert list(frame.columns) == ["step", "loss"] and frame.step.tolist() == [5]
    assert hidden_files(tmp_path) == []


def test_a_write_that_dies_half_way_leaves_the_old_file_whole(tmp_path):
    write_json(tmp_path / "s.json", {"a": 1})

    def half_then_die(p: Path) -> None:
        p.write_text('{"a": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rundir._atomic(tmp_path / "s.json", half_then_die)
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": 1}


# === Reading ===


def test_read_summary_is_none_without_one_and_a_user_error_when_damaged(tmp_path):
    assert read_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(UserError, match="summary.json is damaged .*--overwrite"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"status": "paused"}))
    with pytest.raises(UserError, match="status 'paused'"):
        read_summary(tmp_path)


def test_read_config_returns_the_config_class_or_a_user_error(tmp_path):
    assert read_config(tmp_path, TrainConfig) is None
    c = cfg(tmp_path)
    save_config(c, tmp_path / "config.yaml")
    assert read_config(tmp_path, TrainConfig) == c
    (tmp_path / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="config.yaml is damaged .*--overwrite"):
        read_config(tmp_path, TrainConfig)


def test_config_differences_are_dotted_and_skip_resumable_settings(tmp_path):
    a = cfg(tmp_path / "a")
    b = cfg(tmp_path / "b", lr=2e-3, device="cpu", tokens={"eos_target": False})
    assert config_differences(a, b, RESUMABLE) == ["lr", "tokens.eos_target"]
    assert "out" in config_differences(a, b)


# === new / resume / finished ===


def test_a_missing_empty_or_worker_only_directory_is_new(tmp_path):
    c = cfg(tmp_path / "r")
    assert inspect_run(c, tmp_path / "r") == ("new", None)
    (tmp_path / "r").mkdir()
    assert inspect_run(c, tmp_path / "r") == ("new", None)
    (tmp_path / "r" / rundir.LOG_FILE).write_text("log")
    (tmp_path / "r" / rundir.WORKER_PID_FILE).write_text("123\n")
    assert inspect_run(c, tmp_path / "r") == ("new", None)


def test_a_directory_of_other_files_or_a_file_is_refused(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no run"):
        inspect_run(cfg(tmp_path / "r"), tmp_path / "r")
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file"):
        inspect_run(cfg(tmp_path / "f"), tmp_path / "f")


def test_an_unfinished_run_resumes_when_only_resumable_settings_differ(tmp_path):
    run = tmp_path / "r"
    c = started(run, "running")
    state, summary = inspect_run(c.model_copy(update={"device": "cpu", "out": tmp_path / "moved"}), run, RESUMABLE)
    assert state == "resume" and summary["status"] == "running"
    with pytest.raises(UserError, match=r"different config \(lr=0.001 there, 0.002 asked\)"):
        inspect_run(c.model_copy(update={"lr": 2e-3}), run, RESUMABLE)


def test_a_run_killed_before_its_first_summary_resumes(tmp_path):
    run = tmp_path / "r"
    c = started(run)
    assert inspect_run(c, run) == ("resume", None)


@pytest.mark.parametrize("status", ["reached", "not_reached", "failed"])
def test_a_finished_run_is_finished_whatever_config_is_asked(tmp_path, status):
    run = tmp_path / "r"
    started(run, status)
    state, summary = inspect_run(cfg(run, lr=5e-3), run)
    assert state == "finished" and summary["status"] == status
    assert rundir.describe_finished(run, summary).startswith(f"{run} holds a finished run (")


def test_start_state_resumes_the_same_config_and_needs_overwrite_for_anything_else(tmp_path):
    run = tmp_path / "r"
    assert rundir.start_state(cfg(run), run) == "new"
    c = started(run, "running")
    assert rundir.start_state(c, run, RESUMABLE) == "resume"
    assert rundir.start_state(c, run, RESUMABLE, overwrite=True) == "new"
    with pytest.raises(UserError, match=r"different config \(lr=0.001 there, 0.002 asked\)"):
        rundir.start_state(cfg(run, lr=2e-3), run, RESUMABLE)
    assert rundir.start_state(cfg(run, lr=2e-3), run, RESUMABLE, overwrite=True) == "new"
    write_json(run / "summary.json", {"status": "reached", "threshold": 0.95, "step_reached": 5})
    with pytest.raises(UserError, match="holds a finished run .*pass --overwrite to start it again"):
        rundir.start_state(c, run, RESUMABLE)
    (run / "config.yaml").write_text("model: [pythia-tiny\n")  # damaged
    with pytest.raises(UserError, match=r"config.yaml is damaged \(.*--overwrite"):
        rundir.start_state(c, run, RESUMABLE)
    assert rundir.start_state(c, run, RESUMABLE, overwrite=True) == "new"
    (run / "config.yaml").write_text("model: pythia-tiny\nencoder: siglip-tiny\n")  # another kind of run
    for overwrite in (False, True):  # never replaced: --overwrite would destroy that other run
        with pytest.raises(rundir.OtherKindError, match=r"holds another kind of run .*'encoder'.*another --out"):
            rundir.start_state(c, run, RESUMABLE, overwrite=overwrite)


def test_starting_a_new_run_clears_what_a_run_wrote_and_nothing_else(tmp_path):
    run = tmp_path / "r"
    started(run, "failed")
    for d in ("checkpoint", "checkpoint.old", "predictions"):
        (run / d).mkdir()
    (run / "metrics.parquet").write_bytes(b"x")
    (run / rundir.WORKER_PID_FILE).write_text("1\n")
    (run / "notes.txt").write_text("mine")
    c = cfg(run, lr=5e-3)
    start_run_dir(run, c, "new", extra_dirs=("predictions",))
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt", rundir.WORKER_PID_FILE]
    assert read_config(run, TrainConfig) == c


def test_starting_a_resumed_run_touches_nothing(tmp_path):
    run = tmp_path / "r"
    started(run, "running")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    start_run_dir(run, cfg(run, lr=5e-3), "resume")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_clear_run_on_a_missing_directory_is_a_no_op(tmp_path):
    clear_run(tmp_path / "none")
    assert not (tmp_path / "none").exists()


# === Checkpoints ===


class FakeModel:
    def __init__(self, tag: str):
        self.tag = tag

    def save_pretrained(self, path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.txt").write_text(self.tag)


def fake_backbone(tag: str) -> SimpleNamespace:
    return SimpleNamespace(model=FakeModel(tag), tokenizer=None)


def write_state(path: Path, step: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step}, path / "state.pt")


def test_save_checkpoint_swaps_in_a_complete_checkpoint(tmp_path):
    save_checkpoint(tmp_path, fake_backbone("first"), {"step": 5})
    save_checkpoint(tmp_path, fake_backbone("second"), {"step": 10})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert (tmp_path / "checkpoint" / "model.txt").read_text() == "second"
    path, state = latest_checkpoint(tmp_path)
    assert path == tmp_path / "checkpoint" and state == {"step": 10}
    assert hidden_files(tmp_path) == []


def test_latest_checkpoint_is_none_without_one_and_skips_incomplete_ones(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint.new").mkdir()  # killed before state.pt: incomplete
    (tmp_path / "checkpoint.new" / "model.txt").write_text("half")
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("newest", ["checkpoint", "checkpoint.new", "checkpoint.old"])
def test_latest_checkpoint_takes_the_most_advanced_complete_one(tmp_path, newest):
    """A swap killed half way leaves two complete checkpoints; the later step wins."""
    for i, name in enumerate(n for n in ("checkpoint", "checkpoint.new", "checkpoint.old") if n != newest):
        write_state(tmp_path / name, 5 + i)
    write_state(tmp_path / newest, 20)
    path, state = latest_checkpoint(tmp_path)
    assert path == tmp_path / newest and state["step"] == 20


def test_a_damaged_checkpoint_is_skipped_and_only_damaged_ones_are_a_user_error(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="only damaged checkpoints .*--overwrite"):
        latest_checkpoint(tmp_path)
    write_state(tmp_path / "checkpoint.old", 5)
    path, state = latest_checkpoint(tmp_path)
    assert path == tmp_path / "checkpoint.old" and state["step"] == 5


# === The record and the summary ===


def row(step: int, acc: float) -> dict:
    return {"step": step, "examples_seen": step * 4, "accuracy": acc}


def test_restore_record_drops_rows_written_after_the_checkpoint(tmp_path):
    rec = new_record()
    checkpointed = {**new_record(), "step": 5, "metrics": [row(0, 0.1), row(5, 0.5)],
                    "positions": [{"step": 0, "position": 0, "accuracy": 0.1, "count": 3}]}
    write_parquet(tmp_path / "metrics.parquet", [*checkpointed["metrics"], row(10, 0.9)],
                  ["step", "examples_seen", "accuracy"])
    restore_record(rec, checkpointed, tmp_path, ["step", "examples_seen", "accuracy"])
    assert rec["step"] == 5 and rec["resumed_at"] == [5]
    assert pd.read_parquet(tmp_path / "metrics.parquet").step.tolist() == [0, 5]
    assert pd.read_parquet(tmp_path / "positions.parquet").columns.tolist() == rundir.POSITION_COLUMNS


def test_run_summary_reports_the_first_evaluation_over_the_threshold(tmp_path):
    c = cfg(tmp_path, threshold=0.8)
    rec = {**new_record(), "metrics": [row(0, 0.1), row(5, 0.85), row(10, 0.7)], "train_steps": 10, "train_examples": 40,
           "train_seconds": 2.0}
    s = run_summary(rec, c, "reached", "", 3.0, kind="probe")
    assert (s["step_reached"], s["examples_to_threshold"], s["final_accuracy"], s["best_accuracy"]) == (5, 20, 0.7, 0.85)
    assert s["final_step"] == 10 and s["train_examples_per_s"] == 20.0 and s["eval_examples_per_s"] is None
    empty = run_summary(new_record(), c, "failed", "boom", 0.0, kind="vlm")
    assert empty["step_reached"] is None and empty["final_step"] == 0 and empty["message"] == "boom"
    assert (s["kind"], empty["kind"]) == ("probe", "vlm") and set(s) == set(schema.SUMMARY_FIELDS)
    with pytest.raises(ValueError, match="unknown run kind 'text'"):
        run_summary(rec, c, "reached", "", 3.0, kind="text")


# === One writer, and exact resume across thread counts ===


def _tiny_run(out, **kw):
    from probes.config import TrainConfig

    return TrainConfig(**{"model": "pythia-tiny", "n": 4, "lr": 1e-3, "max_steps": 12, "eval_every": 3,
                          "batch_size": 8, "train_size": 80, "eval_size": 12, "device": "cpu", "out": str(out),
                          **kw})


def _stop_after_first_checkpoint(monkeypatch):
    import probes.engine as engine_mod

    real = engine_mod.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_mod, "save_checkpoint", save_then_stop)


def test_a_run_holds_its_directory_lock_for_its_whole_life(tmp_path, monkeypatch):
    import probes.train as train_mod
    from probes import locks

    real, seen = train_mod.load_data, []

    def load_data(cfg):
        seen.append(locks.is_held(cfg.out))
        return real(cfg)

    monkeypatch.setattr(train_mod, "load_data", load_data)
    train_mod.train_run(_tiny_run(tmp_path / "r"), progress=False)
    assert seen == [True] and not locks.is_held(tmp_path / "r")
    assert locks.read_holder(tmp_path / "r") is None  # released cleanly


def test_a_resume_keeps_the_recorded_thread_count_unless_told_otherwise(tmp_path, monkeypatch):
    import pandas as pd
    import torch

    from probes.train import train_run

    before = torch.get_num_threads()
    whole = train_run(_tiny_run(tmp_path / "whole", threads=2), progress=False)
    assert whole["threads_used"] == [2] and whole["bit_reproducible"]
    cfg = _tiny_run(tmp_path / "parts")
    with monkeypatch.context() as m:
        _stop_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, progress=False, default_threads=2)  # a sweep worker's share: 2
    assert rundir.recorded_threads(tmp_path / "parts") == 2
    resumed = train_run(cfg, progress=False, default_threads=1)  # a rerun with another --jobs: the share is 1
    assert resumed["threads_used"] == [2, 2] and resumed["bit_reproducible"]
    drop = ["train_examples_per_s", "train_tokens_per_s", "eval_examples_per_s", "eval_seconds", "wall_seconds"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "whole" / "metrics.parquet").drop(columns=drop),
                                  pd.read_parquet(tmp_path / "parts" / "metrics.parquet").drop(columns=drop))
    assert torch.get_num_threads() == before


def test_a_resume_with_another_thread_count_is_marked_not_bit_reproducible(tmp_path, monkeypatch):
    from probes.train import train_run

    cfg = _tiny_run(tmp_path / "r", threads=2)
    with monkeypatch.context() as m:
        _stop_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, progress=False)
    summary = train_run(cfg.model_copy(update={"threads": 1}), progress=False)  # the flag says otherwise
    assert summary["threads_used"] == [2, 1] and summary["bit_reproducible"] is False
    assert rundir.recorded_threads(tmp_path / "r") == 2  # config.yaml keeps the first count
