"""Triton selective scan vs its PyTorch twin: values and gradients of every input.

CPU (CI): tiny shapes in the Triton interpreter. CUDA: the same, plus paper shapes
(B=64, L=203, D=1536 and 4096, N=16) in bf16.
"""

import pytest
import torch

CUDA = torch.cuda.is_available()

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def make_inputs(batch, dim, L, N, dtype, device, has_d=True, has_z=True, has_bias=True, channel_last=False,
                seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift)

    def bdl(t):  # (B, D, L) view; channel_last: the transpose of a contiguous (B, L, D) tensor
        t = t.to(device=device, dtype=dtype)
        return t.transpose(1, 2).contiguous().transpose(1, 2) if channel_last else t

    ins = {
        "u": bdl(r(batch, dim, L)),
        "delta": bdl(r(batch, dim, L, scale=0.5, shift=-1.0)),
        "A": (-torch.exp(r(dim, N, scale=0.5))).to(device),
        "B": r(batch, N, L).to(device=device, dtype=dtype),
        "C": r(batch, N, L).to(device=device, dtype=dtype),
        "D": r(dim).to(device) if has_d else None,
        "z": bdl(r(batch, dim, L)) if has_z else None,
        "delta_bias": (r(dim, scale=0.1)).to(device) if has_bias else None,
    }
    for t in ins.values():
        if t is not None:
            t.requires_grad_()
    return ins


def rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def check(ins, tol, softplus=True):
    from probes.kernels.selective_scan import selective_scan_fn, selective_scan_ref

    args = [ins[k] for k in NAMES]
    out = selective_scan_fn(*args, delta_softplus=softplus)
    ref = selective_scan_ref(*args, delta_softplus=softplus)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert rel(out, ref) < tol, f"out: {rel(out, ref):.2e}"
    gout = torch.randn_like(ref)
    live = [k for k in NAMES if ins[k] is not None]
    g1 = torch.autograd.grad(out, [ins[k] for k in live], gout)
    g2 = torch.autograd.grad(ref, [ins[k] for k in live], gout)
    errs = {k: rel(a, b) for k, a, b in zip(live, g1, g2)}
    for k, a, b in zip(live, g1, g2):
        assert a.shape == b.shape and a.dtype == b.dtype, k
    assert max(errs.values()) < tol, {k: f"{v:.1e}" for k, v in errs.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(2, 6, 9, 4), (1, 5, 16, 3)], ids=["b2d6l9n4", "b1d5l16n3"])
@pytest.mark.parametrize("opts", [(True, True, True), (False, False, False)], ids=["D-z-bias", "plain"])
def test_scan_matches_reference(tiny_tiles, device, dtype, shape, opts):
    ins = make_inputs(*shape, dtype, device, *opts)
    check(ins, TOL[dtype], softplus=opts[2])


@pytest.mark.parametrize("bc_mode", [0, 1, 2])
def test_dB_dC_reduction_modes(tiny_tiles, device, bc_mode):
    tiny_tiles.bc_mode = bc_mode
    check(make_inputs(2, 7, 11, 4, torch.float32, device), TOL[torch.float32])


def test_channel_last_views_and_batch_slices(tiny_tiles, device):
    tiny_tiles.scratch_bytes = 1  # one batch element per backward launch
    check(make_inputs(3, 6, 10, 4, torch.float32, device, channel_last=True), TOL[torch.float32])


def test_last_state(tiny_tiles, device):
    from probes.kernels.selective_scan import selective_scan_fn, selective_scan_ref

    ins = make_inputs(2, 5, 7, 4, torch.float32, device)
    args = [ins[k] for k in NAMES]
    out, last = selective_scan_fn(*args, delta_softplus=True, return_last_state=True)
    ref, ref_last = selective_scan_ref(*args, delta_softplus=True, return_last_state=True)
    assert rel(out, ref) < 1e-4 and rel(last, ref_last) < 1e-4


def test_triton_on_cpu_without_interpreter_is_a_clear_error(tiny_tiles, monkeypatch):
    from probes.kernels import selective_scan as ss

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ins = make_inputs(1, 4, 5, 4, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="CUDA"):
        ss.selective_scan_fn(*[ins[k] for k in NAMES])


# === CUDA, paper shapes ===

cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("shape", [(64, 203, 1536, 16), (16, 203, 4096, 16)], ids=["130m", "1.4b-b16"])
@pytest.mark.parametrize("bc_mode", [0, 2])
def test_paper_shapes_bf16(shape, bc_mode):
    from probes.kernels import selective_scan as ss

    batch, L, dim, N = shape
    old = ss.CONFIG.bc_mode
    ss.CONFIG.bc_mode = bc_mode
    try:
        check(make_inputs(batch, dim, L, N, torch.bfloat16, "cuda", channel_last=True), 1e-2)
    finally:
        ss.CONFIG.bc_mode = old


@pytest.mark.cuda
@cuda
def test_paper_shape_fp32_tight():
    check(make_inputs(8, 1536, 203, 16, torch.float32, "cuda", channel_last=True), 1e-4)
