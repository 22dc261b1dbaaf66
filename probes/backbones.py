"""BACKBONES registry: model name → builder, plus vocabulary extension with seeded row init.

Pythia (GPT-NeoX) and Mamba v1 live in one table with their published sizes and hub ids.
Every named model is built from its config with random weights (nothing is downloaded);
`hf:ID_OR_PATH` loads any transformers causal LM a user has through `from_pretrained`.

    bb = build_backbone("mamba-tiny", seed=0)
    new_ids = extend_vocabulary(bb, ["<s_0>", "<s_1>", "<out>", "<sep>"], init="mean", seed=0)
"""

from __future__ import annotations

import json
import pickle
import socket
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from probes.errors import UserError
from probes.schema import LOADED_PREFIXES

Init = Literal["default", "mean", "normal"]
INITS: tuple[str, ...] = ("default", "mean", "normal")


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: Literal["pythia", "mamba"]
    config: dict[str, Any]
    hub_id: str | None = None  # where the published weights live, for `hf:` users

    def build_config(self):
        from transformers import GPTNeoXConfig, MambaConfig

        cls = GPTNeoXConfig if self.family == "pythia" else MambaConfig
        return cls(**self.config)


_PYTHIA_COMMON = dict(vocab_size=50304, rotary_pct=0.25, max_position_embeddings=2048,
                      use_parallel_residual=True, tie_word_embeddings=False,
                      bos_token_id=0, eos_token_id=0)
_MAMBA_COMMON = dict(vocab_size=50280, state_size=16, expand=2, conv_kernel=4,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)


def _pythia(name: str, hidden: int, layers: int, heads: int, **extra) -> BackboneSpec:
    cfg = {**_PYTHIA_COMMON, "hidden_size": hidden, "num_hidden_layers": layers,
           "num_attention_heads": heads, "intermediate_size": 4 * hidden, **extra}
    hub = None if name.endswith("tiny") else f"EleutherAI/{name}"
    return BackboneSpec(name, "pythia", cfg, hub)


def _mamba(name: str, hidden: int, layers: int, **extra) -> BackboneSpec:
    cfg = {**_MAMBA_COMMON, "hidden_size": hidden, "num_hidden_layers": layers, **extra}
    hub = None if name.endswith("tiny") else f"state-spaces/{name}-hf"
    return BackboneSpec(name, "mamba", cfg, hub)


# Published sizes (Pythia: Biderman et al. 2023, table 1; Mamba: state-spaces/mamba-*-hf configs).
# Tiny presets are CPU-sized: d=128, 2 layers, a 1024-token vocabulary (answer ids p + 2 fit
# for N <= 1022). pythia-tiny rotates every head dimension (rotary_pct=1.0) with 8 heads of 16:
# from random init it must learn positions from rotary alone, and with Pythia's 0.25 and 4 heads
# it needed 2-4x more steps (N=8: 300 vs 1175 suffix, 250 vs 2050 prefix; tests/test_regression.py).
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        _pythia("pythia-tiny", 128, 2, 8, vocab_size=1024, max_position_embeddings=1024, rotary_pct=1.0),
        _pythia("pythia-14m", 128, 6, 4),
        _pythia("pythia-70m", 512, 6, 8),
        _pythia("pythia-160m", 768, 12, 12),
        _pythia("pythia-410m", 1024, 24, 16),
        _pythia("pythia-1b", 2048, 16, 8),
        _pythia("pythia-1.4b", 2048, 24, 16),
        _pythia("pythia-2.8b", 2560, 32, 32),
        _mamba("mamba-tiny", 128, 2, vocab_size=1024),
        _mamba("mamba-130m", 768, 24),
        _mamba("mamba-370m", 1024, 48),
        _mamba("mamba-790m", 1536, 48),
        _mamba("mamba-1.4b", 2048, 48),
        _mamba("mamba-2.8b", 2560, 64),
    ]
}


def known_models() -> str:
    return ", ".join([*BACKBONES, "hf:ID_OR_PATH", "config:DIR"])


