"""One VLM run: two-stage training with grounding evaluation, written to a run directory.

    summary = train_vlm(VLMTrainConfig(model="mamba-tiny", connector="vss-l2", out="runs/vlm/x"))

Stage 1 (steps 0 … stage1_steps) trains the connector only (lr `stage1_lr`, 1e-3 in the paper;
`stage1_batch_size` examples a step, 256 in the paper); stage 2 trains connector + LM (lr `lr`,
2e-5; `stage2_batch_size`, 128). Both default to `batch_size`. A step with `micro_batch_size` set
accumulates the gradients of its micro-batches (each weighted by its share of the step's batch):
the same update, in less memory. The examples are read in one seeded stream (epoch e is the
permutation drawn from (seed, e), as probes.runtime.BatchOrder), each step taking the next ones.
Each stage has its own AdamW and its own schedule: linear warmup over `warmup` (3%) of the stage's steps, then cosine decay to 0 (Table 8). The
encoder is always frozen. The loss is each sequence's mean over its answer tokens, averaged over
the batch. Evaluation (step 0, every `eval_every` steps, at the end of each stage) decodes a box
for every held-out example greedily and scores Acc@IoU≥0.5; training stops once it reaches
`threshold`.

The run directory has the text probe's format (SPEC §6; probes.rundir writes and checkpoints it),
so `analysis/` reads VLM runs with the same loaders:

    config.yaml        the VLMTrainConfig, written first
    metrics.parquet    per evaluation: step, examples_seen, stage, loss (held-out, teacher-forced),
                       accuracy (Acc@IoU≥0.5), parse_rate, mean_iou, train_loss, lr, throughput
    positions.parquet  per evaluation × cell: step, position (3×3 cell of the target-box centre,
                       row-major), accuracy, count
    predictions/       step_NNNNNNN.parquet per evaluation: index, expression, target, prediction,
                       parsed, iou, correct, position
    summary.json       status, threshold, step_reached, examples_to_threshold, final_accuracy, ...
    checkpoint/        the LM (save_pretrained) and state.pt (connector, optimizer, RNG, metrics)

The lifecycle is probes.rundir's (open_run: the lock and start_state), as for text runs: the same command resumes an
unfinished run from its checkpoint (RESUMABLE_CHANGES may differ); a finished run, a damaged one or
an unfinished one of another config is a one-line error unless `overwrite`, which starts it again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probes import engine, runtime, schema
from probes.engine import Evaluation, Interval, RunKind
from probes.errors import UserError
from probes.naming import format_lr
from probes.rundir import POSITION_COLUMNS, latest_checkpoint, read_config, write_parquet
from probes.runtime import BatchOrder, precision_name, resolve_device, resolve_precision, scan_backends
from probes.vlm.config import LEGACY_VALUES, VLMEvalConfig, VLMTrainConfig
from probes.vlm.data import RecordSet, SyntheticScenes, read_records, to_pixels
from probes.vlm.grounding import GRID, cell, format_box, score
from probes.vlm.model import VLM, build_vlm, make_batch, max_answer_tokens

RESUMABLE_CHANGES = ("out", "device", "eval_batch_size", "scan_backend", "threads", "micro_batch_size",
                     "checkpoint_every", "log_to")  # how it runs, not what
METRIC_COLUMNS = schema.VLM_METRIC_COLUMNS
HELDOUT_SEED_OFFSET = 1_000_003

# === Names, run directories ===


def run_name(cfg: VLMTrainConfig) -> str:
    """`mamba-tiny+siglip-tiny+vss-l2-bsm+task-agnostic+lr2e-5+s0`."""
    def clean(name: str) -> str:
        return "".join(c if c.isalnum() or c in "-._" else "_" for c in name.replace(":", "-"))

    encoders = "+".join(clean(e) for e in cfg.encoders)
    connector = cfg.connector + (f"-{cfg.scan}" if cfg.scan else "")
    return f"{clean(cfg.model)}+{encoders}+{connector}+{cfg.layout}+lr{format_lr(cfg.lr)}+s{cfg.seed}"


def run_dir(cfg: VLMTrainConfig) -> Path:
    return Path(cfg.out) if cfg.out is not None else Path("runs") / "vlm" / run_name(cfg)


# === Data ===


def load_splits(cfg: VLMTrainConfig):
    """(train, held-out) random-access splits of Examples."""
    d = cfg.data
    if d.kind == "synthetic":
        return (SyntheticScenes(d.seed, d.train_size, d.image_size, d.max_objects),
                SyntheticScenes(d.seed + HELDOUT_SEED_OFFSET, d.eval_size, d.image_size, d.max_objects))
    return (RecordSet(read_records(d.train_file, d.box_format)),
            RecordSet(read_records(d.eval_file, d.box_format, limit=d.eval_size)))


class ExampleStream:
    """Training rows of each step when the stages' batch sizes differ: step k takes the examples
    `cfg.examples_seen(k)` … `cfg.examples_seen(k + 1) - 1` of one stream in which epoch e is the
    permutation drawn from (seed, e). With one batch size it is exactly probes.runtime.BatchOrder."""

    def __init__(self, cfg: VLMTrainConfig, size: int):
        self.cfg, self.size = cfg, size
        self._orders: dict[int, BatchOrder] = {}

    def rows(self, step: int) -> np.ndarray:
        start, stop = self.cfg.examples_seen(step), self.cfg.examples_seen(step + 1)
        size = stop - start
        if start % size == 0:  # aligned: one call at this batch size (always so with one batch size)
            return self._order(size).rows(start // size)
        return np.concatenate([self._order(1).rows(i) for i in range(start, stop)])  # one example at a time

    def state(self) -> dict[str, int]:
        """What a checkpoint records of the stream (with the RNG state)."""
        return {"size": self.size, "seed": self.cfg.seed}

    def _order(self, batch_size: int) -> BatchOrder:
        if batch_size not in self._orders:
            self._orders[batch_size] = BatchOrder(self.size, batch_size, self.cfg.seed)
        return self._orders[batch_size]


def collate(model: VLM, split, rows: np.ndarray | list[int]):
    examples = [split[int(i)] for i in rows]
    pixels = to_pixels([e.image for e in examples], model.image_size)
    batch = make_batch(model.builder, pixels, [e.expression for e in examples], [e.box for e in examples],
                       *model.grid)
    return batch, examples


def preview(cfg: VLMTrainConfig, k: int = 2) -> list[str]:
    """The first `k` training sequences as the model reads them (prompt + answer, rendered:
    markers by name, image slots as `p`); builds the model, so large ones take a while."""
    model = build_vlm(cfg)
    train, _ = load_splits(cfg)
    rows, cols = model.grid
    b = model.builder
    return [b.render(b.prompt(ex.expression, rows, cols) + b.answer(ex.box))
            for ex in (train[i] for i in range(min(k, len(train))))]


# === Schedule ===


def stage_of(cfg: VLMTrainConfig, step: int) -> int:
    """Stage of the update that produces step + 1."""
    return 1 if step < cfg.stage1_steps else 2


def lr_at(cfg: VLMTrainConfig, step: int) -> float:
    """Learning rate of the update that produces step + 1: per-stage warmup, then cosine to 0."""
    if stage_of(cfg, step) == 1:
        peak, start, length = cfg.stage1_lr, 0, cfg.stage1_steps
    else:
        peak, start, length = cfg.lr, cfg.stage1_steps, cfg.max_steps - cfg.stage1_steps
    k = step - start
    warm = math.ceil(cfg.warmup * length)
    if k < warm:
        return peak * (k + 1) / warm
    return peak * 0.5 * (1.0 + math.cos(math.pi * (k - warm) / max(1, length - warm)))


def accumulate(model: VLM, split, rows: np.ndarray, micro: int | None, device: torch.device,
               autocast: torch.dtype | None) -> torch.Tensor:
    """Backward of one step's loss (the batch mean of each sequence's answer loss) over micro-batches
    of at most `micro` rows, each weighted by its share of the batch; returns the step's loss, a
    detached scalar on the device (no host sync)."""
    micro = micro or len(rows)
    total = torch.zeros((), device=device)
    for start in range(0, len(rows), micro):
        part = rows[start:start + micro]
        batch, _ = collate(model, split, part)
        with runtime.autocast(device, autocast):
            loss, _ = model.loss(batch.to(device))
        weighted = loss * (len(part) / len(rows))
        weighted.backward()
        total += weighted.detach().float()
    return total


def trainable(model: VLM, stage: int) -> list[torch.nn.Parameter]:
    """Stage 1: the connector; stage 2: connector + LM. The encoders never train."""
    model.lm.requires_grad_(stage == 2)
    params = list(model.connector.parameters())
    return params + (list(model.lm.parameters()) if stage == 2 else [])


# === Evaluation ===


@torch.no_grad()
def evaluate(model: VLM, split, batch_size: int, device: torch.device, autocast: torch.dtype | None,
             limit: int | None = None) -> tuple[pd.DataFrame, float]:
    """(one row per example, mean teacher-forced answer loss): every example's greedy box, scored."""
    was_training = model.training
    model.eval()
    n = len(split) if limit is None else min(limit, len(split))
    max_new = max_answer_tokens(model.builder)
    rows, loss_sum = [], 0.0
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        batch, examples = collate(model, split, idx)
        batch = batch.to(device)
        with runtime.autocast(device, autocast):
            _, per_seq = model.loss(batch)
            texts = model.generate(batch.pixels, [e.expression for e in examples], max_new)
        loss_sum += float(per_seq.sum())
        for i, ex, text in zip(idx, examples, texts):
            rows.append({"index": i, "expression": ex.expression, "target": format_box(ex.box),
                         "prediction": text, **score(text, ex.box), "position": cell(ex.box)})
    model.train(was_training)
    return pd.DataFrame(rows), loss_sum / max(n, 1)


