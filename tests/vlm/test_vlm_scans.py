"""probes.vlm.scans: every scan order, checked on small labelled grids; scan → inverse = identity."""

import pytest
import torch

from probes.errors import UserError
from probes.vlm.scans import DIRECTIONS, SCANS, inverse, scan_orders

# A 2 × 3 grid, patches labelled by (row, col): flat row-major index r * 3 + c.
#     a b c
#     d e f
GRID = ["a", "b", "c", "d", "e", "f"]
# Two maps of that grid (the visual long sequence): upper case is the second encoder's map.
LONG = GRID + [x.upper() for x in GRID]


def labels(perm, names):
    return "".join(names[i] for i in perm.tolist())


def test_bsm_is_forward_then_backward():
    orders = scan_orders("bsm", 2, 3)
    assert [labels(p, GRID) for p, _ in orders] == ["abcdef", "fedcba"]


def test_csm_is_rows_columns_and_both_reversed():
    orders = scan_orders("csm", 2, 3)
    assert [labels(p, GRID) for p, _ in orders] == ["abcdef", "adbecf", "fedcba", "fcebda"]


def test_cross_cat_scans_one_map_then_the_other_and_back():
    orders = scan_orders("cross-cat", 2, 3, sources=2)
    assert [labels(p, LONG) for p, _ in orders] == [
        "abcdefABCDEF", "adbecfADBECF", "FEDCBAfedcba", "FCEBDAfcebda"]


def test_cross_stitch_interlaces_the_maps_patch_by_patch():
    orders = scan_orders("cross-stitch", 2, 3, sources=2)
    assert [labels(p, LONG) for p, _ in orders] == [
        "aAbBcCdDeEfF", "aAdDbBeEcCfF", "FfEeDdCcBbAa", "FfCcEeBbDdAa"]


@pytest.mark.parametrize("name", SCANS)
@pytest.mark.parametrize("rows, cols", [(1, 1), (2, 3), (3, 2), (4, 4)])
def test_every_order_is_a_permutation_and_its_inverse_undoes_it(name, rows, cols):
    sources = 2 if name.startswith("cross") else 1
    x = torch.randn(2, sources * rows * cols, 5)
    orders = scan_orders(name, rows, cols, sources)
    assert len(orders) == len(DIRECTIONS[name])
    for perm, inv in orders:
        assert sorted(perm.tolist()) == list(range(sources * rows * cols))
        assert torch.equal(x[:, perm][:, inv], x)
        assert torch.equal(inverse(perm), inv)


def test_single_map_scans_refuse_two_maps_and_unknown_names_list_the_known():
    with pytest.raises(UserError, match="orders one feature map"):
        scan_orders("bsm", 2, 2, sources=2)
    with pytest.raises(UserError, match="known: bsm, csm, cross-cat, cross-stitch"):
        scan_orders("zigzag", 2, 2)
