"""Generation: the model writes its reasons after (``explain``) or before (reasons-first scoring) the decision."""
from __future__ import annotations

import torch


def greedy_continuations(model, inputs: dict, max_new_tokens: int, eos_token_id: int, pad_token_id: int
                         ) -> list[list[int]]:
    """Greedy continuations of left-padded ``inputs`` (transformers' ``generate``), one token-id list per row,
    cut at the first end-of-turn token."""
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                         pad_token_id=pad_token_id, use_cache=True)
    new = out[:, inputs["input_ids"].shape[1]:].tolist()
    return [row[: row.index(eos_token_id)] if eos_token_id in row else row for row in new]



def sample_continuations(engine, item, features: list, head, samples: int, max_new_tokens: int, stop_ids,
                         filler_id: int, generator=None, temperature: float = 1.0) -> list[list[int]]:
    """``samples`` continuations of one encoded item that share its prompt and vision features.

    The prompt runs once; its cache (the family's ``expand_cache``) serves all samples, which then advance one
    token per step together. Inputs come from the family's hooks on each full sequence (``sequence_inputs``,
    cut to the new token), as the engine builds suffixes, so multimodal positions and extras stay exact.

    Args:
        engine: the scoring ``Engine`` (its language model, embedding and family).
        item: an ``EncodedItem``; features: its media features (``Engine.media_features``).
        head: the LM head (logits over the vocabulary from final hidden states).
        samples, max_new_tokens: how many continuations, and the most tokens each.
        stop_ids: token ids that end a continuation (end of turn, media placeholders, other special tokens);
            the stopping token is not part of it.
        filler_id: a plain token fed after a row has stopped (its later tokens are dropped).
        generator: None for greedy (argmax), else a CPU ``torch.Generator`` sampling from
            softmax(logits / temperature).
    Returns:
        One token-id list per sample.
    """
    family, device = engine.family, engine.device
    cached = family.prefix_cache_refusal() is None  # else every step runs the whole sequences

    def run(rows, cache, last_only):
        seqs = [family.sequence_inputs(engine.embedding, item.input_ids + r, item.media, features, device)
                for r in rows]
        cut = slice(-1, None) if last_only else slice(None)
        embeds = torch.stack([s.embeds[cut] for s in seqs])
        positions = torch.stack([s.positions[:, cut] for s in seqs], dim=1)
        extras = {k: torch.stack([s.extras[k][cut] for s in seqs]) for k in seqs[0].extras}
        mask = torch.ones(len(rows), len(item.input_ids) + len(rows[0]), dtype=torch.long, device=device)
        hidden = family.language_forward(engine.lm, embeds, positions, mask, cache, extras)
        return head(hidden[:, -1]).float()

    prompt_cache = family.new_cache(engine.text_config)
    logits = run([[]], prompt_cache, False).expand(samples, -1)
    cache = family.expand_cache(prompt_cache, samples, engine.text_config) if cached else None
    rows, fed, done = [[] for _ in range(samples)], [[] for _ in range(samples)], [False] * samples
    for step in range(max_new_tokens):
        if generator is None:
            tokens = logits.argmax(dim=-1).tolist()
        else:
            probs = torch.softmax(logits.cpu().double() / temperature, dim=-1)
            tokens = torch.multinomial(probs, 1, generator=generator)[:, 0].tolist()
        for r, token in enumerate(tokens):
            done[r] = done[r] or token in stop_ids
            if not done[r]:
                rows[r].append(token)
            fed[r].append(filler_id if done[r] else token)
        if all(done) or step == max_new_tokens - 1:
            break
        logits = run(fed, cache if cached else family.new_cache(engine.text_config), cached)
    return rows
