"""In-context copying (the induction test): a random token sequence, then the same sequence again.

    rows = copy_test(model, lengths=[16, 64, 128], batch=32, seed=0)
    # [{"length": 16, "copy": "first", "loss": 5.6, "accuracy": 0.004}, {"length": 16, "copy": "second", ...}, ...]

Each sequence is `<|endoftext|> s s` with s = `length` tokens drawn uniformly (seeded) from ids
2..257 capped by the vocabulary (every byte of the byte tokenizer; in GPT-NeoX single bytes too).
Scored are the next-token predictions of s[1:] in each copy (the first token of a copy is not
predictable from what precedes it): on the first copy a model can only guess (loss near
ln(256) = 5.55 for a uniform guess), on the second it can copy from the first. A model that copies in
context has a second-copy loss far below its first-copy loss and accuracy near 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

COPY_COLUMNS = ["length", "copy", "loss", "accuracy"]
ID_LOW, ID_HIGH = 2, 258  # ids drawn from [ID_LOW, min(ID_HIGH, vocab))


def copy_sequences(length: int, batch: int, vocab_size: int, seed: int = 0, bos_id: int = 0) -> torch.Tensor:
    """(batch, 2 * length + 1) int64: bos, s, s with s uniform in [2, min(258, vocab_size))."""
    high = min(ID_HIGH, vocab_size)
    if high - ID_LOW < 2:
        raise ValueError(f"vocabulary of {vocab_size} ids is too small for a copy test (need > {ID_LOW + 1})")
    s = np.random.default_rng([seed, length]).integers(ID_LOW, high, size=(batch, length))
    bos = np.full((batch, 1), bos_id)
    return torch.from_numpy(np.concatenate([bos, s, s], axis=1))


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from transformers import PreTrainedModel

    # a full-sequence pass needs no generation cache (transformers builds one in eval mode)
    out = model(input_ids=x, use_cache=False) if isinstance(model, PreTrainedModel) else model(input_ids=x)
    return out.logits if hasattr(out, "logits") else out


def vocab_size_of(model: torch.nn.Module) -> int:
    if hasattr(model, "get_input_embeddings"):
        return model.get_input_embeddings().num_embeddings
    return int(model.config.vocab_size)


@torch.inference_mode()
def copy_test(model: torch.nn.Module, lengths: Sequence[int], batch: int = 32, seed: int = 0,
              autocast: torch.dtype | None = None, bos_id: int | None = None) -> list[dict]:
    """One row per length × copy (first, second): mean loss and next-token accuracy over s[1:].

    The sequences start with `bos_id` (default: the model config's eos_token_id, else 0).
    """
    if bos_id is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
        bos_id = int(eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vocab = vocab_size_of(model)
    rows = []
    for length in lengths:
        x = copy_sequences(length, batch, vocab, seed, bos_id).to(device)
        ctx = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with ctx:
            logits = _logits(model, x[:, :-1])
        # input index i predicts x[i + 1]; copy c holds x[1 + c*L : 1 + (c+1)*L], scored from its 2nd token
        for copy, start in (("first", 1), ("second", 1 + length)):
            pred = logits[:, start:start + length - 1].float()
            target = x[:, start + 1:start + length]
            loss = F.cross_entropy(pred.flatten(0, 1), target.flatten())
            acc = (pred.argmax(-1) == target).float().mean()
            rows.append({"length": int(length), "copy": copy, "loss": float(loss), "accuracy": float(acc)})
    model.train(was_training)
    return rows


def format_table(rows: list[dict]) -> list[str]:
    """Lines: length, loss and accuracy on each copy."""
    by = {(r["length"], r["copy"]): r for r in rows}
    lines = [f"{'length':>6}  {'loss 1st':>8}  {'loss 2nd':>8}  {'acc 1st':>7}  {'acc 2nd':>7}"]
    for length in dict.fromkeys(r["length"] for r in rows):
        a, b = by[(length, "first")], by[(length, "second")]
        lines.append(f"{length:>6}  {a['loss']:>8.3f}  {b['loss']:>8.3f}  {a['accuracy']:>7.3f}  {b['accuracy']:>7.3f}")
    return lines


__all__ = ["COPY_COLUMNS", "copy_sequences", "copy_test", "format_table", "vocab_size_of"]
