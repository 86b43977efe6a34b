"""Variable-length (packed) attention for the engine's packed suffixes, behind one function.

Packed layout: queries of several sequences concatenated without padding, [total_q, heads, dim], with
``cu_seqlens_q`` marking where each starts (flash-attn's contract). Causal masking is aligned to the
bottom right: when a sequence has more keys than queries (a shared prefix before it), every query sees
the whole prefix and the queries before it.

Backends: flash-attn's ``flash_attn_varlen_func`` when installed (CUDA), torch's own
``torch.nn.attention.varlen.varlen_attn`` on CUDA otherwise, and a plain per-sequence reference that runs
anywhere (CPU tests hold the other two to it).

``install(model)`` registers this as a transformers attention implementation ("rdfast_varlen") on the
language model: calls that carry ``cu_seq_lens_q`` go varlen, all others fall through to sdpa unchanged.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

NAME = "rdfast_varlen"
BACKENDS = ("auto", "flash_attn", "torch", "reference")


def available_backend() -> str:
    """The backend "auto" picks: flash_attn, else torch (CUDA), else reference."""
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attn"
        except ImportError:
            return "torch"
    return "reference"


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=True, scale=None,
                     backend="auto"):
    """Attention over packed sequences.

    q [total_q, Hq, D], k/v [total_k, Hkv, D] (Hq a multiple of Hkv: grouped-query attention),
    cu_seqlens_q/k int32 [n + 1]; returns [total_q, Hq, D] in q's dtype.
    """
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected q [Tq, Hq, D], k/v [Tk, Hkv, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of key heads {k.shape[1]}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError("cu_seqlens_q and cu_seqlens_k must describe the same number of sequences")
    backend = available_backend() if backend == "auto" else backend
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(q, k, v, cu_seqlens_q.int(), cu_seqlens_k.int(), max_seqlen_q, max_seqlen_k,
                                      softmax_scale=scale, causal=causal)
    if backend == "torch":
        from torch.nn.attention.varlen import varlen_attn

        params = inspect.signature(varlen_attn).parameters
        extra = {"is_causal": causal} if "is_causal" in params else {"window_size": (-1, 0) if causal else (-1, -1)}
        if k.shape[1] != q.shape[1]:  # repeat kv heads unless this torch does grouped-query itself
            if "enable_gqa" in params:
                extra["enable_gqa"] = True
            else:
                k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        return varlen_attn(q, k, v, cu_seqlens_q.int(), cu_seqlens_k.int(), max_seqlen_q, max_seqlen_k, scale=scale, **extra)
    if backend != "reference":
        raise ValueError(f"unknown varlen backend {backend!r}; choose from {BACKENDS}")
    return reference_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)


def reference_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=True, scale=None):
    """The contract in plain torch: one sequence at a time, bottom-right causal mask."""
    out = torch.empty_like(q)
    groups = q.shape[1] // k.shape[1]
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
        qs = q[q0:q1].transpose(0, 1)
        ks = k[k0:k1].transpose(0, 1).repeat_interleave(groups, dim=0)
        vs = v[k0:k1].transpose(0, 1).repeat_interleave(groups, dim=0)
        mask = None
        if causal:
            nq, nk = q1 - q0, k1 - k0
            mask = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(diagonal=nk - nq)
        out[q0:q1] = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale).transpose(0, 1)
    return out


def packed_suffix_layout(suffix_lengths: list[int], prefix_length: int, device):
    """cu_seqlens for queries (the packed suffixes) and for keys (the prefix repeated before each suffix),
    and the gather index that builds that key layout from [prefix; packed suffixes]."""
    lengths = torch.tensor(suffix_lengths, device=device)
    cu_q = F.pad(lengths.cumsum(0), (1, 0)).int()
    cu_k = F.pad((lengths + prefix_length).cumsum(0), (1, 0)).int()
    prefix = torch.arange(prefix_length, device=device)
    index = torch.cat([torch.cat([prefix, prefix_length + torch.arange(int(s), int(e), device=device)])
                       for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist())])
    return cu_q, cu_k, index


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [1, Hq, Tq, D], key/value [1, Hkv, prefix + Tq, D]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu_q = kwargs.get("cu_seq_lens_q")
    if cu_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed attention expects one packed row (batch size 1)")
    prefix = key.shape[2] - query.shape[2]
    cu_k, index = kwargs["cu_seq_lens_k"], kwargs["rdfast_key_index"]
    q = query[0].transpose(0, 1)
    k = key[0].transpose(0, 1)[index]
    v = value[0].transpose(0, 1)[index]
    out = varlen_attention(q, k, v, cu_q, cu_k, kwargs["max_length_q"], kwargs["max_length_q"] + prefix,
                           causal=True, scale=scaling, backend=kwargs.get("rdfast_varlen_backend", "auto"))
    return out[None], None


def install(model) -> None:
    """Make the language model of ``model`` use rdfast's varlen-capable attention (sdpa when not packed)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, _attention)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.config.get_text_config()._attn_implementation = NAME
