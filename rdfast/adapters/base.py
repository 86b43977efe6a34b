"""What every family adapter provides."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from ..images import InputError, pil_to_tensor


def size_value(size, key: str):
    """A field of an image processor's ``size`` (a dict in some transformers versions, a SizeDict in others)."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


@dataclass
class EncodedImage:
    """One image in the family's pixel layout.

    pixels: the family's pixel tensor for this image (Qwen2-VL: flattened patches [n_patches, C*T*P*P];
    InternVL: tiles [n_tiles, 3, S, S]). expansion: the token string that replaces the image's placeholder;
    n_tokens: how many image-feature tokens it holds. meta: family data the model needs besides pixels
    (Qwen2-VL: grid [t, h, w]).
    """

    pixels: torch.Tensor
    expansion: str
    n_tokens: int
    meta: tuple = ()


class VisionAdapter(ABC):
    family = "base"
    #: the text a chat template renders for one {"type": "image"} item (set per instance)
    image_placeholder: str

    def __init__(self, config, tokenizer, image_processor):
        self.config = config
        self.tokenizer = tokenizer
        ip = image_processor
        self.image_mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(3, 1, 1)
        self.image_std = torch.tensor(ip.image_std, dtype=torch.float32).view(3, 1, 1)

    # ---- images -------------------------------------------------------------------------------------
    @abstractmethod
    def encode_image(self, image) -> EncodedImage:
        """One loaded image (RGB PIL or float tensor [3, H, W] in [0, 1]) in the family's layout."""

    @abstractmethod
    def collate_images(self, encoded: list[EncodedImage], dtype, device) -> dict:
        """The model's pixel keyword inputs for images in sequence order (e.g. pixel_values, image_grid_thw)."""

    def model_inputs(self, input_ids: torch.Tensor) -> dict:
        """Extra keyword inputs derived from the token ids (none by default)."""
        return {}

    @abstractmethod
    def image_features(self, base_model, pixels: dict):
        """The vision tower + projector on collated pixels (the output of ``collate_images``)."""

    def position_ids(self, input_ids: list[int], images: list[EncodedImage]) -> torch.Tensor:
        """Position ids [P, T] of one unpadded sequence (1-D rotary by default: P = 1)."""
        return torch.arange(len(input_ids)).view(1, -1)

    # ---- shared helpers -----------------------------------------------------------------------------
    def resized(self, image, height: int, width: int) -> torch.Tensor:
        """Resize to (height, width) and return float32 [3, H, W] in [0, 1].

        PIL images are resized with PIL bicubic, exactly as the HF ``*ImageProcessorPil`` classes do;
        tensors with torch's antialiased bicubic (differentiable; close to PIL, not bit-equal).
        Same-size inputs are never resampled.
        """
        if isinstance(image, Image.Image):
            if (image.height, image.width) != (height, width):
                image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
            return pil_to_tensor(image)
        image = image.to(torch.float32)
        if tuple(image.shape[1:]) != (height, width):
            image = F.interpolate(image[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False)[0]
            image = image.clamp(0.0, 1.0)  # PIL clamps to uint8 range too
        return image

    def normalized(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.image_mean.to(image.device)) / self.image_std.to(image.device)

    def expand_placeholders(self, text: str, expansions: list[str], index: int | None = None) -> str:
        """Replace the i-th image placeholder of ``text`` by ``expansions[i]``."""
        pieces = text.split(self.image_placeholder)
        if len(pieces) - 1 != len(expansions):
            raise InputError(
                f"the rendered prompt holds {len(pieces) - 1} image placeholders for {len(expansions)} images; "
                f"does the prompt text contain the reserved token {self.image_placeholder!r}?",
                index,
                "prompts",
            )
        out = [pieces[0]]
        for expansion, piece in zip(expansions, pieces[1:]):
            out += [expansion, piece]
        return "".join(out)
