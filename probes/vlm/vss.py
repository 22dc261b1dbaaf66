"""Vision selective scan: scan a patch grid in several orders, run a Mamba layer along each,
scan back, merge (VL-Mamba Sec. 3.2.3 Fig. 3; MambaVLM Eq. 6–7).

    x (B, L, D) patches in flat order (scans.py)   ─ scan_k ─► Mamba ─ inverse_k ─►  Σ_k  → (B, L, D)

The Mamba layer is transformers' `MambaMixer` (in_proj, causal depthwise conv, selective scan,
gate, out_proj), so `probes.kernels` can swap its scan for a fast one. By default one layer is
shared by all directions, as both papers describe ("one mamba layer", "the mamba block");
`shared=False` gives each direction its own (as VMamba does). With a shared layer all directions
run as one batch (B·K sequences), which is what a GPU wants.
"""

from __future__ import annotations

import torch
from torch import nn

from probes.vlm.scans import DIRECTIONS, scan_orders

MAMBA_STATE, MAMBA_EXPAND, MAMBA_CONV = 16, 2, 4  # the Mamba-1 defaults (Gu & Dao 2023)


def mamba_layer(dim: int) -> nn.Module:
    """One Mamba-1 mixer of width `dim` (no norm, no residual): (B, L, dim) → (B, L, dim)."""
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    config = MambaConfig(hidden_size=dim, state_size=MAMBA_STATE, expand=MAMBA_EXPAND,
                         conv_kernel=MAMBA_CONV, num_hidden_layers=1, vocab_size=1)
    return MambaMixer(config, layer_idx=0)


class ScanMamba(nn.Module):
    """Σ_k inverse_k(Mamba_k(scan_k(x))) over the directions of scan `scan`."""

    def __init__(self, dim: int, scan: str, n_directions: int, shared: bool = True):
        super().__init__()
        self.scan, self.shared = scan, shared
        self.mixers = nn.ModuleList([mamba_layer(dim) for _ in range(1 if shared else n_directions)])

    def forward(self, x: torch.Tensor, rows: int, cols: int, sources: int = 1) -> torch.Tensor:
        """x: (B, sources·rows·cols, D) in flat source-major order → same shape."""
        orders = [(p.to(x.device), inv.to(x.device)) for p, inv in scan_orders(self.scan, rows, cols, sources)]
        if self.shared:
            b = x.shape[0]
            scanned = torch.cat([x[:, p] for p, _ in orders])  # (K·B, L, D)
            y = self.mixers[0](scanned)
            return sum(y[k * b:(k + 1) * b][:, inv] for k, (_, inv) in enumerate(orders))
        return sum(mixer(x[:, p])[:, inv] for mixer, (p, inv) in zip(self.mixers, orders))


class VSS(nn.Module):
    """VL-Mamba's vision selective scan on one feature map: VSS(V) = Σ_k unscan_k(Mamba(scan_k(LN(V)))).

    The LayerNorm is the pre-norm of a Mamba block (the layer's input are raw encoder features);
    the residual is the connector's explicit `+ V`, so the block's own residual is left out.
    """

    def __init__(self, dim: int, scan: str = "bsm", shared: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.scan = ScanMamba(dim, scan, len(DIRECTIONS[scan]), shared)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """v: (B, rows, cols, D) → (B, rows, cols, D)."""
        b, rows, cols, d = v.shape
        y = self.scan(self.norm(v).reshape(b, rows * cols, d), rows, cols)
        return y.reshape(b, rows, cols, d)


__all__ = ["VSS", "ScanMamba", "mamba_layer"]
