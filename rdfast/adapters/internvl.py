"""InternVL (transformers-native): fixed-size tiles chosen by aspect ratio, plus a thumbnail."""
from __future__ import annotations

from functools import lru_cache

import torch

from ..images import image_size
from .base import EncodedImage, VisionAdapter, size_value


@lru_cache(maxsize=256)
def tile_grid(height: int, width: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) of the tile canvas whose aspect ratio is closest to the image's.

    Candidates are ordered by tile count; on equal aspect-ratio distance the larger canvas wins while the
    image covers more than half of it (InternVL's dynamic-resolution rule)."""
    canvases = sorted(
        ((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles),
        key=lambda cr: cr[0] * cr[1],
    )
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in canvases:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and height * width > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


class InternVLAdapter(VisionAdapter):
    family = "internvl"

    def __init__(self, config, tokenizer, image_processor, crop_to_patches: bool = True):
        super().__init__(config, tokenizer, image_processor)
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
        self.expansion_start_token = self.start_token

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

    def encode_image(self, image) -> EncodedImage:
        tiles = torch.stack(self.tiles(image))
        n_tokens = self.image_seq_length * tiles.shape[0]
        expansion = f"{self.start_token}{self.context_token * n_tokens}{self.end_token}"
        return EncodedImage(tiles, expansion, n_tokens, (tiles.shape[0],))

    def encode_video(self, frames: torch.Tensor, fps: float) -> EncodedImage:
        """Frames as images: each resized to one tile, labelled "Frame i:" (InternVLProcessor's layout)."""
        s = self.tile
        pixels = self.normalized(self.resized(frames, s, s))
        frame = f"{self.start_token}{self.context_token * self.image_seq_length}{self.end_token}"
        expansion = "\n".join(f"Frame{i + 1}: {frame}" for i in range(pixels.shape[0]))
        n = pixels.shape[0]
        return EncodedImage(pixels, expansion, self.image_seq_length * n, (n,), kind="video", n_starts=n, fps=fps)

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
