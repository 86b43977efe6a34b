"""The oracle: reads an image's (count, colour, shape) from its pixels; the ground truth of every toy result.

Objects are the 8-connected components of non-white pixels. Tolerance to generator artefacts is set by the
named constants below: faint pixels count as background, specks are ignored, colours snap to the nearest
reference within a radius. A component's shape: a triangle when its lower half holds much more than its upper
half (upright triangles about 3x, circles and squares 1x); otherwise a square when the corners of its bounding
box are filled (squares, even with blurred, rounded corners) and a circle when they are empty. Blur changes
fill ratios too much to separate shapes by them alone (measured on autoencoder reconstructions).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from .world import COLOURS, COUNT_WORDS, Prompt

#: a pixel is background when all of its channels are at least this bright (the references' darkest channel
#: is at most 60, so half-blended edges still count as object)
BACKGROUND_MIN_CHANNEL = 150
#: components smaller than this many pixels are specks (noise), not objects (the smallest object has about 78)
MIN_COMPONENT_AREA = 24
#: an object's bounding box sides must lie in this range (the renderer draws 12-20 px)
MIN_OBJECT_SIDE, MAX_OBJECT_SIDE = 8, 26
#: a component's median colour must lie within this RGB distance of a reference colour
COLOUR_TOLERANCE = 90.0
#: a triangle's lower half holds at least this many times its upper half's pixels (rendered: about 3)
TRIANGLE_BOTTOM_RATIO = 1.5
#: a square fills at least this fraction of its box's four corner patches (each CORNER_PATCH of the side;
#: rendered squares 1, circles about 0.1)
SQUARE_CORNER_FILL, CORNER_PATCH = 0.5, 0.2
#: any object fills at least this fraction of its bounding box (rendered: triangles about 0.55)
MIN_FILL = 0.35
_REFERENCES = np.array(list(COLOURS.values()), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Reading:
    """What the oracle sees: ``count`` objects (0 if none), their common ``colour`` and ``shape`` (None when
    the objects disagree or one is unrecognisable)."""
    count: int
    colour: str | None
    shape: str | None

    @property
    def readable(self) -> bool:
        return self.count > 0 and self.colour is not None and self.shape is not None

    def as_tuple(self):
        """(count, colour, shape), or "unreadable"."""
        return (self.count, self.colour, self.shape) if self.readable else "unreadable"

    @property
    def text(self) -> str:
        """The reading in the prompts' word form ("two red squares"; "4 red squares" past three), "nothing" for
        a blank image, "unreadable (N objects)" when the objects disagree or one is unrecognisable."""
        if self.count == 0:
            return "nothing"
        if not self.readable:
            return f"unreadable ({self.count} object{'s' if self.count > 1 else ''})"
        noun = self.shape + ("s" if self.count > 1 else "")
        return f"{COUNT_WORDS.get(self.count, str(self.count))} {self.colour} {noun}"

    def attributes_right(self, prompt: "Prompt | str") -> int:
        """How many of the prompt's count, colour and shape this reading matches (0-3)."""
        prompt = Prompt.parse(prompt)
        return (self.count == prompt.count) + (self.colour == prompt.colour) + (self.shape == prompt.shape)

    def matches(self, prompt: "Prompt | str") -> bool:
        return self.readable and self.attributes_right(prompt) == 3


def as_uint8(image) -> np.ndarray:
    """uint8 [H, W, 3] from a uint8 array [H, W, 3], a PIL image, or a float tensor/array [3, H, W] in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy() if image.is_floating_point() else image.cpu().numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        if array.ndim != 3 or array.shape[0] != 3:
            raise ValueError(f"a float image must be [3, H, W] in [0, 1], got shape {array.shape}")
        array = np.round(np.clip(np.nan_to_num(array.transpose(1, 2, 0), nan=1.0), 0, 1) * 255).astype(np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"a uint8 image must be [H, W, 3], got shape {array.shape}")
    return array


def components(foreground: np.ndarray) -> np.ndarray:
    """int labels [H, W] of the 8-connected components of a bool mask (0 = background), by propagating the
    largest label through each component until nothing changes."""
    height, width = foreground.shape
    labels = np.where(foreground, np.arange(1, height * width + 1).reshape(height, width), 0)
    while True:
        padded = np.pad(labels, 1)
        neighbours = np.max([padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)], axis=0)
        grown = np.where(foreground, neighbours, 0)
        if np.array_equal(grown, labels):
            return labels
        labels = grown


def _classify(pixels: np.ndarray, mask: np.ndarray) -> tuple[str | None, str | None]:
    """(colour, shape) of one component: its RGB pixels [n, 3] and its bool mask cropped to its box."""
    distances = np.linalg.norm(_REFERENCES - np.median(pixels, axis=0), axis=1)
    colour = list(COLOURS)[int(distances.argmin())] if distances.min() <= COLOUR_TOLERANCE else None
    height, width = mask.shape
    if not (MIN_OBJECT_SIDE <= min(height, width) and max(height, width) <= MAX_OBJECT_SIDE):
        return colour, None
    if mask.mean() < MIN_FILL:
        return colour, None
    top, bottom = mask[: height // 2].sum(), mask[(height + 1) // 2:].sum()
    if bottom >= TRIANGLE_BOTTOM_RATIO * top:
        return colour, "triangle"
    ph, pw = max(2, round(CORNER_PATCH * height)), max(2, round(CORNER_PATCH * width))
    corners = [mask[:ph, :pw], mask[:ph, -pw:], mask[-ph:, :pw], mask[-ph:, -pw:]]
    return colour, ("square" if np.mean([c.mean() for c in corners]) >= SQUARE_CORNER_FILL else "circle")


def read(image) -> Reading:
    """The oracle's Reading of one image (uint8 [H, W, 3], PIL, or float [3, H, W] in [0, 1])."""
    array = as_uint8(image)
    foreground = array.min(axis=2) < BACKGROUND_MIN_CHANNEL
    labels = components(foreground)
    found = []
    for label in np.unique(labels[labels > 0]):
        mask = labels == label
        if mask.sum() < MIN_COMPONENT_AREA:
            continue
        rows, cols = np.nonzero(mask)
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        found.append(_classify(array[mask].astype(np.float64), box))
    colours, shapes = {c for c, _ in found}, {s for _, s in found}
    common = (lambda values: next(iter(values)) if len(values) == 1 else None)
    return Reading(len(found), common(colours), common(shapes))


def is_aligned(image, prompt: "Prompt | str") -> bool:
    """True when the oracle reads exactly the prompt's count, colour and shape in ``image``."""
    return read(image).matches(prompt)


def alignment(images, prompts) -> float:
    """The fraction of ``images`` (a sequence, or a float tensor [N, 3, H, W]) aligned with ``prompts``."""
    images = list(images)
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    return float(np.mean([is_aligned(i, p) for i, p in zip(images, prompts)])) if images else float("nan")
