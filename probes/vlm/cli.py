"""`probes vlm train | eval`: the VLM commands, with the conventions of the top-level `probes` app.

The options come from the configs' fields (probes.cliopts: one option per field of
VLMTrainConfig, its `data` section flattened, with `--data` for data.kind and `--data-seed` for
data.seed); `--config FILE.yaml`, `--set KEY=VALUE` and flags combine and flags win; a user mistake
prints one line and exits 2. The shared helpers (`user_errors`, the consoles) come from the library
(probes.console); this module never imports the app script cli.py.
"""

from __future__ import annotations

from pathlib import Path

import typer

from probes.cliopts import Flags, config_options
from probes.console import console, exit_for_status, out_console, user_errors
from probes.errors import UserError
from probes.vlm.config import VLMEvalConfig, VLMTrainConfig

vlm_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                      help="Vision-language path: encoder → connector → backbone, trained and scored on grounding.")

DATA_NAMES = {"data.kind": "data", "data.seed": "data_seed"}  # the data section's flags: --data, --data-seed


# === train ===


@vlm_app.command()
@user_errors
@config_options(VLMTrainConfig, names=DATA_NAMES)
def train(
    flags: Flags,
    overwrite: bool = typer.Option(False, help="Start a finished (or different) run in --out again."),
) -> None:
    """Train one VLM run (stage 1: connector; stage 2: connector + LM) with grounding evaluation."""
    from probes.vlm.train import train_vlm

    cfg = flags.load()
    summary = train_vlm(cfg, overwrite=overwrite, log=lambda msg: console.print(msg, highlight=False, markup=False))
    status = summary["status"]
    detail = (f"reached {cfg.threshold} at step {summary['step_reached']}" if status == "reached" else
              f"final Acc@0.5 {summary['final_accuracy']:.3f} after {summary['final_step']} steps"
              if status == "not_reached" else summary.get("message", ""))
    console.print(f"{cfg.out or summary['run']}: {status} ({detail})", highlight=False, markup=False)
    exit_for_status(status)


# === preview ===

PREVIEW_KEYS = ("model", "encoder", "encoder2", "concat", "layout", "row_sep", "instruction", "markers", "marker_ids")


@vlm_app.command("preview")
@user_errors
@config_options(VLMTrainConfig, include=PREVIEW_KEYS)
def preview_(
    flags: Flags,
    n: int = typer.Option(2, "-n", min=1, help="How many training sequences to print."),
) -> None:
    """Print the first training sequences as the model reads them: markers by name, image slots as p."""
    from probes.vlm.train import preview

    cfg = flags.load()
    for line in preview(cfg, n):
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)


# === eval ===


@vlm_app.command("eval")
@user_errors
@config_options(VLMEvalConfig, exclude=("run",))
def eval_(
    flags: Flags,
    run: Path = typer.Argument(..., metavar="RUN", show_default=False,
                               help="Run directory written by `probes vlm train`."),
) -> None:
    """Score a trained run's latest checkpoint: greedy boxes, strict parse, Acc@IoU>=0.5."""
    from probes.vlm.train import evaluate_run

    ecfg = flags.load({"run": str(run)})
    if ecfg.out is not None and ecfg.out.is_dir():
        raise UserError(f"--out {ecfg.out} is a directory; give the predictions file's path "
                        f"(e.g. {ecfg.out / 'predictions.jsonl'})")
    result = evaluate_run(ecfg, log=lambda msg: console.print(msg, highlight=False, markup=False))
    out_console.print(f"acc@0.5={result['accuracy']:.4f} parsed={result['parse_rate']:.4f} "
                      f"miou={result['mean_iou']:.4f} n={result['n']}", highlight=False, markup=False)


__all__ = ["vlm_app"]
