"""Synthetic grounding task (SPEC §1): generators, the on-disk format, and the token layout.

One example is a random permutation `context` of the N special tokens <s_0> … <s_{N-1}>, a
query token q = context[p] and its target position p. Data are model-independent index arrays;
`TokenLayout` is the ONE place where indices become a model's token ids:

    suffix:  <s_..> × N  <out> q        → answer(p)   (paper main text)
    prefix:  <out> q <sep> <s_..> × N   → answer(p)   (paper App. C.4.1)

Every sequence is followed by answer(p) and, with `eos_target`, the end-of-text token; the loss
and accuracy look only at those slots (teacher forcing).

Generation is vectorised numpy: no Python loop runs per example. Targets are balanced (each
position is the target of size // N or size // N + 1 examples; generator version 1, kept for
datasets made before version 2, is within about 1% above 32,768 rows), and the held-out set, made
from its own seed, shares no (context, query) pair with training.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from probes import locks
from probes.config import DataConfig, TokenConfig, format_validation_error
from probes.errors import UserError, first_line
from probes.locks import LOCK_FILE

FORMAT_VERSION = 1
GENERATOR_VERSION = 2  # what `probes generate` writes now; meta.json records it (absent: 1)
SPLITS = ("train", "heldout")
_MAX_RESAMPLE_ROUNDS = 64


# === Splits and datasets ===


@dataclass(frozen=True)
class Split:
    """`context` (size, N) int16: index of the special token at each position;
    `query` (size,): index of the queried token; `target_position` (size,): where it sits."""

    context: np.ndarray
    query: np.ndarray
    target_position: np.ndarray

    def __len__(self) -> int:
        return len(self.query)

    @property
    def n(self) -> int:
        return self.context.shape[1]


@dataclass(frozen=True)
class Dataset:
    config: DataConfig
    train: Split
    heldout: Split
    shared_pairs: int  # (context, query) pairs found in both splits: 0 by construction
    resampled: int  # training rows redrawn because they collided with the held-out set
    generator_version: int | None = None  # TARGET_CYCLES key; None: not generated here (imported data)

    def meta(self) -> dict:
        return {"format_version": FORMAT_VERSION, **dataset_identity(self.config),
                "shared_pairs": self.shared_pairs, "resampled": self.resampled,
                "generator_version": self.generator_version}


def dataset_identity(cfg: DataConfig) -> dict:
    """The fields that decide a dataset's content (what meta.json is compared on)."""
    return {"n": cfg.n, "layout": cfg.layout, "seed": cfg.seed,
            "heldout_seed": cfg.effective_heldout_seed,
            "train_size": cfg.train_size, "eval_size": cfg.eval_size}


# Generator versions: the unshuffled target positions of a set of `size` rows, as int16.
# 1: an int16 arange, which wraps past 32,767, so sets over 32,768 rows are slightly uneven (within
#    about 1%); kept so that datasets written before version 2 regenerate and validate as they were.
# 2: exact: each position size // n or size // n + 1 times. Equal to version 1 up to 32,768 rows, so
#    smaller sets are byte-identical in both versions.
TARGET_CYCLES: dict[int, Callable[[int, int], np.ndarray]] = {
    1: lambda n, size: np.arange(size, dtype=np.int16) % n,
    2: lambda n, size: (np.arange(size, dtype=np.int64) % n).astype(np.int16),
}


def _target_cycle(n: int, size: int, version: int) -> np.ndarray:
    if version not in TARGET_CYCLES:
        raise UserError(f"generator_version {version!r} is not one this version of probes knows "
                        f"(allowed: {', '.join(map(str, TARGET_CYCLES))})")
    return TARGET_CYCLES[version](n, size)


def balanced_targets(n: int, size: int, rng: np.random.Generator, version: int = GENERATOR_VERSION) -> np.ndarray:
    """Target positions in shuffled order: each position size // n or size // n + 1 times
    (generator version 1, beyond 32,768 rows: expected_target_counts, within about 1%)."""
    return rng.permutation(_target_cycle(n, size, version))


