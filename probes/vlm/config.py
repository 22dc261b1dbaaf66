"""Typed configs of the VLM path (`probes vlm train | eval`); unknown keys are errors.

Top-level keys are flat where the analysis groups runs by them (`model`, `encoder`,
`connector`, `layout`, `lr`, `seed`, `max_steps`); the data source is the nested `data:` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from probes.config import LOG_TO_HELP, THREADS_HELP, Config, Init, LogTo, Precision, ScanBackend, Threads
from probes.errors import UserError

Layout = Literal["task-agnostic", "task-aware", "query-first"]
RowSep = Literal["after", "between", "none"]
MarkerKind = Literal["new", "paper"]
Concat = Literal["sequence", "channels"]
PAPER_MARKER_TEXT = ("###", "###", "&&")  # image start, image end, row separator (vl_mamba's SpecialTokens)
PAPER_MARKER_IDS = (4118, 4118, 10494)  # the same three in the GPT-NeoX tokenizer (Pythia and Mamba)
DEFAULT_MARKER_NOISE = 0.1
LEGACY_VALUES = {"marker_noise": 0.0}  # a config.yaml written before the key existed: the old behaviour

DEFAULT_INSTRUCTION = "Locate the region that is described by"  # Shaking Up VLMs, Table 7 (VG)


class VLMDataConfig(Config):
    """Where examples come from: built-in synthetic scenes, or RefCOCO-style JSONL files."""

    kind: Literal["synthetic", "refcoco"] = Field("synthetic", description="synthetic scenes | refcoco records")
    train_size: int = Field(2000, gt=0, description="synthetic: training scenes")
    eval_size: int = Field(200, gt=0, description="synthetic: held-out scenes; refcoco: records used (at most)")
    image_size: int = Field(64, ge=16, le=2048, description="synthetic: image side in pixels")
    max_objects: int = Field(3, ge=1, le=8, description="synthetic: objects per scene (1 … max)")
    train_file: Path | None = Field(None, description="refcoco: training records (JSONL)")
    eval_file: Path | None = Field(None, description="refcoco: held-out records (JSONL)")
    box_format: Literal["xyxy", "xywh"] = Field("xyxy", description="refcoco: pixel box format of the records")
    seed: int = Field(0, ge=0, description="synthetic: seed of the training scenes (held-out: seed + 1000003)")

    @model_validator(mode="after")
    def _files_match_kind(self) -> VLMDataConfig:
        if self.kind == "refcoco" and (self.train_file is None or self.eval_file is None):
            raise ValueError("data.kind=refcoco needs data.train_file and data.eval_file (JSONL records)")
        if self.kind == "synthetic" and (self.train_file is not None or self.eval_file is not None):
            raise ValueError("data.train_file / data.eval_file are for data.kind=refcoco (kind is synthetic)")
        return self


class VLMTrainConfig(Config):
    """One VLM run: frozen encoder(s) → connector → backbone, two-stage training, grounding eval."""

    model: str = Field("pythia-tiny", description="language backbone (probes.backbones.BACKBONES or hf:ID)")
    encoder: str = Field("siglip-tiny", description="vision encoder (probes.vlm.encoders.ENCODERS, hf:, timm:)")
    encoder2: str | None = Field(None, description="second encoder: visual long sequence (MambaVLM)")
    feature_layer: int = Field(-2, description="encoder hidden layer whose patch features are used "
                               "(-2: the penultimate, LLaVA-1.5; -1: all blocks, Shaking Up VLMs)")
    feature_norm: bool = Field(False, description="apply the encoder's final norm to those features "
                               "(Shaking Up VLMs: on, with feature_layer -1; LLaVA-1.5: off)")
    concat: Concat = Field("sequence", description="two encoders: sequence (the visual long sequence, "
                           "MambaVLM) or channels (Concat[f1; f2] per patch, then the connector: Cobra)")
    encoder_image_size: int | None = Field(None, ge=8, description="input resolution of the encoder(s) "
                                           "(None: each one's own)")
    connector: str = Field("mlp", description="mlp | vss-mlp | vss-l2 | mamba-projector")
    scan: str | None = Field(None, description="bsm | csm (vss-*), cross-stitch | cross-cat (mamba-projector)")
    scan_shared: bool = Field(True, description="one Mamba layer for all scan directions (the papers)")
    layout: Layout = Field("task-agnostic", description="task-agnostic: image first; task-aware: "
                           "instruction, image, expression; query-first: instruction, expression, image")
    row_sep: RowSep = Field("after", description="row-separator token after each row, between rows, or none")
    instruction: str = Field(DEFAULT_INSTRUCTION, description="task instruction text")
    markers: MarkerKind = Field("new", description="new: three new tokens <img> </img> <row>; paper: "
                                "existing tokens (### around the image, && for rows, as the paper's code)")
    marker_ids: tuple[int, int, int] | None = Field(None, description="markers=paper: ids of image start, "
                                                    "image end, row separator (None: the rule in the README)")
    marker_init: Init = Field("mean", description="init of the new marker embeddings (default | mean | normal)")
    marker_noise: float = Field(DEFAULT_MARKER_NOISE, ge=0, description="seeded N(0, 1) noise added to each "
                                "new marker row, times the vocabulary's per-coordinate std (0: none)")
    max_steps: int = Field(1000, gt=0, description="total optimiser steps, both stages")
    stage1_steps: int = Field(200, ge=0, description="steps of stage 1 (connector only)")
    stage1_lr: float = Field(1e-3, gt=0, description="stage 1 peak learning rate (connector)")
    lr: float = Field(2e-5, gt=0, description="stage 2 peak learning rate (connector + LM)")
    warmup: float = Field(0.03, ge=0, lt=1, description="warmup fraction of each stage (cosine after)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(16, gt=0, description="training examples per step (both stages unless set)")
    stage1_batch_size: int | None = Field(None, gt=0, description="stage 1 examples per step (None: batch_size)")
    stage2_batch_size: int | None = Field(None, gt=0, description="stage 2 examples per step (None: batch_size)")
    micro_batch_size: int | None = Field(None, gt=0, description="examples per forward/backward pass: a "
                                         "step accumulates the gradients of its micro-batches (None: whole)")
    eval_batch_size: int = Field(64, gt=0, description="examples per evaluation batch")
    eval_every: int = Field(100, gt=0, description="evaluate every this many steps (and at each stage's end)")
    threshold: float = Field(0.9, gt=0, le=1, description="stop once held-out Acc@IoU≥0.5 reaches this")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient norm (None, or 0 on the command "
                                    "line: no clipping)", json_schema_extra={"cli_none": ["0"]})
    seed: int = Field(0, ge=0, description="seed of weights and batch order")
    out: Path | None = Field(None, description="run directory (None: runs/vlm/<run name>)")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto | cpu | cuda[:i]")
    precision: Precision = Field("auto", description="auto (bf16 autocast on CUDA, else fp32) | bf16 | fp32")
    scan_backend: ScanBackend = Field("auto", description="Mamba selective scan: auto | triton | mamba-ssm | torch | reference")
    checkpoint_every: int | None = Field(None, gt=0, description="steps between checkpoints (None: every evaluation)")
    threads: Threads = Field("auto", description=THREADS_HELP)
    log_to: LogTo = Field(default_factory=list, description=LOG_TO_HELP)
    data: VLMDataConfig = Field(default_factory=VLMDataConfig, description="where examples come from")

    @field_validator("marker_ids", mode="before")
    @classmethod
    def _three_ids(cls, value):
        if isinstance(value, (list, tuple)) and len(value) != 3:
            raise ValueError(f"marker_ids {list(value)} is not three token ids "
                             "(allowed: image start, image end, row separator)")
        return value

    @model_validator(mode="after")
    def _check(self) -> VLMTrainConfig:
        from probes.backbones import check_model_name  # lazy: keeps the CLI's --help free of torch
        from probes.vlm.connectors import get_connector
        from probes.vlm.encoders import check_encoder_name

        try:
            check_model_name(self.model)
            check_encoder_name(self.encoder)
            if self.encoder2 is not None:
                check_encoder_name(self.encoder2)
            spec = get_connector(self.connector)
            if self.concat == "channels" and spec.sources[0] > 1:
                raise ValueError(f"connector {self.connector} scans the visual long sequence of two maps: "
                                 f"it needs concat=sequence (got concat=channels)")
            spec.check_sources(self.connector_sources)
        except UserError as err:
            raise ValueError(str(err)) from None
        if self.scan is not None and self.scan not in spec.scans:
            allowed = " or ".join(spec.scans) if spec.scans else "none"
            raise ValueError(f"connector {self.connector} scans with {allowed}, got scan '{self.scan}'")
        if self.markers == "new" and self.marker_ids is not None:
            raise ValueError("marker_ids are for markers=paper (markers is new: three new tokens)")
        if self.stage1_steps > self.max_steps:
            raise ValueError(f"stage1_steps={self.stage1_steps} is more than max_steps={self.max_steps}")
        return self

    @property
    def encoders(self) -> list[str]:
        return [self.encoder] + ([self.encoder2] if self.encoder2 else [])

    @property
    def connector_sources(self) -> int:
        """Feature maps the connector receives: 1 when two encoders are concatenated by channels."""
        return 1 if self.concat == "channels" else len(self.encoders)

    def stage_batch_size(self, stage: int) -> int:
        size = self.stage1_batch_size if stage == 1 else self.stage2_batch_size
        return size or self.batch_size

    def examples_seen(self, step: int) -> int:
        """Training examples consumed by the first `step` updates (each stage at its batch size)."""
        first = min(step, self.stage1_steps)
        return first * self.stage_batch_size(1) + (step - first) * self.stage_batch_size(2)


class VLMEvalConfig(Config):
    """Evaluate a trained run (its latest checkpoint) on its held-out set or on other records."""

    run: Path = Field(..., description="run directory written by `probes vlm train`")
    eval_file: Path | None = Field(None, description="RefCOCO-style JSONL to evaluate on (default: the run's)")
    eval_size: int | None = Field(None, gt=0, description="evaluate on at most this many examples")
    box_format: Literal["xyxy", "xywh"] = Field("xyxy", description="pixel box format of --eval-file")
    batch_size: int | None = Field(None, gt=0, description="examples per batch (default: the run's)")
    out: Path | None = Field(None, description="predictions file (default: RUN/eval/predictions.jsonl)")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto | cpu | cuda[:i]")


__all__ = ["DEFAULT_INSTRUCTION", "DEFAULT_MARKER_NOISE", "LEGACY_VALUES", "PAPER_MARKER_IDS",
           "PAPER_MARKER_TEXT", "Concat", "Layout", "MarkerKind", "RowSep", "VLMDataConfig", "VLMEvalConfig", "VLMTrainConfig"]
