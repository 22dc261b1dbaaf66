"""Grounding answers: the box text format, its strict parser, IoU and Acc@IoU≥0.5.

A box is `(x1, y1, x2, y2)` in coordinates normalised by the image's width and height
(0 = left/top edge, 1 = right/bottom edge). The model writes it as text with exactly two
decimals, the format of *Shaking Up VLMs* (Fig. 2, App. A.2):

    [0.12, 0.40, 0.37, 0.81]

`parse_box` accepts exactly that and nothing else: four numbers `0.dd` or `1.00`, separated by
", ", in square brackets, with `x1 <= x2` and `y1 <= y2`, no other characters (no leading or
trailing space, no text after the box). Anything else is unparseable, and an unparseable answer
counts as wrong (IoU 0).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Box = tuple[float, float, float, float]

_NUM = r"(0\.[0-9][0-9]|1\.00)"  # [0-9], not \d: \d also matches non-ASCII digits
_BOX = re.compile(rf"\[{_NUM}, {_NUM}, {_NUM}, {_NUM}\]")
IOU_THRESHOLD = 0.5
GRID = 3  # positions.parquet buckets target-box centres into a GRID × GRID grid of cells


def format_box(box: Sequence[float]) -> str:
    """`[x1, y1, x2, y2]` with two decimals; values are clipped to [0, 1] first."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 coordinates, got {len(box)}")
    return "[" + ", ".join(f"{min(max(float(v), 0.0), 1.0) + 0.0:.2f}" for v in box) + "]"  # + 0.0: no "-0.00"


def parse_box(text: str) -> Box | None:
    """The box written in `text`, or None if `text` is not exactly one well-formed box."""
    m = _BOX.fullmatch(text)
    if m is None:
        return None
    x1, y1, x2, y2 = (float(g) for g in m.groups())
    if x1 > x2 or y1 > y2:
        return None
    return (x1, y1, x2, y2)


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes; 0 when the union has no area (unless equal)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = _area(a) + _area(b) - inter
    if union <= 0.0:
        return 1.0 if tuple(a) == tuple(b) else 0.0
    return inter / union


def score(prediction: str, target: Sequence[float]) -> dict:
    """One example's record: the parsed box (or None), IoU (0 if unparseable) and correctness."""
    box = parse_box(prediction)
    value = iou(box, target) if box is not None else 0.0
    return {"parsed": box is not None, "iou": value, "correct": value >= IOU_THRESHOLD}


def cell(box: Sequence[float], grid: int = GRID) -> int:
    """Row-major index of the grid cell that holds the box centre (0 … grid² - 1)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col = min(int(cx * grid), grid - 1)
    row = min(int(cy * grid), grid - 1)
    return row * grid + col


__all__ = ["GRID", "IOU_THRESHOLD", "Box", "cell", "format_box", "iou", "parse_box", "score"]
