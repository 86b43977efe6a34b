"""The toy world of issue 13: prompts, a renderer and an oracle, where every reward can be checked against truth.

A side package: rdfast's core never imports it; it may import the core and ``rdfast.diffusion``.

    from rdfast import toyworld as tw
    tw.prompts("in_domain")        # 27 Prompts in a fixed order ("ood": the 9 held-out, "all": 36)
    p = tw.Prompt.parse("two blue squares")     # str(p) == p.text == "two blue squares"; p.ood
    image = tw.render(p, seed=3)   # uint8 numpy [64, 64, 3], deterministic in (prompt, seed)
    bad, shown = tw.render_misaligned(p, seed=3, which="colour")  # which: count|colour|shape|"any"|a tuple
    tw.read(image)                 # Reading(count=2, colour='blue', shape='square'); .readable, .as_tuple()
    tw.is_aligned(image, p)        # True
    tw.alignment(images, prompts)  # fraction aligned; images uint8 [H, W, 3], PIL or float [3, H, W] in [0, 1]
    tw.to_tensor(images)           # float32 [N, 3, 64, 64] in [0, 1] (rdfast's image tensor convention)

The world (fixed by the issue): 64x64 RGB on white; count 1-3 ("one/two/three", plural "s" for 2-3); colours
red (220,30,30), green (30,170,60), blue (30,70,220), yellow (235,190,20), flat fill; circle, axis-aligned
square, upright isosceles triangle, each in an s x s box with s in 12-20, at least 2 px apart, fully inside.
Held out (OOD, any count): red triangle, green square, blue circle. The layout depends only on (seed, count).

The oracle's tolerance to generator artefacts is stated in ``oracle.py``'s constants (BACKGROUND_MIN_CHANNEL,
MIN_COMPONENT_AREA, COLOUR_TOLERANCE, MIN/MAX_OBJECT_SIDE, MIN_FILL and the shape tests).

| module    | job |
|---|---|
| world.py  | the vocabulary: ``Prompt``, ``prompts(split)``, colours, shapes, OOD combinations |
| render.py | ``render``, ``render_misaligned``, ``misaligned_prompt``, ``layout``, ``to_tensor`` |
| oracle.py | ``read`` -> ``Reading``, ``is_aligned``, ``alignment`` |
| data.py   | preference pairs from renders (``render_pairs``, ``both_orders``), ``roc_auc`` |
| preference.py | preference data from generator samples read by the oracle, plus renderer pairs; save/load |
| schedule.py | cached stages with dependencies run side by side in worker processes, and their plan |
| warmup.py | the reward models' shared warm-up (captions, one-attribute VQA, reading the reward layouts) |
| reward_models.py | sizes x paradigms, cached stages, ``measure``, ``ship``; the shipped models in ``models/`` |
| refl_study.py | ReFL of the generator per reward model (Best-of-N top-2 / bottom-2 reference, regressive scalar) |
| refresh.py | one more round of preference data from ReFL'd generators' samples; the pairwise RM fine-tuned on it |
| search_study.py | Search over Paths with the verifier vs Best-of-N at equal total calls, read by the oracle |
"""
from .oracle import Reading, alignment, is_aligned, read
from .render import misaligned_prompt, render, render_misaligned, to_tensor
from .world import ATTRIBUTES, COLOURS, COUNTS, OOD_COMBOS, SHAPES, SIZE, Prompt, prompts

__all__ = ["ATTRIBUTES", "COLOURS", "COUNTS", "OOD_COMBOS", "SHAPES", "SIZE", "Prompt", "Reading", "alignment",
           "is_aligned", "misaligned_prompt", "prompts", "read", "render", "render_misaligned", "to_tensor"]
