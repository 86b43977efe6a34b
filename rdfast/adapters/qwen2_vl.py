"""Qwen2-VL and Qwen2.5-VL: dynamic-resolution patches, merged 2x2 into image tokens, multimodal RoPE."""
from __future__ import annotations

import math

import torch

from ..images import InputError, image_size
from .base import EncodedImage, VisionAdapter, size_value


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target (height, width) of the Qwen2-VL processor: multiples of ``factor``, area within
    [min_pixels, max_pixels], aspect ratio kept as closely as possible."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return h, w


class Qwen2VLAdapter(VisionAdapter):
    family = "qwen2_vl"

    def __init__(self, config, tokenizer, image_processor):
        super().__init__(config, tokenizer, image_processor)
        ip = image_processor
        self.patch_size = ip.patch_size
        self.merge_size = ip.merge_size
        self.temporal_patch_size = ip.temporal_patch_size
        self.min_pixels = getattr(ip, "min_pixels", None) or size_value(ip.size, "shortest_edge")
        self.max_pixels = getattr(ip, "max_pixels", None) or size_value(ip.size, "longest_edge")
        tok = tokenizer.convert_ids_to_tokens
        self.image_token_id = config.image_token_id
        self.video_token_id = config.video_token_id
        self.image_token = tok(config.image_token_id)
        self.vision_start = tok(config.vision_start_token_id)
        self.vision_end = tok(config.vision_end_token_id)
        self.image_placeholder = f"{self.vision_start}{self.image_token}{self.vision_end}"
        self.expansion_start_token = self.vision_start

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        factor = self.patch_size * self.merge_size
        return smart_resize(height, width, factor, self.min_pixels, self.max_pixels)

    def encode_image(self, image) -> EncodedImage:
        try:
            height, width = self.target_size(*image_size(image))
        except ValueError as err:
            raise InputError(str(err)) from err
        pixels = self.normalized(self.resized(image, height, width))
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        grid_h, grid_w = height // p, width // p
        # [C, H, W] -> patches ordered so each merge_size x merge_size block of patches is contiguous,
        # the still image repeated over the temporal patch, flattened as (C, T, P, P).
        x = pixels.reshape(3, grid_h // m, m, p, grid_w // m, m, p).permute(1, 4, 2, 5, 0, 3, 6)
        x = x.unsqueeze(5).expand(*x.shape[:5], t, p, p)
        patches = x.reshape(grid_h * grid_w, 3 * t * p * p)
        n_tokens = grid_h * grid_w // (m * m)
        expansion = f"{self.vision_start}{self.image_token * n_tokens}{self.vision_end}"
        return EncodedImage(patches, expansion, n_tokens, (1, grid_h, grid_w))

    def collate_images(self, encoded, dtype, device) -> dict:
        return {
            "pixel_values": torch.cat([e.pixels for e in encoded]).to(device=device, dtype=dtype),
            "image_grid_thw": torch.tensor([e.meta for e in encoded], dtype=torch.long, device=device),
        }

    def model_inputs(self, input_ids: torch.Tensor) -> dict:
        # transformers 5.x computes multimodal rotary positions from these (0 text, 1 image, 2 video).
        types = torch.zeros_like(input_ids)
        types[input_ids == self.image_token_id] = 1
        types[input_ids == self.video_token_id] = 2
        return {"mm_token_type_ids": types}

    def image_features(self, base_model, pixels: dict):
        return base_model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"])

    def position_ids(self, input_ids: list[int], images: list[EncodedImage]) -> torch.Tensor:
        """Multimodal rotary positions [3, T] (temporal, height, width) of one unpadded sequence.

        Text advances all three by one per token; an image's tokens sit on its merged grid starting at the
        current position, and the text after it resumes at start + max(grid_h, grid_w) / merge_size.
        """
        ids = torch.tensor(input_ids)
        is_image = (ids == self.image_token_id).tolist()
        positions = torch.empty(3, len(input_ids), dtype=torch.long)
        grids = iter(images)
        current, k = 0, 0
        while k < len(input_ids):
            if not is_image[k]:
                end = k
                while end < len(input_ids) and not is_image[end]:
                    end += 1
                positions[:, k:end] = torch.arange(current, current + end - k)
                current += end - k
            else:
                _, grid_h, grid_w = next(grids).meta
                h, w = grid_h // self.merge_size, grid_w // self.merge_size
                end = k + h * w
                positions[0, k:end] = current
                positions[1, k:end] = current + torch.arange(h).repeat_interleave(w)
                positions[2, k:end] = current + torch.arange(w).repeat(h)
                current += max(h, w)
            k = end
        return positions
