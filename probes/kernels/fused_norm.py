"""RMSNorm as one Triton kernel, optionally with the residual add in front of it fused in.

    y = rms_norm(x, weight, eps)                       # weight * x * rsqrt(mean(x^2) + eps)
    s, y = add_rms_norm(x, delta, weight, eps)          # s = x + delta (x's dtype), y = rms_norm(s)
    ref = rms_norm_ref(x, weight, eps);  s, ref = add_rms_norm_ref(x, delta, weight, eps)

Shapes: x, delta (..., H) with unit last stride after a reshape; weight (H,). The output dtype
is the autocast dtype when autocast is on (what the next Linear casts to anyway), else
transformers' (weight * x.to(input dtype)). Both save their input (the sum s) and one float32
per row; the backward of `add_rms_norm` adds the gradient arriving at s to the norm's input
gradient in the same kernel and writes it once more in delta's dtype (delta's gradient).

Mamba's trunk runs, per block, `s = residual + mixer_out` (float32) and then the next block's
norm of s: `add_rms_norm` does both in one pass (reads s's two inputs, writes s and the normed
row, instead of writing s, reading it back and writing the normed row). `fuse_residual_norm`
in probes.kernels.mamba_mixer switches a model's trunk to it.
"""

from __future__ import annotations

import torch

