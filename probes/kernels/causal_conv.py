"""Depthwise causal conv1d (+ SiLU) on channel-last tensors: Triton forward/backward and a twin.

    y = causal_conv1d_fn(x, weight, bias, activation="silu", mask=None)
    ref = causal_conv1d_ref(x, weight, bias, activation="silu", mask=None)

Shapes: x (B, L, D) with unit channel stride (a column slice of a wider tensor is fine, e.g.
the first half of in_proj's output); weight (D, W); bias (D,) or None; mask (B, L) or None.
Output (B, L, D), contiguous, in x's dtype:

    y[b, t, d] = act(bias[d] + sum_k weight[d, k] * x[b, t - W + 1 + k, d]) * mask[b, t]

This is Mamba's `conv1d` (transformers keeps it as nn.Conv1d(D, D, W, groups=D, padding=W-1)
applied to (B, D, L) and cut to L). Working channel-last avoids the two transposes and the
padded (B, D, L + W - 1) intermediate of that path. The backward recomputes the pre-activation
instead of storing it. Its grid is (row blocks of BWD_ROWS steps, channel blocks, batch): each
program writes dx for its own rows (reading x and dy up to W - 1 steps past them), and weight and
bias gradients are per-(batch, row block, channel) float32 partial sums that torch adds up
afterwards (no atomics: deterministic). dx is the same W-term sum whatever ROWS is. With the
"tiles" kernel, ROWS >= L is the schedule before issue 17 (one program per (channels, batch): 768
programs of 26 serial tiles at B = 64, L = 203, D = 1536, ~10x above the memory floor on an
H200). Two backward kernels:
"stream" (W <= 4, Mamba's case, the default) walks its steps one at a time with x and the
pre-activation gradient of the last 4 steps in registers, one sigmoid per element; "tiles" (any
W) works on BWD_BLOCK_L-row tiles and recomputes the pre-activation for each of the W output steps
an input feeds. (A two-kernel variant that first writes the pre-activation gradient measured
slower on an H100: 0.96 vs 0.58 ms at B=64, L=203, D=4096.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probes.kernels.selective_scan import CONFIG, HAS_TRITON, interpret_mode, pick_launch, tuning_on

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, m_ptr, o_ptr, L, DIM,
                         sx_b, sx_l, sw_d, sw_k, sm_b, sm_l, so_b, so_l,
                         W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, ACT: tl.constexpr,
                         BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
        pid_l = tl.program_id(0)
        pid_d = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)[:, None]
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
        md = d < DIM
        acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        if HAS_BIAS:
            acc += tl.load(b_ptr + d, mask=md, other=0.0).to(tl.float32)
        for k in tl.static_range(W):
            tk = t - (W - 1) + k
            xv = tl.load(x_ptr + b * sx_b + tk * sx_l + d, mask=(tk >= 0) & (tk < L) & md, other=0.0)
            acc += xv.to(tl.float32) * tl.load(w_ptr + d * sw_d + k * sw_k, mask=md, other=0.0).to(tl.float32)
        if ACT:
            acc = acc * tl.sigmoid(acc)
        if HAS_MASK:
            acc = acc * tl.load(m_ptr + b * sm_b + t * sm_l, mask=t < L, other=0.0).to(tl.float32)
        tl.store(o_ptr + b * so_b + t * so_l + d, acc.to(o_ptr.dtype.element_ty), mask=(t < L) & md)

    @triton.jit
    def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, m_ptr, g_ptr, dx_ptr, dw_ptr, db_ptr, L, DIM, ROWS,
                         sx_b, sx_l, sw_d, sw_k, sm_b, sm_l, sg_b, sg_l, sdx_b, sdx_l,
                         W: tl.constexpr, W_P2: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
                         ACT: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
        # one program per (block of ROWS steps, channel block, batch) walks its ROWS steps in BLOCK_L-row
        # tiles (ROWS is a multiple of BLOCK_L); dw/db partials are (B, row blocks, D, W) / (B, row blocks, D)
        pid_r = tl.program_id(0)
        pid_d = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        r0 = pid_r * ROWS
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
        md = d < DIM
        kk = tl.arange(0, W_P2)[:, None]
        if HAS_BIAS:
            bias = tl.load(b_ptr + d, mask=md, other=0.0).to(tl.float32)
        dw = tl.zeros((W_P2, BLOCK_D), dtype=tl.float32)
        db = tl.zeros((1, BLOCK_D), dtype=tl.float32)
        for l0 in range(r0, tl.minimum(r0 + ROWS, L), BLOCK_L):
            t = l0 + tl.arange(0, BLOCK_L)[:, None]
            dx = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
            # output step s = t + j uses x[t] with weight index W - 1 - j
            for j in tl.static_range(W):
                s = t + j
                ms = (s < L) & md
                g = tl.load(g_ptr + b * sg_b + s * sg_l + d, mask=ms, other=0.0).to(tl.float32)
                if HAS_MASK:
                    g = g * tl.load(m_ptr + b * sm_b + s * sm_l, mask=s < L, other=0.0).to(tl.float32)
                if ACT:  # recompute the pre-activation at step s
                    pre = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
                    if HAS_BIAS:
                        pre += bias
                    for k in tl.static_range(W):
                        tk = s - (W - 1) + k
                        xv = tl.load(x_ptr + b * sx_b + tk * sx_l + d, mask=(tk >= 0) & (tk < L) & md, other=0.0)
                        pre += xv.to(tl.float32) * tl.load(w_ptr + d * sw_d + k * sw_k, mask=md, other=0.0).to(tl.float32)
                    sg = tl.sigmoid(pre)
                    g = g * sg * (1.0 + pre * (1.0 - sg))
                g = tl.where(ms, g, 0.0)
                dx += g * tl.load(w_ptr + d * sw_d + (W - 1 - j) * sw_k, mask=md, other=0.0).to(tl.float32)
                if j == 0:  # g at step t itself: weight and bias gradients
                    db += tl.sum(g, axis=0, keep_dims=True)
                    for k in tl.static_range(W):
                        tk = t - (W - 1) + k
                        xv = tl.load(x_ptr + b * sx_b + tk * sx_l + d, mask=(tk >= 0) & (tk < L) & md, other=0.0)
                        dw += tl.where(kk == k, tl.sum(g * xv.to(tl.float32), axis=0, keep_dims=True), 0.0)
            tl.store(dx_ptr + b * sdx_b + t * sdx_l + d, dx.to(dx_ptr.dtype.element_ty), mask=(t < L) & md)
        part = (b * tl.num_programs(0) + pid_r) * DIM + d  # this program's (batch, row block) partials
        tl.store(dw_ptr + part * W + kk, dw, mask=md & (kk < W))
        if HAS_BIAS:
            tl.store(db_ptr + part, db, mask=md)


    @triton.jit
    def _tap(w_ptr, d, md, sw_d, sw_k, K: tl.constexpr, PAD: tl.constexpr):
        # weight K of a conv padded on the left to 4 taps (a missing tap's weight is never used)
        w = tl.zeros_like(d).to(tl.float32)
        if K >= PAD:
            w = tl.load(w_ptr + d * sw_d + (K - PAD) * sw_k, mask=md, other=0.0).to(tl.float32)
        return w

    @triton.jit
    def _window_sum(acc, xa, xb, xc, xd, w0, w1, w2, w3, PAD: tl.constexpr):
        # acc + the real taps' products in tap order (the tiles forward's sum); padded taps are skipped
        if PAD <= 0:
            acc = acc + xa * w0
        if PAD <= 1:
            acc = acc + xb * w1
        if PAD <= 2:
            acc = acc + xc * w2
        return acc + xd * w3

    @triton.jit
    def _stream_start(w_ptr, b_ptr, xp, d, md, zero, r0, sw_d, sw_k, sx_l, PAD: tl.constexpr, HAS_BIAS: tl.constexpr):
        # what a stream kernel holds before its first step r0: the 4 taps, the bias, x[r0-3..r0-1]
        w0 = _tap(w_ptr, d, md, sw_d, sw_k, 0, PAD)
        w1 = _tap(w_ptr, d, md, sw_d, sw_k, 1, PAD)
        w2 = _tap(w_ptr, d, md, sw_d, sw_k, 2, PAD)
        w3 = _tap(w_ptr, d, md, sw_d, sw_k, 3, PAD)
        bias = tl.zeros_like(d).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(b_ptr + d, mask=md, other=0.0).to(tl.float32)
        xa = tl.load(xp + (r0 - 3) * sx_l, mask=md & (zero + r0 >= 3), other=0.0).to(tl.float32)
        xb = tl.load(xp + (r0 - 2) * sx_l, mask=md & (zero + r0 >= 2), other=0.0).to(tl.float32)
        xc = tl.load(xp + (r0 - 1) * sx_l, mask=md & (zero + r0 >= 1), other=0.0).to(tl.float32)
        return w0, w1, w2, w3, bias, xa, xb, xc

    @triton.jit
    def _conv_fwd_stream_kernel(x_ptr, w_ptr, b_ptr, m_ptr, o_ptr, L, DIM,
                                sx_b, sx_l, sw_d, sw_k, sm_b, sm_l, so_b, so_l,
                                W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, ACT: tl.constexpr,
                                BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, UNROLL: tl.constexpr):
        # W <= 4. One program per (block of BLOCK_L steps, channel block, batch) walks its steps keeping
        # x[s-3..s] in registers: one load of x per output (the tiles forward loads each x W times).
        PAD: tl.constexpr = 4 - W
        r0 = tl.program_id(0) * BLOCK_L
        r1 = tl.minimum(r0 + BLOCK_L, L)
        b = tl.program_id(2).to(tl.int64)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        md = d < DIM
        zero = tl.zeros((BLOCK_D,), dtype=tl.int32)  # step indices as vectors: masks of the same shape as md
        xp = x_ptr + b * sx_b + d
        w0, w1, w2, w3, bias, xa, xb, xc = _stream_start(w_ptr, b_ptr, xp, d, md, zero, r0, sw_d, sw_k, sx_l,
                                                         PAD, HAS_BIAS)
        for s0 in range(r0, r1, UNROLL):
            for u in tl.static_range(UNROLL):
                s = zero + (s0 + u)
                xd = tl.load(xp + s * sx_l, mask=md & (s < r1), other=0.0).to(tl.float32)
                acc = _window_sum(bias, xa, xb, xc, xd, w0, w1, w2, w3, PAD)
                if ACT:
                    acc = acc * tl.sigmoid(acc)
                if HAS_MASK:  # the same address in every lane: one broadcast load
                    acc = acc * tl.load(m_ptr + b * sm_b + s * sm_l, mask=s < r1, other=0.0).to(tl.float32)
                tl.store(o_ptr + b * so_b + s * so_l + d, acc.to(o_ptr.dtype.element_ty), mask=md & (s < r1))
                xa, xb, xc = xb, xc, xd

    @triton.jit
    def _conv_bwd_stream_kernel(x_ptr, w_ptr, b_ptr, m_ptr, g_ptr, dx_ptr, dw_ptr, db_ptr, L, DIM, ROWS,
                                sx_b, sx_l, sw_d, sw_k, sm_b, sm_l, sg_b, sg_l, sdx_b, sdx_l,
                                W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, ACT: tl.constexpr,
                                UNROLL: tl.constexpr, BLOCK_D: tl.constexpr):
        # W <= 4 (taps counted from the left of 4). One program per (block of ROWS steps, channel block,
        # batch) walks s = r0 .. r1 + 2 one step at a time, keeping x[s-3..s] and the pre-activation
        # gradient gp[s-3..s] in registers: per element one x and one dy load, one pre-activation and
        # one sigmoid (the tiles kernel recomputes them W times); dx[s-3] is complete once gp[s] is
        # known. UNROLL steps per loop trip so that their loads are issued together.
        PAD: tl.constexpr = 4 - W
        pid_r = tl.program_id(0)
        b = tl.program_id(2).to(tl.int64)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        md = d < DIM
        r0 = pid_r * ROWS
        r1 = tl.minimum(r0 + ROWS, L)
        zero = tl.zeros((BLOCK_D,), dtype=tl.int32)  # step indices as vectors: masks of the same shape as md
        xp = x_ptr + b * sx_b + d
        w0, w1, w2, w3, bias, xa, xb, xc = _stream_start(w_ptr, b_ptr, xp, d, md, zero, r0, sw_d, sw_k, sx_l,
                                                         PAD, HAS_BIAS)
        ga = tl.zeros((BLOCK_D,), dtype=tl.float32)
        gb = tl.zeros((BLOCK_D,), dtype=tl.float32)
        gc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dw0 = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dw1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dw2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dw3 = tl.zeros((BLOCK_D,), dtype=tl.float32)
        db = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for s0 in range(r0, r1 + 3, UNROLL):
            for u in tl.static_range(UNROLL):
                s = zero + (s0 + u)
                xd = tl.load(xp + s * sx_l, mask=md & (s < L), other=0.0).to(tl.float32)
                g = tl.load(g_ptr + b * sg_b + s * sg_l + d, mask=md & (s < L), other=0.0).to(tl.float32)
                if HAS_MASK:  # the same address in every lane: one broadcast load
                    g = g * tl.load(m_ptr + b * sm_b + s * sm_l, mask=s < L, other=0.0).to(tl.float32)
                if ACT:  # the pre-activation at step s, summed as in the forward
                    pre = _window_sum(bias, xa, xb, xc, xd, w0, w1, w2, w3, PAD)
                    sg = tl.sigmoid(pre)
                    g = g * sg * (1.0 + pre * (1.0 - sg))
                gd = tl.where(s < r1, g, 0.0)  # weight and bias gradients: this block's own steps only
                db += gd
                if PAD <= 0:
                    dw0 += gd * xa
                if PAD <= 1:
                    dw1 += gd * xb
                if PAD <= 2:
                    dw2 += gd * xc
                dw3 += gd * xd
                t = s - 3  # dx[t] = sum_j gp[t + j] * w[3 - j] over the real taps, j = 0..3
                dx = ga * w3
                if PAD <= 2:
                    dx = dx + gb * w2
                if PAD <= 1:
                    dx = dx + gc * w1
                if PAD <= 0:
                    dx = dx + g * w0
                tl.store(dx_ptr + b * sdx_b + t * sdx_l + d, dx.to(dx_ptr.dtype.element_ty),
                         mask=md & (t >= r0) & (t < r1))
                xa, xb, xc = xb, xc, xd
                ga, gb, gc = gb, gc, g
        part = ((b * tl.num_programs(0) + pid_r) * DIM + d) * W  # this program's (batch, row block) partials
        if PAD <= 0:
            tl.store(dw_ptr + part + (0 - PAD), dw0, mask=md)
        if PAD <= 1:
            tl.store(dw_ptr + part + (1 - PAD), dw1, mask=md)
        if PAD <= 2:
            tl.store(dw_ptr + part + (2 - PAD), dw2, mask=md)
        tl.store(dw_ptr + part + (3 - PAD), dw3, mask=md)
        if HAS_BIAS:
            tl.store(db_ptr + part // W, db, mask=md)

BLOCK_L, BLOCK_D = 32, 64  # forward tiles
BWD_BLOCK_L, BWD_BLOCK_D = 8, 128  # "tiles" backward: W shifted recomputations per tile, so keep tiles small
STREAM_MAX_W = 4  # the stream kernels keep a window of 4 steps in registers

# Backward kernel for W <= STREAM_MAX_W ("tiles" for wider convs): "stream" walks its steps one at a
# time with x and the pre-activation gradient of the last 4 steps in registers (one sigmoid per
# element); "tiles" recomputes the pre-activation W times per element. ptxas for sm_90 (bf16, W = 4,
# with the JIT's specializations): tiles 176 registers (2 programs of 4 warps per SM) and ~180 SASS
# instructions per element; stream at its default launch (4 channels per thread, 4 steps per loop
# trip) 120 registers and ~60 per element (2 channels per thread: 56 registers, ~80 per element).
BWD_KERNEL = "stream"
STREAM_DEFAULT = {"BLOCK_D": 256, "UNROLL": 4, "num_warps": 2}
# Backward steps per program (rounded up to a multiple of BWD_BLOCK_L; >= L: one program walks all
# of L, with "tiles" the schedule before issue 17). At B = 64, L = 203, 32 gives 7 row blocks: with
# the stream default 7 x 6 x 64 = 2,688 programs of 2 warps at D = 1536 (20 per SM of a 132-SM
# H200, a few waves at 8 resident) and 7,168 at D = 4096, each walking 35 steps (32 + 3 halo, 9%
# extra) instead of 203. The cost: 7 float32 (B, D, W) + (B, D) partials instead of 1 (written, then
# read by torch's sum: ~73 MB at D = 4096, against ~320 MB of x, dy and dx).
BWD_ROWS = 32
# Forward kernel for W <= STREAM_MAX_W: "tiles" (each x loaded W times from shifted tiles, mostly L1
# hits) or "stream" (BLOCK_L steps per program, x loaded once per output); outputs are equal bit for
# bit. ptxas counts about the same instructions per element (tiles ~38, 67 registers; stream ~33, 55
# registers), so "tiles" stays the default until a GPU says otherwise (benchmarks/scan.py --compare).
FWD_KERNEL = "stream"
FWD_STREAM_DEFAULT = {"BLOCK_L": 32, "BLOCK_D": 256, "UNROLL": 4, "num_warps": 2}

# Launch candidates, tried on CUDA once per shape by `pick_launch` (which keeps only launches
# whose outputs equal the default's bit for bit). Forward: every output is its own W-term sum,
# whatever the tile. Backward: BWD_BLOCK_L and BWD_ROWS stay (dw/db add up time in BLOCK_L-row
# tiles within ROWS-step blocks, then over blocks).
FWD_CANDIDATES = [{"BLOCK_L": bl, "BLOCK_D": bd, "num_warps": w}
                  for bl, bd, w in [(32, 64, 4), (64, 64, 4), (16, 128, 4), (32, 128, 4), (32, 256, 8)]]
FWD_STREAM_CANDIDATES = [{"BLOCK_L": bl, "BLOCK_D": bd, "UNROLL": u, "num_warps": w}
                         for bl, bd, u, w in [(32, 256, 4, 2), (16, 256, 4, 2), (64, 256, 4, 2), (32, 128, 4, 1),
                                              (32, 512, 4, 4), (32, 256, 8, 2)]]
BWD_CANDIDATES = [{"BLOCK_D": bd, "num_warps": w} for bd, w in [(128, 4), (64, 4), (256, 4), (64, 2)]]
# Stream: every channel's sums run in one thread in step order, so channels per program, warps
# and the unroll do not move a sum (ROWS does, and stays).
STREAM_CANDIDATES = [{"BLOCK_D": bd, "UNROLL": u, "num_warps": w}
                     for bd, u, w in [(256, 4, 2), (128, 4, 2), (256, 2, 2), (128, 4, 1), (512, 4, 4), (256, 8, 2)]]


def causal_conv1d_ref(x, weight, bias=None, activation="silu", mask=None):
    """Readable twin: x (B, L, D), weight (D, W), bias (D,), mask (B, L) -> (B, L, D)."""
    L, W = x.shape[1], weight.shape[1]
    y = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=W - 1, groups=x.shape[2])[..., :L]
    y = y.transpose(1, 2)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    if mask is not None:
        y = y * mask[:, :, None].to(y.dtype)
    return y


def _check(x):
    if not HAS_TRITON:
        raise RuntimeError("the Triton causal conv needs `triton`")
    if x.device.type != "cuda" and not interpret_mode():
        raise RuntimeError(f"the Triton causal conv runs on CUDA tensors (got {x.device}); "
                           f"set TRITON_INTERPRET=1 for the CPU interpreter")
    if x.stride(2) != 1:
        raise ValueError("causal_conv1d: x must have unit channel stride (channel-last)")


def _key(kind, x, weight, bias, act, mask, *more):
    return (kind, *x.shape, x.stride(), x.dtype, weight.shape[1], weight.dtype, bias is not None, act,
            mask is not None, *more)


def _fwd_tiles(W: int) -> tuple:
    return _conv_fwd_kernel, {"BLOCK_L": BLOCK_L, "BLOCK_D": BLOCK_D}, FWD_CANDIDATES


def _fwd_stream(W: int) -> tuple:
    return _conv_fwd_stream_kernel, dict(FWD_STREAM_DEFAULT), FWD_STREAM_CANDIDATES


FWD_KERNELS = {"stream": _fwd_stream, "tiles": _fwd_tiles}


def _pick_kernel(kind: str, kernels: dict, kernel: str | None, default: str, W: int) -> str:
    kernel = kernel or (default if W <= STREAM_MAX_W else "tiles")
    if kernel not in kernels:
        raise ValueError(f"causal conv {kind}: unknown kernel {kernel!r} (allowed: {', '.join(kernels)})")
    if kernel == "stream" and W > STREAM_MAX_W:
        raise ValueError(f"causal conv {kind}: the stream kernel takes widths up to {STREAM_MAX_W} (got {W})")
    return kernel


def conv_fwd(x, weight, bias, act: bool, mask=None, out=None, kernel: str | None = None):
    """Returns y (B, L, D) in x's dtype. `kernel`: "stream" or "tiles" (default FWD_KERNEL; "tiles" for W > 4)."""
    _check(x)
    batch, L, dim = x.shape
    W = weight.shape[1]
    kernel = _pick_kernel("forward", FWD_KERNELS, kernel, FWD_KERNEL, W)
    fn, params, candidates = FWD_KERNELS[kernel](W)
    out = torch.empty(batch, L, dim, device=x.device, dtype=x.dtype) if out is None else out

    def run(p):
        grid = (triton.cdiv(L, p["BLOCK_L"]), triton.cdiv(dim, p["BLOCK_D"]), batch)
        fn[grid](
            x, weight, bias if bias is not None else weight, mask if mask is not None else x, out, L, dim,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
            mask.stride(0) if mask is not None else 0, mask.stride(1) if mask is not None else 0,
            out.stride(0), out.stride(1),
            W=W, HAS_BIAS=bias is not None, HAS_MASK=mask is not None, ACT=act, **p)
        return [out]

    if tuning_on(x, CONFIG):
        params = pick_launch(_key("conv_fwd", x, weight, bias, act, mask, out.stride(), kernel), params,
                             candidates, run)
    run(params)
    return out


