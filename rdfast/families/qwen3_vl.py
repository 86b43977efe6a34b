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

Videos: settings from the checkpoint's video_preprocessor_config.json (``Qwen3VLVideoProcessor``'s defaults
without one); the frame size from that processor's ``smart_resize`` (it counts the frames too), frames padded to
the temporal patch by repeating the last, patchified as images are. Each temporal patch is its own block of
tokens after a ``<t seconds>`` timestamp (``Qwen3VLProcessor.replace_video_token``, processing_qwen3_vl.py), and
its positions are those of a one-frame grid (``get_rope_index`` splits ``video_grid_thw`` per frame). rdfast
samples the frames itself (rdfast.videos): frame k of the sampled clip is at k / fps seconds.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import InputError
from .base import EncodedMedia, SequenceInputs
from .qwen2_vl import Qwen2VLFamily

#: Qwen3VLVideoProcessor's class defaults (video_processing_qwen3_vl.py), for checkpoints without a video config
VIDEO_DEFAULTS = {"size": {"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768},
                  "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def video_frame_size(num_frames: int, height: int, width: int, temporal_factor: int, factor: int,
                     min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target (height, width) of Qwen3-VL's video processor (transformers' own rule; it needs no torchvision)."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize  # heavy

    return smart_resize(num_frames, height, width, temporal_factor=temporal_factor, factor=factor,
                        min_pixels=min_pixels, max_pixels=max_pixels)


def frame_timestamps(num_frames: int, fps: float, temporal_patch_size: int) -> list[float]:
    """Seconds of each temporal patch: the mean time of its first and last frame, the clip padded with its last
    frame to whole patches (``Qwen3VLProcessor._calculate_timestamps``, frame k at k / fps)."""
    indices = list(range(num_frames))
    indices += [indices[-1]] * (-num_frames % temporal_patch_size)
    return [(indices[i] + indices[i + temporal_patch_size - 1]) / 2 / fps
            for i in range(0, len(indices), temporal_patch_size)]


class VisualFeatures(NamedTuple):
    """One media item's features: ``tokens`` [n_tokens, D] replace its media tokens' embeddings;
    ``deepstack`` [n_tokens, L, D] is added after the first L decoder layers (L = len(deepstack_visual_indexes))."""

    tokens: torch.Tensor
    deepstack: torch.Tensor


class Qwen3VLFamily(Qwen2VLFamily):
    name = "qwen3_vl"

    def __init__(self, config, tokenizer, image_processor, video_processor: dict | None = None):
        super().__init__(config, tokenizer, image_processor, video_processor)
        self.tokens_per_second = None  # Qwen2.5-VL's video time spacing; Qwen3-VL writes timestamps instead
        self.n_deepstack = len(getattr(config.vision_config, "deepstack_visual_indexes", None) or ())  # Qwen3.5: none
        video = {**VIDEO_DEFAULTS, **self.video_settings}
        size = video["size"]
        self.video_min_pixels = video.get("min_pixels") or size["shortest_edge"]
        self.video_max_pixels = video.get("max_pixels") or size["longest_edge"]
        self.video_mean = torch.tensor(video["image_mean"], dtype=torch.float32).view(3, 1, 1)
        self.video_std = torch.tensor(video["image_std"], dtype=torch.float32).view(3, 1, 1)

    def encode_video(self, frames: torch.Tensor, fps: float) -> EncodedMedia:
        tp, factor = self.temporal_patch_size, self.patch_size * self.merge_size
        try:  # the processor refuses clips shorter than a temporal patch; rdfast sizes them as one patch
            height, width = video_frame_size(max(frames.shape[0], tp), frames.shape[2], frames.shape[3], tp, factor,
                                             self.video_min_pixels, self.video_max_pixels)
        except ValueError as err:
            raise InputError(str(err)) from err
        pixels = self.resized(frames, height, width)
        pixels = (pixels - self.video_mean.to(pixels)) / self.video_std.to(pixels)
        pad = -pixels.shape[0] % tp  # repeat the last frame to fill the temporal patch
        if pad:
            pixels = torch.cat([pixels, pixels[-1:].expand(pad, -1, -1, -1)])
        patches, grid = self.patchify(pixels)
        per_frame = grid[1] * grid[2] // self.merge_size**2
        frames_text = "".join(f"<{t:.1f} seconds>{self.vision_start}{self.video_token * per_frame}{self.vision_end}"
                              for t in frame_timestamps(frames.shape[0], fps, tp))
        # the processor replaces only the video token, so the template's start and end tokens stay around it
        expansion = f"{self.vision_start}{frames_text}{self.vision_end}"
        return EncodedMedia(patches, expansion, grid[0] * per_frame, grid, kind="video", fps=fps)

    def features(self, base_model, encoded, dtype, device) -> list[VisualFeatures]:
        """Main and deepstack features per item: one vision-tower call per kind (images, videos)."""
        pixels = self.collate_images(encoded, dtype, device)
        by_kind = {}
        for kind, getter, key in (("image", base_model.get_image_features, "pixel_values"),
                                  ("video", base_model.get_video_features, "pixel_values_videos")):
            sizes = [e.n_tokens for e in encoded if e.kind == kind]
            if sizes:
                out = getter(pixels[key], pixels[f"{kind}_grid_thw"])
                by_kind[kind] = iter(self._with_deepstack(out, sizes, device))
        return [next(by_kind[e.kind]) for e in encoded]

    def _with_deepstack(self, out, sizes: list[int], device) -> list[VisualFeatures]:
        tokens = self.split_features(out, sizes)
        # 5.24 splits each deepstack layer per item; 5.17 returns each layer whole [n_all_tokens, D]
        layers = [torch.cat(list(f)) if isinstance(f, (list, tuple)) else f for f in out.deepstack_features]
        if len(layers) != self.n_deepstack:
            raise RuntimeError(f"the vision tower returned {len(layers)} deepstack features, the config names "
                               f"{self.n_deepstack}")
        width = tokens[0].shape[-1]
        stacked = torch.stack(layers, dim=1) if layers else torch.zeros(sum(sizes), 0, width, device=device)
        return [VisualFeatures(t, d) for t, d in zip(tokens, stacked.split(sizes))]

    def position_ids(self, input_ids: list[int], media: list[EncodedMedia]) -> torch.Tensor:
        """Multimodal rotary positions [3, T], as Qwen3-VL's ``get_rope_index``: text advances all three by one;
        each block of media tokens (an image, or one temporal patch of a video) sits on its merged grid from
        the current position, and the text after it resumes at start + max(grid_h, grid_w) / merge_size."""
        grids = [(item.meta[1] // self.merge_size, item.meta[2] // self.merge_size)
                 for item in media for _ in range(item.meta[0])]
        is_media = torch.isin(torch.tensor(input_ids), torch.tensor(self.media_token_ids)).tolist()
        positions = torch.empty(3, len(input_ids), dtype=torch.long)
        blocks = iter(grids)
        current, k = 0, 0
        while k < len(input_ids):
            if not is_media[k]:
                positions[:, k] = current
                current, k = current + 1, k + 1
                continue
            h, w = next(blocks)
            positions[0, k : k + h * w] = current
            positions[1, k : k + h * w] = current + torch.arange(h).repeat_interleave(w)
            positions[2, k : k + h * w] = current + torch.arange(w).repeat(h)
            current, k = current + max(h, w), k + h * w
        return positions

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
