"""ENCODERS registry: frozen vision encoders that turn pixels into a grid of patch features.

    enc = build_encoder("siglip-tiny", seed=0)
    feats = enc(pixels)            # pixels (B, 3, H, W) in [0, 1] → (B, rows, cols, D)

Every named encoder builds from its config with seeded random weights (nothing is downloaded):
tiny CPU presets (`*-tiny`: 32 px images, 8 px patches, d=32, 2 layers) and the published
towers of the papers (`eva02-l14-336` of *Shaking Up VLMs*, `siglip-so400m` and `clip-l14-336`
of VL-Mamba, `dinov2-l14` + `siglip-so400m` of MambaVLM), whose `source` names the weights.
Users with weights load them by id or path:

    hf:ID_OR_PATH          SigLIP / CLIP / DINOv2 through transformers' from_pretrained
    timm:NAME[@FILE]       EVA-02 (any timm ViT) through timm, pretrained (hub cache) or from FILE

EVA-02 needs timm (`pip install probes[vlm]`); it is imported only when an EVA-02 is built.
The encoder is frozen: no parameter requires grad and it always runs in eval mode. Features are
taken from hidden layer `feature_layer` (default -2, the penultimate layer, as LLaVA-1.5 whose
connector the paper follows; -1 is the output of all blocks), optionally passed through the
tower's final norm (`feature_norm`: SigLIP / CLIP `post_layernorm`, DINOv2 `layernorm`, timm
`norm`; *Shaking Up VLMs* takes all EVA-02 blocks plus that norm), prefix tokens (CLS, registers)
dropped, reshaped to the grid.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from probes.backbones import hub_offline, hub_unreachable
from probes.errors import UserError, first_line

Family = Literal["siglip", "clip", "dinov2", "eva02"]

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
NORMALISATION = {"siglip": (HALF, HALF), "clip": (CLIP_MEAN, CLIP_STD),
                 "dinov2": (IMAGENET_MEAN, IMAGENET_STD), "eva02": (CLIP_MEAN, CLIP_STD)}


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    family: Family
    config: dict[str, Any]  # transformers config kwargs, or timm create_model kwargs for eva02
    image_size: int  # pixels fed to the encoder (square)
    source: str | None = None  # published weights: hub id (transformers) or timm model name
    timm_name: str | None = field(default=None)  # eva02: the timm architecture to instantiate


def _vit(hidden, inter, layers, heads, image, patch, **extra) -> dict:
    return dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, image_size=image, patch_size=patch, **extra)


_TINY = dict(hidden=32, inter=64, layers=2, heads=2, image=32, patch=8)

ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in [
    EncoderSpec("siglip-tiny", "siglip", _vit(**_TINY), 32),
    EncoderSpec("clip-tiny", "clip", _vit(**_TINY), 32),
    EncoderSpec("dinov2-tiny", "dinov2", {**_vit(**_TINY), "mlp_ratio": 2}, 32),
    EncoderSpec("eva02-tiny", "eva02", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                            ref_feat_shape=(4, 4)), 32, timm_name="eva02_tiny_patch14_224"),
    # Published towers (Zhai et al. 2023; Radford et al. 2021; Oquab et al. 2023; Fang et al. 2023).
    EncoderSpec("siglip-so400m", "siglip", _vit(1152, 4304, 27, 16, 384, 14), 384,
                "google/siglip-so400m-patch14-384"),
    EncoderSpec("clip-l14-336", "clip", _vit(1024, 4096, 24, 16, 336, 14, hidden_act="quick_gelu"), 336,
                "openai/clip-vit-large-patch14-336"),
    EncoderSpec("dinov2-l14", "dinov2", {**_vit(1024, 4096, 24, 16, 518, 14), "mlp_ratio": 4}, 224,
                "facebook/dinov2-large"),
    EncoderSpec("eva02-l14-336", "eva02", {}, 336, "eva02_large_patch14_clip_336",
                timm_name="eva02_large_patch14_clip_336"),
]}


def known_encoders() -> str:
    return ", ".join([*ENCODERS, "hf:ID_OR_PATH", "timm:NAME[@FILE]"])


def check_encoder_name(name: str) -> str:
    if name in ENCODERS or (name.startswith(("hf:", "timm:")) and len(name.split(":", 1)[1]) > 0):
        return name
    raise UserError(f"unknown encoder '{name}' (known: {known_encoders()})")


class VisionEncoder(nn.Module):
    """A frozen tower: pixels (B, 3, H, W) in [0, 1] → features (B, rows, cols, dim)."""

    def __init__(self, name: str, family: str, model: nn.Module, image_size: int, patch_size: int,
                 dim: int, mean, std, feature_layer: int, prefix_tokens: int, feature_norm: bool = False):
        super().__init__()
        self.feature_norm = feature_norm
        self.name, self.family, self.model = name, family, model
        self.image_size, self.patch_size, self.dim = image_size, patch_size, dim
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.feature_layer, self.prefix_tokens = feature_layer, prefix_tokens
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True):  # frozen: never leaves eval mode
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size,) * 2, mode="bilinear",
                                   antialias=True, align_corners=False)
        x = (pixels - self.mean) / self.std
        if self.family == "eva02":
            tokens = _timm_tokens(self.model, x, self.feature_layer)
        else:
            extra = {}
            if self.family != "dinov2" and self.image_size != self.model.config.image_size:
                extra["interpolate_pos_encoding"] = True  # another resolution than the tower's own
            out = self.model(pixel_values=x.to(self.mean.dtype), output_hidden_states=True, **extra)
            tokens = out.hidden_states[self.feature_layer]
        if self.feature_norm:
            tokens = final_norm(self.model, self.family)(tokens)
        tokens = tokens[:, self.prefix_tokens:]
        rows, cols = self.grid
        if tokens.shape[1] != rows * cols:
            raise UserError(f"encoder {self.name}: {tokens.shape[1]} patch tokens, expected {rows}×{cols}")
        return tokens.reshape(tokens.shape[0], rows, cols, tokens.shape[-1])


_FINAL_NORM = {"siglip": ("post_layernorm", "vision_model.post_layernorm"),
               "clip": ("post_layernorm", "vision_model.post_layernorm"),
               "dinov2": ("layernorm",), "eva02": ("norm",)}  # transformers 5 paths first, then 4's


def final_norm(model: nn.Module, family: str) -> nn.Module:
    """The tower's last norm (what its own output applies after the blocks)."""
    for path in _FINAL_NORM[family]:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise UserError(f"cannot find the final norm of this {family} tower (looked for {', '.join(_FINAL_NORM[family])})")


