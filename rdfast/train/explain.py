"""Reasons from a chain-of-thought reward model: the decision, then the explanation generated after it.

The paper scores with the decision-first format: the reward is read at the FIRST answer token (exactly what
``RewardModel.compare``/``score`` read), and reasons are generated afterwards only to explain. For the
reasons-first format the reasons are generated first and the decision is read after them.
"""
from __future__ import annotations

import copy

import torch

from .regressive import default_batch_size


def _greedy(rm, items, max_new_tokens):
    """Greedy continuations (token id lists, cut at the end of turn) of encoded items, one batch."""
    inputs = rm.collate(items, "left")
    eos = rm.tokenizer.eos_token_id
    out = rm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                            pad_token_id=rm.pad_token_id, use_cache=True)
    new = out[:, inputs["input_ids"].shape[1]:].tolist()
    return [row[: row.index(eos)] if eos in row else row for row in new]


def _with_ids(item, extra):
    item = copy.copy(item)
    item.input_ids = list(item.input_ids) + list(extra)
    return item


def explain(rm, prompts, images1=None, images2=None, instruction=None, max_new_tokens=128,
            cot_format="decision_first", batch_size=None, *, videos1=None, videos2=None, condition_images=None,
            num_frames=None, fps=None) -> list[dict]:
    """Decisions with reasons for N items (pairwise when ``images2`` or ``videos2`` is given, else pointwise);
    videos as ``RewardModel.compare`` takes them.

    Returns one dict per item: {"p_yes": float (the reward, under rm.normalize), "decision": the answer word
    ("yes"/"no"), "reason": the generated text, "reason_ids": its token ids}. decision_first: the decision is the likelier answer token
    at the first answer position, then the reasons are generated greedily after it. reasons_first: reasons are
    generated greedily, then P(yes) is read where the decision follows them.
    """
    if cot_format not in ("decision_first", "reasons_first"):
        raise ValueError(f"cot_format must be 'decision_first' or 'reasons_first', got {cot_format!r}")
    pairwise = images2 is not None or videos2 is not None
    columns, kind = rm._media(images1, images2, videos1, videos2, pairwise=pairwise)
    items = rm.encode(prompts, columns, instruction, kind=kind, condition=condition_images, num_frames=num_frames,
                      fps=fps)
    batch_size = batch_size or default_batch_size(rm)
    yes, no = rm.yes_token_id, rm.no_token_id
    newline = rm.tokenizer("\n", add_special_tokens=False)["input_ids"]
    results = []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            if cot_format == "decision_first":
                logp = rm.answer_logprobs(rm.collate(chunk, "left"))
                decisions = [yes if a >= b else no for a, b in logp.tolist()]
                gen = _greedy(rm, [_with_ids(it, [d]) for it, d in zip(chunk, decisions)], max_new_tokens)
                reasons = [rm.tokenizer.decode(g, skip_special_tokens=True).strip() for g in gen]
                reason_ids = gen
            else:
                gen = _greedy(rm, chunk, max_new_tokens)
                prefixes, reasons, reason_ids = [], [], []
                for g in gen:
                    # the decision is the last answer token the model wrote; without one, read it after the reasons
                    at = max((k for k, t in enumerate(g) if t in (yes, no)), default=None)
                    body = g[:at] if at is not None else g + newline
                    prefixes.append(body)
                    reason_ids.append(g[:at] if at is not None else g)
                    reasons.append(rm.tokenizer.decode(g[:at] if at is not None else g, skip_special_tokens=True).strip())
                logp = rm.answer_logprobs(rm.collate([_with_ids(it, b) for it, b in zip(chunk, prefixes)], "left"))
                decisions = [yes if a >= b else no for a, b in logp.tolist()]
            p = logp[:, 0].exp() if rm.normalize == "vocab" else torch.sigmoid(logp[:, 0] - logp[:, 1])
            for pi, d, r, ids in zip(p.tolist(), decisions, reasons, reason_ids):
                word = rm.answers.yes_word if d == yes else rm.answers.no_word
                results.append({"p_yes": pi, "decision": word, "reason": r, "reason_ids": ids})
    return results
