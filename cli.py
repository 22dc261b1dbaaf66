"""The `probes` command: a typer app that only wires configs to library functions.

Every command takes `--config FILE.yaml` plus flags; flags given on the command line win over
the file, and every flag's default is the config's default. A user mistake (a `UserError` or an
invalid config) prints one line and exits with code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from probes.config import DataConfig, load_config
from probes.console import console, flags_given, out_console, user_errors
from probes.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Synthetic grounding probes for Transformer and Mamba backbones.")


@app.callback()
def _root() -> None:
    """Synthetic grounding probes for Transformer and Mamba backbones."""


ConfigOpt = typer.Option(None, "--config", help="YAML config file; flags given here win over it.")
_D = DataConfig.model_fields


# === generate ===


@app.command()
@user_errors
def generate(
    ctx: typer.Context,
    n: int = typer.Option(_D["n"].default, "--n", help="Number of context tokens N (2 … 32766)."),
    layout: str = typer.Option(_D["layout"].default, help="suffix | prefix."),
    train_size: int = typer.Option(_D["train_size"].default, help="Training examples (>= N)."),
    eval_size: int = typer.Option(_D["eval_size"].default, help="Held-out examples (>= N)."),
    seed: int = typer.Option(_D["seed"].default, help="Seed of the training set."),
    heldout_seed: Optional[int] = typer.Option(None, help="Seed of the held-out set [default: seed + 1000003]."),
    out: Path = typer.Option(Path("data"), help="Output directory: train.npz, heldout.npz, meta.json."),
    preview: int = typer.Option(0, help="Print this many rendered training examples."),
    overwrite: bool = typer.Option(False, help="Replace a different dataset already in --out."),
    from_paper: Optional[Path] = typer.Option(None, help="Convert the paper's released files (HF dataset "
                                              "gpantaz/vl-mamba-synthetic: a directory or one of its "
                                              "*_synthetic_vg_seqlenN.json) instead of generating."),
    paper_heldout: str = typer.Option("validation", help="With --from-paper: the paper's split that becomes "
                                      "the held-out set: validation | test."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Generate a suffix or prefix grounding dataset (model-independent index arrays), or convert the paper's."""
    from probes import tasks

    keys = {k: k for k in ("n", "layout", "train_size", "eval_size", "seed", "heldout_seed")}
    if preview < 0:
        raise UserError(f"--preview {preview}: allowed: 0 or more examples")
    if from_paper is not None:
        _generate_from_paper(ctx, from_paper, out, paper_heldout, overwrite, preview, config)
        return
    cfg = load_config(DataConfig, config, flags_given(ctx, keys))
    with console.status("generating") as status:
        ds = tasks.generate_into(cfg, out, overwrite, status=lambda msg: status.update(msg))
    if ds is None:
        console.print(f"{out} already holds this dataset; nothing to do.", markup=False)
        ds = tasks.load_dataset(out) if preview else None
    else:
        console.print(
            f"wrote {out}: {cfg.train_size:,} train + {cfg.eval_size:,} held-out, n={cfg.n}, "
            f"layout={cfg.layout}; held-out shares {ds.shared_pairs} (context, query) pairs with "
            f"training ({ds.resampled} training rows redrawn)", markup=False
        )
    for line in tasks.preview(ds.train, cfg.layout, preview) if ds else []:
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)


