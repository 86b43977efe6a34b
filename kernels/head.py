"""Triton kernels for the fused yes-token head (backend "triton" of ``rdfast.ops.token_logprobs``).

Forward: each program takes a block of rows and a slice of the vocabulary, computes logit tiles with
``tl.dot`` (fp32 accumulation), keeps an online logsumexp and stores the K target logits it meets; the
per-slice (max, sum) pairs are merged in torch. Backward: each program owns a slice of the vocabulary,
recomputes its logit tiles from the saved lse, forms dlogits = scatter(g) - coef * softmax tile by tile
and adds dlogits @ W into dh (atomics) and writes dlogits^T @ h into its rows of dW. No [B, V] buffer.

Importing this module imports triton; ``rdfast.ops`` imports it only when the Triton backend is used.
Under TRITON_INTERPRET=1 (CPU tests) bf16 tiles are upcast to fp32 after loading: the interpreter
cannot compute in bf16.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, row_mask, cols, col_mask, H,
                 BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """z[BLOCK_B, BLOCK_V] = hidden[rows] @ weight[cols]^T in fp32."""
    acc = tl.zeros((BLOCK_B, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_mask = ks < H
        h = tl.load(h_ptr + rows[:, None] * H + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * H + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        if UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        if IEEE:  # fp32: TF32 would miss the fp32 tolerance
            acc = tl.dot(h, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(h, tl.trans(w), acc)
    return acc


@triton.jit
def _forward_kernel(h_ptr, w_ptr, bias_ptr, ids_ptr, m_ptr, s_ptr, tgt_ptr, B, H, V, K, v_per_prog,
                    HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                    UPCAST: tl.constexpr, IEEE: tl.constexpr):
    pid_b, pid_v = tl.program_id(0), tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    rows = rows.to(tl.int64)
    v_start = pid_v * v_per_prog
    v_end = tl.minimum(v_start + v_per_prog, V)
    m = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < v_end
        cols = cols.to(tl.int64)
        z = _logits_tile(h_ptr, w_ptr, rows, row_mask, cols, col_mask, H, BLOCK_B, BLOCK_V, BLOCK_H, UPCAST, IEEE)
        if HAS_BIAS:
            z += tl.load(bias_ptr + cols, mask=col_mask, other=0.0)[None, :]
        z = tl.where(col_mask[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows whose logits are all -inf so far
        s = s * tl.exp(m - m_ref) + tl.sum(tl.exp(z - m_ref[:, None]), axis=1)
        m = m_new
        for k in range(K):  # the target logits that fall in this tile
            idk = tl.load(ids_ptr + rows * K + k, mask=row_mask, other=-1)
            hit = cols[None, :] == idk[:, None]
            found = tl.max(hit.to(tl.int32), axis=1) > 0
            tl.store(tgt_ptr + rows * K + k, tl.sum(tl.where(hit, z, 0.0), axis=1), mask=row_mask & found)
    tl.store(m_ptr + pid_v * B + rows, m, mask=row_mask)
    tl.store(s_ptr + pid_v * B + rows, s, mask=row_mask)


@triton.jit
def _backward_kernel(h_ptr, w_ptr, bias_ptr, ids_ptr, lse_ptr, g_ptr, coef_ptr, dh_ptr, dw_ptr, db_ptr, d_ptr,
                     B, H, V, K, v_per_prog,
                     HAS_BIAS: tl.constexpr, NEED_DH: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                     UPCAST: tl.constexpr, IEEE: tl.constexpr):
    pid_v = tl.program_id(0)
    v_start = pid_v * v_per_prog
    v_end = tl.minimum(v_start + v_per_prog, V)
    n_b = tl.cdiv(B, BLOCK_B)
    d_base = d_ptr + pid_v.to(tl.int64) * (n_b * BLOCK_B * BLOCK_V)  # this program's dlogits scratch
    jv = tl.arange(0, BLOCK_V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + jv
        col_mask = cols < v_end
        cols = cols.to(tl.int64)
        db_acc = tl.zeros((BLOCK_V,), dtype=tl.float32)
        for b0 in range(0, B, BLOCK_B):
            rows = b0 + tl.arange(0, BLOCK_B)
            row_mask = rows < B
            rows = rows.to(tl.int64)
            z = _logits_tile(h_ptr, w_ptr, rows, row_mask, cols, col_mask, H, BLOCK_B, BLOCK_V, BLOCK_H, UPCAST, IEEE)
            if HAS_BIAS:
                z += tl.load(bias_ptr + cols, mask=col_mask, other=0.0)[None, :]
            lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
            coef = tl.load(coef_ptr + rows, mask=row_mask, other=0.0)
            d = -coef[:, None] * tl.exp(z - lse[:, None])
            for k in range(K):  # scatter_add of g: repeated ids add up
                idk = tl.load(ids_ptr + rows * K + k, mask=row_mask, other=-1)
                gk = tl.load(g_ptr + rows * K + k, mask=row_mask, other=0.0)
                d += tl.where(cols[None, :] == idk[:, None], gk[:, None], 0.0)
            d = tl.where(row_mask[:, None] & col_mask[None, :], d, 0.0)
            if NEED_DB:
                db_acc += tl.sum(d, axis=0)
            if NEED_DH:  # dh[rows] += d @ W[cols]
                for k0 in range(0, H, BLOCK_H):
                    ks = k0 + tl.arange(0, BLOCK_H)
                    k_mask = ks < H
                    w = tl.load(w_ptr + cols[:, None] * H + ks[None, :], mask=col_mask[:, None] & k_mask[None, :],
                                other=0.0)
                    if UPCAST:
                        w = w.to(tl.float32)
                    if IEEE:
                        part = tl.dot(d, w, input_precision="ieee")
                    else:
                        part = tl.dot(d.to(w.dtype), w)
                    tl.atomic_add(dh_ptr + rows[:, None] * H + ks[None, :], part,
                                  mask=row_mask[:, None] & k_mask[None, :])
            if NEED_DW:
                tl.store(d_base + (b0 + tl.arange(0, BLOCK_B))[:, None] * BLOCK_V + jv[None, :], d)
        if NEED_DB:
            tl.store(db_ptr + cols, db_acc, mask=col_mask)
        if NEED_DW:  # dW[cols] = d^T @ hidden, over all row blocks, written once in the weight dtype
            tl.debug_barrier()  # the scratch written above is read back by other threads
            for k0 in range(0, H, BLOCK_H):
                ks = k0 + tl.arange(0, BLOCK_H)
                k_mask = ks < H
                acc = tl.zeros((BLOCK_V, BLOCK_H), dtype=tl.float32)
                for b0 in range(0, B, BLOCK_B):
                    rows = b0 + tl.arange(0, BLOCK_B)
                    row_mask = rows < B
                    rows = rows.to(tl.int64)
                    h = tl.load(h_ptr + rows[:, None] * H + ks[None, :], mask=row_mask[:, None] & k_mask[None, :],
                                other=0.0)
                    d = tl.load(d_base + (b0 + tl.arange(0, BLOCK_B))[:, None] * BLOCK_V + jv[None, :])
                    if UPCAST:
                        h = h.to(tl.float32)
                    if IEEE:
                        acc = tl.dot(tl.trans(d), h, acc, input_precision="ieee")
                    else:
                        acc = tl.dot(tl.trans(d.to(h.dtype)), h, acc)
                tl.store(dw_ptr + cols[:, None] * H + ks[None, :], acc.to(dw_ptr.dtype.element_ty),
                         mask=col_mask[:, None] & k_mask[None, :])
            tl.debug_barrier()  # before the next tile overwrites the scratch


def _config(hidden, V, row_blocks_in_grid):
    """Block sizes and the vocabulary slice per program. The interpreter runs each tile op in numpy, so it gets
    few, large tiles; GPUs get tensor-core friendly tiles (smaller H blocks for fp32, whose tiles are twice as
    large in shared memory) and about two programs per SM."""
    (B, H), device = hidden.shape, hidden.device
    block_b = min(64, max(16, triton.next_power_of_2(B)))
    if _INTERPRET or device.type != "cuda":
        block_v, block_h, programs, warps = 1024, min(256, max(16, triton.next_power_of_2(H))), 4, 4
    else:
        block_v, block_h = 128, 32 if hidden.dtype == torch.float32 else 64
        warps = 8 if block_b >= 64 else 4
        programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    n_b = triton.cdiv(B, block_b) if row_blocks_in_grid else 1
    tiles = triton.cdiv(V, block_v)
    per_prog = triton.cdiv(tiles, max(1, min(tiles, triton.cdiv(programs, n_b)))) * block_v
    return block_b, block_v, block_h, per_prog, warps


def _flags(hidden):
    fp32 = hidden.dtype == torch.float32
    return dict(UPCAST=_INTERPRET and hidden.dtype == torch.bfloat16, IEEE=fp32)


def forward(hidden, weight, bias, ids):
    """hidden [B,H], weight [V,H] (contiguous, same dtype), bias fp32 [V] or None, ids int64 [B,K] ->
    (target logits [B,K] fp32, lse [B] fp32)."""
    (B, H), V, K = hidden.shape, weight.shape[0], ids.shape[1]
    block_b, block_v, block_h, per_prog, warps = _config(hidden, V, row_blocks_in_grid=True)
    grid = (triton.cdiv(B, block_b), triton.cdiv(V, per_prog))
    m = torch.empty(grid[1], B, device=hidden.device, dtype=torch.float32)
    s = torch.empty_like(m)
    tgt = torch.empty(B, K, device=hidden.device, dtype=torch.float32)
    _forward_kernel[grid](hidden, weight, hidden if bias is None else bias, ids, m, s, tgt, B, H, V, K, per_prog,
                          HAS_BIAS=bias is not None, BLOCK_B=block_b, BLOCK_V=block_v, BLOCK_H=block_h,
                          num_warps=warps, **_flags(hidden))
    m_max = m.max(0).values
    lse = m_max + torch.log((s * torch.exp(m - m_max)).sum(0))
    return tgt, lse


def backward(hidden, weight, bias, ids, lse, g, coef, need_dh, need_dw, need_db):
    """Gradients of the head from g [B,K] on the target logits' log-probs and coef [B] = sum_k g - g_lse:
    (dh fp32 [B,H] | None, dw [V,H] in weight's dtype | None, db fp32 [V] | None)."""
    (B, H), V, K = hidden.shape, weight.shape[0], ids.shape[1]
    block_b, block_v, block_h, per_prog, warps = _config(hidden, V, row_blocks_in_grid=False)
    programs = triton.cdiv(V, per_prog)
    dev = hidden.device
    dh = torch.zeros(B, H, device=dev, dtype=torch.float32) if need_dh else None
    dw = torch.empty_like(weight) if need_dw else None
    db = torch.empty(V, device=dev, dtype=torch.float32) if need_db else None
    n_b = triton.cdiv(B, block_b)
    scratch = torch.empty(programs * n_b * block_b * block_v if need_dw else 1, device=dev, dtype=torch.float32)
    dummy = lse
    _backward_kernel[(programs,)](
        hidden, weight, dummy if bias is None else bias, ids, lse, g, coef,
        dh if need_dh else dummy, dw if need_dw else weight, db if need_db else dummy, scratch,
        B, H, V, K, per_prog,
        HAS_BIAS=bias is not None, NEED_DH=need_dh, NEED_DW=need_dw, NEED_DB=need_db,
        BLOCK_B=block_b, BLOCK_V=block_v, BLOCK_H=block_h, num_warps=warps, **_flags(hidden))
    return dh, dw, db
