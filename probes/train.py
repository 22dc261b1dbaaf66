"""One run (SPEC §2, §6): AdamW to a held-out threshold, written to a run directory as it goes.

    summary = train_run(TrainConfig(model="pythia-tiny", n=8, lr=1e-3, max_steps=2000, out="runs/x"))

The loop evaluates the WHOLE held-out set at step 0 and every `eval_every` steps (default 1% of
`max_steps`), logs accuracy per target position, and stops as soon as accuracy >= `threshold`.
Only the 1–2 scored slots ever reach the LM head (`slot_logits`), in training and in evaluation.

The run directory (probes.rundir: format, lifecycle, atomic writes, checkpoints):

    config.yaml        the TrainConfig, written first
    metrics.parquet    one row per evaluation: step, examples_seen, loss, accuracy, train_loss, lr,
                       train/eval throughput, wall_seconds
    positions.parquet  one row per evaluation × target position: step, position, accuracy, count
    summary.json       status (running | reached | not_reached | failed), threshold, step_reached, ...
    checkpoint/        latest state: the model (save_pretrained: from_pretrained loads it),
                       state.pt (optimizer, lr scheduler, RNG, step, the metrics so far)

Nothing is lost: the batch order is a function of (order_seed, step), so a run started again with
the same config resumes from its checkpoint and, on CPU, reproduces an uninterrupted run exactly.

The optimizer and one step are public for the benchmark (`probes bench` times `train_step`):

    opt = make_optimizer(model, cfg, device)     # AdamW; no decay on biases and norm weights
    sched = make_scheduler(opt, cfg)             # cfg.lr_schedule over cfg.max_steps
    loss = train_step(model, opt, x, y, targets, autocast, cfg.grad_clip); sched.step()
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from probes import rundir, schedules, tasks
from probes.backbones import Backbone, build_backbone, count_parameters, extend_vocabulary, slot_logits
from probes.config import TrainConfig, validate
from probes.errors import UserError
from probes.naming import format_lr  # run names; also probes.train.format_lr, as before
from probes.rundir import (
    POSITION_COLUMNS,
    latest_checkpoint,
    new_record,
    rate,
    restore_record,
    rng_state,
    run_summary,
    save_checkpoint,
    set_rng_state,
    start_run_dir,
    write_json,
    write_parquet,
)
from probes.tasks import Dataset, TokenLayout

# Settings that may differ when a run resumes: where and how it runs, not what it computes.
RESUMABLE_CHANGES = ("out", "device", "eval_batch_size", "checkpoint_every", "scan_backend", "threads")
_NAN_CHECK_EVERY = 10  # steps between checks of the training loss (one host sync each)


# === Names ===


def run_name(cfg: TrainConfig) -> str:
    """`pythia-160m+suffix+n200+lr1e-4+mean+s0`, from the grid values; `+i3`, `+o3`, `+d3` follow
    where init_seed, order_seed or data_seed is not `seed`."""
    model = cfg.model
    if model.startswith(("hf:", "config:")):  # config:DIR, the random twin, becomes config-DIR
        prefix, _, rest = model.partition(":")
        model = f"{prefix}-" + "".join(c if c.isalnum() or c in "-._" else "_" for c in rest).strip("_.")
    seeds = "".join(f"+{tag}{value}" for tag, value in
                    (("i", cfg.init_seed), ("o", cfg.order_seed), ("d", cfg.data_seed)) if value != cfg.seed)
    return f"{model}+{cfg.layout}+n{cfg.n}+lr{format_lr(cfg.lr)}+{cfg.init}+s{cfg.seed}{seeds}"


def run_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.out) if cfg.out is not None else Path("runs") / run_name(cfg)


def inspect_run(cfg: TrainConfig, run: Path | None = None) -> tuple[str, dict | None]:
    """('new' | 'resume' | 'finished', summary) of a text run: rundir.inspect_run in `run` (default
    run_dir(cfg)), where only the RESUMABLE_CHANGES settings may differ on resume."""
    return rundir.inspect_run(cfg, Path(run) if run is not None else run_dir(cfg), RESUMABLE_CHANGES)


# === Data ===


def load_data(cfg: TrainConfig) -> Dataset:
    """The dataset of `data_dir`, or one generated in memory from the seeds (deterministic)."""
    if cfg.data_dir is None:
        return tasks.generate(cfg.data_config())
    ds = tasks.load_dataset(cfg.data_dir)
    if ds.config.n != cfg.n:
        raise UserError(f"dataset {cfg.data_dir} has n={ds.config.n} but the run asks n={cfg.n}; "
                        f"pass --n {ds.config.n}")
    return ds


class BatchOrder:
    """Rows of each training step: epoch e is the permutation drawn from (seed, e).

    rows(step) depends only on (seed, step, batch size, training-set size): a resumed run sees
    exactly the batches an uninterrupted one would.
    """

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._perms[epoch]

    def rows(self, step: int) -> np.ndarray:
        idx = step * self.batch_size + np.arange(self.batch_size)
        epochs, pos = np.divmod(idx, self.size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            mask = epochs == e
            out[mask] = self._perm(int(e))[pos[mask]]
        return out


# === Model ===


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked but CUDA is not available here (allowed: cpu, auto)")
    return torch.device(name)


def resolve_threads(threads: int | str, device: str, models: Sequence[str],
                    environ: Mapping[str, str] = os.environ) -> int | None:
    """The torch CPU thread count a run uses, None to leave torch's own (config key `threads`).

    A count is used as given; 0 is torch's default. "auto" is 1 on a CPU run whose `models`
    (backbone, and a VLM's encoders) are all tiny presets: they run fastest on one thread, and many
    times slower on two when other jobs share the CPU; larger models keep torch's default, which
    their matmuls use. On a GPU, where the CPU only feeds it, "auto" leaves torch's count too. An
    OMP_NUM_THREADS in the environment is the user's choice: "auto" then leaves torch's count,
    which follows it. One thread also makes a CPU run's floats independent of the core count.
    """
    if threads != "auto":
        return int(threads) or None
    if environ.get("OMP_NUM_THREADS"):
        return None
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device.split(":")[0]
    return 1 if kind == "cpu" and all(name.endswith("-tiny") for name in models) else None


@contextlib.contextmanager
def torch_threads(threads: int | str, device: str, models: Sequence[str]) -> Iterator[int]:
    """Run the block with resolve_threads(threads, device, models) torch threads; torch's count
    before is restored afterwards. Yields the count in effect."""
    count = resolve_threads(threads, device, models)
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        if count is not None:
            torch.set_num_threads(before)


def with_threads(cfg: TrainConfig, threads: int | None) -> TrainConfig:
    """`cfg` with `threads` CPU threads where it leaves them to "auto" (a sweep worker's share)."""
    return cfg.model_copy(update={"threads": threads}) if threads and cfg.threads == "auto" else cfg


def end_train_interval(rec: dict, device: torch.device, t_train: float, steps: int) -> float:
    """Seconds of training since `t_train` (once the GPU's queued work is done), added with `steps`
    to the run record's totals: the interval an evaluation closes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.monotonic() - t_train
    rec["train_seconds"] += seconds
    rec["train_steps"] += steps
    return seconds


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if name == "fp32" or (name == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def new_token_names(n: int) -> list[str]:
    return [f"<s_{i}>" for i in range(n)] + ["<out>", "<sep>"]


def choose_scan_backend(model: torch.nn.Module, backend: str) -> str:
    """Give every Mamba mixer in `model` the chosen selective scan (probes.kernels); the name chosen.

    A backend this machine cannot run (triton without CUDA, mamba-ssm not installed) is a UserError.
    """
    from probes.kernels.mamba_mixer import set_scan_backend

    try:
        return set_scan_backend(model, backend)
    except (ValueError, RuntimeError, ImportError) as err:
        raise UserError(f"scan_backend {backend!r}: {err}") from None


def set_scan_backend(bb: Backbone, backend: str) -> str | None:
    """Pick the Mamba selective scan; the name chosen, None for other families."""
    return choose_scan_backend(bb.model, backend) if bb.family == "mamba" else None


def build_model(cfg: TrainConfig, device: torch.device, checkpoint: Path | None) -> Backbone:
    """A fresh backbone with N + 2 new rows, or the one saved in `checkpoint` (exact weights)."""
    names = new_token_names(cfg.n)
    if checkpoint is None:
        bb = build_backbone(cfg.model, cfg.init_seed, device)
        bb.model.float()  # fp32 master weights; autocast handles bf16
        extend_vocabulary(bb, names, cfg.init, cfg.init_seed)
        return bb
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).float().to(device)
    family = {"gpt_neox": "pythia", "mamba": "mamba"}.get(model.config.model_type, model.config.model_type)
    tokenizer = None
    if any((checkpoint / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer  # hf: models keep theirs in every checkpoint

        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    return Backbone(cfg.model, family, model, tokenizer, list(names))


# === Loss and evaluation ===


@dataclass
class Targets:
    """Scored slots of one layout and the target ids at them (answer, then end-of-text)."""

    slots: list[int]
    eos_id: int

    @classmethod
    def of(cls, layout: TokenLayout) -> Targets:
        slots = [layout.answer_slot] + ([layout.answer_slot + 1] if layout.eos_target else [])
        return cls(slots, layout.eos_id)

    def ids(self, answers: torch.Tensor) -> torch.Tensor:
        """(B, len(slots)) target ids."""
        cols = [answers] + [torch.full_like(answers, self.eos_id)] * (len(self.slots) - 1)
        return torch.stack(cols, dim=1)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def compute_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the scored slots: logits (B, S, V), targets (B, S)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)


class HeldOut:
    """The whole held-out set as token ids on the device, encoded once."""

    def __init__(self, layout: TokenLayout, split: tasks.Split, device: torch.device):
        ids, answers = layout.encode(split)
        self.ids = torch.from_numpy(ids.astype(np.int32)).to(device)
        self.answers = torch.from_numpy(answers).to(device)
        self.positions = torch.from_numpy(split.target_position.astype(np.int64)).to(device)
        self.counts = np.bincount(split.target_position.astype(np.int64), minlength=layout.n)
        self.n = layout.n

    def __len__(self) -> int:
        return len(self.answers)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, held: HeldOut, targets: Targets, batch_size: int,
             autocast: torch.dtype | None) -> tuple[float, float, np.ndarray]:
    """(mean loss over scored slots, accuracy, correct per target position) on the whole set."""
    was_training = model.training
    model.eval()
    device = held.ids.device
    correct = torch.zeros(held.n, device=device)
    loss_sum = torch.zeros((), device=device)
    for i in range(0, len(held), batch_size):
        x = held.ids[i:i + batch_size].long()
        answers = held.answers[i:i + batch_size]
        with _autocast(device, autocast):
            logits = slot_logits(model, x, targets.slots)
        loss_sum += compute_loss(logits, targets.ids(answers), reduction="sum")
        ok = (logits[:, 0].argmax(-1) == answers).float()
        correct.index_add_(0, held.positions[i:i + batch_size], ok)  # no host sync
    model.train(was_training)
    correct_np = correct.cpu().numpy().astype(np.int64)
    loss = loss_sum.item() / (len(held) * len(targets.slots))
    return loss, correct_np.sum() / len(held), correct_np


# === Optimizer, schedule, one step ===


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)) or type(module).__name__.endswith(
        ("LayerNorm", "RMSNorm"))


def decay_groups(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(parameters that get weight decay, those that do not): the HF Trainer's rule, no decay on
    biases and on the weights of LayerNorm / RMSNorm modules. Each trainable parameter once, in
    model.parameters() order within each list."""
    no_decay = {id(p) for module in model.modules() if _is_norm(module) for p in module.parameters(recurse=False)}
    no_decay |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) not in no_decay], [p for p in params if id(p) in no_decay]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW at cfg.lr: group 0 decays by cfg.weight_decay, group 1 (biases, norms) does not;
    the fused kernel on CUDA."""
    decay, no_decay = decay_groups(model)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, **({"fused": True} if device.type == "cuda" else {}))


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, start: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """cfg.lr_schedule over cfg.max_steps updates (probes.schedules); `start` > 0 resumes it there."""
    return schedules.build_schedule(opt, cfg.lr_schedule, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio, start,
                                    base_lr=cfg.lr)


def schedule_summary(cfg: TrainConfig) -> dict:
    """The optimizer settings summary.json records."""
    return {"lr_schedule": cfg.lr_schedule, "warmup_steps": cfg.warmup_steps, "warmup_ratio": cfg.warmup_ratio,
            "min_lr_ratio": cfg.min_lr_ratio, "weight_decay": cfg.weight_decay, "schedule_steps": cfg.max_steps,
            "init_seed": cfg.init_seed, "order_seed": cfg.order_seed, "data_seed": cfg.data_seed}


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               targets: Targets, autocast: torch.dtype | None, grad_clip: float | None) -> torch.Tensor:
    """One update on the batch (x, target ids y): forward through the scored slots, loss, backward,
    clipping, opt.step(). The detached loss (no host sync); the caller steps the scheduler."""
    opt.zero_grad(set_to_none=True)
    with _autocast(x.device, autocast):
        logits = slot_logits(model, x, targets.slots)
    loss = compute_loss(logits, y)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach()


def load_optimizer_state(opt: torch.optim.Optimizer, saved: dict, model: torch.nn.Module) -> None:
    """Load a checkpoint's optimizer state; one of a single parameter group (checkpoints made before
    the decay groups) is regrouped onto this optimizer's groups first, parameter by parameter."""
    if len(saved["param_groups"]) == 1 and len(opt.param_groups) > 1:
        index = {id(p): i for i, p in enumerate(model.parameters())}  # the single group's order
        old = saved["param_groups"][0]
        order = [index[id(p)] for group in opt.param_groups for p in group["params"]]
        state = {new: saved["state"][old_i] for new, old_i in enumerate(order) if old_i in saved["state"]}
        groups, start = [], 0
        for group in opt.param_groups:
            settings = {k: v for k, v in old.items() if k != "params"}
            settings["weight_decay"] = group["weight_decay"]
            groups.append({**settings, "params": list(range(start, start + len(group["params"])))})
            start += len(group["params"])
        saved = {"state": state, "param_groups": groups}
    opt.load_state_dict(saved)


