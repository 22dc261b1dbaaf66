"""Grounding data that runs offline: synthetic shape scenes, and RefCOCO-style JSONL records.

Every example is `(image, expression, box)`: an RGB uint8 array (H, W, 3), a referring
expression, and the target box `(x1, y1, x2, y2)` normalised by the image's width and height.

Synthetic scenes. A scene holds 1 … `max_objects` non-overlapping shapes (circle, square,
triangle) in 6 colours and 2 sizes on a light background. The target's (size, colour, shape)
is unique in its scene, so "the small red circle" names exactly one object; distractors may
share any one or two of its attributes. The box is exact: the extent of the target's drawn
pixels. Example i of a split is drawn from its own generator seeded by (seed, i), so a split is
random-access and identical on every machine; the held-out split uses its own seed.

RefCOCO-style records. One JSON object per line:

    {"image": "images/coco_123.jpg", "expression": "the man on the left", "box": [10, 20, 200, 300]}

`image` is a path (relative paths are relative to the JSONL file's folder), `box` is in pixels,
`[x1, y1, x2, y2]` (or `[x, y, w, h]` with `box_format: xywh`, COCO's format), normalised with
the image's own size when the record is read. A malformed record or a missing image is a
one-line UserError naming the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, UnidentifiedImageError

from probes.errors import UserError

# === Examples ===


@dataclass(frozen=True)
class Example:
    image: np.ndarray  # (H, W, 3) uint8
    expression: str
    box: tuple[float, float, float, float]  # normalised x1, y1, x2, y2
    objects: tuple = ()  # synthetic scenes: every placed (size, colour, shape, box), the target first


# === Synthetic scenes ===

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, tuple[float, float]] = {"small": (0.14, 0.2), "large": (0.3, 0.4)}  # side / image side
BACKGROUND = (235, 235, 235)
_PLACEMENT_TRIES = 50


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, side: int, fill) -> None:
    box = [x, y, x + side - 1, y + side - 1]  # PIL boxes are inclusive
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # upward triangle filling the square
        draw.polygon([(x + (side - 1) / 2, y), (x, y + side - 1), (x + side - 1, y + side - 1)], fill=fill)


def render_scene(seed: int, index: int, image_size: int, max_objects: int) -> Example:
    """Scene `index` of the split with `seed`: deterministic, independent of other examples."""
    rng = np.random.default_rng([seed, index])
    colours, sizes = list(COLOURS), list(SIZES)
    target = (sizes[rng.integers(2)], colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))])
    objects = [target]
    for _ in range(int(rng.integers(1, max_objects + 1)) - 1):
        while True:  # a distractor never repeats the target's full description
            other = (sizes[rng.integers(2)], colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))])
            if other != target:
                break
        objects.append(other)
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[int, int, int]] = []  # x, y, side
    drawn = []
    for k, (size, colour, shape) in enumerate(objects):
        lo, hi = SIZES[size]
        side = max(3, round(rng.uniform(lo, hi) * image_size))
        for _ in range(_PLACEMENT_TRIES):
            x, y = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
            # one pixel of gap between objects, so every box is exactly its own object's pixels
            if all(x + side + 1 <= px or px + ps + 1 <= x or y + side + 1 <= py or py + ps + 1 <= y
                   for px, py, ps in placed):
                break
        else:
            if k == 0:
                raise AssertionError("the target always fits an empty image")
            continue  # no room for this distractor: the scene has fewer objects
        placed.append((x, y, side))
        mask = Image.new("L", (image_size, image_size), 0)  # exact box: the object's drawn pixels
        _draw(ImageDraw.Draw(mask), shape, x, y, side, 255)
        ys, xs = np.nonzero(np.asarray(mask))
        box = (xs.min() / image_size, ys.min() / image_size, (xs.max() + 1) / image_size, (ys.max() + 1) / image_size)
        drawn.append((size, colour, shape, tuple(float(v) for v in box)))
        _draw(draw, shape, x, y, side, COLOURS[colour])
    expression = f"the {target[0]} {target[1]} {target[2]}"
    return Example(np.array(image), expression, drawn[0][3], tuple(drawn))


class SyntheticScenes:
    """A random-access split of `size` synthetic scenes."""

    def __init__(self, seed: int, size: int, image_size: int = 64, max_objects: int = 3):
        self.seed, self.size, self.image_size, self.max_objects = seed, size, image_size, max_objects

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < self.size:
            raise IndexError(i)
        return render_scene(self.seed, int(i), self.image_size, self.max_objects)


# === RefCOCO-style records ===


@dataclass(frozen=True)
class Record:
    image: Path
    expression: str
    box: tuple[float, float, float, float]  # normalised


def read_image(path: str | Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None


def _record(raw, where: str, root: Path, box_format: str) -> Record:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object with image, expression, box")
    missing = [k for k in ("image", "expression", "box") if k not in raw]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)} (a record needs image, expression, box)")
    image, expression, box = raw["image"], raw["expression"], raw["box"]
    if not isinstance(image, str) or not image:
        raise UserError(f"{where}: image must be a path string, got {image!r}")
    if not isinstance(expression, str) or not expression.strip():
        raise UserError(f"{where}: expression must be a non-empty string, got {expression!r}")
    if (not isinstance(box, list) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        raise UserError(f"{where}: box must be 4 numbers [x1, y1, x2, y2] in pixels, got {box!r}")
    path = Path(image).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise UserError(f"{where}: image not found: {path}")
    try:
        with Image.open(path) as im:
            width, height = im.size  # reads the header only
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{where}: cannot read image {path}: {err}") from None
    x1, y1, a, b = (float(v) for v in box)
    x2, y2 = (x1 + a, y1 + b) if box_format == "xywh" else (a, b)
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise UserError(f"{where}: box {box} ({box_format}) is empty or outside the {width}×{height} image")
    return Record(path, expression.strip(), (x1 / width, y1 / height, x2 / width, y2 / height))


def read_records(path: str | Path, box_format: str = "xyxy", limit: int | None = None) -> list[Record]:
    """Every record of a JSONL file, checked (fields, box, image exists) before any training."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise UserError(f"records file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read records file {path}: {err}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        records.append(_record(raw, f"{path}:{number}", path.parent, box_format))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise UserError(f"{path}: no records")
    return records


