"""The one training loop of every kind of run: text probe runs, VLM runs, causal-LM pretraining.

    summary = engine.train(TextKind, cfg, run_dir, RESUMABLE_CHANGES, models=[cfg.model])

The engine owns what every run does the same way:

    lifecycle     new / resume / finished / overwrite and the directory lock (probes.rundir.open_run),
                  the CPU threads of the run (probes.runtime.run_threads: a resume keeps its count)
    evaluation    at step 0, every `kind.eval_every` steps, at `kind.boundaries` and at max_steps;
                  metrics.parquet (+ positions.parquet) rewritten atomically after each
    early stop    kind.final_status after each evaluation (reached at the threshold, or not_reached)
    NaN policy    the training loss is summed on the device and checked every NAN_CHECK_EVERY steps
                  and at each evaluation (one host sync each, never one per step); a non-finite sum
                  ends the run `failed`, naming lr and, when non-zero, weight decay
    checkpoints   after each evaluation (checkpoint_every None) or once `checkpoint_every` steps have
                  passed since the last one, and at the end; the state holds the record, the kind's
                  optimizer / scheduler / extras and every RNG (probes.runtime.rng_state + BatchOrder)
    summary.json  `kind`, status and outcome (kind.summary), rewritten after each evaluation
    SIGTERM       (a scheduler's notice, `kill`, a stopped sweep) ends the run after the step in
                  flight: a checkpoint there, holding the open interval's loss sum, steps and
                  seconds, so the resumed run's metrics are those of an uninterrupted one; the
                  run stays `running` and the same command resumes it
    progress      a rich bar (or, without it, one line per evaluation to `log`)
    trackers      cfg.log_to (probes.trackers): each metrics row mirrored to TensorBoard / W&B

A kind (RunKind) supplies only what differs: building model and data, the step function
(make_step: the one place where the update of a step is chosen), evaluation, stages or parameter
groups, the rows it records and its summary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from probes import rundir
from probes.locks import on_sigterm
from probes.rundir import (
    POSITION_COLUMNS,
    latest_checkpoint,
    new_record,
    note_threads,
    rate,
    restore_record,
    run_summary,
    save_checkpoint,
    start_run_dir,
    write_json,
    write_parquet,
)
from probes.runtime import (
    end_train_interval,
    quiet_transformers,
    resolve_device,
    resolve_precision,
    rng_state,
    run_threads,
    same_bits_each_run,
    set_rng_state,
    torch_threads,
)
from probes.trackers import TENSORBOARD_DIR, WANDB_DIR, make_trackers

NAN_CHECK_EVERY = 10  # steps between checks of the summed training loss (one host sync each)


@dataclass
class Interval:
    """The training an evaluation closes: `steps` updates, `examples` examples, `seconds`."""

    steps: int
    examples: int
    seconds: float


@dataclass
class Evaluation:
    """What a kind's evaluation returns: its metrics row (the engine adds step, examples_seen,
    train_loss, throughput and timings), positions rows (without step), the number of examples
    evaluated, and a short text for the progress bar."""

    row: dict[str, Any]
    positions: list[dict[str, Any]] = field(default_factory=list)
    examples: int = 0
    info: str = ""


class RunKind:
    """One kind of run, as the engine drives it. Subclasses set the class attributes and implement
    build, start, make_step, evaluate and state_dict; the rest has defaults.

    Call order: build(found) → [the run directory is started] → start(rec, ckpt) → make_step() →
    evaluate / step / state_dict ... → finish(status) → summary(...).
    """

    kind: str  # summary.json `kind` (probes.schema.RUN_KINDS)
    metric_columns: list[str]
    has_positions: bool = True
    extra_dirs: tuple[str, ...] = ()  # what the kind writes in the run directory besides rundir's files
    record_fields: ClassVar[dict[str, list]] = {}  # extra lists the record carries (copied per run)

    def __init__(self, cfg: Any, run: Path, state: str):
        self.cfg, self.run, self.state = cfg, Path(run), state
        self.device = resolve_device(cfg.device)
        self.autocast = resolve_precision(cfg.precision, self.device)
        self.info: dict[str, Any] = {}
        self.order: Any = None  # a BatchOrder (or ExampleStream), recorded with the RNG state

    # --- what each kind supplies ---

    def build(self, found: tuple[Path, dict] | None) -> None:
        """Model and data (from checkpoint `found` when resuming); nothing written yet."""
        raise NotImplementedError

    def start(self, rec: dict, ckpt: dict | None) -> None:
        """Optimizer(s) built once at rec["step"] (and loaded from `ckpt`); the kind's own files."""
        raise NotImplementedError

    def make_step(self) -> Callable[[int], torch.Tensor]:
        """The function doing update `step` (forward, backward, optimizer and schedule): it returns
        the detached training loss, without a host sync."""
        raise NotImplementedError

    def evaluate(self, step: int, interval: Interval) -> Evaluation:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint carries besides the record and the RNG (optimizer, scheduler, ...)."""
        raise NotImplementedError

    # --- defaults ---

    @property
    def backbone(self):
        return self.bb

    @property
    def eval_every(self) -> int:
        return self.cfg.effective_eval_every

    @property
    def boundaries(self) -> Collection[int]:
        return ()

    def examples_seen(self, step: int) -> int:
        return step * self.cfg.batch_size

    def hyper(self, step: int) -> tuple[float, float]:
        """(lr, weight decay) of the update that produced `step`: the NaN message names them."""
        return self.cfg.lr, self.cfg.weight_decay

    def final_status(self, rec: dict) -> str | None:
        last = rec["metrics"][-1]
        if last["accuracy"] >= self.cfg.threshold:
            return "reached"
        return "not_reached" if last["step"] >= self.cfg.max_steps else None

    def same_bits(self) -> bool:
        """Whether this run's kernels give the same bits every time (its info's scan backend and device)."""
        return same_bits_each_run(self.info.get("scan_backend"), self.info.get("device", "cpu"))

    def summary(self, rec: dict, status: str, message: str, wall_seconds: float) -> dict:
        return {**run_summary(rec, self.cfg, status, message, wall_seconds, kind=self.kind,
                              same_bits=self.same_bits()), **self.info}

    def banner(self) -> str | None:
        return None

    def finish(self, status: str) -> None:
        """Called once when the run ends with `status`, before its summary (pretraining saves model/)."""


# === Progress ===


class Progress:
    """A rich progress bar over steps; without it, messages and one line per evaluation go to
    `lines` (when given)."""

    def __init__(self, enabled: bool, name: str, total: int, start: int,
                 lines: Callable[[str], None] | None = None):
        self.bar, self.lines = None, lines
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task(name, total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, info: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, **({"info": info} if info is not None else {}))
        elif info is not None:
            self.log(f"step {step:>6} {info}")

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message, highlight=False, markup=False)
        elif self.lines is not None:
            self.lines(message)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class StopRequest:
    """Set by SIGTERM while the run's loop is open (locks.on_sigterm), instead of ending the process."""

    requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True


