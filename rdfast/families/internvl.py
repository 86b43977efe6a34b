"""InternVL (transformers-native): fixed-size tiles chosen by aspect ratio, plus a thumbnail."""
from __future__ import annotations

import torch

from ..images import image_size
from .base import EncodedMedia, Family, size_value


def tile_grid(height: int, width: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) of the tile canvas InternVL's processor picks (transformers' GOT-OCR2 rule)."""
    try:  # heavy
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas
    except ImportError:  # transformers before the PIL/torchvision split keeps it in the default module
        from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas
    return get_optimal_tiled_canvas((height, width), (tile, tile), min_tiles, max_tiles)


class InternVLFamily(Family):
    name = "internvl"

    def __init__(self, config, tokenizer, image_processor, video_processor: dict | None = None,
                 crop_to_patches: bool = True):
        super().__init__(config, tokenizer, image_processor, video_processor)
        ip = image_processor
        self.tile = size_value(ip.size, "height")
        # InternVLProcessor tiles images by default, whatever the image processor's own default says.
        self.crop_to_patches = crop_to_patches
        self.min_tiles = getattr(ip, "min_patches", 1)
        self.max_tiles = getattr(ip, "max_patches", 12)
        vision = config.vision_config
        image = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
        self.image_seq_length = int((image // patch) ** 2 * config.downsample_ratio**2)
        tok = tokenizer.convert_ids_to_tokens
        self.context_token = tok(config.image_token_id)
        self.start_token = getattr(tokenizer, "start_image_token", None) or "<img>"
        self.end_token = getattr(tokenizer, "end_image_token", None) or "</img>"
        self.image_placeholder = self.context_token
        self.video_placeholder = getattr(tokenizer, "video_token", None) or "<video>"
        self.image_token_id = config.image_token_id

    @property
    def media_token_ids(self):
        return (self.image_token_id,)

    def tiles(self, image) -> list[torch.Tensor]:
        """Normalised tiles [3, S, S]: the grid tiles in row-major order, then a thumbnail if more than one."""
        s = self.tile
        if not (self.crop_to_patches and self.max_tiles > 1):
            return [self.normalized(self.resized(image, s, s))]
        height, width = image_size(image)
        cols, rows = tile_grid(height, width, s, self.min_tiles, self.max_tiles)
        canvas = self.resized(image, rows * s, cols * s)
        out = [canvas[:, r * s : (r + 1) * s, c * s : (c + 1) * s] for r in range(rows) for c in range(cols)]
        if len(out) > 1:
            out.append(self.resized(image, s, s))
        return [self.normalized(t) for t in out]

    def encode_image(self, image) -> EncodedMedia:
        tiles = torch.stack(self.tiles(image))
        n_tokens = self.image_seq_length * tiles.shape[0]
        expansion = f"{self.start_token}{self.context_token * n_tokens}{self.end_token}"
        return EncodedMedia(tiles, expansion, n_tokens, (tiles.shape[0],))

    def encode_video(self, frames: torch.Tensor, fps: float) -> EncodedMedia:
        """Frames as images: each resized to one tile, labelled "Frame i:" (InternVLProcessor's layout)."""
        s = self.tile
        pixels = self.normalized(self.resized(frames, s, s))
        frame = f"{self.start_token}{self.context_token * self.image_seq_length}{self.end_token}"
        expansion = "\n".join(f"Frame{i + 1}: {frame}" for i in range(pixels.shape[0]))
        n = pixels.shape[0]
        return EncodedMedia(pixels, expansion, self.image_seq_length * n, (n,), kind="video", fps=fps)

    def collate_images(self, encoded, dtype, device) -> dict:
        # images' tiles and videos' frames in sequence order, as InternVLProcessor lays them out
        return {"pixel_values": torch.cat([e.pixels for e in encoded]).to(device=device, dtype=dtype)}

    def features(self, base_model, encoded, dtype, device) -> list[torch.Tensor]:
        pixels = self.collate_images(encoded, dtype, device)["pixel_values"]
        out = base_model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy,
        )
        return self.split_features(out, [e.n_tokens for e in encoded])
