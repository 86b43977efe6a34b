"""Reward-model losses, each usable alone in a user's training loop.

The generative losses take log-probabilities over the FULL vocabulary at the answer position, as
``RewardModel.head_logprobs`` / ``answer_logprobs`` return them (the fused head: its backward reaches the
hidden states and, when trained, the LM-head weight, without a [rows, vocab] logits buffer).

Targets are P(image 2 is better): 1.0 (label 2), 0.0 (label 1) or 0.5 (tie). ``ties="soft"`` trains a tie
as the 0.5 target; ``ties="skip"`` leaves tie rows out (and out of the mean's denominator).
``reduction``: "mean" over the kept terms, "sum", or "none" (per row; skipped rows are 0).

    pairwise_loss        CE on yes/no at the pairwise answer token (run both image orders as rows)
    pointwise_loss       Bradley-Terry on the yes-vs-no log-odds of the two images + small CE
    bradley_terry_loss   the regressive baseline's loss on scalar rewards
    cot_loss             decision token (soft for ties) + language-model loss on the reason tokens
    sequence_logprobs    per-token log-probs of labelled positions through the fused head (per-row targets)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TIES = ("soft", "skip")
REDUCTIONS = ("mean", "sum", "none")
IGNORE = -100


def _check(ties, reduction):
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _keep(target, ties):
    if ties == "skip":
        return target != 0.5
    return torch.ones_like(target, dtype=torch.bool)


def _reduce(per_row, keep, reduction, extra_sum=None, extra_count=0):
    per_row = torch.where(keep, per_row, torch.zeros((), dtype=per_row.dtype, device=per_row.device))
    if reduction == "none":
        return per_row
    total = per_row.sum() if extra_sum is None else per_row.sum() + extra_sum
    if reduction == "sum":
        return total
    return total / max(int(keep.sum()) + extra_count, 1)


def _xlogp(t, logp):
    """t * logp with 0 * (-inf) = 0 (hard targets never touch the other answer's log-prob)."""
    return torch.where(t > 0, t * logp, torch.zeros((), dtype=logp.dtype, device=logp.device))


def answer_ce(logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy of the answer token with target distribution {yes: t, no: 1 - t}: [N].

    logp: [N, 2] (log P(yes), log P(no)) over the full vocabulary; target: [N] in [0, 1].
    """
    t = target.to(device=logp.device, dtype=logp.dtype)
    return -(_xlogp(t, logp[:, 0]) + _xlogp(1 - t, logp[:, 1]))


def pairwise_loss(logp: torch.Tensor, target: torch.Tensor, ties: str = "soft", reduction: str = "mean"):
    """Generative pairwise loss: cross-entropy over the vocabulary on the answer token ("yes" iff image 2 wins).

    logp: [N, 2] float (log P(yes), log P(no)) at the answer position of "Is image 2 better than image 1?"
    rows; pass both image orders as separate rows (target t and 1 - t) to train away position bias.
    target: [N] float, P(image 2 better) in {0, 0.5, 1}. Returns a scalar (or [N] for "none"), logp's dtype.
    """
    _check(ties, reduction)
    return _reduce(answer_ce(logp, target), _keep(target, ties), reduction)


def log_odds(logp: torch.Tensor) -> torch.Tensor:
    """logit_yes - logit_no = log P(yes) - log P(no) (the log-sum-exp cancels): [N] from logp [N, 2]."""
    return logp[:, 0] - logp[:, 1]


def bradley_terry_loss(r1: torch.Tensor, r2: torch.Tensor, target: torch.Tensor, ties: str = "soft",
                       reduction: str = "mean"):
    """Bradley-Terry on rewards: -[t log sigmoid(r2 - r1) + (1 - t) log sigmoid(r1 - r2)] per pair.

    r1, r2: [P] float rewards of image 1 and image 2; target: [P] P(image 2 better). A tie (t = 0.5) under
    ``ties="soft"`` pulls the two rewards together.
    """
    _check(ties, reduction)
    t = target.to(device=r1.device, dtype=r1.dtype)
    d = r2 - r1
    per_pair = -(t * F.logsigmoid(d) + (1 - t) * F.logsigmoid(-d))
    return _reduce(per_pair, _keep(target, ties), reduction)


def pointwise_loss(logp1: torch.Tensor, logp2: torch.Tensor, target: torch.Tensor, ce_weight: float = 0.1,
                   ties: str = "soft", reduction: str = "mean"):
    """Generative pointwise loss (the paper's search verifier): BT on yes-vs-no log-odds plus a small CE.

    logp1, logp2: [P, 2] (log P(yes), log P(no)) of image 1 and image 2 of each pair, each judged alone with
    the pointwise question. Per pair: BT(log_odds(logp1), log_odds(logp2), t) + ce_weight * CE, where CE =
    -log P(yes | preferred) - log P(no | rejected). Ties have no preferred image: their CE term is 0.
    """
    _check(ties, reduction)
    t = target.to(device=logp1.device, dtype=logp1.dtype)
    s1, s2 = log_odds(logp1), log_odds(logp2)
    d = s2 - s1
    bt = -(t * F.logsigmoid(d) + (1 - t) * F.logsigmoid(-d))
    hard = (t != 0.5).to(t.dtype)
    win2 = (t > 0.5).to(t.dtype)
    ce = -hard * (win2 * (logp2[:, 0] + logp1[:, 1]) + (1 - win2) * (logp1[:, 0] + logp2[:, 1]))
    return _reduce(bt + ce_weight * ce, _keep(target, ties), reduction)


def cot_loss(decision_logp: torch.Tensor, target: torch.Tensor, token_logp: torch.Tensor,
             decision_weight: float = 1.0, ties: str = "soft", reduction: str = "mean"):
    """Chain-of-thought loss: the decision token plus the language-model loss on the reason tokens.

    decision_logp: [N, 2] (log P(yes), log P(no)) at each sequence's decision position; target: [N];
    token_logp: [M] log-probabilities of the reason tokens (and the end of turn), e.g. from
    ``sequence_logprobs``. Sum = decision_weight * sum_rows CE(decision) + sum_tokens -token_logp; "mean"
    divides by (kept rows + M), the usual per-token LM mean with the decision counted as one token.
    "none" returns the [N] decision terms (weighted; reason tokens are not per row).
    """
    _check(ties, reduction)
    per_row = decision_weight * answer_ce(decision_logp, target)
    keep = _keep(target, ties)
    if reduction == "none":
        return _reduce(per_row, keep, "none")
    return _reduce(per_row, keep, reduction, extra_sum=-token_logp.sum(), extra_count=token_logp.numel())


# ----------------------------------------------------------------------------------------------------
# Model side: the fused head on a RewardModel


def sequence_logprobs(rm, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of every labelled next token, through the fused head with per-row targets.

    hidden: [B, T, H] final hidden states; labels: int64 [B, T], the token expected AT each position
    (IGNORE = -100 elsewhere); position t is predicted from hidden[:, t - 1]. Returns [M] float32 for the M
    labelled positions in row-major order. No [M, vocab] logits are materialised.
    """
    labels = labels.to(hidden.device)
    mask = labels[:, 1:] != IGNORE
    h = hidden[:, :-1][mask]
    if h.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    return rm.head_logprobs(h, labels[:, 1:][mask][:, None])[0][:, 0]
