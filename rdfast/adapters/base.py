"""What every family adapter provides."""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError
from ..images import pil_to_tensor


def size_value(size, key: str):
    """A field of an image processor's ``size`` (a dict in some transformers versions, a SizeDict in others)."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


@dataclass
class EncodedImage:
    """One image or video in the family's pixel layout.

    pixels: the family's pixel tensor (Qwen2-VL: flattened patches [n_patches, C*T*P*P]; InternVL: tiles or
    frames [n, 3, S, S]). expansion: the token string that replaces the item's placeholder; n_tokens: how
    many feature tokens it holds; n_starts: how many expansion-start tokens its expansion holds (one per
    InternVL video frame). meta: family data besides pixels (Qwen2-VL: grid [t, h, w]).
    kind: "image" or "video"; fps: the video's sampled frame rate.
    """

    pixels: torch.Tensor
    expansion: str
    n_tokens: int
    meta: tuple = ()
    kind: str = "image"
    n_starts: int = 1
    fps: float | None = None


class VisionAdapter(ABC):
    family = "base"
    #: the text a chat template renders for one {"type": "image"} / {"type": "video"} item (set per instance)
    image_placeholder: str
    video_placeholder: str
    #: the token that opens every image (or frame) expansion: shared prefixes are cut before the last one
    expansion_start_token: str

    def __init__(self, config, tokenizer, image_processor):
        self.config = config
        self.tokenizer = tokenizer
        ip = image_processor
        self.image_mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(3, 1, 1)
        self.image_std = torch.tensor(ip.image_std, dtype=torch.float32).view(3, 1, 1)

    # ---- pixels -------------------------------------------------------------------------------------
    @abstractmethod
    def encode_image(self, image) -> EncodedImage:
        """One loaded image (RGB PIL or float tensor [3, H, W] in [0, 1]) in the family's layout."""

    @abstractmethod
    def encode_video(self, frames: torch.Tensor, fps: float) -> EncodedImage:
        """One video (float frames [T, 3, H, W] in [0, 1], sampled at ``fps``) in the family's layout."""

    @abstractmethod
    def collate_images(self, encoded: list[EncodedImage], dtype, device) -> dict:
        """The model's pixel keyword inputs for media in sequence order (pixel_values, image_grid_thw, ...)."""

    @abstractmethod
    def features(self, base_model, encoded: list[EncodedImage], dtype, device) -> list[torch.Tensor]:
        """The vision tower + projector on ``encoded``: features [n_tokens, D] per item, in order."""

    @property
    @abstractmethod
    def media_token_ids(self) -> tuple[int, ...]:
        """Token ids whose input embeddings are replaced by media features."""

    def model_inputs(self, input_ids: torch.Tensor) -> dict:
        """Extra keyword inputs derived from the token ids (none by default)."""
        return {}

    def position_ids(self, input_ids: list[int], media: list[EncodedImage]) -> torch.Tensor:
        """Position ids [P, T] of one unpadded sequence (1-D rotary by default: P = 1)."""
        return torch.arange(len(input_ids)).view(1, -1)

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

    def expand_placeholders(self, text: str, media: list[EncodedImage], index: int | None = None) -> str:
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