def summarise(preds: pd.DataFrame) -> tuple[dict, list[dict]]:
    """(accuracy, parse_rate, mean_iou) and per-cell accuracy rows of one evaluation."""
    metrics = {"accuracy": float(preds["correct"].mean()), "parse_rate": float(preds["parsed"].mean()),
               "mean_iou": float(preds["iou"].mean())}
    cells = []
    for p in range(GRID * GRID):
        here = preds[preds["position"] == p]
        cells.append({"position": p, "accuracy": float(here["correct"].mean()) if len(here) else None,
                      "count": len(here)})
    return metrics, cells


# === The run ===


def _encoder_fingerprint(model: VLM) -> float:
    return float(sum(p.detach().double().abs().sum() for p in model.encoders.parameters()))


def legacy_values(run: Path) -> dict:
    """config.LEGACY_VALUES of the keys that the run's config.yaml lacks (written before they
    existed): the values that reproduce what the run did."""
    import yaml

    saved = yaml.safe_load((Path(run) / "config.yaml").read_text()) or {}
    return {k: v for k, v in LEGACY_VALUES.items() if k not in saved}


def load_vlm(cfg: VLMTrainConfig, device: torch.device, found: tuple[Path, dict] | None) -> VLM:
    """A fresh VLM, or the one of checkpoint `found` (LM from save_pretrained, connector from state.pt)."""
    model = build_vlm(cfg, device, lm_checkpoint=found[0] if found else None)
    if found is not None:
        state = found[1]
        model.connector.load_state_dict(state["connector"])
        if not math.isclose(_encoder_fingerprint(model), state["encoder_fingerprint"], rel_tol=1e-5):
            raise UserError("the encoder rebuilt from the run's config differs from the one it was trained "
                            "with (another transformers/timm version?); its features would not match")
    return model


