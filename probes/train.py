"""One run (SPEC §2, §6): AdamW to a held-out threshold, written to a run directory as it goes.

    summary = train_run(TrainConfig(model="pythia-tiny", n=8, lr=1e-3, max_steps=2000, out="runs/x"))

The loop evaluates the WHOLE held-out set at step 0 and every `eval_every` steps (default 1% of
`max_steps`), logs accuracy per target position, and stops as soon as accuracy >= `threshold`.
Only the 1–2 scored slots ever reach the LM head (`slot_logits`), in training and in evaluation.
The loop is probes.engine's (one for every kind of run); this module is the text kind (TextKind):
its model and data, its step (TextKind.make_step) and its evaluation.

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

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probes import engine, graphs, rundir, runtime, schedules, schema, tasks
from probes.backbones import (
    Backbone,
    build_backbone,
    compute_loss,
    count_parameters,
    extend_vocabulary,
    family_of,
    slot_logits,
)
from probes.config import TrainConfig
from probes.engine import Evaluation, Interval, RunKind
from probes.errors import UserError
from probes.naming import format_lr  # run names; also probes.train.format_lr, as before
from probes.rundir import rate, start_run_dir  # noqa: F401 - start_run_dir: as before
from probes.runtime import (  # noqa: F401 - re-exported: where callers found them before probes.runtime
    BatchOrder,
    choose_scan_backend,
    precision_name,
    resolve_device,
    resolve_precision,
    resolve_threads,
    run_threads,
    torch_threads,
    with_threads,
)
from probes.tasks import Dataset, TokenLayout

# Settings that may differ when a run resumes: where and how it runs, not what it computes.
RESUMABLE_CHANGES = ("out", "device", "eval_batch_size", "checkpoint_every", "scan_backend", "threads", "log_to",
                     "cuda_graphs")


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


# === Model ===


def new_token_names(n: int) -> list[str]:
    return [f"<s_{i}>" for i in range(n)] + ["<out>", "<sep>"]


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
    family = family_of(model.config)
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
        with runtime.autocast(device, autocast):
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
    with runtime.autocast(x.device, autocast):
        logits = slot_logits(model, x, targets.slots)
    loss = compute_loss(logits, y)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach()


def make_train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig,
                    device: torch.device) -> graphs.TrainStep:
    """`step(x, y, targets) -> detached loss`: train_step with the run's autocast and clipping, or,
    with cfg.cuda_graphs on CUDA, the same step captured once and replayed (probes.graphs)."""
    autocast = resolve_precision(cfg.precision, device)
    if cfg.cuda_graphs and device.type == "cuda":
        return graphs.GraphedTrainStep(model, opt, autocast, cfg.grad_clip)
    return functools.partial(train_step, model, opt, autocast=autocast, grad_clip=cfg.grad_clip)


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

METRIC_COLUMNS = schema.PROBE_METRIC_COLUMNS


def train_run(cfg: TrainConfig, overwrite: bool = False, progress: bool = True,
              default_threads: int | None = None) -> dict:
    """Train one run to the threshold (or max_steps) and return its summary (probes.engine).

    A new run directory starts from scratch; an unfinished one resumes from its checkpoint; a
    finished one is a UserError unless `overwrite`. The run holds its directory's lock
    (rundir.open_run) for its whole life. torch uses run_threads(...) CPU threads (torch_threads)
    during the run, and config.yaml records the count.
    """
    return engine.train(TextKind, cfg, run_dir(cfg), RESUMABLE_CHANGES, [cfg.model], overwrite=overwrite,
                        progress=progress, log=_stderr, default_threads=default_threads)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TextKind(RunKind):
    """A text probe run (summary kind `probe`) as probes.engine drives it."""

    kind = schema.PROBE
    metric_columns = METRIC_COLUMNS

    def build(self, found: tuple[Path, dict] | None) -> None:
        cfg, device = self.cfg, self.device
        self.data = load_data(cfg)
        self.bb = build_model(cfg, device, found[0] if found else None)
        scan = set_scan_backend(self.bb, cfg.scan_backend)
        if cfg.gradient_checkpointing:
            self.bb.model.gradient_checkpointing_enable()
        self.layout = TokenLayout.build(cfg.n, cfg.layout, self.bb.base_vocab, cfg.tokens, self.bb.eos_id)
        self.targets = Targets.of(self.layout)
        self.held = HeldOut(self.layout, self.data.heldout, device)
        self.order = BatchOrder(len(self.data.train), cfg.batch_size, cfg.order_seed)
        self.model = self.bb.model
        self.model.train()
        self.info = {"run": run_name(cfg), "device": str(device), "precision": precision_name(self.autocast),
                     "scan_backend": scan, "n_parameters": count_parameters(self.model),
                     "seq_len": self.layout.seq_len, "eval_size": len(self.held), "train_size": len(self.data.train),
                     "threads": cfg.threads, **schedule_summary(cfg)}

    def start(self, rec: dict, ckpt: dict | None) -> None:
        self.opt = make_optimizer(self.model, self.cfg, self.device)
        if ckpt is not None:
            load_optimizer_state(self.opt, ckpt["optimizer"], self.model)
        self.sched = make_scheduler(self.opt, self.cfg, rec["step"])
        if ckpt is not None and "scheduler" in ckpt:
            self.sched.load_state_dict(ckpt["scheduler"])

    def make_step(self) -> Callable[[int], torch.Tensor]:
        """The update of one step: THE place where the step function is chosen (make_train_step: eager or
        a captured CUDA graph); it must return the detached loss and step the schedule, as this one does."""
        targets, layout, device = self.targets, self.layout, self.device
        update = make_train_step(self.model, self.opt, self.cfg, device)

        def step(k: int) -> torch.Tensor:
            x_np, answers_np = layout.encode(self.data.train, self.order.rows(k))
            x = torch.from_numpy(x_np).to(device, non_blocking=True)
            y = targets.ids(torch.from_numpy(answers_np).to(device, non_blocking=True))
            loss = update(x, y, targets)
            self.sched.step()
            return loss

        return step

    def evaluate(self, step: int, interval: Interval) -> Evaluation:
        held = self.held
        loss, acc, correct = evaluate(self.model, held, self.targets, self.cfg.eval_batch_size, self.autocast)
        row = {"loss": float(loss), "accuracy": float(acc), "lr": schedules.lr_of_update(self.sched, max(step - 1, 0)),
               "train_tokens_per_s": rate(interval.examples * self.layout.seq_len, interval.seconds)}
        positions = [{"position": p, "accuracy": float(correct[p] / held.counts[p]) if held.counts[p] else None,
                      "count": int(held.counts[p])} for p in range(self.cfg.n)]
        return Evaluation(row, positions, len(held), f"acc {acc:.3f}")

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}

    def summary(self, rec: dict, status: str, message: str, wall_seconds: float) -> dict:
        return {**super().summary(rec, status, message, wall_seconds),
                "train_tokens_per_s": rate(rec["train_examples"] * self.layout.seq_len, rec["train_seconds"]),
                "eval_time_fraction": rate(rec["eval_seconds"], rec["eval_seconds"] + rec["train_seconds"]),
                **self.info}
