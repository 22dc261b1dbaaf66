"""probes.vlm.grounding: the box text, its strict parser, IoU and Acc@IoU≥0.5."""

import pytest

from probes.vlm.grounding import cell, format_box, iou, parse_box, score


def test_format_is_two_decimals_clipped():
    assert format_box((0.123, 0.5, 0.987, 1.0)) == "[0.12, 0.50, 0.99, 1.00]"
    assert format_box((-0.2, -0.0, 1.7, 0.004)) == "[0.00, 0.00, 1.00, 0.00]"


@pytest.mark.parametrize("box", [(0, 0, 1, 1), (0.12, 0.34, 0.56, 0.78), (0.5, 0.5, 0.5, 0.5)])
def test_format_then_parse_round_trips(box):
    assert parse_box(format_box(box)) == pytest.approx(box)


@pytest.mark.parametrize("text", [
    "", "[]", "[0.12, 0.34, 0.56]", "[0.12, 0.34, 0.56, 0.78, 0.90]",
    "[0.1, 0.34, 0.56, 0.78]",        # one decimal
    "[0.123, 0.34, 0.56, 0.78]",      # three decimals
    "[.12, 0.34, 0.56, 0.78]",        # no leading zero
    "[0.12,0.34,0.56,0.78]",          # no spaces
    "[0.12,  0.34, 0.56, 0.78]",      # two spaces
    " [0.12, 0.34, 0.56, 0.78]",      # leading space
    "[0.12, 0.34, 0.56, 0.78] ",      # trailing space
    "[0.12, 0.34, 0.56, 0.78]\n",     # trailing newline
    "[0.12, 0.34, 0.56, 0.78][0.1, 0.2, 0.3, 0.4]",
    "box: [0.12, 0.34, 0.56, 0.78]",
    "(0.12, 0.34, 0.56, 0.78)",
    "[1.01, 0.34, 1.56, 0.78]",       # above 1
    "[1.50, 0.34, 0.56, 0.78]",
    "[-0.12, 0.34, 0.56, 0.78]",      # negative
    "[0.56, 0.34, 0.12, 0.78]",       # x1 > x2
    "[0.12, 0.78, 0.56, 0.34]",       # y1 > y2
    "[0,12, 0.34, 0.56, 0.78]",       # decimal comma
    "[0.12, 0.34, 0.56, 0.7８]",      # a non-ASCII digit
    "[0.12, 0.34, 0.56, 0.78",        # unclosed
])
def test_anything_but_one_well_formed_box_is_unparseable(text):
    assert parse_box(text) is None
    assert score(text, (0.12, 0.34, 0.56, 0.78)) == {"parsed": False, "iou": 0.0, "correct": False}


def test_iou_known_values():
    assert iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert iou((0, 0, 0.5, 1), (0.5, 0, 1, 1)) == 0.0  # touching edges
    assert iou((0, 0, 0.4, 0.4), (0.6, 0.6, 1, 1)) == 0.0  # apart
    assert iou((0, 0, 1, 1), (0, 0, 0.5, 1)) == pytest.approx(0.5)
    assert iou((0, 0, 0.2, 0.2), (0.1, 0.1, 0.3, 0.3)) == pytest.approx(0.01 / 0.07)
    assert iou((0.2, 0.2, 0.2, 0.6), (0, 0, 1, 1)) == 0.0  # degenerate prediction
    assert iou((0.3, 0.3, 0.3, 0.3), (0.3, 0.3, 0.3, 0.3)) == 1.0


def test_correct_means_iou_at_least_one_half():
    target = (0.0, 0.0, 0.5, 1.0)
    assert score("[0.00, 0.00, 0.50, 1.00]", target)["correct"]
    assert score("[0.00, 0.00, 1.00, 1.00]", target) == {"parsed": True, "iou": pytest.approx(0.5), "correct": True}
    assert not score("[0.00, 0.00, 1.00, 0.99]", target)["correct"]  # IoU 0.495 / 0.995, just under


@pytest.mark.parametrize("box, expected", [
    ((0.0, 0.0, 0.2, 0.2), 0), ((0.4, 0.0, 0.6, 0.2), 1), ((0.8, 0.0, 1.0, 0.3), 2),
    ((0.0, 0.4, 0.2, 0.6), 3), ((0.4, 0.4, 0.6, 0.6), 4), ((0.9, 0.9, 1.0, 1.0), 8),
])
def test_cell_is_the_row_major_3x3_cell_of_the_centre(box, expected):
    assert cell(box) == expected