def _timm_tokens(model: nn.Module, x: torch.Tensor, feature_layer: int) -> torch.Tensor:
    """Tokens (B, prefix + N, D) output by block `feature_layer` (hidden-state numbering: 0 = the
    embeddings, -1 = the last block), caught with a forward hook so that any timm version works."""
    depth = len(model.blocks)
    index = feature_layer % (depth + 1) - 1  # hidden state k is the output of block k - 1
    if index < 0:
        raise UserError("feature_layer 0 (the patch embeddings) is not supported for timm encoders")
    caught = []
    handle = model.blocks[index].register_forward_hook(lambda _m, _i, out: caught.append(out))
    try:
        model.forward_features(x)
    finally:
        handle.remove()
    return caught[0]


# === Builders ===


def build_encoder(name: str, seed: int = 0, device: str | torch.device = "cpu",
                  feature_layer: int = -2, image_size: int | None = None,
                  feature_norm: bool = False) -> VisionEncoder:
    """Build `name` (random weights from its config), or load `hf:` / `timm:` weights; frozen.
    `image_size` feeds the tower another resolution than its own (position embeddings are
    interpolated; timm towers keep their own size); `feature_norm` applies its final norm."""
    check_encoder_name(name)
    if name.startswith("hf:"):
        enc = _load_hf(name, name[3:], feature_layer)
    elif name.startswith("timm:"):
        target, _, file = name[5:].partition("@")
        enc = _build_timm(name, target, {}, None, feature_layer, pretrained=True, file=file or None)
    else:
        spec = ENCODERS[name]
        torch.manual_seed(seed)
        if spec.family == "eva02":
            enc = _build_timm(name, spec.timm_name, spec.config, spec.image_size, feature_layer, pretrained=False)
        else:
            enc = _build_hf_from_config(spec, feature_layer)
    if image_size is not None and image_size != enc.image_size:
        if enc.family == "eva02":
            raise UserError(f"encoder {name}: timm towers run at their own {enc.image_size} px "
                            f"(got encoder_image_size {image_size})")
        if image_size < enc.patch_size:
            raise UserError(f"encoder_image_size {image_size} is smaller than {name}'s {enc.patch_size} px patches")
        enc.image_size = image_size
        enc.grid = (image_size // enc.patch_size,) * 2  # strided patch convolutions floor: 384 px / 14 → 27
    n_hidden = enc.model.config.num_hidden_layers if enc.family != "eva02" else len(enc.model.blocks)
    if not -(n_hidden + 1) <= feature_layer <= n_hidden:
        raise UserError(f"feature_layer {feature_layer} is outside encoder {name}'s {n_hidden} layers "
                        f"(allowed: {-(n_hidden + 1)} … {n_hidden})")
    enc.feature_norm = feature_norm
    return enc.to(device)


def _hf_classes(family: str):
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2Config,
        Dinov2Model,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    return {"siglip": (SiglipVisionConfig, SiglipVisionModel), "clip": (CLIPVisionConfig, CLIPVisionModel),
            "dinov2": (Dinov2Config, Dinov2Model)}[family]


def _prefix(family: str, config) -> int:
    if family == "siglip":
        return 0
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)  # CLS (+ registers)


