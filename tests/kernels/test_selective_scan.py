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


def test_two_step_chunks_of_four_channels_per_thread(tiny_tiles, device):
    """The `c2 dh4` tiles of benchmarks/scan.py (saved states 2 steps apart, 4 channels per thread, part of
    the last block masked): the reference's values and gradients."""
    for k, v in {"chunk_fwd": 2, "chunk_bwd": 2, "dh_bwd": 4}.items():
        setattr(tiny_tiles, k, v)
    check(make_inputs(2, 9, 11, 4, torch.float32, device), TOL[torch.float32])


def test_channel_last_views_and_batch_slices(tiny_tiles, device):
    tiny_tiles.scratch_bytes = 1  # one batch element per backward launch
    tiny_tiles.save_states_bytes = 0  # no saved states: the backward's pass 1 recomputes them
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


# === Half precision against mamba-ssm's own scan test ===
#
# state-spaces/mamba tests/ops/test_selective_scan.py: inputs (u, delta, B, C, z) in the half
# dtype, A, D and delta_bias in float32, batch 2, dim 4, dstate 8; the reference is the float32
# recurrence fed the SAME half inputs, so only the kernel's own arithmetic may differ. Tolerances
# are upstream's (`upstream_tolerances`), checked element-wise with torch.allclose per gradient.

FLAGS = {  # (has_z, has_D, has_delta_bias, delta_softplus)
    "all": (True, True, True, True),
    "no-z": (False, True, True, True),
    "plain": (False, False, False, False),
    "z-only": (True, False, False, False),
}


def upstream_inputs(L, itype, device, has_z, has_D, has_bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim, N, batch = 4, 8, 2

    def mk(t, dtype):
        return t.to(device=device, dtype=dtype).requires_grad_()

    return {
        "u": mk(torch.randn(batch, dim, L, generator=g), itype),
        "delta": mk(0.5 * torch.rand(batch, dim, L, generator=g), itype),
        "A": mk(-0.5 * torch.rand(dim, N, generator=g), torch.float32),
        "B": mk(torch.randn(batch, N, L, generator=g), itype),
        "C": mk(torch.randn(batch, N, L, generator=g), itype),
        "D": mk(torch.randn(dim, generator=g), torch.float32) if has_D else None,
        "z": mk(torch.randn(batch, dim, L, generator=g), itype) if has_z else None,
        "delta_bias": mk(0.5 * torch.rand(dim, generator=g), torch.float32) if has_bias else None,
    }


def upstream_tolerances(itype, has_z):
    """{name: (rtol, atol)} exactly as mamba-ssm's test_selective_scan asserts them."""
    rtol, atol = (6e-4, 2e-3) if itype == torch.float32 else (3e-3, 5e-3)
    if itype == torch.bfloat16:
        rtol, atol = 3e-2, 5e-2
    rtolw, atolw = 1e-3, 1e-3
    if has_z:  # upstream: "If we have z, the errors on the weights seem higher"
        rtolw, atolw = max(rtolw, rtol), max(atolw, atol)
    return {"out": (rtol, atol), "u": (rtol * 2, atol * 2), "delta": (rtol * 5, atol * 10),
            "A": (rtolw, atolw * 5), "B": (rtol, atol), "C": (rtol, atol), "D": (rtolw, atolw),
            "z": (rtolw, atolw), "delta_bias": (rtolw, atolw)}


def upstream_check(L, itype, device, flags, seed=0):
    """Returns {name: max |kernel - reference| / allowed}; every value must be <= 1."""
    from probes.kernels.selective_scan import selective_scan_fn, selective_scan_ref

    has_z, has_D, has_bias, softplus = flags
    ins = upstream_inputs(L, itype, device, has_z, has_D, has_bias, seed)
    ref_ins = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in ins.items()}
    out, last = selective_scan_fn(*[ins[k] for k in NAMES], delta_softplus=softplus, return_last_state=True)
    ref, ref_last = selective_scan_ref(*[ref_ins[k] for k in NAMES], delta_softplus=softplus,
                                       return_last_state=True)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device, itype)
    out.backward(g)
    ref.backward(g)
    tol = upstream_tolerances(itype, has_z)
    pairs = {"out": (out, ref), "state": (last, ref_last)}
    pairs.update({k: (ins[k].grad, ref_ins[k].grad) for k in NAMES if ins[k] is not None})
    ratios = {}
    for k, (a, b) in pairs.items():
        rtol, atol = tol["out" if k == "state" else k]
        a, b = a.detach().float(), b.detach().float()
        ratios[k] = float(((a - b).abs() / (atol + rtol * b.abs())).max())
    return ratios


