"""Local sweep backend: one `python -m probes.sweeps.worker` process per run, `jobs` at a time.

Several small runs can share one GPU this way. Each worker runs in its own process group, logs to
RUN/train.log and dies with the sweep process (probes.locks.die_with_parent: PR_SET_PDEATHSIG on
Linux); progress comes from each run's summary.json. SIGTERM to the sweep passes on to its workers,
which checkpoint where they are (probes.engine) before the sweep exits with code 143.

A run whose worker died (killed by a signal: the kernel's OOM killer, `kill -9`) or ran out of GPU
memory (probes.sweeps.worker.OUT_OF_MEMORY_EXIT: the packed runs of this and other sweeps filled the
card) goes to the back of the queue and is resumed from its last checkpoint after RETRY_PAUSE_S,
at most `retries` times; a run that failed on its own (diverged, a bug, a busy run) is reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import probes
from probes.console import STOPPED_EXIT
from probes.errors import UserError
from probes.locks import PARENT_ENV, on_sigterm
from probes.rundir import LOG_FILE, read_summary
from probes.sweeps.jobs import BackendOptions, Display, Job, Result, job_result
from probes.sweeps.worker import OUT_OF_MEMORY_EXIT

POLL_SECONDS = 0.5
RETRY_PAUSE_S = 30.0  # before a died run starts again: time for whatever filled the card to move on


def default_threads(jobs: int) -> int:
    """CPU threads of each of `jobs` runs at once: an equal share of the cores."""
    return max(1, (os.cpu_count() or 1) // jobs)


def stop_worker(proc: subprocess.Popen) -> None:
    """SIGTERM to the worker's process group (the worker and anything it started)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _terminate(signum, frame):
    raise SystemExit(STOPPED_EXIT)  # unwinds LocalBackend.run, which stops its workers on the way out


def worker_command(job: Job, threads: int) -> list[str]:
    # --threads: the share of a new run; a resumed run keeps the count its config.yaml records
    return [sys.executable, "-m", "probes.sweeps.worker", "--kind", job.kind, "--json", job.cfg.model_dump_json(),
            "--threads", str(threads)] + (["--overwrite"] if job.action == "restart" else [])


def start_worker(job: Job, threads: int) -> tuple[subprocess.Popen, object]:
    """(the worker process, its open log file) of `job`."""
    job.dir.mkdir(parents=True, exist_ok=True)
    log = open(job.dir / LOG_FILE, "a")  # noqa: SIM115 - closed when the process ends
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.action} {job.name}\n")
    log.flush()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    root = str(Path(probes.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env[PARENT_ENV] = str(os.getpid())  # the worker dies with this process (locks.die_with_parent)
    proc = subprocess.Popen(worker_command(job, threads), stdout=log, stderr=subprocess.STDOUT, env=env,
                            process_group=0)
    return proc, log


def last_error(log: Path) -> str | None:
    """The worker's last `error: ...` line in its log (a UserError: a busy or damaged run), if any."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((ln.removeprefix("error: ") for ln in reversed(lines) if ln.startswith("error: ")), None)


def worker_died(code: int) -> bool:
    """Whether a worker's exit code says it died rather than finished: killed by a signal, or out of GPU memory."""
    return code < 0 or code == OUT_OF_MEMORY_EXIT


def finished_result(job: Job, code: int) -> Result:
    """The Result of a worker that exited with `code`, from its run's summary.json (or its log)."""
    try:
        summary = read_summary(job.dir)
    except UserError:
        summary = None
    if summary is None or summary["status"] == "running":
        reason = last_error(job.dir / LOG_FILE) or f"worker exited with code {code} before the run finished"
        return job_result(job, None, f"{reason}; see {job.dir / LOG_FILE}")
    return job_result(job, summary)


def next_ready(pending: list[Job], not_before: dict[str, float]) -> Job | None:
    """Takes the first job of `pending` whose restart pause (if any) is over."""
    now = time.monotonic()
    for i, job in enumerate(pending):
        if not_before.get(job.name, 0.0) <= now:
            return pending.pop(i)
    return None


class LocalBackend:
    """Runs jobs on this machine, at most `jobs` at once, each with `threads` CPU threads; a run
    whose worker died is started again up to `retries` times."""

    def __init__(self, jobs: int = 1, threads: int | None = None, retries: int = 0):
        self.jobs, self.threads, self.retries = jobs, threads or default_threads(jobs), retries

    @classmethod
    def from_options(cls, options: BackendOptions) -> LocalBackend:
        return cls(options.jobs, options.threads, options.retries)

    def run(self, jobs: list[Job], display: Display, on_done: Callable[[Result], None] | None = None) -> list[Result]:
        with on_sigterm(_terminate):  # SIGTERM unwinds _run through its except, which stops the workers
            return self._run(jobs, display, on_done)

    def _run(self, jobs: list[Job], display: Display, on_done: Callable[[Result], None] | None) -> list[Result]:
        pending, active, results = list(jobs), {}, []
        not_before, retried = {}, {}  # a died run's earliest restart (time.monotonic) and its restarts so far
        try:
            while pending or active:
                while len(active) < self.jobs and (job := next_ready(pending, not_before)):
                    active[job.name] = (job, *start_worker(job, self.threads))
                    display.add(job)
                time.sleep(POLL_SECONDS)
                for name, (job, proc, log) in list(active.items()):
                    code = proc.poll()
                    if code is None:
                        display.update(job)
                        continue
                    log.close()
                    del active[name]
                    result = finished_result(job, code)
                    if result["status"] == "failed" and worker_died(code) and retried.get(name, 0) < self.retries:
                        retried[name] = retried.get(name, 0) + 1
                        not_before[name] = time.monotonic() + RETRY_PAUSE_S
                        pending.append(replace(job, action="resume"))  # never --overwrite twice
                        display.retrying(job, result, retried[name], self.retries, RETRY_PAUSE_S)
                        continue
                    results.append(result)
                    display.done(job, result)
                    if on_done:
                        on_done(result)
        except BaseException:
            for _job, proc, _log in active.values():  # unfinished runs stay resumable
                stop_worker(proc)
            for _job, proc, log in active.values():
                proc.wait()
                log.close()
            raise
        return results