def expected_target_counts(n: int, size: int, version: int = GENERATOR_VERSION) -> np.ndarray:
    """(n,) how often each position is a target in a set of `size` rows made by `version`."""
    return np.bincount(_target_cycle(n, size, version).astype(np.intp), minlength=n)


def random_contexts(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, n) int16, each row an independent uniform permutation of 0 … n-1."""
    return rng.permuted(np.broadcast_to(np.arange(n, dtype=np.int16), (size, n)), axis=1)


def _split(context: np.ndarray, target: np.ndarray) -> Split:
    query = np.take_along_axis(context, target[:, None].astype(np.intp), axis=1)[:, 0]
    return Split(context=context, query=query, target_position=target)


def generate_split(n: int, size: int, seed: int, version: int = GENERATOR_VERSION) -> Split:
    rng = np.random.default_rng(seed)
    target = balanced_targets(n, size, rng, version)
    return _split(random_contexts(n, size, rng), target)


def _row_keys(split: Split) -> np.ndarray:
    """int64 key of (first four positions, target): equal examples have equal keys.

    A (context, query) pair is the same as a (context, target) pair, since the context is a
    permutation. The key is a cheap filter; `_rows_in` confirms candidates on whole rows.
    """
    key = split.target_position.astype(np.int64)
    for j in range(min(4, split.n)):
        key = key * 32771 + split.context[:, j]  # 32771 > MAX_N: injective on the first four positions
    return key


def _as_void(rows: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(rows)
    return rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()


def _rows_in(split: Split, other: Split, candidates: np.ndarray) -> np.ndarray:
    """Boolean mask over `candidates` (indices into split): whole example also in `other`."""
    mine = np.column_stack([split.context[candidates], split.target_position[candidates]])
    theirs = np.column_stack([other.context, other.target_position])
    return np.isin(_as_void(mine), _as_void(theirs))


def shared_rows(split: Split, other: Split) -> np.ndarray:
    """Indices of examples in `split` whose (context, query) pair also occurs in `other`."""
    candidates = np.flatnonzero(np.isin(_row_keys(split), _row_keys(other)))
    if len(candidates) == 0:
        return candidates
    return candidates[_rows_in(split, other, candidates)]


def count_shared_pairs(train: Split, heldout: Split) -> int:
    """How many training examples also occur (same context and query) in the held-out set."""
    return len(shared_rows(train, heldout))


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: DataConfig) -> None:
    """A UserError, before any work, when the dataset cannot fit in this machine's memory (the
    generator holds a few int16 copies of the contexts at once)."""
    need = 4 * 2 * cfg.n * (cfg.train_size + cfg.eval_size)
    have = _memory_bytes()
    if have is not None and need > have:
        raise UserError(f"train_size={cfg.train_size:,} and eval_size={cfg.eval_size:,} at n={cfg.n} need about "
                        f"{need / 2**30:,.0f} GiB of memory to generate; this machine has {have / 2**30:,.0f} GiB "
                        f"(allowed: smaller sizes)")


def generate(cfg: DataConfig, status: Callable[[str], None] | None = None, version: int = 1) -> Dataset:
    """Held-out set from its own seed first, then training rows, redrawing any that collide.

    Redrawing keeps each row's target position, so balance is untouched. The final check
    counts shared pairs on whole rows and must find none. `version` (TARGET_CYCLES) defaults to 1:
    a training run that generates its data in memory records no version in its config.yaml, so it
    must keep getting the data it always got (resumes stay exact); `probes generate` (generate_into)
    writes GENERATOR_VERSION and records it in meta.json.
    """
    say = status or (lambda _msg: None)
    n = cfg.n
    check_memory(cfg)
    say(f"held-out set: {cfg.eval_size:,} examples, n={n}")
    heldout = generate_split(n, cfg.eval_size, cfg.effective_heldout_seed, version)

    say(f"training set: {cfg.train_size:,} examples, n={n}")
    rng = np.random.default_rng(cfg.seed)
    target = balanced_targets(n, cfg.train_size, rng, version)
    context = random_contexts(n, cfg.train_size, rng)
    train = _split(context, target)

    say("making the held-out set disjoint from training")
    resampled = 0
    for _ in range(_MAX_RESAMPLE_ROUNDS):
        clash = shared_rows(train, heldout)  # the check: whole rows found in both splits
        if len(clash) == 0:
            break
        resampled += len(clash)
        context[clash] = random_contexts(n, len(clash), rng)
        train = _split(context, target)
    else:
        raise UserError(
            f"n={n} is too small for a held-out set of {cfg.eval_size:,} disjoint from training: "
            f"only {math.factorial(n) * n:,} distinct examples exist (allowed: a larger n or a "
            f"smaller eval_size)"
        )
    return Dataset(cfg, train, heldout, shared_pairs=len(clash), resampled=resampled, generator_version=version)


# === On disk: DIR/train.npz, DIR/heldout.npz, DIR/meta.json ===


def read_meta(out: Path) -> dict | None:
    """meta.json of a dataset directory, or None when there is none; a damaged one is a UserError."""
    path = Path(out) / "meta.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is unreadable ({err}); regenerate the dataset (`probes generate --overwrite`)") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is damaged (not a JSON object); regenerate the dataset (`probes generate --overwrite`)")
    return meta


def same_dataset(meta: dict, cfg: DataConfig) -> bool:
    wanted = {"format_version": FORMAT_VERSION, **dataset_identity(cfg)}
    return all(meta.get(k) == v for k, v in wanted.items())


def _dataset_file(name: str) -> bool:
    """Files a dataset directory holds: the splits, meta.json, temporaries of a killed write, the lock."""
    return name in ("meta.json", LOCK_FILE) or name in {f"{s}.npz" for s in SPLITS} or (
        name.startswith(".") and name.endswith(".tmp"))


def check_out_dir(out: Path, cfg: DataConfig, overwrite: bool = False) -> bool:
    """True when `out` already holds exactly this dataset (nothing to do).

    A directory holding a different dataset, or other files, is an error unless `overwrite`; one
    left incomplete by a killed `generate` (no meta.json, only dataset files) is written again.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose another --out")
    if not out.exists() or overwrite:
        return False
    meta = read_meta(out)
    if meta is None:
        if any(not _dataset_file(p.name) for p in out.iterdir()):
            raise UserError(f"--out {out} is not empty and holds no dataset; choose an empty or new directory")
        return False
    if same_dataset(meta, cfg) and all((out / f"{s}.npz").exists() for s in SPLITS):
        return True
    differing = [f"{k}={meta.get(k)} there, {v} asked" for k, v in dataset_identity(cfg).items() if meta.get(k) != v]
    raise UserError(
        f"--out {out} already holds a different dataset ({'; '.join(differing) or 'incomplete'}); "
        f"choose another --out or pass --overwrite"
    )