HALF_CASES = [(L, name) for name in FLAGS for L in ((8, 20) if name == "all" else (20,))]  # CI time


@pytest.mark.parametrize(("L", "flags"), [(L, FLAGS[n]) for L, n in HALF_CASES], ids=[f"{L}-{n}" for L, n in HALF_CASES])
@pytest.mark.parametrize("itype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs_within_upstream_tolerances(tiny_tiles, device, itype, L, flags):
    ratios = upstream_check(L, itype, device, flags)
    assert max(ratios.values()) <= 1.0, {k: round(v, 3) for k, v in ratios.items()}


CUDA_FLAGS = {k: FLAGS[k] for k in ("all", "no-z")}  # no-z: upstream's tightest weight tolerances (1e-3)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("flags", CUDA_FLAGS.values(), ids=CUDA_FLAGS.keys())
@pytest.mark.parametrize("L", [8, 203, 1024, 4096])
@pytest.mark.parametrize("itype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_upstream_grid_cuda(device, itype, L, flags):
    """mamba-ssm's test at 4 of its 14 lengths on the GPU, where the dA drift was seen (kept to two
    flag sets: each set of flags and dtypes is a Triton compilation)."""
    ratios = upstream_check(L, itype, device, flags)
    assert max(ratios.values()) <= 1.0, {k: round(v, 3) for k, v in ratios.items()}


def test_interpreter_is_scoped_to_the_tests_that_ask_for_it():
    """tests/kernels/conftest.py must not set TRITON_INTERPRET for the whole session."""
    import os

    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


# === Levers: saved chunk states, launch tuning ===


def grads_of(ins, softplus=True):
    from probes.kernels.selective_scan import selective_scan_fn

    live = [k for k in NAMES if ins[k] is not None]
    out = selective_scan_fn(*[ins[k] for k in NAMES], delta_softplus=softplus)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(out.device, out.dtype)
    return [out, *torch.autograd.grad(out, [ins[k] for k in live], gout)]


@pytest.mark.parametrize("chunk_fwd", [2])  # 4 (= chunk_bwd): every other test
def test_saved_chunk_states_give_the_recompute_gradients(tiny_tiles, device, monkeypatch, chunk_fwd):
    """The forward's saved states (every chunk_bwd-th step, from chunks of chunk_fwd) must give
    the same gradients as pass 1's recomputation: bit for bit in the interpreter."""
    from probes.kernels import selective_scan as ss

    tiny_tiles.chunk_fwd = chunk_fwd
    ins = make_inputs(2, 6, 11, 4, torch.float32, device)
    monkeypatch.setenv("PROBES_SCAN_LEVERS", "0")
    ref = grads_of(ins)
    monkeypatch.setenv("PROBES_SCAN_LEVERS", "1")
    calls = []
    orig = ss.scan_fwd
    monkeypatch.setattr(ss, "scan_fwd", lambda *a, **k: calls.append(k.get("chunk_states") is not None
                                                                      or k.get("save_states") is None)
                        or orig(*a, **k))
    saved = grads_of(ins)
    assert calls == [False], "the forward saves the states and the backward runs no pass 1"
    exact = torch.equal if not CUDA else (lambda a, b: rel(a, b) < 1e-6)
    assert all(exact(a, b) for a, b in zip(saved, ref))
    assert ss.saved_state_bytes() == 0, "states are released after the backward"


def test_state_budget_and_no_grad(tiny_tiles, device):
    from probes.kernels import selective_scan as ss

    ins = make_inputs(2, 6, 11, 4, torch.float32, device)
    u, A = ins["u"], ins["A"]
    need = 4 * 2 * 3 * 6 * 4  # B * ceil(L / 4) * D * N * 4 bytes
    tiny_tiles.save_states_bytes = need
    first = ss.state_buffer(u, A)
    assert first is not None and tuple(first.shape) == (2, 3, 6, 4) and ss.saved_state_bytes() == need
    assert ss.state_buffer(u, A) is None, "over budget: the backward recomputes"
    del first
    assert ss.saved_state_bytes() == 0
    with torch.no_grad():
        ss.selective_scan_fn(*[ins[k] for k in NAMES], delta_softplus=True)
    assert ss.saved_state_bytes() == 0


def test_save_budget_env(monkeypatch):
    from probes.errors import UserError
    from probes.kernels.selective_scan import ScanConfig, save_budget

    assert save_budget(ScanConfig(save_states_bytes=123)) == 123
    monkeypatch.setenv("PROBES_SCAN_SAVE_MB", "8")
    assert save_budget(ScanConfig()) == 8 << 20
    monkeypatch.setenv("PROBES_SCAN_SAVE_MB", "lots")
    with pytest.raises(UserError, match="PROBES_SCAN_SAVE_MB='lots'"):
        save_budget(ScanConfig())


def test_pick_launch_keeps_the_fastest_equal_candidate():
    """Tuning may change speed, never bits: a faster candidate with different outputs is dropped."""
    from probes.kernels.selective_scan import pick_launch

    results = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([1.0, 2.0]),
               "c": torch.tensor([1.0, 2.0001]), "d": torch.tensor([1.0, 2.0])}
    speed = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 2.5}
    current = []

    def run(p):
        current.append(p["name"])
        return [results[p["name"]]]

    def timer(fn):
        fn()
        return speed[current[-1]]

    def broken(p):
        if p["name"] == "d":
            raise RuntimeError("out of resources")
        return run(p)

    cands = [{"name": n} for n in "abcd"]
    assert pick_launch(("t", 1), {"name": "a"}, cands, run, timer) == {"name": "b"}
    assert pick_launch(("t", 1), {"name": "a"}, [], run, timer) == {"name": "b"}, "cached by key"
    speed["d"] = 0.5
    assert pick_launch(("t", 2), {"name": "a"}, cands, broken, timer) == {"name": "b"}


