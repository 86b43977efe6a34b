"""Image inputs: loading and validation, before any model work.

rdfast accepts PIL images, file paths, float tensors [3, H, W] in [0, 1], or a batch tensor [N, 3, H, W].
PIL images and paths stay PIL (so the VLM family can resize them exactly as the HF processor does);
tensors stay tensors (so gradients reach the pixels).
"""
from __future__ import annotations

import os
from typing import Sequence, Union

import torch
from PIL import Image

from .errors import InputError

ImageLike = Union["Image.Image", str, os.PathLike, torch.Tensor]


def as_image_list(images, field: str) -> list:
    """Split a batch tensor [N,3,H,W] into a list; accept a list/tuple as is."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 4:
            return list(images.unbind(0))
        if images.dim() == 3:
            raise InputError(
                f"a single image tensor of shape {tuple(images.shape)} was given where a batch is expected; "
                "pass a list of images or a tensor [N, 3, H, W]",
                field=field,
            )
        raise InputError(f"expected a tensor [N, 3, H, W], got shape {tuple(images.shape)}", field=field)
    if isinstance(images, (str, os.PathLike, Image.Image)):
        raise InputError("expected a list of images, got a single image", field=field)
    if not isinstance(images, Sequence):
        raise InputError(f"expected a list of images, got {type(images).__name__}", field=field)
    return list(images)


def load_image(image, index: int | None, field: str):
    """Validate one image; open paths. Returns an RGB PIL image or a float tensor [3, H, W] in [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise InputError(f"image file not found: {path}", index, field)
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except Exception as err:  # PIL raises several types for corrupt files
            raise InputError(f"cannot read image file {path}: {err}", index, field) from err
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, torch.Tensor):
        check_image_tensor(image, index, field)
        return image
    raise InputError(f"unsupported image type {type(image).__name__} (use PIL, a path or a tensor)", index, field)


def check_image_tensor(image: torch.Tensor, index: int, field: str) -> None:
    if image.dim() != 3 or image.shape[0] != 3:
        raise InputError(f"image tensor must have shape [3, H, W], got {tuple(image.shape)}", index, field)
    if not image.is_floating_point():
        raise InputError(f"image tensor must be floating point in [0, 1], got dtype {image.dtype}", index, field)
    if image.shape[1] < 2 or image.shape[2] < 2:
        raise InputError(f"image is too small: {tuple(image.shape)}", index, field)
    with torch.no_grad():
        lo, hi = image.min().item(), image.max().item()
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        raise InputError(f"image tensor values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]", index, field)


def image_size(image) -> tuple[int, int]:
    """(height, width) of a loaded image."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[1]), int(image.shape[2])
    return image.height, image.width


def pil_to_tensor(image: "Image.Image") -> torch.Tensor:
    """uint8 RGB PIL image -> float32 [3, H, W] in [0, 1], as HF's rescale (x * 1/255) computes it."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    data = data.view(image.height, image.width, 3).permute(2, 0, 1)
    return data.to(torch.float32) * (1 / 255)
