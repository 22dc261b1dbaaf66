"""Kernel tests: on a machine without CUDA the Triton kernels run in the interpreter.

TRITON_INTERPRET must be set before `triton.jit` decorates the kernels, so it is set here, when
this directory is collected; `interpreted_kernels` reloads the kernel modules if something
imported them earlier without it.
"""

import importlib
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")


def _reload_if_compiled():
    import probes.kernels.selective_scan as ss

    if CUDA or type(ss._ssm_fwd_kernel).__name__ == "InterpretedFunction":
        return
    for name in ("probes.kernels.selective_scan", "probes.kernels.causal_conv", "probes.kernels.mamba_mixer",
                 "probes.kernels"):
        importlib.reload(importlib.import_module(name))


@pytest.fixture
def tiny_tiles():
    """Small tiles so that the interpreter stays fast; restored afterwards."""
    _reload_if_compiled()
    from probes.kernels import selective_scan as ss

    saved = dict(ss.CONFIG.__dict__)
    if not CUDA:
        tiny = {"chunk_fwd": 4, "dh_fwd": 1, "dl_fwd": 8, "chunk_bwd": 4, "dh_bwd": 2, "dl_bwd": 4}
        for k, v in tiny.items():
            setattr(ss.CONFIG, k, v)
    yield ss.CONFIG
    ss.CONFIG.__dict__.update(saved)


@pytest.fixture
def device():
    """cuda when there is one, with TF32 off so that float32 comparisons stay float32."""
    if not CUDA:
        yield "cpu"
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield "cuda"
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
