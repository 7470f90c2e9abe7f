"""Triton kernels of the selective scan, forward and backward (see ``scan_triton.py`` for the ops).

This module imports ``triton`` at its top: ``scan_triton`` loads it lazily (twice at most: once
compiled for the GPU, once under Triton's interpreter for CPU tests), never on ``import vmamba``.

One kernel pair serves both ops:

* the plain scan: ``KDIR = 1``, ``MODE = 0``; sequences (batch, D, L); grid axis 1 = group g of
  B and C, channels [g*DG, (g+1)*DG);
* the fused cross scan (SS2D): ``KDIR = 4`` scan orders of a (batch, DG, H, W) map, ``MODE`` 1
  cross2d, 2 unidi, 3 bidi; step t of direction k reads pixel ``_pixel(t, k)`` of every input in
  its pixel layout, and the four outputs are summed into the map by the program itself (directions
  one after another, a barrier between), so no direction copy is ever made; grid axis 1 is 1.

Names: ``ucol`` is a channel of u / z / y / delta (``pid_g*DG + c``); ``sc`` is the scan channel
of A, D, delta_bias and the states (``grp*DG + c``, ``grp = pid_g + k``); in the plain op both are
the same, in the cross op ``sc = k*DG + c``.

Time is cut in chunks of T steps. A program owns BLOCK_D channels; a chunk is one register tile
(T, BLOCK_N, BLOCK_D) scanned in parallel along time with ``tl.associative_scan`` of the pairs
(a_t, b_t) = (exp(dt_t A), dt_t u_t B_t) under (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2), then
h_t = S_t + P_t h_in from the state entering the chunk. All state arithmetic is fp32; nothing is
divided by a cumulative product, so nothing under- or overflows over long sequences.

The forward stores the state at the end of every chunk (``SAVE``); the backward walks the chunks
in reverse, recomputes the chunk's states from the saved entering state, and runs the adjoint
recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} (a reverse scan; a_{t+1} recomputed from delta at
t+1). Reductions over channels (dB, dC) and over time (dA, dD, d delta_bias) go to per-program
slots that the host sums with torch: no atomics, results bit-identical run to run.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose two steps h -> a h + b: first (a1, b1), then (a2, b2)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _sum(x, AXIS: tl.constexpr):
    """tl.sum(x, AXIS) for fp32 x, through the builtin tl.reduce (see the note on the interpreter)."""
    return tl.reduce(x, AXIS, tl.standard._sum_combine)


@triton.jit
def _softplus(x):
    """(softplus(x), sigmoid(x)) in fp32, both from one exp.

    softplus(x) = max(x, 0) + log1p(e) with e = exp(-|x|) in (0, 1], and log1p(e) = 2 atanh(s),
    s = e / (2 + e) in (0, 1/3], summed as its odd series to s^13 (truncation < 2e-8 relative):
    a few multiply-adds instead of a full-range log plus a correction division. (torch returns x
    itself above 20, where this differs from x by less than x's rounding.)
    """
    e = tl.exp(-tl.abs(x))
    s = e / (2.0 + e)
    s2 = s * s
    p = 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    p = p * s2 + 1.0
    softplus = tl.maximum(x, 0.0) + 2.0 * s * p
    sigmoid = tl.where(x >= 0.0, 1.0, e) / (1.0 + e)
    return softplus, sigmoid


@triton.jit
def _pixel(t, k, L, H, W, MODE: tl.constexpr):
    """Row-major pixel read by scan step t of direction k (MODE 0 plain / 2 unidi: t itself)."""
    if MODE == 1:  # cross2d: row, column, reversed row, reversed column
        r = tl.where(k >= 2, L - 1 - t, t)
        return tl.where(k % 2 == 1, (r % H) * W + r // H, r)
    elif MODE == 3:  # bidi: row, row, reversed row, reversed row
        return tl.where(k >= 2, L - 1 - t, t)
    else:
        return t


# Interpreter compatibility (triton 3.9): scalar conditions enter masks as `index * 0 + k > 0` (a
# tensor of the mask's shape), as the interpreter mishandles `tensor_mask & scalar_condition`; and
# no @jit function of triton.language's standard library (tl.sum, tl.zeros, tl.sigmoid, ...) is
# called, as those are compiled-only unless TRITON_INTERPRET was set before triton was first
# imported (which torch.utils.flop_counter does on `import vmamba`); the interpreter recognises
# tl.reduce with the standard _sum_combine and sums with numpy.


@triton.jit
def _step_sizes(delta, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """dt = softplus(delta + bias) (both optional), 0 outside ``mask``; and d dt / d delta.
    delta, mask: (T, BLOCK_D); bias: (BLOCK_D,)."""
    x = delta
    if HAS_BIAS:
        x = x + bias[None, :]
    if SOFTPLUS:
        dt, ddt = _softplus(x)
    else:
        dt = x
        ddt = tl.full(x.shape, 1.0, tl.float32)
    return tl.where(mask, dt, 0.0), ddt


@triton.jit
def scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr,
    y_ptr, last_ptr, states_ptr,
    L, DG, KD, H, W, n_chunks,
    s_ub, s_uc, s_ul,
    s_db, s_dk, s_dc, s_dl,
    s_Bb, s_Bg, s_Bn, s_Bl,
    s_Cb, s_Cg, s_Cn, s_Cl,
    s_zb, s_zc, s_zl,
    s_yb, s_yc, s_yl,
    N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
    KDIR: tl.constexpr, MODE: tl.constexpr,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE: tl.constexpr,
):
    """Grid (cdiv(DG, BLOCK_D), groups, batch). y gets the output (accumulated over directions when
    KDIR > 1: then fp32), last (batch, KD, N) the final state, states (batch, KD, n_chunks, N) the
    state at the end of every chunk when SAVE. A, D, bias: contiguous fp32.

    Tiles are (T, BLOCK_N, BLOCK_D): channels last, so the compiler spreads them over the lanes
    and keeps time and state inside each thread (the scan along time and the sum over the state
    then need no data exchange between threads).
    """
    pid_c = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    cl = pid_c * BLOCK_D + tl.arange(0, BLOCK_D)
    mc = cl < DG
    ucol = pid_g * DG + cl
    nn = tl.arange(0, BLOCK_N)
    mn = nn < N
    mnc = mn[:, None] & mc[None, :]
    tt = tl.arange(0, T)
    u_base = u_ptr + pid_b * s_ub + ucol[None, :] * s_uc
    y_base = y_ptr + pid_b * s_yb + ucol[None, :] * s_yc
    for k in range(KDIR):
        grp = pid_g + k
        sc = grp * DG + cl
        A2 = tl.load(A_ptr + sc[None, :] * N + nn[:, None], mask=mnc, other=0.0) * LOG2E   # (BLOCK_N, BLOCK_D)
        Dv = tl.load(D_ptr + sc, mask=mc, other=0.0) if HAS_D else None
        bias = tl.load(bias_ptr + sc, mask=mc, other=0.0) if HAS_BIAS else None
        d_base = delta_ptr + pid_b * s_db + k * s_dk + ucol[None, :] * s_dc
        B_base = B_ptr + pid_b * s_Bb + grp * s_Bg + nn[None, :] * s_Bn
        C_base = C_ptr + pid_b * s_Cb + grp * s_Cg + nn[None, :] * s_Cn
        st_base = states_ptr + (pid_b * KD + sc[None, :]) * n_chunks * N + nn[:, None]
        h = tl.full((BLOCK_N, BLOCK_D), 0.0, tl.float32)
        for c in range(n_chunks):
            t = c * T + tt
            mt = t < L
            p = _pixel(t, k, L, H, W, MODE)
            m2 = mt[:, None] & mc[None, :]                       # (T, BLOCK_D)
            mb = mt[:, None] & mn[None, :]                       # (T, BLOCK_N)
            u = tl.load(u_base + p[:, None] * s_ul, mask=m2, other=0.0).to(tl.float32)
            delta = tl.load(d_base + p[:, None] * s_dl, mask=m2, other=0.0).to(tl.float32)
            dt, _ = _step_sizes(delta, bias, m2, HAS_BIAS, SOFTPLUS)
            Bt = tl.load(B_base + p[:, None] * s_Bl, mask=mb, other=0.0).to(tl.float32)
            Ct = tl.load(C_base + p[:, None] * s_Cl, mask=mb, other=0.0).to(tl.float32)
            a = tl.exp2(dt[:, None, :] * A2[None, :, :])        # (T, BLOCK_N, BLOCK_D)
            bx = (dt * u)[:, None, :] * Bt[:, :, None]
            pa, pb = tl.associative_scan((a, bx), 0, _combine)
            hs = pb + pa * h[None, :, :]
            y = _sum(hs * Ct[:, :, None], 1)              # (T, BLOCK_D)
            if HAS_D:
                y += Dv[None, :] * u
            if HAS_Z:
                zv = tl.load(z_ptr + pid_b * s_zb + ucol[None, :] * s_zc + p[:, None] * s_zl,
                             mask=m2, other=0.0).to(tl.float32)
                y = y * zv / (1.0 + tl.exp(-zv))
            y_ptrs = y_base + p[:, None] * s_yl
            if KDIR > 1:  # merge: add what the earlier directions wrote at these pixels
                y_prev = tl.load(y_ptrs, mask=m2 & (tt[:, None] * 0 + k > 0), other=0.0)
                tl.debug_barrier()  # every copy of y_prev (warps may hold copies) read before overwriting
                y += y_prev
            tl.store(y_ptrs, y, mask=m2)
            h = _sum(tl.where(tt[:, None, None] == T - 1, hs, 0.0), 0)  # steps past L keep h
            if SAVE:
                tl.store(st_base + c * N, h, mask=mnc)
        tl.store(last_ptr + (pid_b * KD + sc[None, :]) * N + nn[:, None], h, mask=mnc)
        if KDIR > 1:
            tl.debug_barrier()  # the next direction reads the y this one wrote (other threads)


@triton.jit
def scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, dy_ptr, states_ptr,
    gc_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
    L, DG, KD, GT, H, W, n_chunks, n_split,
    s_ub, s_uc, s_ul,
    s_db, s_dk, s_dc, s_dl,
    s_Bb, s_Bg, s_Bn, s_Bl,
    s_Cb, s_Cg, s_Cn, s_Cl,
    s_zb, s_zc, s_zl,
    s_yb, s_yc, s_yl,
    s_gub, s_guc, s_gul,
    s_gdb, s_gdk, s_gdc, s_gdl,
    s_gzb, s_gzc, s_gzl,
    N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
    KDIR: tl.constexpr, MODE: tl.constexpr,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Grid (n_split, groups, batch); program s owns channel blocks s, s + n_split, ... of its group.

    In: dy (the output's gradient), states from the forward, gc (batch, KD, N) fp32 holding the
    last state's gradient (or 0), used afterwards as the program's carry of g across chunks.
    Out: du (summed over directions when KDIR > 1: then fp32), ddelta, dz in any dtype; and fp32
    per-program partials, zero-initialised: dA (batch, KD, N), dD and dbias (batch, KD), dB and dC
    (batch, GT, n_split, N, L) at pixel positions. Tiles as in the forward: (T, BLOCK_N, BLOCK_D).
    """
    pid_s = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    n_cb = (DG + BLOCK_D - 1) // BLOCK_D
    nn = tl.arange(0, BLOCK_N)
    mn = nn < N
    tt = tl.arange(0, T)
    dd = tl.arange(0, BLOCK_D)
    for k in range(KDIR):
        grp = pid_g + k
        B_base = B_ptr + pid_b * s_Bb + grp * s_Bg + nn[None, :] * s_Bn
        C_base = C_ptr + pid_b * s_Cb + grp * s_Cg + nn[None, :] * s_Cn
        part = ((pid_b * GT + grp) * n_split + pid_s) * N * L + nn[None, :] * L
        for i in range(n_chunks):
            c = n_chunks - 1 - i
            t = c * T + tt
            mt = t < L
            mt1 = (t + 1) < L
            p = _pixel(t, k, L, H, W, MODE)
            p1 = _pixel(t + 1, k, L, H, W, MODE)
            mb = mt[:, None] & mn[None, :]
            Bt = tl.load(B_base + p[:, None] * s_Bl, mask=mb, other=0.0).to(tl.float32)   # (T, BLOCK_N)
            Ct = tl.load(C_base + p[:, None] * s_Cl, mask=mb, other=0.0).to(tl.float32)
            # channel sums of dB, dC kept per channel over the program's blocks, reduced once
            dB_acc = tl.full((T, BLOCK_N, BLOCK_D), 0.0, tl.float32)
            dC_acc = tl.full((T, BLOCK_N, BLOCK_D), 0.0, tl.float32)
            for cb in range(pid_s, n_cb, n_split):
                cl = cb * BLOCK_D + dd
                mc = cl < DG
                ucol = pid_g * DG + cl
                sc = grp * DG + cl
                mnc = mn[:, None] & mc[None, :]
                m2 = mt[:, None] & mc[None, :]
                A = tl.load(A_ptr + sc[None, :] * N + nn[:, None], mask=mnc, other=0.0)   # (BLOCK_N, BLOCK_D)
                A2 = A * LOG2E
                Dv = tl.load(D_ptr + sc, mask=mc, other=0.0) if HAS_D else None
                bias = tl.load(bias_ptr + sc, mask=mc, other=0.0) if HAS_BIAS else None
                sn = (pid_b * KD + sc[None, :]) * N + nn[:, None]   # (batch, KD, N) slots
                h0 = tl.load(states_ptr + (pid_b * KD + sc[None, :]) * n_chunks * N + (c - 1) * N + nn[:, None],
                             mask=mnc & (nn[:, None] * 0 + c > 0), other=0.0)
                # running sums of this program (read here, written back after the barrier below)
                gc = tl.load(gc_ptr + sn, mask=mnc, other=0.0)
                dA_sum = tl.load(dA_ptr + sn, mask=mnc, other=0.0)
                dD_sum = tl.load(dD_ptr + pid_b * KD + sc, mask=mc, other=0.0) if HAS_D else None
                db_sum = tl.load(dbias_ptr + pid_b * KD + sc, mask=mc, other=0.0) if HAS_BIAS else None
                d_base = delta_ptr + pid_b * s_db + k * s_dk + ucol[None, :] * s_dc
                u = tl.load(u_ptr + pid_b * s_ub + ucol[None, :] * s_uc + p[:, None] * s_ul,
                            mask=m2, other=0.0).to(tl.float32)
                delta = tl.load(d_base + p[:, None] * s_dl, mask=m2, other=0.0).to(tl.float32)
                dt, dsp = _step_sizes(delta, bias, m2, HAS_BIAS, SOFTPLUS)
                m21 = mt1[:, None] & mc[None, :]
                delta1 = tl.load(d_base + p1[:, None] * s_dl, mask=m21, other=0.0).to(tl.float32)
                dt1, _ = _step_sizes(delta1, bias, m21, HAS_BIAS, SOFTPLUS)
                # recompute the chunk's states from the state entering it
                a = tl.exp2(dt[:, None, :] * A2[None, :, :])
                dtu = dt * u
                bx = dtu[:, None, :] * Bt[:, :, None]
                pa, pb = tl.associative_scan((a, bx), 0, _combine)
                hs = pb + pa * h0[None, :, :]
                dy = tl.load(dy_ptr + pid_b * s_yb + ucol[None, :] * s_yc + p[:, None] * s_yl,
                             mask=m2, other=0.0).to(tl.float32)
                if HAS_Z:
                    zv = tl.load(z_ptr + pid_b * s_zb + ucol[None, :] * s_zc + p[:, None] * s_zl,
                                 mask=m2, other=0.0).to(tl.float32)
                    zs = 1.0 / (1.0 + tl.exp(-zv))
                    y = _sum(hs * Ct[:, :, None], 1)
                    if HAS_D:
                        y += Dv[None, :] * u
                    dz = dy * y * zs * (1.0 + zv * (1.0 - zs))
                    tl.store(dz_ptr + pid_b * s_gzb + ucol[None, :] * s_gzc + p[:, None] * s_gzl, dz, mask=m2)
                    dy = dy * zv * zs
                # adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1}, entering from the later chunk
                a1 = tl.exp2(dt1[:, None, :] * A2[None, :, :])  # 1 past the end of the sequence
                beta = Ct[:, :, None] * dy[:, None, :]
                qa, qg = tl.associative_scan((a1, beta), 0, _combine, reverse=True)
                g = qg + qa * gc[None, :, :]
                dC_acc += hs * dy[:, None, :]
                dB_acc += g * dtu[:, None, :]
                gB = _sum(g * Bt[:, :, None], 1)            # (T, BLOCK_D)
                w = g * (hs - bx)                                   # g_t * a_t h_{t-1}
                du = gB * dt
                if HAS_D:
                    du += Dv[None, :] * dy
                ddelta = (gB * u + _sum(w * A[None, :, :], 1)) * dsp
                ddelta = tl.where(m2, ddelta, 0.0)
                du_ptrs = du_ptr + pid_b * s_gub + ucol[None, :] * s_guc + p[:, None] * s_gul
                if KDIR > 1:  # merge: add the gradients of the directions done before
                    du += tl.load(du_ptrs, mask=m2 & (tt[:, None] * 0 + k > 0), other=0.0)
                # Copies of a value may live in several warps: all of them must have read the
                # running sums (and du) before any thread writes them back.
                tl.debug_barrier()
                tl.store(gc_ptr + sn, _sum(tl.where(tt[:, None, None] == 0, g, 0.0), 0), mask=mnc)
                tl.store(dA_ptr + sn, dA_sum + _sum(w * dt[:, None, :], 0), mask=mnc)
                if HAS_D:
                    tl.store(dD_ptr + pid_b * KD + sc, dD_sum + _sum(dy * u, 0), mask=mc)
                if HAS_BIAS:
                    tl.store(dbias_ptr + pid_b * KD + sc, db_sum + _sum(ddelta, 0), mask=mc)
                tl.store(du_ptrs, du, mask=m2)
                tl.store(ddelta_ptr + pid_b * s_gdb + k * s_gdk + ucol[None, :] * s_gdc + p[:, None] * s_gdl,
                         ddelta, mask=m2)
            tl.store(dB_ptr + part + p[:, None], _sum(dB_acc, 2), mask=mb)
            tl.store(dC_ptr + part + p[:, None], _sum(dC_acc, 2), mask=mb)
            tl.debug_barrier()  # the next chunk (or direction) reads the carries and sums written here
