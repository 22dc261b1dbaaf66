"""The VLM: frozen encoder(s) → connector → any backbone of BACKBONES, and its token sequence.

Sequence assembly (one place: `SequenceBuilder`). With `rows × cols` image embeddings, marker
tokens `<img>`, `</img>` and `<row>` (`markers: new`, three new rows of the embedding; `markers:
paper` uses existing tokens instead, as the paper's code does: `###` before and after the image,
`&&` for rows), an instruction I and a referring expression E:

    task-agnostic  <img> p p p <row> p p p <row> </img> I\\n E\\n  [x1, y1, x2, y2] <eos>   (paper default)
    task-aware     I\\n <img> … </img> E\\n                        [x1, y1, x2, y2] <eos>   (paper Sec. 5.3.1)
    query-first    I\\n E\\n <img> … </img>                        [x1, y1, x2, y2] <eos>   (paper's suggestion)

`row_sep`: `after` puts `<row>` after every row (Fuyu, Fig. 1), `between` only between rows (App.
A.2's `##p11…p1N&&…pNN##` and the paper's code: `### p p && p p ###`), `none` leaves rows
unmarked. With two encoders concatenated along the sequence (`concat: sequence`, the visual long
sequence), the second map's rows follow the first's inside the same markers; `concat: channels`
joins them per patch before the connector (one map). Labels are on the
answer only: the box text and end-of-text.

Text → ids. A backbone with a tokenizer (hf: models) uses it. Config-built backbones have none, so
`ByteCodec` writes one id per UTF-8 byte: `offset + rank`, where rank is the byte's place in the
GPT-2/GPT-NeoX byte alphabet (printable bytes `!`…`~`, `¡`…`¬`, `®`…`ÿ`, then the rest in byte
order) and offset 2 skips `<|endoftext|>` and `<|padding|>`: in the GPT-NeoX vocabulary (Pythia
and Mamba) these are exactly its single-byte tokens, the ids SPEC §1's `answer(p) = p + 2` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from probes.backbones import Backbone, build_backbone, extend_vocabulary, family_of, hidden_states
from probes.errors import UserError
from probes.vlm.config import PAPER_MARKER_IDS, PAPER_MARKER_TEXT
from probes.vlm.connectors import build_connector
from probes.vlm.encoders import VisionEncoder, build_encoder
from probes.vlm.grounding import format_box

PATCH = -1  # placeholder id of an image-embedding slot in an assembled sequence
IGNORE = -100
MARKERS = ("<img>", "</img>", "<row>")
MARKER_NOISE_SEED = 7919  # the noise generator's seed is cfg.seed + this (the init's own uses cfg.seed)
BOX_TEXT_CHARS = len(format_box((0, 0, 0, 0)))  # "[0.00, 0.00, 0.00, 0.00]": 24 characters


# === Text ===


def _byte_alphabet() -> list[int]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    return printable + [b for b in range(256) if b not in printable]


class ByteCodec:
    """Text ↔ ids, one id per UTF-8 byte (see module docstring); ids ≥ offset + 256 decode as '�'."""

    def __init__(self, offset: int = 2):
        self.offset = offset
        self.byte_to_id = {b: offset + rank for rank, b in enumerate(_byte_alphabet())}
        self.id_to_byte = {i: b for b, i in self.byte_to_id.items()}
        self.max_id = offset + 255

    def encode(self, text: str) -> list[int]:
        return [self.byte_to_id[b] for b in text.encode()]

    def decode(self, ids: list[int]) -> str:
        out = bytearray()
        for i in ids:
            out.extend(bytes([self.id_to_byte[i]]) if i in self.id_to_byte else "\ufffd".encode())
        return out.decode(errors="replace")


class TokenizerCodec:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.max_id = len(tokenizer) - 1

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def text_codec(bb: Backbone):
    if bb.tokenizer is not None:
        return TokenizerCodec(bb.tokenizer)
    codec = ByteCodec()
    if codec.max_id >= bb.base_vocab:
        raise UserError(f"model {bb.name}: its {bb.base_vocab}-token vocabulary is too small for the "
                        f"byte codec (needs {codec.max_id + 1})")
    return codec


# === Sequence assembly ===


@dataclass(frozen=True)
class Markers:
    image_start: int
    image_end: int
    row_sep: int
    names: tuple[str, str, str] = MARKERS  # how render() shows them


class SequenceBuilder:
    """Token layout of one example; image slots are `PATCH` (see module docstring)."""

    def __init__(self, codec, markers: Markers, eos_id: int, layout: str = "task-agnostic",
                 row_sep: str = "after", instruction: str = ""):
        self.codec, self.markers, self.eos_id = codec, markers, eos_id
        self.layout, self.row_sep = layout, row_sep
        self.instruction = codec.encode(instruction + "\n") if instruction else []

    def image(self, rows: int, cols: int) -> list[int]:
        ids = [self.markers.image_start]
        for r in range(rows):
            ids += [PATCH] * cols
            if self.row_sep == "after" or (self.row_sep == "between" and r < rows - 1):
                ids.append(self.markers.row_sep)
        return ids + [self.markers.image_end]

    def prompt(self, expression: str, rows: int, cols: int) -> list[int]:
        image, query = self.image(rows, cols), self.codec.encode(expression + "\n")
        if self.layout == "task-agnostic":
            return image + self.instruction + query
        if self.layout == "task-aware":
            return self.instruction + image + query
        if self.layout == "query-first":
            return self.instruction + query + image
        raise UserError(f"unknown layout '{self.layout}' (allowed: task-agnostic, task-aware, query-first)")

    def answer(self, box) -> list[int]:
        return self.codec.encode(format_box(box)) + [self.eos_id]

    def render(self, ids: list[int]) -> str:
        """Readable form for tests and previews: markers by name, patches as `p`, text decoded."""
        m = self.markers
        names = {m.image_start: m.names[0], m.image_end: m.names[1], m.row_sep: m.names[2],
                 PATCH: "p", self.eos_id: "<eos>"}
        parts, text = [], []
        for i in ids:
            if i in names:
                if text:
                    parts.append(self.codec.decode(text).replace("\n", "\\n"))
                    text = []
                parts.append(names[i])
            else:
                text.append(i)
        if text:
            parts.append(self.codec.decode(text).replace("\n", "\\n"))
        return " ".join(parts)


@dataclass
class Batch:
    """Teacher-forced batch: inputs (B, L) with PATCH slots, right-padded; next-token targets (B, L)."""

    pixels: torch.Tensor  # (B, 3, H, W) in [0, 1]
    ids: torch.Tensor  # (B, L) input ids, PATCH at image slots, pad = eos
    targets: torch.Tensor  # (B, L) next-token targets, IGNORE except on the answer

    def to(self, device) -> Batch:
        return Batch(self.pixels.to(device), self.ids.to(device), self.targets.to(device))


def make_batch(builder: SequenceBuilder, pixels: torch.Tensor, expressions: list[str], boxes,
               rows: int, cols: int) -> Batch:
    seqs, targets = [], []
    for expression, box in zip(expressions, boxes):
        prompt, answer = builder.prompt(expression, rows, cols), builder.answer(box)
        full = prompt + answer
        seqs.append(full[:-1])
        targets.append([IGNORE] * (len(prompt) - 1) + answer)
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), builder.eos_id, dtype=torch.long)
    tgt = torch.full((len(seqs), length), IGNORE, dtype=torch.long)
    for i, (s, t) in enumerate(zip(seqs, targets)):
        ids[i, :len(s)] = torch.tensor(s)
        tgt[i, :len(t)] = torch.tensor(t)
    return Batch(pixels, ids, tgt)


# === The model ===


class VLM(nn.Module):
    def __init__(self, encoders: list[VisionEncoder], connector: nn.Module, backbone: Backbone,
                 builder: SequenceBuilder, concat: str = "sequence"):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.connector = connector
        self.lm = backbone.model
        self.backbone, self.builder, self.concat = backbone, builder, concat
        rows, cols = encoders[0].grid
        maps = 1 if concat == "channels" else len(encoders)
        self.grid = (rows * maps, cols)  # rows × cols of image embeddings in the sequence
        self.image_size = max(e.image_size for e in encoders)

    def visual(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W) → image embeddings (B, rows, cols, lm_dim)."""
        feats = [enc(pixels) for enc in self.encoders]
        grid = feats[0].shape[1:3]
        for k in range(1, len(feats)):  # the long sequence needs one grid: resize later maps to the first's
            if feats[k].shape[1:3] != grid:
                feats[k] = F.interpolate(feats[k].permute(0, 3, 1, 2), size=tuple(grid), mode="bilinear",
                                         align_corners=False, antialias=True).permute(0, 2, 3, 1)
        if self.concat == "channels":  # Concat[f1; f2] per patch (grids checked equal by build_vlm)
            feats = [torch.cat(feats, dim=-1)]
        dtype = next(self.connector.parameters()).dtype
        return self.connector([f.to(dtype) for f in feats])

    def embed(self, ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the image embeddings in the PATCH slots (row-major per example)."""
        emb = self.lm.get_input_embeddings()(ids.clamp(min=0))
        slots = ids == PATCH
        per_example = visual.shape[1] * visual.shape[2]
        if int(slots.sum()) != per_example * ids.shape[0]:
            raise ValueError(f"sequence has {int(slots.sum())} image slots, expected {per_example} per example")
        emb = emb.clone()
        emb[slots] = visual.reshape(-1, visual.shape[-1]).to(emb.dtype)
        return emb

    def loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean over the batch of each sequence's mean answer-token loss, per-sequence losses)."""
        emb = self.embed(batch.ids, self.visual(batch.pixels))
        h = hidden_states(self.lm, inputs_embeds=emb)
        mask = batch.targets != IGNORE
        logits = self.lm.get_output_embeddings()(h[mask]).float()  # only the answer slots reach the head
        token_loss = F.cross_entropy(logits, batch.targets[mask], reduction="none")
        row = mask.nonzero()[:, 0]
        per_seq = torch.zeros(len(mask), device=token_loss.device).index_add_(0, row, token_loss)
        per_seq = per_seq / mask.sum(1).clamp(min=1)
        return per_seq.mean(), per_seq.detach()

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, expressions: list[str], max_new_tokens: int,
                 use_cache: bool = True) -> list[str]:
        """Greedy decoding of each example's answer text (up to end-of-text or max_new_tokens)."""
        rows, cols = self.grid
        visual = self.visual(pixels)
        prompts = [self.builder.prompt(e, rows, cols) for e in expressions]
        out: list[str] = [""] * len(prompts)
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):  # equal lengths need no padding: exact for every backbone
            by_length.setdefault(len(p), []).append(i)
        for idx in by_length.values():
            ids = torch.tensor([prompts[i] for i in idx], device=pixels.device)
            emb = self.embed(ids, visual[idx])
            decode = greedy if use_cache else greedy_reference
            for i, seq in zip(idx, decode(self.lm, emb, max_new_tokens, self.builder.eos_id)):
                out[i] = self.builder.codec.decode(seq)
        return out


