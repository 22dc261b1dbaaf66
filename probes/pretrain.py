"""Causal-LM pretraining on a local corpus (issue 15): a backbone the probe can fine-tune as hf:RUN/model.

    summary = pretrain_run(PretrainConfig(model="pythia-tiny", corpus=["docs/"], tokens=2_000_000, out="runs/p"))

A backbone (a BACKBONES preset or a sized `arch`, its vocabulary the tokenizer's) learns next-token
prediction on random packed windows of the corpus (probes.corpus): AdamW (fused on CUDA), linear
warmup then cosine decay to lr x min_lr_ratio, gradient clipping, bf16 autocast on CUDA with fp32
weights, Mamba through probes.kernels. Every `eval_every` steps (and at step 0) it measures the loss
on fixed held-out windows and runs the copy test (probes.copytest).

The run directory has the lifecycle of `probes train` (probes.rundir: resume after a kill, a
finished run is never overwritten silently):

    config.yaml        the PretrainConfig, written first
    metrics.parquet    one row per evaluation: step, tokens, train_loss, heldout_loss, lr, tokens_per_s,
                       wall_seconds
    copy.parquet       one row per evaluation × length × copy: step, length, copy (first | second), loss,
                       accuracy
    summary.json       kind "pretrain", status (running | reached | failed), losses, throughput, corpus
    corpus/            the tokenised corpus (train.npy, heldout.npy, tokenizer/, meta.json) that a
                       resumed run reuses; it carries a .gitignore (hundreds of MB)
    checkpoint/        the latest model, tokenizer and state.pt (optimizer, schedule, RNG, record)
    model/             the final model + tokenizer (save_pretrained, files <= 15 MB): `probes train
                       --model hf:RUN/model` fine-tunes it, `--model config:RUN/model` is its random twin

A finished run's status is `reached` (it reached its token budget). The windows of step s are a
function of (seed, s), so a resumed run reproduces an uninterrupted one (exactly, on CPU).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from probes import copytest, engine, runtime, schema
from probes.backbones import (
    Backbone,
    build_from_config,
    count_parameters,
    custom_config,
    family_of,
    preset_config,
)
from probes.config import PretrainConfig
from probes.corpus import EOS_ID, PAD_ID, Corpus, PackedWindows, build_corpus, byte_tokenizer, heldout_windows
from probes.engine import Evaluation, Interval, RunKind
from probes.errors import UserError
from probes.naming import format_lr
from probes.rundir import rate, reproducibility, write_parquet
from probes.runtime import choose_scan_backend, precision_name

# Settings that may differ when a run resumes: where and how it runs, not what it computes.
RESUMABLE_CHANGES = ("out", "device", "checkpoint_every", "scan_backend", "threads", "log_to")
METRIC_COLUMNS = schema.PRETRAIN_METRIC_COLUMNS
COPY_COLUMNS = ["step", *copytest.COPY_COLUMNS]
MAX_SHARD_SIZE = "15MB"  # every file of model/ fits a 16 MiB limit on copies
_RUN_DIRS = ("corpus", "model", "model.new")  # what a pretraining run writes besides rundir's files


# === Names ===


def format_tokens(tokens: int) -> str:
    """100_000_000 → '100M', 2_500_000 → '2.5M', 65_536 → '65.5K'."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if tokens >= size:
            return f"{tokens / size:.4g}{unit}"
    return str(tokens)


def run_name(cfg: PretrainConfig) -> str:
    """`pythia-d512-l6+byte+t100M+lr1e-3+s0`."""
    return f"{cfg.label}+{cfg.tokenizer}+t{format_tokens(cfg.tokens)}+lr{format_lr(cfg.lr)}+s{cfg.seed}"


def run_dir(cfg: PretrainConfig) -> Path:
    return Path(cfg.out) if cfg.out is not None else Path("runs") / "pretrain" / run_name(cfg)


# === Model ===


