"""GRPO group telemetry: the statistics a trainer logs per group of rewards against reward hacking.

A group whose rewards all sit near 0 or 1 gives GRPO no signal (its advantages vanish) and is what a hacked or
over-confident reward looks like; the paper reads the same signal from the reward's variance. One definition,
used by the server's ``/v1/group`` and its metrics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: a score below LOW or above HIGH counts as saturated
SATURATED_LOW, SATURATED_HIGH = 0.01, 0.99


@dataclass
class GroupStats:
    """``mean`` and ``std`` (population, ddof 0) of a group's scores, and the share of saturated scores."""

    mean: float
    std: float
    saturated_fraction: float


def group_statistics(scores) -> GroupStats:
    """Statistics of one group's scores (a non-empty sequence of floats)."""
    values = [float(s) for s in scores]
    if not values:
        raise ValueError("a group needs at least one score")
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    saturated = sum(1 for v in values if v < SATURATED_LOW or v > SATURATED_HIGH)
    return GroupStats(mean=mean, std=std, saturated_fraction=saturated / len(values))
