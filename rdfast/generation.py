"""Greedy generation for explanations: the model writes its reasons after (or before) the decision."""
from __future__ import annotations


def greedy_continuations(model, inputs: dict, max_new_tokens: int, eos_token_id: int, pad_token_id: int
                         ) -> list[list[int]]:
    """Greedy continuations of left-padded ``inputs`` (transformers' ``generate``), one token-id list per row,
    cut at the first end-of-turn token."""
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                         pad_token_id=pad_token_id, use_cache=True)
    new = out[:, inputs["input_ids"].shape[1]:].tolist()
    return [row[: row.index(eos_token_id)] if eos_token_id in row else row for row in new]