def check_model_name(name: str) -> str:
    if name in BACKBONES or any(name.startswith(p) and len(name) > len(p) for p in LOADED_PREFIXES):
        return name
    raise UserError(f"unknown model '{name}' (known: {known_models()})")


@dataclass
class Backbone:
    """A causal LM and what the probes need to know about it."""

    name: str
    family: str  # "pythia" | "mamba" | the transformers model_type for hf: models
    model: nn.Module
    tokenizer: Any | None = None
    added_tokens: list[str] = field(default_factory=list)

    @property
    def base_vocab(self) -> int:
        """Rows of the input embedding before any `extend_vocabulary`."""
        return self.model.get_input_embeddings().num_embeddings - len(self.added_tokens)

    @property
    def eos_id(self) -> int:
        eos = getattr(self.model.config, "eos_token_id", None)
        if isinstance(eos, list):
            eos = eos[0]
        return 0 if eos is None else int(eos)


def build_backbone(name: str, seed: int = 0, device: str | torch.device = "cpu") -> Backbone:
    """Build `name` from its config with seeded random weights, or load an `hf:` model."""
    check_model_name(name)
    if name.startswith("hf:"):
        return _load_pretrained(name[3:], device)
    if name.startswith("config:"):
        return _random_twin(name[len("config:"):], seed, device)
    spec = BACKBONES[name]
    return Backbone(name, spec.family, build_from_config(spec.build_config(), seed, device))


def build_from_config(config, seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """A causal LM of `config` (GPT-NeoX, Mamba or any transformers config) with weights drawn
    after torch.manual_seed(seed): the same config and seed give the same weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config).float()


def family_of(config) -> str:
    """pythia | mamba | the transformers model_type of other models."""
    return {"gpt_neox": "pythia", "mamba": "mamba"}.get(config.model_type, config.model_type)


def _local_model_dir(id_or_path: str, prefix: str) -> Path:
    local = Path(id_or_path).expanduser()
    if not (local / "config.json").exists():
        raise UserError(f"{prefix}{id_or_path}: no model there (expected a directory with config.json "
                        f"written by save_pretrained)")
    return local


def _optional_tokenizer(where: str, local_only: bool = True):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where, local_files_only=local_only)
    except (OSError, ValueError, TypeError):
        return None  # data are token ids; a tokenizer is optional


def _random_twin(path: str, seed: int, device: str | torch.device) -> Backbone:
    """`config:DIR`: the architecture and tokenizer of the model saved in DIR, fresh seeded weights."""
    from transformers import AutoConfig

    local = _local_model_dir(path, "config:")
    try:
        config = AutoConfig.from_pretrained(str(local))
    except (OSError, ValueError) as err:
        raise UserError(f"config:{path}: cannot read its config.json ({_first_line(err)})") from None
    model = build_from_config(config, seed, device)
    return Backbone(f"config:{path}", family_of(config), model, _optional_tokenizer(str(local)))


# === Sized configs for pretraining (probes.pretrain) ===


def custom_config(family: str, vocab_size: int, eos_id: int = 0, pad_id: int = 1, **sizes: Any):
    """A GPT-NeoX (pythia) or Mamba config of the given sizes and vocabulary (special ids eos, pad).

    pythia defaults follow the Pythia suite (parallel residual, untied head, MLP 4 d); `sizes`
    are the family's transformers config keys (hidden_size, num_hidden_layers, ...).
    """
    if family not in ("pythia", "mamba"):
        raise UserError(f"unknown family '{family}' (allowed: pythia, mamba)")
    common = _PYTHIA_COMMON if family == "pythia" else _MAMBA_COMMON
    cfg = {**common, **sizes, "vocab_size": vocab_size, "bos_token_id": eos_id, "eos_token_id": eos_id,
           "pad_token_id": pad_id}
    if family == "pythia":
        cfg.setdefault("intermediate_size", 4 * cfg["hidden_size"])
    return BackboneSpec("custom", family, cfg).build_config()


def preset_config(name: str, vocab_size: int, eos_id: int = 0, pad_id: int = 1):
    """The config of BACKBONES[name] with another vocabulary (a pretraining tokenizer's)."""
    check_model_name(name)
    spec = BACKBONES[name]
    sizes = {k: v for k, v in spec.config.items() if k not in ("vocab_size", "bos_token_id", "eos_token_id",
                                                             "pad_token_id")}
    return custom_config(spec.family, vocab_size, eos_id, pad_id, **sizes)


HUB_TIMEOUT_S = 3.0  # one TCP connection to the hub's host; transformers itself retries for ~25-40 s


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached now, or None when it can: HF_HUB_OFFLINE is set, or
    one TCP connection to the endpoint's host fails within HUB_TIMEOUT_S (no DNS: fails at once)."""
    from huggingface_hub import constants, is_offline_mode

    if is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as err:
        return f"{url.hostname} is unreachable: {err.strerror or type(err).__name__}"
    return None


@contextmanager
def hub_offline():
    """huggingface_hub's own offline switch (what HF_HUB_OFFLINE=1 sets) on for the block: once the hub
    is known unreachable, no request at all (not even the library's user-agent lookup) is tried."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_saved_model(local: Path, name: str) -> None:
    """A UserError naming the file when a saved model's config.json is not a JSON object with a
    model_type, or a *.safetensors file's header does not match its size (truncated, garbage, empty)."""
    from safetensors import SafetensorError, safe_open

    config = local / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{name}: {config} is unreadable or not JSON ({_first_line(err)}); "
                        f"save the model again with save_pretrained") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise UserError(f"{name}: {config} names no model_type; save the model again with save_pretrained")
    for weights in sorted(local.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as f:  # reads the header, checks it against the size
                f.keys()
        except (OSError, SafetensorError) as err:
            raise UserError(f"{name}: {weights} is damaged ({_first_line(err)}); save the model again with "
                            f"save_pretrained, or download it again") from None


# What loading a user's weights raises for a damaged file (safetensors, a pickled .bin, a bad config).
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError)


def _from_pretrained(source: str, name: str, local_only: bool):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only)
    except (*_LOAD_ERRORS, SafetensorError) as err:
        raise UserError(f"{name}: cannot load it with from_pretrained ({_first_line(err)})") from None