# === The run ===

METRIC_COLUMNS = ["step", "examples_seen", "loss", "accuracy", "train_loss", "lr", "train_examples_per_s",
                  "train_tokens_per_s", "eval_examples_per_s", "eval_seconds", "wall_seconds"]


class _Progress:
    """A rich progress bar over steps (or nothing)."""

    def __init__(self, enabled: bool, name: str, total: int, start: int):
        self.bar = None
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

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message, highlight=False, markup=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train_run(cfg: TrainConfig, overwrite: bool = False, progress: bool = True,
              default_threads: int | None = None) -> dict:
    """Train one run to the threshold (or max_steps) and return its summary.

    A new run directory starts from scratch; an unfinished one resumes from its checkpoint; a
    finished one is a UserError unless `overwrite`. The run holds its directory's lock
    (rundir.open_run) for its whole life. torch uses run_threads(...) CPU threads (torch_threads)
    during the run, and config.yaml records the count.
    """
    run = run_dir(cfg)
    # 'new' or 'resume'; a new run's directory is cleared below, once the model and data are known to load
    with rundir.open_run(cfg, run, RESUMABLE_CHANGES, overwrite, log=_stderr) as state:
        with torch_threads(run_threads(cfg, run, state, default_threads), cfg.device, [cfg.model]) as threads:
            return _train_run(cfg.model_copy(update={"threads": threads}), state, progress, threads)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_threads(cfg, run: Path, state: str, default: int | None = None) -> int | str:
    """The `threads` setting a run uses (then resolved by torch_threads): the config's when it names
    one; else, on resume, the count config.yaml records (exact resume: float sums depend on it);
    else `default` (a sweep worker's share) or "auto". A resume with another count than the
    recorded one shows in summary.json (threads_used, bit_reproducible: false)."""
    if cfg.threads != "auto":
        return cfg.threads
    recorded = rundir.recorded_threads(run) if state == "resume" else None
    return recorded or default or "auto"


