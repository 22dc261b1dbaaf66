"""Kernel tests: on a machine without CUDA the Triton kernels run in the interpreter.

`interpreter` sets TRITON_INTERPRET=1 for one test only (monkeypatch: it is unset again
afterwards, so the rest of the session sees the machine as it is, e.g. `scan_backend: triton`
stays an error on a CPU). `triton.jit` reads the variable when it decorates a function, Triton's
own helpers (tl.zeros, tl.sum, ...) included, so when this directory is collected on a CPU the
kernel modules and triton.language are (re)imported with the variable set for that moment only:
decorated for the interpreter, which runs them only when a test asks for it.
"""

import importlib
import os

import pytest
import torch

CUDA = torch.cuda.is_available()

pytest.importorskip("triton")

KERNEL_MODULES = ("probes.kernels.selective_scan", "probes.kernels.causal_conv", "probes.kernels.fused_norm",
                  "probes.kernels.mamba_mixer", "probes.kernels")


TRITON_MODULES = ("triton.language.standard", "triton.language.math", "triton.language")


def _reload_if_compiled(names, probe):
    if type(probe()).__name__ != "InterpretedFunction":
        for name in names:
            importlib.reload(importlib.import_module(name))


def _decorate_for_the_interpreter():
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language as tl

        _reload_if_compiled(TRITON_MODULES, lambda: tl.zeros)
        import probes.kernels.selective_scan as ss

        _reload_if_compiled(KERNEL_MODULES, lambda: ss._ssm_fwd_kernel)
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


if not CUDA:
    _decorate_for_the_interpreter()


@pytest.fixture
def interpreter(monkeypatch):
    """TRITON_INTERPRET=1 for this test when there is no CUDA GPU; nothing on CUDA."""
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


@pytest.fixture
def tiny_tiles(interpreter):
    """Small tiles so that the interpreter stays fast; restored afterwards."""
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
