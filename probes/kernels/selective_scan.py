"""Mamba-1 selective scan: Triton forward/backward kernels, an autograd Function, a PyTorch twin.

    out = selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)
    ref = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

Shapes follow mamba_ssm (any strides are accepted: a channel-last view `x.transpose(1, 2)` of a
(B, L, D) tensor costs no copy and is the fastest layout for these kernels):

    u, delta, z: (B, D, L)    A: (D, N)    B, C: (B, N, L)    D, delta_bias: (D,)
    out: (B, D, L) in u's dtype;   last_state (optional): (B, D, N) float32

Per batch b, channel d and state n, accumulating in float32:

    delta_t = softplus(delta_t + delta_bias)            (softplus if delta_softplus)
    h_t     = exp(delta_t A) * h_{t-1} + delta_t B_t u_t
    y_t     = <C_t, h_t> + D u_t ;      out_t = y_t * silu(z_t)

Kernel layout: one program (one warp) per (block of channels, batch). Time runs in chunks of a
few steps whose inputs are loaded as tiles; the recurrence is unrolled over the chunk in
registers and the (channels, N) state is carried from chunk to chunk. Nothing of size
(B, D, L, N) is ever stored. The backward recomputes: pass 1 re-runs the forward and writes only
the chunk-start states (B, L / chunk, D, N); pass 2 walks the chunks in reverse (each in pieces of
`sub_bwd` steps, if set), rebuilds one chunk's states, runs the adjoint recurrence
g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} backwards over it, and forms every gradient there. dB and dC need a sum over channels: in-warp sums and
float32 atomics (or per-block partial buffers, or per-lane atomic slots: `CONFIG.bc_mode`). dA, dD
and d(delta_bias) are per-batch partials summed afterwards. See `ScanConfig` for the tile layout.
"""

from __future__ import annotations

import functools
import os
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from probes.errors import UserError

try:  # optional: the Triton path needs it, the reference does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None

HAS_TRITON = triton is not None
LOG2E = 1.4426950408889634


def interpret_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass
class ScanConfig:
    """Tile shapes of the Triton scan (see the kernels' layout note). Tests shrink them.

    Defaults: the fastest of the variants in benchmarks/throughput.py --kernels on an H100
    (triton 3.6) at B=64, L=203, D=1536 and 4096, N=16.

    Each program is one warp over BLOCK_D = dh * dl channels; dl lanes run over channels and
    32 // dl lanes over states. chunk_bwd also sets the spacing of the backward's saved states.
    sub_bwd (a divisor of chunk_bwd; 0 = chunk_bwd) is the backward's piece: it walks each saved
    interval in pieces of sub_bwd steps with tiles that many steps tall (fewer registers, some
    recompute); du, ddelta, dz are the same bits whatever it is, dA, dD, d(delta_bias) may differ
    in the last bits (see the kernel's note). PROBES_SCAN_SUB_BWD overrides it (`bwd_sub`).
    """

    chunk_fwd: int = 2
    dh_fwd: int = 1
    dl_fwd: int = 32
    chunk_bwd: int = 4
    dh_bwd: int = 2
    dl_bwd: int = 8
    warps_fwd: int = 1  # with more warps, make dl_fwd = 32 * warps_fwd so that warps split channels
    warps_bwd: int = 1
    prefetch: bool = True  # load the next chunk's tiles while computing the current one
    sub_bwd: int = 0  # backward piece length, a divisor of chunk_bwd; 0: chunk_bwd (one piece per interval)
    maxnreg_bwd: int = 0  # CUDA: cap on the backward's registers per thread (ptxas spills past it); 0: no cap
    bc_mode: int = 0  # dB/dC over channels: 0 sum + atomics, 1 sum + partial buffers, 2 per-lane atomics
    scratch_bytes: int = 768 << 20  # cap on the backward's chunk-state buffer (batch is sliced)
    # on CUDA: time the launch candidates once per shape and keep the fastest. Off by default: on an
    # H200 (Dec 2026) the tuned launches were slower than the defaults (results/bench/README.md, "Kernel levers").
    autotune: bool = False
    save_states_bytes: int = 1 << 30  # live budget for chunk states saved by the forward (0: recompute)


CONFIG = ScanConfig()