def _load_from_hub(hub_id: str) -> tuple[nn.Module, bool]:
    """(model, whether only the local cache may be used): the network only when the hub answers;
    offline, the cache alone, and a UserError at once (not after ~40 s of retries) when it lacks the id."""
    name = f"hf:{hub_id}"
    offline = hub_unreachable()
    if offline is None:
        return _from_pretrained(hub_id, name, local_only=False), False
    try:
        with hub_offline():
            return _from_pretrained(hub_id, name, local_only=True), True
    except UserError:
        raise UserError(f"{name}: its weights are not in the local Hugging Face cache and the hub cannot be "
                        f"reached ({offline}); download them where there is network (`hf download {hub_id} "
                        f"--local-dir DIR`) and pass hf:DIR (a directory written by save_pretrained)") from None


def _load_pretrained(id_or_path: str, device: str | torch.device) -> Backbone:
    name = f"hf:{id_or_path}"
    local = Path(id_or_path).expanduser()
    looks_local = local.exists() or id_or_path.startswith((".", "/", "~")) or id_or_path.count("/") > 1
    if looks_local:
        if not (local / "config.json").exists():
            raise UserError(f"{name}: no model there (expected a directory with config.json "
                            f"written by save_pretrained)")
        check_saved_model(local, name)
        model, source, local_only = _from_pretrained(str(local), name, local_only=True), str(local), True
    else:
        (model, local_only), source = _load_from_hub(id_or_path), id_or_path
    with hub_offline() if local_only else nullcontext():
        tokenizer = _optional_tokenizer(source, local_only)
    return Backbone(name, family_of(model.config), model.to(device), tokenizer)


# === Vocabulary extension ===


