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
    for cand in cc.FWD_STREAM_CANDIDATES:  # the stream forward: the same sums, whatever its launch
        monkeypatch.setattr(cc, "FWD_STREAM_DEFAULT", cand)
        outs.append(cc.conv_fwd(x.detach(), w.detach(), b.detach(), True, mask, kernel="stream"))
    assert all(torch.equal(o, outs[0]) for o in outs[1:])
    assert all(set(c) == {"BLOCK_D", "num_warps"} for c in cc.BWD_CANDIDATES), \
        "the tiles backward's BLOCK_L and ROWS fix dw's sum order: not tunable"
    assert all(set(c) == {"BLOCK_D", "UNROLL", "num_warps"} for c in cc.STREAM_CANDIDATES), "ROWS is not tunable"


def test_conv_stream_backward_candidates_agree_bitwise(interpreter, device):
    """The stream backward's launches (channels per program, unroll: loop trips that overrun L and the
    block) give the same dx, dw, db bit for bit."""
    from probes.kernels import causal_conv as cc

    x, w, b, mask = conv_inputs(device, L=19, dim=5)
    g = torch.randn(2, 19, 5, generator=torch.Generator().manual_seed(2)).to(device)
    fn, consts = cc.BWD_KERNELS["stream"](4)[:2]
    outs = []
    for cand in cc.STREAM_CANDIDATES[:4]:
        dx, dw, db = (torch.empty(*shape, device=device) for shape in ((2, 19, 5), (2, 3, 5, 4), (2, 3, 5)))
        fn[(3, -(-5 // cand["BLOCK_D"]), 2)](
            x.detach(), w.detach(), b.detach(), mask, g, dx, dw, db, 19, 5, 8, x.stride(0), x.stride(1),
            w.stride(0), w.stride(1), mask.stride(0), mask.stride(1), g.stride(0), g.stride(1), dx.stride(0),
            dx.stride(1), W=4, HAS_BIAS=True, HAS_MASK=True, ACT=True, **consts, **cand)
        outs.append((dx, dw, db))
    assert all(torch.equal(a, c) for o in outs[1:] for a, c in zip(o, outs[0]))


@pytest.mark.parametrize("kernel", ["stream", "tiles"])
@pytest.mark.parametrize("L, rows", [(37, 8), (37, 16), (40, 16), (37, 13)])
def test_conv_backward_row_blocks_match_reference(interpreter, device, L, rows, kernel):
    """The backward's grid over L: several row blocks, L not a multiple of ROWS, ROWS not a multiple of
    its tile (rounded up), all against the twin's gradients."""
    from probes.kernels import causal_conv as cc

    x, w, b, mask = conv_inputs(device, L=L)
    g = torch.randn(2, L, 6, generator=torch.Generator().manual_seed(1)).to(device)
    n_blocks = -(-L // cc.bwd_rows(L, rows))
    assert n_blocks >= 3
    got = cc.conv_bwd(x.detach(), w.detach(), b.detach(), True, g, mask, rows=rows, kernel=kernel)
    ref = torch.autograd.grad(cc.causal_conv1d_ref(x, w, b, "silu", mask), (x, w, b), g)
    for name, a, r in zip(("dx", "dw", "db"), got, ref):
        assert torch.allclose(a, r, atol=1e-4), (name, (a - r).abs().max())


@pytest.mark.parametrize("W", [1, 2, 3, 5])
def test_conv_other_widths_match_reference(interpreter, device, W):
    """Widths below 4 run the stream kernels on the last taps of a 4-step window (the forward equal to
    the tiles forward bit for bit), wider ones the tiles kernels."""
    from probes.kernels import causal_conv as cc

    x, w, b, mask = conv_inputs(device, L=21, W=W)
    out = cc.causal_conv1d_fn(x, w, b, "silu", mask)
    ref = cc.causal_conv1d_ref(x, w, b, "silu", mask)
    assert torch.allclose(out, ref, atol=1e-5)
    if W <= cc.STREAM_MAX_W:
        for bias, m, act in ((b.detach(), mask, True), (None, None, False)):
            tiles = cc.conv_fwd(x.detach(), w.detach(), bias, act, m, kernel="tiles")
            assert torch.equal(cc.conv_fwd(x.detach(), w.detach(), bias, act, m, kernel="stream"), tiles)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        assert torch.allclose(a, r, atol=1e-4)
    if W > cc.STREAM_MAX_W:
        with pytest.raises(ValueError, match="stream kernel takes widths up to 4"):
            cc.conv_bwd(x.detach(), w.detach(), None, True, g, kernel="stream")
        with pytest.raises(ValueError, match="stream kernel takes widths up to 4"):
            cc.conv_fwd(x.detach(), w.detach(), None, True, kernel="stream")


@pytest.mark.parametrize("kernel", ["stream", "tiles"])
def test_conv_backward_rows_change_only_dw_rounding(interpreter, device, kernel):
    """ROWS >= L (one program walks all of L) and small ROWS: dx bit for bit, dw/db to float rounding;
    without a mask and bias too."""
    from probes.kernels import causal_conv as cc

    L = 45
    x, w, b, mask = conv_inputs(device, L=L, seed=3)
    g = torch.randn(2, L, 6, generator=torch.Generator().manual_seed(4)).to(device)
    assert cc.bwd_rows(L, 10**6) >= L and cc.bwd_rows(L, 8) == 8
    for bias, m in ((b.detach(), mask), (None, None)):
        whole = cc.conv_bwd(x.detach(), w.detach(), bias, True, g, m, rows=10**6, kernel=kernel)
        split = cc.conv_bwd(x.detach(), w.detach(), bias, True, g, m, rows=8, kernel=kernel)
        assert torch.equal(whole[0], split[0])
        assert torch.allclose(whole[1], split[1], rtol=1e-5, atol=1e-5)
        assert (whole[2] is None) == (bias is None)
        if bias is not None:
            assert torch.allclose(whole[2], split[2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rows must be a positive integer"):
        cc.conv_bwd(x.detach(), w.detach(), None, True, g, rows=0)
    with pytest.raises(ValueError, match="unknown kernel 'fast'"):
        cc.conv_bwd(x.detach(), w.detach(), None, True, g, kernel="fast")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_conv_tuned_matches_untuned_cuda(monkeypatch):
    """With launch tuning on (off by default), the tuned conv gives the untuned results bit for bit."""
    from probes.kernels import selective_scan
    from probes.kernels.causal_conv import causal_conv1d_fn

    monkeypatch.setattr(selective_scan.CONFIG, "autotune", True)

    x, w, b, mask = conv_inputs("cuda", batch=64, L=203, dim=4096)
    x = x.detach().bfloat16().requires_grad_()
    g = torch.randn(64, 203, 4096, device="cuda", dtype=torch.bfloat16)
    res = []
    for levers in ("0", "1"):
        monkeypatch.setenv("PROBES_SCAN_LEVERS", levers)
        out = causal_conv1d_fn(x, w, b, "silu", mask)
        res.append([out, *torch.autograd.grad(out, (x, w, b), g)])
    assert all(torch.equal(a, c) for a, c in zip(*res))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dim", [1536, 4096])
def test_conv_paper_shape_bf16_matches_reference_cuda(device, dim):
    """Paper shape (B=64, L=203), bf16 x sliced from a (B, L, 2D) tensor, float32 weights as under
    autocast: values and gradients against the float32 twin fed the same bf16 inputs; the default
    row blocks against ROWS >= L (dx bit for bit) and the default (stream) backward against tiles."""
    from probes.kernels import causal_conv as cc

    x, w, b, mask = conv_inputs(device, batch=64, L=203, dim=dim)  # `device`: TF32 off for the twin's conv
    x = x.detach().bfloat16().requires_grad_()
    g = torch.randn(64, 203, dim, generator=torch.Generator().manual_seed(5)).to(device, torch.bfloat16)
    out = cc.causal_conv1d_fn(x, w, b, "silu", mask)
    grads = torch.autograd.grad(out, (x, w, b), g)
    xr = x.detach().float().requires_grad_()
    ref = cc.causal_conv1d_ref(xr, w, b, "silu", mask)
    ref_grads = torch.autograd.grad(ref, (xr, w, b), g.float())

    def rel(a, r):
        return float((a.float() - r).abs().max() / r.abs().max())

    assert rel(out, ref) < 1e-2  # bf16 output rounding
    assert rel(grads[0], ref_grads[0]) < 1e-2
    assert rel(grads[1], ref_grads[1]) < 1e-4 and rel(grads[2], ref_grads[2]) < 1e-4  # float32 sums of 13k terms
    whole = cc.conv_bwd(x.detach(), w.detach(), b.detach(), True, g, mask, rows=203)
    assert torch.equal(whole[0], grads[0])
    assert rel(grads[1], whole[1]) < 1e-4 and rel(grads[2], whole[2]) < 1e-4  # another float32 sum order
    for kernel in ("tiles", "stream"):  # both forwards: the same sums (bit for bit in the interpreter)
        assert rel(cc.conv_fwd(x.detach(), w, b, True, mask, kernel=kernel), ref) < 1e-2
    tiles = cc.conv_bwd(x.detach(), w.detach(), b.detach(), True, g, mask, kernel="tiles")
    assert rel(tiles[0], ref_grads[0]) < 1e-2  # the other kernel: same sums up to FMA contraction
    assert rel(grads[1], tiles[1]) < 1e-4 and rel(grads[2], tiles[2]) < 1e-4
