"""`probes vlm train | eval`: the VLM commands, with the conventions of the top-level `probes` app.

Every option's default is its config field's default; `--config FILE.yaml` and flags combine and
flags win; a user mistake prints one line and exits 2. The shared helpers (`user_errors`,
`flags_given`, the consoles) come from the library (probes.console); this module never imports
the app script cli.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probes.config import THREADS_HELP
from probes.console import console, flags_given, out_console, user_errors
from probes.errors import UserError
from probes.vlm.config import VLMDataConfig, VLMEvalConfig, VLMTrainConfig

vlm_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                      help="Vision-language path: encoder → connector → backbone, trained and scored on grounding.")

_T, _D, _E = VLMTrainConfig.model_fields, VLMDataConfig.model_fields, VLMEvalConfig.model_fields
ConfigOpt = typer.Option(None, "--config", help="YAML config file; flags given here win over it.")


def _given(ctx: typer.Context, mapping: dict[str, str]) -> dict:
    given = flags_given(ctx, mapping)
    return {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}


def _default(fields, name):
    return fields[name].get_default(call_default_factory=True)


# === train ===

_TRAIN_KEYS = ["model", "encoder", "encoder2", "feature_layer", "feature_norm", "encoder_image_size", "concat",
               "connector", "scan", "scan_shared", "layout", "row_sep", "instruction", "markers", "marker_ids",
               "marker_init", "marker_noise", "max_steps", "stage1_steps", "stage1_lr", "lr", "warmup",
               "weight_decay", "batch_size", "stage1_batch_size", "stage2_batch_size", "micro_batch_size",
               "eval_batch_size", "eval_every", "threshold", "grad_clip", "seed",
               "out", "device", "precision", "scan_backend", "threads"]
_DATA_KEYS = {"data": "data.kind", "train_size": "data.train_size", "eval_size": "data.eval_size",
              "image_size": "data.image_size", "max_objects": "data.max_objects", "train_file": "data.train_file",
              "eval_file": "data.eval_file", "box_format": "data.box_format", "data_seed": "data.seed"}


@vlm_app.command()
@user_errors
def train(
    ctx: typer.Context,
    model: str = typer.Option(_T["model"].default, help="Backbone: pythia-* | mamba-* | *-tiny | hf:ID_OR_PATH."),
    encoder: str = typer.Option(_T["encoder"].default, help="Vision encoder: siglip-* | clip-* | dinov2-* | "
                                "eva02-* | hf:ID_OR_PATH | timm:NAME[@FILE]."),
    encoder2: Optional[str] = typer.Option(None, help="Second encoder: the visual long sequence (MambaVLM)."),
    feature_layer: int = typer.Option(_T["feature_layer"].default, help="Encoder hidden layer of the features "
                                      "(-2: LLaVA-1.5; -1: all blocks, Shaking Up VLMs)."),
    feature_norm: bool = typer.Option(_T["feature_norm"].default, help="Apply the encoder's final norm to them."),
    encoder_image_size: Optional[int] = typer.Option(None, help="Input resolution of the encoder(s) "
                                                     "[default: each one's own]."),
    concat: str = typer.Option(_T["concat"].default, help="Two encoders: sequence (visual long sequence) | "
                               "channels (Concat[f1; f2] per patch)."),
    connector: str = typer.Option(_T["connector"].default, help="mlp | vss-mlp | vss-l2 | mamba-projector."),
    scan: Optional[str] = typer.Option(None, help="bsm | csm (vss-*); cross-stitch | cross-cat (mamba-projector) "
                                       "[default: bsm / cross-stitch]."),
    scan_shared: bool = typer.Option(_T["scan_shared"].default, help="One Mamba layer for all scan directions."),
    layout: str = typer.Option(_T["layout"].default, help="task-agnostic | task-aware | query-first."),
    row_sep: str = typer.Option(_T["row_sep"].default, help="Row separator: after | between | none."),
    instruction: str = typer.Option(_T["instruction"].default, help="Task instruction text."),
    markers: str = typer.Option(_T["markers"].default, help="new (<img> </img> <row>, new tokens) | paper "
                                "(existing ### and && tokens)."),
    marker_ids: Optional[str] = typer.Option(None, metavar="START,END,ROW", help="markers=paper: the three "
                                             "token ids [default: ### and && of the tokenizer; see README]."),
    marker_init: str = typer.Option(_T["marker_init"].default, help="New marker embeddings: default | mean | normal."),
    marker_noise: float = typer.Option(_T["marker_noise"].default, help="Seeded noise on each new marker row, "
                                       "in units of the vocabulary's std (0: none)."),
    max_steps: int = typer.Option(_T["max_steps"].default, help="Total steps of both stages."),
    stage1_steps: int = typer.Option(_T["stage1_steps"].default, help="Steps of stage 1 (connector only)."),
    stage1_lr: float = typer.Option(_T["stage1_lr"].default, help="Stage 1 learning rate."),
    lr: float = typer.Option(_T["lr"].default, help="Stage 2 learning rate (connector + LM)."),
    warmup: float = typer.Option(_T["warmup"].default, help="Warmup fraction of each stage."),
    weight_decay: float = typer.Option(_T["weight_decay"].default, help="AdamW weight decay."),
    batch_size: int = typer.Option(_T["batch_size"].default, help="Training examples per step (both stages)."),
    stage1_batch_size: Optional[int] = typer.Option(None, help="Stage 1 examples per step [default: batch-size]."),
    stage2_batch_size: Optional[int] = typer.Option(None, help="Stage 2 examples per step [default: batch-size]."),
    micro_batch_size: Optional[int] = typer.Option(None, help="Examples per forward/backward; a step "
                                                   "accumulates its micro-batches [default: the whole batch]."),
    eval_batch_size: int = typer.Option(_T["eval_batch_size"].default, help="Examples per evaluation batch."),
    eval_every: int = typer.Option(_T["eval_every"].default, help="Steps between evaluations."),
    threshold: float = typer.Option(_T["threshold"].default, help="Stop when held-out Acc@IoU>=0.5 reaches this."),
    grad_clip: float = typer.Option(_T["grad_clip"].default, help="Gradient-norm clip."),
    seed: int = typer.Option(_T["seed"].default, help="Seed of weights and batch order."),
    out: Optional[Path] = typer.Option(None, help="Run directory [default: runs/vlm/<run name>]."),
    device: str = typer.Option(_T["device"].default, help="auto | cpu | cuda[:i]."),
    precision: str = typer.Option(_T["precision"].default, help="auto | bf16 | fp32."),
    scan_backend: str = typer.Option(_T["scan_backend"].default, help="auto | triton | mamba-ssm | torch | reference."),
    threads: str = typer.Option(_T["threads"].default, metavar="auto|N", help=THREADS_HELP),
    data: str = typer.Option(_D["kind"].default, "--data", help="synthetic | refcoco."),
    train_size: int = typer.Option(_D["train_size"].default, help="Synthetic training scenes."),
    eval_size: int = typer.Option(_D["eval_size"].default, help="Held-out scenes (refcoco: records at most)."),
    image_size: int = typer.Option(_D["image_size"].default, help="Synthetic image side in pixels."),
    max_objects: int = typer.Option(_D["max_objects"].default, help="Synthetic objects per scene."),
    train_file: Optional[Path] = typer.Option(None, help="refcoco: training records (JSONL)."),
    eval_file: Optional[Path] = typer.Option(None, help="refcoco: held-out records (JSONL)."),
    box_format: str = typer.Option(_D["box_format"].default, help="refcoco box format: xyxy | xywh (pixels)."),
    data_seed: int = typer.Option(_D["seed"].default, help="Seed of the synthetic scenes."),
    overwrite: bool = typer.Option(False, help="Start a finished (or different) run in --out again."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Train one VLM run (stage 1: connector; stage 2: connector + LM) with grounding evaluation."""
    from probes.config import load_config
    from probes.vlm.train import train_vlm

    given = _given(ctx, {**{k: k for k in _TRAIN_KEYS}, **_DATA_KEYS})
    if "marker_ids" in given:
        given["marker_ids"] = parse_ids(given["marker_ids"])
    cfg = load_config(VLMTrainConfig, config, given)
    summary = train_vlm(cfg, overwrite=overwrite, log=lambda msg: console.print(msg, highlight=False, markup=False))
    status = summary["status"]
    detail = (f"reached {cfg.threshold} at step {summary['step_reached']}" if status == "reached" else
              f"final Acc@0.5 {summary['final_accuracy']:.3f} after {summary['final_step']} steps"
              if status == "not_reached" else summary.get("message", ""))
    console.print(f"{cfg.out or summary['run']}: {status} ({detail})", highlight=False, markup=False)
    if status == "failed":
        raise typer.Exit(1)