def test_launch_candidates_keep_the_sum_order():
    """Forward candidates keep every warp on channels (a sum over N stays in-thread) and a chunk
    that divides chunk_bwd; backward candidates leave CHUNK and DL (time and lane order) alone."""
    from probes.kernels.selective_scan import BWD_CANDIDATES, CONFIG, FWD_CANDIDATES

    assert all(c["DL"] == 32 * c["num_warps"] and CONFIG.chunk_bwd % c["CHUNK"] == 0 for c in FWD_CANDIDATES)
    assert all(set(c) <= {"DH", "PREFETCH"} for c in BWD_CANDIDATES)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dim", [1536, 4096])
def test_tuned_and_saved_paths_match_the_old_path_cuda(dim, monkeypatch):
    """Paper shape, bf16: tuned launches + saved states vs PROBES_SCAN_LEVERS=0 (defaults, pass 1).
    Everything but dB/dC (float atomics) is bitwise equal; dB/dC within float32 rounding."""
    from probes.kernels import selective_scan as ss

    ins = make_inputs(64, dim, 203, 16, torch.bfloat16, "cuda", channel_last=True)
    monkeypatch.setenv("PROBES_SCAN_LEVERS", "0")
    ref = grads_of(ins)
    monkeypatch.setenv("PROBES_SCAN_LEVERS", "1")
    monkeypatch.setattr(ss.CONFIG, "save_states_bytes", 4 << 30)
    monkeypatch.setattr(ss.CONFIG, "autotune", True)  # off by default: switched on to test it
    new = grads_of(ins)
    live = ["out"] + [k for k in NAMES if ins[k] is not None]
    for name, a, b in zip(live, new, ref):
        if name in ("B", "C"):
            assert rel(a, b) < 1e-3, name
        else:
            assert torch.equal(a, b), (name, rel(a, b))


