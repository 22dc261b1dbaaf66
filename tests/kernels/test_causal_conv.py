"""Triton causal conv vs its twin (values, gradients), and its launch candidates (CPU: interpreter)."""

import pytest
import torch


def conv_inputs(device, batch=2, L=9, dim=6, W=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, L, 2 * dim, generator=g)[..., :dim].to(device).requires_grad_()  # a column slice
    w = torch.randn(dim, W, generator=g).to(device).requires_grad_()
    b = torch.randn(dim, generator=g).to(device).requires_grad_()
    mask = (torch.rand(batch, L, generator=g) > 0.2).float().to(device)
    return x, w, b, mask


def test_conv_matches_reference(interpreter, device):
    from probes.kernels.causal_conv import causal_conv1d_fn, causal_conv1d_ref

    x, w, b, mask = conv_inputs(device)
    out = causal_conv1d_fn(x, w, b, "silu", mask)
    ref = causal_conv1d_ref(x, w, b, "silu", mask)
    assert torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        assert torch.allclose(a, r, atol=1e-4)


def test_conv_launch_candidates_agree_bitwise(interpreter, device, monkeypatch):
    """Every candidate the tuner may pick computes each output as the same W-term sum."""
    from probes.kernels import causal_conv as cc

    x, w, b, mask = conv_inputs(device, L=20)
    outs = []
    for cand in cc.FWD_CANDIDATES[:4]:
        monkeypatch.setattr(cc, "BLOCK_L", cand["BLOCK_L"])
        monkeypatch.setattr(cc, "BLOCK_D", cand["BLOCK_D"])
        outs.append(cc.conv_fwd(x.detach(), w.detach(), b.detach(), True, mask))
    assert all(torch.equal(o, outs[0]) for o in outs[1:])
    assert all(set(c) == {"BLOCK_D", "num_warps"} for c in cc.BWD_CANDIDATES), "BLOCK_L fixes dw's sum order"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_conv_tuned_matches_untuned_cuda(monkeypatch):
    from probes.kernels.causal_conv import causal_conv1d_fn

    x, w, b, mask = conv_inputs("cuda", batch=64, L=203, dim=4096)
    x = x.detach().bfloat16().requires_grad_()
    g = torch.randn(64, 203, 4096, device="cuda", dtype=torch.bfloat16)
    res = []
    for levers in ("0", "1"):
        monkeypatch.setenv("PROBES_SCAN_LEVERS", levers)
        out = causal_conv1d_fn(x, w, b, "silu", mask)
        res.append([out, *torch.autograd.grad(out, (x, w, b), g)])
    assert all(torch.equal(a, c) for a, c in zip(*res))
