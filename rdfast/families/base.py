"""What every VLM family module provides: pixels, media tokens, positions, and the engine's hooks.

The engine (rdfast/engine.py) is family-agnostic: everything it needs from a family comes through the
methods below. A family whose language model takes more than embeddings and positions (per-layer inputs
such as Qwen3-VL's deepstack features, or recurrent state such as Qwen3.5's linear attention) overrides
``sequence_inputs`` (per-position extras, cut and batched by the engine with the tokens),
``language_forward`` (how the batch reaches the language model) and ``new_cache``/``expand_cache`` (the
state a shared prefix hands to its suffixes).
"""
from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError
from ..images import pil_to_tensor


def size_value(size, key: str):
    """A field of an image processor's ``size`` (a dict in some transformers versions, a SizeDict in others)."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


@dataclass
class EncodedMedia:
    """One image or video in the family's pixel layout.

    pixels: the family's pixel tensor (Qwen2-VL: flattened patches [n_patches, C*T*P*P]; InternVL: tiles or
    frames [n, 3, S, S]). expansion: the token string that replaces the item's placeholder; n_tokens: how
    many feature tokens it holds. meta: family data besides pixels (Qwen2-VL: grid [t, h, w]).
    kind: "image" or "video"; fps: the video's sampled frame rate.
    """

    pixels: torch.Tensor
    expansion: str
    n_tokens: int
    meta: tuple = ()
    kind: str = "image"
    fps: float | None = None


@dataclass
class SequenceInputs:
    """One full sequence as the language model takes it.

    embeds: input embeddings [T, D] with media features in place; positions: position ids [P, T] (P = 3 for
    multimodal rotary positions); extras: per-position family inputs, each [T, ...] (time first), which the
    engine cuts at a shared prefix and right-pads with zeros exactly as it does the embeddings.
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    extras: dict = field(default_factory=dict)