def test_forced_tuning_runs_every_candidate_and_keeps_the_results(tiny_tiles, device, monkeypatch):
    """Tuning switched on in the interpreter (a fake clock that favours later candidates): every
    scan and conv launch candidate runs, and gradients equal the untuned ones."""
    from probes.kernels import causal_conv as cc
    from probes.kernels import selective_scan as ss

    tiny_tiles.chunk_fwd = 2  # the real tiles' chunk: the saving forward may pick CHUNK 1, 2 or 4
    ins = make_inputs(1, 5, 6, 4, torch.float32, device)
    x = ins["u"].detach().transpose(1, 2).contiguous().requires_grad_()
    w, cb = torch.randn(5, 4, device=device, requires_grad=True), torch.zeros(5, device=device, requires_grad=True)

    def everything():
        out = cc.causal_conv1d_fn(x, w, cb, "silu")
        return grads_of(ins) + [out, *torch.autograd.grad(out, (x, w, cb), torch.ones_like(out))]

    ref = everything()
    clock = iter(range(1000, 0, -1))
    picked = []
    orig = ss.pick_launch

    def spy(key, default, candidates, run, timer=None):
        picked.append(orig(key, default, candidates, run, timer=lambda fn: fn() or next(clock)))
        return picked[-1]

    monkeypatch.setattr(ss, "tuning_on", lambda *a: True)
    monkeypatch.setattr(cc, "tuning_on", lambda *a: True)
    monkeypatch.setattr(ss, "pick_launch", spy)
    monkeypatch.setattr(cc, "pick_launch", spy)
    monkeypatch.setattr(ss, "_TUNED", {})
    tuned = everything()
    assert len(picked) == 4 and any(p != picked[0] for p in picked)  # scan fwd/bwd, conv fwd/bwd
    assert all(torch.equal(a, b) for a, b in zip(tuned, ref))


# === Backward pieces (ScanConfig.sub_bwd) ===
#
# The backward may walk each saved 4-step interval in pieces of sub_bwd steps (fewer registers).
# Per-step outputs must be the same bits as with one piece per interval; the sums over time (dA,
# dD, d(delta_bias)) are regrouped, so only close.

PER_STEP = ("du", "ddelta", "dz", "out", "dB", "dC")  # dB, dC: per-step sums over channels; dA, dD, dbias: close
SUB_CASES = {  # id: (batch, dim, L, N, (has_d, has_z, has_bias), softplus, saved states, vs reference)
    "L9-all-saved": (2, 6, 9, 4, (True, True, True), True, True, True),
    "L3-plain-recompute": (1, 5, 3, 3, (False, False, False), False, False, True),
    "L10-D-z-recompute": (1, 6, 10, 4, (True, True, False), True, False, False),
    "L8-bias-saved": (1, 6, 8, 4, (False, False, True), True, True, False),
}