# === The run ===


def train(make_kind: Callable[[Any, Path, str], RunKind], cfg: Any, run: Path, resumable: Collection[str],
          models: Sequence[str], *, overwrite: bool = False, progress: bool = True,
          log: Callable[[str], None] | None = None, lines: Callable[[str], None] | None = None,
          default_threads: int | None = None) -> dict:
    """Run `cfg` in `run` to its end and return its summary: the directory's lock held for the whole
    run (rundir.open_run: `log` hears of a lock taken over), torch at run_threads(...) CPU threads
    (config.yaml records the count), the kind made by make_kind(cfg, run, 'new' | 'resume')."""
    with rundir.open_run(cfg, run, resumable, overwrite, log=log) as state, \
            torch_threads(run_threads(cfg, run, state, default_threads), cfg.device, models) as threads:
        kind = make_kind(cfg.model_copy(update={"threads": threads}), run, state)
        return Engine(kind, threads, progress, lines).run()


class Engine:
    """One run of one kind from its directory's state to its summary (see the module docstring)."""

    def __init__(self, kind: RunKind, threads: int, progress: bool = True,
                 lines: Callable[[str], None] | None = None):
        self.kind, self.threads, self.progress, self.lines = kind, threads, progress, lines
        self.run_path = kind.run

    def run(self) -> dict:
        kind = self.kind
        found = latest_checkpoint(self.run_path) if kind.state == "resume" else None
        quiet_transformers()
        kind.build(found)
        kind.cfg = kind.cfg.model_copy(update={"out": self.run_path})
        start_run_dir(self.run_path, kind.cfg, kind.state, (*kind.extra_dirs, TENSORBOARD_DIR, WANDB_DIR))
        self.found = found
        self.rec = self._record(found[1] if found else None)
        self.step_fn = kind.make_step()  # the hook where a captured (CUDA graph) step plugs in
        self.bar = Progress(self.progress, kind.info.get("run", self.run_path.name), kind.cfg.max_steps,
                            self.rec["step"], self.lines)
        self.trackers = make_trackers(kind.cfg.log_to, self.run_path, kind.cfg, start_step=self.rec["step"])
        if kind.banner():
            self.bar.log(kind.banner())
        if found is not None:
            self.bar.log(f"resuming {self.run_path} from step {self.rec['step']}")
        self.t0 = time.monotonic() - self.rec["wall_seconds"]
        self.last_ckpt = self.rec["step"]
        try:
            return self._loop()
        finally:
            self.bar.stop()  # a crash or Ctrl-C leaves the run `running`: the same command resumes it
            self.trackers.close()

    def _record(self, ckpt: dict | None) -> dict:
        kind = self.kind
        rec = {**new_record(), **{k: list(v) for k, v in kind.record_fields.items()}}
        if ckpt is not None:
            restore_record(rec, ckpt, self.run_path, kind.metric_columns, positions=kind.has_positions)
            if "train_examples" not in ckpt:  # a checkpoint from before it was recorded
                rec["train_examples"] = kind.examples_seen(rec["train_steps"])
        elif kind.state == "resume":  # killed before its first checkpoint: start again from step 0
            rec["resumed_at"] = [0]
        kind.start(rec, ckpt)
        if ckpt is not None:
            check_order(ckpt, kind.order, self.run_path)
            set_rng_state(ckpt["rng"], kind.device)
        note_threads(rec, self.threads)
        return rec

    def _loop(self) -> dict:
        stop = StopRequest()
        with on_sigterm(stop):
            return self._steps(stop)

    def _steps(self, stop: StopRequest) -> dict:
        kind, rec = self.kind, self.rec
        if not rec["metrics"]:
            self.evaluate(0, None, Interval(0, 0, 0.0))
            self.write_summary("running")
        status = kind.final_status(rec)
        if status is not None:  # reached at step 0, or killed after its final checkpoint
            if self.found is None:
                self.checkpoint(rec["step"])
            return self.finish(status)
        step, since = rec["step"], 0
        loss_sum = torch.zeros((), device=kind.device)
        t_train = time.monotonic()
        if rec["open_interval"]:  # stopped by SIGTERM between evaluations: that interval goes on
            since, t_train = rec["open_interval"]["steps"], t_train - rec["open_interval"]["seconds"]
            loss_sum.fill_(rec["open_interval"]["loss_sum"])
            rec["open_interval"] = None
        while step < kind.cfg.max_steps:
            if stop.requested:
                return self.stop(step, loss_sum, since, t_train)
            loss_sum += self.step_fn(step)
            step, since = step + 1, since + 1
            is_eval = self.is_eval_step(step)
            if step % NAN_CHECK_EVERY == 0 or is_eval:
                total = loss_sum.item()
                if not math.isfinite(total):
                    return self.finish("failed", self.nan_message(total, step - since + 1, step))
            self.bar.update(step)
            if not is_eval:
                continue
            examples = kind.examples_seen(step) - kind.examples_seen(step - since)
            seconds = end_train_interval(rec, kind.device, t_train, since, examples)
            self.evaluate(step, loss_sum.item() / since, Interval(since, examples, seconds))
            loss_sum.zero_()
            since = 0
            status = kind.final_status(rec)
            if status is not None or self.checkpoint_due(step):
                self.checkpoint(step)
            if status is not None:
                return self.finish(status)
            self.write_summary("running")
            t_train = time.monotonic()
        return self.finish(kind.final_status(rec) or "not_reached")

    def is_eval_step(self, step: int) -> bool:
        kind = self.kind
        return step % kind.eval_every == 0 or step == kind.cfg.max_steps or step in kind.boundaries

    def checkpoint_due(self, step: int) -> bool:
        every = self.kind.cfg.checkpoint_every
        return every is None or step - self.last_ckpt >= every

    def evaluate(self, step: int, train_loss: float | None, interval: Interval) -> None:
        kind, rec = self.kind, self.rec
        t = time.monotonic()
        result = kind.evaluate(step, interval)
        dt = time.monotonic() - t
        rec["eval_seconds"] += dt
        rec["eval_examples"] += result.examples
        row = {"step": step, "examples_seen": kind.examples_seen(step), "train_loss": train_loss,
               "train_examples_per_s": rate(interval.examples, interval.seconds),
               "eval_examples_per_s": rate(result.examples, dt), "eval_seconds": dt, **result.row,
               "wall_seconds": time.monotonic() - self.t0}
        rec["metrics"].append(row)
        write_parquet(self.run_path / "metrics.parquet", rec["metrics"], kind.metric_columns)
        if kind.has_positions:
            rec["positions"].extend({"step": step, **p} for p in result.positions)
            write_parquet(self.run_path / "positions.parquet", rec["positions"], POSITION_COLUMNS)
        self.trackers.log(step, {k: row[k] for k in kind.metric_columns if k in row})
        self.bar.update(step, result.info)

    def checkpoint(self, step: int) -> None:
        rec = self.rec
        rec["step"], rec["wall_seconds"] = step, time.monotonic() - self.t0
        rng = rng_state(self.kind.device)
        order = self.kind.order.state() if self.kind.order is not None else None
        save_checkpoint(self.run_path, self.kind.backbone,
                        {**rec, **self.kind.state_dict(), "rng": rng, "batch_order": order})
        self.last_ckpt = step

    def stop(self, step: int, loss_sum: torch.Tensor, since: int, t_train: float) -> dict:
        """SIGTERM: a checkpoint at `step` carrying the open interval (unless one is there already);
        the run stays `running`."""
        if step > self.last_ckpt:
            total = loss_sum.item()  # waits for the GPU's queued steps, so the seconds below are whole
            self.rec["open_interval"] = {"loss_sum": total, "steps": since, "seconds": time.monotonic() - t_train}
            self.checkpoint(step)
            self.rec["open_interval"] = None
        self.bar.stop()
        return self.write_summary("running", f"stopped by SIGTERM at step {step}; the same command resumes it")

    def nan_message(self, total: float, first: int, last: int) -> str:
        lr, decay = self.kind.hyper(last - 1)
        if decay:
            return (f"training loss became {total} between steps {first} and {last} (lr={lr:g}, "
                    f"weight_decay={decay:g}); the model diverged: try a lower lr or a lower weight_decay")
        return (f"training loss became {total} between steps {first} and {last} (lr={lr:g}); "
                f"the model diverged: try a lower lr")

    def write_summary(self, status: str, message: str = "") -> dict:
        summary = self.kind.summary(self.rec, status, message, time.monotonic() - self.t0)
        write_json(self.run_path / "summary.json", summary)
        return summary

    def finish(self, status: str, message: str = "") -> dict:
        self.bar.stop()
        self.kind.finish(status)
        return self.write_summary(status, message)


def check_order(ckpt: dict, order: Any, run: Path) -> None:
    """A checkpoint's batch order (seed, sizes) must be the one the run rebuilt; older checkpoints
    record none."""
    saved = ckpt.get("batch_order")
    if saved is not None and order is not None and saved != order.state():
        raise rundir.RunDirError(f"{run}: the checkpoint's batch order {saved} is not the run's "
                                 f"{order.state()} (the training data changed?)")
