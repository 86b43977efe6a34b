"""Pictures of toy-world images framed by the oracle's verdict (to check the oracle and a generator by eye, and the
demo's picture): ``titled_grid`` draws any rows of framed, titled tiles; ``verdict_grid`` reads each image itself."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .oracle import as_uint8, read
from .world import Prompt

ALIGNED, MISALIGNED = (40, 160, 60), (210, 40, 40)  #: frame colours
FONT_SIZE = 11
_LINE = FONT_SIZE + 3  # pixels per line of text
_PAD = 4


@dataclass
class Tile:
    """One image of the grid: uint8 [H, W, 3], its title lines (top to bottom) and the oracle's verdict."""

    image: np.ndarray
    lines: list[str]
    aligned: bool


def _font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)  # scalable when Pillow has FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def titled_grid(rows: list[tuple[str, list[Tile]]], path: str, scale: int = 2, cell_width: int = 150) -> str:
    """Save a PNG: per row, a label line (e.g. the prompt) above its tiles; each tile enlarged ``scale`` times
    (nearest neighbour, so the pixels the oracle read stay visible), framed by its verdict, its lines under it.

    Args:
        rows: (label, tiles) per row; rows may have different numbers of tiles; no label line when all are "".
        path: where to write the PNG (replaced if it exists).
    Returns:
        ``path``.
    """
    if not rows or not any(tiles for _, tiles in rows):
        raise ValueError("titled_grid needs at least one row with one tile")
    font = _font()
    label_h = _LINE if any(label for label, _ in rows) else 0  # no label line when no row has a label
    side = max(t.image.shape[0] for _, tiles in rows for t in tiles) * scale
    lines = max(len(t.lines) for _, tiles in rows for t in tiles)
    cell_w = max(cell_width, side + 2 * _PAD)
    cell_h = side + 2 * _PAD + lines * _LINE + _PAD
    row_h = label_h + cell_h
    columns = max(len(tiles) for _, tiles in rows)
    width = max([columns * cell_w] + [int(font.getlength(label)) + 2 * _PAD for label, _ in rows])  # labels whole
    canvas = Image.new("RGB", (width, len(rows) * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, tiles) in enumerate(rows):
        y0 = r * row_h
        draw.text((_PAD, y0 + 1), label, fill=(0, 0, 0), font=font)
        for c, tile in enumerate(tiles):
            x, y = c * cell_w, y0 + label_h
            draw.rectangle([x + 1, y + 1, x + side + 2 * _PAD - 2, y + side + 2 * _PAD - 2],
                           fill=ALIGNED if tile.aligned else MISALIGNED)
            big = np.kron(tile.image, np.ones((scale, scale, 1), dtype=np.uint8))
            canvas.paste(Image.fromarray(big), (x + _PAD, y + _PAD))
            for k, text in enumerate(tile.lines):
                draw.text((x + 2, y + side + 2 * _PAD + k * _LINE), text, fill=(0, 0, 0) if k == 0 else (70, 70, 70),
                          font=font)
    canvas.save(path)
    return path


def verdict_grid(images, prompts, path: str, columns: int = 8, scale: int = 2) -> str:
    """Save a PNG grid: each image (uint8 [H, W, 3], PIL or float [3, H, W] in [0, 1]) framed green when the
    oracle reads its prompt exactly, red otherwise, with the prompt and the oracle's reading underneath."""
    images, prompts = list(images), [Prompt.parse(p) for p in prompts]
    if len(images) != len(prompts) or not images:
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts (need the same number, at least one)")
    tiles = []
    for image, prompt in zip(images, prompts):
        tile = as_uint8(image)
        reading = read(tile)
        seen = reading.as_tuple()
        seen = seen if isinstance(seen, str) else f"{seen[0]} {seen[1]} {seen[2]}"
        chars = 11 * scale  # what fits under a tile
        tiles.append(Tile(tile, [prompt.text[:chars], ("= " + seen)[:chars]], reading.matches(prompt)))
    rows = [("", tiles[k:k + columns]) for k in range(0, len(tiles), columns)]
    return titled_grid(rows, path, scale=scale, cell_width=0)
