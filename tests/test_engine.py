"""The engine's optimisations (feature cache, shared prefix, batching) equal the plain padded path."""
import itertools
from dataclasses import replace

import pytest
import torch

from conftest import load_rm, skip_unless_prefix_shared
from rdfast.engine import EngineOptions, OutOfMemoryRetry
from rdfast.testing import random_images

PROMPTS = ["a red circle", "two blue squares on a table", "a green triangle"]


def common_prefix(items, media_token_ids) -> int:
    """Positions every item shares from the start (each keeps one more), a media token counting as shared
    only for the same media object: computed here from the token ids, independently of the engine."""
    def keyed(it):
        owners = [id(m) for m in it.media for _ in range(m.n_tokens)]
        out, k = [], 0
        for t in it.input_ids:
            if t in media_token_ids:
                out.append((t, owners[k]))
                k += 1
            else:
                out.append((t, None))
        return out

    keys = [keyed(it) for it in items]
    n = 0
    while all(len(k) > n + 1 for k in keys) and all(k[n] == keys[0][n] for k in keys):
        n += 1
    return n


def run(rm, items, **options):
    old = rm.options
    rm.options = replace(old, **options)
    try:
        with torch.inference_mode():
            return rm.item_logprobs(items)
    finally:
        rm.options = old


@pytest.mark.parametrize("feature_cache,prefix_cache,batching",
                         list(itertools.product([False, True], [False, True], ["padded", "length", "varlen"])))
def test_every_combination_equals_the_plain_path(family, feature_cache, prefix_cache, batching, gen):
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
    plain = run(rm, items, feature_cache=False, prefix_cache=False, batching="padded", batch_size=3)
    ours = run(rm, items, feature_cache=feature_cache, prefix_cache=prefix_cache, batching=batching, batch_size=2)
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)


def test_plain_path_equals_transformers_forward(family, gen):
    """The reference itself: all switches off is a plain padded ``model(**inputs)``."""
    rm = load_rm(family)
    images = random_images(3, seed=int(torch.randint(0, 2**30, (1,), generator=gen)))
    items = rm.encode(PROMPTS, [images])
    plain = run(rm, items, feature_cache=False, prefix_cache=False, batching="padded")
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
    cut = common_prefix(items, rm.family.media_token_ids)
    assert cut > 0 and stats["prefix_tokens"] == cut  # the shared prefix ran once
    assert stats["suffix_tokens"] == sum(len(it.input_ids) - cut for it in items)
    assert stats["padded_tokens"] == 0  # equal-length candidates: nothing padded


def test_qwen_positions_equal_transformers_rope_index(gen):
    for family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"):
        rm = load_rm(family)
        images = random_images(2, sizes=((84, 56), (112, 84)), seed=int(torch.randint(0, 2**30, (1,), generator=gen)))
        item = rm.encode(["a cat"], [images[:1], images[1:]])[0]
        inputs = rm.collate([item])
        base = getattr(rm.model, rm.model.base_model_prefix)
        ref, _ = base.get_rope_index(
            input_ids=inputs["input_ids"], image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"], mm_token_type_ids=inputs["mm_token_type_ids"],
        )
        ours = rm.family.position_ids(item.input_ids, item.media)
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


def test_engine_options_default_on_and_checked():
    opts = EngineOptions()
    assert opts.feature_cache and opts.prefix_cache and opts.batching == "length" and not opts.plain
    with pytest.raises(ValueError, match="batching"):
        EngineOptions(batching=True)


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


def test_one_image_many_questions_and_one_prompt_many_rationales_share_their_prefix(family, gen):
    """The sharing rule is the longest common prefix of tokens and media, wherever the media sit: items that
    differ only after the image (many questions about one image), or only in appended generated text (one
    prompt followed by K rationales), run the shared part once, and score as the plain path does."""
    rm = load_rm(family)
    skip_unless_prefix_shared(rm)
    seed = int(torch.randint(0, 2**30, (1,), generator=gen))
    image = random_images(1, seed=seed)[0]
    base = rm.encode(["a fox in the snow"], [[image]])[0]
    words = rm.tokenizer(" yes no image better quality prompt", add_special_tokens=False)["input_ids"]
    tails = [[words[int(j)] for j in torch.randint(0, len(words), (int(n),), generator=gen)]
             for n in torch.randint(1, 6, (5,), generator=gen)]
    after_image = max(k for k, t in enumerate(base.input_ids) if t in rm.family.media_token_ids) + 2
    questions = [replace(base, input_ids=base.input_ids[:after_image] + t) for t in tails]
    rationales = [replace(base, input_ids=base.input_ids + t) for t in tails]
    for items in (questions, rationales):
        plain = run(rm, items, feature_cache=False, prefix_cache=False, batching="padded")
        rm.engine.stats.clear()
        ours = run(rm, items)
        torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)  # fp32: 1e-5 in log P
        cut = common_prefix(items, rm.family.media_token_ids)
        assert cut >= after_image - 1 and rm.engine.stats["prefix_tokens"] == cut
        assert rm.engine.stats["images_encoded"] == 1


def test_prefix_groups_partition_and_never_cost_more_than_simple_rules(gen):
    """Random key lists: every item in exactly one group, each cut a real common prefix that leaves every
    member a suffix token, and the tokens run never exceed those of "no sharing" or "one group"."""
    from rdfast.engine import GROUP_OVERHEAD_TOKENS, prefix_groups

    def cost(groups, keys):
        return sum(sum(len(keys[i]) for i in m) - (len(m) - 1) * c + (GROUP_OVERHEAD_TOKENS if c else 0)
                   for m, c in groups)

    for _ in range(200):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        stem = torch.randint(0, 3, (int(torch.randint(0, 80, (1,), generator=gen)),), generator=gen).tolist()
        keys = []
        for _ in range(n):
            head = stem[: int(torch.randint(0, len(stem) + 1, (1,), generator=gen))]
            tail = torch.randint(0, 3, (int(torch.randint(1, 40, (1,), generator=gen)),), generator=gen).tolist()
            keys.append(head + tail)
        groups = prefix_groups(keys)
        assert sorted(i for m, _ in groups for i in m) == list(range(n))
        for members, c in groups:
            assert all(c < len(keys[i]) and keys[i][:c] == keys[members[0]][:c] for i in members)
        everything = [(list(range(n)), 0)]
        lcp = 0
        while all(len(k) > lcp + 1 for k in keys) and all(k[lcp] == keys[0][lcp] for k in keys):
            lcp += 1
        assert cost(groups, keys) <= cost(everything, keys)
        if n > 1 and lcp:
            assert cost(groups, keys) <= cost([(list(range(n)), lcp)], keys)
