"""set_scan_backend on transformers' Mamba: same losses, gradients, logits and checkpoints as the
reference forward; generation falls back; clear errors for unknown or unavailable backends."""

import copy
import importlib.machinery
import sys
import types

import pytest
import torch

CUDA = torch.cuda.is_available()


def tiny_mamba(seed=0, hidden=16, layers=2, state=4, vocab=64, **kw):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    cfg = MambaConfig(vocab_size=vocab, hidden_size=hidden, state_size=state, num_hidden_layers=layers,
                      expand=2, conv_kernel=4, time_step_rank=4, **kw)
    return MambaForCausalLM(cfg)


def train_losses(model, ids, steps, device, autocast=False, lr=1e-2):
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def test_triton_training_matches_reference(tiny_tiles, device):
    from probes.kernels import set_scan_backend

    ref = tiny_mamba(hidden=8)
    fast = copy.deepcopy(ref)
    assert set_scan_backend(fast, "triton") == "triton"
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1)).to(device)
    l_fast = train_losses(fast, ids, 3, device)
    l_ref = train_losses(ref, ids, 3, device)
    assert l_fast == pytest.approx(l_ref, rel=1e-4), (l_fast, l_ref)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-5), name


def test_eval_logits_padding_mask_and_generation(tiny_tiles, device):
    from probes.kernels import set_scan_backend

    ref = tiny_mamba(seed=2).to(device).eval()
    fast = copy.deepcopy(ref)
    set_scan_backend(fast, "triton")
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(3)).to(device)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding on one row
    with torch.no_grad():
        assert torch.allclose(fast(ids).logits, ref(ids).logits, atol=1e-4)
        out = fast(ids)
        assert getattr(out, "cache", getattr(out, "cache_params", None)) is None  # no cache: fast path
        out_f = fast(ids, attention_mask=mask, use_cache=False).logits
        out_r = ref(ids, attention_mask=mask, use_cache=False).logits
        assert torch.allclose(out_f, out_r, atol=1e-4)
        g_f = fast.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
        g_r = ref.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert torch.equal(g_f, g_r)


def test_checkpoints_unchanged_and_switch_back(tiny_tiles, tmp_path):
    from transformers import MambaForCausalLM

    from probes.kernels import set_scan_backend

    model = tiny_mamba()
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    set_scan_backend(model, "triton")
    assert model.state_dict().keys() == keys.keys()
    model.save_pretrained(tmp_path)
    loaded = MambaForCausalLM.from_pretrained(tmp_path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, keys[k]), k
    assert set_scan_backend(model, "reference") == "reference"
    mixer = model.backbone.layers[0].mixer
    assert "forward" not in mixer.__dict__ and "_probes_orig_forward" not in mixer.__dict__


def test_rmsnorm_kernel(tiny_tiles, device):
    from probes.kernels.mamba_mixer import rms_norm

    x = torch.randn(3, 5, 24, device=device, requires_grad=True)
    w = (torch.rand(24, device=device) + 0.5).requires_grad_()
    y = rms_norm(x, w, 1e-6)
    r = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    g = torch.randn_like(r)
    assert torch.allclose(y, r, atol=1e-5)
    for a, b in zip(torch.autograd.grad(y, [x, w], g), torch.autograd.grad(r, [x, w], g)):
        assert torch.allclose(a, b, atol=1e-4)


def test_mamba_ssm_backend_with_a_stand_in_module(tiny_tiles, device, monkeypatch):
    """The mamba-ssm path, with the reference scan standing in for the compiled kernel."""
    from probes.kernels import set_scan_backend

    _stand_in_mamba_ssm(monkeypatch)
    ref = tiny_mamba(seed=4, hidden=8)
    fast = copy.deepcopy(ref)
    assert set_scan_backend(fast, "mamba-ssm") == "mamba-ssm"
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(5)).to(device)
    assert train_losses(fast, ids, 2, device) == pytest.approx(train_losses(ref, ids, 2, device), rel=1e-4)