def train_vlm(cfg: VLMTrainConfig, overwrite: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Train one VLM run to the threshold (or max_steps) with probes.engine; returns its summary.
    The run holds its directory's lock for its whole life, and torch uses the thread count of
    probes.runtime.run_threads (a resume keeps the recorded one). `log` hears one line per
    evaluation, the stage change and a resume."""
    log = log or (lambda _msg: None)
    return engine.train(functools.partial(VLMKind, log=log), cfg, run_dir(cfg), RESUMABLE_CHANGES,
                        [cfg.model, *cfg.encoders], overwrite=overwrite, progress=False, log=log, lines=log)


class VLMKind(RunKind):
    """A VLM run (summary kind `vlm`) as probes.engine drives it: two stages, each with its own AdamW."""

    kind = schema.VLM
    metric_columns = METRIC_COLUMNS
    extra_dirs = ("predictions",)

    def __init__(self, cfg: VLMTrainConfig, run: Path, state: str, log: Callable[[str], None]):
        if state == "resume":  # a run from before a key existed continues as it began
            cfg = cfg.model_copy(update=legacy_values(run))
        super().__init__(cfg, run, state)
        self.log = log

    def build(self, found: tuple[Path, dict] | None) -> None:
        cfg = self.cfg
        self.train, self.held = load_splits(cfg)
        self.model = load_vlm(cfg, self.device, found)
        self.bb = self.model.backbone
        scan = scan_backends([self.model.lm, self.model.connector], cfg.scan_backend) or "none"
        self.order = ExampleStream(cfg, len(self.train))
        m = self.model
        self.info = {"run": run_name(cfg), "device": str(self.device), "precision": precision_name(self.autocast),
                     "scan_backend": scan, "n_parameters": sum(p.numel() for p in m.parameters()),
                     "n_trainable_stage1": sum(p.numel() for p in m.connector.parameters()),
                     "image_tokens": m.grid[0] * m.grid[1], "train_size": len(self.train),
                     "eval_size": len(self.held), "threads": cfg.threads}

    def start(self, rec: dict, ckpt: dict | None) -> None:
        self.stage = stage_of(self.cfg, rec["step"])
        self.opt = self.make_optimizer(self.stage, rec["step"])  # once; again only when stage 2 begins
        if ckpt is not None and ckpt["opt_stage"] == self.stage:
            self.opt.load_state_dict(ckpt["optimizer"])
        keep = rec["step"] if ckpt is not None else -1  # predictions written after the checkpoint go
        for f in (self.run / "predictions").glob("step_*.parquet"):
            if int(f.stem[5:]) > keep:
                f.unlink()
        self.model.train()

    def make_optimizer(self, stage: int, step: int) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.AdamW(trainable(self.model, stage), lr=lr_at(cfg, step), weight_decay=cfg.weight_decay)

    def make_step(self) -> Callable[[int], torch.Tensor]:
        cfg = self.cfg

        def step(k: int) -> torch.Tensor:
            if stage_of(cfg, k) != self.stage:  # stage 2 begins: the LM joins, with a fresh optimizer
                self.stage = stage_of(cfg, k)
                self.opt = self.make_optimizer(self.stage, k)
                self.log(f"step {k:>6}: stage 2 (connector + LM, lr {cfg.lr:g})")
            for group in self.opt.param_groups:
                group["lr"] = lr_at(cfg, k)
            self.opt.zero_grad(set_to_none=True)
            loss = accumulate(self.model, self.train, self.order.rows(k), cfg.micro_batch_size, self.device,
                              self.autocast)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], cfg.grad_clip)
            self.opt.step()
            return loss

        return step

    def evaluate(self, step: int, interval: Interval) -> Evaluation:
        preds, loss = evaluate(self.model, self.held, self.cfg.eval_batch_size, self.device, self.autocast)
        metrics, cells = summarise(preds)
        (self.run / "predictions").mkdir(exist_ok=True)
        write_parquet(self.run / "predictions" / f"step_{step:07d}.parquet", preds.to_dict("records"),
                      list(preds.columns))
        stage = stage_of(self.cfg, max(step - 1, 0))
        row = {"stage": stage, "loss": loss, **metrics, "lr": lr_at(self.cfg, max(step - 1, 0))}
        info = (f"stage {stage}: Acc@0.5 {metrics['accuracy']:.3f}, parsed {metrics['parse_rate']:.0%}, "
                f"mIoU {metrics['mean_iou']:.3f}, held-out loss {loss:.4f}")
        return Evaluation(row, cells, len(preds), info)

    def state_dict(self) -> dict:
        return {"connector": self.model.connector.state_dict(), "optimizer": self.opt.state_dict(),
                "opt_stage": self.stage, "encoder_fingerprint": _encoder_fingerprint(self.model)}

    @property
    def eval_every(self) -> int:
        return self.cfg.eval_every

    @property
    def boundaries(self) -> tuple[int, ...]:
        return (self.cfg.stage1_steps,)

    def examples_seen(self, step: int) -> int:
        return self.cfg.examples_seen(step)

    def hyper(self, step: int) -> tuple[float, float]:
        return lr_at(self.cfg, step), self.cfg.weight_decay

    def summary(self, rec: dict, status: str, message: str, wall_seconds: float) -> dict:
        return {**super().summary(rec, status, message, wall_seconds), "stage1_steps": self.cfg.stage1_steps,
                **self.info}


# === Evaluating a trained run ===


def evaluate_run(ecfg: VLMEvalConfig, log: Callable[[str], None] | None = None) -> dict:
    """Score a run's latest checkpoint on its held-out split (or on `eval_file`); writes predictions."""
    log = log or (lambda _msg: None)
    run = Path(ecfg.run)
    cfg = read_config(run, VLMTrainConfig, hint="")
    if cfg is None:
        raise UserError(f"{run} holds no VLM run (no config.yaml)")
    cfg = cfg.model_copy(update=legacy_values(run))
    found = latest_checkpoint(run)
    if found is None:
        raise UserError(f"{run} has no checkpoint yet (train it with `probes vlm train`)")
    device = resolve_device(ecfg.device)
    autocast = resolve_precision(cfg.precision, device)
    if ecfg.eval_file is not None:
        split = RecordSet(read_records(ecfg.eval_file, ecfg.box_format, limit=ecfg.eval_size))
        source = str(ecfg.eval_file)
    else:
        split = load_splits(cfg)[1]
        source = "the run's held-out split"
    model = load_vlm(cfg, device, found)
    scan_backends([model.lm, model.connector], cfg.scan_backend)
    preds, loss = evaluate(model, split, ecfg.batch_size or cfg.eval_batch_size, device, autocast, ecfg.eval_size)
    metrics, _ = summarise(preds)
    out = Path(ecfg.out) if ecfg.out is not None else run / "eval" / "predictions.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    preds.to_json(out, orient="records", lines=True)
    result = {"run": str(run), "step": int(found[1]["step"]), "data": source, "n": len(preds),
              "loss": loss, **metrics, "predictions": str(out)}
    log(f"{run} at step {result['step']} on {source}: Acc@0.5 {metrics['accuracy']:.3f} (n={len(preds)}), "
        f"parsed {metrics['parse_rate']:.0%}, mIoU {metrics['mean_iou']:.3f}; predictions in {out}")
    return result


__all__ = [
    "METRIC_COLUMNS",
    "POSITION_COLUMNS",
    "ExampleStream",
    "VLMKind",
    "accumulate",
    "evaluate",
    "evaluate_run",
    "legacy_values",
    "load_splits",
    "load_vlm",
    "lr_at",
    "preview",
    "run_dir",
    "run_name",
    "stage_of",
    "summarise",
    "train_vlm",
]