class RecordSet:
    """A random-access split of RefCOCO-style records; images are read when an example is asked."""

    def __init__(self, records: list[Record]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Example:
        r = self.records[i]
        return Example(read_image(r.image), r.expression, r.box)


def export_records(split, out_dir: str | Path, name: str = "records") -> Path:
    """Write a split as PNG images + a RefCOCO-style JSONL (pixel xyxy boxes); returns the JSONL."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(len(split)):
        ex = split[i]
        h, w = ex.image.shape[:2]
        rel = f"images/{name}_{i:06d}.png"
        Image.fromarray(ex.image).save(out_dir / rel)
        box = [round(ex.box[0] * w), round(ex.box[1] * h), round(ex.box[2] * w), round(ex.box[3] * h)]
        lines.append(json.dumps({"image": rel, "expression": ex.expression, "box": box}))
    path = out_dir / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


# === Pixels ===


def to_pixels(images: list[np.ndarray], size: int) -> torch.Tensor:
    """uint8 (H, W, 3) images → float (B, 3, size, size) in [0, 1], each resized (bilinear,
    antialiased) to a square: boxes are normalised, so they stay exact under the stretch."""
    out = []
    for im in images:
        x = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() / 255.0
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x)
    return torch.cat(out).clamp_(0.0, 1.0)


__all__ = [
    "COLOURS",
    "SHAPES",
    "SIZES",
    "Example",
    "Record",
    "RecordSet",
    "SyntheticScenes",
    "export_records",
    "read_image",
    "read_records",
    "render_scene",
    "to_pixels",
]
