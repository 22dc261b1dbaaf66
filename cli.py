"""The `probes` command: a typer app that only wires configs to library functions.

Every command takes `--config FILE.yaml` plus flags; flags given on the command line win over
the file. A command that runs a config (train, generate, pretrain, demo, sweep, vlm ...) gets one
option per field of its config from `probes.cliopts.config_options`: the field (probes/config.py)
is the only declaration, and `--set KEY=VALUE` reaches any key. A user mistake (a `UserError` or
an invalid config) prints one line and exits with code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import typer

from analysis.plot_config import PlotConfig
from probes.cliopts import Flags, config_options, option_keys
from probes.config import DataConfig
from probes.console import console, exit_for_status, flags_given, out_console, user_errors
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
@config_options(DataConfig)
def generate(
    ctx: typer.Context,
    flags: Flags,
    out: Path = typer.Option(Path("data"), help="Output directory: train.npz, heldout.npz, meta.json."),
    preview: int = typer.Option(0, help="Print this many rendered training examples."),
    overwrite: bool = typer.Option(False, help="Replace a different dataset already in --out."),
    from_paper: Path | None = typer.Option(None, help="Convert the paper's released files (HF dataset "
                                              "gpantaz/vl-mamba-synthetic: a directory or one of its "
                                              "*_synthetic_vg_seqlenN.json) instead of generating."),
    paper_heldout: str = typer.Option("validation", help="With --from-paper: the paper's split that becomes "
                                      "the held-out set: validation | test."),
) -> None:
    """Generate a suffix or prefix grounding dataset (model-independent index arrays), or convert the paper's."""
    from probes import tasks

    if preview < 0:
        raise UserError(f"--preview {preview}: allowed: 0 or more examples")
    if from_paper is not None:
        _generate_from_paper(flags, from_paper, out, paper_heldout, overwrite, preview)
        return
    cfg = flags.load()
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


def _generate_from_paper(flags: Flags, source: Path, out: Path, heldout: str, overwrite: bool, preview: int) -> None:
    from probes import locks, paper_data, tasks

    fixed = [k for k in flags.given if k not in ("n", "layout")]
    if fixed or flags.config is not None:
        raise UserError(f"--from-paper takes sizes and data from the paper's files; drop "
                        f"--{(fixed[0] if fixed else 'config').replace('_', '-')}")
    with console.status(f"reading {source}"):
        ds, origin = paper_data.import_paper(source, flags.value("n"), flags.value("layout", "suffix"), heldout)
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

from probes.config import PretrainConfig, SweepConfig, TrainConfig  # noqa: E402 - beside the commands that use it


def _describe_summary(run: Path, s: dict) -> str:
    status = s["status"]
    if status == "reached":
        head = f"reached {s['threshold']} at step {s['step_reached']:,} ({s['examples_to_threshold']:,} examples)"
    elif status == "not_reached":
        head = f"did not reach {s['threshold']} in {s['max_steps']:,} steps (final accuracy {s['final_accuracy']:.3f})"
    elif status == "running":
        head = s["message"]
    else:
        head = f"failed: {s['message']}"
    rates = ", ".join(f"{label} {s[key]:,.0f} ex/s" for label, key in
                      (("train", "train_examples_per_s"), ("eval", "eval_examples_per_s")) if s.get(key))
    return f"{run}: {head}; {s['wall_seconds']:.1f} s" + (f"; {rates}" if rates else "")