# === Reference (pure PyTorch) ===


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The readable twin of `selective_scan_fn`: a loop over L in float32 (slow, differentiable).

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,).
    Returns out (B, D, L) in u's dtype [, last_state (B, D, N) float32].
    """
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A, B, C = A.float(), B.float(), C.float()
    batch, dim, _L = u.shape
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(batch, dim, A.shape[1])
    hs = []
    # unbind, not dA[:, :, t]: the backward of indexing writes a full-size gradient per step (O(L^2))
    for dA_t, dBu_t in zip(dA.unbind(2), dBu.unbind(2)):
        h = dA_t * h + dBu_t
        hs.append(h)
    y = torch.einsum("bdln,bnl->bdl", torch.stack(hs, dim=2), C)
    out = y if D is None else y + u * D.float()[None, :, None]
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


# === Triton kernels ===

if HAS_TRITON:

    @triton.jit
    def _softplus(x):
        # torch's softplus (threshold 20); exp(x) for very negative x keeps log1p's precision
        return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))

    @triton.jit
    def _row(x, sel, EXACT: tl.constexpr):
        """Row `sel` (a one-hot mask over the chunk axis) of a (CHUNK, ...) tile, keeping dims.

        The chunk axis lives inside each thread, so this folds to picking registers and one add per pick.
        EXACT fills the other rows with -0.0 and the add goes too (x + (-0.0) is x for every x; a literal
        -0.0 reaches Triton's IR as 0.0, hence the bit pattern): it saves 32 instructions per iteration of
        each kernel's loop. Otherwise the fill is 0.0 and the add (0.0 + x) stays; products are picked that
        way, so that each is rounded on its own before the sum it feeds. Picked exactly, the compiler may
        fuse a product into that sum instead (an FMA) and choose which product to fuse differently in each
        variant, so the backward's variants and saved states would no longer agree bit for bit."""
        fill = 0.0
        if EXACT:
            fill = tl.full(x.shape, 0x80000000, tl.uint32).to(tl.float32, bitcast=True)
        return tl.sum(tl.where(sel, x, fill), axis=0, keep_dims=True)

    @triton.jit
    def _p3(base, b, t3, d3, s_b, s_d, s_l):
        """Pointers of a (CHUNK, DH, DL) tile of a (B, D, L)-shaped tensor."""
        return base + b * s_b + t3 * s_l + d3 * s_d

    @triton.jit
    def _chunk_loads(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, dout_ptr, chk_ptr, b, c, n_chunks, L, DIM, NS,
                     k3, d3, md3, k2, n2, ds, ns, mds,
                     su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sB_b, sB_n, sB_l, sC_b, sC_n, sC_l,
                     sz_b, sz_d, sz_l, sdo_b, sdo_d, sdo_l,
                     LOAD_C: tl.constexpr, HAS_Z: tl.constexpr, LOAD_DOUT: tl.constexpr, LOAD_H0: tl.constexpr,
                     CHUNK: tl.constexpr):
        """One chunk's input tiles, raw dtype; chunks outside [0, n_chunks) load as zeros."""
        t3 = c * CHUNK + k3
        m3 = (t3 < L) & (t3 >= 0) & md3
        t2 = c * CHUNK + k2
        m2 = (t2 < L) & (t2 >= 0) & (n2 < NS)
        u = tl.load(_p3(u_ptr, b, t3, d3, su_b, su_d, su_l), mask=m3, other=0.0)
        dt = tl.load(_p3(dt_ptr, b, t3, d3, sdt_b, sdt_d, sdt_l), mask=m3, other=0.0)
        Bt = tl.load(B_ptr + b * sB_b + t2 * sB_l + n2 * sB_n, mask=m2, other=0.0)
        Ct = Bt
        z = u
        dout = u
        h0 = tl.zeros(ds.shape, dtype=tl.float32)
        if LOAD_C:
            Ct = tl.load(C_ptr + b * sC_b + t2 * sC_l + n2 * sC_n, mask=m2, other=0.0)
        if HAS_Z:
            z = tl.load(_p3(z_ptr, b, t3, d3, sz_b, sz_d, sz_l), mask=m3, other=0.0)
        if LOAD_DOUT:
            dout = tl.load(_p3(dout_ptr, b, t3, d3, sdo_b, sdo_d, sdo_l), mask=m3, other=0.0)
        if LOAD_H0:
            h0 = _h0_load(chk_ptr, b, c, n_chunks, DIM, NS, ds, ns, mds)
        return u, dt, Bt, Ct, z, dout, h0

    @triton.jit
    def _h0_load(chk_ptr, b, c, n_chunks, DIM, NS, ds, ns, mds):
        """Saved state c (the state before step c * chunk_bwd) of a (B, n_chunks, D, N) buffer; zeros outside."""
        cv = ns * 0 + c  # the chunk index as a tensor, for the mask
        return tl.load(chk_ptr + ((b * n_chunks + c) * DIM + ds) * NS + ns, mask=mds & (cv >= 0) & (cv < n_chunks),
                       other=0.0)

    @triton.jit
    def _index_tiles(DIM, NS, DH: tl.constexpr, DL: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
        """This program's index tiles, shared by the forward and backward kernels.

        k3 (K, 1, 1) and k2 (K, 1): time within a chunk; n2 (1, N): state; d3 (1, DH, DL) channels of
        the (K, DH, DL) input tiles and md3 their mask; ds (DH, 1, DL) and ns (1, N, 1) index the
        (DH, N, DL) tiles of A and the state, mds their mask.
        """
        BLOCK_D: tl.constexpr = DH * DL
        pid_d = tl.program_id(0)
        k3 = tl.arange(0, CHUNK)[:, None, None]
        d3 = pid_d * BLOCK_D + tl.arange(0, DL)[None, None, :] * DH + tl.arange(0, DH)[None, :, None]
        md3 = d3 < DIM
        k2 = tl.arange(0, CHUNK)[:, None]
        n2 = tl.arange(0, BLOCK_N)[None, :]
        ds = pid_d * BLOCK_D + tl.arange(0, DL)[None, None, :] * DH + tl.arange(0, DH)[:, None, None]
        ns = tl.arange(0, BLOCK_N)[None, :, None]
        mds = (ds < DIM) & (ns < NS)
        return k3, d3, md3, k2, n2, ds, ns, mds

    # Layout. Compute tiles are 4D, (CHUNK, DH, N, DL): a program (one warp) owns
    # BLOCK_D = DH * DL channels; Triton's default layout puts lanes on DL, then on N, and keeps
    # CHUNK and DH inside each thread. Sums over N or over channels are then mostly in-thread, and
    # the chunk scan over time is a sequential loop in registers. Loads and stores stay 2D/3D and
    # are expanded to 4D, so that the compute tiles keep that default layout.
    @triton.jit
    def _ssm_fwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, chk_ptr,
        L, DIM, NS,
        su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n,
        sB_b, sB_n, sB_l, sC_b, sC_n, sC_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        WRITE_OUT: tl.constexpr, WRITE_LAST: tl.constexpr, WRITE_CHUNKS: tl.constexpr,
        DH: tl.constexpr, DL: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, PREFETCH: tl.constexpr,
        SAVE_EVERY: tl.constexpr,
    ):
        b = tl.program_id(1).to(tl.int64)
        k3, d3, md3, k2, n2, ds, ns, mds = _index_tiles(DIM, NS, DH, DL, BLOCK_N, CHUNK)
        A2 = tl.load(A_ptr + ds * sA_d + ns * sA_n, mask=mds, other=0.0)
        A2 = (A2.to(tl.float32) * 1.4426950408889634)[None, :, :, :]  # exp(x A) = exp2(x A log2 e)
        if HAS_D:
            Dv = tl.load(D_ptr + d3, mask=md3, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d3, mask=md3, other=0.0).to(tl.float32)
        h = tl.zeros((1, DH, BLOCK_N, DL), dtype=tl.float32)
        k4 = k3[:, :, None, :]
        n_chunks = tl.cdiv(L, CHUNK)
        if PREFETCH:  # next chunk's tiles are loaded while this one is computed
            nu, ndt, nB, nC, nz, _d, _h = _chunk_loads(
                u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, u_ptr, chk_ptr, b, 0, n_chunks, L, DIM, NS,
                k3, d3, md3, k2, n2, ds, ns, mds, su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sB_b, sB_n, sB_l,
                sC_b, sC_n, sC_l, sz_b, sz_d, sz_l, 0, 0, 0,
                LOAD_C=WRITE_OUT, HAS_Z=HAS_Z and WRITE_OUT, LOAD_DOUT=False, LOAD_H0=False, CHUNK=CHUNK)
        n_saved = tl.cdiv(L, SAVE_EVERY)
        if WRITE_CHUNKS:  # int32 offsets within one saved state; the base pointer moves on
            chk_ptr += b * n_saved * DIM * NS
            chk_off = ds * NS + ns
        for c in range(n_chunks):
            # the state at every SAVE_EVERY-th step (SAVE_EVERY a multiple of CHUNK), for the backward
            if WRITE_CHUNKS:  # noqa: SIM102 - constexpr first: the store is compiled only when asked for
                if (c * CHUNK) % SAVE_EVERY == 0:
                    tl.store(chk_ptr + chk_off, tl.reshape(h, (DH, BLOCK_N, DL)), mask=mds)
                    chk_ptr += DIM * NS  # the next saved state
            if PREFETCH:
                u, dt, Bt, Ct, z = nu, ndt, nB, nC, nz
                nu, ndt, nB, nC, nz, _d, _h = _chunk_loads(
                    u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, u_ptr, chk_ptr, b, c + 1, n_chunks, L, DIM, NS,
                    k3, d3, md3, k2, n2, ds, ns, mds, su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sB_b, sB_n, sB_l,
                    sC_b, sC_n, sC_l, sz_b, sz_d, sz_l, 0, 0, 0,
                    LOAD_C=WRITE_OUT, HAS_Z=HAS_Z and WRITE_OUT, LOAD_DOUT=False, LOAD_H0=False, CHUNK=CHUNK)
            else:
                u, dt, Bt, Ct, z, _d, _h = _chunk_loads(
                    u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, u_ptr, chk_ptr, b, c, n_chunks, L, DIM, NS,
                    k3, d3, md3, k2, n2, ds, ns, mds, su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sB_b, sB_n, sB_l,
                    sC_b, sC_n, sC_l, sz_b, sz_d, sz_l, 0, 0, 0,
                    LOAD_C=WRITE_OUT, HAS_Z=HAS_Z and WRITE_OUT, LOAD_DOUT=False, LOAD_H0=False, CHUNK=CHUNK)
            t3 = c * CHUNK + k3
            m3 = (t3 < L) & md3  # (K, DH, DL)
            # the backward's _step_factors / _run_steps compute the same, but called here they move
            # C's conversion ahead of the loop and add a shared-memory layout change (sm_90 PTX)
            u = u.to(tl.float32)
            dt = dt.to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(m3, dt, 0.0)  # padded steps: a = 1, b = 0, the state passes through
            a = tl.exp2(dt[:, :, None, :] * A2)  # (K, DH, N, DL)
            x = (dt * u)[:, :, None, :] * Bt.to(tl.float32)[:, None, :, None]
            hs = tl.zeros((CHUNK, DH, BLOCK_N, DL), dtype=tl.float32)
            for j in tl.static_range(CHUNK):  # h_t = a_t h_{t-1} + x_t, unrolled over the chunk
                sel = k4 == j
                h = _row(a, sel, True) * h + _row(x, sel, False)
                hs = tl.where(sel, h, hs)
            if WRITE_OUT:
                y = tl.sum(hs * Ct.to(tl.float32)[:, None, :, None], axis=2)  # (K, DH, DL)
                if HAS_D:
                    y = y + u * Dv
                if HAS_Z:
                    z = z.to(tl.float32)
                    y = y * z * tl.sigmoid(z)
                tl.store(_p3(out_ptr, b, t3, d3, so_b, so_d, so_l), y.to(out_ptr.dtype.element_ty), mask=m3)
        if WRITE_LAST:
            tl.store(last_ptr + (b * DIM + ds) * NS + ns, tl.reshape(h, (DH, BLOCK_N, DL)), mask=mds)

    @triton.jit
    def _step_factors(u, dtp, Bt, Ct, m3, A2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        """A piece's float32 inputs and step factors: u, dt + bias, delta (K, DH, DL) and (K, DH, 1, DL),
        delta * u, B and C (K, 1, N, 1), a = exp(delta A) and x = delta B u (K, DH, N, DL); padded
        steps get a = 1, x = 0."""
        u = u.to(tl.float32)
        dtp = dtp.to(tl.float32)
        if HAS_BIAS:
            dtp = dtp + bias
        if SOFTPLUS:
            delta = _softplus(dtp)
        else:
            delta = dtp
        delta = tl.where(m3, delta, 0.0)
        Bt = Bt.to(tl.float32)
        Ct = Ct.to(tl.float32)
        B4 = Bt[:, None, :, None]
        C4 = Ct[:, None, :, None]
        dlt_u = delta * u  # (K, DH, DL)
        delta4 = delta[:, :, None, :]
        a = tl.exp2(delta4 * A2)  # (K, DH, N, DL)
        x = dlt_u[:, :, None, :] * B4
        return u, dtp, delta, delta4, dlt_u, B4, C4, a, x

    @triton.jit
    def _run_steps(h, a, x, k4, K: tl.constexpr, KEEP: tl.constexpr):
        """h_t = a_t h_{t-1} + x_t over K steps from h (1, DH, N, DL); returns the last h and, if KEEP,
        every h_t as a (K, DH, N, DL) tile."""
        hs = tl.zeros(a.shape, dtype=tl.float32)
        for j in tl.static_range(K):  # unrolled over the piece
            sel = k4 == j
            h = _row(a, sel, True) * h + _row(x, sel, False)
            if KEEP:
                hs = tl.where(sel, h, hs)
        return h, hs

    # Backward pieces. The saved states are CHUNK steps apart; each saved interval is walked in
    # CHUNK // SUB pieces of SUB steps (in reverse), so that the (SUB, DH, N, DL) tiles (a, x, hs,
    # g, gh, q) take SUB / CHUNK of the registers. A piece starts from its interval's saved state
    # advanced through the earlier pieces' steps (recomputed: the running state only, no tiles kept;
    # the same ops as the piece body's forward, so the same bits). Every per-step output (du, ddelta,
    # dz, out, dB, dC) is computed by the same ops in the same order whatever SUB is; only the sums
    # over time (dA, dD, d(delta_bias)) are grouped per piece instead of per interval, which can move
    # their last bits. SUB == CHUNK is the kernel before pieces (the same PTX).
    @triton.jit
    def _ssm_bwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, chk_ptr,
        du_ptr, ddt_ptr, dz_ptr, out_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
        L, DIM, NS, NBATCH,
        su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n,
        sB_b, sB_n, sB_l, sC_b, sC_n, sC_l, sz_b, sz_d, sz_l,
        sdo_b, sdo_d, sdo_l, sdu_b, sdu_d, sdu_l, sddt_b, sddt_d, sddt_l,
        sdz_b, sdz_d, sdz_l, so_b, so_d, so_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        WRITE_OUT: tl.constexpr, BC_MODE: tl.constexpr,
        DH: tl.constexpr, DL: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, PREFETCH: tl.constexpr,
        SUB: tl.constexpr,
    ):
        NP: tl.constexpr = CHUNK // SUB  # pieces per saved interval
        pid_d = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        k3, d3, md3, k2, n2, ds, ns, mds = _index_tiles(DIM, NS, DH, DL, BLOCK_N, SUB)
        # (K, N, DL) index tiles for BC_MODE 2 (one dB/dC slot per lane)
        kq, nq, lq = k3, ns, tl.arange(0, DL)[None, None, :]
        A = tl.load(A_ptr + ds * sA_d + ns * sA_n, mask=mds, other=0.0).to(tl.float32)[None, :, :, :]
        A2 = A * 1.4426950408889634
        Dv = 0.0
        bias = 0.0
        if HAS_D:
            Dv = tl.load(D_ptr + d3, mask=md3, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d3, mask=md3, other=0.0).to(tl.float32)
        carry = tl.zeros((1, DH, BLOCK_N, DL), dtype=tl.float32)  # a_{t1} g_{t1}, t1 = next piece's start
        dA_acc = tl.zeros((1, DH, BLOCK_N, DL), dtype=tl.float32)
        dD_acc = tl.zeros((1, DH, DL), dtype=tl.float32)
        dbias_acc = tl.zeros((1, DH, DL), dtype=tl.float32)
        k4 = k3[:, :, None, :]
        n_chunks = tl.cdiv(L, CHUNK)
        if PREFETCH:  # next (earlier) piece's tiles are loaded while this one is computed
            nu, ndt, nB, nC, nz, ndo, nh = _chunk_loads(
                u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, dout_ptr, chk_ptr, b, n_chunks * NP - 1, n_chunks, L, DIM, NS,
                k3, d3, md3, k2, n2, ds, ns, mds, su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sB_b, sB_n, sB_l,
                sC_b, sC_n, sC_l, sz_b, sz_d, sz_l, sdo_b, sdo_d, sdo_l,
                LOAD_C=True, HAS_Z=HAS_Z, LOAD_DOUT=True, LOAD_H0=NP == 1, CHUNK=SUB)
            if NP > 1:
                nh = _h0_load(chk_ptr, b, n_chunks - 1, n_chunks, DIM, NS, ds, ns, mds)
        for i in range(n_chunks):
            c = n_chunks - 1 - i
            for p in tl.static_range(NP - 1, -1, -1):  # the pieces (SUB steps from c * CHUNK + p * SUB), last first
                q = c * NP + p  # its index among all pieces
                if PREFETCH:
                    u, dtp, Bt, Ct, z, dout, hl = nu, ndt, nB, nC, nz, ndo, nh
                    nu, ndt, nB, nC, nz, ndo, nh1 = _chunk_loads(
                        u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, dout_ptr, chk_ptr, b, q - 1, n_chunks, L, DIM, NS,
                        k3, d3, md3, k2, n2, ds, ns, mds, su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sB_b, sB_n, sB_l,
                        sC_b, sC_n, sC_l, sz_b, sz_d, sz_l, sdo_b, sdo_d, sdo_l,
                        LOAD_C=True, HAS_Z=HAS_Z, LOAD_DOUT=True, LOAD_H0=NP == 1, CHUNK=SUB)
                    if NP == 1:
                        nh = nh1
                    elif p == 0:  # the previous interval's saved state
                        nh = _h0_load(chk_ptr, b, c - 1, n_chunks, DIM, NS, ds, ns, mds)
                else:
                    u, dtp, Bt, Ct, z, dout, hl = _chunk_loads(
                        u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, dout_ptr, chk_ptr, b, q, n_chunks, L, DIM, NS,
                        k3, d3, md3, k2, n2, ds, ns, mds, su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sB_b, sB_n, sB_l,
                        sC_b, sC_n, sC_l, sz_b, sz_d, sz_l, sdo_b, sdo_d, sdo_l,
                        LOAD_C=True, HAS_Z=HAS_Z, LOAD_DOUT=True, LOAD_H0=NP == 1, CHUNK=SUB)
                    if NP > 1 and p == NP - 1:
                        hl = _h0_load(chk_ptr, b, c, n_chunks, DIM, NS, ds, ns, mds)
                if p == NP - 1:
                    h0 = hl  # the interval's saved state
                h = h0
                for r in tl.static_range(p):  # advance through the interval's earlier pieces
                    if PREFETCH and r == p - 1:  # the piece just prefetched
                        ru, rdt, rB = nu, ndt, nB
                    else:
                        ru, rdt, rB, _c, _z, _do, _h = _chunk_loads(
                            u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, dout_ptr, chk_ptr, b, c * NP + r, n_chunks, L, DIM,
                            NS, k3, d3, md3, k2, n2, ds, ns, mds, su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sB_b, sB_n,
                            sB_l, sC_b, sC_n, sC_l, sz_b, sz_d, sz_l, sdo_b, sdo_d, sdo_l,
                            LOAD_C=False, HAS_Z=False, LOAD_DOUT=False, LOAD_H0=False, CHUNK=SUB)
                    rm3 = ((c * NP + r) * SUB + k3 < L) & md3
                    _u, _dtp, _dl, _dl4, _dlu, _B4, _C4, ra, rx = _step_factors(ru, rdt, rB, rB, rm3, A2, bias,
                                                                                 HAS_BIAS, SOFTPLUS)
                    if r == 0:
                        h = h[None, :, :, :]
                    h, _hs = _run_steps(h, ra, rx, k4, SUB, False)
                t3 = q * SUB + k3
                m3 = (t3 < L) & md3
                t2 = q * SUB + k2
                m2 = (t2 < L) & (n2 < NS)
                u, dtp, delta, delta4, dlt_u, B4, C4, a, x = _step_factors(u, dtp, Bt, Ct, m3, A2, bias, HAS_BIAS,
                                                                           SOFTPLUS)
                if p == 0:
                    h = h[None, :, :, :]
                h, hs = _run_steps(h, a, x, k4, SUB, True)  # h_t for the piece's steps
                y = tl.sum(hs * C4, axis=2)  # (K, DH, DL)
                if HAS_D:
                    y = y + u * Dv
                dout = dout.to(tl.float32)
                if HAS_Z:
                    z = z.to(tl.float32)
                    sz = tl.sigmoid(z)
                    silu = z * sz
                    if WRITE_OUT:
                        tl.store(_p3(out_ptr, b, t3, d3, so_b, so_d, so_l), (y * silu).to(out_ptr.dtype.element_ty),
                                 mask=m3)
                    dz = dout * y * sz * (1.0 + z * (1.0 - sz))
                    tl.store(_p3(dz_ptr, b, t3, d3, sdz_b, sdz_d, sdz_l), dz.to(dz_ptr.dtype.element_ty), mask=m3)
                    dy = dout * silu
                else:
                    if WRITE_OUT:
                        tl.store(_p3(out_ptr, b, t3, d3, so_b, so_d, so_l), y.to(out_ptr.dtype.element_ty),
                                 mask=m3)
                    dy = dout
                dy = tl.where(m3, dy, 0.0)
                dy4 = dy[:, :, None, :]
                q4 = dy4 * C4
                g = tl.zeros((SUB, DH, BLOCK_N, DL), dtype=tl.float32)  # g_t = dL/dh_t
                for jj in tl.static_range(SUB):  # g_t = C_t dy_t + a_{t+1} g_{t+1}, backwards
                    sel = k4 == SUB - 1 - jj
                    gj = _row(q4, sel, False) + carry
                    g = tl.where(sel, gj, g)
                    carry = _row(a, sel, True) * gj  # becomes a_t g_t: what step t - 1 receives
                gh = g * (hs - x)  # g_t * exp(delta_t A) * h_{t-1}
                sgB = tl.sum(g * B4, axis=2)  # (K, DH, DL)
                ddelta = tl.sum(gh * A, axis=2) + sgB * u
                du = sgB * delta
                if HAS_D:
                    du = du + dy * Dv
                    dD_acc += tl.sum(dy * u, axis=0, keep_dims=True)
                dA_acc += tl.sum(gh * delta4, axis=0, keep_dims=True)
                if SOFTPLUS:
                    ddelta = ddelta * tl.sigmoid(dtp)
                ddelta = tl.where(m3, ddelta, 0.0)
                dbias_acc += tl.sum(ddelta, axis=0, keep_dims=True)
                tl.store(_p3(du_ptr, b, t3, d3, sdu_b, sdu_d, sdu_l), du.to(du_ptr.dtype.element_ty), mask=m3)
                tl.store(_p3(ddt_ptr, b, t3, d3, sddt_b, sddt_d, sddt_l), ddelta.to(ddt_ptr.dtype.element_ty),
                         mask=m3)
                # dB, dC: (K, N) sums over this program's channels
                dBl = tl.sum(g * dlt_u[:, :, None, :], axis=1)  # (K, N, DL), in-thread DH first
                dCl = tl.sum(hs * dy4, axis=1)
                if BC_MODE == 2:  # float32 atomics into a (B, L, N, DL) buffer, one slot per lane
                    tq = q * SUB + kq
                    offq = ((b * L + tq) * NS + nq) * DL + lq
                    mq = (tq < L) & (nq < NS)
                    tl.atomic_add(dB_ptr + offq, dBl, mask=mq, sem="relaxed")
                    tl.atomic_add(dC_ptr + offq, dCl, mask=mq, sem="relaxed")
                else:
                    dBt = tl.sum(dBl, axis=2)  # (K, N)
                    dCt = tl.sum(dCl, axis=2)
                    if BC_MODE == 0:  # float32 atomics into (B, L, N)
                        off = (b * L + t2) * NS + n2
                        tl.atomic_add(dB_ptr + off, dBt, mask=m2, sem="relaxed")
                        tl.atomic_add(dC_ptr + off, dCt, mask=m2, sem="relaxed")
                    else:  # per-block partials (n_dblk, B, L, N), summed afterwards
                        off = ((pid_d * NBATCH + b) * L + t2) * NS + n2
                        tl.store(dB_ptr + off, dBt, mask=m2)
                        tl.store(dC_ptr + off, dCt, mask=m2)
        tl.store(dA_ptr + (b * DIM + ds) * NS + ns, tl.reshape(dA_acc, (DH, BLOCK_N, DL)), mask=mds)
        if HAS_D:
            tl.store(dD_ptr + b * DIM + d3, dD_acc, mask=md3)
        if HAS_BIAS:
            tl.store(dbias_ptr + b * DIM + d3, dbias_acc, mask=md3)


def _check_device(t: torch.Tensor) -> None:
    if not HAS_TRITON:
        raise RuntimeError("the Triton selective scan needs `triton` (pip install triton)")
    if t.device.type != "cuda" and not interpret_mode():
        raise RuntimeError(f"the Triton selective scan runs on CUDA tensors (got {t.device}); "
                           f"set TRITON_INTERPRET=1 to run it on the CPU interpreter")


def _np2(n: int) -> int:
    return max(1, 1 << (int(n) - 1).bit_length())


def _s3(t):
    return (t.stride(0), t.stride(1), t.stride(2)) if t is not None else (0, 0, 0)


# === Launch tuning ===
#
# Each kernel has a default launch (from CONFIG) and a few candidates. On CUDA, with
# `CONFIG.autotune` on and levers not switched off (PROBES_SCAN_LEVERS=0), the first call of a
# shape times every candidate and keeps the fastest for that key. A candidate is kept only if its
# outputs are bitwise equal to the default launch's on the same inputs: tuning can change the
# speed, never a result (a tile change that moved a sum over lanes or over time would change the
# bits and is dropped). Float atomics (the scan's dB/dC in bc_mode 0/2) are left out of that check:
# their order is already the hardware's. In the interpreter the default launch is the only one.

_TUNED: dict[tuple, dict] = {}


def levers_on() -> bool:
    """False when PROBES_SCAN_LEVERS=0: no launch tuning, no saved chunk states (the old path)."""
    return os.environ.get("PROBES_SCAN_LEVERS", "1") not in ("0", "", "off", "false")


def tuning_on(t: torch.Tensor, cfg: ScanConfig) -> bool:
    return cfg.autotune and levers_on() and t.device.type == "cuda" and not interpret_mode()


def bench_ms(fn) -> float:
    """Median ms of fn on the GPU (triton.testing.do_bench, short)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=5, rep=20, return_mode="median"))


def pick_launch(key: tuple, default: dict, candidates: list[dict], run, timer=None) -> dict:
    """The fastest launch among `candidates` whose outputs equal `default`'s bit for bit.

    run(params) launches once and returns the output tensors to compare; timer(fn) -> ms.
    Cached by `key`; a candidate that fails to launch (e.g. out of shared memory) is skipped.
    """
    key = (*key, *sorted(default.items()))  # a changed default (CONFIG, a variant's config) tunes anew
    if key in _TUNED:
        return _TUNED[key]
    timer = timer or bench_ms
    ref = [t.clone() for t in run(default)]
    best, best_ms = default, timer(lambda: run(default))
    for cand in candidates:
        if cand == default:
            continue
        try:
            outs = run(cand)
        except Exception:  # noqa: BLE001, S112 - a launch the GPU cannot take is simply not a candidate
            continue
        if len(outs) != len(ref) or not all(torch.equal(a, b) for a, b in zip(outs, ref)):
            continue
        ms = timer(lambda c=cand: run(c))
        if ms < best_ms:
            best, best_ms = cand, ms
    _TUNED[key] = best
    return best


def _meta(t) -> tuple:
    return (None,) if t is None else (t.dtype, t.stride())


# Forward: warps always split channels (DL = 32 * warps) so that a sum over N stays in one thread;
# CHUNK divides chunk_bwd (4) so that the forward can save the backward's chunk states.
FWD_CANDIDATES = [{"DH": dh, "DL": 32 * w, "CHUNK": k, "PREFETCH": p, "num_warps": w}
                  for dh, w, k, p in [(1, 1, 2, True), (1, 1, 4, True), (2, 1, 2, True), (1, 2, 2, True),
                                      (1, 4, 2, True), (1, 1, 2, False)]]
# Backward: CHUNK stays chunk_bwd (the saved states' spacing and dA's order over time), DL stays
# dl_bwd (the lanes over N); channels per thread (registers) and prefetch are tuned. sub_bwd is not
# (it regroups dA's sum over time: not the same bits).
# (ptxas, sm_90: DH 2 with prefetch 255 registers + 96 B spilled; DH 1 without, 211; DH 4 spills 1.2 kB.)
BWD_CANDIDATES = [{"DH": dh, "PREFETCH": p} for dh, p in [(2, True), (1, True), (2, False), (1, False)]]


def _fwd_default(cfg: ScanConfig, pass1: bool) -> dict:
    return {"DH": cfg.dh_fwd, "DL": cfg.dl_fwd, "CHUNK": cfg.chunk_bwd if pass1 else cfg.chunk_fwd,
                "PREFETCH": cfg.prefetch, "num_warps": cfg.warps_fwd}


def _fwd_candidates(cfg: ScanConfig, pass1: bool, saving: bool) -> list[dict]:
    out = []
    for c in FWD_CANDIDATES:
        c = dict(c, CHUNK=cfg.chunk_bwd) if pass1 else c
        if (not saving or cfg.chunk_bwd % c["CHUNK"] == 0) and c not in out:
            out.append(c)
    return out


def scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *,
             out=None, return_last_state=False, chunk_states=None, save_states=None,
             config: ScanConfig | None = None):
    """Launch the forward kernel. Shapes as `selective_scan_fn`; `out` (B, D, L) may be a view.

    chunk_states: a float32 (B, n_chunks, D, N) buffer (n_chunks = ceil(L / chunk_bwd)) to fill
    with chunk-start states instead of computing `out` (pass 1 of the backward).
    save_states: the same buffer, filled as well as `out` (the backward then skips pass 1).
    Returns (out, last_state or None).
    """
    _check_device(u)
    cfg = config or CONFIG
    batch, dim, L = u.shape
    N = A.shape[1]
    write_out = chunk_states is None
    states = chunk_states if chunk_states is not None else save_states
    if write_out and out is None:
        out = torch.empty_like(u)
    last = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32) if return_last_state else None
    dummy = u
    flags = {"HAS_D": D is not None, "HAS_Z": z is not None, "HAS_BIAS": delta_bias is not None,
                 "SOFTPLUS": bool(delta_softplus), "WRITE_OUT": write_out, "WRITE_LAST": last is not None,
                 "WRITE_CHUNKS": states is not None}

    def run(p):
        grid = (triton.cdiv(dim, p["DH"] * p["DL"]), batch)
        _ssm_fwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, out if write_out else dummy,
            last if last is not None else dummy, states if states is not None else dummy,
            L, dim, N,
            *_s3(u), *_s3(delta), A.stride(0), A.stride(1), *_s3(B), *_s3(C), *_s3(z),
            *(_s3(out) if write_out else (0, 0, 0)),
            **flags, BLOCK_N=_np2(N), SAVE_EVERY=cfg.chunk_bwd, **p)
        return [t for t in (out if write_out else None, last, states) if t is not None]

    params = _fwd_default(cfg, not write_out)
    if save_states is not None and cfg.chunk_bwd % params["CHUNK"]:
        raise ValueError(f"save_states needs chunk_fwd ({params['CHUNK']}) to divide chunk_bwd ({cfg.chunk_bwd})")
    if tuning_on(u, cfg):
        key = ("fwd", batch, dim, L, N, cfg.chunk_bwd, tuple(flags.items()), *map(_meta, (u, delta, B, C, z, out)))
        params = pick_launch(key, params, _fwd_candidates(cfg, not write_out, states is not None), run)
    run(params)
    return out, last


def _bsl(t, lo, hi):
    return t[lo:hi] if t is not None else None


def chunk_state_shape(u, A, config: ScanConfig | None = None) -> tuple[int, int, int, int]:
    """(B, ceil(L / chunk_bwd), D, N): the chunk-start states the backward starts its chunks from."""
    cfg = config or CONFIG
    batch, dim, L = u.shape
    return batch, triton.cdiv(L, cfg.chunk_bwd), dim, A.shape[1]


_SAVED_BYTES = [0]  # chunk-state bytes now held for backward passes (all calls together)


def _release(nbytes: int) -> None:
    _SAVED_BYTES[0] -= nbytes


def saved_state_bytes() -> int:
    """Bytes of chunk states now held by forwards for their backward (see `state_buffer`)."""
    return _SAVED_BYTES[0]


def save_budget(cfg: ScanConfig) -> int:
    """Bytes of saved chunk states allowed: PROBES_SCAN_SAVE_MB (MiB) if set, else cfg.save_states_bytes."""
    text = os.environ.get("PROBES_SCAN_SAVE_MB")
    if text is None:
        return cfg.save_states_bytes
    if not text.strip().isdigit():
        raise UserError(f"PROBES_SCAN_SAVE_MB={text!r} is not allowed (a whole number of MiB, 0 to recompute)")
    return int(text) << 20


def state_buffer(u, A, config: ScanConfig | None = None):
    """A float32 chunk-state buffer for the forward to fill, or None (the backward then recomputes).

    Given when levers are on and the bytes held by all live buffers, B * ceil(L / chunk_bwd) * D *
    N * 4 each, stay within `save_budget` (1 GiB by default); the count drops when a buffer is freed.
    """
    cfg = config or CONFIG
    shape = chunk_state_shape(u, A, cfg)
    nbytes = 4 * shape[0] * shape[1] * shape[2] * shape[3]
    if not levers_on() or _SAVED_BYTES[0] + nbytes > save_budget(cfg):
        return None
    if cfg.chunk_bwd % cfg.chunk_fwd:
        return None
    buf = torch.empty(shape, device=u.device, dtype=torch.float32)
    _SAVED_BYTES[0] += nbytes
    weakref.finalize(buf, _release, nbytes)
    return buf


def scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dout, *, du=None, ddelta=None, dz=None,
             out=None, chunk_states=None, config: ScanConfig | None = None):
    """Gradients of the scan. Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias).

    dout: (B, D, L). du/ddelta/dz (B, D, L) may be given as views to write into; `out` (B, D, L),
    when given, receives the recomputed forward output (for the next layer's weight gradient).
    chunk_states: the (B, ceil(L / chunk_bwd), D, N) states the forward saved (`save_states`);
    without it, pass 1 recomputes them, the batch in slices so that the float32 buffer stays
    under `config.scratch_bytes`.
    dA (D, N), dD and ddelta_bias (D,) are float32; dB, dC are float32 (B, L, N) buffers viewed as
    (B, N, L).
    """
    _check_device(u)
    cfg = config or CONFIG
    batch, dim, L = u.shape
    N = A.shape[1]
    dev = u.device
    f32 = {"device": dev, "dtype": torch.float32}
    n_chunks = triton.cdiv(L, cfg.chunk_bwd)
    per_batch = n_chunks * dim * N * 4
    if chunk_states is not None:
        bs, chk = batch, chunk_states
    else:
        bs = max(1, min(batch, cfg.scratch_bytes // per_batch))
        chk = torch.empty(bs, n_chunks, dim, N, **f32)
    du = torch.empty_like(u) if du is None else du
    ddelta = torch.empty_like(delta) if ddelta is None else ddelta
    if z is not None and dz is None:
        dz = torch.empty_like(z)
    mode = cfg.bc_mode
    n_dblk = triton.cdiv(dim, cfg.dh_bwd * cfg.dl_bwd)
    if mode == 0:
        dB, dC = torch.zeros(batch, L, N, **f32), torch.zeros(batch, L, N, **f32)
    elif mode == 1:
        dB, dC = torch.empty(n_dblk, batch, L, N, **f32), torch.empty(n_dblk, batch, L, N, **f32)
    else:
        dB, dC = torch.zeros(batch, L, N, cfg.dl_bwd, **f32), torch.zeros(batch, L, N, cfg.dl_bwd, **f32)
    dA = torch.empty(batch, dim, N, **f32)
    dD = torch.empty(batch, dim, **f32) if D is not None else None
    dbias = torch.empty(batch, dim, **f32) if delta_bias is not None else None
    grads = (du, ddelta, dz, out, dA, dD, dbias, dB, dC)
    for lo in range(0, batch, bs):
        hi = min(batch, lo + bs)
        sl = functools.partial(_bsl, lo=lo, hi=hi)
        if chunk_states is None:  # pass 1: chunk-start states of this slice
            scan_fwd(sl(u), sl(delta), A, sl(B), sl(C), None, None, delta_bias, delta_softplus,
                     chunk_states=chk[: hi - lo], config=cfg)
        _bwd_launch(cfg, (sl(u), sl(delta), A, sl(B), sl(C), D, sl(z), delta_bias, sl(dout), chk),
                    [sl(t) for t in grads[:-2]] + ([dB[:, lo:hi], dC[:, lo:hi]] if mode == 1 else
                                                   [sl(dB), sl(dC)]),
                    delta_softplus, batch)
    if mode == 1:
        dB, dC = dB.sum(0), dC.sum(0)
    elif mode == 2:
        dB, dC = dB.sum(-1), dC.sum(-1)
    return (du, ddelta, dA.sum(0), dB.transpose(1, 2), dC.transpose(1, 2),
            dD.sum(0) if dD is not None else None, dz, dbias.sum(0) if dbias is not None else None)


def backward_kernel():
    """The Triton backward kernel itself, to compile it offline (`benchmarks/scan.py --registers`, `--sass`)."""
    return _ssm_bwd_kernel


def forward_kernel():
    """The Triton forward kernel itself, to compile it offline (`benchmarks/scan.py --sass`)."""
    return _ssm_fwd_kernel


def bwd_sub(cfg: ScanConfig) -> int:
    """Steps per backward piece: PROBES_SCAN_SUB_BWD if set, else cfg.sub_bwd (0: chunk_bwd); a divisor of chunk_bwd."""
    text = os.environ.get("PROBES_SCAN_SUB_BWD")
    value = text if text is not None else str(cfg.sub_bwd)
    name = "PROBES_SCAN_SUB_BWD" if text is not None else "ScanConfig.sub_bwd"
    sub = int(value) if value.strip().isdigit() else -1
    sub = cfg.chunk_bwd if sub == 0 else sub
    if sub < 1 or cfg.chunk_bwd % sub:
        divisors = [k for k in range(1, cfg.chunk_bwd + 1) if cfg.chunk_bwd % k == 0]
        raise UserError(f"{name}={value!r} is not allowed (0 or a divisor of chunk_bwd {cfg.chunk_bwd}: "
                        f"{', '.join(map(str, divisors))})")
    return sub


def _bwd_launch(cfg: ScanConfig, ins, grads, delta_softplus, nbatch) -> None:
    """One backward launch over a batch slice; tuned (bc_mode 0 only: the buffers fix DH * DL otherwise)."""
    u, delta, A, B, C, D, z, delta_bias, dout, chk = ins
    du, ddelta, dz, out, dA, dD, dbias, dB, dC = grads
    dummy = u
    flags = {"HAS_D": D is not None, "HAS_Z": z is not None, "HAS_BIAS": delta_bias is not None,
                 "SOFTPLUS": bool(delta_softplus), "WRITE_OUT": out is not None, "BC_MODE": cfg.bc_mode}
    atomics = [dB, dC] if cfg.bc_mode != 1 else []
    sub = bwd_sub(cfg)  # not tuned: it can move dA's last bits
    cap = {"maxnreg": cfg.maxnreg_bwd} if cfg.maxnreg_bwd else {}  # register allocation only: the same bits

    def run(p):
        for t in atomics:
            t.zero_()
        _ssm_bwd_kernel[(triton.cdiv(u.shape[1], p["DH"] * cfg.dl_bwd), u.shape[0])](
            u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, dout, chk,
            du, ddelta, dz if dz is not None else dummy, out if out is not None else dummy,
            dA, dD if dD is not None else dA, dbias if dbias is not None else dA, dB, dC,
            u.shape[2], u.shape[1], A.shape[1], nbatch,
            *_s3(u), *_s3(delta), A.stride(0), A.stride(1), *_s3(B), *_s3(C), *_s3(z),
            *_s3(dout), *_s3(du), *_s3(ddelta), *_s3(dz), *_s3(out),
            **flags, DL=cfg.dl_bwd, BLOCK_N=_np2(A.shape[1]), CHUNK=cfg.chunk_bwd, SUB=sub,
            num_warps=cfg.warps_bwd, **cap, **p)
        return [t for t in (du, ddelta, dz, out, dA, dD, dbias) if t is not None]

    params = {"DH": cfg.dh_bwd, "PREFETCH": cfg.prefetch}
    if cfg.bc_mode == 0 and tuning_on(u, cfg):
        key = ("bwd", *u.shape, A.shape[1], cfg.chunk_bwd, sub, cfg.maxnreg_bwd, cfg.dl_bwd, cfg.warps_bwd, tuple(flags.items()),
               *map(_meta, (u, delta, B, C, z, dout, du)))
        params = pick_launch(key, params, BWD_CANDIDATES, run)
    run(params)


# === Autograd ===


class SelectiveScanFn(torch.autograd.Function):
    """Triton selective scan. Saves the inputs, and the chunk-start states when `state_buffer`
    gives room for them (else the backward recomputes them: same values, one more pass)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                return_last_state=False, for_backward=True):
        states = state_buffer(u, A) if for_backward else None
        out, last = scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                             return_last_state=return_last_state, save_states=states)
        ctx.delta_softplus = delta_softplus
        ctx.chunk_states = states
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        if return_last_state:
            ctx.mark_non_differentiable(last)
            return out, last
        return out

    @staticmethod
    def backward(ctx, dout, *_):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        states, ctx.chunk_states = ctx.chunk_states, None  # freed once used
        du, ddelta, dA, dB, dC, dD, dz, dbias = scan_bwd(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, dout, chunk_states=states)
        return (du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                dD.to(D.dtype) if D is not None else None, dz,
                dbias.to(delta_bias.dtype) if delta_bias is not None else None, None, None, None)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """Triton selective scan (CUDA, or the CPU interpreter under TRITON_INTERPRET=1).

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,).
    Returns out (B, D, L) in u's dtype [, last_state (B, D, N) float32, not differentiable].
    """
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                            for t in (u, delta, A, B, C, D, z, delta_bias))
    return SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, grads)


__all__ = ["BWD_CANDIDATES", "CONFIG", "FWD_CANDIDATES", "HAS_TRITON", "ScanConfig", "SelectiveScanFn",
           "backward_kernel", "bench_ms", "bwd_sub", "chunk_state_shape", "forward_kernel", "interpret_mode", "levers_on", "pick_launch", "save_budget", "saved_state_bytes",
           "scan_bwd", "scan_fwd", "selective_scan_fn", "selective_scan_ref", "state_buffer", "tuning_on"]
