"""The batched scoring engine: pay for the tokens that differ, not for every sequence.

Three optimisations, each switchable (``EngineOptions``), all equal to the plain padded path:

- feature cache: each distinct image in a call runs through the vision tower once; its features are
  scattered into every sequence holding it through ``inputs_embeds``.
- shared prefix: sequences that start with the same tokens and images (system text, instruction, prompt,
  the reference image) run that prefix once; its KV cache is reused by the batched suffixes (the
  candidate image and the question). Positions come from the family adapter on the full sequence, then
  are cut, so Qwen2-VL's multimodal rotary positions stay exact.
- packing: suffixes are batched by equal length, so no padding is computed (CPU default: torch has no
  varlen attention on CPU), or packed into one row with variable-length attention (``packing="varlen"``,
  see rdfast.attention). Off: right-padded batches.

All answer positions go through the fused head in one call (``RewardModel.head_logprobs``).
"""
from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import dataclass, replace

import torch


@dataclass
class EngineOptions:
    feature_cache: bool = True
    prefix_cache: bool = True
    #: True: batch suffixes of equal length (no padding; the CPU default). "varlen": pack suffixes into one
    #: row with variable-length attention (rdfast.attention; flash-attn or torch's kernel on CUDA).
    #: False: right-padded batches.
    packing: bool | str = True
    varlen_backend: str = "auto"
    #: most sequences (or images, for the vision tower) per forward; halved on CUDA out-of-memory
    batch_size: int = 16


