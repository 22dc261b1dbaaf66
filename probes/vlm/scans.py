"""Scan orders over patch grids as pure index permutations, with their inverses.

Conventions. A feature map of `rows × cols` patches is flattened row-major: patch (r, c) has
flat index `r * cols + c`. `sources` maps of the same grid (the visual long sequence of two
encoders) are stacked source-major: patch (s, r, c) has index `s * rows * cols + r * cols + c`.
A scan is a LongTensor `perm` of that length: `scanned[t] = flat[perm[t]]`; its inverse `inv`
(`inv[perm[t]] = t`) puts per-step outputs back in patch order: `flat[i] = scanned[inv[i]]`.

    bsm           (VL-Mamba)  forward, backward                                  2 orders
    csm           (VL-Mamba / VMamba cross-scan)  rows, columns, and both read
                  backwards                                                      4 orders
    cross-cat     (MambaVLM)  map 0 then map 1 (… map S-1), each scanned by rows;
                  the same by columns; both read backwards                       4 orders
    cross-stitch  (MambaVLM)  the maps interlaced patch by patch, a[π0] b[π0]
                  a[π1] b[π1] …, for π = rows, columns; both read backwards      4 orders

MambaVLM's Fig. 3 is not in the text we have; cross-cat / cross-stitch follow its words ("four
cross-scan orders scan each of the two feature maps independently; then, for each order, the
maps are scanned intermittently"): cat appends the per-map scans, stitch interlaces them so that
the two encoders' features of one patch are neighbours in the sequence. As in CSM, orders 3 and
4 are orders 1 and 2 read backwards (the whole sequence, maps included), so that in some
direction every map is read after every other one.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from probes.errors import UserError

DIRECTIONS: dict[str, tuple[str, ...]] = {
    "bsm": ("forward", "backward"),
    "csm": ("rows", "columns", "rows-reversed", "columns-reversed"),
    "cross-cat": ("rows", "columns", "rows-reversed", "columns-reversed"),
    "cross-stitch": ("rows", "columns", "rows-reversed", "columns-reversed"),
}
SCANS: tuple[str, ...] = tuple(DIRECTIONS)


def row_major(rows: int, cols: int) -> torch.Tensor:
    return torch.arange(rows * cols)


def col_major(rows: int, cols: int) -> torch.Tensor:
    """Column by column, top to bottom within a column."""
    return torch.arange(rows * cols).view(rows, cols).T.reshape(-1)


def _and_backwards(perms: list[torch.Tensor]) -> list[torch.Tensor]:
    return perms + [p.flip(0) for p in perms]


def bsm(rows: int, cols: int) -> list[torch.Tensor]:
    return _and_backwards([row_major(rows, cols)])


def csm(rows: int, cols: int) -> list[torch.Tensor]:
    return _and_backwards([row_major(rows, cols), col_major(rows, cols)])


def cross_cat(rows: int, cols: int, sources: int = 2) -> list[torch.Tensor]:
    n = rows * cols
    return _and_backwards([torch.cat([p + s * n for s in range(sources)])
                           for p in (row_major(rows, cols), col_major(rows, cols))])


def cross_stitch(rows: int, cols: int, sources: int = 2) -> list[torch.Tensor]:
    n = rows * cols
    return _and_backwards([torch.stack([p + s * n for s in range(sources)], dim=1).reshape(-1)
                           for p in (row_major(rows, cols), col_major(rows, cols))])


def inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm), device=perm.device)
    return inv


@lru_cache(maxsize=64)
def _orders(name: str, rows: int, cols: int, sources: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    if name in ("bsm", "csm"):
        if sources != 1:
            raise UserError(f"scan '{name}' orders one feature map, got {sources} (use cross-cat or cross-stitch)")
        perms = bsm(rows, cols) if name == "bsm" else csm(rows, cols)
    elif name == "cross-cat":
        perms = cross_cat(rows, cols, sources)
    elif name == "cross-stitch":
        perms = cross_stitch(rows, cols, sources)
    else:
        raise UserError(f"unknown scan '{name}' (known: {', '.join(SCANS)})")
    return tuple((p, inverse(p)) for p in perms)


def scan_orders(name: str, rows: int, cols: int, sources: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(perm, inverse), …] of scan `name`, one pair per direction (see DIRECTIONS[name])."""
    return list(_orders(name, rows, cols, sources))


__all__ = [
    "DIRECTIONS",
    "SCANS",
    "bsm",
    "col_major",
    "cross_cat",
    "cross_stitch",
    "csm",
    "inverse",
    "row_major",
    "scan_orders",
]