def _build_hf_from_config(spec: EncoderSpec, feature_layer: int) -> VisionEncoder:
    config_cls, model_cls = _hf_classes(spec.family)
    kwargs = dict(spec.config)
    if spec.family == "dinov2":
        kwargs.pop("intermediate_size", None)  # DINOv2 sizes its MLP with mlp_ratio
    config = config_cls(**kwargs)
    model = model_cls(config)
    mean, std = NORMALISATION[spec.family]
    return VisionEncoder(spec.name, spec.family, model, spec.image_size, config.patch_size, config.hidden_size,
                         mean, std, feature_layer, _prefix(spec.family, config))


_HF_FAMILY = {"siglip": "siglip", "siglip_vision_model": "siglip", "clip": "clip",
              "clip_vision_model": "clip", "dinov2": "dinov2"}


def _load_hf(name: str, id_or_path: str, feature_layer: int) -> VisionEncoder:
    """A local directory, or a hub id: from the network when the hub answers, else from the local
    cache alone (probes.backbones.hub_offline), so an uncached id offline fails at once."""
    local = Path(id_or_path).expanduser()
    offline = None if local.exists() else hub_unreachable()
    try:
        with hub_offline() if offline else contextlib.nullcontext():
            return _load_hf_source(name, str(local) if local.exists() else id_or_path, feature_layer)
    except UserError as err:
        if offline is None:
            raise
        raise UserError(f"{err} (the hub cannot be reached: {offline}; download the encoder where there is "
                        f"network, e.g. `hf download {id_or_path} --local-dir DIR`, and pass hf:DIR)") from None


def _load_hf_source(name: str, source: str, feature_layer: int) -> VisionEncoder:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        first = first_line(err)
        raise UserError(f"{name}: cannot load its config ({first})") from None
    family = _HF_FAMILY.get(config.model_type)
    if family is None:
        raise UserError(f"{name}: model type '{config.model_type}' is not a supported vision tower "
                        f"(allowed: {', '.join(sorted(_HF_FAMILY))})")
    _, model_cls = _hf_classes(family)
    try:
        model = model_cls.from_pretrained(source)
    except (OSError, ValueError) as err:
        first = first_line(err)
        raise UserError(f"{name}: cannot load it with from_pretrained ({first})") from None
    cfg = model.config
    mean, std = _preprocessor_stats(source) or NORMALISATION[family]
    image_size = 224 if family == "dinov2" else cfg.image_size  # DINOv2 configs hold the 518 px pos-emb size
    return VisionEncoder(name, family, model, image_size, cfg.patch_size, cfg.hidden_size, mean, std,
                         feature_layer, _prefix(family, cfg))


def _preprocessor_stats(source: str):
    """image_mean / image_std of the checkpoint's preprocessor_config.json, when it has one."""
    try:
        from transformers.utils import cached_file

        path = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
        if path is None:
            return None
        data = json.loads(Path(path).read_text())
        return tuple(data["image_mean"]), tuple(data["image_std"])
    except Exception:  # noqa: BLE001 - no readable processor file: the family's standard statistics
        return None


def _build_timm(name: str, timm_name: str, kwargs: dict, image_size: int | None, feature_layer: int,
                pretrained: bool, file: str | None = None) -> VisionEncoder:
    try:
        import timm
    except ImportError:
        raise UserError("EVA-02 needs timm: pip install probes[vlm]") from None
    extra: dict[str, Any] = {"num_classes": 0}
    if file:
        if not Path(file).expanduser().is_file():
            raise UserError(f"{name}: weights file not found: {file}")
        extra["pretrained_cfg_overlay"] = {"file": str(Path(file).expanduser())}
    try:
        model = timm.create_model(timm_name, pretrained=pretrained, **{**kwargs, **extra})
    except (RuntimeError, OSError, ValueError) as err:
        first = first_line(err)
        raise UserError(f"{name}: timm cannot build '{timm_name}' ({first})") from None
    size = image_size or model.patch_embed.img_size[0]
    patch = model.patch_embed.patch_size[0]
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean, std = tuple(cfg.get("mean", CLIP_MEAN)), tuple(cfg.get("std", CLIP_STD))
    return VisionEncoder(name, "eva02", model, size, patch, model.embed_dim, mean, std, feature_layer,
                         int(getattr(model, "num_prefix_tokens", 1)))


__all__ = ["ENCODERS", "EncoderSpec", "VisionEncoder", "build_encoder", "check_encoder_name", "final_norm",
           "known_encoders"]