def test_torch_backend_trains_like_transformers_reference():
    """The plain-PyTorch mixer (the CPU default): same losses, logits and gradients as transformers'
    own forward, on CPU without Triton, and it leaves the weights' format alone."""
    from probes.kernels import set_scan_backend

    ref = tiny_mamba(seed=8, hidden=8)
    fast = copy.deepcopy(ref)
    assert set_scan_backend(fast, "torch") == "torch"
    ids = torch.randint(0, 64, (3, 11), generator=torch.Generator().manual_seed(9))
    fast(ids, labels=ids).loss.backward()
    ref(ids, labels=ids).loss.backward()
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    assert train_losses(fast, ids, 3, "cpu") == pytest.approx(train_losses(ref, ids, 3, "cpu"), rel=1e-4)
    assert fast.state_dict().keys() == ref.state_dict().keys()


def test_selective_scan_ref_matches_a_step_by_step_recurrence():
    from probes.kernels import selective_scan_ref

    g = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 3, 4, 5
    u, delta, z = (torch.randn(b, d, L, generator=g) for _ in range(3))
    A, Bm, C = -torch.rand(d, n, generator=g), torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g)
    D = torch.randn(d, generator=g)
    out, last = selective_scan_ref(u, delta, A, Bm, C, D, z, return_last_state=True)
    h = torch.zeros(b, d, n)
    for t in range(L):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * Bm[:, None, :, t] * u[:, :, t, None]
        y = (h * C[:, None, :, t]).sum(-1) + D * u[:, :, t]
        assert torch.allclose(out[:, :, t], y * torch.nn.functional.silu(z[:, :, t]), atol=1e-5)
    assert torch.allclose(last, h, atol=1e-6)


def test_backend_errors(monkeypatch):
    from probes.kernels import set_scan_backend

    model = tiny_mamba()
    with pytest.raises(ValueError, match="allowed: auto, triton, mamba-ssm, torch, reference"):
        set_scan_backend(model, "cuda")
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes the import fail
    with pytest.raises(ImportError, match="mamba-ssm"):
        set_scan_backend(model, "mamba-ssm")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):
        set_scan_backend(model, "triton")
    assert set_scan_backend(model, "auto") == "torch"


def _stand_in_mamba_ssm(monkeypatch):
    """An importable `mamba_ssm` whose scan is the reference (the compiled kernel stands in)."""
    from probes.kernels import selective_scan_ref

    pkg, ops, iface = (types.ModuleType(n) for n in
                       ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface"))
    iface.selective_scan_fn = selective_scan_ref
    pkg.__path__, ops.__path__ = [], []
    for m in (pkg, ops, iface):
        m.__spec__ = importlib.machinery.ModuleSpec(m.__name__, None)
        monkeypatch.setitem(sys.modules, m.__name__, m)


@pytest.mark.parametrize("cuda", [True, False], ids=["cuda", "cpu"])
def test_auto_picks_triton_on_cuda_even_with_mamba_ssm_installed(monkeypatch, cuda):
    """`auto` chooses by measured speed (issue 17): Triton on CUDA, torch elsewhere; mamba-ssm only by name."""
    from probes.kernels import mamba_mixer, resolve_backend

    _stand_in_mamba_ssm(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_backend("auto") == ("triton" if cuda and mamba_mixer.HAS_TRITON else "torch")
    assert resolve_backend("mamba-ssm") == "mamba-ssm"


# === CUDA ===


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_bf16_training_matches_reference():
    """A small Mamba (d=256, 4 layers, N=16) trained 5 steps under bf16 autocast."""
    from probes.kernels import set_scan_backend

    ref = tiny_mamba(seed=6, hidden=256, layers=4, state=16, vocab=512)
    fast = copy.deepcopy(ref)
    set_scan_backend(fast, "triton")
    ids = torch.randint(0, 512, (16, 203), generator=torch.Generator().manual_seed(7)).cuda()
    l_fast = train_losses(fast, ids, 5, "cuda", autocast=True, lr=1e-3)
    l_ref = train_losses(ref, ids, 5, "cuda", autocast=True, lr=1e-3)
    assert l_fast == pytest.approx(l_ref, rel=2e-2), (l_fast, l_ref)


# === Lever: the residual add fused into the next RMSNorm ===


@pytest.mark.parametrize("delta_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-delta"])
def test_add_rms_norm_matches_its_twin(tiny_tiles, device, delta_dtype):
    from probes.kernels.fused_norm import add_rms_norm, add_rms_norm_ref

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 24, generator=g).to(device).requires_grad_()
    d = torch.randn(2, 5, 24, generator=g).to(device, delta_dtype).requires_grad_()
    w = (torch.rand(24, generator=g) + 0.5).to(device).requires_grad_()
    s, y = add_rms_norm(x, d, w, 1e-6)
    s_r, y_r = add_rms_norm_ref(x, d, w, 1e-6)
    assert s.dtype == s_r.dtype and y.dtype == y_r.dtype
    assert torch.equal(s, s_r) and torch.allclose(y, y_r, atol=1e-5)
    gs, gy = torch.randn_like(s_r), torch.randn_like(y_r)
    for a, b in zip(torch.autograd.grad((s, y), [x, d, w], (gs, gy)),
                    torch.autograd.grad((s_r, y_r), [x, d, w], (gs, gy))):
        assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-2 if a.dtype == torch.bfloat16 else 1e-4)