def bwd_rows(L: int, rows: int | None = None) -> int:
    """Steps per backward program: `rows` (default BWD_ROWS) capped at L, rounded up to whole BWD_BLOCK_L tiles."""
    rows = BWD_ROWS if rows is None else rows
    if rows < 1:
        raise ValueError(f"causal conv backward: rows must be a positive integer (got {rows})")
    return -(-min(rows, L) // BWD_BLOCK_L) * BWD_BLOCK_L


def _bwd_tiles(W: int) -> tuple:
    return (_conv_bwd_kernel, {"W_P2": max(2, 1 << (W - 1).bit_length()), "BLOCK_L": BWD_BLOCK_L},
            {"BLOCK_D": BWD_BLOCK_D}, BWD_CANDIDATES)


def _bwd_stream(W: int) -> tuple:
    return _conv_bwd_stream_kernel, {}, dict(STREAM_DEFAULT), STREAM_CANDIDATES


BWD_KERNELS = {"stream": _bwd_stream, "tiles": _bwd_tiles}


def conv_bwd(x, weight, bias, act: bool, grad, mask=None, dx=None, rows: int | None = None,
             kernel: str | None = None):
    """Returns (dx (B, L, D) in x's dtype, dweight (D, W) float32, dbias (D,) float32 or None).

    `rows`: steps per program (default BWD_ROWS; `bwd_rows`). dx does not depend on it (bit for
    bit); dweight and dbias add up per-block partials, so their rounding does. `kernel`: "stream"
    or "tiles" (default BWD_KERNEL; "tiles" for W > 4).
    """
    _check(x)
    batch, L, dim = x.shape
    W = weight.shape[1]
    kernel = _pick_kernel("backward", BWD_KERNELS, kernel, BWD_KERNEL, W)
    fn, consts, params, candidates = BWD_KERNELS[kernel](W)
    rows = bwd_rows(L, rows)
    n_rb = -(-L // rows)
    dx = torch.empty(batch, L, dim, device=x.device, dtype=x.dtype) if dx is None else dx
    dw = torch.empty(batch, n_rb, dim, W, device=x.device, dtype=torch.float32)
    db = torch.empty(batch, n_rb, dim, device=x.device, dtype=torch.float32) if bias is not None else None
    grad = grad if grad.stride(2) == 1 else grad.contiguous()

    def run(p):
        fn[(n_rb, triton.cdiv(dim, p["BLOCK_D"]), batch)](
            x, weight, bias if bias is not None else weight, mask if mask is not None else x, grad, dx, dw,
            db if db is not None else dw, L, dim, rows,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
            mask.stride(0) if mask is not None else 0, mask.stride(1) if mask is not None else 0,
            grad.stride(0), grad.stride(1), dx.stride(0), dx.stride(1),
            W=W, HAS_BIAS=bias is not None, HAS_MASK=mask is not None, ACT=act, **consts, **p)
        return [t for t in (dx, dw, db) if t is not None]

    if tuning_on(x, CONFIG):
        params = pick_launch(_key("conv_bwd", x, weight, bias, act, mask, grad.stride(), dx.stride(), rows, kernel),
                             params, candidates, run)
    run(params)
    return dx, dw.flatten(0, 1).sum(0), db.flatten(0, 1).sum(0) if db is not None else None


class CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias=None, activation="silu", mask=None):
        act = activation in ("silu", "swish")
        ctx.act = act
        ctx.save_for_backward(x, weight, bias, mask)
        return conv_fwd(x, weight, bias, act, mask)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mask = ctx.saved_tensors
        dx, dw, db = conv_bwd(x, weight, bias, ctx.act, grad, mask)
        return dx, dw.to(weight.dtype), db.to(bias.dtype) if bias is not None else None, None, None


def causal_conv1d_fn(x, weight, bias=None, activation="silu", mask=None):
    """Triton depthwise causal conv: x (B, L, D) channel-last, weight (D, W) -> (B, L, D)."""
    return CausalConv1dFn.apply(x, weight, bias, activation, mask)


__all__ = [
    "BWD_CANDIDATES",
    "BWD_KERNEL",
    "BWD_KERNELS",
    "BWD_ROWS",
    "FWD_CANDIDATES",
    "FWD_KERNEL",
    "FWD_KERNELS",
    "FWD_STREAM_CANDIDATES",
    "STREAM_CANDIDATES",
    "CausalConv1dFn",
    "bwd_rows",
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "conv_bwd",
    "conv_fwd",
]