def cache_keyword(language_model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); the keyword this version takes."""
    params = inspect.signature(language_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class Family(ABC):
    name = "base"
    #: the text a chat template renders for one {"type": "image"} / {"type": "video"} item (set per instance)
    image_placeholder: str
    video_placeholder: str
    #: whether suffixes may be packed into one row (varlen attention): not for recurrent state
    supports_varlen = True
    #: variables every chat-template rendering gets (Qwen3.5: {"enable_thinking": False}); never mutated
    chat_template_kwargs: dict = {}

    def __init__(self, config, tokenizer, image_processor, video_processor: dict | None = None):
        self.config = config
        self.tokenizer = tokenizer
        # the checkpoint's video_preprocessor_config.json as data ({} without one): HF video processors need torchvision
        self.video_settings = dict(video_processor or {})
        ip = image_processor
        self.image_mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(3, 1, 1)
        self.image_std = torch.tensor(ip.image_std, dtype=torch.float32).view(3, 1, 1)

    # ---- pixels -------------------------------------------------------------------------------------
    @abstractmethod
    def encode_image(self, image) -> EncodedMedia:
        """One loaded image (RGB PIL or float tensor [3, H, W] in [0, 1]) in the family's layout."""

    @abstractmethod
    def encode_video(self, frames: torch.Tensor, fps: float) -> EncodedMedia:
        """One video (float frames [T, 3, H, W] in [0, 1], sampled at ``fps``) in the family's layout."""

    @abstractmethod
    def collate_images(self, encoded: list[EncodedMedia], dtype, device) -> dict:
        """The model's pixel keyword inputs for media in sequence order (pixel_values, image_grid_thw, ...)."""

    @abstractmethod
    def features(self, base_model, encoded: list[EncodedMedia], dtype, device) -> list[torch.Tensor]:
        """The vision tower + projector on ``encoded``: features [n_tokens, D] per item, in order."""

    @property
    @abstractmethod
    def media_token_ids(self) -> tuple[int, ...]:
        """Token ids whose input embeddings are replaced by media features."""

    def model_inputs(self, input_ids: torch.Tensor) -> dict:
        """Extra keyword inputs derived from the token ids (none by default)."""
        return {}

    def position_ids(self, input_ids: list[int], media: list[EncodedMedia]) -> torch.Tensor:
        """Position ids [P, T] of one unpadded sequence (1-D rotary by default: P = 1)."""
        return torch.arange(len(input_ids)).view(1, -1)

    # ---- the engine's hooks -------------------------------------------------------------------------
    def sequence_inputs(self, embedding, input_ids: list[int], media: list[EncodedMedia], features: list,
                        device) -> SequenceInputs:
        """One full sequence: token embeddings with each media item's features [n_tokens, D] in place of its
        media tokens, and its positions. ``features``: what ``features`` returned for this sequence's media."""
        ids = torch.tensor(input_ids, device=device)
        embeds = embedding(ids)
        if features:
            is_media = torch.isin(ids, torch.tensor(self.media_token_ids, device=device))
            embeds = embeds.masked_scatter(is_media[:, None], torch.cat(features).to(embeds.dtype))
        return SequenceInputs(embeds, self.position_ids(input_ids, media).to(device))

    def language_forward(self, language_model, embeds: torch.Tensor, positions: torch.Tensor,
                         attention_mask: torch.Tensor, cache, extras: dict, **attention_kwargs) -> torch.Tensor:
        """One language-model forward over a batch; returns the final hidden states [B, T, H].

        embeds [B, T, D]; positions [P, B, T]; attention_mask [B, past + T] (1 = attend); cache: from
        ``new_cache``/``expand_cache``, filled in place; extras: the batched ``SequenceInputs.extras``
        ([B, T, ...], zero at padding); attention_kwargs: varlen layout for the packed path.
        """
        if positions.shape[0] == 1:
            positions = positions[0]
        out = language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions,
                             use_cache=True, **{cache_keyword(language_model): cache}, **attention_kwargs)
        return out.last_hidden_state

    def prefix_cache_refusal(self) -> str | None:
        """Why this family cannot share prefixes with the installed libraries (the engine then runs every
        sequence whole and says so once), or None when it can."""
        return None

    def new_cache(self, text_config):
        """An empty cache for one forward (transformers' DynamicCache by default)."""
        from transformers import DynamicCache  # heavy

        return DynamicCache(config=text_config)

    def expand_cache(self, cache, batch_size: int, text_config):
        """A new cache holding a shared prefix's state (``cache``, batch 1) for ``batch_size`` suffixes;
        ``cache`` itself is left unchanged (it serves every suffix batch)."""
        out = self.new_cache(text_config)
        for layer, entry in enumerate(cache.layers):
            out.update(entry.keys.expand(batch_size, -1, -1, -1), entry.values.expand(batch_size, -1, -1, -1), layer)
        return out

    # ---- shared helpers -----------------------------------------------------------------------------
    def resized(self, image, height: int, width: int) -> torch.Tensor:
        """Resize to (height, width) and return float32 [3, H, W] (or [T, 3, H, W]) in [0, 1].

        PIL images are resized with PIL bicubic, exactly as the HF ``*ImageProcessorPil`` classes do;
        tensors with torch's antialiased bicubic (differentiable; close to PIL, not bit-equal).
        Same-size inputs are never resampled.
        """
        if isinstance(image, Image.Image):
            if (image.height, image.width) != (height, width):
                image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
            return pil_to_tensor(image)
        if image.dtype not in (torch.float32, torch.float64):  # float64 stays float64 (reference checks)
            image = image.float()
        if tuple(image.shape[-2:]) != (height, width):
            batch = image if image.dim() == 4 else image[None]
            batch = F.interpolate(batch, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
            image = (batch if image.dim() == 4 else batch[0]).clamp(0.0, 1.0)  # PIL clamps to uint8 range too
        return image

    def normalized(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.image_mean.to(image)) / self.image_std.to(image)

    def expand_placeholders(self, text: str, media: list[EncodedMedia], index: int | None = None) -> str:
        """Replace the i-th image/video placeholder of ``text`` by ``media[i].expansion``."""
        placeholders = {"image": self.image_placeholder, "video": self.video_placeholder}
        pattern = "|".join(f"(?P<{kind}>{re.escape(p)})" for kind, p in placeholders.items())
        found = list(re.finditer(pattern, text))
        kinds = [m.lastgroup for m in found]
        if kinds != [m.kind for m in media]:
            raise InputError(
                f"the rendered prompt holds placeholders for {kinds or 'no media'} but the item has "
                f"{[m.kind for m in media]}; does the prompt text contain a reserved token "
                f"({self.image_placeholder!r} or {self.video_placeholder!r})?",
                index,
                "prompts",
            )
        out, end = [], 0
        for match, item in zip(found, media):
            out += [text[end : match.start()], item.expansion]
            end = match.end()
        return "".join(out) + text[end:]

    @staticmethod
    def split_features(output, sizes: list[int]) -> list[torch.Tensor]:
        """Per-item features [n_tokens, D] from a get_*_features call, whatever container this version returns."""
        feats = getattr(output, "pooler_output", output)
        if isinstance(feats, torch.Tensor):
            feats = feats.reshape(-1, feats.shape[-1]).split(sizes)
        return [f.reshape(-1, f.shape[-1]) for f in feats]
