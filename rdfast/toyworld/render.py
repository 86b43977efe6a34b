"""The deterministic renderer: a Prompt and a seed -> a 64x64 RGB uint8 image, and misaligned variants.

Layout (object sizes and positions) depends only on ``(seed, count)``: the same seed draws the same boxes for
every colour and shape, so a pair that differs in colour or shape differs in nothing else.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .world import ATTRIBUTES, BACKGROUND, COLOURS, COUNTS, SHAPES, SIZE, Prompt

MIN_SIDE, MAX_SIDE = 12, 20  #: each object's bounding box is s x s with s in [MIN_SIDE, MAX_SIDE]
GAP = 2  #: at least this many background pixels between any two objects' boxes
_PLACEMENT_TRIES = 1000


def layout(seed: int, count: int) -> list[tuple[int, int, int]]:
    """``count`` non-touching boxes (x0, y0, side) fully inside the image, drawn from ``(seed, count)``."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, count])
    boxes: list[tuple[int, int, int]] = []
    for _ in range(_PLACEMENT_TRIES):
        if len(boxes) == count:
            return boxes
        side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        x0, y0 = (int(v) for v in rng.integers(0, SIZE - side + 1, size=2))
        if all(_apart((x0, y0, side), box) for box in boxes):
            boxes.append((x0, y0, side))
    raise RuntimeError(f"could not place {count} objects for seed {seed}")  # not reached for counts 1-3


def _apart(a, b) -> bool:
    (ax, ay, aside), (bx, by, bside) = a, b
    return (bx >= ax + aside + GAP or ax >= bx + bside + GAP or by >= ay + aside + GAP or ay >= by + bside + GAP)


def shape_mask(shape: str, side: int) -> np.ndarray:
    """bool [side, side]: the pixels (tested at their centres) of ``shape`` filling a side x side box.

    circle: the inscribed disc; square: the whole box; triangle: upright isosceles, apex at the top centre,
    base the bottom row (row r spans half-width (r + 1) / 2 about the centre, so the box is exactly filled out).
    """
    centres = np.arange(side) + 0.5
    y, x = np.meshgrid(centres, centres, indexing="ij")
    mid = side / 2
    if shape == "circle":
        return (x - mid) ** 2 + (y - mid) ** 2 <= mid ** 2
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "triangle":
        return np.abs(x - mid) <= (y + 0.5) / 2
    raise ValueError(f"shape {shape!r} is not one of {SHAPES}")


def render(prompt: "Prompt | str", seed: int) -> np.ndarray:
    """uint8 [64, 64, 3]: ``prompt``'s objects in flat colour on white, deterministic in ``(prompt, seed)``."""
    prompt = Prompt.parse(prompt)
    image = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for x0, y0, side in layout(seed, prompt.count):
        image[y0:y0 + side, x0:x0 + side][shape_mask(prompt.shape, side)] = COLOURS[prompt.colour]
    return image


def misaligned_prompt(prompt: "Prompt | str", seed: int, which: "str | Sequence[str]" = "any") -> Prompt:
    """A prompt that differs from ``prompt`` in exactly the attributes ``which`` names, drawn from ``seed``.

    which: "count", "colour", "shape", a sequence of them, or "any" (one attribute, drawn). The new values are
    drawn among those that keep an in-domain prompt in-domain (OOD prompts may become anything).
    """
    prompt = Prompt.parse(prompt)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7919])
    names = [ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]] if which == "any" else (
        [which] if isinstance(which, str) else list(which))
    bad = [n for n in names if n not in ATTRIBUTES]
    if bad or not names:
        raise ValueError(f"which={which!r}: name attributes among {ATTRIBUTES} (or 'any')")
    values = {"count": COUNTS, "colour": tuple(COLOURS), "shape": SHAPES}
    choices = [prompt.replace(**change) for change in _changes(names, values, prompt)]
    if not prompt.ood:
        choices = [c for c in choices if not c.ood]
    return choices[int(rng.integers(len(choices)))]


def _changes(names, values, prompt):
    changes = [{}]
    for name in names:
        changes = [dict(c, **{name: v}) for c in changes for v in values[name] if v != getattr(prompt, name)]
    return changes


def render_misaligned(prompt: "Prompt | str", seed: int, which: "str | Sequence[str]" = "any"
                      ) -> tuple[np.ndarray, Prompt]:
    """(image, what it shows): a render of ``misaligned_prompt(prompt, seed, which)`` with the same seed (so the
    same layout when the count is unchanged)."""
    shown = misaligned_prompt(prompt, seed, which)
    return render(shown, seed), shown


def to_tensor(images) -> torch.Tensor:
    """float32 [N, 3, H, W] in [0, 1] (rdfast's image tensor convention) from uint8 [H, W, 3] images or
    [N, H, W, 3]."""
    array = np.stack(images) if isinstance(images, (list, tuple)) else np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 255.0
