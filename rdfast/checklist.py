"""Many questions per image in one call: checklists (``RewardModel.ask``) and images x prompts matrices
(``RewardModel.score_matrix``). ``ChecklistPlan`` flattens a call into pointwise items and folds their
scores back; ``RewardModel`` scores the items in between.

Each (image, question) pair is one pointwise item whose prompt is the question, exactly as ``score`` would
build it; all pairs go through the encoder and the engine in one call, so each distinct image is loaded,
preprocessed and run through the vision tower once, and items are grouped by the engine's longest-common-
prefix rule (each group's prefix runs once: the instruction, and with it a question shared by many images
or an image asked many questions, as the layout puts them first). The scores equal separate ``score``
calls.

The aggregate of one image is the weighted mean of its P(yes): sum_q w_q * p_q / sum_q w_q over the
questions it was asked (uniform weights when none are given).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import InputError
from .images import as_image_list


@dataclass
class Checklist:
    """The answers of one ``ask`` call.

    Attributes:
        p_yes: float32 [N, Q] P(yes) of image n for its question q (Q: the longest question list); 0 where
            ``mask`` is False.
        mask: bool [N, Q], True where image n was asked question q (all True for a shared list).
        aggregate: float32 [N], the weighted mean of each image's P(yes) (module docstring).
        questions: the questions of each image, [N][Q_n].
    """

    p_yes: torch.Tensor
    mask: torch.Tensor
    aggregate: torch.Tensor
    questions: list[list[str]]


def _is_text_list(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(q, str) for q in value)


def per_image_questions(questions, n_images: int) -> list[list[str]]:
    """[N][Q_n] questions from a shared list (every image asked all) or one list per image."""
    if isinstance(questions, str):
        raise InputError("expected a list of questions (or one list per image), got a single string",
                         field="questions")
    if _is_text_list(questions):
        lists = [list(questions)] * n_images
    elif isinstance(questions, (list, tuple)) and all(_is_text_list(q) for q in questions):
        lists = [list(q) for q in questions]
        if len(lists) != n_images:
            raise InputError(f"questions has {len(lists)} lists but images has {n_images} items")
    else:
        raise InputError("questions must be a list of strings or one list of strings per image", field="questions")
    for i, qs in enumerate(lists):
        if not qs:
            raise InputError("no questions for this image", i, "questions")
    return lists


def per_image_weights(weights, lists: list[list[str]]) -> list[list[float]]:
    """[N][Q_n] finite non-negative weights (a shared list, one list per image, or None: all 1)."""
    if weights is None:
        return [[1.0] * len(qs) for qs in lists]
    if isinstance(weights, torch.Tensor):
        weights = weights.tolist()
    if isinstance(weights, (list, tuple)) and all(isinstance(w, (int, float)) for w in weights):
        weights = [list(weights)] * len(lists)
    if not isinstance(weights, (list, tuple)) or len(weights) != len(lists):
        raise InputError(f"weights must be one number per question (a list) or one list per image ({len(lists)})",
                         field="weights")
    out = []
    for i, (ws, qs) in enumerate(zip(weights, lists)):
        if not isinstance(ws, (list, tuple)) or len(ws) != len(qs):
            raise InputError(f"{len(qs)} questions need {len(qs)} weights, got {ws!r}", i, "weights")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in ws):
            raise InputError(f"weights must be finite and non-negative, got {ws!r}", i, "weights")
        if sum(ws) <= 0:
            raise InputError("the weights of an image must not all be 0", i, "weights")
        out.append([float(w) for w in ws])
    return out


class ChecklistPlan:
    """The flat (image, question) items of one ``ask`` call, and how their scores fold back into a Checklist.

    Args:
        images: N images, as for ``RewardModel.score``.
        questions: a list of Q questions asked of every image, or N lists (one per image; lengths may differ).
        weights: None (uniform), Q numbers, or N lists matching the questions: finite, non-negative, not all 0.
    Raises:
        InputError naming the argument (and the image) before any model work.
    """

    def __init__(self, images, questions, weights=None):
        images = as_image_list(images, "images")
        if not images:
            raise InputError("empty batch", field="images")
        self.questions = per_image_questions(questions, len(images))
        self.weights = per_image_weights(weights, self.questions)
        # the same image object repeated: the encoder loads it once and the engine encodes it once
        self.images = [images[n] for n, qs in enumerate(self.questions) for _ in qs]
        self.prompts = [q for qs in self.questions for q in qs]

    def located(self, err: InputError) -> InputError:
        """``err`` of a flat item, renamed to the image (or the image and question) it came from."""
        if err.index is None or not 0 <= err.index < len(self.prompts):
            return err
        n, q = _position(self.questions, err.index)
        message = str(err).split(": ", 1)[-1]
        if err.field == "images":
            return InputError(message, n, "images")
        return InputError(f"{message} (image {n}, question {q})", field="questions")

    def result(self, p: torch.Tensor) -> Checklist:
        """The Checklist from the flat items' P(yes) [sum_n Q_n]."""
        width = max(len(qs) for qs in self.questions)
        p_yes = torch.zeros(len(self.questions), width, dtype=p.dtype, device=p.device)
        mask = torch.zeros(len(self.questions), width, dtype=torch.bool, device=p.device)
        w = torch.zeros(len(self.questions), width, dtype=torch.float32, device=p.device)
        start = 0
        for n, qs in enumerate(self.questions):
            p_yes[n, : len(qs)] = p[start : start + len(qs)]
            mask[n, : len(qs)] = True
            w[n, : len(qs)] = torch.tensor(self.weights[n], device=p.device)
            start += len(qs)
        return Checklist(p_yes, mask, (p_yes * w).sum(1) / w.sum(1), self.questions)


def _position(lists: list[list[str]], flat_index: int) -> tuple[int, int]:
    for n, qs in enumerate(lists):
        if flat_index < len(qs):
            return n, flat_index
        flat_index -= len(qs)
    raise IndexError(flat_index)
