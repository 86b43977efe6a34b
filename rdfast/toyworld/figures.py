"""Pictures of toy-world images with the oracle's verdict on each (to check the oracle and a generator by eye)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .oracle import as_uint8, read
from .world import Prompt

ALIGNED, MISALIGNED = (40, 160, 60), (210, 40, 40)  #: frame colours
_LABEL = 22  # pixels under each tile for its two lines of text


def verdict_grid(images, prompts, path: str, columns: int = 8, scale: int = 2) -> str:
    """Save a PNG grid: each image (uint8 [H, W, 3], PIL or float [3, H, W] in [0, 1]) framed green when the
    oracle reads its prompt exactly, red otherwise, with the prompt and the oracle's reading underneath."""
    images, prompts = list(images), [Prompt.parse(p) for p in prompts]
    if len(images) != len(prompts) or not images:
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts (need the same number, at least one)")
    tiles = [as_uint8(i) for i in images]
    side = tiles[0].shape[0] * scale
    cell_w, cell_h = side + 8, side + 8 + _LABEL
    rows = -(-len(tiles) // columns)
    canvas = Image.new("RGB", (min(columns, len(tiles)) * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (tile, prompt) in enumerate(zip(tiles, prompts)):
        x, y = (k % columns) * cell_w, (k // columns) * cell_h
        reading = read(tile)
        draw.rectangle([x + 1, y + 1, x + side + 6, y + side + 6], fill=ALIGNED if reading.matches(prompt)
                       else MISALIGNED)
        canvas.paste(Image.fromarray(np.kron(tile, np.ones((scale, scale, 1), dtype=np.uint8))), (x + 4, y + 4))
        seen = reading.as_tuple()
        seen = seen if isinstance(seen, str) else f"{seen[0]} {seen[1]} {seen[2]}"
        draw.text((x + 2, y + side + 8), prompt.text[:22], fill=(0, 0, 0))
        draw.text((x + 2, y + side + 18), ("= " + seen)[:22], fill=(90, 90, 90))
    canvas.save(path)
    return path
