"""The toy world: prompts and their word forms, the renderer's fixed geometry and colours, and the oracle."""
import os

import numpy as np
import pytest

from rdfast import toyworld as tw
from rdfast.toyworld.oracle import BACKGROUND_MIN_CHANNEL, MIN_COMPONENT_AREA
from rdfast.toyworld.render import GAP, MAX_SIDE, MIN_SIDE, layout, shape_mask


def fresh_seeds(n):
    return [int.from_bytes(os.urandom(4), "little") for _ in range(n)]


def test_prompts_and_word_forms():
    assert len(tw.prompts("in_domain")) == 27 and len(tw.prompts("ood")) == 9 and len(tw.prompts("all")) == 36
    texts = {p.text for p in tw.prompts("all")}
    assert {"one red circle", "two blue squares", "three yellow triangles", "one green square"} <= texts
    assert not any(p.ood for p in tw.prompts("in_domain"))
    assert {(p.colour, p.shape) for p in tw.prompts("ood")} == {("red", "triangle"), ("green", "square"),
                                                               ("blue", "circle")}
    for p in tw.prompts("all"):
        assert tw.Prompt.parse(p.text) == p
    for text in ("two blue square", "one red circles", "four red circles", "one purple circle", "red circle"):
        with pytest.raises(ValueError, match="prompt|count|colour|shape"):
            tw.Prompt.parse(text)


def test_in_domain_sampling_never_makes_an_ood_combination():
    for p in tw.prompts("in_domain"):
        for seed in fresh_seeds(6):
            for which in ("any", "colour", "shape", ("colour", "shape"), ("count", "colour", "shape")):
                shown = tw.misaligned_prompt(p, seed, which)
                assert not shown.ood, (p, which, shown)


def test_renders_hold_the_fixed_colours_sizes_and_spacing():
    for p in tw.prompts("all"):
        seed = fresh_seeds(1)[0]
        image = tw.render(p, seed)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert np.array_equal(image, tw.render(p, seed))  # deterministic
        colours = {tuple(c) for c in image.reshape(-1, 3)}
        assert colours == {(255, 255, 255), tw.COLOURS[p.colour]}  # flat fill, no blending
        boxes = layout(seed, p.count)
        drawn = np.zeros((64, 64), dtype=bool)
        for x0, y0, side in boxes:
            assert MIN_SIDE <= side <= MAX_SIDE and x0 >= 0 and y0 >= 0 and x0 + side <= 64 and y0 + side <= 64
            crop = (image[y0:y0 + side, x0:x0 + side] != 255).any(axis=2)
            rows, cols = np.nonzero(crop)
            assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, side - 1, 0, side - 1)  # fills its box
            drawn[y0:y0 + side, x0:x0 + side] |= crop
        assert np.array_equal(drawn, (image != 255).any(axis=2))  # nothing outside the boxes
        for i, (ax, ay, a) in enumerate(boxes):
            for bx, by, b in boxes[i + 1:]:
                gap = max(bx - (ax + a), ax - (bx + b), by - (ay + a), ay - (by + b))
                assert gap >= GAP