def parse_ids(text: str) -> list[int]:
    """`--marker-ids 4118,4118,10494` → [4118, 4118, 10494]; anything else is a UserError."""
    from probes.errors import UserError

    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise UserError(f"--marker-ids '{text}' is not three token ids START,END,ROW (e.g. 4118,4118,10494)")
    return [int(p) for p in parts]


# === preview ===

_PREVIEW_KEYS = ["model", "encoder", "encoder2", "concat", "layout", "row_sep", "instruction", "markers",
                 "marker_ids"]


@vlm_app.command("preview")
@user_errors
def preview_(
    ctx: typer.Context,
    n: int = typer.Option(2, "-n", min=1, help="How many training sequences to print."),
    model: str = typer.Option(_T["model"].default, help="Backbone (its tokenizer or byte codec writes the text)."),
    encoder: str = typer.Option(_T["encoder"].default, help="Vision encoder (sets the patch grid)."),
    encoder2: Optional[str] = typer.Option(None, help="Second encoder."),
    concat: str = typer.Option(_T["concat"].default, help="sequence | channels."),
    layout: str = typer.Option(_T["layout"].default, help="task-agnostic | task-aware | query-first."),
    row_sep: str = typer.Option(_T["row_sep"].default, help="after | between | none."),
    instruction: str = typer.Option(_T["instruction"].default, help="Task instruction text."),
    markers: str = typer.Option(_T["markers"].default, help="new | paper."),
    marker_ids: Optional[str] = typer.Option(None, metavar="START,END,ROW", help="markers=paper: token ids."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Print the first training sequences as the model reads them: markers by name, image slots as p."""
    from probes.config import load_config
    from probes.vlm.train import preview

    given = _given(ctx, {k: k for k in _PREVIEW_KEYS})
    if "marker_ids" in given:
        given["marker_ids"] = parse_ids(given["marker_ids"])
    cfg = load_config(VLMTrainConfig, config, given)
    for line in preview(cfg, n):
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)


# === eval ===


@vlm_app.command("eval")
@user_errors
def eval_(
    ctx: typer.Context,
    run: Path = typer.Argument(..., metavar="RUN", show_default=False,
                               help="Run directory written by `probes vlm train`."),
    eval_file: Optional[Path] = typer.Option(None, help="RefCOCO-style JSONL [default: the run's held-out set]."),
    eval_size: Optional[int] = typer.Option(None, help="Evaluate at most this many examples [default: all]."),
    box_format: str = typer.Option(_E["box_format"].default, help="Box format of --eval-file: xyxy | xywh."),
    batch_size: Optional[int] = typer.Option(None, help="Examples per batch [default: the run's]."),
    out: Optional[Path] = typer.Option(None, help="Predictions JSONL [default: RUN/eval/predictions.jsonl]."),
    device: str = typer.Option(_E["device"].default, help="auto | cpu | cuda[:i]."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Score a trained run's latest checkpoint: greedy boxes, strict parse, Acc@IoU>=0.5."""
    from probes.config import load_config
    from probes.vlm.train import evaluate_run

    if out is not None and out.is_dir():
        raise UserError(f"--out {out} is a directory; give the predictions file's path (e.g. {out / 'predictions.jsonl'})")
    keys = ("eval_file", "eval_size", "box_format", "batch_size", "out", "device")
    ecfg = load_config(VLMEvalConfig, config, {"run": str(run), **_given(ctx, {k: k for k in keys})})
    result = evaluate_run(ecfg, log=lambda msg: console.print(msg, highlight=False, markup=False))
    out_console.print(f"acc@0.5={result['accuracy']:.4f} parsed={result['parse_rate']:.4f} "
                      f"miou={result['mean_iou']:.4f} n={result['n']}", highlight=False, markup=False)


__all__ = ["vlm_app"]
