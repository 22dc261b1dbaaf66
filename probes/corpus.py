"""Pretraining corpus (probes.pretrain): local documents, a tokenizer, packed windows, a held-out split.

    corpus = build_corpus(cfg)                      # cfg: probes.config.PretrainConfig
    windows = PackedWindows(corpus.train, cfg.seq_len, cfg.batch_size, cfg.seed)
    x = windows.batch(step)                         # (B, seq_len + 1) token ids, a function of (seed, step)

Documents are files, directories (their files ending in `extensions`, walked in sorted order) or
globs; by default the .py/.md/.rst/.txt files of the interpreter's installed packages (its
site-packages directories, from sysconfig and site), so a corpus exists offline on any machine.
Files are read in sorted order until `max_corpus_bytes`. A document is held out when a stable hash
of its name (its path relative to the directory it was found in) falls below `heldout_fraction`.
Documents are joined with `<|endoftext|>` into one uint16 token array per split.

Tokenizers (TOKENIZERS), both transformers PreTrainedTokenizerFast built with `tokenizers`:
    byte  id 0 `<|endoftext|>`, id 1 `<|padding|>`, ids 2..257 = bytes 0..255, so the probe's
          answer id p + 2 is byte p (as in GPT-NeoX, where ids 2.. are single bytes): N <= 256 fits
    bpe   a byte-level BPE trained on the training split: the same two special ids first, then the
          256 byte symbols, then merges up to `vocab_size`
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import site
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.errors import UserError

EOS, PAD = "<|endoftext|>", "<|padding|>"
EOS_ID, PAD_ID, BYTE_OFFSET = 0, 1, 2  # byte b is token b + BYTE_OFFSET
SKIP_DIRS = ("__pycache__", "node_modules")


# === Finding documents ===


@dataclass(frozen=True)
class Document:
    name: str  # stable across machines: the path relative to where it was found
    path: Path
    size: int


def default_roots() -> list[Path]:
    """The interpreter's site-packages directories (sysconfig and site), existing, without repeats."""
    paths = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    paths += [*getattr(site, "getsitepackages", list)(), site.getusersitepackages()]
    roots: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir() and path.resolve() not in [r.resolve() for r in roots]:
            roots.append(path)
    return roots


def _walk(root: Path, extensions: tuple[str, ...]) -> Iterator[Document]:
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            path = Path(here) / name
            if name.endswith(extensions) and path.is_file():
                yield Document(path.relative_to(root).as_posix(), path, path.stat().st_size)


def _source(source: str, extensions: tuple[str, ...]) -> Iterator[Document]:
    if any(c in source for c in "*?["):
        matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
        if not matches:
            raise UserError(f"corpus glob '{source}' matches no file")
        for match in matches:
            path = Path(match)
            if path.is_file():
                yield Document(path.as_posix(), path, path.stat().st_size)
        return
    path = Path(source).expanduser()
    if path.is_file():
        yield Document(path.name, path, path.stat().st_size)
    elif path.is_dir():
        yield from _walk(path, extensions)
    else:
        raise UserError(f"corpus path '{source}' does not exist (allowed: files, directories or globs)")


def find_documents(sources: list[str], extensions: list[str], max_bytes: int) -> list[Document]:
    """Documents of `sources` (default: default_roots()) in order, until `max_bytes` in all; the
    last one may be cut to fit."""
    tuple_ext = tuple(extensions)
    streams = [_source(s, tuple_ext) for s in sources] if sources else [_walk(r, tuple_ext) for r in default_roots()]
    docs, total = [], 0
    for stream in streams:
        for doc in stream:
            if doc.size == 0:
                continue
            take = min(doc.size, max_bytes - total)
            docs.append(Document(doc.name, doc.path, take))
            total += take
            if total >= max_bytes:
                return docs
    return docs


def read_document(doc: Document) -> bytes:
    try:
        with open(doc.path, "rb") as f:
            return f.read(doc.size)
    except OSError as err:
        raise UserError(f"cannot read corpus file {doc.path}: {err.strerror}") from None


