"""Images on the wire to the reward server: any image a client holds, as the base64 PNG the JSON API takes.

Clients (``rdfast.remote``, ``rdfast.integrations``) send PIL images, paths, float tensors [3, H, W] in [0, 1]
(rdfast's own layout), uint8 or float numpy arrays [H, W, 3] (the layout RL loops decode to), or batches of
them ([N, 3, H, W] tensors, [N, H, W, 3] arrays). PNG is lossless, so the server sees exactly the 8-bit pixels
sent; float pixels are rounded to 8 bits first (as Flow-GRPO's own reward functions do), so a float image scores
as its 8-bit rounding.
"""
from __future__ import annotations

import base64
import io
import os

import numpy as np
import torch
from PIL import Image

from .errors import InputError
from .images import as_image_list, load_image, to_rgb


def image_list(images, field: str) -> list:
    """A batch as a list of single images: tensors [N, 3, H, W] and arrays [N, H, W, 3] are split."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise InputError(f"expected an array [N, H, W, 3] (or [N, 3, H, W]), got shape {images.shape}",
                             field=field)
        return list(images)
    return as_image_list(images, field)


def _array_to_pil(array: np.ndarray, channels_first: bool, index: int, field: str) -> Image.Image:
    if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
        raise InputError(f"expected an image [H, W, 3] or [3, H, W], got shape {array.shape}", index, field)
    if (channels_first and array.shape[0] == 3) or array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(array), "RGB")
    if array.dtype.kind != "f":
        raise InputError(f"expected uint8 or float pixels in [0, 1], got dtype {array.dtype}", index, field)
    lo, hi = float(np.min(array)), float(np.max(array))
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        raise InputError(f"float pixels must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]", index, field)
    return Image.fromarray(np.rint(array.astype(np.float64) * 255).astype(np.uint8), "RGB")


def to_pil(image, index: int, field: str) -> Image.Image:
    """One image of any accepted kind as an 8-bit RGB PIL image (an ``InputError`` names a bad one)."""
    if isinstance(image, Image.Image):
        return to_rgb(image, index, field)
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, index, field)
    if isinstance(image, torch.Tensor):
        return _array_to_pil(image.detach().cpu().numpy(), True, index, field)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, False, index, field)
    raise InputError(f"unsupported image type {type(image).__name__} (use PIL, a path, a tensor or a numpy array)",
                     index, field)


def png_base64(image: Image.Image) -> str:
    """An RGB PIL image as base64 PNG text (lossless; fast compression)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_images(images, field: str) -> list[str]:
    """A batch of images of any accepted kind as base64 PNG texts, one per image."""
    return [png_base64(to_pil(image, i, field)) for i, image in enumerate(image_list(images, field))]
