"""The demo's picture: rows of images, each framed green (aligned) or red and titled with lines of text."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..toyworld.figures import ALIGNED, MISALIGNED

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
        rows: (label, tiles) per row; rows may have different numbers of tiles.
        path: where to write the PNG (replaced if it exists).
    Returns:
        ``path``.
    """
    if not rows or not any(tiles for _, tiles in rows):
        raise ValueError("titled_grid needs at least one row with one tile")
    font = _font()
    side = max(t.image.shape[0] for _, tiles in rows for t in tiles) * scale
    lines = max(len(t.lines) for _, tiles in rows for t in tiles)
    cell_w = max(cell_width, side + 2 * _PAD)
    cell_h = side + 2 * _PAD + lines * _LINE + _PAD
    row_h = _LINE + cell_h
    columns = max(len(tiles) for _, tiles in rows)
    width = max([columns * cell_w] + [int(font.getlength(label)) + 2 * _PAD for label, _ in rows])  # labels whole
    canvas = Image.new("RGB", (width, len(rows) * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, tiles) in enumerate(rows):
        y0 = r * row_h
        draw.text((_PAD, y0 + 1), label, fill=(0, 0, 0), font=font)
        for c, tile in enumerate(tiles):
            x, y = c * cell_w, y0 + _LINE
            draw.rectangle([x + 1, y + 1, x + side + 2 * _PAD - 2, y + side + 2 * _PAD - 2],
                           fill=ALIGNED if tile.aligned else MISALIGNED)
            big = np.kron(tile.image, np.ones((scale, scale, 1), dtype=np.uint8))
            canvas.paste(Image.fromarray(big), (x + _PAD, y + _PAD))
            for k, text in enumerate(tile.lines):
                draw.text((x + 2, y + side + 2 * _PAD + k * _LINE), text, fill=(0, 0, 0) if k == 0 else (70, 70, 70),
                          font=font)
    canvas.save(path)
    return path