from probes.kernels.selective_scan import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _rmsnorm_fwd_kernel(x_ptr, r_ptr, s_ptr, w_ptr, o_ptr, rstd_ptr, H, sx, sr, ss, so, eps,
                            BLOCK_H: tl.constexpr, ROUND_TO_INPUT: tl.constexpr, HAS_RES: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_H)
        m = cols < H
        x = tl.load(x_ptr + row * sx + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_RES:  # s = x + delta, rounded to s's dtype as torch's add would
            x = x + tl.load(r_ptr + row * sr + cols, mask=m, other=0.0).to(tl.float32)
            x = x.to(s_ptr.dtype.element_ty)
            tl.store(s_ptr + row * ss + cols, x, mask=m)
            x = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / H + eps)
        xhat = x * rstd
        if ROUND_TO_INPUT:  # transformers: weight * hidden.to(input_dtype)
            xhat = xhat.to(s_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(o_ptr + row * so + cols, (xhat * w).to(o_ptr.dtype.element_ty), mask=m)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _rmsnorm_bwd_kernel(x_ptr, w_ptr, g_ptr, gs_ptr, rstd_ptr, dx_ptr, dr_ptr, dw_ptr, M, H, sx, sg, sgs, sdx,
                            sdr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr, HAS_GS: tl.constexpr,
                            WRITE_DR: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_H)
        m = cols < H
        w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
        dw = tl.zeros((BLOCK_H,), dtype=tl.float32)
        for i in range(ROWS):
            row = (pid * ROWS + i).to(tl.int64)
            if row < M:
                x = tl.load(x_ptr + row * sx + cols, mask=m, other=0.0).to(tl.float32)
                g = tl.load(g_ptr + row * sg + cols, mask=m, other=0.0).to(tl.float32)
                rstd = tl.load(rstd_ptr + row)
                xhat = x * rstd
                wg = w * g
                c = tl.sum(xhat * wg, axis=0) / H
                dx = (wg - xhat * c) * rstd
                if HAS_GS:  # the gradient arriving at s = x + delta from later blocks
                    dx += tl.load(gs_ptr + row * sgs + cols, mask=m, other=0.0).to(tl.float32)
                tl.store(dx_ptr + row * sdx + cols, dx.to(dx_ptr.dtype.element_ty), mask=m)
                if WRITE_DR:
                    tl.store(dr_ptr + row * sdr + cols, dx.to(dr_ptr.dtype.element_ty), mask=m)
                dw += g * xhat
        tl.store(dw_ptr + pid * H + cols, dw, mask=m)


def _autocast_dtype(device_type: str):
    """The autocast dtype active for `device_type`, or None (works on torch 2.4+)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # older signature: CUDA only
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


def _rows(t: torch.Tensor) -> torch.Tensor:
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch_fwd(x2, r2, s2, weight, eps, out_dtype):
    M, H = x2.shape
    out = torch.empty(M, H, device=x2.device, dtype=out_dtype)
    rstd = torch.empty(M, device=x2.device, dtype=torch.float32)
    has_res = r2 is not None
    _rmsnorm_fwd_kernel[(M,)](x2, r2 if has_res else x2, s2 if has_res else x2, weight, out, rstd, H, x2.stride(0),
                              r2.stride(0) if has_res else 0, s2.stride(0) if has_res else 0, out.stride(0), eps,
                              BLOCK_H=triton.next_power_of_2(H), ROUND_TO_INPUT=(s2 if has_res else x2).dtype != torch.float32,
                              HAS_RES=has_res, num_warps=8 if H >= 2048 else 4)
    return out, rstd


def _launch_bwd(x2, weight, g2, gs2, rstd, dr_dtype):
    M, H = x2.shape
    dx = torch.empty_like(x2)
    dr = torch.empty(M, H, device=x2.device, dtype=dr_dtype) if dr_dtype is not None else None
    rows = max(1, triton.cdiv(M, 1024))
    n_prog = triton.cdiv(M, rows)
    dw = torch.empty(n_prog, H, device=x2.device, dtype=torch.float32)
    _rmsnorm_bwd_kernel[(n_prog,)](x2, weight, g2, gs2 if gs2 is not None else g2, rstd, dx,
                                   dr if dr is not None else dx, dw, M, H, x2.stride(0), g2.stride(0),
                                   gs2.stride(0) if gs2 is not None else 0, dx.stride(0),
                                   dr.stride(0) if dr is not None else 0, ROWS=rows,
                                   BLOCK_H=triton.next_power_of_2(H), HAS_GS=gs2 is not None,
                                   WRITE_DR=dr is not None, num_warps=8 if H >= 2048 else 4)
    return dx, dr, dw.sum(0)


class RMSNormFn(torch.autograd.Function):
    """y = weight * (x * rsqrt(mean(x^2) + eps)); saves x and one float32 per row."""

    @staticmethod
    def forward(ctx, x, weight, eps, out_dtype):
        x2 = _rows(x)
        out, rstd = _launch_fwd(x2, None, None, weight, eps, out_dtype)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = x.shape
        return out.view(*x.shape[:-1], x2.shape[1])

    @staticmethod
    def backward(ctx, g):
        x2, weight, rstd = ctx.saved_tensors
        dx, _, dw = _launch_bwd(x2, weight, _rows(g), None, rstd, None)
        return dx.view(ctx.shape), dw.to(weight.dtype), None, None


class AddRMSNormFn(torch.autograd.Function):
    """(s, y) = (x + delta, rms_norm(x + delta)); saves s and one float32 per row."""

    @staticmethod
    def forward(ctx, x, delta, weight, eps, out_dtype):
        x2, r2 = _rows(x), _rows(delta)
        s2 = torch.empty(x2.shape, device=x.device, dtype=torch.result_type(x, delta))
        out, rstd = _launch_fwd(x2, r2, s2, weight, eps, out_dtype)
        ctx.save_for_backward(s2, weight, rstd)
        ctx.shape, ctx.x_dtype, ctx.delta_dtype = x.shape, x.dtype, delta.dtype
        shape = (*x.shape[:-1], x2.shape[1])
        return s2.view(shape), out.view(shape)

    @staticmethod
    def backward(ctx, g_s, g_out):
        s2, weight, rstd = ctx.saved_tensors
        if g_out is None:
            g_out = torch.zeros(ctx.shape, device=s2.device, dtype=s2.dtype)
        dx, dr, dw = _launch_bwd(s2, weight, _rows(g_out), _rows(g_s) if g_s is not None else None, rstd,
                                 ctx.delta_dtype)
        return dx.view(ctx.shape).to(ctx.x_dtype), dr.view(ctx.shape), dw.to(weight.dtype), None, None


def rms_norm(x, weight, eps):
    """Fused RMSNorm; under autocast it returns the autocast dtype directly (what the next
    Linear would cast to anyway), else transformers' result dtype."""
    out_dtype = _autocast_dtype(x.device.type) or torch.result_type(weight, x)
    return RMSNormFn.apply(x, weight, eps, out_dtype)


def add_rms_norm(x, delta, weight, eps):
    """(x + delta, rms_norm(x + delta)) in one kernel each way; output dtype as `rms_norm`."""
    s_dtype = torch.result_type(x, delta)
    out_dtype = _autocast_dtype(x.device.type) or torch.result_type(weight, torch.empty(0, dtype=s_dtype))
    return AddRMSNormFn.apply(x, delta, weight, eps, out_dtype)


def rms_norm_ref(x, weight, eps):
    """transformers' MambaRMSNorm: weight * (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype)."""
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def add_rms_norm_ref(x, delta, weight, eps):
    """The twin of `add_rms_norm`: the add, then `rms_norm_ref`."""
    s = x + delta
    return s, rms_norm_ref(s, weight, eps)


__all__ = ["AddRMSNormFn", "RMSNormFn", "add_rms_norm", "add_rms_norm_ref", "rms_norm", "rms_norm_ref"]