def model_config(cfg: PretrainConfig, vocab_size: int):
    """The transformers config of the run's backbone with the tokenizer's vocabulary."""
    if cfg.arch is not None:
        return custom_config(cfg.arch.family, vocab_size, EOS_ID, PAD_ID, **cfg.arch.transformers_kwargs())
    return preset_config(cfg.model, vocab_size, EOS_ID, PAD_ID)


def format_count(n: int) -> str:
    """19_230_000 → '19.2M', 36_480 → '36K'."""
    return f"{n / 1e6:.1f}M" if n >= 10**6 else f"{n / 1e3:.0f}K"


def describe_model(cfg: PretrainConfig) -> str:
    """`pythia-d512-l6: pythia, d=512, 6 layers, vocab 258, 19.2M params` (built on the meta device;
    a BPE vocabulary at its configured size, which training on a small corpus may not reach)."""
    vocab_size = 258 if cfg.tokenizer == "byte" else cfg.vocab_size
    config = model_config(cfg, vocab_size)
    with torch.device("meta"):
        n = count_parameters(build_from_config(config))
    return (f"{cfg.label}: {family_of(config)}, d={config.hidden_size}, {config.num_hidden_layers} layers, "
            f"vocab {vocab_size}, {format_count(n)} params")


def build_model(cfg: PretrainConfig, tokenizer, device: torch.device, checkpoint: Path | None) -> Backbone:
    """Fresh seeded weights of model_config, or the model saved in `checkpoint` (fp32 master weights)."""
    if checkpoint is None:
        model = build_from_config(model_config(cfg, len(tokenizer)), cfg.seed, device)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).float().to(device)
    return Backbone(run_name(cfg), family_of(model.config), model, tokenizer)


