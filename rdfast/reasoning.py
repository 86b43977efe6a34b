"""Reasons-first scoring: generate rationales, then read P(yes) where the decision follows each one.

The sequence read (for every template): the prompt (the template's layout with the generation prompt), the
rationale the model writes, the template's ``decision_prefix`` (default a newline), then the answer word. That
is the format ``rdfast train --paradigm cot --cot-format reasons_first`` trains (rdfast/train/batches.py,
``Collator.continuation``: reason, newline, decision, end of turn), so P(yes) is read exactly where a trained
model emits its decision, and anyone can re-score a returned rationale with one plain forward of
prompt + rationale + prefix.

Rationales: greedy for one sample, else sampled (softmax at ``temperature`` from a CPU generator seeded with
``seed + item index``: reproducible). A rationale ends at the end of the turn; any other special token (a media
placeholder, a turn marker, any added token) ends it too and is never part of it. A rationale that ends with
the decision prefix and an answer word (a trained model writing its own decision) has both removed: that
decision is re-read as a probability. The score is the mean over samples of P(yes) under the model's
normalisation. Vision features are computed once per call (for generating and reading); each item's
prompt runs once for all its samples when generating, and once for all when reading (the engine's shared
prefix).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .generation import sample_continuations
from .prompts import AnswerTokens

MODES = ("reasons_first",)


@dataclass(frozen=True)
class ReasoningSettings:
    """How ``score(..., reasoning=...)`` reasons: mode, samples per item, seed, tokens and temperature."""

    mode: str = "reasons_first"
    samples: int = 1
    seed: int = 0
    max_new_tokens: int = 256
    temperature: float = 1.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"reasoning must be None or one of {MODES} (samples and return_rationales need one), got {self.mode!r}")
        for name, low in (("samples", 1), ("max_new_tokens", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer of at least {low}, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")


def stop_token_ids(tokenizer, media_token_ids) -> set[int]:
    """Ids that end a rationale: the tokenizer's special and added tokens (as ``prompts.ReservedText`` reads
    them; whitespace-only ones excepted), its end of turn, and the family's media tokens."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids = {i for i, t in added.items() if str(t).strip()}
    ids.update(getattr(tokenizer, "all_special_ids", ()) or ())
    ids.update(media_token_ids)
    ids.add(tokenizer.eos_token_id)
    return ids


def without_decision(ids: list[int], answers: AnswerTokens, prefix_ids: list[int]) -> list[int]:
    """``ids`` without a trailing decision prefix + answer token (the decision the model wrote itself)."""
    n = len(prefix_ids)
    if ids and ids[-1] in (answers.yes_id, answers.no_id) and ids[-1 - n : -1] == prefix_ids and len(ids) > n:
        return ids[: -1 - n]
    return ids


def generate_rationales(engine, items, features, head, settings: ReasoningSettings, stop_ids, filler_id: int,
                        answers: AnswerTokens, prefix_ids: list[int]) -> list[list[list[int]]]:
    """``settings.samples`` rationales (token ids) per encoded item, each item's prompt run once for them all.

    Args:
        engine: the scoring ``Engine``; items: encoded items; features: their media features
            (``Engine.media_features``, computed once and reused to read the decisions); head: the LM head.
        stop_ids: ``stop_token_ids``; filler_id: a plain token fed after a sample stops.
        answers, prefix_ids: the template's answer tokens and its decision prefix as token ids.
    """
    greedy = settings.samples == 1
    out = []
    with torch.inference_mode():
        for index, (item, feats) in enumerate(zip(items, features)):
            generator = None if greedy else torch.Generator().manual_seed(settings.seed + index)
            rows = sample_continuations(engine, item, feats, head, settings.samples, settings.max_new_tokens,
                                        stop_ids, filler_id, generator, settings.temperature)
            out.append([without_decision(r, answers, prefix_ids) for r in rows])
    return out