def _generate_from_paper(ctx: typer.Context, source: Path, out: Path, heldout: str, overwrite: bool,
                         preview: int, config: Optional[Path]) -> None:
    from probes import locks, paper_data, tasks

    fixed = [k for k in ("train_size", "eval_size", "seed", "heldout_seed") if flags_given(ctx, {k: k})]
    if fixed or config is not None:
        raise UserError(f"--from-paper takes sizes and data from the paper's files; drop "
                        f"--{(fixed[0] if fixed else 'config').replace('_', '-')}")
    given = flags_given(ctx, {"n": "n", "layout": "layout"})
    with console.status(f"reading {source}"):
        ds, origin = paper_data.import_paper(source, given.get("n"), given.get("layout", "suffix"), heldout)
    with locks.hold(out, what="dataset"):  # one writer per --out, as `generate` (probes.tasks.generate_into)
        meta = tasks.read_meta(out) if out.is_dir() else None
        if tasks.check_out_dir(out, ds.config, overwrite) and all(meta.get(k) == v for k, v in origin.items()):
            console.print(f"{out} already holds this dataset; nothing to do.", markup=False)
        else:
            if meta is not None and not overwrite:
                raise UserError(f"--out {out} already holds a different dataset; choose another --out or pass --overwrite")
            tasks.save_dataset(ds, out)
            paper_data.write_source(out, origin)
            (lo, hi), (hlo, hhi) = paper_data.balance(ds.train), paper_data.balance(ds.heldout)
            console.print(
                f"wrote {out} from the paper's files: {len(ds.train):,} train + {len(ds.heldout):,} held-out "
                f"({heldout}), n={ds.config.n}, layout={ds.config.layout}; examples per target position: "
                f"train {lo:,}–{hi:,}, held-out {hlo:,}–{hhi:,}; held-out shares {ds.shared_pairs} (context, query) "
                f"pairs with training (kept as released)", markup=False)
    for line in tasks.preview(ds.train, ds.config.layout, preview):
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)


# === train / sweep ===

from probes.config import THREADS_HELP, SweepConfig, TokenConfig, TrainConfig

_T = TrainConfig.model_fields
_TRAIN_KEYS = ("model", "n", "layout", "lr", "init", "seed", "max_steps", "batch_size", "threshold", "eval_every",
               "out", "data_dir", "train_size", "eval_size", "data_seed", "heldout_seed", "weight_decay", "warmup",
               "init_seed", "order_seed", "lr_schedule", "warmup_ratio", "min_lr_ratio",
               "grad_clip", "device", "precision", "scan_backend", "gradient_checkpointing", "eval_batch_size",
               "checkpoint_every", "threads")


def _describe_summary(run: Path, s: dict) -> str:
    status = s["status"]
    if status == "reached":
        head = f"reached {s['threshold']} at step {s['step_reached']:,} ({s['examples_to_threshold']:,} examples)"
    elif status == "not_reached":
        head = f"did not reach {s['threshold']} in {s['max_steps']:,} steps (final accuracy {s['final_accuracy']:.3f})"
    else:
        head = f"failed: {s['message']}"
    rates = ", ".join(f"{label} {s[key]:,.0f} ex/s" for label, key in
                      (("train", "train_examples_per_s"), ("eval", "eval_examples_per_s")) if s.get(key))
    return f"{run}: {head}; {s['wall_seconds']:.1f} s" + (f"; {rates}" if rates else "")