def lm_loss(model: torch.nn.Module, x: torch.Tensor, autocast: torch.dtype | None) -> torch.Tensor:
    """Mean next-token cross-entropy of windows x (B, L + 1): inputs x[:, :-1], targets x[:, 1:]."""
    with runtime.autocast(x.device, autocast):
        logits = model(input_ids=x[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())


@torch.inference_mode()
def heldout_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, autocast: torch.dtype | None) -> float:
    """Mean next-token loss over all held-out windows (B, L + 1)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=windows.device)
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size]
        total += lm_loss(model, x, autocast) * len(x)
    model.train(was_training)
    return total.item() / len(windows)


# === Corpus of a run ===


def load_corpus(cfg: PretrainConfig, run: Path, state: str) -> tuple[Corpus, bool]:
    """(corpus, whether it must be saved): a resumed run reuses run/corpus when it is complete."""
    if state == "resume":
        saved = Corpus.load(run / "corpus")
        if saved is not None:
            return saved, False
    corpus = build_corpus(cfg.corpus, cfg.extensions, cfg.max_corpus_bytes, cfg.heldout_fraction,
                          cfg.tokenizer, cfg.vocab_size, cfg.seq_len + 1)
    return corpus, True


# === The run ===


def pretrain_run(cfg: PretrainConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Pretrain to the token budget and return the summary (probes.engine); the same call resumes
    an unfinished run.

    A finished run is a UserError unless `overwrite`. Bad input (a missing or empty corpus, a
    corpus smaller than one window, an unknown tokenizer) is a UserError before anything is written.
    The run holds its directory's lock (rundir.open_run) for its whole life, as `probes train`
    does, and a resume keeps the CPU thread count config.yaml records (runtime.run_threads).
    Without a progress bar, one line per evaluation goes to stderr.
    """
    return engine.train(PretrainKind, cfg, run_dir(cfg), RESUMABLE_CHANGES, [cfg.label], overwrite=overwrite,
                        progress=progress, log=_stderr, lines=_stderr)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class PretrainKind(RunKind):
    """A pretraining run (summary kind `pretrain`) as probes.engine drives it; its goal is the token
    budget, so it ends `reached` (or `failed`)."""

    kind = schema.PRETRAIN
    metric_columns = METRIC_COLUMNS
    has_positions = False
    extra_dirs = _RUN_DIRS
    record_fields: ClassVar[dict[str, list]] = {"copy": []}

    def build(self, found: tuple[Path, dict] | None) -> None:
        cfg, device = self.cfg, self.device
        self.corpus, self.save_corpus = load_corpus(cfg, self.run, self.state)
        self.bb = build_model(cfg, self.corpus.tokenizer, device, found[0] if found else None)
        self.model = self.bb.model
        scan = choose_scan_backend(self.model, cfg.scan_backend) if self.bb.family == "mamba" else None
        self.model.train()
        self.windows = PackedWindows(self.corpus.train, cfg.seq_len, cfg.batch_size, cfg.seed)
        self.held = torch.from_numpy(heldout_windows(self.corpus.heldout, cfg.seq_len, cfg.eval_windows)).to(device)
        self.step_tokens = cfg.batch_size * cfg.seq_len
        self.info = {"kind": self.kind, "run": run_name(cfg), "family": self.bb.family,
                     "n_parameters": count_parameters(self.model), "vocab_size": len(self.corpus.tokenizer),
                     "device": str(device), "precision": precision_name(self.autocast), "scan_backend": scan,
                     "threads": cfg.threads, "corpus": self.corpus.meta, "heldout_windows": len(self.held)}

    def start(self, rec: dict, ckpt: dict | None) -> None:
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        cfg = self.cfg
        if self.save_corpus:
            self.corpus.save(self.run / "corpus")
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                     weight_decay=cfg.weight_decay, fused=self.device.type == "cuda")
        self.sched = get_cosine_with_min_lr_schedule_with_warmup(self.opt, cfg.warmup, cfg.max_steps,
                                                                 min_lr_rate=cfg.min_lr_ratio)
        if ckpt is not None:
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            write_parquet(self.run / "copy.parquet", rec["copy"], COPY_COLUMNS)
        self.rec = rec
        self.last_lr = self.opt.param_groups[0]["lr"]

    def make_step(self) -> Callable[[int], torch.Tensor]:
        model, opt, cfg, device = self.model, self.opt, self.cfg, self.device

        def step(k: int) -> torch.Tensor:
            x = torch.from_numpy(self.windows.batch(k)).to(device, non_blocking=True)
            loss = lm_loss(model, x, self.autocast)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.last_lr = opt.param_groups[0]["lr"]
            opt.step()
            self.sched.step()
            return loss.detach()

        return step

    def evaluate(self, step: int, interval: Interval) -> Evaluation:
        cfg = self.cfg
        loss = heldout_loss(self.model, self.held, cfg.batch_size, self.autocast)
        copies = copytest.copy_test(self.model, cfg.copy_lengths, cfg.copy_batch, cfg.seed, self.autocast, EOS_ID)
        tps = rate(interval.steps * self.step_tokens, interval.seconds)
        row = {"tokens": step * self.step_tokens, "heldout_loss": loss, "tokens_per_s": tps,
               "lr": self.opt.param_groups[0]["lr"] if step == 0 else self.last_lr}  # of the update that made `step`
        self.rec["copy"].extend({"step": step, **r} for r in copies)
        write_parquet(self.run / "copy.parquet", self.rec["copy"], COPY_COLUMNS)
        longest = [r for r in copies if r["length"] == max(cfg.copy_lengths)]
        info = (f"held-out {loss:.3f}, copy@{longest[0]['length']} {longest[0]['loss']:.2f}→{longest[1]['loss']:.2f}"
                + (f", {tps:,.0f} tok/s" if tps else ""))
        return Evaluation(row, [], len(self.held), info)

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}

    def final_status(self, rec: dict) -> str | None:
        return "reached" if rec["metrics"][-1]["step"] >= self.cfg.max_steps else None

    def banner(self) -> str:
        meta, cfg = self.corpus.meta, self.cfg
        return (f"{self.run}: {self.info['family']}, {format_count(self.info['n_parameters'])} params, vocab "
                f"{self.info['vocab_size']}, {cfg.max_steps:,} steps of {self.step_tokens:,} tokens; corpus "
                f"{meta['train_tokens']:,} training + {meta['heldout_tokens']:,} held-out tokens")

    def finish(self, status: str) -> None:
        if status == "reached":
            save_model(self.bb, self.run / "model")

    def summary(self, rec: dict, status: str, message: str, wall_seconds: float) -> dict:
        cfg, rows = self.cfg, rec["metrics"]
        last_step = rows[-1]["step"] if rows else 0
        return {
            **self.info, "status": status, "message": message,
            "threshold": f"its budget of {cfg.tokens:,} tokens",  # how rundir.describe_finished names the goal
            "step_reached": last_step if status == "reached" else None,
            "final_step": last_step, "max_steps": cfg.max_steps, "tokens": cfg.tokens,
            "tokens_seen": last_step * self.step_tokens,
            "final_heldout_loss": rows[-1]["heldout_loss"] if rows else None,
            "best_heldout_loss": min(r["heldout_loss"] for r in rows) if rows else None,
            "final_copy": [r for r in rec["copy"] if rows and r["step"] == last_step], "wall_seconds": wall_seconds,
            "train_tokens_per_s": rate(rec["train_steps"] * self.step_tokens, rec["train_seconds"]),
            "eval_time_fraction": rate(rec["eval_seconds"], rec["eval_seconds"] + rec["train_seconds"]),
            "resumed_at": rec["resumed_at"],
            **reproducibility(rec["threads_used"], self.same_bits()),
        }


