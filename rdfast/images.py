"""Image inputs: loading and validation, before any model work.

rdfast accepts PIL images, file paths, float tensors [3, H, W] in [0, 1], or a batch tensor [N, 3, H, W].
PIL images and paths stay PIL (so the VLM family can resize them exactly as the HF processor does);
tensors stay tensors (so gradients reach the pixels). PIL images of any mode become RGB in ``to_rgb``.
"""
from __future__ import annotations

import inspect
import os
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from .errors import InputError

ImageLike = Union["Image.Image", str, os.PathLike, torch.Tensor]
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I" (int32) is read as 16-bit data


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
    """Validate one image; open paths.

    Args:
        image: a PIL image (any mode), an image file path, or a float tensor [3, H, W] in [0, 1].
        index: the image's position in its batch (named in errors), or None.
        field: the argument or record key the image came from (named in errors).

    Returns:
        An RGB PIL image (see ``to_rgb``) or the tensor itself, validated.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise InputError(f"image file not found: {path}", index, field)
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as err:  # PIL raises several types for corrupt files
            raise InputError(f"cannot read image file {path}: {err}", index, field) from err
        return to_rgb(im, index, field)
    if isinstance(image, Image.Image):
        return to_rgb(image, index, field)
    if isinstance(image, torch.Tensor):
        check_image_tensor(image, index, field)
        return image
    raise InputError(f"unsupported image type {type(image).__name__} (use PIL, a path or a tensor)", index, field)


def to_rgb(image: "Image.Image", index: int | None = None, field: str = "images") -> "Image.Image":
    """An 8-bit RGB copy of a PIL image of any mode, as the HF ``*ImageProcessorPil`` classes see it.

    Transparency (RGBA, LA, PA, and P / L / RGB images carrying a ``transparency`` entry, such as a PNG
    tRNS chunk) is composited on white, and every other mode (L, 1, CMYK, YCbCr, P, ...) is converted, by
    transformers' own ``convert_to_rgb``, so pixels equal the HF processors'. One deliberate difference:
    16-bit images (modes "I;16", "I;16B", "I;16L", "I;16N", and "I" read as 16-bit data) are scaled to 8
    bits as round(value / 257), so 65535 is white; the HF processors saturate them instead (every value
    >= 255 becomes white). An "I" image with values outside [0, 65535] is an error.

    Args:
        image: a PIL image with at least one pixel.
        index, field: where the image came from, named in errors.

    Returns:
        A PIL image of mode "RGB" and the same size.
    """
    if image.width == 0 or image.height == 0:
        raise InputError(f"image is empty ({image.width}x{image.height} pixels)", index, field)
    from transformers.image_transforms import convert_to_rgb  # heavy
    if image.mode in SIXTEEN_BIT_MODES:
        image = sixteen_to_eight_bits(image, index, field)
    if "return_numpy" in inspect.signature(convert_to_rgb).parameters:  # 5.17 (GPU image) lacks it: PIL back
        return Image.fromarray(convert_to_rgb(image, return_numpy=True), "RGB")
    return convert_to_rgb(image).convert("RGB")


def sixteen_to_eight_bits(image: "Image.Image", index: int | None, field: str) -> "Image.Image":
    """A 16-bit grayscale PIL image as mode "L", round(value / 257); its transparent value becomes white."""
    values = np.asarray(image).astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi > 65535:
        raise InputError(f"{image.mode!r} image values must lie in the 16-bit range [0, 65535], got [{lo}, {hi}]",
                         index, field)
    eight = np.rint(values / 257).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):  # a 16-bit PNG's tRNS: one fully transparent value, on white
        eight[values == transparent] = 255
    return Image.fromarray(eight, "L")


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