@app.command()
@user_errors
def train(
    ctx: typer.Context,
    model: str = typer.Option(_T["model"].default, help="pythia-{tiny,14m,70m,160m,410m,1b,1.4b,2.8b}, "
                              "mamba-{tiny,130m,370m,790m,1.4b,2.8b} (random init) or hf:ID_OR_PATH."),
    n: int = typer.Option(_T["n"].default, "--n", help="Number of context tokens N."),
    layout: str = typer.Option(_T["layout"].default, help="suffix | prefix."),
    lr: float = typer.Option(_T["lr"].default, help="AdamW learning rate."),
    init: str = typer.Option(_T["init"].default, help="New embedding rows: default | mean | normal."),
    seed: int = typer.Option(_T["seed"].default, help="Seed of model init, new rows, batch order and data "
                             "(the default of the three seeds below)."),
    init_seed: Optional[int] = typer.Option(None, help="Seed of the model init and new rows [default: seed]."),
    order_seed: Optional[int] = typer.Option(None, help="Seed of the batch order [default: seed]."),
    max_steps: int = typer.Option(_T["max_steps"].default, help="Optimizer steps at most."),
    batch_size: int = typer.Option(_T["batch_size"].default, help="Examples per step."),
    threshold: float = typer.Option(_T["threshold"].default, help="Stop when held-out accuracy >= this."),
    eval_every: Optional[int] = typer.Option(None, help="Steps between evaluations [default: 1% of max steps]."),
    out: Optional[Path] = typer.Option(None, help="Run directory [default: runs/<run name>]."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset from `probes generate` [default: generate "
                                            "in memory from the data seed]."),
    train_size: int = typer.Option(_T["train_size"].default, help="Training examples (when generated)."),
    eval_size: int = typer.Option(_T["eval_size"].default, help="Held-out examples (when generated)."),
    data_seed: Optional[int] = typer.Option(None, help="Seed of the training set, when generated [default: seed]."),
    heldout_seed: Optional[int] = typer.Option(None, help="Seed of the held-out set [default: data seed + 1000003]."),
    answer_only: bool = typer.Option(False, "--answer-only", help="Loss on the answer alone "
                                     "[default: answer and end-of-text]."),
    answer_offset: int = typer.Option(TokenConfig.model_fields["answer_offset"].default,
                                      help="answer(p) = vocabulary id p + this."),
    weight_decay: float = typer.Option(_T["weight_decay"].default, help="AdamW weight decay (not on biases "
                                       "and norm weights)."),
    lr_schedule: str = typer.Option(_T["lr_schedule"].default, help="constant | linear | cosine (over max steps)."),
    warmup: int = typer.Option(_T["warmup"].default, help="Learning-rate warmup steps."),
    warmup_ratio: Optional[float] = typer.Option(None, help="Warmup as a fraction of max steps, in [0, 1) "
                                                 "(instead of --warmup)."),
    min_lr_ratio: float = typer.Option(_T["min_lr_ratio"].default, help="Floor of the linear and cosine decay, "
                                       "as a fraction of lr."),
    grad_clip: float = typer.Option(_T["grad_clip"].default, help="Gradient-norm clipping; 0 turns it off."),
    device: str = typer.Option(_T["device"].default, help="auto | cpu | cuda[:i]."),
    precision: str = typer.Option(_T["precision"].default, help="auto (bf16 autocast on CUDA) | bf16 | fp32."),
    scan_backend: str = typer.Option(_T["scan_backend"].default, help="Mamba scan: auto | triton | mamba-ssm | "
                                     "torch | reference."),
    gradient_checkpointing: bool = typer.Option(False, help="Recompute activations in backward (less memory)."),
    eval_batch_size: int = typer.Option(_T["eval_batch_size"].default, help="Held-out examples per forward pass."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints [default: every "
                                                   "evaluation]."),
    overwrite: bool = typer.Option(False, help="Start a finished run again (its files are replaced)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    threads: str = typer.Option(_T["threads"].default, metavar="auto|N", help=THREADS_HELP),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Train one run to the held-out threshold; the same command resumes an unfinished run."""
    from probes.train import train_run

    given = flags_given(ctx, {k: k for k in _TRAIN_KEYS})
    for key in ("out", "data_dir"):
        if given.get(key) is not None:
            given[key] = str(given[key])
    if given.get("grad_clip") == 0:
        given["grad_clip"] = None
    given.update({f"tokens.{k}": v for k, v in flags_given(ctx, {"answer_offset": "answer_offset"}).items()})
    if "answer_only" in flags_given(ctx, {"answer_only": "answer_only"}):
        given["tokens.eos_target"] = not answer_only
    cfg = load_config(TrainConfig, config, given)
    summary = train_run(cfg, overwrite=overwrite, progress=progress)
    from probes.train import run_dir

    out_console.print(_describe_summary(run_dir(cfg), summary), highlight=False, markup=False, soft_wrap=True)
    if summary["status"] == "failed":
        raise typer.Exit(1)


# === pretrain / copytest ===

_PRETRAIN_KEYS = ("model", "tokens", "batch_size", "seq_len", "lr", "warmup", "seed", "corpus", "tokenizer",
                  "vocab_size", "max_corpus_bytes", "eval_every", "checkpoint_every", "out", "device", "precision",
                  "scan_backend", "threads")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers (e.g. 16,64,128), got {text!r}") from None


@app.command()
@user_errors
def pretrain(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, help="BACKBONES preset (its vocabulary becomes the tokenizer's); "
                                        "or a sized arch in --config / --set arch.KEY=VALUE."),
    tokens: int = typer.Option(100_000_000, help="Training tokens (steps = tokens / (batch size x seq len))."),
    batch_size: int = typer.Option(64, help="Sequences per step."),
    seq_len: int = typer.Option(512, help="Tokens per sequence."),
    lr: float = typer.Option(1e-3, help="Peak AdamW learning rate (warmup, then cosine to lr x min_lr_ratio)."),
    warmup: int = typer.Option(200, help="Linear warmup steps."),
    seed: int = typer.Option(0, help="Seed of model init and training windows."),
    corpus: Optional[list[str]] = typer.Option(None, help="File, directory or glob (repeat) [default: the "
                                               "source and docs of the installed Python packages]."),
    tokenizer: str = typer.Option("byte", help="byte (ids 2..257 = bytes 0..255) | bpe (trained on the corpus)."),
    vocab_size: int = typer.Option(8192, help="BPE vocabulary size."),
    max_corpus_bytes: int = typer.Option(256_000_000, help="Read the corpus up to this many bytes."),
    eval_every: Optional[int] = typer.Option(None, help="Steps between held-out loss + copy test [default: 5%]."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints [default: each evaluation]."),
    out: Optional[Path] = typer.Option(None, help="Run directory [default: runs/pretrain/<run name>]."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:i]."),
    precision: str = typer.Option("auto", help="auto (bf16 autocast on CUDA) | bf16 | fp32."),
    scan_backend: str = typer.Option("auto", help="Mamba scan: auto | triton | mamba-ssm | torch | reference."),
    threads: str = typer.Option("auto", metavar="auto|N", help=THREADS_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="KEY=VALUE of any config key (repeat), e.g. "
                                             "--set arch.num_hidden_layers=8 --set copy_lengths=[16,64]."),
    describe: bool = typer.Option(False, help="Print the model's size and parameter count, then stop."),
    overwrite: bool = typer.Option(False, help="Start a finished run again (its files are replaced)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Pretrain a backbone as a causal LM on a local corpus; writes RUN/model for `--model hf:RUN/model`."""
    import yaml

    from probes.config import PretrainConfig

    given = flags_given(ctx, {k: k for k in _PRETRAIN_KEYS})
    if given.get("out") is not None:
        given["out"] = str(given["out"])
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is not KEY=VALUE (e.g. --set arch.hidden_size=512)")
        given[key.strip()] = yaml.safe_load(value)
    cfg = load_config(PretrainConfig, config, given)
    from probes.pretrain import describe_model, pretrain_run, run_dir

    if describe:
        out_console.print(describe_model(cfg), highlight=False, markup=False)
        return
    summary = pretrain_run(cfg, overwrite=overwrite, progress=progress)
    head = (f"{run_dir(cfg)}: {summary['status']} at step {summary['final_step']:,} "
            f"({summary['tokens_seen']:,} tokens); held-out loss {summary['final_heldout_loss']:.3f}")
    if summary["status"] == "failed":
        head = f"{run_dir(cfg)}: failed: {summary['message']}"
    out_console.print(head, highlight=False, markup=False, soft_wrap=True)
    if summary["status"] == "failed":
        raise typer.Exit(1)


@app.command()
@user_errors
def copytest(
    model: str = typer.Option(..., help="NAME (random init), hf:DIR (trained) or config:DIR (its random twin)."),
    lengths: str = typer.Option("16,64,128", help="Comma-separated lengths of the repeated random sequence."),
    batch: int = typer.Option(32, help="Sequences per length."),
    seed: int = typer.Option(0, help="Seed of the sequences and of a random-init model."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:i]."),
    precision: str = typer.Option("auto", help="auto (bf16 autocast on CUDA) | bf16 | fp32."),
    scan_backend: str = typer.Option("auto", help="Mamba scan: auto | triton | mamba-ssm | torch | reference."),
    out: Optional[Path] = typer.Option(None, help="Also write the rows to this parquet file."),
) -> None:
    """In-context copying: loss and accuracy on the first vs second copy of a repeated random sequence."""
    from probes.backbones import build_backbone, check_model_name
    from probes.copytest import COPY_COLUMNS, copy_test, format_table
    from probes.rundir import write_parquet
    from probes.train import choose_scan_backend, resolve_device, resolve_precision

    sizes = _int_list(lengths, "--lengths")
    if not sizes or min(sizes) < 2 or batch < 1:
        raise UserError(f"--lengths must be integers >= 2 and --batch >= 1, got {lengths!r} and {batch}")
    if precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"--precision {precision!r} is not one of auto, bf16, fp32")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    check_model_name(model)
    dev = resolve_device(device)
    bb = build_backbone(model, seed, dev)
    bb.model.float()
    if bb.family == "mamba":
        choose_scan_backend(bb.model, scan_backend)
    rows = copy_test(bb.model, sizes, batch, seed, resolve_precision(precision, dev))
    for line in format_table(rows):
        out_console.print(line, highlight=False, markup=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(out, [{"model": model, **r} for r in rows], ["model", *COPY_COLUMNS])
        console.print(f"wrote {out}", highlight=False, markup=False)


@app.command()
@user_errors
def sweep(
    ctx: typer.Context,
    config: Optional[Path] = ConfigOpt,
    out: Path = typer.Option(SweepConfig.model_fields["out"].default, help="Sweep directory: one run directory "
                             "per grid point."),
    backend: str = typer.Option(SweepConfig.model_fields["backend"].default, help="local | ray."),
    jobs: int = typer.Option(SweepConfig.model_fields["jobs"].default, help="Runs at once (local backend; "
                             "several small runs can share a GPU)."),
    model: Optional[list[str]] = typer.Option(None, help="Grid: model names (repeat the option) "
                                              "[default: pythia-160m]."),
    n: Optional[list[int]] = typer.Option(None, "--n", help="Grid: N values (repeat) [default: 50]."),
    layout: Optional[list[str]] = typer.Option(None, help="Grid: layouts (repeat) [default: suffix]."),
    lr: Optional[list[float]] = typer.Option(None, help="Grid: learning rates (repeat) [default: 1e-5 5e-5 1e-4]."),
    init: Optional[list[str]] = typer.Option(None, help="Grid: inits (repeat) [default: default mean normal]."),
    seed: Optional[list[int]] = typer.Option(None, help="Grid: seeds (repeat) [default: 0]."),
    init_seed: Optional[list[int]] = typer.Option(None, help="Grid: model-init seeds (repeat) [default: seed]."),
    order_seed: Optional[list[int]] = typer.Option(None, help="Grid: batch-order seeds (repeat) [default: seed]."),
    data_seed: Optional[list[int]] = typer.Option(None, help="Grid: training-data seeds (repeat) [default: seed]."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="KEY=VALUE setting of every run (repeat), "
                                             "e.g. --set max_steps=2000 --set device=cuda."),
    address: Optional[str] = typer.Option(None, help="Ray backend: cluster HOST:PORT, ray://HOST:PORT or auto "
                                          "[default: a new local Ray instance]."),
    cpus_per_run: float = typer.Option(SweepConfig.model_fields["cpus_per_run"].default,
                                       help="Ray backend: CPUs reserved per run."),
    gpus_per_run: float = typer.Option(SweepConfig.model_fields["gpus_per_run"].default,
                                       help="Ray backend: GPUs reserved per run (0.25 packs four runs on a GPU)."),
    retries: int = typer.Option(SweepConfig.model_fields["retries"].default,
                                help="Ray backend: times a run whose worker died is started again."),
    retry_failed: bool = typer.Option(False, help="Start failed runs again instead of skipping them."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads per run [default: cores / jobs]."),
    dry_run: bool = typer.Option(False, help="List the runs, what would happen to each and the GPU-hours the "
                                 "runs to do are expected to take, then stop."),
    progress: bool = typer.Option(True, help="Show the sweep's progress."),
) -> None:
    """Run a grid model × n × layout × lr × init × seeds: skip finished runs, resume unfinished ones."""
    import yaml

    from probes.sweep import check_backend, expand_grid, expected_cost, load_sweep_config, plan, run_sweep

    given = flags_given(ctx, {k: k for k in ("out", "backend", "jobs", "model", "n", "layout", "lr", "init", "seed",
                                             "address", "cpus_per_run", "gpus_per_run", "retries",
                                             "init_seed", "order_seed", "data_seed")})
    if "out" in given:
        given["out"] = str(given["out"])
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is not KEY=VALUE (e.g. --set max_steps=2000)")
        given[f"train.{key.strip()}"] = yaml.safe_load(value)
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: allowed: 1 or more threads per run")
    cfg = load_sweep_config(config, given)  # the file's `kind:` (text | vlm) picks the config
    check_backend(cfg.backend)
    if cfg.out.exists() and not cfg.out.is_dir():
        raise UserError(f"--out {cfg.out} is a file, not a directory; choose another --out")
    if dry_run:
        todo, skipped = plan(expand_grid(cfg))
        for result in skipped:
            why = f": {result['message']}" if result["action"] == "skipped" and result["message"] else ""
            out_console.print(f"{result['dir']}  skip ({result['status']}{why})", highlight=False, markup=False)
        for job in todo:
            out_console.print(f"{job.dir}  {job.action}", highlight=False, markup=False)
        for line in expected_cost(cfg, [job.cfg for job in todo]):
            out_console.print(line, highlight=False, markup=False)
        return
    results = run_sweep(cfg, progress=progress,
                        retry_failed=retry_failed, threads=threads)
    counts = {s: sum(r["status"] == s for r in results) for s in ("reached", "not_reached", "failed")}
    for result in results:
        if result["status"] == "failed" and result["action"] == "skipped":  # damaged: not run
            console.print(f"{result['dir']}: not run: {result['message']}", markup=False)
    out_console.print(f"{cfg.out}: {len(results)} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items())
                      + f"; results in {cfg.out / 'sweep.json'}", highlight=False, markup=False)
    if counts["failed"]:
        raise typer.Exit(1)



# === plot / demo ===


@app.command()
@user_errors
def plot(
    ctx: typer.Context,
    dirs: list[Path] = typer.Argument(..., metavar="DIR", show_default=False,
                                      help="Directories holding run directories (at any depth)."),
    kind: str = typer.Option("all", help="curves | heatmap | efficiency | all."),
    out: Path = typer.Option(Path("figures"), help="Output directory for PNG and PDF files."),
    threshold: Optional[float] = typer.Option(None, help="Threshold line, steps to threshold and learning order "
                                              "[default: each run's own]."),
    formats: str = typer.Option("png,pdf", "--format", help="Comma-separated file formats: png, pdf, svg."),
    heatmap: str = typer.Option("representative", help="Heatmap of each group's median run "
                                "(representative) or the mean over its runs (mean)."),
    dpi: int = typer.Option(150, help="PNG resolution."),
    only: list[str] = typer.Option([], help="Draw only runs with KEY=VALUE (repeat; e.g. --only n=10 "
                                   "--only layout=suffix; VALUE may be a,b)."),
    prefix: str = typer.Option("", help="Prefix of the file names (e.g. n10- → n10-heatmap.png)."),
    order_rule: str = typer.Option("stays", help="Learning order: a position is learned when it stays "
                                   "above the threshold (stays) or first passes it (first)."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Draw learning curves, per-position heatmaps and sample efficiency from run directories."""
    from analysis.plots import PlotConfig, plot_runs

    given = flags_given(ctx, {k: k for k in ("kind", "out", "threshold", "formats", "heatmap", "dpi", "only",
                                             "prefix", "order_rule")})
    if "formats" in given:
        given["formats"] = [f.strip().lstrip(".") for f in given["formats"].split(",") if f.strip()]
    if "out" in given:
        given["out"] = str(given["out"])
    if "only" in given:
        pairs = [item.partition("=") for item in given["only"]]
        bad = [key for key, eq, value in pairs if not (key and eq and value)]
        if bad:
            raise UserError(f"--only takes KEY=VALUE (e.g. --only n=10), got '{bad[0]}'")
        given["only"] = {key: value.split(",") for key, _, value in pairs}
    cfg = load_config(PlotConfig, config, given)
    if "/" in cfg.prefix or "\\" in cfg.prefix or cfg.prefix in (".", ".."):
        raise UserError(f"--prefix {cfg.prefix!r}: allowed: a file-name prefix without / (files go into --out)")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise UserError(f"--out {cfg.out} is a file, not a directory; choose another --out")
    with console.status(f"drawing {cfg.kind} from {', '.join(map(str, dirs))}"):
        written = plot_runs(*dirs, kind=cfg.kind, out=cfg.out, threshold=cfg.threshold, formats=cfg.formats,
                            heatmap=cfg.heatmap, dpi=cfg.dpi, only=cfg.only, prefix=cfg.prefix,
                            order_rule=cfg.order_rule)
    console.print(f"wrote {len(written)} files to {cfg.out}: "
                  + ", ".join(sorted({p.stem for p in written})), highlight=False)


from probes.demo import DemoConfig  # light (pydantic only): torch loads when a demo runs

_DM = DemoConfig.model_fields
_DEMO_FLAGS = ("out", "n", "models", "layouts", "lr", "seed", "max_steps", "eval_every", "batch_size",
               "train_size", "eval_size", "threshold", "threads", "quick")


@app.command()
@user_errors
def demo(
    ctx: typer.Context,
    out: Path = typer.Option(_DM["out"].default, help="Output folder: data/, runs/, figures/."),
    n: list[int] = typer.Option(_DM["n"].default, "--n", help="Context length N (repeat for several)."),
    models: list[str] = typer.Option(_DM["models"].default, "--model", help="Backbone (repeat)."),
    layouts: list[str] = typer.Option(_DM["layouts"].default, "--layout", help="suffix | prefix (repeat)."),
    lr: float = typer.Option(_DM["lr"].default, help="AdamW learning rate."),
    seed: int = typer.Option(_DM["seed"].default, help="Seed of model init, batches and data."),
    max_steps: int = typer.Option(_DM["max_steps"].default, help="Step budget of each run."),
    eval_every: int = typer.Option(_DM["eval_every"].default, help="Steps between held-out evaluations."),
    batch_size: int = typer.Option(_DM["batch_size"].default, help="Examples per step."),
    train_size: int = typer.Option(_DM["train_size"].default, help="Training examples per dataset."),
    eval_size: int = typer.Option(_DM["eval_size"].default, help="Held-out examples per dataset."),
    threshold: float = typer.Option(_DM["threshold"].default, help="Stop a run at this held-out accuracy."),
    threads: int = typer.Option(_DM["threads"].default,
                                help="torch CPU threads (0: torch's default; 1 suits tiny models)."),
    quick: bool = typer.Option(False, help="Smoke-test scale: 40 steps a run, seconds in all."),
    overwrite: bool = typer.Option(False, help="Train finished runs again."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """First run: generate data, train Pythia-tiny and Mamba-tiny on both layouts, draw every figure."""
    from probes.demo import run_demo

    given = flags_given(ctx, {k: k for k in _DEMO_FLAGS})
    if "out" in given:
        given["out"] = str(given["out"])
    run_demo(load_config(DemoConfig, config, given), overwrite=overwrite, console=console)


# === bench ===


@app.command()
@user_errors
def bench(
    models: list[str] = typer.Option(["pythia-160m", "mamba-130m", "mamba-130m@reference:b16"], "--model",
                                     help="Model spec NAME[@BACKEND][:bBATCH][:gc][:fr] (repeat the option)."),
    batch_size: int = typer.Option(64, help="Training batch (the paper's 64)."),
    n: int = typer.Option(200, "--n", help="N: sequence length N + 3 (the paper's 203)."),
    steps: int = typer.Option(10, help="Timed training steps per model."),
    warmup: int = typer.Option(3, help="Untimed steps first (Triton compiles here)."),
    eval_batch_size: Optional[int] = typer.Option(None, help="Evaluation batch [default: 4 x batch]."),
    device: str = typer.Option("cuda", help="cuda | cpu."),
    max_seconds: float = typer.Option(60.0, help="Stop timing a model after this long."),
    out: Path = typer.Option(Path("bench"), help="Writes bench.csv, bench.md, bench.json here."),
) -> None:
    """Time Pythia and Mamba side by side: training tokens/s, peak memory, eval examples/s."""
    import torch

    from probes.bench import check_args, run_bench

    check_args(models, batch_size, n, steps, warmup, device, eval_batch_size, max_seconds)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU here (allowed: cpu, or run on a GPU machine)")
    table = run_bench(models, batch_size=batch_size, n=n, steps=steps, warmup=warmup, out_dir=out,
                      eval_batch_size=eval_batch_size, device=device, max_seconds=max_seconds, verbose=False)
    out_console.print((out / "bench.md").read_text(), markup=False)
    console.print(f"{len(table)} rows written to {out}/bench.csv and bench.md")


# === vlm ===

from probes.vlm.cli import vlm_app  # noqa: E402 - the sub-app's commands import this module lazily

app.add_typer(vlm_app, name="vlm")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
