"""The types every sweep backend shares: a run to do (`Job`), its outcome (`Result`), and the
progress display (`Display`). Backends learn about a run only through its run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from probes.errors import UserError
from probes.rundir import read_summary

ACTIONS = ("new", "resume", "restart")  # what a backend does with a job; "skipped": not run at all


class Result(TypedDict):
    """One grid point's outcome, as sweep.json records it."""

    run: str
    dir: str
    action: str  # new | resume | restart | skipped
    status: str  # reached | not_reached | failed
    step_reached: int | None
    final_accuracy: float | None
    message: str


@dataclass(frozen=True)
class Job:
    """One run to do: new, resumed, or (with retry_failed) started again.

    `kind` names the run kind (probes.sweeps.kinds.KINDS: text | vlm), `cfg` is that kind's run
    config with `out` set, `name` its run name.
    """

    kind: str
    cfg: Any
    name: str
    action: str  # one of ACTIONS

    @property
    def dir(self) -> Path:
        return Path(self.cfg.out)

    @property
    def max_steps(self) -> int:
        return self.cfg.max_steps


def make_result(name: str, run: Path | str, summary: dict | None, action: str, message: str = "") -> Result:
    """A Result from a run's summary (None: the run left none, so it failed with `message`)."""
    summary = summary or {}
    return Result(run=name, dir=str(run), action=action, status=summary.get("status", "failed"),
                  step_reached=summary.get("step_reached"), final_accuracy=summary.get("final_accuracy"),
                  message=summary.get("message") or message)


def job_result(job: Job, summary: dict | None, message: str = "") -> Result:
    return make_result(job.name, job.dir, summary, job.action, message)


def running_summary(run: Path) -> dict | None:
    """The run's summary.json while it says `running`, else None (also while it is being replaced)."""
    try:
        summary = read_summary(run)
    except UserError:
        return None
    return summary if summary and summary.get("status") == "running" else None


def describe(result: Result) -> str:
    """One line for a finished run: reached at step S | not reached (final accuracy A) | failed: why."""
    status = result["status"]
    acc = result.get("final_accuracy")
    tail = {"reached": f"reached at step {result['step_reached']}",
            "not_reached": f"not reached (final accuracy {acc:.3f})" if acc is not None else "not reached",
            "failed": f"failed: {result['message']}"}.get(status, status)
    return f"{result['run']}: {tail}"


class Display:
    """rich Progress over the whole sweep (runs done / total) plus one bar per active run. It shows
    from the first run a backend starts, so that a backend that fails to start prints one line."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.already_done = enabled, total, done
        self.bar, self.tasks = None, {}

    def _started(self) -> bool:
        if self.bar is None and self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                console=Console(stderr=True))
            self.overall = self.bar.add_task("sweep: runs done", total=self.total, completed=self.already_done,
                                             info="")
            self.bar.start()
        return self.bar is not None

    def add(self, job: Job) -> None:
        if job.name not in self.tasks and self._started():
            self.tasks[job.name] = self.bar.add_task(f"  {job.name}", total=job.max_steps, info=job.action)

    def update(self, job: Job) -> None:
        if self.bar is None or job.name not in self.tasks:
            return
        summary = running_summary(job.dir)
        if summary:
            acc = summary.get("final_accuracy")
            self.bar.update(self.tasks[job.name], completed=summary.get("final_step") or 0,
                            info=f"acc {acc:.3f}" if acc is not None else "")

    def retrying(self, job: Job, result: Result, attempt: int, retries: int, pause: float) -> None:
        """A line for a run whose worker died and that starts again (its bar stays)."""
        if self._started():
            self.bar.console.print(f"{job.name}: {result['message']}; starting it again in {pause:.0f} s "
                                   f"(retry {attempt} of {retries})", highlight=False, markup=False)

    def done(self, job: Job, result: Result) -> None:
        if not self._started():
            return
        if job.name in self.tasks:
            self.bar.remove_task(self.tasks.pop(job.name))
        self.bar.advance(self.overall)
        self.bar.console.print(describe(result), highlight=False, markup=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@dataclass(frozen=True)
class BackendOptions:
    """What a backend is told besides its jobs: runs at once (local), CPU threads per run (None:
    the backend's share), and the Ray settings (probes.config.SweepConfig's fields of those names)."""

    jobs: int = 1
    threads: int | None = None
    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    retries: int = 3