def is_heldout(name: str, fraction: float) -> bool:
    """A stable (machine- and run-independent) choice of held-out documents by name."""
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def split_documents(docs: list[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    """(training, held-out) documents; each split gets at least one document."""
    if len(docs) < 2:
        raise UserError(f"the corpus has {len(docs)} document(s); a held-out split needs at least 2 "
                        f"(add files or directories)")
    held = [is_heldout(d.name, fraction) for d in docs]
    if not any(held) or all(held):  # tiny corpora: hold out (or keep) the one with the smallest hash
        first = min(range(len(docs)), key=lambda i: hashlib.sha256(docs[i].name.encode()).digest())
        held = [(i == first) for i in range(len(docs))]
    return [d for d, h in zip(docs, held) if not h], [d for d, h in zip(docs, held) if h]


# === Tokenizers ===


def _fast(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD)


def byte_tokenizer(_texts: list[bytes] | None = None, _vocab_size: int = 258):
    """ids 0, 1 = `<|endoftext|>`, `<|padding|>`; id b + 2 = byte b (a BPE without merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = bytes_to_unicode()  # byte -> the printable character byte-level tokenizers use
    vocab = {EOS: EOS_ID, PAD: PAD_ID, **{symbols[b]: b + BYTE_OFFSET for b in range(256)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS, PAD])
    return _fast(tok)


def bpe_tokenizer(texts: list[bytes], vocab_size: int):
    """A byte-level BPE trained on `texts`: specials first, then the 256 byte symbols, then merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((t.decode("utf-8", errors="replace") for t in texts), trainer, length=len(texts))
    return _fast(tok)


def encode_bytes(_tokenizer, texts: list[bytes]) -> list[np.ndarray]:
    """The byte tokenizer's ids without calling it: byte b -> b + 2."""
    return [np.frombuffer(t, dtype=np.uint8).astype(np.uint16) + BYTE_OFFSET for t in texts]


def encode_with(tokenizer, texts: list[bytes]) -> list[np.ndarray]:
    strings = [t.decode("utf-8", errors="replace") for t in texts]
    encoded = tokenizer.backend_tokenizer.encode_batch(strings, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.uint16) for e in encoded]


@dataclass(frozen=True)
class TokenizerKind:
    build: Callable  # (training texts, vocab_size) -> PreTrainedTokenizerFast
    encode: Callable  # (tokenizer, texts) -> one uint16 array per text


TOKENIZERS: dict[str, TokenizerKind] = {
    "byte": TokenizerKind(byte_tokenizer, encode_bytes),
    "bpe": TokenizerKind(bpe_tokenizer, encode_with),
}


def get_tokenizer_kind(name: str) -> TokenizerKind:
    if name not in TOKENIZERS:
        raise UserError(f"unknown tokenizer '{name}' (allowed: {', '.join(TOKENIZERS)})")
    return TOKENIZERS[name]


def join_documents(arrays: list[np.ndarray]) -> np.ndarray:
    """One uint16 array: each document followed by `<|endoftext|>`."""
    eos = np.array([EOS_ID], dtype=np.uint16)
    return np.concatenate([part for a in arrays for part in (a, eos)]) if arrays else np.zeros(0, np.uint16)


# === The corpus of a run ===


@dataclass
class Corpus:
    train: np.ndarray  # uint16 token ids, documents joined with <|endoftext|>
    heldout: np.ndarray
    tokenizer: object  # PreTrainedTokenizerFast
    meta: dict

    def save(self, path: Path) -> None:
        """Arrays and tokenizer, then meta.json last (its presence marks a complete copy)."""
        path.mkdir(parents=True, exist_ok=True)
        (path / ".gitignore").write_text("*\n")  # hundreds of MB: never committed with results
        np.save(path / "train.npy", self.train)
        np.save(path / "heldout.npy", self.heldout)
        self.tokenizer.save_pretrained(path / "tokenizer")
        tmp = path / ".meta.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2) + "\n")
        os.replace(tmp, path / "meta.json")

    @classmethod
    def load(cls, path: Path) -> Corpus | None:
        """The corpus saved in `path`, None when there is no complete one."""
        if not (path / "meta.json").exists():
            return None
        from transformers import AutoTokenizer

        return cls(np.load(path / "train.npy"), np.load(path / "heldout.npy"),
                   AutoTokenizer.from_pretrained(str(path / "tokenizer")), json.loads((path / "meta.json").read_text()))


def build_corpus(sources: list[str], extensions: list[str], max_bytes: int, heldout_fraction: float,
                 tokenizer: str, vocab_size: int, min_tokens: int) -> Corpus:
    """Find, split, tokenise. Each split must hold at least `min_tokens` tokens (one window)."""
    kind = get_tokenizer_kind(tokenizer)
    docs = find_documents(sources, extensions, max_bytes)
    where = ", ".join(sources) if sources else "the installed Python packages"
    if not docs:
        raise UserError(f"the corpus is empty: no non-empty file ending in {', '.join(extensions)} in {where}")
    train_docs, held_docs = split_documents(docs, heldout_fraction)
    train_texts = [read_document(d) for d in train_docs]
    tok = kind.build(train_texts, vocab_size)
    train = join_documents(kind.encode(tok, train_texts))
    heldout = join_documents(kind.encode(tok, [read_document(d) for d in held_docs]))
    for split, arr in (("training", train), ("held-out", heldout)):
        if len(arr) < min_tokens:
            raise UserError(f"the corpus is too small: its {split} split has {len(arr):,} tokens, fewer than one "
                            f"window of seq_len + 1 = {min_tokens:,} (add documents or lower seq_len)")
    meta = {"source": sources or [str(r) for r in default_roots()], "tokenizer": tokenizer, "vocab_size": len(tok),
            "documents": len(docs), "train_documents": len(train_docs), "heldout_documents": len(held_docs),
            "bytes": sum(d.size for d in docs), "train_tokens": len(train), "heldout_tokens": len(heldout)}
    return Corpus(train, heldout, tok, meta)


# === Windows ===


class PackedWindows:
    """Random windows of seq_len + 1 tokens; batch(step) depends only on (seed, step): resume is exact."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
        self.view = np.lib.stride_tricks.sliding_window_view(tokens, seq_len + 1)
        self.batch_size, self.seed = batch_size, seed

    def batch(self, step: int) -> np.ndarray:
        """(batch_size, seq_len + 1) int64."""
        starts = np.random.default_rng([self.seed, step]).integers(0, len(self.view), size=self.batch_size)
        return self.view[starts].astype(np.int64)


def heldout_windows(tokens: np.ndarray, seq_len: int, count: int) -> np.ndarray:
    """(k, seq_len + 1) int64: k = min(count, what fits) windows at evenly spaced starts over the split."""
    fits = len(tokens) // (seq_len + 1)
    k = max(1, min(count, fits))
    starts = np.linspace(0, len(tokens) - seq_len - 1, k).astype(np.int64)
    return np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64)


__all__ = ["BYTE_OFFSET", "EOS_ID", "PAD_ID", "TOKENIZERS", "Corpus", "Document", "PackedWindows", "bpe_tokenizer",
           "build_corpus", "byte_tokenizer", "default_roots", "find_documents", "get_tokenizer_kind", "heldout_windows",
           "is_heldout", "join_documents", "split_documents"]
