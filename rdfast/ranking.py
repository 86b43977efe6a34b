"""Best-of-N from pairwise judgements: the rule that picks a winner among N candidates, in one place."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RankResult:
    """Best-of-N by pairwise wins. ``win_prob[i, j]`` = P(candidate i beats j), both orders averaged."""

    order: list[int]
    wins: torch.Tensor
    win_prob: torch.Tensor
    top: list[int]


def ordered_pairs(n: int) -> list[tuple[int, int]]:
    """Every ordered pair (i, j), i != j, of n candidates: the judgements ``rank_from_pairs`` needs."""
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def rank_from_pairs(p: torch.Tensor, pairs: list[tuple[int, int]], n: int, top_k: int) -> RankResult:
    """Best-of-N from pairwise judgements: ``p[k]`` = P(candidate j better than i) for ``pairs[k] = (i, j)``,
    every ordered pair present. Both orders are averaged into P(i beats j); P > 0.5 is a hard win; ties in
    wins are broken by the summed win probabilities, then by index."""
    beats = torch.zeros(n, n, dtype=p.dtype, device=p.device)  # beats[j, i] = P(j better than i)
    beats[torch.tensor([j for _, j in pairs]), torch.tensor([i for i, _ in pairs])] = p
    win_prob = 0.5 * (beats + 1.0 - beats.T)
    win_prob.fill_diagonal_(0.0)
    wins = (win_prob > 0.5).sum(dim=1)
    total = win_prob.sum(dim=1)
    order = sorted(range(n), key=lambda k: (-int(wins[k]), -float(total[k]), k))
    return RankResult(order=order, wins=wins, win_prob=win_prob, top=order[:top_k])
