"""CONNECTORS registry: vision features → language-model embeddings.

A connector takes one feature map per source, `[(B, rows, cols, D_s) for s in sources]` (all on
the same grid), and returns the image embeddings as a grid `(B, sources·rows, cols, lm_dim)`:
the maps one after another (source-major), in patch order, ready for sequence assembly. Two
encoders are two sources (`concat: sequence`) or, joined per patch by the VLM (`concat:
channels`), one source of width D_1 + D_2.

| name              | paper                         | equation |
|-------------------|-------------------------------|----------|
| `mlp`             | Shaking Up VLMs (LLaVA-1.5)   | `MLP(V) = W2 · GELU(W1 · V)` |
| `vss-mlp`         | VL-Mamba Eq. 5, Fig. 2b       | `V_out = MLP(Norm(VSS(V) + V))` |
| `vss-l2`          | VL-Mamba Eq. 6, Fig. 2c       | `V' = Linear(V); V_out = Linear(Norm(VSS(GELU(V')) + V'))` |
| `mamba-projector` | MambaVLM Eq. 5–8, Fig. 2–3    | `H = DWConv(W1·R); H_k = SSM(scan_k(H)); out = W3(Norm(Σ_k unscan_k H_k) ⊙ SiLU(W2·R))` |

VSS uses scan `bsm` (2 directions, VL-Mamba's best) or `csm` (4); the Mamba projector scans the
visual long sequence `R = Concat[f_1(X); f_2(X)]` with `cross-stitch` (MambaVLM's default) or
`cross-cat`. MambaVLM's merge equation (8) is missing from the text we have; the projector
follows the VMamba SS2D block it builds on (DWConv → SiLU → 4-way SSM → sum → Norm → gate by
SiLU(W2·R) → W3), which uses exactly the three linear layers W1, W2, W3 the paper names.

    spec = get_connector("vss-l2")
    conn = spec(vision_dims=(1152,), lm_dim=2560, scan="csm")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from probes.errors import UserError
from probes.vlm.scans import DIRECTIONS
from probes.vlm.vss import VSS, ScanMamba


def _single(feats: list[torch.Tensor]) -> torch.Tensor:
    return feats[0]


# === mlp ===


class MLPConnector(nn.Module):
    """Two layers with GELU (LLaVA-1.5). With several maps (concat=sequence, the visual long
    sequence), W1 is one linear per encoder and the maps follow one another, W2 is shared; for
    Cobra's Concat[f1; f2] per patch (concat=channels) the VLM joins the maps first: one map."""

    def __init__(self, vision_dims: Sequence[int], lm_dim: int):
        super().__init__()
        self.w1 = nn.ModuleList([nn.Linear(d, lm_dim) for d in vision_dims])
        self.w2 = nn.Linear(lm_dim, lm_dim)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        h = torch.cat([w(f) for w, f in zip(self.w1, feats)], dim=1)  # (B, S·rows, cols, lm)
        return self.w2(F.gelu(h))


# === VL-Mamba ===


class VSSMLP(nn.Module):
    """V_out = MLP(Norm(VSS(V) + V)); VSS runs at the encoder's width."""

    def __init__(self, vision_dims: Sequence[int], lm_dim: int, scan: str = "bsm", shared: bool = True):
        super().__init__()
        (dim,) = vision_dims
        self.vss = VSS(dim, scan, shared)
        self.norm = nn.LayerNorm(dim)
        self.mlp = MLPConnector([dim], lm_dim)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        v = _single(feats)
        return self.mlp([self.norm(self.vss(v) + v)])


class VSSL2(nn.Module):
    """V' = Linear(V); V_out = Linear(Norm(VSS(GELU(V')) + V')); VSS runs at the LM's width."""

    def __init__(self, vision_dims: Sequence[int], lm_dim: int, scan: str = "bsm", shared: bool = True):
        super().__init__()
        (dim,) = vision_dims
        self.linear1 = nn.Linear(dim, lm_dim)
        self.vss = VSS(lm_dim, scan, shared)
        self.norm = nn.LayerNorm(lm_dim)
        self.linear2 = nn.Linear(lm_dim, lm_dim)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        v1 = self.linear1(_single(feats))
        return self.linear2(self.norm(self.vss(F.gelu(v1)) + v1))


# === MambaVLM ===