@app.command()
@user_errors
@config_options(TrainConfig)
def train(
    flags: Flags,
    overwrite: bool = typer.Option(False, help="Start a finished run again (its files are replaced)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train one run to the held-out threshold; the same command resumes an unfinished run."""
    from probes.train import run_dir, train_run

    cfg = flags.load()
    summary = train_run(cfg, overwrite=overwrite, progress=progress)
    out_console.print(_describe_summary(run_dir(cfg), summary), highlight=False, markup=False, soft_wrap=True)
    exit_for_status(summary["status"])


# === pretrain / copytest ===

def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers (e.g. 16,64,128), got {text!r}") from None


@app.command()
@user_errors
@config_options(PretrainConfig)
def pretrain(
    flags: Flags,
    describe: bool = typer.Option(False, help="Print the model's size and parameter count, then stop."),
    save_config: Path | None = typer.Option(
        None, "--save-config", metavar="DIR",
        help="Save the model's config.json and byte tokenizer to DIR (no weights, no corpus), then stop: "
             "--model config:DIR is its random twin without pretraining."),
    overwrite: bool = typer.Option(False, help="Start a finished run again (its files are replaced; with "
                                               "--save-config: replace DIR)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Pretrain a backbone as a causal LM on a local corpus; writes RUN/model for `--model hf:RUN/model`.

    A sized custom backbone instead of --model: --set arch.family=pythia --set arch.hidden_size=512 ..."""
    cfg = flags.load()
    from probes.pretrain import describe_model, pretrain_run, run_dir
    from probes.pretrain import save_config as save_model_config

    if describe:
        out_console.print(describe_model(cfg), highlight=False, markup=False)
        return
    if save_config is not None:
        save_model_config(cfg, save_config, overwrite=overwrite)
        out_console.print(f"{save_config}: config of {describe_model(cfg)}; its random twin: --model "
                          f"config:{save_config}", highlight=False, markup=False, soft_wrap=True)
        return
    summary = pretrain_run(cfg, overwrite=overwrite, progress=progress)
    head = (f"{run_dir(cfg)}: {summary['status']} at step {summary['final_step']:,} "
            f"({summary['tokens_seen']:,} tokens); held-out loss {summary['final_heldout_loss']:.3f}")
    if summary["status"] == "failed":
        head = f"{run_dir(cfg)}: failed: {summary['message']}"
    elif summary["status"] == "running":
        head = f"{run_dir(cfg)}: {summary['message']}"
    out_console.print(head, highlight=False, markup=False, soft_wrap=True)
    exit_for_status(summary["status"])


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
    out: Path | None = typer.Option(None, help="Also write the rows to this parquet file."),
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
@config_options(SweepConfig, exclude=("train",), passthrough=True)
def sweep(
    ctx: typer.Context,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE", help="KEY=VALUE setting of every run (repeat), "
                                             "e.g. --set max_steps=2000 --set device=cuda."),
    retry_failed: bool = typer.Option(False, help="Start failed runs again instead of skipping them."),
    threads: int | None = typer.Option(None, help="torch CPU threads per run [default: cores / jobs]."),
    dry_run: bool = typer.Option(False, help="List the runs, what would happen to each and the GPU-hours the "
                                 "runs to do are expected to take, then stop."),
    progress: bool = typer.Option(True, help="Show the sweep's progress."),
) -> None:
    """Run a grid of runs (text: model × n × layout × lr × init × seeds; `kind: vlm` in the YAML: a VLM
    grid): skip finished runs, resume unfinished ones, report damaged ones and carry on."""
    import yaml

    from probes.sweep import check_backend, expand_grid, expected_cost, load_sweep_config, plan, run_sweep

    given = flags_given(ctx, option_keys(SweepConfig, exclude=("train",)))
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


ONLY_HELP = "Only runs with KEY=VALUE (repeat; e.g. --only n=10 --only layout=suffix; VALUE may be a,b)."
PLOT_ONLY_HELP = f"Draw {ONLY_HELP[0].lower()}{ONLY_HELP[1:]}"
LABEL_HELP = ("Draw the runs whose model matches GLOB as one model named NAME (repeat; the first GLOB that matches "
              "wins), e.g. --label 'hf:*/pythia-20m/model=Pythia-20M pretrained'.")


@app.command()
@user_errors
@config_options(PlotConfig, exclude=("formats", "only", "labels"))
def plot(
    flags: Flags,
    dirs: list[Path] = typer.Argument(..., metavar="DIR", show_default=False,
                                      help="Directories holding run directories (at any depth)."),
    formats: str | None = typer.Option(None, "--format", show_default=False, metavar="FMT[,FMT]",
                                          help="Comma-separated file formats: png, pdf, svg [default: png,pdf]."),
    only: list[str] = typer.Option([], metavar="KEY=VALUE", help=PLOT_ONLY_HELP),
    label: list[str] = typer.Option([], metavar="GLOB=NAME", help=LABEL_HELP),
) -> None:
    """Draw learning curves, per-position heatmaps and sample efficiency from run directories."""
    from analysis.plots import plot_runs

    extra: dict = {}
    if formats is not None:
        extra["formats"] = [f.strip().lstrip(".") for f in formats.split(",") if f.strip()]
    if only:
        extra["only"] = _only_pairs(only)
    if label:
        extra["labels"] = _label_pairs(label)
    cfg = flags.load(extra)
    if "/" in cfg.prefix or "\\" in cfg.prefix or cfg.prefix in (".", ".."):
        raise UserError(f"--prefix {cfg.prefix!r}: allowed: a file-name prefix without / (files go into --out)")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise UserError(f"--out {cfg.out} is a file, not a directory; choose another --out")
    with console.status(f"drawing {cfg.kind} from {', '.join(map(str, dirs))}"):
        written = plot_runs(*dirs, kind=cfg.kind, out=cfg.out, threshold=cfg.threshold, formats=cfg.formats,
                            heatmap=cfg.heatmap, dpi=cfg.dpi, only=cfg.only, labels=cfg.labels, prefix=cfg.prefix,
                            order_rule=cfg.order_rule, until=cfg.until,
                            on_skip=lambda why: console.print(f"[yellow]{why}"))
    console.print(f"wrote {len(written)} files to {cfg.out}: "
                  + ", ".join(sorted({p.stem for p in written})), highlight=False)


def _only_pairs(only: list[str]) -> dict[str, list[str]]:
    """--only KEY=VALUE[,VALUE] items as {KEY: [VALUE, ...]}."""
    pairs = [item.partition("=") for item in only]
    bad = [key for key, eq, value in pairs if not (key and eq and value)]
    if bad:
        raise UserError(f"--only takes KEY=VALUE (e.g. --only n=10), got '{bad[0]}'")
    return {key: value.split(",") for key, _, value in pairs}


def _label_pairs(labels: list[str]) -> dict[str, str]:
    """--label GLOB=NAME items as {GLOB: NAME}, in the order given (split at the last `=`: a NAME has none)."""
    pairs = [item.rpartition("=") for item in labels]
    bad = [item for item, (glob, eq, name) in zip(labels, pairs) if not (glob.strip() and eq and name.strip())]
    if bad:
        raise UserError(f"--label takes GLOB=NAME (e.g. --label 'hf:*/pythia-20m/model=Pythia-20M pretrained'), "
                        f"got '{bad[0]}'")
    return {glob.strip(): name.strip() for glob, _, name in pairs}


@app.command()
@user_errors
def runs(
    dirs: list[Path] = typer.Argument(..., metavar="DIR", show_default=False,
                                      help="Directories holding run directories (at any depth)."),
    only: list[str] = typer.Option([], metavar="KEY=VALUE", help=ONLY_HELP),
    csv: Path | None = typer.Option(None, help="Also write the table to this CSV file."),
) -> None:
    """Where the runs under DIRs stand: status, last step, best and last accuracy, examples/s."""
    from analysis.load import load_runs, select_runs
    from analysis.overview import runs_overview

    table = runs_overview(select_runs(load_runs(*dirs), _only_pairs(only) if only else None))
    out_console.print(_runs_view(table))
    if csv is not None:
        with open(csv, "w", newline="") as f:  # open's OSError names the file for user_errors (pandas' does not)
            table.to_csv(f, index=False)
        console.print(f"wrote {csv} ({len(table)} runs)", markup=False)


# `probes runs` columns: (header, overview column, format); one table per model (and VLM connector),
# headed by its name; the CSV keeps every overview column
RUNS_VIEW = (("N", "n", "{:.0f}".format), ("layout", "layout", str), ("lr", "lr", "{:g}".format),
             ("seed", "seed", "{:.0f}".format), ("status", "status", str), ("step", "step", "{:,.0f}".format),
             ("of", "max_steps", "{:,.0f}".format), ("best", "best_accuracy", "{:.3f}".format),
             ("last", "final_accuracy", "{:.3f}".format), ("reached at", "step_reached", "{:,.0f}".format),
             ("ex/s", "train_examples_per_s", "{:,.0f}".format))


def _runs_view(table):
    """The overview as rich tables, one per model (+ connector); empty cells stay blank."""
    from rich.console import Group
    from rich.table import Table

    shown = [(head, col, fmt) for head, col, fmt in RUNS_VIEW if col in table and table[col].notna().any()]
    title = table["model"].fillna(table["run"]) if "model" in table else table["run"]  # a pretraining run: its name
    if "connector" in table:
        title = title + table["connector"].map(lambda c: "" if _missing(c) else f" + {c}")
    parts = []
    for name, group in table.groupby(title, sort=False):
        view = Table(*(head for head, _, _ in shown), title=name, title_justify="left", title_style="bold",
                     box=None, header_style="bold", pad_edge=False)
        for row in group.to_dict("records"):
            view.add_row(*("" if _missing(row[col]) else fmt(row[col]) for _, col, fmt in shown))
        parts.append(view)
    return Group(*parts)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


from probes.demo import DemoConfig  # noqa: E402 - light (pydantic only): torch loads when a demo runs


@app.command()
@user_errors
@config_options(DemoConfig, names={"models": "model", "layouts": "layout"})
def demo(
    flags: Flags,
    overwrite: bool = typer.Option(False, help="Train finished runs again."),
) -> None:
    """First run: generate data, train Pythia-tiny and Mamba-tiny on both layouts, draw every figure."""
    from probes.demo import run_demo

    run_demo(flags.load(), overwrite=overwrite, console=console)


# === bench ===


@app.command()
@user_errors
def bench(
    models: list[str] = typer.Option(["pythia-160m", "mamba-130m", "mamba-130m@reference:b16"], "--model",
                                     help="Model spec NAME[@BACKEND][:bBATCH][:gc][:fr][:cg] (repeat the option)."),
    batch_size: int = typer.Option(64, help="Training batch (the paper's 64)."),
    n: int = typer.Option(200, "--n", help="N: sequence length N + 3 (the paper's 203)."),
    steps: int = typer.Option(100, help="Timed training steps per model (fewer if --max-seconds runs out)."),
    warmup: int = typer.Option(3, help="Untimed steps first (Triton compiles here)."),
    eval_batch_size: int | None = typer.Option(None, help="Evaluation batch [default: 4 x batch]."),
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
