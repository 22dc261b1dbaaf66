"""`probes demo`: a new user's first minutes, end to end on a CPU.

Generates a suffix and a prefix dataset at a small N, trains Pythia-tiny and Mamba-tiny on both
(4 runs, from random init, to the 95% held-out threshold), and draws every figure:

    out/demo/data/{layout}-n{N}/     train.npz, heldout.npz, meta.json   (probes generate)
    out/demo/runs/<run name>/        config.yaml, metrics.parquet, ...   (probes train)
    out/demo/figures/                curves, heatmap, efficiency, learning_order (.png, .pdf)

Running it again skips the finished runs and only redraws (`--overwrite` starts again). The
defaults finish in about a minute on a 2-core CPU (seed 0: Pythia-tiny passes 95% after ~200
steps, Mamba-tiny after ~100, of a budget of 800; one torch thread, which is also the fastest
setting when other jobs share the CPU). `--quick` is a seconds-long smoke version (runs stop at
40 steps, far from the threshold).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from probes.config import Config, DataConfig, Layout, TrainConfig, validate
from probes.errors import UserError

# A smoke-test scale: every file and figure is made, no run gets near the threshold.
QUICK = {"max_steps": 40, "eval_every": 10, "batch_size": 16, "train_size": 2_000, "eval_size": 120}


class DemoConfig(Config):
    """What `probes demo` trains (every field is also a flag)."""

    out: Path = Field(Path("out/demo"), description="output folder: data/, runs/, figures/")
    n: list[int] = Field(
        [6], min_length=1, description="context lengths N (N=6: 4 runs in ~1 min on 2 CPU cores)"
    )
    models: list[str] = Field(["pythia-tiny", "mamba-tiny"], min_length=1, description="backbones")
    layouts: list[Layout] = Field(["suffix", "prefix"], min_length=1, description="suffix and/or prefix")
    lr: float = Field(1e-3, gt=0, le=1, description="AdamW learning rate (tiny models from scratch)")
    seed: int = Field(0, ge=0, description="seed of model init, batches and data")
    max_steps: int = Field(800, gt=0, description="step budget of each run")
    eval_every: int = Field(8, gt=0, description="steps between held-out evaluations (1% of the budget)")
    batch_size: int = Field(64, gt=0, description="examples per step")
    train_size: int = Field(20_000, gt=0, description="training examples per dataset")
    eval_size: int = Field(600, gt=0, description="held-out examples per dataset")
    threshold: float = Field(0.95, gt=0, le=1, description="stop a run at this held-out accuracy")
    threads: int = Field(
        1,
        ge=0,
        description="torch CPU threads (0: torch's default); tiny models run "
        "best on one, and two threads slow down many times on a busy 2-core CPU",
    )
    quick: bool = Field(False, description=f"smoke-test scale: {QUICK}")

    def effective(self) -> DemoConfig:
        """With --quick, the QUICK settings replace the defaults (settings given explicitly stay)."""
        if not self.quick:
            return self
        return self.model_copy(update={k: v for k, v in QUICK.items() if k not in self.model_fields_set})


def data_dir(cfg: DemoConfig, layout: str, n: int) -> Path:
    return Path(cfg.out) / "data" / f"{layout}-n{n}"


def train_configs(cfg: DemoConfig) -> list[TrainConfig]:
    """One TrainConfig per model × layout × N, reading the demo's generated datasets."""
    from probes.train import run_name

    configs = []
    for n, layout, model in itertools.product(cfg.n, cfg.layouts, cfg.models):
        tc = validate(TrainConfig, dict(
            model=model, n=n, layout=layout, lr=cfg.lr, seed=cfg.seed, max_steps=cfg.max_steps,
            eval_every=cfg.eval_every, batch_size=cfg.batch_size, threshold=cfg.threshold,
            data_dir=data_dir(cfg, layout, n), train_size=cfg.train_size, eval_size=cfg.eval_size,
            data_seed=cfg.seed, threads=cfg.threads,
        ))  # a bad demo setting (n=1, an unknown model) is a one-line UserError
        configs.append(tc.model_copy(update={"out": Path(cfg.out) / "runs" / run_name(tc)}))
    return configs


def make_data(cfg: DemoConfig, console) -> None:
    from probes import tasks

    for n, layout in itertools.product(cfg.n, cfg.layouts):
        dc = validate(DataConfig, {"n": n, "layout": layout, "train_size": cfg.train_size,
                                   "eval_size": cfg.eval_size, "seed": cfg.seed})  # train_size < n: one line
        out = data_dir(cfg, layout, n)
        if tasks.generate_into(dc, out) is None:
            console.print(f"  data  {out} (already there)", highlight=False, markup=False)
            continue
        console.print(f"  data  {out}: {dc.train_size:,} train + {dc.eval_size:,} held-out", highlight=False,
                      markup=False)


