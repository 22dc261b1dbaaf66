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

import contextlib
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from probes import copytest, rundir
from probes.backbones import (
    Backbone,
    build_from_config,
    count_parameters,
    custom_config,
    family_of,
    preset_config,
)
from probes.config import PretrainConfig
from probes.corpus import EOS_ID, PAD_ID, Corpus, PackedWindows, build_corpus, heldout_windows
from probes.rundir import (
    latest_checkpoint,
    new_record,
    rate,
    restore_record,
    rng_state,
    save_checkpoint,
    set_rng_state,
    start_run_dir,
    write_json,
    write_parquet,
)
from probes.train import (
    choose_scan_backend,
    end_train_interval,
    format_lr,
    resolve_device,
    resolve_precision,
    run_threads,
    torch_threads,
)

# Settings that may differ when a run resumes: where and how it runs, not what it computes.
RESUMABLE_CHANGES = ("out", "device", "checkpoint_every", "scan_backend", "threads")
METRIC_COLUMNS = ["step", "tokens", "train_loss", "heldout_loss", "lr", "tokens_per_s", "wall_seconds"]
COPY_COLUMNS = ["step", *copytest.COPY_COLUMNS]
MAX_SHARD_SIZE = "15MB"  # every file of model/ fits a 16 MiB limit on copies
_NAN_CHECK_EVERY = 10  # steps between checks of the training loss (one host sync each)
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
    ctx = torch.autocast(x.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with ctx:
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


class _Bar:
    """A rich progress bar over steps with a free text field; without it, one log line per evaluation
    on stderr (for runs in the background)."""

    def __init__(self, enabled: bool, name: str, total: int, start: int):
        self.bar, self.total = None, total
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=Console(stderr=True))
            self.task = self.bar.add_task(name, total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, info: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, **({"info": info} if info is not None else {}))
        elif info is not None:
            self.log(f"step {step:,}/{self.total:,}: {info}")

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message, highlight=False, markup=False)
        else:
            print(message, file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def pretrain_run(cfg: PretrainConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Pretrain to the token budget and return the summary; the same call resumes an unfinished run.

    A finished run is a UserError unless `overwrite`. Bad input (a missing or empty corpus, a
    corpus smaller than one window, an unknown tokenizer) is a UserError before anything is written.
    The run holds its directory's lock (rundir.open_run) for its whole life, as `probes train`
    does, and a resume keeps the CPU thread count config.yaml records (train.run_threads).
    """
    run = run_dir(cfg)
    with rundir.open_run(cfg, run, RESUMABLE_CHANGES, overwrite, log=_stderr) as state:
        with torch_threads(run_threads(cfg, run, state), cfg.device, [cfg.label]) as threads:
            return _pretrain(cfg.model_copy(update={"threads": threads}), state, progress, threads)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pretrain(cfg: PretrainConfig, state: str, progress: bool, threads: int) -> dict:
    from transformers import get_cosine_with_min_lr_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    run = run_dir(cfg)
    found = latest_checkpoint(run) if state == "resume" else None
    device = resolve_device(cfg.device)
    autocast = resolve_precision(cfg.precision, device)
    corpus, save_corpus = load_corpus(cfg, run, state)
    bb = build_model(cfg, corpus.tokenizer, device, found[0] if found else None)
    model = bb.model
    scan = choose_scan_backend(model, cfg.scan_backend) if bb.family == "mamba" else None
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, cfg.warmup, cfg.max_steps, min_lr_rate=cfg.min_lr_ratio)

    cfg = cfg.model_copy(update={"out": run})
    start_run_dir(run, cfg, state, extra_dirs=_RUN_DIRS)
    if save_corpus:
        corpus.save(run / "corpus")
    rec = {**new_record(), "copy": []}
    if found is not None:
        ckpt = found[1]
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], device)
        restore_record(rec, ckpt, run, METRIC_COLUMNS)
        (run / "positions.parquet").unlink(missing_ok=True)  # restore_record writes one; the probe's, not ours
        write_parquet(run / "copy.parquet", rec["copy"], COPY_COLUMNS)
    elif state == "resume":  # killed before its first checkpoint: start again from step 0
        rec["resumed_at"] = [0]
    rundir.note_threads(rec, threads)

    windows = PackedWindows(corpus.train, cfg.seq_len, cfg.batch_size, cfg.seed)
    held = torch.from_numpy(heldout_windows(corpus.heldout, cfg.seq_len, cfg.eval_windows)).to(device)
    step_tokens = cfg.batch_size * cfg.seq_len
    info = {"kind": "pretrain", "run": run_name(cfg), "family": bb.family, "n_parameters": count_parameters(model),
            "vocab_size": len(corpus.tokenizer), "device": str(device), "precision": "bf16" if autocast else "fp32",
            "scan_backend": scan, "threads": threads, "corpus": corpus.meta, "heldout_windows": len(held)}
    bar = _Bar(progress, info["run"], cfg.max_steps, rec["step"])
    bar.log(f"{run}: {info['family']}, {format_count(info['n_parameters'])} params, vocab {info['vocab_size']}, "
            f"{cfg.max_steps:,} steps of {step_tokens:,} tokens; corpus {corpus.meta['train_tokens']:,} training + "
            f"{corpus.meta['heldout_tokens']:,} held-out tokens")
    if found is not None:
        bar.log(f"resuming {run} from step {rec['step']}")
    t0 = time.monotonic() - rec["wall_seconds"]
    step = rec["step"]
    every = cfg.effective_eval_every
    ckpt_every = cfg.checkpoint_every or every
    last_ckpt = step
    loss_acc = torch.zeros((), device=device)
    loss_steps = since_eval = 0
    last_lr = opt.param_groups[0]["lr"]
    t_train = time.monotonic()

    def summary_now(status: str, message: str = "") -> dict:
        rows = rec["metrics"]
        last_copy = [r for r in rec["copy"] if rows and r["step"] == rows[-1]["step"]]
        return {
            **info, "status": status, "message": message,
            "threshold": f"its budget of {cfg.tokens:,} tokens",  # how rundir.describe_finished names the goal
            "step_reached": rows[-1]["step"] if status == "reached" else None,
            "final_step": rows[-1]["step"] if rows else 0, "max_steps": cfg.max_steps, "tokens": cfg.tokens,
            "tokens_seen": (rows[-1]["step"] if rows else 0) * step_tokens,
            "final_heldout_loss": rows[-1]["heldout_loss"] if rows else None,
            "best_heldout_loss": min(r["heldout_loss"] for r in rows) if rows else None,
            "final_copy": last_copy, "wall_seconds": time.monotonic() - t0,
            "train_tokens_per_s": rate(rec["train_steps"] * step_tokens, rec["train_seconds"]),
            "eval_time_fraction": rate(rec["eval_seconds"], rec["eval_seconds"] + rec["train_seconds"]),
            "resumed_at": rec["resumed_at"],
            "threads_used": rec["threads_used"], "bit_reproducible": len(set(rec["threads_used"])) <= 1,
        }

    def record_eval(step: int, train_loss: float | None, train_seconds: float, train_steps: int) -> str:
        t = time.monotonic()
        loss = heldout_loss(model, held, cfg.batch_size, autocast)
        copies = copytest.copy_test(model, cfg.copy_lengths, cfg.copy_batch, cfg.seed, autocast, EOS_ID)
        rec["eval_seconds"] += time.monotonic() - t
        rec["eval_examples"] += len(held)
        rec["metrics"].append({
            "step": step, "tokens": step * step_tokens, "train_loss": train_loss, "heldout_loss": loss,
            "lr": opt.param_groups[0]["lr"] if step == 0 else last_lr,  # of the update that made `step`
            "tokens_per_s": rate(train_steps * step_tokens, train_seconds), "wall_seconds": time.monotonic() - t0,
        })
        rec["copy"].extend({"step": step, **r} for r in copies)
        write_parquet(run / "metrics.parquet", rec["metrics"], METRIC_COLUMNS)
        write_parquet(run / "copy.parquet", rec["copy"], COPY_COLUMNS)
        longest = [r for r in copies if r["length"] == max(cfg.copy_lengths)]
        tps = rate(train_steps * step_tokens, train_seconds)
        return (f"held-out {loss:.3f}, copy@{longest[0]['length']} {longest[0]['loss']:.2f}→{longest[1]['loss']:.2f}"
                + (f", {tps:,.0f} tok/s" if tps else ""))

    def checkpoint() -> None:
        rec["step"], rec["wall_seconds"] = step, time.monotonic() - t0
        save_checkpoint(run, bb, {**rec, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                  "rng": rng_state(device)})

    def finish(status: str, message: str = "") -> dict:
        bar.stop()
        if status == "reached":
            save_model(bb, run / "model")
        summary = summary_now(status, message)
        write_json(run / "summary.json", summary)
        return summary

    try:
        if not rec["metrics"]:
            bar.update(step, record_eval(0, None, 0.0, 0))
            write_json(run / "summary.json", summary_now("running"))
        if step >= cfg.max_steps:  # killed after its final checkpoint, before the summary
            return finish("reached")
        while step < cfg.max_steps:
            x = torch.from_numpy(windows.batch(step)).to(device, non_blocking=True)
            loss = lm_loss(model, x, autocast)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            last_lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            step += 1
            since_eval += 1
            loss_acc += loss.detach()
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
            bar.update(step, record_eval(step, loss_acc.item() / loss_steps, train_seconds, since_eval))
            loss_acc.zero_()
            loss_steps = since_eval = 0
            if step == cfg.max_steps or step - last_ckpt >= ckpt_every:
                checkpoint()
                last_ckpt = step
            if step < cfg.max_steps:
                write_json(run / "summary.json", summary_now("running"))
            t_train = time.monotonic()
        return finish("reached")
    except BaseException:
        bar.stop()  # a crash or Ctrl-C leaves the run `running`: the same command resumes it
        raise


def save_model(bb: Backbone, path: Path) -> None:
    """model + tokenizer with save_pretrained (shards <= MAX_SHARD_SIZE), written whole then renamed."""
    tmp = path.with_name(path.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    bb.model.save_pretrained(tmp, max_shard_size=MAX_SHARD_SIZE)
    bb.tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def read_metrics(run: Path) -> tuple:
    """(metrics, copy) DataFrames of a pretraining run directory."""
    import pandas as pd

    return pd.read_parquet(run / "metrics.parquet"), pd.read_parquet(run / "copy.parquet")


__all__ = ["COPY_COLUMNS", "METRIC_COLUMNS", "RESUMABLE_CHANGES", "build_model", "describe_model", "heldout_loss",
           "lm_loss", "model_config", "pretrain_run", "read_metrics", "run_dir", "run_name", "save_model"]
