"""probes.vlm.connectors: every registry entry at tiny size (shapes, gradients, scans), the VSS
wiring (scan → layer → inverse → sum) and the registry's one-line errors."""

import pytest
import torch
from torch import nn

from probes.errors import UserError
from probes.vlm.connectors import CONNECTORS, build_connector, get_connector
from probes.vlm.scans import DIRECTIONS
from probes.vlm.vss import VSS, ScanMamba

CASES = [(name, scan) for name, spec in CONNECTORS.items() for scan in (spec.scans or (None,))]


@pytest.mark.parametrize("name, scan", CASES)
def test_every_connector_maps_feature_grids_to_lm_embeddings(name, scan):
    spec = CONNECTORS[name]
    dims = (24, 40) if spec.sources[0] == 2 else (24,)
    torch.manual_seed(0)
    conn = spec(dims, 48, scan=scan)
    feats = [torch.randn(2, 3, 4, d) for d in dims]
    out = conn(feats)
    assert out.shape == (2, 3 * len(dims), 4, 48)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conn.parameters())


def test_mlp_takes_one_or_two_encoders_and_is_two_layers_with_gelu():
    conn = build_connector("mlp", 8, 16)
    v = torch.randn(1, 2, 2, 8)
    expected = conn.w2(nn.functional.gelu(conn.w1[0](v)))
    assert torch.allclose(conn([v]), expected)
    assert build_connector("mlp", (8, 12), 16)([v, torch.randn(1, 2, 2, 12)]).shape == (1, 4, 2, 16)


class _Identity(nn.Module):
    def forward(self, x):
        return x


class _Prefix(nn.Module):
    """A causal 'layer': output t = sum of inputs 0 … t (shows the order a sequence was read in)."""

    def forward(self, x):
        return x.cumsum(dim=1)


@pytest.mark.parametrize("scan", ["bsm", "csm"])
def test_vss_puts_every_direction_back_in_patch_order_and_sums(scan):
    vss = VSS(6, scan)
    vss.scan.mixers[0] = _Identity()
    v = torch.randn(2, 3, 4, 6)
    assert torch.allclose(vss(v), len(DIRECTIONS[scan]) * vss.norm(v), atol=1e-6)


def test_bsm_sees_the_whole_grid_from_both_ends():
    layer = ScanMamba(1, "bsm", 2)
    layer.mixers[0] = _Prefix()
    x = torch.ones(1, 6, 1)  # 2 × 3 grid of ones
    # forward prefix counts 1 … 6, backward 6 … 1: every patch sums to 7
    assert torch.equal(layer(x, 2, 3).flatten(), torch.full((6,), 7.0))


def test_cross_stitch_reads_both_maps_of_a_patch_together():
    layer = ScanMamba(1, "cross-stitch", 4)
    layer.mixers[0] = _Prefix()
    x = torch.zeros(1, 12, 1)
    x[0, 6] = 1.0  # patch (0, 0) of the second map
    y = layer(x, 2, 3, sources=2).flatten()
    # b(0,0) is read right after a(0,0) by rows and by columns, right before it backwards:
    # a(0,0) sees it in the 2 backward orders, b(0,0) sees itself in all 4
    assert y[0] == 2.0 and y[6] == 4.0


def test_unshared_layers_are_one_per_direction():
    assert len(build_connector("vss-l2", 8, 16, scan="csm", shared=False).vss.scan.mixers) == 4
    assert len(build_connector("vss-l2", 8, 16, scan="csm").vss.scan.mixers) == 1


@pytest.mark.parametrize("call, message", [
    (lambda: get_connector("qformer"), "unknown connector 'qformer' (known: mlp, vss-mlp, vss-l2, mamba-projector)"),
    (lambda: build_connector("vss-mlp", 8, 16, scan="cross-cat"), "vss-mlp scans with bsm or csm, got 'cross-cat'"),
    (lambda: build_connector("mlp", 8, 16, scan="bsm"), "connector mlp has no scan"),
    (lambda: build_connector("vss-l2", (8, 8), 16), "connector vss-l2 takes 1 encoder(s), got 2"),
    (lambda: build_connector("mamba-projector", 8, 16), "set encoder2"),
])
def test_registry_errors_are_one_line(call, message):
    with pytest.raises(UserError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
