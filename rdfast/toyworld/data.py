"""Preference pairs of the toy world, labelled as the paper labels them: aligned beats misaligned, and more
attributes right beats fewer.

Every record is an ``rdfast.train.PreferenceRecord`` whose ``extra`` says where it came from and why its label
holds: ``source`` ("renderer" here; generator samples labelled by the oracle, ``preference.py``, use "generator"),
``kind`` ("aligned": an aligned image against a misaligned one; "graded": one attribute wrong against two wrong),
``chosen`` and ``rejected`` (the prompts the two images show), ``seeds`` (their render seeds, chosen first) and
``right`` (how many of the prompt's attributes each image shows, in image order).
Image 1 is the pairwise reward model's reference, image 2 the candidate: label 2 means the candidate wins.

    train = render_pairs(4000, "in_domain", seed=0)              # in-domain prompts only, never an OOD combination
    test = both_orders(render_pairs(200, "in_domain", seed=1, graded=0.0))   # each pair in both image orders
    ood = both_orders(render_pairs(200, "ood", seed=2, graded=0.0))          # the held-out combinations

Seeds: every image's layout seed is drawn from ``numpy.random.default_rng([seed, split])``, so different
``seed`` arguments give independent layouts (collisions among 2**31 seeds are negligible).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..train import PreferenceRecord
from .render import misaligned_prompt, render
from .world import ATTRIBUTES, prompts

INSTRUCTION = "Check the colour, shape and count."  #: the toy reward models' task-aware instruction
SPLITS = ("in_domain", "ood")
KINDS = ("aligned", "graded")


def pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image, "RGB")


def render_pairs(n: int, split: str = "in_domain", seed: int = 0, graded: float = 0.25,
                 instruction: str = INSTRUCTION) -> list[PreferenceRecord]:
    """``n`` renderer preference pairs over ``split``'s prompts ("in_domain" or "ood").

    A fraction ``graded`` of them are "graded" pairs (the chosen image has one attribute wrong, the rejected
    one two); the rest pit an aligned render against one with 1 attribute wrong (cycling count, colour, shape)
    or, every fourth aligned pair, 2 attributes wrong. In-domain pairs never show an OOD combination (the
    renderer's ``misaligned_prompt`` keeps in-domain prompts in-domain). The preferred image's side is drawn.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if not 0.0 <= graded <= 1.0:
        raise ValueError(f"graded={graded!r} must lie in [0, 1]")
    pool = prompts(split)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, SPLITS.index(split)])
    out = []
    for i in range(n):
        prompt = pool[int(rng.integers(len(pool)))]
        s1, s2 = (int(v) for v in rng.integers(0, 2**31, size=2))
        first = ATTRIBUTES[i % 3]
        second = ATTRIBUTES[(i + 1 + int(rng.integers(2))) % 3]  # another attribute than ``first``
        if rng.random() < graded:
            kind = "graded"
            chosen = misaligned_prompt(prompt, s1, first)
            rejected = misaligned_prompt(prompt, s2, (first, second))
        else:
            kind, chosen = "aligned", prompt
            rejected = misaligned_prompt(prompt, s2, (first, second) if i % 4 == 3 else first)
        candidate_wins = bool(rng.random() < 0.5)
        good, bad = pil(render(chosen, s1)), pil(render(rejected, s2))
        image1, image2 = (bad, good) if candidate_wins else (good, bad)
        right = [sum(getattr(shown, a) == getattr(prompt, a) for a in ATTRIBUTES) for shown in (chosen, rejected)]
        out.append(PreferenceRecord(
            prompt.text, image1, image2, 2 if candidate_wins else 1, instruction=instruction,
            extra={"source": "renderer", "kind": kind, "split": split, "chosen": chosen.text,
                   "rejected": rejected.text, "seeds": [s1, s2], "right": right[::-1] if candidate_wins else right}))
    return out


def both_orders(records: list[PreferenceRecord]) -> list[PreferenceRecord]:
    """Each record followed by its mirror (images swapped, label flipped): accuracy counted in both orders."""
    out = []
    for rec in records:
        mirror = PreferenceRecord(rec.prompt, rec.image2, rec.image1, 3 - rec.label, instruction=rec.instruction,
                                  extra=dict(rec.extra, mirrored=True))
        out += [rec, mirror]
    return out


def verifier_items(records: list[PreferenceRecord]) -> tuple[list, list[str], list[int]]:
    """(images, prompts, labels 1 = aligned / 0 = not) from "aligned" pairs, each image once: the verifier's
    ROC-AUC set."""
    images, texts, labels, seen = [], [], [], set()
    for rec in records:
        if rec.extra.get("kind") != "aligned" or rec.extra.get("mirrored"):
            continue
        for k, image in enumerate((rec.image1, rec.image2)):
            key = ("sample", rec.extra["images"][k]) if "images" in rec.extra else id(image)
            if key in seen:  # generator pairs share samples: each counts once
                continue
            seen.add(key)
            images.append(image)
            texts.append(rec.prompt)
            labels.append(int(k + 1 == rec.label))
    return images, texts, labels


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: P(a random positive scores above a random negative), ties counting half."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        raise ValueError("roc_auc needs at least one positive and one negative label")
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (len(pos) * len(neg)))
