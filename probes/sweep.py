"""Sweeps (SPEC §6): a grid model × n × layout × lr × init × seeds → one run directory each.

    runs = expand_grid(SweepConfig(model=["pythia-tiny", "mamba-tiny"], n=[8], out="runs/tiny"))
    results = run_sweep(sweep_cfg, backend="local", jobs=2)

Finished runs are skipped, unfinished ones resume from their checkpoints, new ones start; a
damaged run directory is reported (failed, with what to do) and the others go on. The sweep
holds its directory's lock (probes.locks), each worker its run's; workers die with the sweep
process (probes.locks.die_with_parent: PR_SET_PDEATHSIG on Linux) and run in their own process
group. A backend is one entry of `BACKENDS`: a function that takes the runs still to do and returns one
result per run; it learns about a run only through its run directory (summary.json), so any
backend that can start `python -m probes.train --json CONFIG` somewhere can be added.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import probes
from probes import locks
from probes.config import GRID_KEYS, SweepConfig, TrainConfig, validate
from probes.errors import UserError
from probes.locks import PARENT_ENV
from probes.rundir import LOG_FILE, RunDirError, read_summary
from probes.tasks import read_meta
from probes.train import inspect_run, run_name


@dataclass
class Job:
    """One run to do: new, resumed, or (with retry_failed) started again."""

    cfg: TrainConfig
    action: str  # "new" | "resume" | "restart"

    @property
    def dir(self) -> Path:
        return Path(self.cfg.out)

    @property
    def name(self) -> str:
        return run_name(self.cfg)


# === Grid ===


def expand_grid(sweep: SweepConfig) -> list[TrainConfig]:
    """Every grid point as a TrainConfig whose `out` is `sweep.out / run_name` (grid order)."""
    cfgs = []
    for values in itertools.product(*(getattr(sweep, k) for k in GRID_KEYS)):
        cfg = validate(TrainConfig, sweep.run_settings(dict(zip(GRID_KEYS, values))))
        cfgs.append(cfg.model_copy(update={"out": Path(sweep.out) / run_name(cfg)}))
    names = [run_name(c) for c in cfgs]
    if len(set(names)) != len(names):  # e.g. two hf: paths that sanitise to the same name
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"two grid points share the run directory name {dup}; make the model names distinct")
    return cfgs


SWEEP_ADVICE = "move or remove that directory and run the sweep again"


def plan(cfgs: list[TrainConfig], retry_failed: bool = False) -> tuple[list[Job], list[dict]]:
    """(jobs to run, results of runs that are not run: finished ones, skipped, and damaged or
    conflicting ones, reported as failed with what to do). One bad run directory never stops
    the others."""
    jobs, skipped = [], []
    for cfg in cfgs:
        try:
            state, summary = inspect_run(cfg)
        except RunDirError as err:  # damaged, another config, another kind: report it, carry on
            skipped.append(_result(cfg, None, "skipped", f"{err.reason}; {SWEEP_ADVICE}"))
            continue
        if state == "finished" and not (retry_failed and summary["status"] == "failed"):
            skipped.append(_result(cfg, summary, "skipped"))
        else:
            jobs.append(Job(cfg, {"new": "new", "resume": "resume", "finished": "restart"}[state]))
    return jobs, skipped


def _result(cfg: TrainConfig, summary: dict | None, action: str, message: str = "") -> dict:
    summary = summary or {}
    return {"run": run_name(cfg), "dir": str(cfg.out), "action": action,
            "status": summary.get("status", "failed"), "step_reached": summary.get("step_reached"),
            "final_accuracy": summary.get("final_accuracy"),
            "message": summary.get("message") or message}


# === Expected cost (`probes sweep --dry-run`) ===

# `probes bench` training throughput (tokens/s; bf16 autocast, AdamW, B=64, L=203; SPEC §7)
BENCH_MACHINE = "NVIDIA H200, Dec 2026 (probes bench: bf16, AdamW, batch 64, length 203)"
BENCH_TOKENS_PER_S = {"pythia-160m": 318.9e3, "mamba-130m": 195.6e3, "pythia-410m": 139.9e3, "mamba-370m": 89.5e3,
                      "pythia-1.4b": 53.3e3, "mamba-1.4b": 36.4e3}
EVAL_COST = 1 / 3  # an evaluated token (forward only) costs about a third of a trained one


def bench_key(model: str) -> str:
    """The bench table's name for a model: `hf:EleutherAI/pythia-1.4b` → `pythia-1.4b`,
    `hf:state-spaces/mamba-1.4b-hf` → `mamba-1.4b` (same architecture and size)."""
    if not model.startswith("hf:"):
        return model
    return model.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix("-hf")


def seq_len(cfg: TrainConfig) -> int:
    """Model input length (probes.tasks.TokenLayout.seq_len) without building a tokenizer."""
    return cfg.n + (3 if cfg.layout == "suffix" else 4)


def run_gpu_hours(cfg: TrainConfig) -> tuple[float, float] | None:
    """(training, evaluation) GPU-hours of a run that trains all max_steps, None without a figure."""
    tokens_per_s = BENCH_TOKENS_PER_S.get(bench_key(cfg.model))
    if tokens_per_s is None:
        return None
    train_tokens = cfg.max_steps * cfg.batch_size * seq_len(cfg)
    evals = cfg.max_steps // cfg.effective_eval_every + 1 + (cfg.max_steps % cfg.effective_eval_every > 0)
    eval_tokens = evals * held_out_size(cfg) * seq_len(cfg)
    return train_tokens / tokens_per_s / 3600, eval_tokens * EVAL_COST / tokens_per_s / 3600


def held_out_size(cfg: TrainConfig) -> int:
    """Held-out examples of a run: its dataset's meta.json says, else eval_size."""
    meta = read_meta(cfg.data_dir) if cfg.data_dir is not None else None
    return int(meta["eval_size"]) if meta else cfg.eval_size