def _until_eos(seq: list[int], eos: int) -> list[int]:
    return seq[:seq.index(eos)] if eos in seq else seq


@torch.no_grad()
def greedy(lm: nn.Module, embeds: torch.Tensor, max_new_tokens: int, eos_id: int) -> list[list[int]]:
    """Greedy continuation of unpadded prompt embeddings with the backbone's cache (HF generate)."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=eos_id, pad_token_id=eos_id)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    out = lm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)
    return [_until_eos(row.tolist(), eos_id) for row in out]


@torch.no_grad()
def greedy_reference(lm: nn.Module, embeds: torch.Tensor, max_new_tokens: int, eos_id: int) -> list[list[int]]:
    """The same decoding by full recompute at every step: slow, obviously correct (for tests)."""
    table = lm.get_input_embeddings()
    steps = []
    for _ in range(max_new_tokens):
        nxt = lm.get_output_embeddings()(hidden_states(lm, inputs_embeds=embeds)[:, -1]).argmax(-1)
        steps.append(nxt)
        embeds = torch.cat([embeds, table(nxt)[:, None].to(embeds.dtype)], dim=1)
    rows = torch.stack(steps, 1).tolist()
    return [_until_eos(r, eos_id) for r in rows]


# === Building from a config ===


def build_vlm(cfg, device: str | torch.device = "cpu", lm_checkpoint: str | Path | None = None) -> VLM:
    """Encoder(s), backbone with its markers, connector, seeded; `cfg` is a VLMTrainConfig.
    With `lm_checkpoint` (a save_pretrained directory of a trained run) the LM, markers included,
    is loaded from there instead."""
    encoders = [build_encoder(name, seed=cfg.seed + k, device=device, feature_layer=cfg.feature_layer,
                              image_size=cfg.encoder_image_size, feature_norm=cfg.feature_norm)
                for k, name in enumerate(cfg.encoders)]
    if cfg.concat == "channels":
        check_same_grid(encoders)
    new = cfg.markers == "new"
    if lm_checkpoint is None:
        bb = build_backbone(cfg.model, seed=cfg.seed, device=device)
        bb.model.float()  # fp32 master weights; autocast handles bf16
        if new:
            ids = extend_vocabulary(bb, list(MARKERS), init=cfg.marker_init, seed=cfg.seed)
            perturb_rows(bb, ids, cfg.marker_noise, cfg.seed + MARKER_NOISE_SEED)
    else:
        bb = _load_lm(cfg.model, Path(lm_checkpoint), device, list(MARKERS) if new else [])
        ids = list(range(bb.base_vocab, bb.base_vocab + len(MARKERS)))
    codec = text_codec(bb)
    markers = Markers(*ids) if new else paper_markers(bb, codec, cfg.marker_ids)
    builder = SequenceBuilder(codec, markers, bb.eos_id, cfg.layout, cfg.row_sep, cfg.instruction)
    torch.manual_seed(cfg.seed)
    dims = [e.dim for e in encoders]
    connector = build_connector(cfg.connector, [sum(dims)] if cfg.concat == "channels" else dims,
                                bb.model.config.hidden_size, scan=cfg.scan, shared=cfg.scan_shared).to(device)
    return VLM(encoders, connector, bb, builder, cfg.concat)


def check_same_grid(encoders: list[VisionEncoder]) -> None:
    """concat=channels joins the maps patch by patch: their grids must be equal."""
    grids = {e.grid for e in encoders}
    if len(grids) > 1:
        shown = ", ".join(f"{e.name} {e.grid[0]}×{e.grid[1]}" for e in encoders)
        raise UserError(f"concat=channels needs one patch grid, got {shown}; set encoder_image_size so "
                        f"they match, or use concat=sequence")


def perturb_rows(bb: Backbone, ids: list[int], scale: float, seed: int) -> None:
    """Add seeded N(0, 1) · scale · (per-coordinate std of the existing rows) to rows `ids` of the
    input embedding (and of the output embedding when untied): new rows that start distinct."""
    if scale == 0:
        return
    model = bb.model
    tables = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not tables[0]:
        tables.append(out.weight)
    gen = torch.Generator().manual_seed(seed)
    for w in tables:
        std = w[:bb.base_vocab].detach().float().std(0).cpu()
        noise = torch.randn(len(ids), w.shape[1], generator=gen) * std * scale
        with torch.no_grad():
            w[ids] += noise.to(w.device, w.dtype)


def paper_markers(bb: Backbone, codec, marker_ids: tuple[int, int, int] | None) -> Markers:
    """`markers: paper`: existing tokens `###` (image start and end) and `&&` (rows). Ids: `marker_ids`
    if given; else, with a tokenizer, its ids of those strings (each must be one token); without one,
    GPT-NeoX's 4118 / 10494 when the vocabulary holds them, else its last two ids (never text)."""
    vocab = bb.base_vocab
    if marker_ids is None:
        if isinstance(codec, TokenizerCodec):
            marker_ids = tuple(_single_token(codec, text, bb.name) for text in PAPER_MARKER_TEXT)
        elif max(PAPER_MARKER_IDS) < vocab:
            marker_ids = PAPER_MARKER_IDS
        else:
            marker_ids = (vocab - 2, vocab - 2, vocab - 1)
    for i in marker_ids:
        if not 0 <= i < vocab or i == bb.eos_id:
            raise UserError(f"marker_ids {list(marker_ids)}: {i} is not a usable id of {bb.name}'s "
                            f"vocabulary (allowed: 0 … {vocab - 1}, except end-of-text {bb.eos_id})")
    return Markers(*marker_ids, names=PAPER_MARKER_TEXT)


def _single_token(codec: TokenizerCodec, text: str, model: str) -> int:
    ids = codec.encode(text)
    if len(ids) != 1:
        raise UserError(f"markers=paper: '{text}' is {len(ids)} tokens in {model}'s tokenizer, not one; "
                        f"set marker_ids [start, end, row]")
    return ids[0]


def _load_lm(name: str, path: Path, device, added: list[str]) -> Backbone:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path)).float().to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(path)) if (path / "tokenizer_config.json").is_file() else None
    return Backbone(name, family_of(model.config), model, tokenizer, added)


def max_answer_tokens(builder: SequenceBuilder) -> int:
    """Tokens a well-formed answer needs, end-of-text included, plus 2 of slack (a longer output is wrong)."""
    return len(builder.answer((0.12, 0.34, 0.56, 0.78))) + 2


__all__ = [
    "IGNORE",
    "MARKERS",
    "PATCH",
    "VLM",
    "Batch",
    "ByteCodec",
    "Markers",
    "SequenceBuilder",
    "TokenizerCodec",
    "build_vlm",
    "check_same_grid",
    "greedy",
    "greedy_reference",
    "make_batch",
    "max_answer_tokens",
    "paper_markers",
    "perturb_rows",
    "text_codec",
]