@torch.no_grad()
def _new_rows(old: torch.Tensor, k: int, init: str, std: float, gen: torch.Generator) -> torch.Tensor:
    """k new embedding rows from `old` (V, d) by `init`, drawn from the seeded generator."""
    old = old.float()
    d = old.shape[1]
    if init == "default":  # what the model's own _init_weights does for embeddings
        return torch.randn(k, d, generator=gen) * std
    mean = old.mean(0)
    if init == "mean":
        return mean.expand(k, d).clone()
    # normal: N(mean, cov) of the existing rows (Hewitt 2021), via a Cholesky factor
    centred = old - mean
    cov = centred.T @ centred / max(old.shape[0] - 1, 1)
    eye = torch.eye(d)
    for jitter in (0.0, 1e-6, 1e-4):  # tiny ridge if the covariance is rank-deficient
        chol, info = torch.linalg.cholesky_ex(cov + jitter * cov.diagonal().mean() * eye)
        if info == 0:
            break
    return mean + torch.randn(k, d, generator=gen) @ chol.T


def extend_vocabulary(bb: Backbone, names: list[str], init: str = "default", seed: int = 0) -> list[int]:
    """Append one embedding row per name (input and, when untied, output) and init them.

    Ids are `base_vocab + i` in order. A tokenizer, when the backbone has one, gets the names
    as added tokens at exactly those ids (padding placeholders fill any gap first).
    """
    if init not in INITS:
        raise UserError(f"unknown init '{init}' (allowed: {', '.join(INITS)})")
    model = bb.model
    start = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(start + len(names), mean_resizing=False)
    gen = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02))
    embeddings = [model.get_input_embeddings()]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not embeddings[0].weight:
        embeddings.append(out)
    for emb in embeddings:
        w = emb.weight
        rows = _new_rows(w[:start].detach().cpu(), len(names), init, std, gen)
        with torch.no_grad():
            w[start:] = rows.to(w.device, w.dtype)
    if bb.tokenizer is not None:
        _add_to_tokenizer(bb.tokenizer, start, names)
    bb.added_tokens.extend(names)
    return list(range(start, start + len(names)))


def _add_to_tokenizer(tokenizer, start: int, names: list[str]) -> None:
    gap = start - len(tokenizer)
    if gap > 0:
        tokenizer.add_tokens([f"<|probes_unused_{i}|>" for i in range(gap)], special_tokens=True)
    if len(tokenizer) != start:
        raise UserError(f"tokenizer has {len(tokenizer)} tokens but the embedding {start} rows; "
                        f"cannot align new tokens")
    tokenizer.add_tokens(names, special_tokens=True)


# === Forward pass at a few positions ===


def hidden_states(model: nn.Module, input_ids: torch.Tensor | None = None,
                  inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states (B, L, d) of the model's trunk, without the LM head."""
    out = model.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def slot_logits(model: nn.Module, input_ids: torch.Tensor, slots: torch.Tensor | list[int]) -> torch.Tensor:
    """Logits (B, len(slots), V) only at `slots`: the LM head never sees the other positions."""
    h = hidden_states(model, input_ids)
    return model.get_output_embeddings()(h[:, slots])


def compute_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the scored slots: logits (B, S, V), targets (B, S)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(name: str) -> str:
    """`pythia-160m: pythia, d=768, 12 layers, 162M params` (built on the meta device)."""
    from transformers import GPTNeoXForCausalLM, MambaForCausalLM

    spec = BACKBONES[name]
    config = spec.build_config()
    cls = GPTNeoXForCausalLM if spec.family == "pythia" else MambaForCausalLM
    with torch.device("meta"):
        n = count_parameters(cls(config))
    return f"{name}: {spec.family}, d={config.hidden_size}, {config.num_hidden_layers} layers, {n / 1e6:.0f}M params"


__all__ = ["BACKBONES", "INITS", "LOADED_PREFIXES", "Backbone", "BackboneSpec", "build_backbone", "build_from_config",
           "check_model_name", "check_saved_model", "custom_config", "describe", "extend_vocabulary", "family_of",
           "hidden_states", "hub_offline", "hub_unreachable", "known_models", "preset_config", "slot_logits"]
