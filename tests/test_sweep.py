"""probes.sweep / `probes sweep`: grid expansion, skip finished, resume unfinished, several at once."""

import json
from pathlib import Path

import pytest

from cli import app
from probes.config import SweepConfig, TrainConfig, load_config
from probes.errors import UserError
from probes.sweep import BACKENDS, expand_grid, plan, run_sweep

ROOT = Path(__file__).resolve().parents[1]
FAST = {"max_steps": 4, "eval_every": 2, "batch_size": 8, "train_size": 120, "eval_size": 30, "device": "cpu"}


def small_sweep(tmp_path, **kw) -> SweepConfig:
    base = {"model": ["pythia-tiny"], "n": [6], "lr": [1e-3], "init": ["default", "mean"], "seed": [0, 1],
            "train": FAST, "out": str(tmp_path / "sweep")}
    return SweepConfig(**{**base, **kw})


def test_the_default_grid_is_the_papers_3_lr_by_3_init(tmp_path):
    cfgs = expand_grid(SweepConfig(out=tmp_path))
    assert len(cfgs) == 9
    assert {(c.lr, c.init) for c in cfgs} == {(lr, i) for lr in (1e-5, 5e-5, 1e-4) for i in ("default", "mean", "normal")}
    assert all(isinstance(c, TrainConfig) and c.out.parent == tmp_path for c in cfgs)
    assert cfgs[0].out.name == "pythia-160m+suffix+n50+lr1e-5+default+s0"


def test_the_grid_is_the_product_of_its_keys_with_shared_settings(tmp_path):
    sweep = SweepConfig(model=["pythia-tiny", "mamba-tiny"], n=[8, 16], layout=["suffix", "prefix"], lr=1e-3,
                        init="mean", seed=[0, 1, 2], train={"max_steps": 10}, out=tmp_path)
    cfgs = expand_grid(sweep)
    assert len(cfgs) == 2 * 2 * 2 * 1 * 1 * 3 and len({c.out for c in cfgs}) == len(cfgs)
    assert all(c.max_steps == 10 and c.lr == 1e-3 and c.init == "mean" for c in cfgs)


@pytest.mark.parametrize("data, message", [
    ({"lr": [1e-4, 1e-4]}, "lr lists a value twice"),
    ({"model": ["pythia-tiny", "bert"]}, "unknown model 'bert'"),
    ({"init": ["default", "zeros"]}, "init.1: Input should be 'default', 'mean' or 'normal'"),
    ({"lr": [1e-4, 0]}, "lr: Input should be greater than 0"),
    ({"train": {"lr": 1e-3}}, "train.lr is set by the grid"),
    ({"train": {"max_step": 10}}, "unknown config key 'train.max_step'"),
    ({"models": ["pythia-tiny"]}, "unknown config key 'models'"),
])
def test_bad_sweep_configs_are_one_line_errors(data, message):
    with pytest.raises(UserError) as err:
        load_config(SweepConfig, None, data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_example_configs_are_valid():
    ci = load_config(SweepConfig, ROOT / "configs" / "ci-tiny.yaml")
    assert len(expand_grid(ci)) == 4
    paper = expand_grid(load_config(SweepConfig, ROOT / "configs" / "paper-probe.yaml"))
    assert len(paper) == 2 * 3 * 2 * 9
    assert {c.model for c in paper} == {"hf:EleutherAI/pythia-1.4b", "hf:state-spaces/mamba-1.4b-hf"}
    assert {c.n for c in paper} == {50, 100, 200} and {c.lr for c in paper} == {1e-5, 5e-5, 1e-4}
    assert {(c.max_steps, c.batch_size, c.train_size, c.eval_size, c.effective_eval_every, c.threshold)
            for c in paper} == {(78_000, 64, 1_000_000, 100_000, 780, 0.95)}
    assert {(c.lr_schedule, c.warmup_steps, c.weight_decay) for c in paper} == {("linear", 7_800, 0.1)}
    small = expand_grid(load_config(SweepConfig, ROOT / "configs" / "paper-probe-small.yaml"))
    assert {c.model_dump_json(exclude={"out"}) for c in small} <= {c.model_dump_json(exclude={"out"}) for c in paper}
    load_config(TrainConfig, ROOT / "configs" / "train-tiny.yaml")


def test_the_local_backend_is_registered_and_unknown_backends_are_refused(tmp_path):
    assert "local" in BACKENDS
    with pytest.raises(UserError, match=r"unknown sweep backend 'slurm' \(known: local"):
        run_sweep(small_sweep(tmp_path), backend="slurm", progress=False)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """4 tiny runs, 2 at a time, each in its own process."""
    sweep = small_sweep(tmp_path_factory.mktemp("s"))
    return sweep, run_sweep(sweep, jobs=2, progress=False, threads=1)


def test_a_sweep_writes_one_finished_run_directory_per_grid_point(swept):
    sweep, results = swept
    assert [r["run"] for r in results] == [c.out.name for c in expand_grid(sweep)]
    assert {r["status"] for r in results} == {"not_reached"} and {r["action"] for r in results} == {"new"}
    for r in results:
        run = Path(r["dir"])
        assert {"config.yaml", "metrics.parquet", "positions.parquet", "summary.json", "checkpoint"} <= {
            p.name for p in run.iterdir()}
    assert json.loads((Path(sweep.out) / "sweep.json").read_text()) == results


def test_a_sweep_run_equals_the_same_run_trained_alone(swept, tmp_path):
    import pandas as pd

    from probes.train import train_run

    sweep, results = swept
    cfg = expand_grid(sweep)[0]
    train_run(cfg.model_copy(update={"out": tmp_path / "alone"}), progress=False)
    a = pd.read_parquet(Path(results[0]["dir"]) / "metrics.parquet")[["step", "loss", "accuracy"]]
    b = pd.read_parquet(tmp_path / "alone" / "metrics.parquet")[["step", "loss", "accuracy"]]
    pd.testing.assert_frame_equal(a, b, rtol=1e-4)  # thread counts differ: equal up to rounding


def test_running_a_sweep_again_skips_its_finished_runs(swept):
    sweep, first = swept
    again = run_sweep(sweep, jobs=2, progress=False)
    assert [r["action"] for r in again] == ["skipped"] * 4
    assert [r["status"] for r in again] == [r["status"] for r in first]


def test_an_unfinished_run_in_a_sweep_is_resumed(swept):
    sweep, _ = swept
    run = Path(expand_grid(sweep)[1].out)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))  # as if killed at the end
    todo, skipped = plan(expand_grid(sweep))
    assert [(j.dir, j.action) for j in todo] == [(run, "resume")] and len(skipped) == 3
    results = run_sweep(sweep, progress=False, threads=1)
    assert results[1]["action"] == "resume" and results[1]["status"] == "not_reached"
    assert json.loads((run / "summary.json").read_text())["final_accuracy"] == summary["final_accuracy"]


