"""``POST /v1/rank`` and ``POST /v1/group``: one prompt's candidates judged as a unit, through the batcher.

Both become ordinary batcher jobs (pairwise "compare" items, or pointwise "score" items), so a group's members
share the prompt prefix and the reference's vision features with each other and with concurrent requests, and
the results equal in-process ``rm.rank`` / ``rm.compare`` / ``rm.score`` of the same items.

    /v1/rank   {"candidates": [base64], "prompt", "top_k"?, "instruction"?}
               -> {"order", "wins", "top", "win_prob"}                          (RewardModel.rank)
    /v1/group  {"candidates": [base64], "prompt", "reference"?: base64, "reference_mode"?: "best_of_n",
                "instruction"?}
               -> {"scores", "mean", "std", "saturated_fraction"} (+ "reference_index" for best_of_n)

A group is scored pairwise, P(candidate better than the reference), against the sent ``reference`` or, with
``reference_mode="best_of_n"``, against the group's own Best-of-N by pairwise wins (``ranking.rank_from_pairs``,
the rule ``RewardModel.rank`` uses; the chosen candidate is scored against itself too, like every member); a model
whose rdfast_config.json says ``paradigm == "pointwise"`` scores the group alone and takes no reference.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import torch

from ..errors import InputError
from ..group_stats import group_statistics
from ..ranking import RankResult, ordered_pairs, rank_from_pairs
from .batcher import Job
from .metrics import Metrics
from .protocol import (
    DecodedImage,
    SchemaError,
    check_instruction,
    decode_base64_image,
    decode_base64_images,
    json_field,
)

REFERENCE_MODES = ("best_of_n",)

#: queues one job and returns its scores (the app's ``scores_of`` for one endpoint)
Submit = Callable[[Job], Awaitable[list]]


def _common_fields(body: dict, reserved) -> tuple[list, str, str | None]:
    """(candidates as sent, prompt, instruction), checked."""
    candidates = json_field(body, "candidates", list)
    prompt = json_field(body, "prompt", str)
    instruction = json_field(body, "instruction", str, required=False)
    if not prompt.strip():
        raise InputError(f"must be a non-empty string, got {prompt!r}", field="prompt")
    reserved.check(prompt, "prompt")
    check_instruction(reserved, instruction)
    return candidates, prompt, instruction


async def _rank(decoded: list[DecodedImage], prompt: str, instruction, top_k: int, submit: Submit) -> RankResult:
    """Best-of-N over ``decoded``: every ordered pair as one batcher job, then the shared ranking rule."""
    n = len(decoded)
    pairs = ordered_pairs(n)
    job = Job(("compare", instruction, False), [[decoded[i] for i, _ in pairs], [decoded[j] for _, j in pairs]],
              [prompt] * len(pairs))
    p = await submit(job)
    return rank_from_pairs(torch.tensor(p, dtype=torch.float32), pairs, n, top_k)


async def rank_request(body: dict, rm, max_pixels: int, submit: Submit) -> dict:
    """The answer to a ``/v1/rank`` body."""
    candidates, prompt, instruction = _common_fields(body, rm.encoder.reserved)
    top_k = json_field(body, "top_k", int, required=False)
    if isinstance(top_k, bool):
        raise SchemaError("expected int, got bool", field="top_k")
    if len(candidates) < 2:
        raise InputError(f"rank needs at least 2 candidates, got {len(candidates)}", field="candidates")
    top_k = 1 if top_k is None else top_k
    if not 1 <= top_k <= len(candidates):
        raise InputError(f"must be in [1, {len(candidates)}], got {top_k}", field="top_k")
    decoded = await asyncio.to_thread(decode_base64_images, candidates, "candidates", max_pixels)
    result = await _rank(decoded, prompt, instruction, top_k, submit)
    return {"order": result.order, "wins": result.wins.tolist(), "top": result.top,
            "win_prob": result.win_prob.tolist()}


def _reference_choice(body: dict, pointwise: bool) -> tuple[str | None, str | None]:
    """(reference as sent, reference_mode), checked against the model's paradigm."""
    reference = json_field(body, "reference", str, required=False)
    mode = json_field(body, "reference_mode", str, required=False)
    if mode is not None and mode not in REFERENCE_MODES:
        raise SchemaError(f"expected one of {list(REFERENCE_MODES)}, got {mode!r}", field="reference_mode")
    if pointwise:
        for name, value in (("reference", reference), ("reference_mode", mode)):
            if value is not None:
                raise InputError("the served model is pointwise (its paradigm): a group is scored without a "
                                 "reference", field=name)
    elif reference is not None and mode is not None:
        raise InputError("send a reference or reference_mode, not both", field="reference_mode")
    elif reference is None and mode is None:
        raise InputError("a pairwise model scores a group against a reference: send reference (a base64 image) "
                         "or reference_mode 'best_of_n'", field="reference")
    return reference, mode


async def group_request(body: dict, rm, max_pixels: int, submit: Submit, metrics: Metrics) -> dict:
    """The answer to a ``/v1/group`` body; its telemetry also goes to ``metrics``."""
    candidates, prompt, instruction = _common_fields(body, rm.encoder.reserved)
    pointwise = getattr(rm, "paradigm", None) == "pointwise"
    reference, mode = _reference_choice(body, pointwise)
    least = 2 if mode == "best_of_n" else 1
    if len(candidates) < least:
        raise InputError(f"a group needs at least {least} candidates here, got {len(candidates)}", field="candidates")
    decoded = await asyncio.to_thread(decode_base64_images, candidates, "candidates", max_pixels)
    n, extra = len(decoded), {}
    if pointwise:
        scores = await submit(Job(("score", instruction, False), [decoded], [prompt] * n))
    else:
        if reference is not None:
            ref = await asyncio.to_thread(decode_base64_image, reference, None, "reference", max_pixels)
        else:
            best = (await _rank(decoded, prompt, instruction, 1, submit)).order[0]
            ref, extra = decoded[best], {"reference_index": best}
        scores = await submit(Job(("compare", instruction, False), [[ref] * n, decoded], [prompt] * n))
    stats = group_statistics(scores)
    metrics.group_std.observe(stats.std)
    metrics.group_saturated.observe(stats.saturated_fraction)
    return {"scores": scores, "mean": stats.mean, "std": stats.std, "saturated_fraction": stats.saturated_fraction,
            **extra}
