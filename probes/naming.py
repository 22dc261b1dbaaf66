"""Names made from config values, shared by run directories and figure labels (torch-free)."""

from __future__ import annotations


def format_lr(lr: float) -> str:
    """1e-4 → '1e-4', 5e-05 → '5e-5', 0.00025 → '2.5e-4': the shortest exact mantissa, no padding."""
    mantissa, exponent = f"{float(lr):e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
