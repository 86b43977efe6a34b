"""Qwen3-VL (dense): Qwen2-VL's pixel layout with 16 px patches, interleaved multimodal RoPE, and deepstack.

Pixels: transformers maps ``qwen3_vl`` to the Qwen2-VL image processor (``Qwen2VLImageProcessorPil`` without
torchvision; patch 16, merge 2, temporal patch 2 in the real checkpoints' preprocessor_config.json), so images
are resized, normalised and patchified exactly as for Qwen2-VL (``Qwen2VLFamily``); only the sizes differ, and
they come from the processor.

Positions: for images, Qwen3-VL's ``get_rope_index`` places the tokens on the merged grid exactly as Qwen2-VL's
does (a still image has one time step); the interleaving of the three axes over the rotary frequencies happens
inside the language model's rotary embedding, from these same [3, T] positions.

Deepstack: the vision tower also returns, for each index in ``vision_config.deepstack_visual_indexes``, a
merged feature per image token; the language model adds the k-th of them to the hidden states at the image
positions after its k-th decoder layer. Here each media item's features carry those per-layer features
(``VisualFeatures``), so the engine's feature cache keeps them; ``sequence_inputs`` lays them out per position
(an extra, zero at text and padding), so the engine cuts them at a shared prefix with the tokens: image tokens
inside a prefix get their additions in the prefix forward (and so reach the prefix's keys and values), image
tokens in a suffix in the suffix forward. ``language_forward`` hands them to the language model through its
``visual_pos_masks`` / ``deepstack_visual_embeds`` inputs, the ones the full model itself uses.

Videos (per-frame timestamps, ``<t seconds>`` text between frames) are a later step of the Qwen3-VL work.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import InputError
from .base import EncodedMedia, SequenceInputs
from .qwen2_vl import Qwen2VLFamily


class VisualFeatures(NamedTuple):
    """One media item's features: ``tokens`` [n_tokens, D] replace its media tokens' embeddings;
    ``deepstack`` [n_tokens, L, D] is added after the first L decoder layers (L = len(deepstack_visual_indexes))."""

    tokens: torch.Tensor
    deepstack: torch.Tensor


class Qwen3VLFamily(Qwen2VLFamily):
    name = "qwen3_vl"

    def __init__(self, config, tokenizer, image_processor):
        super().__init__(config, tokenizer, image_processor)
        self.tokens_per_second = None  # Qwen2.5-VL's video time spacing; Qwen3-VL uses timestamps instead
        self.n_deepstack = len(config.vision_config.deepstack_visual_indexes or ())

    def encode_video(self, frames: torch.Tensor, fps: float) -> EncodedMedia:
        raise InputError("videos are not supported for Qwen3-VL yet (its per-frame timestamps come in a later "
                         "step); score images, or use a Qwen2-VL / Qwen2.5-VL / InternVL reward model for videos")

    def collate_images(self, encoded, dtype, device) -> dict:
        if any(e.kind == "video" for e in encoded):
            raise InputError("videos are not supported for Qwen3-VL yet")
        return super().collate_images(encoded, dtype, device)

    def features(self, base_model, encoded, dtype, device) -> list[VisualFeatures]:
        """Main and deepstack features per item, from one vision-tower call."""
        pixels = self.collate_images(encoded, dtype, device)
        sizes = [e.n_tokens for e in encoded]
        out = base_model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"])
        tokens = self.split_features(out, sizes)
        # 5.24 splits each deepstack layer per image; 5.17 returns each layer whole [n_all_tokens, D]
        layers = [torch.cat(list(f)) if isinstance(f, (list, tuple)) else f for f in out.deepstack_features]
        if len(layers) != self.n_deepstack:
            raise RuntimeError(f"the vision tower returned {len(layers)} deepstack features, the config names "
                               f"{self.n_deepstack}")
        width = tokens[0].shape[-1] if tokens else 0
        stacked = (torch.stack(layers, dim=1) if layers else torch.zeros(sum(sizes), 0, width, device=device))
        return [VisualFeatures(t, d) for t, d in zip(tokens, stacked.split(sizes))]

    def sequence_inputs(self, embedding, input_ids, media, features, device) -> SequenceInputs:
        """Embeddings with the main features in place, plus two extras the engine cuts and pads with the
        tokens: ``deepstack`` [T, L, D] (each image token's per-layer features, zero elsewhere) and
        ``visual`` [T] (1 at image tokens)."""
        seq = super().sequence_inputs(embedding, input_ids, media, [f.tokens for f in features], device)
        ids = torch.tensor(input_ids, device=device)
        visual = torch.isin(ids, torch.tensor(self.media_token_ids, device=device))
        deepstack = seq.embeds.new_zeros(len(input_ids), self.n_deepstack, seq.embeds.shape[-1])
        if features and self.n_deepstack:
            rows = torch.cat([f.deepstack for f in features]).to(deepstack.dtype)
            deepstack = deepstack.masked_scatter(visual[:, None, None], rows)
        seq.extras = {"deepstack": deepstack, "visual": visual.long()}
        return seq

    def language_forward(self, language_model, embeds, positions, attention_mask, cache, extras,
                         **attention_kwargs) -> torch.Tensor:
        visual = extras["visual"].bool()  # [B, T]; padding is 0
        deepstack = None
        if self.n_deepstack and bool(visual.any()):
            layers = extras["deepstack"]  # [B, T, L, D]
            deepstack = [layers[:, :, k][visual] for k in range(self.n_deepstack)]  # each [n_visual, D]
        return super().language_forward(language_model, embeds, positions, attention_mask, cache, extras,
                                        visual_pos_masks=visual if deepstack is not None else None,
                                        deepstack_visual_embeds=deepstack, **attention_kwargs)
