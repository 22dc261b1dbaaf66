"""probes.train / `probes train`: one run, its run directory, early stop, exact resume, bad input."""

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cli import app
from probes import engine as engine_mod
from probes import train as train_mod
from probes.config import TrainConfig, load_config
from probes.errors import UserError
from probes.train import BatchOrder, format_lr, run_name, train_run

ROOT = Path(__file__).resolve().parents[1]
TIMING = ["train_examples_per_s", "train_tokens_per_s", "eval_examples_per_s", "eval_seconds", "wall_seconds"]


def tiny(tmp_path, **kw) -> TrainConfig:
    base = {"model": "pythia-tiny", "n": 6, "lr": 1e-3, "max_steps": 20, "eval_every": 5, "batch_size": 16,
            "train_size": 600, "eval_size": 60, "out": str(tmp_path / "run"), "device": "cpu"}
    return TrainConfig(**{**base, **kw})


def metrics(run) -> pd.DataFrame:
    return pd.read_parquet(Path(run) / "metrics.parquet")


def without_timing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in TIMING if c in frame])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A short pythia-tiny run that ends at max_steps."""
    cfg = tiny(tmp_path_factory.mktemp("finished"))
    return cfg, train_run(cfg, progress=False)


# === Names and config ===


def test_run_directory_names_come_from_the_grid_values():
    cfg = TrainConfig(model="pythia-160m", n=200, lr=1e-4, init="mean", seed=0)
    assert run_name(cfg) == "pythia-160m+suffix+n200+lr1e-4+mean+s0"
    assert [format_lr(x) for x in (1e-5, 5e-5, 2.5e-4, 1e-3)] == ["1e-5", "5e-5", "2.5e-4", "1e-3"]
    assert run_name(TrainConfig(model="hf:/data/my model", n=8)).startswith("hf-data_my_model+suffix+n8")


def test_train_config_survives_dump_validate_and_yaml(tmp_path):
    cfg = tiny(tmp_path, tokens={"eos_target": False})
    assert TrainConfig.model_validate(cfg.model_dump()) == cfg
    from probes.config import save_config

    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(TrainConfig, tmp_path / "c.yaml") == cfg


def test_evaluations_default_to_every_one_percent_of_max_steps():
    assert TrainConfig(max_steps=78_000).effective_eval_every == 780
    assert TrainConfig(max_steps=50).effective_eval_every == 1
    assert TrainConfig(max_steps=78_000, eval_every=100).effective_eval_every == 100


def test_batch_order_is_a_function_of_seed_and_step_and_covers_each_epoch():
    a, b = BatchOrder(100, 16, seed=3), BatchOrder(100, 16, seed=3)
    assert np.array_equal(a.rows(11), b.rows(11))  # no state: any step, any order
    assert not np.array_equal(a.rows(0), BatchOrder(100, 16, seed=4).rows(0))
    epoch = np.concatenate([a.rows(s) for s in range(25)])[:400]  # 4 epochs of 100
    for e in range(4):
        assert sorted(epoch[e * 100:(e + 1) * 100]) == list(range(100))


# === The run directory ===


def test_a_run_writes_the_spec_files(finished):
    cfg, summary = finished
    run = Path(cfg.out)
    assert {"config.yaml", "metrics.parquet", "positions.parquet", "summary.json", "checkpoint"} <= {
        p.name for p in run.iterdir()}
    saved = TrainConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    assert saved == cfg.model_copy(update={"threads": summary["threads"]})  # the count in effect is recorded
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (run / "checkpoint" / "config.json").exists() and (run / "checkpoint" / "state.pt").exists()


def test_metrics_have_one_row_per_evaluation_including_step_0(finished):
    cfg, _ = finished
    m = metrics(cfg.out)
    assert list(m.step) == [0, 5, 10, 15, 20]
    assert list(m.examples_seen) == [0, 80, 160, 240, 320]
    assert {"step", "examples_seen", "loss", "accuracy", "train_loss", "lr", *TIMING} <= set(m.columns)
    assert m.accuracy.between(0, 1).all() and np.isfinite(m.loss).all()
    assert m.train_loss.isna().tolist() == [True, False, False, False, False]  # nothing trained at step 0
    assert (m.train_examples_per_s[1:] > 0).all() and (m.eval_examples_per_s > 0).all()


def test_positions_have_one_row_per_evaluation_and_target_position(finished):
    cfg, _ = finished
    pos = pd.read_parquet(Path(cfg.out) / "positions.parquet")
    assert list(pos.columns) == ["step", "position", "accuracy", "count"]
    assert len(pos) == 5 * cfg.n
    assert (pos.groupby("step")["count"].sum() == cfg.eval_size).all()  # the WHOLE held-out set
    assert set(pos["count"]) == {cfg.eval_size // cfg.n}  # balanced targets
    m = metrics(cfg.out).set_index("step")
    weighted = (pos.accuracy * pos["count"]).groupby(pos.step).sum() / cfg.eval_size
    np.testing.assert_allclose(weighted.values, m.accuracy.values)


def test_summary_reports_the_outcome_and_throughput(finished):
    cfg, s = finished
    assert s["status"] == "not_reached" and s["step_reached"] is None and s["examples_to_threshold"] is None
    assert s["threshold"] == 0.95 and s["max_steps"] == 20 and s["final_step"] == 20 and s["kind"] == "probe"
    last = metrics(cfg.out).iloc[-1]
    assert s["final_accuracy"] == pytest.approx(last.accuracy) and last.step == s["final_step"]
    assert s["best_accuracy"] == pytest.approx(metrics(cfg.out).accuracy.max()) and s["wall_seconds"] > 0
    assert s["train_examples_per_s"] > 0 and s["eval_examples_per_s"] > 0 and s["device"] == "cpu"


def test_the_final_checkpoint_loads_with_from_pretrained(finished):
    from transformers import AutoModelForCausalLM

    cfg, _ = finished
    model = AutoModelForCausalLM.from_pretrained(Path(cfg.out) / "checkpoint")
    assert model.get_input_embeddings().num_embeddings == 1024 + cfg.n + 2


def test_training_stops_at_the_first_evaluation_over_the_threshold(tmp_path):
    cfg = tiny(tmp_path, threshold=0.3, max_steps=400, eval_every=10)
    s = train_run(cfg, progress=False)
    m = metrics(cfg.out)
    first = int(m.step[m.accuracy >= 0.3].iloc[0])
    assert s["status"] == "reached" and s["step_reached"] == first == m.step.iloc[-1]
    assert s["examples_to_threshold"] == first * cfg.batch_size
    assert (m.accuracy.iloc[:-1] < 0.3).all()


def test_evaluation_and_training_compute_logits_only_at_the_scored_slots(tmp_path, monkeypatch):
    seen = []
    real = train_mod.slot_logits

    def spy(model, input_ids, slots):
        seen.append(list(slots))
        head = model.get_output_embeddings()
        handle = head.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[1:-1])))
        try:
            return real(model, input_ids, slots)
        finally:
            handle.remove()

    monkeypatch.setattr(train_mod, "slot_logits", spy)
    train_run(tiny(tmp_path, max_steps=2, eval_every=1), progress=False)
    assert set(map(tuple, seen)) == {(7, 8), (2,)}  # suffix n=6: q at 7 predicts the answer, answer at 8 eos


def test_answer_only_scores_the_answer_slot_alone(tmp_path):
    cfg = tiny(tmp_path, max_steps=5, tokens={"eos_target": False})
    train_run(cfg, progress=False)
    with_eos = tiny(tmp_path / "b", max_steps=5)
    train_run(with_eos, progress=False)
    assert metrics(cfg.out).loss.iloc[0] != metrics(with_eos.out).loss.iloc[0]


def test_a_dataset_directory_can_feed_the_run(tmp_path, cli_runner):
    r = cli_runner.invoke(app, ["generate", "--n", "6", "--train-size", "300", "--eval-size", "60",
                                "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    cfg = tiny(tmp_path, data_dir=str(tmp_path / "d"), max_steps=5)
    s = train_run(cfg, progress=False)
    assert s["train_size"] == 300 and s["eval_size"] == 60


def test_mamba_runs_record_their_scan_backend(tmp_path):
    s = train_run(tiny(tmp_path, model="mamba-tiny", max_steps=2, eval_every=2), progress=False)
    assert s["status"] == "not_reached" and s["scan_backend"] == "torch"  # the CPU default


def test_a_scan_backend_this_machine_cannot_run_is_a_one_line_error(tmp_path, cli_runner, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = cli_runner.invoke(app, ["train", "--model", "mamba-tiny", "--n", "4", "--train-size", "40",
                                "--eval-size", "8", "--max-steps", "2", "--scan-backend", "triton",
                                "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "scan_backend 'triton'" in r.output and "CUDA" in r.output, r.output
    assert r.output.strip().count("\n") == 0


# === Nothing is lost ===


def test_a_nan_loss_stops_the_run_as_failed(tmp_path, monkeypatch):
    real = train_mod.compute_loss
    monkeypatch.setattr(train_mod, "compute_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    cfg = tiny(tmp_path)
    s = train_run(cfg, progress=False)
    assert s["status"] == "failed" and "nan" in s["message"] and "lower lr" in s["message"]
    assert json.loads((Path(cfg.out) / "summary.json").read_text())["status"] == "failed"


def test_a_finished_run_is_never_overwritten_silently(finished):
    cfg, _ = finished
    before = (Path(cfg.out) / "metrics.parquet").read_bytes()
    with pytest.raises(UserError, match="holds a finished run .*pass --overwrite"):
        train_run(cfg, progress=False)
    assert (Path(cfg.out) / "metrics.parquet").read_bytes() == before


def test_overwrite_starts_a_finished_run_again(tmp_path):
    cfg = tiny(tmp_path, max_steps=5)
    first = train_run(cfg, progress=False)
    before = without_timing(metrics(cfg.out))
    again = train_run(cfg, overwrite=True, progress=False)
    assert again["status"] == first["status"] and again["resumed_at"] == []
    pd.testing.assert_frame_equal(before, without_timing(metrics(cfg.out)))  # same seed, same run


def test_resuming_with_a_different_config_is_refused(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    _interrupt_after_checkpoints(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, progress=False)
    with pytest.raises(UserError, match=r"different config \(lr=0.001 there, 0.002 asked\)"):
        train_run(cfg.model_copy(update={"lr": 2e-3}), progress=False)


def _interrupt_after_checkpoints(monkeypatch, k: int) -> None:
    real, calls = engine_mod.save_checkpoint, []

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == k:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine_mod, "save_checkpoint", save_then_stop)


@pytest.mark.parametrize("model", ["pythia-tiny", "mamba-tiny"])
def test_an_interrupted_run_resumes_to_the_same_metrics(tmp_path, monkeypatch, model):
    kw = {"model": model, "max_steps": 12 if model == "mamba-tiny" else 20,
          "eval_every": 3 if model == "mamba-tiny" else 5}
    whole = tiny(tmp_path / "whole", **kw)
    train_run(whole, progress=False)
    parts = tiny(tmp_path / "parts", **kw)
    with monkeypatch.context() as m:
        _interrupt_after_checkpoints(m, 2)
        with pytest.raises(KeyboardInterrupt):
            train_run(parts, progress=False)
    assert json.loads((Path(parts.out) / "summary.json").read_text())["status"] == "running"
    s = train_run(parts, progress=False)
    assert s["resumed_at"] == [2 * kw["eval_every"]]
    pd.testing.assert_frame_equal(without_timing(metrics(whole.out)), without_timing(metrics(parts.out)))
    pd.testing.assert_frame_equal(pd.read_parquet(Path(whole.out) / "positions.parquet"),
                                  pd.read_parquet(Path(parts.out) / "positions.parquet"))


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "train", "--model", "pythia-tiny", "--n", "6", "--lr", "1e-3",
            "--max-steps", "150", "--eval-every", "10", "--batch-size", "16", "--train-size", "600",
            "--eval-size", "60", "--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run of _train_cmd from start to end in one process, to compare interrupted ones with."""
    run = tmp_path_factory.mktemp("uninterrupted") / "whole"
    whole = subprocess.run(_train_cmd(run), check=False, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    return run


def assert_same_run(run: Path, whole: Path) -> None:
    pd.testing.assert_frame_equal(without_timing(metrics(whole)), without_timing(metrics(run)))
    pd.testing.assert_frame_equal(pd.read_parquet(whole / "positions.parquet"), pd.read_parquet(run / "positions.parquet"))
    final = json.loads((run / "summary.json").read_text())["final_accuracy"]
    assert json.loads((whole / "summary.json").read_text())["final_accuracy"] == final


def test_a_run_killed_with_sigkill_resumes_and_ends_like_an_uninterrupted_one(tmp_path, uninterrupted, kill_after_checkpoint):
    run = tmp_path / "killed"
    kill_after_checkpoint(_train_cmd(run), run)
    killed_at = pd.read_parquet(run / "metrics.parquet").step.max()
    assert killed_at < 150 and json.loads((run / "summary.json").read_text())["status"] == "running"

    again = subprocess.run(_train_cmd(run), check=False, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_at"] and summary["resumed_at"][0] >= 30
    assert_same_run(run, uninterrupted)


def test_sigterm_checkpoints_the_step_in_flight_and_the_resumed_run_ends_like_an_uninterrupted_one(
        tmp_path, uninterrupted):
    run = tmp_path / "stopped"
    proc = subprocess.Popen(_train_cmd(run, "--checkpoint-every", "1000"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(Exception):  # not written yet, or being replaced: look again
            if pd.read_parquet(run / "metrics.parquet").step.max() >= 30:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    stopped_at = state["step"]  # no regular checkpoint before step 1000: this one is SIGTERM's
    assert 30 <= stopped_at < 150 and f"stopped by SIGTERM at step {stopped_at}" in out
    assert state["open_interval"]["steps"] == stopped_at % 10  # steps since the last evaluation
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "running" and "the same command resumes it" in summary["message"]

    again = subprocess.run(_train_cmd(run, "--checkpoint-every", "1000"), check=False, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "summary.json").read_text())["resumed_at"] == [stopped_at]
    assert_same_run(run, uninterrupted)  # train_loss too: the open interval went on where it stopped


# === CPU threads ===


@pytest.fixture
def two_torch_threads(monkeypatch):
    """torch at 2 threads and no OMP_NUM_THREADS, as a plain `probes train` on a 2-core machine; a
    recorder of torch's thread count at every training step."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []
    real = train_mod.compute_loss
    monkeypatch.setattr(train_mod, "compute_loss", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    yield seen
    torch.set_num_threads(before)


def test_auto_threads_is_one_for_tiny_models_on_cpu_unless_omp_num_threads_is_set():
    resolve = train_mod.resolve_threads
    assert resolve("auto", "cpu", ["pythia-tiny"], environ={}) == 1
    assert resolve("auto", "cpu", ["mamba-tiny", "siglip-tiny"], environ={}) == 1
    assert resolve("auto", "cpu", ["pythia-160m"], environ={}) is None  # its matmuls use torch's threads
    assert resolve("auto", "cpu", ["pythia-tiny", "siglip-so400m"], environ={}) is None
    tiny = ["pythia-tiny"]
    assert resolve("auto", "cpu", tiny, environ={"OMP_NUM_THREADS": "4"}) is None  # the user's choice stands
    assert resolve("auto", "cuda:0", tiny, environ={}) is None  # a GPU run: torch's default
    assert resolve(0, "cpu", tiny, environ={}) is None and resolve(3, "cpu", tiny, environ={"OMP_NUM_THREADS": "1"}) == 3
    with_threads = train_mod.with_threads  # a sweep worker's share fills in "auto" only
    assert with_threads(TrainConfig(), 2).threads == 2 and with_threads(TrainConfig(threads=3), 2).threads == 3
    assert with_threads(TrainConfig(), None).threads == "auto"


def test_probes_train_uses_one_thread_on_cpu_and_gives_the_same_metrics_twice(tmp_path, cli_runner, two_torch_threads):
    for name in ("a", "b"):
        r = cli_runner.invoke(app, ["train", *SMALL, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / name / "summary.json").read_text())["threads"] == 1
    assert two_torch_threads and set(two_torch_threads) == {1}
    assert torch.get_num_threads() == 2  # restored after the run
    pd.testing.assert_frame_equal(without_timing(metrics(tmp_path / "a")), without_timing(metrics(tmp_path / "b")))
    assert load_config(TrainConfig, tmp_path / "a" / "config.yaml").threads == 1  # the resolved count is recorded


def test_threads_follow_omp_num_threads_or_an_explicit_setting(tmp_path, cli_runner, monkeypatch, two_torch_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    s = train_run(tiny(tmp_path, max_steps=2, eval_every=2), progress=False)
    assert s["threads"] == 2 and set(two_torch_threads) == {2}
    two_torch_threads.clear()
    r = cli_runner.invoke(app, ["train", *SMALL, "--threads", "1", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert set(two_torch_threads) == {1} and torch.get_num_threads() == 2
    assert load_config(TrainConfig, tmp_path / "r" / "config.yaml").threads == 1
    r = cli_runner.invoke(app, ["train", *SMALL, "--threads", "many", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "threads must be auto, 0 (torch's default) or a thread count, got 'many'" in r.output


def test_threads_may_change_when_a_run_resumes(tmp_path):
    cfg = tiny(tmp_path, threads=1)
    train_mod.start_run_dir(Path(cfg.out), cfg, "new")
    assert train_mod.inspect_run(cfg.model_copy(update={"threads": 2}))[0] == "resume"


def test_the_readme_names_every_setting_that_may_change_on_resume():
    resume = (Path(__file__).parents[1] / "README.md").read_text().split("**Resume.**")[1].split("\n\n")[0]
    listed = resume.split("Where and how a run executes (")[1].split(")")[0]
    assert sorted(" ".join(listed.replace("`", "").split()).split(", ")) == sorted(train_mod.RESUMABLE_CHANGES)


# === `probes train` ===


SMALL = ["--model", "pythia-tiny", "--n", "6", "--max-steps", "4", "--eval-every", "2", "--train-size", "120",
         "--eval-size", "30", "--batch-size", "8", "--device", "cpu", "--no-progress"]


def test_probes_train_prints_one_result_line_and_a_config_file_combines_with_flags(tmp_path, cli_runner):
    (tmp_path / "c.yaml").write_text("model: mamba-tiny\nn: 9\nlr: 0.002\nlayout: prefix\n")
    r = cli_runner.invoke(app, ["train", "--config", str(tmp_path / "c.yaml"), *SMALL, "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "did not reach 0.95 in 4 steps" in r.stdout
    cfg = load_config(TrainConfig, tmp_path / "r" / "config.yaml")
    assert (cfg.model, cfg.n, cfg.lr, cfg.layout) == ("pythia-tiny", 6, 0.002, "prefix")  # flags win


def test_probes_train_answer_only_and_grad_clip_flags_reach_the_config(tmp_path, cli_runner):
    r = cli_runner.invoke(app, ["train", *SMALL, "--answer-only", "--grad-clip", "0", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    cfg = load_config(TrainConfig, tmp_path / "r" / "config.yaml")
    assert cfg.tokens.eos_target is False and cfg.grad_clip is None


def test_probes_train_on_a_finished_run_exits_non_zero_unless_overwrite(tmp_path, cli_runner):
    args = ["train", *SMALL, "--out", str(tmp_path / "r")]
    assert cli_runner.invoke(app, args).exit_code == 0
    r = cli_runner.invoke(app, args)
    assert r.exit_code == 2 and "finished run" in r.output and len(r.output.strip().splitlines()) == 1
    assert cli_runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_probes_train_exits_1_when_the_run_fails(tmp_path, cli_runner, monkeypatch):
    real = train_mod.compute_loss
    monkeypatch.setattr(train_mod, "compute_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    r = cli_runner.invoke(app, ["train", *SMALL, "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "failed: training loss became" in r.stdout


def _damage(path: Path, what: str) -> None:
    if what == "config":
        (path / "config.yaml").write_text("model: [unclosed\n")
    elif what == "summary":
        (path / "summary.json").write_text("{not json")
    else:
        summary = json.loads((path / "summary.json").read_text())
        (path / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
        (path / "checkpoint" / "state.pt").write_bytes(b"garbage")


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt-9"], "unknown model 'gpt-9' (known: pythia-tiny, pythia-14m"),
    (["--lr", "-1e-3"], "lr: Input should be greater than 0"),
    (["--lr", "inf"], "lr: Input should be a finite number"),
    (["--init", "zeros"], "init: Input should be 'default', 'mean' or 'normal'"),
    (["--layout", "middle"], "layout: Input should be 'suffix' or 'prefix'"),
    (["--threshold", "1.5"], "threshold: Input should be less than or equal to 1"),
    (["--device", "tpu"], "device: String should match pattern"),
    (["--data-dir", "{tmp}/missing"], "no dataset at"),
    (["--model", "hf:{tmp}/no-such-model"], "no model there"),
])
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, cli_runner, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = cli_runner.invoke(app, ["train", *SMALL, "--out", str(tmp_path / "r"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing written for a run that cannot start


def test_a_corrupt_dataset_is_one_line_and_a_non_zero_exit(tmp_path, cli_runner):
    assert cli_runner.invoke(app, ["generate", "--n", "6", "--train-size", "60", "--eval-size", "30",
                                   "--out", str(tmp_path / "d")]).exit_code == 0
    (tmp_path / "d" / "heldout.npz").write_bytes(b"not a zip")
    r = cli_runner.invoke(app, ["train", *SMALL, "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "missing or damaged" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_directory_that_is_not_a_run_is_refused(tmp_path, cli_runner):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    r = cli_runner.invoke(app, ["train", *SMALL, "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "holds no run" in r.output
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("what, message", [("config", "config.yaml is damaged"),
                                           ("summary", "summary.json is damaged"),
                                           ("checkpoint", "only damaged checkpoints")])
def test_a_corrupt_run_directory_is_one_line_and_a_non_zero_exit(tmp_path, cli_runner, what, message):
    args = ["train", *SMALL, "--out", str(tmp_path / "r")]
    assert cli_runner.invoke(app, args).exit_code == 0
    _damage(tmp_path / "r", what)
    r = cli_runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "--overwrite" in r.output and len(r.output.strip().splitlines()) == 1
    assert cli_runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


# === Optimizer, schedules and seeds (issue 16) ===

EXPECTED = ROOT / "tests" / "data" / "pre_schedules_metrics.json"


@pytest.mark.parametrize("case", ["pythia-seed0-warmup", "pythia-seed1-data0", "mamba-seed0"])
def test_old_configs_train_to_the_metrics_of_the_code_before_schedules(tmp_path, case):
    """tests/data/pre_schedules_metrics.json: these runs trained by the code before schedules, split
    seeds and decay groups (one thread, CPU). seed 1 with data_seed 0 is what an old config.yaml holds."""
    expected = json.loads(EXPECTED.read_text())[case]
    base = {"n": 6, "lr": 1e-3, "max_steps": 20, "eval_every": 5, "batch_size": 16, "train_size": 600,
            "eval_size": 60, "out": str(tmp_path / "run"), "device": "cpu", "threads": 1}
    train_run(TrainConfig(**{**base, **expected["config"]}), progress=False)
    got = metrics(tmp_path / "run")
    want = expected["metrics"]
    assert got.step.tolist() == want["step"] and got.lr.tolist() == want["lr"]
    np.testing.assert_allclose(got.loss, want["loss"], rtol=1e-5)
    np.testing.assert_allclose(got.train_loss, want["train_loss"], rtol=1e-5)  # NaN at step 0 on both
    np.testing.assert_allclose(got.accuracy, want["accuracy"], atol=1e-12)


def test_an_old_config_yaml_without_the_new_keys_loads_with_its_seeds(tmp_path):
    old = tiny(tmp_path, seed=1).model_dump(mode="json")
    for key in ("init_seed", "order_seed", "lr_schedule", "warmup_ratio", "min_lr_ratio"):
        old.pop(key)
    old["data_seed"] = 0  # the old default, always written out
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = load_config(TrainConfig, tmp_path / "config.yaml")
    assert (cfg.init_seed, cfg.order_seed, cfg.data_seed) == (1, 1, 0)
    assert (cfg.lr_schedule, cfg.warmup_steps) == ("constant", 0)


def test_seed_is_the_shorthand_and_each_seed_moves_only_its_part(tmp_path):
    cfg = tiny(tmp_path, seed=4)
    assert (cfg.init_seed, cfg.order_seed, cfg.data_seed) == (4, 4, 4)
    device = torch.device("cpu")

    def weights(c):
        return train_mod.build_model(c, device, None).model.get_input_embeddings().weight

    other_init = tiny(tmp_path, seed=4, init_seed=5)
    assert not torch.equal(weights(cfg), weights(other_init))
    assert torch.equal(weights(cfg), weights(tiny(tmp_path, seed=4, order_seed=5, data_seed=5)))
    data = train_mod.load_data(cfg)
    assert np.array_equal(data.train.context, train_mod.load_data(other_init).train.context)
    assert not np.array_equal(data.train.context, train_mod.load_data(tiny(tmp_path, seed=4, data_seed=5)).train.context)


def test_run_names_get_a_seed_suffix_only_where_a_seed_differs_from_seed():
    assert run_name(TrainConfig(seed=2)).endswith("+s2")
    assert run_name(TrainConfig(seed=2, order_seed=3)).endswith("+s2+o3")
    assert run_name(TrainConfig(seed=0, init_seed=1, data_seed=2)).endswith("+s0+i1+d2")


@pytest.mark.parametrize("model", ["pythia-tiny", "mamba-tiny"])
def test_biases_and_norm_weights_get_no_weight_decay(model):
    bb = train_mod.build_backbone(model, 0, "cpu")
    opt = train_mod.make_optimizer(bb.model, TrainConfig(model=model, weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    names = {id(p): n for n, p in bb.model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert no_decay_names and all(n.endswith("bias") or "norm" in n.lower() for n in no_decay_names)
    assert not any(n.endswith("bias") or "norm" in n.lower() for n in (names[id(p)] for p in decay["params"]))
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(bb.model.parameters()))
    assert not opt.defaults.get("fused")  # fused AdamW on CUDA only


def test_the_loop_trains_through_train_step(tmp_path, monkeypatch):
    calls = []
    real = train_mod.train_step
    monkeypatch.setattr(train_mod, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    train_run(tiny(tmp_path, max_steps=7, eval_every=7), progress=False)
    assert len(calls) == 7


def test_a_linear_schedule_run_logs_its_lr_and_records_the_schedule(tmp_path):
    cfg = tiny(tmp_path, lr_schedule="linear", warmup_ratio=0.2, weight_decay=0.1, max_steps=20, eval_every=5)
    s = train_run(cfg, progress=False)
    lrs = metrics(cfg.out).set_index("step").lr
    # warmup 4 updates (k / 4), then linear to 0 at update 20; row `step` shows update step - 1
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(1e-3 * 16 / 16) and lrs[10] == pytest.approx(1e-3 * 11 / 16)
    assert lrs[20] == pytest.approx(1e-3 * 1 / 16)
    assert {k: s[k] for k in ("lr_schedule", "warmup_steps", "warmup_ratio", "min_lr_ratio", "weight_decay")} == {
        "lr_schedule": "linear", "warmup_steps": 4, "warmup_ratio": 0.2, "min_lr_ratio": 0.0, "weight_decay": 0.1}
    assert (s["init_seed"], s["order_seed"], s["data_seed"]) == (0, 0, 0)


def test_a_scheduled_run_resumes_exactly_with_its_scheduler_state(tmp_path, monkeypatch):
    kw = {"lr_schedule": "cosine", "warmup": 3, "min_lr_ratio": 0.1, "weight_decay": 0.05}
    whole = tiny(tmp_path / "whole", **kw)
    train_run(whole, progress=False)
    parts = tiny(tmp_path / "parts", **kw)
    with monkeypatch.context() as m:
        _interrupt_after_checkpoints(m, 2)
        with pytest.raises(KeyboardInterrupt):
            train_run(parts, progress=False)
    state = torch.load(Path(parts.out) / "checkpoint" / "state.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 10
    train_run(parts, progress=False)
    pd.testing.assert_frame_equal(without_timing(metrics(whole.out)), without_timing(metrics(parts.out)))


def test_a_checkpoint_from_before_the_decay_groups_resumes_exactly(tmp_path, monkeypatch):
    """Old checkpoints hold one AdamW parameter group (model.parameters() order) and no scheduler."""
    kw = {"warmup": 4}
    whole = tiny(tmp_path / "whole", **kw)
    train_run(whole, progress=False)
    parts = tiny(tmp_path / "parts", **kw)
    real = engine_mod.save_checkpoint

    def save_old_style(run, bb, state):
        opt = state["optimizer"]
        ids = [i for g in opt["param_groups"] for i in g["params"]]
        by_param = dict(zip((id(p) for g in _groups_of(bb.model) for p in g), ids))
        order = [by_param[id(p)] for p in bb.model.parameters()]
        old_state = {new: opt["state"][i] for new, i in enumerate(order) if i in opt["state"]}
        group = {k: v for k, v in opt["param_groups"][0].items() if k not in ("params", "initial_lr")}
        old = {"state": old_state, "param_groups": [{**group, "params": list(range(len(order)))}]}
        real(run, bb, {k: v for k, v in {**state, "optimizer": old}.items() if k != "scheduler"})
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(engine_mod, "save_checkpoint", save_old_style)
        with pytest.raises(KeyboardInterrupt):
            train_run(parts, progress=False)
    assert "scheduler" not in torch.load(Path(parts.out) / "checkpoint" / "state.pt", weights_only=True)
    train_run(parts, progress=False)
    pd.testing.assert_frame_equal(without_timing(metrics(whole.out)), without_timing(metrics(parts.out)))


def _groups_of(model):
    return train_mod.decay_groups(model)


def test_schedule_flags_reach_the_config_and_bad_ones_are_one_line(tmp_path, cli_runner):
    r = cli_runner.invoke(app, ["train", *SMALL, "--out", str(tmp_path / "r"), "--lr-schedule", "linear",
                                "--warmup-ratio", "0.1", "--min-lr-ratio", "0.05", "--order-seed", "3"])
    assert r.exit_code == 0, r.output
    cfg = load_config(TrainConfig, tmp_path / "r" / "config.yaml")
    assert (cfg.lr_schedule, cfg.warmup_ratio, cfg.min_lr_ratio, cfg.order_seed, cfg.init_seed) == (
        "linear", 0.1, 0.05, 3, 0)
    for args, message in ((["--lr-schedule", "step"], ("lr_schedule: Input should be 'constant', 'linear' or "
                                                       "'cosine'")),
                          (["--warmup-ratio", "1"], "warmup_ratio: Input should be less than 1")):
        r = cli_runner.invoke(app, ["train", *SMALL, "--out", str(tmp_path / "bad"), *args])
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1