def _write_npz(tmp: Path, split: Split) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, context=split.context, query=split.query, target_position=split.target_position)
        f.flush()
        os.fsync(f.fileno())


def save_dataset(ds: Dataset, out: Path) -> None:
    """Write DIR/train.npz, DIR/heldout.npz and DIR/meta.json atomically: all three go to temporary
    files first (a full disk or a kill leaves the dataset there before intact, and no partial file),
    then replace the old ones, meta.json last (a dataset without it is incomplete).
    Call it holding the directory's lock (generate_into does)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob(".*.tmp"):  # left by a killed write
        tmp.unlink()
    names = [f"{name}.npz" for name in SPLITS] + ["meta.json"]
    tmps = {name: out / f".{name}.tmp" for name in names}
    try:
        for name, split in zip(names, (ds.train, ds.heldout)):
            _write_npz(tmps[name], split)
        tmps["meta.json"].write_text(json.dumps(ds.meta(), indent=2) + "\n")
    except BaseException:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
        raise
    (out / "meta.json").unlink(missing_ok=True)
    for name in names:
        os.replace(tmps[name], out / name)


def generate_into(cfg: DataConfig, out: Path, overwrite: bool = False,
                  status: Callable[[str], None] | None = None) -> Dataset | None:
    """Generate `cfg`'s dataset into `out` holding the directory's lock (probes.locks): a second
    `generate` into `out` meanwhile gets a UserError naming this one. None when `out` already
    holds this dataset, checked by loading it (nothing done; a damaged one is a UserError)."""
    with locks.hold(out, what="dataset"):
        if check_out_dir(out, cfg, overwrite):
            try:
                load_dataset(out)
            except UserError as err:
                raise UserError(f"{err}; or `probes generate --overwrite`") from None
            return None
        ds = generate(cfg, status=status, version=GENERATOR_VERSION)
        if status:
            status(f"saving to {out}")
        save_dataset(ds, out)
        return ds


def _meta_config(out: Path, meta: dict) -> DataConfig:
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{out} has dataset format {meta.get('format_version')!r}; this version reads {FORMAT_VERSION}")
    try:
        return DataConfig(**{k: meta[k] for k in ("n", "layout", "seed", "heldout_seed", "train_size", "eval_size")})
    except KeyError as err:
        raise UserError(f"{out / 'meta.json'} is damaged (no {err.args[0]!r}); regenerate the dataset") from None
    except ValidationError as err:
        raise UserError(f"{out / 'meta.json'} is damaged ({format_validation_error(err, DataConfig)}); "
                        f"regenerate the dataset") from None


def _meta_version(out: Path, meta: dict) -> int | None:
    """The generator version meta.json records: absent means 1 (written before versions), or None for
    imported data (source "paper", not generated here)."""
    version = meta.get("generator_version", None if meta.get("source") == "paper" else 1)
    if version is not None and version not in TARGET_CYCLES:
        raise UserError(f"{out / 'meta.json'} has generator_version {version!r}; this version of probes reads "
                        f"{', '.join(map(str, TARGET_CYCLES))} (update probes, or regenerate the dataset)")
    return version


def _read_split(path: Path) -> Split:
    try:
        with np.load(path, allow_pickle=False) as z:
            return Split(z["context"], z["query"], z["target_position"])
    except Exception as err:  # noqa: BLE001 - truncated, empty, not a zip, a key missing: all one fault
        text = first_line(err)
        raise UserError(f"{path} is missing or damaged ({text}); regenerate the dataset") from None


def load_dataset(out: str | Path, validate: bool = True) -> Dataset:
    """Read a dataset written by `save_dataset`; a missing, damaged or inconsistent one is a UserError
    (validate_dataset checks every invariant unless `validate` is False)."""
    out = Path(out)
    meta = read_meta(out)
    if meta is None:
        raise UserError(f"no dataset at {out} (expected {out / 'meta.json'}); run `probes generate` first")
    cfg = _meta_config(out, meta)
    train, heldout = (_read_split(out / f"{name}.npz") for name in SPLITS)
    ds = Dataset(cfg, train, heldout, meta.get("shared_pairs", 0), meta.get("resampled", 0), _meta_version(out, meta))
    if validate:
        validate_dataset(out, ds)
    return ds


# === Validation: a dataset's own invariants, vectorised ===


class _Bad(Exception):
    """One broken invariant: what is wrong and the first bad row (or None); `rows` is a boolean mask
    over the rows from `offset` on."""

    def __init__(self, what: str, rows: np.ndarray | None = None, offset: int = 0):
        self.what = what
        self.row = offset + int(np.flatnonzero(rows)[0]) if rows is not None else None


def _check_arrays(split: Split, n: int, size: int) -> None:
    for name in ("context", "query", "target_position"):
        dtype = getattr(split, name).dtype
        if not np.issubdtype(dtype, np.integer):
            raise _Bad(f"{name} has dtype {dtype} (allowed: integers)")
    if split.context.ndim != 2 or split.context.shape[1] != n:
        raise _Bad(f"context has shape {split.context.shape}, expected (rows, {n}) for n={n} of meta.json")
    for name in ("query", "target_position"):
        shape = getattr(split, name).shape
        if shape != (len(split.context),):
            raise _Bad(f"{name} has shape {shape}, expected ({len(split.context)},) like context")
    if len(split.context) != size:
        raise _Bad(f"{len(split.context):,} rows but meta.json says {size:,}")


def _outside(values: np.ndarray, n: int) -> np.ndarray | None:
    """Rows (a mask) holding a value outside 0..n-1, or None when there is none: one min and one max
    over the whole array (the mask is built only for a bad array)."""
    if values.size == 0 or (values.min() >= 0 and values.max() < n):
        return None
    bad = (values < 0) | (values >= n)
    return bad.any(axis=1) if bad.ndim == 2 else bad


_CHUNK_VALUES = 1 << 22  # values per block of the permutation check: 32 MiB of uint64 weights, cache-sized work


def _check_permutations(context: np.ndarray, n: int) -> None:
    """Each row (indices already in range) a permutation of 0..n-1. A row is one iff its sum of random
    64-bit weights equals the sum of all n (a row with a token twice matches with probability 2**-64):
    a gather and a row sum per block of rows, no sort and no Python loop over rows."""
    weights = np.random.default_rng(0).integers(0, 2**63, n, dtype=np.uint64)
    total = weights.sum()
    chunk = max(1, _CHUNK_VALUES // max(n, 1))
    for start in range(0, len(context), chunk):
        bad = weights[context[start:start + chunk]].sum(axis=1) != total
        if bad.any():
            raise _Bad("context row is not a permutation of 0..n-1 (a token twice)", bad, start)


def _check_rows(split: Split, n: int) -> None:
    """Each context row a permutation of 0..n-1, targets in range, query == context[row, target]."""
    for name in ("query", "target_position"):
        bad = _outside(getattr(split, name), n)
        if bad is not None:
            raise _Bad(f"{name} outside 0..{n - 1}", bad)
    bad = _outside(split.context, n)
    if bad is not None:
        raise _Bad(f"context holds a token index outside 0..{n - 1}", bad)
    _check_permutations(split.context, n)
    picked = np.take_along_axis(split.context, split.target_position[:, None].astype(np.intp), axis=1)[:, 0]
    bad = picked != split.query
    if bad.any():
        raise _Bad("query is not the token at target_position", bad)


def _check_balance(split: Split, n: int, version: int) -> None:
    counts = np.bincount(split.target_position.astype(np.intp), minlength=n)
    expected = expected_target_counts(n, len(split), version)
    off = counts != expected
    if off.any():
        p = int(np.flatnonzero(off)[0])
        raise _Bad(f"targets are not balanced: position {p} is the target of {counts[p]:,} rows "
                   f"(expected {expected[p]:,})")


def validate_dataset(out: Path, ds: Dataset) -> None:
    """Check `ds` (read from `out`) against its invariants and meta.json; the first failure is a
    UserError naming the file and the first bad row. Vectorised: 1M × 200 takes a few seconds."""
    n = ds.config.n
    for name, split, size in (("train", ds.train, ds.config.train_size), ("heldout", ds.heldout, ds.config.eval_size)):
        try:
            _check_arrays(split, n, size)
            _check_rows(split, n)
            if ds.generator_version is not None:  # imported data has no balance invariant
                _check_balance(split, n, ds.generator_version)
        except _Bad as bad:
            where = f", first at row {bad.row}" if bad.row is not None else ""
            raise UserError(f"{out / (name + '.npz')} is invalid: {bad.what}{where}; regenerate the dataset") from None
    shared = shared_rows(ds.train, ds.heldout)
    if len(shared) != ds.shared_pairs:
        raise UserError(f"{out / 'train.npz'} is invalid: {len(shared):,} rows also occur in heldout.npz but "
                        f"meta.json says {ds.shared_pairs:,}, first at row {int(shared[0]) if len(shared) else 0}; "
                        f"regenerate the dataset")


# === Token ids: the one place where indices meet a vocabulary ===


@dataclass(frozen=True)
class TokenLayout:
    """Token ids of the task for one model.

    New rows appended to a vocabulary of `base_vocab` ids: <s_i> = base_vocab + i,
    <out> = base_vocab + n, <sep> = base_vocab + n + 1. answer(p) = answer_ids[p], existing ids
    (default p + 2: the single-byte tokens after <|endoftext|>, <|padding|> in GPT-NeoX).
    """

    n: int
    layout: str
    base_vocab: int
    answer_ids: np.ndarray  # (n,) int64
    eos_id: int
    eos_target: bool = True

    N_MARKERS = 2  # <out>, <sep>

    @classmethod
    def build(cls, n: int, layout: str, base_vocab: int, tokens: TokenConfig, eos_id: int) -> TokenLayout:
        if tokens.answer_ids is not None:
            answers = np.asarray(tokens.answer_ids, dtype=np.int64)
            if len(answers) != n or len(set(answers.tolist())) != n:
                raise UserError(f"answer_ids must list {n} distinct ids, one per position (got {len(answers)})")
        else:
            answers = np.arange(n, dtype=np.int64) + tokens.answer_offset
        if answers.min() < 0 or answers.max() >= base_vocab:
            raise UserError(
                f"answer ids {answers.min()}…{answers.max()} do not fit the model's vocabulary of "
                f"{base_vocab} (allowed: n + answer_offset <= {base_vocab})"
            )
        eos = tokens.eos_id if tokens.eos_id is not None else eos_id
        return cls(n, layout, base_vocab, answers, int(eos), tokens.eos_target)

    @property
    def n_new_tokens(self) -> int:
        return self.n + self.N_MARKERS

    @property
    def out_id(self) -> int:
        return self.base_vocab + self.n

    @property
    def sep_id(self) -> int:
        return self.base_vocab + self.n + 1

    @property
    def seq_len(self) -> int:
        """Model input length: context, markers, query, and the answer (which predicts eos)."""
        return self.n + (3 if self.layout == "suffix" else 4)

    @property
    def answer_slot(self) -> int:
        """Input index whose next-token prediction is the answer."""
        return self.seq_len - 2

    def encode(self, split: Split, rows: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids (B, seq_len) int64, answer ids (B,)) for the selected rows.

        The prediction at `answer_slot` is scored against the answer and, with `eos_target`,
        the prediction at `answer_slot + 1` against `eos_id`.
        """
        ctx = split.context[rows].astype(np.int64) + self.base_vocab
        q = split.query[rows].astype(np.int64)[:, None] + self.base_vocab
        answer = self.answer_ids[split.target_position[rows].astype(np.intp)]
        b = len(ctx)
        out = np.full((b, 1), self.out_id)
        if self.layout == "suffix":
            parts = [ctx, out, q, answer[:, None]]
        else:
            parts = [out, q, np.full((b, 1), self.sep_id), ctx, answer[:, None]]
        return np.concatenate(parts, axis=1), answer


# === Rendering (for --preview and docs) ===


def render_example(context: np.ndarray, query: int, target: int, layout: str) -> str:
    """`<s_3> <s_0> <s_1> <s_2> <out> <s_1> => <a_2>` (suffix) or its prefix twin."""
    ctx = " ".join(f"<s_{int(i)}>" for i in context)
    q = f"<s_{int(query)}>"
    body = f"{ctx} <out> {q}" if layout == "suffix" else f"<out> {q} <sep> {ctx}"
    return f"{body} => <a_{int(target)}>"


def preview(split: Split, layout: str, k: int) -> list[str]:
    return [render_example(split.context[i], split.query[i], split.target_position[i], layout)
            for i in range(min(k, len(split)))]