def describe_cost(cfgs: list[TrainConfig]) -> list[str]:
    """Lines of expected GPU-hours per model and in all, on the bench machine."""
    lines, total, unknown = [f"expected GPU-hours on {BENCH_MACHINE}, at most (runs that reach the threshold "
                             f"stop early):"], [0.0, 0.0], []
    for model in dict.fromkeys(c.model for c in cfgs):
        runs = [c for c in cfgs if c.model == model]
        hours = [run_gpu_hours(c) for c in runs]
        if any(h is None for h in hours):
            unknown.append(model)
            lines.append(f"  {model}: {len(runs)} runs, unknown (no `probes bench` figure for {bench_key(model)})")
            continue
        train, ev = sum(h[0] for h in hours), sum(h[1] for h in hours)
        total[0], total[1] = total[0] + train, total[1] + ev
        lines.append(f"  {model} ({bench_key(model)}, {BENCH_TOKENS_PER_S[bench_key(model)] / 1e3:.1f}k tokens/s): "
                     f"{len(runs)} runs, {train + ev:,.1f} GPU-h (train {train:,.1f} + eval {ev:,.1f})")
    if len(lines) == len(unknown) + 1:  # no model has a figure
        lines.append("  total: unknown")
    else:
        lines.append(f"  total: {sum(total):,.1f} GPU-h" + (f" plus {', '.join(unknown)} (unknown)" if unknown else ""))
    return lines


# === Local backend: one subprocess per run, `jobs` at a time ===


def _default_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def stop_worker(proc: subprocess.Popen) -> None:
    """SIGTERM to the worker's process group (the worker and anything it started)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _start(job: Job, threads: int) -> subprocess.Popen:
    job.dir.mkdir(parents=True, exist_ok=True)
    log = open(job.dir / LOG_FILE, "a")  # noqa: SIM115 - closed when the process ends
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.action} {job.name}\n")
    log.flush()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    root = str(Path(probes.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    # --threads: the share of a new run; a resumed run keeps the count its config.yaml records
    cmd = [sys.executable, "-m", "probes.train", "--json", job.cfg.model_dump_json(),
           "--threads", str(threads)] + (["--overwrite"] if job.action == "restart" else [])
    env[PARENT_ENV] = str(os.getpid())  # the worker dies with this process (locks.die_with_parent)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, process_group=0)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _finished_result(job: Job, code: int) -> dict:
    try:
        summary = read_summary(job.dir)
    except UserError:
        summary = None
    if summary is None or summary["status"] == "running":
        reason = last_error(job.dir / LOG_FILE) or f"worker exited with code {code} before the run finished"
        return _result(job.cfg, None, job.action, f"{reason}; see {job.dir / LOG_FILE}")
    return _result(job.cfg, summary, job.action)


def last_error(log: Path) -> str | None:
    """The worker's last `error: ...` line in its log (a UserError: a busy or damaged run), if any."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((ln.removeprefix("error: ") for ln in reversed(lines) if ln.startswith("error: ")), None)