def bwd_outputs(ins, softplus, sub, saved, config):
    """scan_bwd's outputs by name (and the recomputed forward output), with `sub` steps per piece."""
    from dataclasses import replace

    from probes.kernels.selective_scan import chunk_state_shape, scan_bwd, scan_fwd

    cfg = replace(config, sub_bwd=sub)
    args = [None if ins[k] is None else ins[k].detach() for k in NAMES]
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(3)).to(args[0].device, args[0].dtype)
    states = None
    if saved:
        states = torch.empty(chunk_state_shape(args[0], args[2], cfg), device=args[0].device, dtype=torch.float32)
        scan_fwd(*args, delta_softplus=softplus, save_states=states, config=cfg)
    out = torch.empty_like(args[0])
    grads = scan_bwd(*args, softplus, dout, out=out, chunk_states=states, config=cfg)
    named = dict(zip(("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dbias"), grads), out=out)
    return {k: v for k, v in named.items() if v is not None}


def assert_pieces_agree(one, two, bitwise):
    """Per-step outputs equal bit for bit where `bitwise` (the interpreter); everything else within 1e-5.
    On CUDA ptxas compiles the two piece sizes to different instruction orders (fused multiply-adds), so
    there ddelta differs in the last bits (rel. 4e-6 to 8e-6 at the paper shapes, H200)."""
    assert one.keys() == two.keys()
    for k in one:
        if k in PER_STEP and bitwise:
            assert torch.equal(one[k], two[k]), (k, rel(two[k], one[k]))
        else:
            assert rel(two[k], one[k]) < 1e-5, (k, rel(two[k], one[k]))


@pytest.mark.parametrize("case", SUB_CASES.values(), ids=SUB_CASES.keys())
def test_backward_pieces_match_reference_and_one_piece(tiny_tiles, device, monkeypatch, case):
    """sub_bwd = 2 (two pieces per saved interval): every per-step output equals sub_bwd = 4's bit for
    bit (L < 4 and L not a multiple of 4 included), and with the flag sets of the tests above the
    gradients match the reference."""
    batch, dim, L, N, opts, softplus, saved, vs_ref = case
    ins = make_inputs(batch, dim, L, N, torch.float32, device, *opts)
    one = bwd_outputs(ins, softplus, 4, saved, tiny_tiles)
    two = bwd_outputs(ins, softplus, 2, saved, tiny_tiles)
    assert_pieces_agree(one, two, bitwise=not CUDA)
    if not vs_ref:  # CI time: these flags' one-piece gradients are checked against the reference above
        return
    tiny_tiles.sub_bwd = 2
    tiny_tiles.save_states_bytes = tiny_tiles.save_states_bytes if saved else 0
    check(ins, TOL[torch.float32], softplus=softplus)


def test_backward_pieces_bc_mode_and_no_prefetch(tiny_tiles, device):
    """Pieces with per-lane dB/dC slots (bc_mode 2), without prefetch, with a register cap: same per-step bits."""
    from dataclasses import replace

    ins = make_inputs(2, 7, 11, 4, torch.float32, device)
    cfg = replace(tiny_tiles, bc_mode=2, prefetch=False, maxnreg_bwd=128)  # the cap: CUDA only, same bits
    assert_pieces_agree(bwd_outputs(ins, True, 4, True, cfg), bwd_outputs(ins, True, 2, True, cfg),
                        bitwise=not CUDA)