def save_model(bb: Backbone, path: Path) -> None:
    """model + tokenizer with save_pretrained (shards <= MAX_SHARD_SIZE), written whole then renamed."""
    _write_whole(path, lambda tmp: (bb.model.save_pretrained(tmp, max_shard_size=MAX_SHARD_SIZE),
                                    bb.tokenizer.save_pretrained(tmp)))


def _write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """`write` into a sibling PATH.new, then replace `path` with it: a reader never sees half a directory."""
    tmp = path.with_name(path.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def save_config(cfg: PretrainConfig, path: Path, overwrite: bool = False) -> None:
    """The run's model config (config.json) and byte tokenizer, saved to `path` without reading the corpus
    or building weights: what `config:PATH` needs for a random twin.

    They are the files of the finished run's RUN/model, so `config:PATH` builds the same twins as
    `config:RUN/model` (tests/test_pretrain.py), for probe runs of the twins that need no pretraining. A
    BPE is trained on the corpus, so only the byte tokenizer can be made here.
    """
    if cfg.tokenizer != "byte":
        raise UserError(f"--save-config needs tokenizer byte, not '{cfg.tokenizer}' (a BPE is trained on the "
                        "corpus: pretrain, then use config:RUN/model)")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")
    tokenizer = byte_tokenizer()
    with torch.device("meta"):  # no weights: only the config that the model's save_pretrained would write
        model = build_from_config(model_config(cfg, len(tokenizer)))
    config = model.config
    config.architectures = [type(model).__name__]
    config.dtype = torch.float32  # the run saves its fp32 master weights
    _write_whole(path, lambda tmp: (config.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))


def read_metrics(run: Path) -> tuple:
    """(metrics, copy) DataFrames of a pretraining run directory."""
    import pandas as pd

    return pd.read_parquet(run / "metrics.parquet"), pd.read_parquet(run / "copy.parquet")


__all__ = [
    "COPY_COLUMNS",
    "METRIC_COLUMNS",
    "RESUMABLE_CHANGES",
    "PretrainKind",
    "build_model",
    "describe_model",
    "heldout_loss",
    "lm_loss",
    "model_config",
    "pretrain_run",
    "read_metrics",
    "run_dir",
    "run_name",
    "save_config",
    "save_model",
]