def test_fused_residual_trunk_trains_like_the_unfused_one(tiny_tiles, device, monkeypatch):
    from probes.kernels import fuse_residual_norm, mamba_mixer, set_scan_backend

    fused_calls = []
    real = mamba_mixer.add_rms_norm
    monkeypatch.setattr(mamba_mixer, "add_rms_norm", lambda *a: fused_calls.append(1) or real(*a))
    ref = tiny_mamba(seed=11, hidden=8, layers=3)
    plain, fused = copy.deepcopy(ref), copy.deepcopy(ref)
    set_scan_backend(plain, "triton")
    set_scan_backend(fused, "triton")
    assert fuse_residual_norm(fused) is True
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(12)).to(device)
    l_fused = train_losses(fused, ids, 2, device)
    assert len(fused_calls) == 2 * 2  # blocks 2 and 3 of each step took the fused add + norm
    assert l_fused == pytest.approx(train_losses(plain, ids, 2, device), rel=1e-5)
    assert l_fused == pytest.approx(train_losses(ref, ids, 2, device), rel=1e-4)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name
    with torch.no_grad():  # the fallbacks: hidden states out, and generation with a cache
        out = fused(ids, output_hidden_states=True)
        assert len(out.hidden_states) == 4
        assert torch.equal(fused.generate(ids[:1, :4], max_new_tokens=2, do_sample=False),
                           plain.generate(ids[:1, :4], max_new_tokens=2, do_sample=False))
    assert fuse_residual_norm(fused, enabled=False) is False
    assert fuse_residual_norm(tiny_mamba()) is False  # no fast backend chosen: nothing to fuse


def test_mixer_saved_states_give_the_recompute_gradients(tiny_tiles, device, monkeypatch):
    """The fused mixer saves the scan's chunk states in its forward (PROBES_SCAN_LEVERS on) and
    then gets the same gradients as when its backward recomputes them (levers off)."""
    from probes.kernels import mamba_mixer, set_scan_backend

    model = tiny_mamba(hidden=8, layers=1).to(device)
    set_scan_backend(model, "triton")
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4)).to(device)
    seen = []
    orig = mamba_mixer.scan_bwd
    monkeypatch.setattr(mamba_mixer, "scan_bwd",
                        lambda *a, **k: seen.append(k.get("chunk_states") is not None) or orig(*a, **k))

    def grads(levers):
        monkeypatch.setenv("PROBES_SCAN_LEVERS", levers)
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    old, new = grads("0"), grads("1")
    assert seen == [False, True]
    assert all(torch.equal(a, b) for a, b in zip(old, new))