def _train_run(cfg: TrainConfig, state: str, progress: bool, threads: int) -> dict:
    run = run_dir(cfg)
    found = latest_checkpoint(run) if state == "resume" else None

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = resolve_device(cfg.device)
    autocast = resolve_precision(cfg.precision, device)
    data = load_data(cfg)
    bb = build_model(cfg, device, found[0] if found else None)
    scan = set_scan_backend(bb, cfg.scan_backend)
    if cfg.gradient_checkpointing:
        bb.model.gradient_checkpointing_enable()
    layout = TokenLayout.build(cfg.n, cfg.layout, bb.base_vocab, cfg.tokens, bb.eos_id)
    targets = Targets.of(layout)
    held = HeldOut(layout, data.heldout, device)
    order = BatchOrder(len(data.train), cfg.batch_size, cfg.order_seed)
    model = bb.model
    model.train()
    opt = make_optimizer(model, cfg, device)

    cfg = cfg.model_copy(update={"out": run})
    start_run_dir(run, cfg, state)
    rec = new_record()
    if found is not None:
        ckpt_state = found[1]
        load_optimizer_state(opt, ckpt_state["optimizer"], model)
        set_rng_state(ckpt_state["rng"], device)
        restore_record(rec, ckpt_state, run, METRIC_COLUMNS)
    elif state == "resume":  # killed before its first checkpoint: start again from step 0
        rec["resumed_at"] = [0]
    rundir.note_threads(rec, threads)
    sched = make_scheduler(opt, cfg, rec["step"])
    if found is not None and "scheduler" in found[1]:
        sched.load_state_dict(found[1]["scheduler"])

    info = {"run": run_name(cfg), "device": str(device), "precision": "bf16" if autocast else "fp32",
            "scan_backend": scan, "n_parameters": count_parameters(model), "seq_len": layout.seq_len,
            "eval_size": len(held), "train_size": len(data.train), "threads": threads, **schedule_summary(cfg)}
    bar = _Progress(progress, info["run"], cfg.max_steps, rec["step"])
    if found is not None:
        bar.log(f"resuming {run} from step {rec['step']}")
    t0 = time.monotonic() - rec["wall_seconds"]
    step = rec["step"]
    every = cfg.effective_eval_every
    ckpt_every = cfg.checkpoint_every or every
    last_ckpt = step
    loss_acc = torch.zeros((), device=device)
    loss_steps = 0
    t_train = time.monotonic()

    def summary_now(status: str, message: str = "") -> dict:
        return {
            **run_summary(rec, cfg, status, message, time.monotonic() - t0, kind="probe"),
            "train_tokens_per_s": rate(rec["train_steps"] * cfg.batch_size * layout.seq_len, rec["train_seconds"]),
            "eval_time_fraction": rate(rec["eval_seconds"], rec["eval_seconds"] + rec["train_seconds"]),
            **info,
        }

    def record_eval(step: int, train_loss: float | None, train_seconds: float, train_steps: int) -> float:
        t = time.monotonic()
        loss, acc, correct = evaluate(model, held, targets, cfg.eval_batch_size, autocast)
        dt = time.monotonic() - t
        rec["eval_seconds"] += dt
        rec["eval_examples"] += len(held)
        rec["metrics"].append({
            "step": step, "examples_seen": step * cfg.batch_size, "loss": float(loss), "accuracy": float(acc),
            "train_loss": train_loss, "lr": schedules.lr_of_update(sched, max(step - 1, 0)),
            "train_examples_per_s": rate(train_steps * cfg.batch_size, train_seconds),
            "train_tokens_per_s": rate(train_steps * cfg.batch_size * layout.seq_len, train_seconds),
            "eval_examples_per_s": rate(len(held), dt), "eval_seconds": dt,
            "wall_seconds": time.monotonic() - t0,
        })
        rec["positions"].extend(
            {"step": step, "position": p, "accuracy": float(correct[p] / held.counts[p]) if held.counts[p] else None,
             "count": int(held.counts[p])} for p in range(cfg.n))
        write_parquet(run / "metrics.parquet", rec["metrics"], METRIC_COLUMNS)
        write_parquet(run / "positions.parquet", rec["positions"], POSITION_COLUMNS)
        return float(acc)

    def finish(status: str, message: str = "") -> dict:
        bar.stop()
        summary = summary_now(status, message)
        write_json(run / "summary.json", summary)
        return summary

    def checkpoint() -> None:
        rec["step"], rec["wall_seconds"] = step, time.monotonic() - t0
        save_checkpoint(run, bb, {**rec, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                  "rng": rng_state(device)})

    def final_status() -> str | None:
        last = rec["metrics"][-1]
        if last["accuracy"] >= cfg.threshold:
            return "reached"
        return "not_reached" if last["step"] >= cfg.max_steps else None

    try:
        if not rec["metrics"]:
            record_eval(0, None, 0.0, 0)
            write_json(run / "summary.json", summary_now("running"))
        status = final_status()
        if status is not None:  # killed after its final checkpoint, before the summary
            return finish(status)
        bar.update(step, f"acc {rec['metrics'][-1]['accuracy']:.3f}")
        since_eval = 0
        while step < cfg.max_steps:
            x_np, answers_np = layout.encode(data.train, order.rows(step))
            x = torch.from_numpy(x_np).to(device, non_blocking=True)
            y = targets.ids(torch.from_numpy(answers_np).to(device, non_blocking=True))
            loss_acc += train_step(model, opt, x, y, targets, autocast, cfg.grad_clip)
            sched.step()
            step += 1
            since_eval += 1
            loss_steps += 1
            is_eval = step % every == 0 or step == cfg.max_steps
            if step % _NAN_CHECK_EVERY == 0 or is_eval:
                total = loss_acc.item()
                if not math.isfinite(total):
                    return finish("failed", f"training loss became {total} between steps {step - loss_steps + 1} "
                                            f"and {step} (lr={cfg.lr:g}); the model diverged: try a lower lr")
            bar.update(step)
            if not is_eval:
                continue
            train_seconds = end_train_interval(rec, device, t_train, since_eval)
            acc = record_eval(step, loss_acc.item() / loss_steps, train_seconds, since_eval)
            loss_acc.zero_()
            loss_steps = since_eval = 0
            status = final_status()
            bar.update(step, f"acc {acc:.3f}")
            if status is not None:
                checkpoint()  # the final model
                return finish(status)
            write_json(run / "summary.json", summary_now("running"))
            if step - last_ckpt >= ckpt_every:
                checkpoint()
                last_ckpt = step
            t_train = time.monotonic()
        return finish(final_status() or "not_reached")
    except BaseException:
        bar.stop()  # a crash or Ctrl-C leaves the run `running`: the same command resumes it
        raise


# === Entry point for sweep workers: python -m probes.train --json '{...}' ===


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m probes.train", description="Train one run.")
    parser.add_argument("--json", required=True, help="TrainConfig as JSON")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of a new run where the config says auto (a resume keeps its count)")
    args = parser.parse_args(argv)
    from probes.locks import die_with_parent

    die_with_parent()  # a sweep worker: killed with its sweep, so a rerun never meets it still writing
    try:
        cfg = validate(TrainConfig, json.loads(args.json))
        summary = train_run(cfg, overwrite=args.overwrite, progress=False, default_threads=args.threads)
    except UserError as err:
        print(f"error: {err}", flush=True)
        return 2
    print(json.dumps(summary), flush=True)
    return 1 if summary["status"] == "failed" else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