def run_demo(cfg: DemoConfig, overwrite: bool = False, progress: bool = True, console=None) -> dict[str, Any]:
    """Data → 4 runs → every figure; returns {"runs", "figures", "summaries", "wall_seconds"}.
    Torch's thread count and transformers' log level are restored afterwards."""
    import torch
    from transformers.utils import logging as hf_logging

    threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    try:
        if cfg.effective().threads:
            torch.set_num_threads(cfg.effective().threads)
        hf_logging.set_verbosity_error()  # "falling back to the reference scan" is expected on a CPU
        return _run_demo(cfg, overwrite, progress, console)
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)


def _check_finished(tc: TrainConfig, summary: dict) -> None:
    """A finished run of other settings (say an earlier --max-steps) is not silently reused."""
    from probes.rundir import config_differences, config_value, read_config
    from probes.train import RESUMABLE_CHANGES

    saved = read_config(Path(tc.out), TrainConfig)
    differing = config_differences(saved, tc, RESUMABLE_CHANGES) if saved is not None else []
    if differing:
        key = differing[0]
        raise UserError(
            f"{tc.out} holds a finished run with other settings ({key}: {config_value(saved, key)!r} there, "
            f"{config_value(tc, key)!r} asked); pass --overwrite or choose another --out"
        )


def _run_demo(cfg: DemoConfig, overwrite: bool, progress: bool, console) -> dict[str, Any]:
    from rich.console import Console

    from analysis.plots import plot_runs
    from probes.train import inspect_run, run_name, train_run

    console = console or Console(stderr=True)
    t0 = time.monotonic()
    cfg = cfg.effective()
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise UserError(f"--out {cfg.out} is a file, not a directory; choose another --out")
    configs = train_configs(cfg)
    console.print(
        f"[bold]probes demo[/bold]: {' and '.join(cfg.models)} on {' and '.join(cfg.layouts)} at "
        f"N = {', '.join(map(str, cfg.n))} → {cfg.out}",
        highlight=False,
    )
    console.print("[bold]1. data[/bold]")
    make_data(cfg, console)
    console.print(
        f"[bold]2. training[/bold] {len(configs)} runs to {cfg.threshold:.0%} held-out accuracy "
        f"(at most {cfg.max_steps:,} steps each)"
    )
    summaries = {}
    for i, tc in enumerate(configs, 1):
        state, summary = inspect_run(tc)
        if state == "finished" and not overwrite:
            _check_finished(tc, summary)
            console.print(
                f"  [{i}/{len(configs)}] {run_name(tc)}: finished earlier ({summary['status']})",
                highlight=False,
            )
        else:
            console.print(f"  [{i}/{len(configs)}] {run_name(tc)}", highlight=False)
            summary = train_run(tc, overwrite=overwrite, progress=progress)
        summaries[run_name(tc)] = (tc, summary)
    console.print("[bold]3. figures[/bold]")
    figures = plot_runs(Path(cfg.out) / "runs", out=Path(cfg.out) / "figures")
    wall = time.monotonic() - t0
    _report(console, summaries, figures, cfg, wall)
    return {
        "runs": [Path(tc.out) for tc in configs],
        "figures": figures,
        "summaries": {name: s for name, (_, s) in summaries.items()},
        "wall_seconds": wall,
    }


def _report(console, summaries: dict, figures: list[Path], cfg: DemoConfig, wall: float) -> None:
    from rich.table import Table

    table = Table(
        title=f"{len(summaries)} runs in {cfg.out / 'runs'} ({wall:.0f} s in all)",
        title_justify="left",
        box=None,
        header_style="bold",
    )
    for col in ("model", "layout", "N", "status", f"steps to {cfg.threshold:.0%}", "% budget", "acc", "s"):
        table.add_column(
            col, justify="left" if col in ("model", "layout", "status") else "right", no_wrap=True
        )
    for tc, s in summaries.values():
        reached = s.get("step_reached")
        table.add_row(
            tc.model,
            tc.layout,
            str(tc.n),
            s["status"],
            "–" if reached is None else f"{reached:,}",
            "–" if reached is None else f"{100 * reached / s['max_steps']:.0f}%",
            f"{s.get('final_accuracy') or 0:.3f}",
            f"{s.get('wall_seconds') or 0:.0f}",
        )
    console.print(table)
    stems = sorted({p.stem for p in figures})
    console.print(f"figures in {Path(cfg.out) / 'figures'}: {', '.join(stems)} (.png, .pdf)", highlight=False)
    console.print(
        f"next: probes plot {Path(cfg.out) / 'runs'} --out FIGDIR, or notebooks/analysis.ipynb "
        f"(PROBES_RUNS={Path(cfg.out) / 'runs'})",
        highlight=False,
    )