def run_local(jobs_todo: list[Job], jobs: int = 1, progress: bool = True, threads: int | None = None,
              on_done: Callable[[dict], None] | None = None, total: int | None = None) -> list[dict]:
    """Run `jobs_todo`, at most `jobs` at once, each in its own `python -m probes.train` process.

    Several small runs can share one GPU this way. Progress comes from each run's summary.json.
    """
    threads = threads or _default_threads(jobs)
    display = _Display(progress, total or len(jobs_todo), (total or len(jobs_todo)) - len(jobs_todo))
    pending, active, results = list(jobs_todo), {}, []
    try:
        while pending or active:
            while pending and len(active) < jobs:
                job = pending.pop(0)
                active[job.name] = (job, _start(job, threads))
                display.add(job)
            time.sleep(0.5)
            for name, (job, proc) in list(active.items()):
                code = proc.poll()
                if code is None:
                    display.update(job)
                    continue
                proc.log.close()
                del active[name]
                result = _finished_result(job, code)
                results.append(result)
                display.done(job, result)
                if on_done:
                    on_done(result)
    except BaseException:
        for job, proc in active.values():  # unfinished runs stay resumable
            stop_worker(proc)
        for job, proc in active.values():
            proc.wait()
            proc.log.close()
        raise
    finally:
        display.stop()
    return results


class _Display:
    """rich Progress over the whole sweep (runs done / total) plus one bar per active run."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.bar, self.tasks = None, {}
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                console=Console(stderr=True))
            self.overall = self.bar.add_task("sweep: runs done", total=total, completed=done, info="")
            self.bar.start()

    def add(self, job: Job) -> None:
        if self.bar is not None:
            self.tasks[job.name] = self.bar.add_task(f"  {job.name}", total=job.cfg.max_steps, info=job.action)

    def update(self, job: Job) -> None:
        if self.bar is None:
            return
        try:
            summary = read_summary(job.dir)
        except UserError:  # being replaced right now
            return
        if summary and summary.get("status") == "running":
            acc = summary.get("final_accuracy")
            self.bar.update(self.tasks[job.name], completed=summary.get("final_step") or 0,
                            info=f"acc {acc:.3f}" if acc is not None else "")

    def done(self, job: Job, result: dict) -> None:
        if self.bar is None:
            return
        self.bar.remove_task(self.tasks.pop(job.name))
        self.bar.advance(self.overall)
        self.bar.console.print(_describe(result), highlight=False, markup=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _describe(result: dict) -> str:
    status = result["status"]
    acc = result.get("final_accuracy")
    tail = {"reached": f"reached at step {result['step_reached']}",
            "not_reached": f"not reached (final accuracy {acc:.3f})" if acc is not None else "not reached",
            "failed": f"failed: {result['message']}"}.get(status, status)
    return f"{result['run']}: {tail}"


def run_ray(*args, **kwargs) -> list[dict]:
    """The Ray backend (probes.sweep_ray), imported only when asked for."""
    from probes.sweep_ray import run_ray as run

    return run(*args, **kwargs)


BACKENDS: dict[str, Callable[..., list[dict]]] = {"local": run_local, "ray": run_ray}


def backend_options(sweep: SweepConfig, backend: str) -> dict:
    """Settings of the sweep config that only one backend reads."""
    if backend == "ray":
        return {"address": sweep.address, "cpus_per_run": sweep.cpus_per_run,
                "gpus_per_run": sweep.gpus_per_run, "retries": sweep.retries}
    return {}


# === The sweep ===


def run_sweep(sweep: SweepConfig, backend: str | None = None, jobs: int | None = None, progress: bool = True,
              retry_failed: bool = False, threads: int | None = None) -> list[dict]:
    """Expand the grid, skip finished runs, run (or resume) the rest; one result per grid point.

    `backend` and `jobs` default to the config's. Failed runs are reported, not retried, unless
    `retry_failed`. Writes DIR/sweep.json (results in grid order) when done.
    """
    backend = backend or sweep.backend
    jobs = jobs or sweep.jobs
    check_backend(backend)
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: allowed: 1 or more threads per run")
    with locks.hold(sweep.out, what="sweep"):  # one sweep per directory; each run also holds its own
        return _run_sweep(sweep, backend, jobs, progress, retry_failed, threads)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"unknown sweep backend '{backend}' (known: {', '.join(BACKENDS)})")


def _run_sweep(sweep: SweepConfig, backend: str, jobs: int, progress: bool, retry_failed: bool,
               threads: int | None) -> list[dict]:
    cfgs = expand_grid(sweep)
    todo, skipped = plan(cfgs, retry_failed)
    if progress and skipped:
        from rich.console import Console

        Console(stderr=True).print(f"{len(skipped)} of {len(cfgs)} runs already finished: skipped",
                                   highlight=False)
    ran = BACKENDS[backend](todo, jobs=jobs, progress=progress, threads=threads, total=len(cfgs),
                            **backend_options(sweep, backend)) if todo else []
    by_name = {r["run"]: r for r in [*skipped, *ran]}
    results = [by_name[run_name(c)] for c in cfgs]
    tmp = Path(sweep.out) / ".sweep.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, Path(sweep.out) / "sweep.json")
    return results

