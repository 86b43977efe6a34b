"""The batched scoring engine: pay for the tokens that differ, not for every sequence.

It turns encoded items into the language model's final hidden state at each item's last token (what the
reward head reads); it knows nothing of heads, probabilities or the RewardModel. Three optimisations, each
switchable (``EngineOptions``), all equal to the plain padded path:

- feature cache: each distinct image or video in a call runs through the vision tower once; its features
  are placed into every sequence holding it through ``inputs_embeds``.
- shared prefix: items are grouped by their longest common prefix of tokens and media (the instruction and
  prompt, a reference image, one image asked many questions, one prompt followed by several generated
  rationales); each group's prefix runs once and its cache serves the members' suffixes. Positions come
  from the family on the full sequence, then are cut, so multimodal rotary positions stay exact.
- batching: suffixes are batched by equal length ("length": no padding computed), packed into one row with
  variable-length attention ("varlen", rdfast.attention), or right-padded ("padded"). With both caches off
  and "padded", the engine runs the plain transformers forward on padded batches: the reference path.

Everything family-specific (features, positions, per-position extras, the cache a prefix hands on, the
language-model call) goes through the family's hooks (rdfast/families/base.py).
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, replace

import torch

from .attention import install as install_varlen
from .attention import packed_suffix_layout
from .encoding import EncodedItem, collate, last_positions
from .families.base import Family, SequenceInputs

BATCHING = ("length", "varlen", "padded")
#: a group's prefix costs one extra forward: it must save at least this many tokens to be worth running apart
GROUP_OVERHEAD_TOKENS = 32


@dataclass
class EngineOptions:
    """How the engine runs a call.

    Attributes:
        feature_cache: encode each distinct image or video once per call (default True).
        prefix_cache: run each group's shared prefix once (default True).
        batching: "length" (suffixes of equal length batched together, no padding; default), "varlen"
            (suffixes packed into one row with variable-length attention: flash-attn or torch's kernel on
            CUDA, a reference elsewhere) or "padded" (right-padded suffix batches).
        varlen_backend: "auto", "flash_attn", "torch" or "reference" (rdfast.attention).
        batch_size: most sequences (or media, for the vision tower) per forward; halved on CUDA out-of-memory.
    """

    feature_cache: bool = True
    prefix_cache: bool = True
    batching: str = "length"
    varlen_backend: str = "auto"
    batch_size: int = 16

    def __post_init__(self):
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {self.batching!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    @property
    def plain(self) -> bool:
        """All optimisations off: the plain padded transformers forward."""
        return not self.feature_cache and not self.prefix_cache and self.batching == "padded"


_NOTICED: set[str] = set()


def notice_once(message: str) -> None:
    """Warn with ``message`` the first time it comes up in this process (an engine switch the family turns off)."""
    if message not in _NOTICED:
        _NOTICED.add(message)
        warnings.warn(message, stacklevel=3)


class OutOfMemoryRetry:
    """Run ``fn(chunk)`` over ``items`` in chunks of ``size``, halving the size on CUDA out-of-memory."""

    def __init__(self, size: int):
        self.size = max(1, size)

    def map(self, fn, items: list) -> list:
        out, start = [], 0
        while start < len(items):
            chunk = items[start : start + self.size]
            try:
                out.extend(fn(chunk))
            except torch.cuda.OutOfMemoryError:
                if self.size == 1:
                    raise
                self.size //= 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            start += len(chunk)
        return out


def sharing_keys(item: EncodedItem, media_token_ids) -> list[tuple[int, int, int]]:
    """One key per position: equal keys mean equal inputs there. Text is its token id; a media token is
    (token id, the media object, its offset), so equal-looking media tokens of different media differ."""
    media_ids = set(media_token_ids)
    keys, k, offset = [], 0, 0
    for token in item.input_ids:
        if token in media_ids:
            keys.append((token, id(item.media[k]), offset))
            offset += 1
            if offset == item.media[k].n_tokens:
                k, offset = k + 1, 0
        else:
            keys.append((token, -1, 0))
    return keys


def prefix_groups(keys: list[list], overhead: int = GROUP_OVERHEAD_TOKENS) -> list[tuple[list[int], int]]:
    """Partition items into (members, cut) groups by shared prefixes, fewest tokens run in all.

    Items are sorted by their keys, so items sharing a prefix are neighbours; a run of neighbours shares the
    smallest common prefix of adjacent pairs. A run is split at its weakest links when the parts together
    run fewer tokens (each prefix counted once plus ``overhead``). Every member keeps at least one suffix
    token; cut 0 means no shared prefix.
    """
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    links = []
    for a, b in zip(order, order[1:]):
        n, ka, kb = 0, keys[a], keys[b]
        limit = min(len(ka), len(kb))
        while n < limit and ka[n] == kb[n]:
            n += 1
        links.append(n)

    def best(lo: int, hi: int) -> tuple[int, list]:
        members = order[lo:hi]
        total = sum(len(keys[i]) for i in members)
        if hi - lo == 1:
            return total, [(members, 0)]
        weakest = min(links[lo : hi - 1])
        cut = min(weakest, min(len(keys[i]) for i in members) - 1)
        whole = (total, [(members, 0)])  # no sharing
        if cut > 0 and (len(members) - 1) * cut > overhead:
            whole = (total - (len(members) - 1) * cut + overhead, [(members, cut)])
        if weakest == max(links[lo : hi - 1]):
            return whole
        cost, groups, start = 0, [], lo
        for k in range(lo, hi - 1):
            if links[k] == weakest:
                part = best(start, k + 1)
                cost, groups, start = cost + part[0], groups + part[1], k + 1
        part = best(start, hi)
        split = (cost + part[0], groups + part[1])
        return split if split[0] < whole[0] else whole

    return best(0, len(keys))[1] if keys else []


class Engine:
    """Final hidden states at answer positions for encoded items, with caching and batching.

    Args:
        model: the transformers VLM (``AutoModelForImageTextToText``); its base model and language model run.
        family: the VLM family of ``model`` (rdfast.families).
        pad_token_id: the padding id for the plain padded path.
    """

    def __init__(self, model, family: Family, pad_token_id: int):
        self.model, self.family, self.pad_token_id = model, family, pad_token_id
        self.base = getattr(model, model.base_model_prefix)
        self.lm = self.base.language_model
        self.embedding = self.base.get_input_embeddings()
        self.text_config = model.config.get_text_config()
        self.stats = defaultdict(int)  # what the last calls computed: media encoded, tokens run, groups

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    # ---- public -----------------------------------------------------------------------------------------
    def last_hidden(self, items: list[EncodedItem], options: EngineOptions, features: list | None = None
                    ) -> torch.Tensor:
        """The language model's final hidden state at each item's last token: [N, H] in the model's dtype,
        in item order; differentiable (training runs through it too). ``features``: each item's media features
        (``media_features``) when the caller has them already (reasons-first reuses its generation's)."""
        if options.plain:
            return self._plain_last_hidden(items, options.batch_size)
        if options.prefix_cache and self._kv_cache_dropped():
            options = replace(options, prefix_cache=False)
        if options.prefix_cache and (refusal := self.family.prefix_cache_refusal()):
            notice_once(f"{self.family.name}: prefix_cache runs off: {refusal}")
            options = replace(options, prefix_cache=False)
        if options.batching == "varlen" and not self.family.supports_varlen:
            notice_once(f"{self.family.name}: batching='varlen' runs as 'length': this family's per-sequence state "
                        "(e.g. linear attention's) cannot be packed across sequences")
            options = replace(options, batching="length")
        feats = features if features is not None else self.media_features(items, options)
        if options.prefix_cache:
            media_ids = self.family.media_token_ids
            groups = prefix_groups([sharing_keys(it, media_ids) for it in items])
        else:
            groups = [(list(range(len(items))), 0)]
        hidden = [None] * len(items)
        loners = [i for members, cut in groups if cut == 0 for i in members]
        for members, cut in groups:
            if cut:
                self._run_group(items, feats, members, cut, options, hidden)
        if loners:
            self._run_group(items, feats, loners, 0, options, hidden)
        return torch.stack(hidden)

    def sequence_hidden(self, inputs: dict) -> torch.Tensor:
        """Final hidden states [B, T, H] of the base model for collated inputs (``encoding.collate``)."""
        return self.base(**inputs, use_cache=False).last_hidden_state

    # ---- vision -----------------------------------------------------------------------------------------
    def media_features(self, items: list[EncodedItem], options: EngineOptions) -> list[list]:
        """Features of each item's media, per item in sequence order. With the cache each distinct one is
        encoded once; without it every occurrence is (the baseline the cache is measured against)."""
        occurrences = [e for it in items for e in it.media]
        todo = list({id(e): e for e in occurrences}.values()) if options.feature_cache else occurrences
        feats = OutOfMemoryRetry(options.batch_size).map(
            lambda chunk: self.family.features(self.base, chunk, self.dtype, self.device), todo)
        self.stats["images_encoded"] += len(todo)
        if options.feature_cache:
            by_id = {id(e): f for e, f in zip(todo, feats)}
            feats = [by_id[id(e)] for e in occurrences]
        out, k = [], 0
        for it in items:
            out.append(feats[k : k + len(it.media)])
            k += len(it.media)
        return out

    # ---- language model ---------------------------------------------------------------------------------
    def _plain_last_hidden(self, items: list[EncodedItem], batch_size: int) -> torch.Tensor:
        """The unoptimised reference: left-padded micro-batches of full sequences through the model."""
        out = []
        for start in range(0, len(items), batch_size):
            inputs = collate(items[start : start + batch_size], self.family, self.pad_token_id, self.dtype,
                             self.device, "left")
            hidden = self.sequence_hidden(inputs)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            out.append(hidden[rows, last_positions(inputs["attention_mask"])])
        return torch.cat(out)

    def _kv_cache_dropped(self) -> bool:
        """transformers drops the KV cache in layers that checkpoint activations in training mode; a shared
        prefix would then be silently lost, so it is not used."""
        return any(getattr(m, "gradient_checkpointing", False) and m.training for m in self.lm.modules())

    def _run_group(self, items, feats, members, cut, options, hidden):
        """Run the shared prefix (``cut`` positions) once, then the members' suffixes in batches."""
        full = {i: self.family.sequence_inputs(self.embedding, items[i].input_ids, items[i].media, feats[i],
                                               self.device) for i in members}
        prefix = None
        if cut:
            first = full[members[0]]
            prefix = self.family.new_cache(self.text_config)
            ones = torch.ones(1, cut, dtype=torch.long, device=self.device)
            self.family.language_forward(self.lm, first.embeds[None, :cut], first.positions[:, None, :cut], ones,
                                         prefix, {k: v[None, :cut] for k, v in first.extras.items()})
            self.stats["prefix_tokens"] += cut
            self.stats["groups"] += 1
        retry = OutOfMemoryRetry(options.batch_size)
        if options.batching == "varlen":
            install_varlen(self.model)
            batches = [members]
            run = lambda chunk: self._run_packed([full[i] for i in chunk], cut, prefix, options)  # noqa: E731
        else:
            by_length = defaultdict(list)
            for i in members:
                by_length[full[i].embeds.shape[0] if options.batching == "length" else 0].append(i)
            batches = list(by_length.values())
            run = lambda chunk: self._run_suffixes([full[i] for i in chunk], cut, prefix)  # noqa: E731
        for batch in batches:
            for i, h in zip(batch, retry.map(run, batch)):
                hidden[i] = h

    def _cache_for(self, prefix, batch_size: int):
        if prefix is None:
            return self.family.new_cache(self.text_config)
        return self.family.expand_cache(prefix, batch_size, self.text_config)

    def _run_suffixes(self, sequences: list[SequenceInputs], cut: int, prefix) -> list[torch.Tensor]:
        """Right-padded suffix batch after a shared prefix; returns each row's hidden state at its last token."""
        lengths = [s.embeds.shape[0] - cut for s in sequences]
        longest, b = max(lengths), len(sequences)
        positions = torch.zeros(sequences[0].positions.shape[0], b, longest, dtype=torch.long, device=self.device)
        mask = torch.zeros(b, cut + longest, dtype=torch.long, device=self.device)
        mask[:, :cut] = 1
        for row, (s, n) in enumerate(zip(sequences, lengths)):
            positions[:, row, :n] = s.positions[:, cut:]
            mask[row, cut : cut + n] = 1

        def padded(rows):  # [T_i, ...] each -> [B, longest, ...], zeros after each row's end
            return torch.stack([torch.nn.functional.pad(r, (0, 0) * (r.dim() - 1) + (0, longest - r.shape[0]))
                                for r in rows])

        embeds = padded([s.embeds[cut:] for s in sequences])
        extras = {k: padded([s.extras[k][cut:] for s in sequences]) for k in sequences[0].extras}
        out = self.family.language_forward(self.lm, embeds, positions, mask, self._cache_for(prefix, b), extras)
        self.stats["suffix_tokens"] += sum(lengths)
        self.stats["padded_tokens"] += b * longest - sum(lengths)
        return [out[row, n - 1] for row, n in enumerate(lengths)]

    def _run_packed(self, sequences: list[SequenceInputs], cut: int, prefix, options) -> list[torch.Tensor]:
        """Suffixes packed into one row, each attending to the shared prefix and itself (varlen attention)."""
        lengths = [s.embeds.shape[0] - cut for s in sequences]
        embeds = torch.cat([s.embeds[cut:] for s in sequences])[None]
        positions = torch.cat([s.positions[:, cut:] for s in sequences], dim=1)[:, None]
        extras = {k: torch.cat([s.extras[k][cut:] for s in sequences])[None] for k in sequences[0].extras}
        cu_q, cu_k, key_index = packed_suffix_layout(lengths, cut, self.device)
        mask = torch.ones(1, cut + embeds.shape[1], dtype=torch.long, device=self.device)
        out = self.family.language_forward(
            self.lm, embeds, positions, mask, self._cache_for(prefix, 1), extras, cu_seq_lens_q=cu_q,
            cu_seq_lens_k=cu_k, max_length_q=max(lengths), max_length_k=max(lengths) + cut,
            rdfast_key_index=key_index, rdfast_varlen_backend=options.varlen_backend)
        self.stats["suffix_tokens"] += sum(lengths)
        return [out[0, end - 1] for end in cu_q[1:].tolist()]
