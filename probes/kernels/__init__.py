"""Fast Mamba-1 kernels: a Triton selective scan (+ its PyTorch twin), a causal conv, and the
switch that makes transformers' Mamba models use them (`set_scan_backend`).

Importable without triton (the reference path then is all there is) and without pydantic.
"""

from probes.kernels.mamba_mixer import BACKENDS, fuse_residual_norm, resolve_backend, set_scan_backend
from probes.kernels.selective_scan import HAS_TRITON, selective_scan_fn, selective_scan_ref

__all__ = ["BACKENDS", "HAS_TRITON", "fuse_residual_norm", "resolve_backend", "selective_scan_fn", "selective_scan_ref",
           "set_scan_backend"]
