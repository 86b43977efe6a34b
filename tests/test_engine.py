"""The engine's optimisations (feature cache, shared prefix, packing) equal the plain padded path."""
import itertools
from dataclasses import replace

import pytest
import torch

from conftest import load_rm
from rdfast.engine import EngineOptions, OutOfMemoryRetry
from rdfast.testing import random_images

PROMPTS = ["a red circle", "two blue squares on a table", "a green triangle"]


def run(rm, items, **options):
    old = rm.options
    rm.options = replace(old, **options)
    try:
        with torch.inference_mode():
            return rm._run(items)
    finally:
        rm.options = old


@pytest.mark.parametrize("feature_cache,prefix_cache,packing", list(itertools.product([False, True], [False, True], [False, True, "varlen"])))
def test_every_combination_equals_the_plain_path(family, feature_cache, prefix_cache, packing, gen):
    rm = load_rm(family)
    seed = int(torch.randint(0, 2**30, (1,), generator=gen))
    sizes = ((56, 56), (84, 56), (56, 84), (112, 84))
    refs = random_images(2, sizes=sizes[:2], seed=seed)
    cands = random_images(4, sizes=sizes, seed=seed + 1)
    # Two references, each against several candidates (some repeated), several prompts: groups of
    # different sizes, suffixes of different lengths, and one loner.
    images1 = [refs[0]] * 4 + [refs[1]] * 3
    images2 = [cands[0], cands[1], cands[2], cands[3], cands[0], cands[3], cands[1]]
    prompts = [PROMPTS[0]] * 4 + [PROMPTS[1]] * 2 + [PROMPTS[2]]
    items = rm.encode(prompts, [images1, images2])
    plain = run(rm, items, feature_cache=False, prefix_cache=False, packing=False, batch_size=3)
    ours = run(rm, items, feature_cache=feature_cache, prefix_cache=prefix_cache, packing=packing, batch_size=2)
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)


def test_plain_path_equals_transformers_forward(family, gen):
    """The reference itself: all switches off is a plain padded ``model(**inputs)``."""
    rm = load_rm(family)
    images = random_images(3, seed=int(torch.randint(0, 2**30, (1,), generator=gen)))
    items = rm.encode(PROMPTS, [images])
    plain = run(rm, items, feature_cache=False, prefix_cache=False, packing=False)
    with torch.no_grad():
        inputs = rm.collate(items)
        logits = rm.model(**inputs).logits[:, -1].double().log_softmax(-1)
    torch.testing.assert_close(plain.double(), logits[:, [rm.yes_token_id, rm.no_token_id]], atol=1e-5, rtol=0)


def test_each_distinct_image_and_prefix_runs_once(gen):
    rm = load_rm("qwen2_vl")
    ref = random_images(1, seed=int(torch.randint(0, 2**30, (1,), generator=gen)))[0]
    cands = random_images(5, sizes=((56, 56),) * 5, seed=3)
    items = rm.encode(["a fox"] * 5, [[ref] * 5, cands])
    rm.engine.stats.clear()
    run(rm, items)
    stats = dict(rm.engine.stats)
    assert stats["images_encoded"] == 6  # 1 reference + 5 candidates, not 10
    cut = rm.engine.prefix_length(items[0])
    assert stats["prefix_tokens"] == cut  # the shared prefix ran once
    assert stats["suffix_tokens"] == sum(len(it.input_ids) - cut for it in items)
    assert stats["padded_tokens"] == 0  # equal-length candidates: nothing padded


def test_qwen_positions_equal_transformers_rope_index(gen):
    for family in ("qwen2_vl", "qwen2_5_vl"):
        rm = load_rm(family)
        images = random_images(2, sizes=((84, 56), (112, 84)), seed=int(torch.randint(0, 2**30, (1,), generator=gen)))
        item = rm.encode(["a cat"], [images[:1], images[1:]])[0]
        inputs = rm.collate([item])
        base = getattr(rm.model, rm.model.base_model_prefix)
        ref, _ = base.get_rope_index(
            input_ids=inputs["input_ids"], image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"], mm_token_type_ids=inputs["mm_token_type_ids"],
        )
        ours = rm.adapter.position_ids(item.input_ids, item.images)
        assert torch.equal(ours, ref[:, 0])


def test_rank_and_gradients_through_the_engine(gen):
    rm = load_rm("qwen2_vl")
    images = [im.requires_grad_() for im in random_images(3, seed=int(torch.randint(0, 2**30, (1,), generator=gen)), kind="tensor")]
    scores = rm.compare(images1=[images[0]] * 2, images2=images[1:], prompts=["a fox"] * 2)
    scores.sum().backward()
    assert all(im.grad is not None and im.grad.abs().sum() > 0 for im in images)


def test_out_of_memory_halves_the_micro_batch():
    seen = []

    def fn(chunk):
        seen.append(len(chunk))
        if len(chunk) > 2:
            raise torch.cuda.OutOfMemoryError("injected")
        return [x * 10 for x in chunk]

    retry = OutOfMemoryRetry(8)
    assert retry.map(fn, list(range(7))) == [x * 10 for x in range(7)]
    assert seen[:3] == [7, 4, 2] and retry.size == 2

    def always(chunk):
        raise torch.cuda.OutOfMemoryError("injected")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        OutOfMemoryRetry(4).map(always, [1, 2, 3])


def test_engine_options_default_on():
    opts = EngineOptions()
    assert opts.feature_cache and opts.prefix_cache and opts.packing


def test_activation_checkpointing_keeps_scores_exact(gen):
    """transformers drops the KV cache in checkpointing layers: the engine must not rely on a shared prefix then."""
    import functools

    from torch.utils.checkpoint import checkpoint

    rm = load_rm("qwen2_vl")
    ref = random_images(1, seed=int(torch.randint(0, 2**30, (1,), generator=gen)))[0]
    cands = [im.requires_grad_() for im in random_images(3, sizes=((56, 56),) * 3, seed=4, kind="tensor")]
    expected = rm.compare(images1=[ref] * 3, images2=[c.detach() for c in cands], prompts=["a fox"] * 3)
    layers = [m for m in rm.model.modules() if hasattr(m, "gradient_checkpointing")]
    saved = [(m.gradient_checkpointing, m.training) for m in layers]
    try:
        for m in layers:
            m.gradient_checkpointing, m.training = True, True
            m._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
        got = rm.compare(images1=[ref] * 3, images2=cands, prompts=["a fox"] * 3)
        got.sum().backward()
    finally:
        for m, (gc, tr) in zip(layers, saved):
            m.gradient_checkpointing, m.training = gc, tr
    torch.testing.assert_close(got.detach(), expected, atol=1e-7, rtol=1e-5)
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in cands)
