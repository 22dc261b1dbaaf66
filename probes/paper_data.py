"""The paper's released synthetic data → a dataset directory of `probes generate`'s format.

    ds = import_paper(Path("vl-mamba-synthetic"), n=50)      # or the path of one of its files
    tasks.save_dataset(ds, Path("data/paper-n50")); write_source(Path("data/paper-n50"), ds)

The files are those of the HF dataset `gpantaz/vl-mamba-synthetic`, as the paper's loader
(`synthetic_vg_loader.py` in github gpantaz/vl_mamba at commit 45a39f8) reads them: one JSON file
per split and length, `{train,validation,test}_synthetic_vg_seqlen{N}.json`, each an object

    {"target_sequences": [[s_0, …, s_{N-1}], …], "target_tokens": [p, …]}

where row i is a context of the N symbols <syn_s> (all distinct) and target_tokens[i] is the
target POSITION p: the query is the symbol at p (`seq[synth_label]`) and the answer is <pos_p>.
That is exactly our (context, query, target_position) with the symbols as indices, so a row
needs a context that is a permutation of 0 … N-1 and a target in 0 … N-1 (anything else is a
UserError naming the file and row). The held-out set is the validation file, which the paper's
trainer evaluated during training (`--paper-heldout test` takes the test file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from probes import tasks
from probes.config import DataConfig, Layout, validate
from probes.errors import UserError

FILE_NAME = "{split}_synthetic_vg_seqlen{n}.json"
_FILE_RE = re.compile(r"^(train|validation|test)_synthetic_vg_seqlen(\d+)\.json$")
FIELDS = ("target_sequences", "target_tokens")
HELDOUT_SPLITS = ("validation", "test")


def paper_files(source: Path, n: int | None = None, heldout: str = "validation") -> tuple[int, Path, Path]:
    """(N, train file, held-out file) for `source`: one of the paper's files (its sibling for the
    other split is found by name) or a directory holding them (`n` picks one N when it holds several)."""
    if heldout not in HELDOUT_SPLITS:
        raise UserError(f"--paper-heldout {heldout!r} is not a split of the paper (allowed: validation, test)")
    source = Path(source)
    if source.is_file():
        match = _FILE_RE.match(source.name)
        if match is None:
            raise UserError(f"{source} is not one of the paper's files (expected a name like "
                            f"{FILE_NAME.format(split='train', n=50)})")
        file_n = int(match.group(2))
        if n is not None and n != file_n:
            raise UserError(f"{source} holds N={file_n}, but --n {n} was asked")
        n, folder = file_n, source.parent
    elif source.is_dir():
        found = sorted({int(m.group(2)) for p in source.iterdir() if (m := _FILE_RE.match(p.name))})
        if not found:
            raise UserError(f"{source} holds none of the paper's files ({FILE_NAME.format(split='train', n='N')})")
        if n is None and len(found) > 1:
            raise UserError(f"{source} holds the paper's files for N = {', '.join(map(str, found))}; pick one with --n")
        n, folder = (found[0] if n is None else n), source
    else:
        raise UserError(f"--from-paper {source}: no such file or directory")
    train, held = (folder / FILE_NAME.format(split=s, n=n) for s in ("train", heldout))
    for path in (train, held):
        if not path.is_file():
            raise UserError(f"the paper's file {path} is missing (both train and {heldout} are needed)")
    return n, train, held


def read_paper_split(path: Path, n: int) -> tasks.Split:
    """One paper file as a Split, checked row by row as the paper's loader checks it (and stricter:
    the context must be a permutation of 0 … n-1)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object with {' and '.join(FIELDS)}")
    missing = [f for f in FIELDS if f not in data]
    if missing:
        raise UserError(f"{path} has no field '{missing[0]}' (the paper's files hold {' and '.join(FIELDS)})")
    seqs, targets = data["target_sequences"], data["target_tokens"]
    if not isinstance(seqs, list) or not isinstance(targets, list) or len(seqs) != len(targets) or not seqs:
        raise UserError(f"{path}: target_sequences and target_tokens must be lists of one equal, non-zero length "
                        f"(got {_length(seqs)} and {_length(targets)})")
    return _as_split(path, n, seqs, targets)


def _length(value) -> str:
    return str(len(value)) if isinstance(value, list) else type(value).__name__


def _as_split(path: Path, n: int, seqs: list, targets: list) -> tasks.Split:
    bad_len = next((i for i, s in enumerate(seqs) if not isinstance(s, list) or len(s) != n), None)
    if bad_len is not None:
        raise UserError(f"{path}: row {bad_len} of target_sequences has {_length(seqs[bad_len])} tokens, not N={n}")
    try:
        context = np.asarray(seqs, dtype=np.int64)
        target = np.asarray(targets, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{path}: target_sequences and target_tokens must hold integers") from None
    if target.ndim != 1:
        raise UserError(f"{path}: target_tokens must be a list of integer positions")
    not_perm = np.flatnonzero((np.sort(context, axis=1) != np.arange(n)).any(axis=1))
    if len(not_perm):
        i = int(not_perm[0])
        raise UserError(f"{path}: row {i} of target_sequences is not a permutation of 0 … {n - 1} "
                        f"({len(not_perm)} such rows; starts {context[i, :5].tolist()})")
    out_of_range = np.flatnonzero((target < 0) | (target >= n))
    if len(out_of_range):
        i = int(out_of_range[0])
        raise UserError(f"{path}: target_tokens[{i}] = {target[i]} is not a position 0 … {n - 1}")
    context = context.astype(np.int16)
    target = target.astype(np.int16)
    query = np.take_along_axis(context, target[:, None].astype(np.intp), axis=1)[:, 0]
    return tasks.Split(context=context, query=query, target_position=target)


def import_paper(source: Path, n: int | None = None, layout: Layout = "suffix",
                 heldout: str = "validation") -> tuple[tasks.Dataset, dict]:
    """(the paper's data as a Dataset, where it came from). Nothing is redrawn: `shared_pairs`
    counts training rows also in the held-out set, as the paper's data has them."""
    n, train_path, held_path = paper_files(source, n, heldout)
    train, held = read_paper_split(train_path, n), read_paper_split(held_path, n)
    cfg = validate(DataConfig, {"n": n, "layout": layout, "train_size": len(train), "eval_size": len(held),
                                "seed": 0, "heldout_seed": 0})
    ds = tasks.Dataset(cfg, train, held, shared_pairs=tasks.count_shared_pairs(train, held), resampled=0)
    return ds, {"source": "paper", "train_file": str(train_path), "heldout_file": str(held_path)}


def balance(split: tasks.Split) -> tuple[int, int]:
    """(fewest, most) examples with one target position."""
    counts = np.bincount(split.target_position.astype(np.int64), minlength=split.n)
    return int(counts.min()), int(counts.max())


def write_source(out: Path, source: dict) -> None:
    """Add where the data came from to a saved dataset's meta.json (written atomically)."""
    path = Path(out) / "meta.json"
    meta = {**json.loads(path.read_text()), **source}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(path)
