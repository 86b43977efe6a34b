"""The fused yes-token head: log-probabilities of a few tokens without materialising [B, V] logits.

One public entry, ``token_logprobs``; backends sit behind it (see ``_resolve_backend``).
"""
from __future__ import annotations

import torch


def token_logprobs(hidden, weight, token_ids, bias=None, backend="auto"):
    """Log-probabilities over the full vocabulary of a few tokens.

    hidden [B, H], weight [V, H], token_ids [K] (same tokens every row) or [B, K] (per row), bias [V] or None.
    Returns (logp [B, K] float32, lse [B] float32).
    """
    ids = token_ids.to(hidden.device, torch.long)
    if ids.dim() == 1:
        ids = ids.expand(hidden.shape[0], -1)
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    lse = torch.logsumexp(logits, dim=-1)
    return logits.gather(1, ids) - lse[:, None], lse
