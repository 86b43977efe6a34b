"""Qwen2-VL and Qwen2.5-VL: dynamic-resolution patches, merged 2x2 into image tokens, multimodal RoPE."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..images import image_size
from .base import EncodedMedia, Family, size_value


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target (height, width) of the Qwen2-VL processor (transformers' own rule, from its torchvision-free module)."""
    try:  # heavy
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as resize
    except ImportError:  # transformers before the PIL/torchvision split keeps it in the default module
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as resize
    return resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


class Qwen2VLFamily(Family):
    name = "qwen2_vl"

    def __init__(self, config, tokenizer, image_processor, video_processor: dict | None = None):
        super().__init__(config, tokenizer, image_processor, video_processor)
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
        self.video_token = tok(config.video_token_id)
        self.vision_start = tok(config.vision_start_token_id)
        self.vision_end = tok(config.vision_end_token_id)
        self.image_placeholder = f"{self.vision_start}{self.image_token}{self.vision_end}"
        self.video_placeholder = f"{self.vision_start}{self.video_token}{self.vision_end}"
        # Qwen2.5-VL spaces video frames in time by tokens_per_second * seconds per temporal patch.
        self.tokens_per_second = getattr(config.vision_config, "tokens_per_second", None) if config.model_type == "qwen2_5_vl" else None

    @property
    def media_token_ids(self):
        return (self.image_token_id, self.video_token_id)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        factor = self.patch_size * self.merge_size
        try:
            return smart_resize(height, width, factor, self.min_pixels, self.max_pixels)
        except ValueError as err:
            raise InputError(str(err)) from err

    def patchify(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Normalised frames [T, C, H, W] (T a multiple of the temporal patch) -> flat patches
        [grid_t * grid_h * grid_w, C * tp * P * P], each merge_size x merge_size block contiguous."""
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        t, c, h, w = frames.shape
        grid_t, grid_h, grid_w = t // tp, h // p, w // p
        x = frames.reshape(grid_t, tp, c, grid_h // m, m, p, grid_w // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m, m, C, tp, P, P)
        return x.reshape(grid_t * grid_h * grid_w, c * tp * p * p), (grid_t, grid_h, grid_w)

    def encode_image(self, image) -> EncodedMedia:
        height, width = self.target_size(*image_size(image))
        pixels = self.normalized(self.resized(image, height, width))
        # a still image is one temporal patch of identical frames
        patches, grid = self.patchify(pixels.unsqueeze(0).expand(self.temporal_patch_size, -1, -1, -1))
        n_tokens = grid[1] * grid[2] // self.merge_size**2
        expansion = f"{self.vision_start}{self.image_token * n_tokens}{self.vision_end}"
        return EncodedMedia(patches, expansion, n_tokens, grid)

    def encode_video(self, frames: torch.Tensor, fps: float) -> EncodedMedia:
        height, width = self.target_size(frames.shape[2], frames.shape[3])
        pixels = self.normalized(self.resized(frames, height, width))
        pad = -pixels.shape[0] % self.temporal_patch_size  # repeat the last frame to fill the temporal patch
        if pad:
            pixels = torch.cat([pixels, pixels[-1:].expand(pad, -1, -1, -1)])
        patches, grid = self.patchify(pixels)
        n_tokens = grid[0] * grid[1] * grid[2] // self.merge_size**2
        expansion = f"{self.vision_start}{self.video_token * n_tokens}{self.vision_end}"
        return EncodedMedia(patches, expansion, n_tokens, grid, kind="video", fps=fps)

    def collate_images(self, encoded, dtype, device) -> dict:
        out = {}
        for kind, pixels_key, grid_key in (("image", "pixel_values", "image_grid_thw"),
                                           ("video", "pixel_values_videos", "video_grid_thw")):
            items = [e for e in encoded if e.kind == kind]
            if items:
                out[pixels_key] = torch.cat([e.pixels for e in items]).to(device=device, dtype=dtype)
                out[grid_key] = torch.tensor([e.meta for e in items], dtype=torch.long, device=device)
        videos = [e for e in encoded if e.kind == "video"]
        if videos and self.tokens_per_second is not None:
            out["second_per_grid_ts"] = torch.tensor([self.temporal_patch_size / e.fps for e in videos], device=device)
        return out

    def features(self, base_model, encoded, dtype, device) -> list[torch.Tensor]:
        pixels = self.collate_images(encoded, dtype, device)
        by_kind = {}
        if "pixel_values" in pixels:
            out = base_model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"])
            by_kind["image"] = iter(self.split_features(out, [e.n_tokens for e in encoded if e.kind == "image"]))
        if "pixel_values_videos" in pixels:
            out = base_model.get_video_features(pixels["pixel_values_videos"], pixels["video_grid_thw"])
            by_kind["video"] = iter(self.split_features(out, [e.n_tokens for e in encoded if e.kind == "video"]))
        return [next(by_kind[e.kind]) for e in encoded]

    def model_inputs(self, input_ids: torch.Tensor) -> dict:
        # transformers 5.x computes multimodal rotary positions from these (0 text, 1 image, 2 video).
        types = torch.zeros_like(input_ids)
        types[input_ids == self.image_token_id] = 1
        types[input_ids == self.video_token_id] = 2
        return {"mm_token_type_ids": types}

    def position_ids(self, input_ids: list[int], media: list[EncodedMedia]) -> torch.Tensor:
        """Multimodal rotary positions [3, T] (temporal, height, width) of one unpadded sequence.

        Text advances all three by one per token. A media item's tokens sit on its merged grid starting at
        the current position (Qwen2.5-VL spaces video time steps by tokens_per_second * seconds per
        temporal patch); the text after it resumes at start + max(grid_h, grid_w) / merge_size.

        Why not transformers' ``get_rope_index``: it is a method of the loaded model over padded batches whose
        signature changes within 5.x; the engine needs one unpadded sequence from the config alone. The
        tests check this against it (tests/test_engine.py, tests/test_video.py).
        """
        is_media = torch.isin(torch.tensor(input_ids), torch.tensor(self.media_token_ids)).tolist()
        positions = torch.empty(3, len(input_ids), dtype=torch.long)
        items = iter(media)
        current, k = 0, 0
        while k < len(input_ids):
            if not is_media[k]:
                end = k
                while end < len(input_ids) and not is_media[end]:
                    end += 1
                positions[:, k:end] = torch.arange(current, current + end - k)
                current += end - k
            else:
                item = next(items)
                grid_t, grid_h, grid_w = item.meta
                h, w = grid_h // self.merge_size, grid_w // self.merge_size
                interval = 1.0
                if item.kind == "video" and self.tokens_per_second is not None:
                    interval = self.tokens_per_second * self.temporal_patch_size / item.fps
                t_pos = (torch.arange(grid_t) * interval).long()
                end = k + grid_t * h * w
                positions[0, k:end] = current + t_pos.repeat_interleave(h * w)
                positions[1, k:end] = current + torch.arange(h).repeat_interleave(w).repeat(grid_t)
                positions[2, k:end] = current + torch.arange(w).repeat(h * grid_t)
                current += max(h, w)
            k = end
        return positions