def test_bwd_sub_values(monkeypatch):
    from probes.errors import UserError
    from probes.kernels.selective_scan import ScanConfig, bwd_sub

    assert bwd_sub(ScanConfig()) == 4, "default: one piece per saved interval (chunk_bwd)"
    assert bwd_sub(ScanConfig(sub_bwd=2)) == 2
    assert bwd_sub(ScanConfig(chunk_bwd=8)) == 8
    with pytest.raises(UserError, match=r"ScanConfig.sub_bwd='3' is not allowed .*1, 2, 4"):
        bwd_sub(ScanConfig(sub_bwd=3))
    monkeypatch.setenv("PROBES_SCAN_SUB_BWD", "2")
    assert bwd_sub(ScanConfig()) == 2
    for bad in ("two", "-2", "8"):
        monkeypatch.setenv("PROBES_SCAN_SUB_BWD", bad)
        with pytest.raises(UserError, match=f"PROBES_SCAN_SUB_BWD='{bad}'"):
            bwd_sub(ScanConfig())


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("shape", [(64, 1536, 203, 16), (16, 4096, 203, 16)], ids=["130m", "1.4b-b16"])
@pytest.mark.parametrize("saved", [True, False], ids=["saved", "recompute"])
def test_backward_pieces_paper_shape_cuda(device, shape, saved):
    """Paper shape, bf16: sub_bwd = 2 against 4, every output within 1e-5 (compiled, the two piece sizes
    round differently in the last bits), and against the reference."""
    from dataclasses import replace

    from probes.kernels import selective_scan as ss

    ins = make_inputs(*shape, torch.bfloat16, "cuda", channel_last=True)
    assert_pieces_agree(bwd_outputs(ins, True, 4, saved, ss.CONFIG), bwd_outputs(ins, True, 2, saved, ss.CONFIG),
                        bitwise=False)
    old = replace(ss.CONFIG)
    ss.CONFIG.sub_bwd = 2
    try:
        check(ins, 1e-2)
    finally:
        ss.CONFIG.__dict__.update(old.__dict__)


def test_scan_benchmark_config_rows_name_real_fields():
    """benchmarks/scan.py --compare (on the GPU), --registers and --sass set these CONFIG fields: catch a typo here."""
    import importlib.util
    from dataclasses import fields, replace
    from pathlib import Path

    from probes.kernels.selective_scan import CONFIG, bwd_sub

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "scan.py"
    spec = importlib.util.spec_from_file_location("scan_bench_rows", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    names = {f.name for f in fields(CONFIG)}
    assert "sub2" in mod.CONFIG_ROWS
    for row in [*mod.CONFIG_ROWS.values(), *mod.REGISTER_ROWS.values(), *mod.SASS_ROWS.values()]:
        assert set(row) <= names, set(row) - names
        assert bwd_sub(replace(CONFIG, **row)) == row.get("sub_bwd", row.get("chunk_bwd", CONFIG.chunk_bwd))


PICKS_PTX = """
import json, re, sys
sys.path.insert(0, "benchmarks")
import scan
scan.offline_compilation("the test")
out = {}
for name in ("forward", "backward"):
    ptx = scan.compile_kernel(name)[0].asm["ptx"]
    out[name] = [len(re.findall(r"add\\.f32\\s+%r\\d+, %r\\d+, 0f00000000;", ptx)),
                 len(re.findall(r"fma\\.rn\\.f32\\s+%r\\d+, %r\\d+, %r\\d+, 0f00000000;", ptx))]
print(json.dumps(out))
"""


def test_compiled_kernels_pick_rows_without_adding_zero():
    """Compiled for sm_90 (no GPU; in a subprocess, as this directory's kernels are decorated for the
    interpreter on a CPU): the row picks of a = exp(delta A) add nothing (`_row`'s -0.0 fill; with 0.0 the
    compiler keeps an `add.f32 x, 0` per pick, 32 per loop iteration), while products are still picked with
    0.0 and stay rounded on their own (`fma x, y, 0`), which keeps the backward's variants and saved states
    rounding alike."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from probes.kernels import selective_scan as ss

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PROBES_SCAN")}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", PICKS_PTX], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    cfg = ss.CONFIG  # one warp of 32 lanes per program: (steps, channels, 16 states) elements per lane
    per_lane = {"forward": cfg.chunk_fwd * cfg.dh_fwd * cfg.dl_fwd * 16 // 32,
                "backward": cfg.chunk_bwd * cfg.dh_bwd * cfg.dl_bwd * 16 // 32}
    picked_products = {"forward": 1, "backward": 2}  # x = delta B u; and the backward's C dy
    for name, (adds_of_zero, fmas_with_zero) in counts.items():
        assert adds_of_zero == 0, name
        assert fmas_with_zero == picked_products[name] * per_lane[name], name
