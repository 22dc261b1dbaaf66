"""probes.vlm.data: synthetic scenes (deterministic, exact boxes, unique descriptions) and the
RefCOCO-style loader (round trip, and one-line errors for every malformed record)."""

import json

import numpy as np
import pytest
from PIL import Image

from probes.errors import UserError
from probes.vlm.data import (
    BACKGROUND,
    COLOURS,
    SHAPES,
    SIZES,
    RecordSet,
    SyntheticScenes,
    export_records,
    read_records,
    render_scene,
    to_pixels,
)


def test_scenes_are_deterministic_and_random_access():
    a, b = SyntheticScenes(3, 50, 48), SyntheticScenes(3, 50, 48)
    for i in (0, 17, 49):
        assert np.array_equal(a[i].image, b[i].image) and a[i].expression == b[i].expression
    assert not np.array_equal(a[0].image, SyntheticScenes(4, 50, 48)[0].image)
    with pytest.raises(IndexError):
        a[50]


@pytest.mark.parametrize("i", range(40))
def test_the_box_is_exactly_the_targets_pixels(i):
    ex = render_scene(seed=1, index=i, image_size=48, max_objects=4)
    size, colour, shape = ex.expression.removeprefix("the ").split()
    assert size in SIZES and colour in COLOURS and shape in SHAPES
    x1, y1, x2, y2 = (round(v * 48) for v in ex.box)
    assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48
    target = np.all(ex.image == COLOURS[colour], axis=-1)
    inside = target[y1:y2, x1:x2]
    # every edge row and column of the box holds target pixels: the box is tight
    assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    # the one-pixel ring around the box is free of the target object (objects never touch)
    ring = np.zeros_like(target)
    ring[max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1] = True
    ring[y1:y2, x1:x2] = False
    assert not (ring & target).any()


def test_the_description_names_exactly_one_object_and_objects_never_overlap():
    seen, counts = set(), set()
    for i in range(200):
        ex = render_scene(seed=2, index=i, image_size=64, max_objects=5)
        assert ex.image.shape == (64, 64, 3) and ex.image.dtype == np.uint8
        named = [o for o in ex.objects if f"the {o[0]} {o[1]} {o[2]}" == ex.expression]
        assert len(named) == 1 and named[0][3] == ex.box
        boxes = [o[3] for o in ex.objects]
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                p, q = boxes[a], boxes[b]
                assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1]
        seen.add(ex.expression)
        counts.add(len(ex.objects))
    assert len(seen) > 20 and counts == {1, 2, 3, 4, 5}  # sizes × colours × shapes; 1 … max_objects
    assert tuple(render_scene(2, 0, 64, 1).image[0, 0]) in {BACKGROUND, *COLOURS.values()}


def test_export_then_read_records_round_trips(tmp_path):
    split = SyntheticScenes(0, 5, 32)
    path = export_records(split, tmp_path, "val")
    records = read_records(path)
    assert len(records) == 5
    loaded = RecordSet(records)
    for i in range(5):
        assert loaded[i].expression == split[i].expression
        assert np.array_equal(loaded[i].image, split[i].image)
        assert loaded[i].box == pytest.approx(split[i].box, abs=1 / 32)


def test_xywh_boxes_and_limits(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    lines = [{"image": "a.png", "expression": "left", "box": [10, 20, 90, 60]},
             {"image": str(tmp_path / "a.png"), "expression": "right", "box": [100, 0, 100, 100]}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    recs = read_records(tmp_path / "r.jsonl", box_format="xywh")
    assert recs[0].box == pytest.approx((0.05, 0.2, 0.5, 0.8))
    assert recs[1].box == pytest.approx((0.5, 0.0, 1.0, 1.0))
    assert len(read_records(tmp_path / "r.jsonl", box_format="xywh", limit=1)) == 1


@pytest.mark.parametrize("line, message", [
    ("{not json", "r.jsonl:1: not valid JSON"),
    ('["a.png", "x", [0, 0, 1, 1]]', "r.jsonl:1: expected a JSON object"),
    ('{"image": "a.png", "box": [0, 0, 1, 1]}', "r.jsonl:1: missing expression"),
    ('{"image": "a.png", "expression": "", "box": [0, 0, 1, 1]}', "expression must be a non-empty string"),
    ('{"image": 3, "expression": "x", "box": [0, 0, 1, 1]}', "image must be a path string"),
    ('{"image": "a.png", "expression": "x", "box": [0, 0, 1]}', "box must be 4 numbers"),
    ('{"image": "a.png", "expression": "x", "box": [0, 0, "1", 1]}', "box must be 4 numbers"),
    ('{"image": "a.png", "expression": "x", "box": [5, 5, 2, 8]}', "is empty or outside the 20×10 image"),
    ('{"image": "a.png", "expression": "x", "box": [0, 0, 21, 5]}', "is empty or outside"),
    ('{"image": "missing.png", "expression": "x", "box": [0, 0, 1, 1]}', "r.jsonl:1: image not found"),
    ('{"image": "bad.png", "expression": "x", "box": [0, 0, 1, 1]}', "cannot read image"),
])
def test_malformed_records_are_one_line_errors(tmp_path, line, message):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "r.jsonl").write_text(line + "\n")
    with pytest.raises(UserError) as err:
        read_records(tmp_path / "r.jsonl")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_or_empty_records_file(tmp_path):
    with pytest.raises(UserError, match="records file not found"):
        read_records(tmp_path / "none.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no records"):
        read_records(tmp_path / "e.jsonl")


def test_pixels_are_resized_floats_in_unit_range():
    ims = [np.full((10, 20, 3), 255, np.uint8), np.zeros((32, 32, 3), np.uint8)]
    px = to_pixels(ims, 16)
    assert px.shape == (2, 3, 16, 16) and px.dtype.is_floating_point
    assert float(px[0].min()) == pytest.approx(1.0) and float(px[1].max()) == 0.0