def test_shapes_are_what_they_say():
    side = 17
    square, circle, triangle = (shape_mask(s, side) for s in ("square", "circle", "triangle"))
    assert square.all()
    assert abs(circle.mean() - np.pi / 4) < 0.05 and circle[side // 2].all() and not circle[0, 0]
    widths = triangle.sum(axis=1)
    assert widths[0] <= 2 and widths[-1] == side and (np.diff(widths) >= 0).all()  # upright
    assert np.array_equal(triangle, triangle[:, ::-1])  # isosceles


def test_oracle_reads_fresh_renders():
    cases = [(p, s) for p in tw.prompts("all") for s in fresh_seeds(15)]  # 540 renders
    exact = np.mean([tw.read(tw.render(p, s)).as_tuple() == (p.count, p.colour, p.shape) for p, s in cases])
    assert exact >= 0.99


def test_oracle_reads_misaligned_renders_as_misaligned():
    for p in tw.prompts("all"):
        for which in ("count", "colour", "shape", "any"):
            seed = fresh_seeds(1)[0]
            image, shown = tw.render_misaligned(p, seed, which)
            assert shown != p and not tw.is_aligned(image, p)
            assert tw.read(image).matches(shown)
            if which != "any":
                assert tw.read(image).attributes_right(p) == 2


def test_a_reading_says_what_it_saw_in_the_prompts_word_form():
    readings = [(tw.read(tw.render(p, fresh_seeds(1)[0])), p) for p in tw.prompts("all")]
    assert all(r.text == p.text for r, p in readings if r.matches(p))  # the oracle reads >= 99% of renders exactly
    assert sum(r.matches(p) for r, p in readings) >= len(readings) - 1
    assert tw.Reading(4, "red", "square").text == "4 red squares"
    assert tw.Reading(0, None, None).text == "nothing"
    assert tw.Reading(2, None, "square").text == "unreadable (2 objects)"
    assert tw.Reading(1, "red", None).text == "unreadable (1 object)"


def test_oracle_tolerates_faint_noise_and_specks_but_not_mixtures():
    rng = np.random.default_rng(fresh_seeds(1)[0])
    p = tw.Prompt(2, "yellow", "triangle")
    base = tw.render(p, fresh_seeds(1)[0])
    noise = 255 - rng.integers(0, 255 - BACKGROUND_MIN_CHANNEL, size=base.shape)  # faint, above the threshold
    noisy = np.where((base != 255).any(axis=2, keepdims=True), base, noise).astype(np.uint8)
    for y, x in [(0, 0), (63, 0), (0, 63)]:
        if (base[y, x] == 255).all():
            noisy[y, x] = (0, 0, 0)  # one-pixel specks, below MIN_COMPONENT_AREA
    assert MIN_COMPONENT_AREA > 1 and tw.is_aligned(noisy, p)
    assert tw.read(tw.to_tensor([noisy])[0]) == tw.read(noisy)  # float [3, H, W] input reads the same
    assert tw.read(np.full((64, 64, 3), 255, np.uint8)).as_tuple() == "unreadable"
    seed = fresh_seeds(1)[0]
    mixed = tw.render(tw.Prompt(2, "red", "square"), seed)
    x0, y0, side = layout(seed, 2)[0]
    mixed[y0:y0 + side, x0:x0 + side] = tw.COLOURS["blue"]  # one red and one blue square
    reading = tw.read(mixed)
    assert (reading.count, reading.colour, reading.shape, reading.readable) == (2, None, "square", False)
    assert reading.attributes_right("two red squares") == 2


def test_verdict_grid_frames_by_the_oracle(tmp_path):
    from PIL import Image

    from rdfast.toyworld.figures import ALIGNED, MISALIGNED, verdict_grid

    p = tw.Prompt(1, "green", "circle")
    seed = fresh_seeds(1)[0]
    wrong, _ = tw.render_misaligned(p, seed, "shape")
    path = verdict_grid([tw.render(p, seed), wrong], [p, p], str(tmp_path / "grid.png"), scale=1)
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert tuple(grid[2, 2]) == ALIGNED and tuple(grid[2, 64 + 8 + 2]) == MISALIGNED
    with pytest.raises(ValueError, match="images for"):
        verdict_grid([wrong], [p, p], str(tmp_path / "bad.png"))


def box_blur(image, radius):
    """Mean over a (2 radius + 1)^2 window: the soft edges and rounded corners a decoder leaves."""
    padded = np.pad(image.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    n = 2 * radius + 1
    return np.round(sum(padded[dy:dy + 64, dx:dx + 64] for dy in range(n) for dx in range(n)) / n ** 2).astype(np.uint8)


def test_oracle_reads_blurred_renders():
    """Shapes are told apart by their top/bottom balance and box corners, which survive blur (fill ratios do
    not: a blurred square fills 0.85 of its box, a blurred triangle 0.65)."""
    cases = [(p, s) for p in tw.prompts("all") for s in fresh_seeds(4)]
    assert np.mean([tw.is_aligned(box_blur(tw.render(p, s), 1), p) for p, s in cases]) >= 0.97
    assert np.mean([tw.is_aligned(box_blur(tw.render(p, s), 2), p) for p, s in cases]) >= 0.85
