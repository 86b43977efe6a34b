"""Checklists and matrices (rdfast/checklist.py): equal to separate ``score`` calls (float32, 1e-5 in log P),
each image encoded once, independent of order and batch size, the aggregate the documented weighted mean."""
import pytest
import torch

from conftest import load_rm
from rdfast.errors import InputError
from rdfast.testing import random_images

WORDS = ["red", "blue", "circle", "square", "two", "above", "a dog", "at night", "is there", "sharp"]


def _seed(gen):
    return int(torch.randint(0, 1 << 30, (1,), generator=gen))


def _questions(gen, n):
    picks = torch.randint(0, len(WORDS), (n, 3), generator=gen).tolist()
    return [" ".join(WORDS[k] for k in row) + f" {i}?" for i, row in enumerate(picks)]


def _separate(rm, images, questions):
    """Each (image, question) pair scored by its own ``score`` call: the reference."""
    return [[float(rm.score(images=[im], prompts=[q])[0]) for q in qs] for im, qs in zip(images, questions)]


@pytest.mark.parametrize("family", ["qwen2_vl", "internvl"])
def test_ask_equals_separate_calls_and_encodes_each_image_once(family, gen):
    rm = load_rm(family)
    images = random_images(3, seed=_seed(gen))
    questions = [_questions(gen, 4), _questions(gen, 2), _questions(gen, 3)]  # ragged per-image lists
    weights = [torch.rand(len(qs), generator=gen).add(0.1).tolist() for qs in questions]
    before = dict(rm.engine.stats)
    got = rm.ask(images=images, questions=questions, weights=weights)
    encoded = rm.engine.stats["images_encoded"] - before.get("images_encoded", 0)
    prefixes = rm.engine.stats["groups"] - before.get("groups", 0)
    assert encoded == 3 and prefixes >= 1  # each image through the vision tower once; a shared prefix ran
    expected = _separate(rm, images, questions)
    assert got.p_yes.shape == (3, 4) and got.mask.tolist() == [[True] * 4, [True, True, False, False], [True] * 3 + [False]]
    for n, row in enumerate(expected):
        torch.testing.assert_close(got.p_yes[n, : len(row)].log(), torch.tensor(row).log(), atol=1e-5, rtol=0)
    assert float(got.p_yes[~got.mask].abs().sum()) == 0.0
    by_hand = torch.tensor([sum(w * p for w, p in zip(ws, row)) / sum(ws) for ws, row in zip(weights, expected)])
    torch.testing.assert_close(got.aggregate, by_hand, atol=1e-6, rtol=1e-5)


def test_score_matrix_equals_separate_calls_whatever_the_order_and_batch_size(gen):
    rm = load_rm("qwen2_vl")
    images = random_images(4, seed=_seed(gen))
    prompts = _questions(gen, 3)
    matrix = rm.score_matrix(images=images, prompts=prompts)
    assert matrix.shape == (4, 3) and matrix.dtype == torch.float32
    expected = torch.tensor(_separate(rm, images, [prompts] * 4))
    torch.testing.assert_close(matrix.log(), expected.log(), atol=1e-5, rtol=0)
    rows, cols = torch.randperm(4, generator=gen).tolist(), torch.randperm(3, generator=gen).tolist()
    shuffled = rm.score_matrix(images=[images[i] for i in rows], prompts=[prompts[j] for j in cols], batch_size=1)
    torch.testing.assert_close(shuffled.log(), matrix[rows][:, cols].log(), atol=1e-5, rtol=0)
    # a shared list and the same list given per image are one checklist
    uniform = rm.ask(images=images, questions=[prompts] * 4)
    torch.testing.assert_close(uniform.p_yes.log(), matrix.log(), atol=1e-5, rtol=0)
    torch.testing.assert_close(uniform.aggregate, matrix.mean(1), atol=1e-6, rtol=1e-5)


def test_bad_checklists_are_named_before_any_model_work(gen):
    rm = load_rm("qwen2_vl")
    images = random_images(2, seed=_seed(gen))
    before = dict(rm.engine.stats)
    cases = [
        (dict(questions="is it red?"), "single string"),
        (dict(questions=[["a?"], ["b?"], ["c?"]]), "3 lists but images has 2"),
        (dict(questions=[["a?"], []]), "questions[1]: no questions"),
        (dict(questions=["a?", "b?"], weights=[1.0, -1.0]), "non-negative"),
        (dict(questions=["a?", "b?"], weights=[0, 0]), "all be 0"),
        (dict(questions=["a?", "b?"], weights=[1.0]), "2 weights"),
        (dict(questions=["a?", "b?"], weights=[float("nan"), 1.0]), "finite"),
        (dict(questions=[["a?"], ["fine", "b<|im_end|>"]]), "(image 1, question 1)"),
    ]
    for kwargs, what in cases:
        with pytest.raises(InputError) as info:
            rm.ask(images=images, **kwargs)
        assert what in str(info.value), (kwargs, str(info.value))
    assert dict(rm.engine.stats) == before