def _cache_keyword(language_model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); use whichever this version takes."""
    params = inspect.signature(language_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


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


class Engine:
    """Answer log-probabilities for encoded items, with caching and packing. Used by RewardModel."""

    def __init__(self, rm):
        self.rm = rm
        self.base = getattr(rm.model, rm.model.base_model_prefix)
        self.lm = self.base.language_model
        self.embed = self.base.get_input_embeddings()
        self.cache_kw = _cache_keyword(self.lm)
        self.text_config = rm.model.config.get_text_config()
        self.stats = defaultdict(int)  # what the last calls computed: images encoded, tokens run

    # ---- vision ---------------------------------------------------------------------------------------
    def media_features(self, items: list, options: EngineOptions) -> list[list[torch.Tensor]]:
        """Features [n_tokens, D] of each item's images and videos. With the cache each distinct one is encoded
        once; without it every occurrence is (the baseline the cache is measured against)."""
        occurrences = [e for it in items for e in it.images]
        todo = list({id(e): e for e in occurrences}.values()) if options.feature_cache else occurrences
        feats = OutOfMemoryRetry(options.batch_size).map(self._encode_images, todo)
        self.stats["images_encoded"] += len(todo)
        if options.feature_cache:
            by_id = {id(e): f for e, f in zip(todo, feats)}
            feats = [by_id[id(e)] for e in occurrences]
        out, k = [], 0
        for it in items:
            out.append(feats[k : k + len(it.images)])
            k += len(it.images)
        return out

    def _encode_images(self, chunk: list) -> list[torch.Tensor]:
        return self.rm.adapter.features(self.base, chunk, self.rm.dtype, self.rm.device)

    # ---- language model -------------------------------------------------------------------------------
    def sequence_inputs(self, item, feats: list[torch.Tensor]):
        """(embeds [T, D], positions [P, T]) of one full sequence, its image features in place."""
        ids = torch.tensor(item.input_ids, device=self.rm.device)
        embeds = self.embed(ids)
        if feats:
            is_media = torch.isin(ids, torch.tensor(self.rm.adapter.media_token_ids, device=ids.device))
            embeds = embeds.masked_scatter(is_media[:, None], torch.cat(feats).to(embeds.dtype))
        return embeds, self.rm.adapter.position_ids(item.input_ids, item.images).to(self.rm.device)

    def prefix_length(self, item) -> int:
        """Tokens before the last media item's expansion: shared by items with the same context and reference."""
        if not item.images:
            return 0
        start = self.rm.tokenizer.convert_tokens_to_ids(self.rm.adapter.expansion_start_token)
        starts = [k for k, t in enumerate(item.input_ids) if t == start]
        return starts[-item.images[-1].n_starts]

    def _kv_cache_dropped(self) -> bool:
        """transformers drops the KV cache in layers that checkpoint activations in training mode; a shared
        prefix would then be silently lost, so it is not used."""
        return any(getattr(m, "gradient_checkpointing", False) and m.training for m in self.lm.modules())

    def answer_logprobs(self, items: list, options: EngineOptions) -> torch.Tensor:
        """log P(yes), log P(no) [N, 2] for encoded items, optimised as ``options`` allow."""
        return self.rm.head_logprobs(self.last_hidden(items, options), self.rm._answer_ids)[0]

    def last_hidden(self, items: list, options: EngineOptions) -> torch.Tensor:
        """The language model's final hidden state at each item's last token [N, H] (what the head reads),
        optimised as ``options`` allow; differentiable (training runs through it too)."""
        if options.prefix_cache and self._kv_cache_dropped():
            options = replace(options, prefix_cache=False)
        feats = self.media_features(items, options)
        groups: dict = defaultdict(list)
        for index, it in enumerate(items):
            cut = self.prefix_length(it) if options.prefix_cache else 0
            key = (tuple(it.input_ids[:cut]), tuple(id(e) for e in it.images[:-1])) if cut else None
            groups[key].append(index)
        # A prefix shared by a single sequence saves nothing: run it whole with the other loners.
        loners = [i for key, members in groups.items() if key is None or len(members) == 1 for i in members]
        hidden = [None] * len(items)
        for key, members in groups.items():
            if key is not None and len(members) > 1:
                self._run_group(items, feats, members, len(key[0]), options, hidden)
        if loners:
            self._run_group(items, feats, loners, 0, options, hidden)
        return torch.stack(hidden)

    def _run_group(self, items, feats, members, cut, options, hidden):
        """Run the shared prefix (``cut`` tokens) once, then the members' suffixes in batches."""
        full = {i: self.sequence_inputs(items[i], feats[i]) for i in members}
        prefix_kv = None
        if cut:
            embeds, positions = full[members[0]]
            ones = torch.ones(1, cut, dtype=torch.long, device=embeds.device)
            prefix_kv = self._forward(embeds[None, :cut], positions[:, None, :cut], ones, None)[1]
            self.stats["prefix_tokens"] += cut
        retry = OutOfMemoryRetry(options.batch_size)
        if options.packing == "varlen":
            self._install_varlen()
            hs = retry.map(lambda chunk: self._run_packed([full[i] for i in chunk], cut, prefix_kv, options), members)
            for i, h in zip(members, hs):
                hidden[i] = h
            return
        by_length = defaultdict(list)
        for i in members:
            by_length[full[i][0].shape[0] if options.packing else 0].append(i)
        for batch_members in by_length.values():
            hs = retry.map(lambda chunk: self._run_suffixes([full[i] for i in chunk], cut, prefix_kv), batch_members)
            for i, h in zip(batch_members, hs):
                hidden[i] = h

    def _run_suffixes(self, sequences, cut, prefix_kv) -> list[torch.Tensor]:
        """Right-padded suffix batch after a shared prefix; returns each row's hidden state at its last token."""
        lengths = [s[0].shape[0] - cut for s in sequences]
        longest = max(lengths)
        device = sequences[0][0].device
        positions = torch.zeros(sequences[0][1].shape[0], len(sequences), longest, dtype=torch.long, device=device)
        mask = torch.zeros(len(sequences), cut + longest, dtype=torch.long, device=device)
        mask[:, :cut] = 1
        rows = []
        for row, ((e, p), n) in enumerate(zip(sequences, lengths)):
            rows.append(e[cut:])
            positions[:, row, :n] = p[:, cut:]
            mask[row, cut : cut + n] = 1
        embeds = torch.stack([torch.nn.functional.pad(r, (0, 0, 0, longest - r.shape[0])) for r in rows])
        out, _ = self._forward(embeds, positions, mask, prefix_kv)
        self.stats["suffix_tokens"] += sum(lengths)
        self.stats["padded_tokens"] += len(sequences) * longest - sum(lengths)
        return [out[row, n - 1] for row, n in enumerate(lengths)]

    def _install_varlen(self):
        if self.text_config._attn_implementation != "rdfast_varlen":
            from .attention import install

            install(self.rm.model)

    def _run_packed(self, sequences, cut, prefix_kv, options) -> list[torch.Tensor]:
        """Suffixes packed into one row, each attending to the shared prefix and itself (varlen attention)."""
        from .attention import packed_suffix_layout

        lengths = [s[0].shape[0] - cut for s in sequences]
        embeds = torch.cat([e[cut:] for e, _ in sequences])[None]
        positions = torch.cat([p[:, cut:] for _, p in sequences], dim=1)[:, None]
        cu_q, cu_k, key_index = packed_suffix_layout(lengths, cut, embeds.device)
        mask = torch.ones(1, cut + embeds.shape[1], dtype=torch.long, device=embeds.device)
        out, _ = self._forward(embeds, positions, mask, prefix_kv, cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k,
                               max_length_q=max(lengths), max_length_k=max(lengths) + cut,
                               rdfast_key_index=key_index, rdfast_varlen_backend=options.varlen_backend)
        self.stats["suffix_tokens"] += sum(lengths)
        return [out[0, end - 1] for end in cu_q[1:].tolist()]

    def _forward(self, embeds, positions, mask, prefix_kv, **attention_kwargs):
        """One language-model forward; the prefix KV (per layer [1, heads, cut, dim]) is expanded to the batch."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.text_config)
        if prefix_kv is not None:
            b = embeds.shape[0]
            for layer, (k, v) in enumerate(prefix_kv):
                cache.update(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1), layer)
        if positions.shape[0] == 1:
            positions = positions[0]
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                      **{self.cache_kw: cache}, **attention_kwargs)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return out.last_hidden_state, kv