class MambaProjector(nn.Module):
    """MambaVLM's projector over the visual long sequence of `len(vision_dims)` encoders.

    H = SiLU(DWConv3×3(W1·R)) per map; H_k = Mamba(scan_k(H)) for the 4 cross-cat / cross-stitch
    orders (scans.py) over all maps at once; out = W3(LN(Σ_k unscan_k(H_k)) ⊙ SiLU(W2·R)).
    W1 and W2 are one linear per encoder (their widths differ), W3 is shared.
    """

    def __init__(self, vision_dims: Sequence[int], lm_dim: int, scan: str = "cross-stitch",
                 shared: bool = True):
        super().__init__()
        self.w1 = nn.ModuleList([nn.Linear(d, lm_dim) for d in vision_dims])
        self.w2 = nn.ModuleList([nn.Linear(d, lm_dim) for d in vision_dims])
        self.dwconv = nn.Conv2d(lm_dim, lm_dim, kernel_size=3, padding=1, groups=lm_dim)
        self.ssm = ScanMamba(lm_dim, scan, len(DIRECTIONS[scan]), shared)
        self.norm = nn.LayerNorm(lm_dim)
        self.w3 = nn.Linear(lm_dim, lm_dim)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        b, rows, cols, _ = feats[0].shape
        s = len(feats)
        h = torch.stack([w(f) for w, f in zip(self.w1, feats)], dim=1)  # (B, S, rows, cols, lm)
        d = h.shape[-1]
        h = self.dwconv(h.reshape(b * s, rows, cols, d).permute(0, 3, 1, 2))  # each map on its own
        h = F.silu(h).permute(0, 2, 3, 1).reshape(b, s * rows * cols, d)
        y = self.ssm(h, rows, cols, s).reshape(b, s * rows, cols, d)
        gate = torch.cat([w(f) for w, f in zip(self.w2, feats)], dim=1)
        return self.w3(self.norm(y) * F.silu(gate))


# === Registry ===


@dataclass(frozen=True)
class ConnectorSpec:
    """One connector: its module, the scans it takes, how many encoders, and its equation."""

    name: str
    module: Callable[..., nn.Module]
    scans: tuple[str, ...]
    default_scan: str | None
    sources: tuple[int, int]  # (min, max) number of encoders
    equation: str
    paper: str

    def check_sources(self, n: int) -> None:
        lo, hi = self.sources
        if not lo <= n <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {hi}"
            hint = ("; for two encoders use mamba-projector or mlp" if hi == 1 else
                    "; set encoder2 (MambaVLM: --encoder dinov2-tiny --encoder2 siglip-tiny)" if lo == 2 else "")
            raise UserError(f"connector {self.name} takes {want} encoder(s), got {n}{hint}")

    def __call__(self, vision_dims: int | Sequence[int], lm_dim: int, scan: str | None = None,
                 shared: bool = True) -> nn.Module:
        dims = (vision_dims,) if isinstance(vision_dims, int) else tuple(vision_dims)
        self.check_sources(len(dims))
        if not self.scans:
            if scan is not None:
                raise UserError(f"connector {self.name} has no scan (got scan '{scan}')")
            return self.module(dims, lm_dim)
        scan = scan or self.default_scan
        if scan not in self.scans:
            raise UserError(f"connector {self.name} scans with {' or '.join(self.scans)}, got '{scan}'")
        return self.module(dims, lm_dim, scan=scan, shared=shared)


CONNECTORS: dict[str, ConnectorSpec] = {spec.name: spec for spec in [
    ConnectorSpec("mlp", MLPConnector, (), None, (1, 2), "MLP(V) = W2 · GELU(W1 · V)",
                  "Shaking Up VLMs Sec. 3.2 (LLaVA-1.5)"),
    ConnectorSpec("vss-mlp", VSSMLP, ("bsm", "csm"), "bsm", (1, 1), "V_out = MLP(Norm(VSS(V) + V))",
                  "VL-Mamba Eq. 5, Fig. 2b"),
    ConnectorSpec("vss-l2", VSSL2, ("bsm", "csm"), "bsm", (1, 1),
                  "V' = Linear(V); V_out = Linear(Norm(VSS(GELU(V')) + V'))", "VL-Mamba Eq. 6, Fig. 2c"),
    ConnectorSpec("mamba-projector", MambaProjector, ("cross-stitch", "cross-cat"), "cross-stitch", (2, 2),
                  "H = DWConv(W1·R); H_k = SSM(scan_k(H)); out = W3(Norm(Σ_k unscan_k H_k) ⊙ SiLU(W2·R))",
                  "MambaVLM Eq. 5–8, Fig. 2–3"),
]}


def get_connector(name: str) -> ConnectorSpec:
    try:
        return CONNECTORS[name]
    except KeyError:
        raise UserError(f"unknown connector '{name}' (known: {', '.join(CONNECTORS)})") from None


def build_connector(name: str, vision_dims: int | Sequence[int], lm_dim: int, scan: str | None = None,
                    shared: bool = True) -> nn.Module:
    return get_connector(name)(vision_dims, lm_dim, scan=scan, shared=shared)


__all__ = [
    "CONNECTORS",
    "VSSL2",
    "VSSMLP",
    "ConnectorSpec",
    "MLPConnector",
    "MambaProjector",
    "build_connector",
    "get_connector",
]