def test_a_failing_run_is_reported_and_the_sweep_carries_on(tmp_path):
    sweep = small_sweep(tmp_path, model=["pythia-tiny", f"hf:{tmp_path}/no-model"], init=["default"], seed=[0])
    results = run_sweep(sweep, jobs=2, progress=False, threads=1)
    ok, bad = results
    assert ok["status"] == "not_reached"
    assert bad["status"] == "failed" and "train.log" in bad["message"]
    assert "no model there" in (Path(bad["dir"]) / "train.log").read_text()


def test_probes_sweep_combines_a_config_file_with_flags(tmp_path, cli_runner):
    (tmp_path / "s.yaml").write_text("model: pythia-tiny\nn: 6\nlr: [1.0e-3, 2.0e-3]\ninit: mean\n"
                                     "train: {max_steps: 100}\n")
    r = cli_runner.invoke(app, ["sweep", "--config", str(tmp_path / "s.yaml"), "--lr", "5e-4", "--seed", "0",
                                "--seed", "1", "--set", "max_steps=4", "--set", "eval_every=2",
                                *[f"--set={k}={v}" for k, v in FAST.items() if k not in ("max_steps", "eval_every")],
                                "--out", str(tmp_path / "o"), "--jobs", "2", "--threads", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "2 runs: 0 reached, 2 not_reached, 0 failed" in r.stdout
    names = sorted(p.name for p in (tmp_path / "o").iterdir() if p.is_dir())
    assert names == ["pythia-tiny+suffix+n6+lr5e-4+mean+s0", "pythia-tiny+suffix+n6+lr5e-4+mean+s1"]
    cfg = load_config(TrainConfig, tmp_path / "o" / names[0] / "config.yaml")
    assert cfg.max_steps == 4


def test_probes_sweep_dry_run_lists_runs_and_what_would_happen(swept, cli_runner):
    sweep, _ = swept
    r = cli_runner.invoke(app, ["sweep", "--model", "pythia-tiny", "--n", "6", "--lr", "1e-3", "--init", "default",
                                "--init", "mean", "--seed", "0", "--seed", "1", "--seed", "2", "--out", str(sweep.out),
                                *[f"--set={k}={v}" for k, v in FAST.items()], "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert sum(line.endswith("skip (not_reached)") for line in lines) == 4
    assert sum(line.endswith("  new") for line in lines) == 2


def test_probes_sweep_bad_input_is_one_line(tmp_path, cli_runner):
    r = cli_runner.invoke(app, ["sweep", "--model", "gpt-9", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown model 'gpt-9'" in r.output and len(r.output.strip().splitlines()) == 1
    r = cli_runner.invoke(app, ["sweep", "--set", "max_steps", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "is not KEY=VALUE" in r.output


# === Seeds as grid keys, expected cost (issue 16) ===


def test_old_grids_keep_their_run_names_and_seed_keys_vary_with_a_suffix(tmp_path):
    old = [c.out.name for c in expand_grid(small_sweep(tmp_path))]
    assert old == [f"pythia-tiny+suffix+n6+lr1e-3+{i}+s{s}" for i in ("default", "mean") for s in (0, 1)]
    cfgs = expand_grid(small_sweep(tmp_path, init=["default"], seed=[0], order_seed=[0, 1, 2]))
    assert [c.out.name for c in cfgs] == ["pythia-tiny+suffix+n6+lr1e-3+default+s0",
                                          "pythia-tiny+suffix+n6+lr1e-3+default+s0+o1",
                                          "pythia-tiny+suffix+n6+lr1e-3+default+s0+o2"]
    assert [(c.init_seed, c.order_seed, c.data_seed) for c in cfgs] == [(0, 0, 0), (0, 1, 0), (0, 2, 0)]
    fixed_data = expand_grid(small_sweep(tmp_path, init=["default"], seed=[0, 1], train={**FAST, "data_seed": 7}))
    assert [(c.seed, c.init_seed, c.data_seed) for c in fixed_data] == [(0, 0, 7), (1, 1, 7)]
    assert fixed_data[1].out.name.endswith("+s1+d7")


def test_a_seed_key_in_both_the_grid_and_train_is_refused(tmp_path):
    with pytest.raises(UserError, match="train.data_seed is set by the grid"):
        load_config(SweepConfig, None, {"model": "pythia-tiny", "data_seed": [1, 2], "train": {"data_seed": 0}})


def test_the_expected_cost_uses_the_bench_figures_and_says_unknown_without_one():
    from probes.sweep import BENCH_MACHINE, bench_key, describe_cost, run_gpu_hours

    assert bench_key("hf:EleutherAI/pythia-1.4b") == "pythia-1.4b"
    assert bench_key("hf:state-spaces/mamba-1.4b-hf") == "mamba-1.4b"
    cfg = TrainConfig(model="pythia-1.4b", n=200, max_steps=1000, eval_every=100, eval_size=1000)
    train_h, eval_h = run_gpu_hours(cfg)
    assert train_h == pytest.approx(1000 * 64 * 203 / 53.3e3 / 3600)
    assert eval_h == pytest.approx(11 * 1000 * 203 / 3 / 53.3e3 / 3600)  # steps 0, 100, ..., 1000
    lines = describe_cost([cfg, TrainConfig(model="pythia-tiny", n=8)])
    assert BENCH_MACHINE in lines[0]
    assert any(line.strip().startswith("pythia-tiny: 1 runs, unknown") for line in lines)
    assert lines[-1].strip() == f"total: {train_h + eval_h:,.1f} GPU-h plus pythia-tiny (unknown)"
    assert describe_cost([TrainConfig(model="mamba-tiny", n=8)])[-1].strip() == "total: unknown"


@pytest.mark.parametrize("name, runs", [("paper-probe", 108), ("paper-probe-small", 8)])
def test_the_paper_presets_dry_run_prints_the_grid_and_gpu_hours_offline(tmp_path, cli_runner, monkeypatch,
                                                                         name, runs):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = cli_runner.invoke(app, ["sweep", "--config", str(ROOT / "configs" / f"{name}.yaml"),
                                "--out", str(tmp_path / name), "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert sum(line.endswith("  new") for line in lines) == runs
    assert "expected GPU-hours on NVIDIA H200" in r.stdout
    assert "unknown" not in r.stdout and lines[-1].strip().startswith("total: ")
    assert not (tmp_path / name).exists()  # a dry run writes nothing


# --- a run whose worker died is started again (`retries`) ---


class _Exits:
    """A worker process stand-in that has already exited with `code`."""

    def __init__(self, code: int):
        self.code, self.pid = code, -1

    def poll(self) -> int:
        return self.code


def _fake_workers(monkeypatch, codes: dict[str, list[int]]):
    """The local backend's workers replaced by stand-ins that exit with each run's next code; returns the
    (run name, action) of every start."""
    import probes.sweeps.local as local

    started = []

    def start(job, threads):
        started.append((job.name, job.action))
        job.dir.mkdir(parents=True, exist_ok=True)
        return _Exits(codes[job.name].pop(0)), open(job.dir / "train.log", "a")  # noqa: SIM115

    monkeypatch.setattr(local, "start_worker", start)
    monkeypatch.setattr(local, "RETRY_PAUSE_S", 0.0)
    monkeypatch.setattr(local, "POLL_SECONDS", 0.0)
    return started


def _jobs(tmp_path, names):
    from probes.sweeps.jobs import Job

    return [Job("text", TrainConfig(out=tmp_path / n), n, "new") for n in names]


def test_a_run_killed_or_out_of_gpu_memory_is_started_again_as_a_resume(tmp_path, monkeypatch):
    from probes.sweeps.jobs import Display
    from probes.sweeps.local import LocalBackend
    from probes.sweeps.worker import OUT_OF_MEMORY_EXIT

    started = _fake_workers(monkeypatch, {"killed": [-9, 1], "oom": [OUT_OF_MEMORY_EXIT, 1], "bug": [1]})
    results = LocalBackend(jobs=3, threads=1, retries=2).run(_jobs(tmp_path, ["killed", "oom", "bug"]),
                                                             Display(False, 3, 0))
    assert sorted(started) == sorted([("killed", "new"), ("oom", "new"), ("bug", "new"),
                                      ("killed", "resume"), ("oom", "resume")])  # a bug (exit 1) is not retried
    assert sorted(r["run"] for r in results) == ["bug", "killed", "oom"]  # one result per run, the last attempt's


def test_a_run_that_keeps_dying_is_reported_failed_after_its_retries(tmp_path, monkeypatch):
    from probes.sweeps.jobs import Display
    from probes.sweeps.local import LocalBackend

    started = _fake_workers(monkeypatch, {"doomed": [-9, -9, -9, -9]})
    (result,) = LocalBackend(jobs=1, threads=1, retries=2).run(_jobs(tmp_path, ["doomed"]), Display(False, 1, 0))
    assert started == [("doomed", "new"), ("doomed", "resume"), ("doomed", "resume")]
    assert result["status"] == "failed" and "worker exited with code -9" in result["message"]
    no_retries = _fake_workers(monkeypatch, {"doomed": [-9]})
    LocalBackend(jobs=1, threads=1, retries=0).run(_jobs(tmp_path, ["doomed"]), Display(False, 1, 0))
    assert no_retries == [("doomed", "new")]


def test_a_died_run_waits_out_the_pause_while_other_runs_start(tmp_path, monkeypatch):
    import probes.sweeps.local as local

    later = local.time.monotonic() + 3600
    pending = _jobs(tmp_path, ["died", "next"])
    assert local.next_ready(pending, {"died": later}).name == "next"
    assert local.next_ready(pending, {"died": later}) is None and [j.name for j in pending] == ["died"]
    assert local.next_ready(pending, {"died": 0.0}).name == "died"


def test_a_worker_out_of_gpu_memory_exits_with_its_own_code_and_one_line(monkeypatch, capsys):
    import torch

    import probes.sweeps.worker as worker

    def oom(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(worker, "run_job", oom)
    monkeypatch.setattr("probes.locks.die_with_parent", lambda: None)
    assert worker.main(["--json", "{}"]) == worker.OUT_OF_MEMORY_EXIT
    assert capsys.readouterr().out == "error: out of GPU memory: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    assert worker.out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert worker.out_of_memory(RuntimeError("CUDA error: out of memory"))

    def bug(*args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(worker, "run_job", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # anything else keeps its traceback
        worker.main(["--json", "{}"])


def test_a_worker_killed_mid_run_is_started_again_and_ends_as_if_never_killed(tmp_path, monkeypatch):
    import os
    import signal
    import threading
    import time

    import pandas as pd
    import torch

    import probes.sweeps.local as local
    from probes import locks
    from probes.train import train_run

    monkeypatch.setattr(local, "RETRY_PAUSE_S", 0.0)
    settings = {**FAST, "max_steps": 120, "eval_every": 10, "threshold": 1.0, "checkpoint_every": 20}
    sweep = small_sweep(tmp_path, init=["default"], seed=[0], train=settings, retries=1)
    run = Path(expand_grid(sweep)[0].out)
    results = []
    thread = threading.Thread(target=lambda: results.extend(run_sweep(sweep, progress=False, threads=1)))
    thread.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # a checkpoint and a few evaluations, then kill the worker
        holder = locks.read_holder(run)
        try:
            if holder and (run / "checkpoint").exists() and len(pd.read_parquet(run / "metrics.parquet")) >= 4:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    os.kill(holder.pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive() and results[0]["status"] == "not_reached"
    assert "=== " in (log := (run / "train.log").read_text()) and log.count(" resume ") == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the worker: the same reductions, the same floats
    try:
        train_run(TrainConfig(**{**expand_grid(sweep)[0].model_dump(), "out": tmp_path / "ref"}), progress=False)
    finally:
        torch.set_num_threads(threads)
    resumed, alone = (pd.read_parquet(d / "metrics.parquet") for d in (run, tmp_path / "ref"))
    assert resumed["step"].tolist() == list(range(0, 121, 10))  # none lost, none twice
    assert resumed["accuracy"].tolist() == alone["accuracy"].tolist()
    assert resumed["loss"].tolist() == alone["loss"].tolist()
