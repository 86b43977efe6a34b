"""Qwen3-VL (dense and MoE): deepstack features survive the feature cache, shared prefixes and every batching.

The generic checks (scores against the plain transformers forward, pixels against the HF processor, batch and
order invariance, every engine switch, finite-difference gradients, positions against ``get_rope_index``) run
for qwen3_vl through the ``family`` fixture in tests/test_model.py and tests/test_engine.py; the MoE model,
which shares the family class, is checked against the plain forward here. Here also: what is new with deepstack.
"""
from dataclasses import replace

import pytest
import torch

from conftest import load_rm
from rdfast.families.qwen3_vl import Qwen3VLFamily
from rdfast.model import RewardModel
from rdfast.testing import random_images

PROMPTS = ["a red circle", "two blue squares on a table", "a green triangle"]


def seed_of(gen):
    return int(torch.randint(0, 2**30, (1,), generator=gen))


def run(rm, items, **options):
    """log P(yes), log P(no) [N, 2] of ``items`` under ``rm.options`` with ``options`` replaced."""
    saved, rm.options = rm.options, replace(rm.options, **options)
    try:
        with torch.inference_mode():
            return rm.item_logprobs(items)
    finally:
        rm.options = saved


def test_features_carry_the_vision_towers_deepstack_outputs(gen):
    """Each item's features hold the merged features and, per deepstack layer, the tower's extra features
    for its tokens: checked against one direct call of the vision tower on the collated pixels."""
    rm = load_rm("qwen3_vl")
    images = random_images(3, sizes=((64, 64), (96, 64), (64, 128)), seed=seed_of(gen))
    media = [it.media[0] for it in rm.encode(PROMPTS, [images])]
    base = rm.engine.base
    with torch.no_grad():
        feats = rm.family.features(base, media, rm.dtype, rm.device)
        pixels = rm.family.collate_images(media, rm.dtype, rm.device)
        tower = base.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"])
    sizes = [m.n_tokens for m in media]
    indexes = rm.model.config.vision_config.deepstack_visual_indexes
    assert len(indexes) == 2 and len(tower.deepstack_features) == 2  # the tiny checkpoint has deepstack on
    for f, tokens, n in zip(feats, tower.pooler_output.split(sizes), sizes):
        assert f.tokens.shape == (n, 64) and f.deepstack.shape == (n, 2, 64)
        torch.testing.assert_close(f.tokens, tokens, atol=0, rtol=0)
    for k, layer in enumerate(tower.deepstack_features):
        torch.testing.assert_close(torch.cat([f.deepstack[:, k] for f in feats]), layer, atol=0, rtol=0)
        assert layer.abs().max() > 0.1


class DropsPrefixDeepstack(Qwen3VLFamily):
    """The bug the prefix test guards against: deepstack additions skipped in any forward that starts from an
    empty cache (every shared prefix, when the items have no loners)."""

    def language_forward(self, language_model, embeds, positions, attention_mask, cache, extras, **kwargs):
        if cache.get_seq_length() == 0:
            extras = {**extras, "visual": torch.zeros_like(extras["visual"])}
        return super().language_forward(language_model, embeds, positions, attention_mask, cache, extras, **kwargs)


@pytest.mark.parametrize("family,batching", [("qwen3_vl", "length"), ("qwen3_vl", "padded"), ("qwen3_vl", "varlen"),
                                             ("qwen3_vl_moe", "length"), ("qwen3_vl_moe", "varlen")])
def test_shared_prefix_holding_an_image_keeps_its_deepstack(family, batching, gen):
    """Each reference image sits in a shared prefix (run once), each candidate in a suffix; scores must equal
    the plain padded forward, where transformers adds every deepstack feature itself.

    Failing with the bug: with ``Qwen3VLFamily.language_forward`` changed to pass no deepstack when
    ``cache.get_seq_length() == 0`` (the prefix forward), this test failed for every batching (log P off by
    ~1e-2 against the 1e-5 allowed); the last assertion shows the same bug, injected through a subclass, moves
    the scores far past the tolerance, so the equality above cannot pass with deepstack dropped in the prefix.
    """
    rm = load_rm(family)
    seed = seed_of(gen)
    refs = random_images(2, sizes=((64, 64), (96, 64)), seed=seed)
    cands = random_images(4, sizes=((64, 64), (96, 64), (64, 96), (128, 96)), seed=seed + 1)
    items = rm.encode([PROMPTS[0]] * 4 + [PROMPTS[1]] * 2, [[refs[0]] * 4 + [refs[1]] * 2, cands + cands[:2]])
    plain = run(rm, items, feature_cache=False, prefix_cache=False, batching="padded")
    rm.engine.stats.clear()
    shared = run(rm, items, batching=batching, batch_size=3)
    # the reference's image tokens (the first image of each item) all lie inside its group's prefix
    reference_end = [it.input_ids.index(rm.family.image_token_id) + it.media[0].n_tokens for it in (items[0], items[4])]
    assert rm.engine.stats["groups"] == 2 and rm.engine.stats["prefix_tokens"] >= sum(reference_end)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)  # fp32: 1e-5 in log P

    buggy = RewardModel(rm.model, rm.tokenizer, DropsPrefixDeepstack(rm.model.config, rm.tokenizer,
                                                                     _processor(rm)), rm.answers)
    assert (run(buggy, items, batching=batching, batch_size=3) - plain).abs().max() > 1e-3


def _processor(rm):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(rm.model.name_or_path)


def test_deepstack_matters_in_suffixes_too(gen):
    """Candidates in suffixes: the same bug in suffix forwards (deepstack passed only from empty caches) is
    caught by the equality with the plain path as well."""

    class DropsSuffixDeepstack(Qwen3VLFamily):
        def language_forward(self, language_model, embeds, positions, attention_mask, cache, extras, **kwargs):
            if cache.get_seq_length() > 0:
                extras = {**extras, "visual": torch.zeros_like(extras["visual"])}
            return super().language_forward(language_model, embeds, positions, attention_mask, cache, extras,
                                            **kwargs)

    rm = load_rm("qwen3_vl")
    seed = seed_of(gen)
    ref = random_images(1, sizes=((64, 64),), seed=seed)[0]
    cands = random_images(3, sizes=((64, 64), (96, 64), (64, 96)), seed=seed + 1)
    items = rm.encode([PROMPTS[2]] * 3, [[ref] * 3, cands])
    plain = run(rm, items, feature_cache=False, prefix_cache=False, batching="padded")
    torch.testing.assert_close(run(rm, items), plain, atol=1e-5, rtol=0)
    buggy = RewardModel(rm.model, rm.tokenizer, DropsSuffixDeepstack(rm.model.config, rm.tokenizer,
                                                                     _processor(rm)), rm.answers)
    assert (run(buggy, items) - plain).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
def test_pixel_gradients_equal_the_plain_forward_gradient(family, gen):
    """Gradients of the summed log P(yes) to tensor images (resized, so the resize is differentiated too)
    through the engine (shared prefix, feature cache, deepstack extras) equal those through the plain
    transformers forward on ``build_inputs``. For MoE this replaces the finite-difference check (top-k routing
    is piecewise constant, so difference quotients can straddle a switch)."""
    rm = load_rm(family)
    seed = seed_of(gen)
    ref = random_images(1, sizes=((56, 84),), seed=seed, kind="tensor")[0]
    cands = random_images(3, sizes=((56, 56), (84, 56), (70, 70)), seed=seed + 1, kind="tensor")

    def leaves():
        return [ref.clone().requires_grad_()], [c.clone().requires_grad_() for c in cands]

    (r1,), c1 = leaves()
    rm.compare(images1=[r1] * 3, images2=c1, prompts=[PROMPTS[0]] * 3).log().sum().backward()
    (r2,), c2 = leaves()
    inputs = rm.build_inputs(prompts=[PROMPTS[0]] * 3, images1=[r2] * 3, images2=c2)
    logits = rm.model(**inputs).logits[:, -1].log_softmax(-1)
    logits[:, rm.yes_token_id].sum().backward()
    for ours, ref_grad in zip([r1, *c1], [r2, *c2]):
        assert ours.grad.abs().max() > 0
        torch.testing.assert_close(ours.grad, ref_grad.grad, atol=1e-6, rtol=1e-4)


# ---- videos ---------------------------------------------------------------------------------------------------
def reference_video(frames, fps, settings, tokens):
    """What Qwen3-VL's processor makes of a clip already at its target size, written from transformers 5.24:
    video_processing_qwen3_vl.py ``_preprocess`` (rescale_and_normalize, lines 316-318) and ``patchify`` (lines
    225-263: pad with the last frame, view, permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)); processing_qwen3_vl.py
    ``_calculate_timestamps`` (lines 173-184: indices padded with the last, idx / fps, mean of each patch's first
    and last) and ``replace_video_token`` (lines 81-103: ``<{t:.1f} seconds>`` + start + tokens + end per
    temporal patch, replacing only the video token, so the template's start and end stay around it).
    Returns (patches, grid, expansion)."""
    p, m, tp = settings["patch_size"], settings["merge_size"], settings["temporal_patch_size"]
    mean = torch.tensor(settings["image_mean"]).view(3, 1, 1)
    std = torch.tensor(settings["image_std"]).view(3, 1, 1)
    video = ((frames - mean) / std)[None]  # [1, T, C, H, W]
    if pad := -video.shape[1] % tp:
        video = torch.cat((video, video[:, -1:].expand(-1, pad, -1, -1, -1)), dim=1)
    _, t, c, h, w = video.shape
    gt, gh, gw = t // tp, h // p, w // p
    patches = video.view(1, gt, tp, c, gh // m, m, p, gw // m, m, p).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    patches = patches.reshape(gt * gh * gw, c * tp * p * p)
    indices = list(range(frames.shape[0]))
    if len(indices) % tp:
        indices.extend(indices[-1] for _ in range(tp - len(indices) % tp))
    times = [i / fps for i in indices]
    times = [(times[i] + times[i + tp - 1]) / 2 for i in range(0, len(times), tp)]
    start, pad_token, end = tokens
    body = "".join(f"<{x:.1f} seconds>" + start + pad_token * (gh * gw // m**2) + end for x in times)
    return patches, (gt, gh, gw), start + body + end


@pytest.mark.parametrize("n_frames,fps", [(4, 2.0), (5, 3.0), (7, 0.5)])
def test_video_pixels_and_timestamps_equal_the_qwen3_vl_processor(n_frames, fps, gen):
    import json
    import os

    rm = load_rm("qwen3_vl")
    with open(os.path.join(rm.model.name_or_path, "video_preprocessor_config.json")) as f:
        settings = json.load(f)
    frames = torch.rand(n_frames, 3, 64, 96, generator=gen)  # 64 x 96: a size the processor keeps
    ours = rm.family.encode_video(frames, fps)
    tokens = (rm.family.vision_start, rm.family.video_token, rm.family.vision_end)
    patches, grid, expansion = reference_video(frames, fps, settings, tokens)
    torch.testing.assert_close(ours.pixels, patches, atol=1e-6, rtol=0)
    assert ours.meta == grid and ours.expansion == expansion
    assert ours.n_tokens == grid[0] * grid[1] * grid[2] // 4
    # through the public path, a tensor clip is taken at rdfast's default rate (2 fps), every frame kept
    item = rm.encode(["a dog"], [[frames]], kind="video")[0]
    default = reference_video(frames, 2.0, settings, tokens)[2]
    assert item.media[0].expansion == default and rm.tokenizer.decode(item.input_ids).count(" seconds>") == grid[0]


@pytest.mark.parametrize("batching", ["length", "varlen"])
def test_shared_prefix_holding_a_video_and_a_conditioning_image_keeps_their_deepstack(batching, gen):
    """Image-to-video pairs against one reference: the conditioning image and the reference video sit in the
    shared prefix, the candidate videos in suffixes (deepstack over images and videos together, as transformers
    joins them); equal to the plain path, and the prefix-deepstack bug moves the scores far off. With that bug
    injected into ``Qwen3VLFamily.language_forward`` itself, this failed too (log P off by ~1e-2)."""
    rm = load_rm("qwen3_vl")
    cond = random_images(1, sizes=((64, 64),), seed=seed_of(gen))[0]
    clips = [torch.rand(n, 3, 64, 64, generator=gen) for n in (4, 3, 4, 5)]
    items = rm.encode(["a dog running"] * 3, [[clips[0]] * 3, clips[1:]], kind="video", condition=[cond] * 3,
                      fps=2.0)
    plain = run(rm, items, feature_cache=False, prefix_cache=False, batching="padded")
    rm.engine.stats.clear()
    shared = run(rm, items, batching=batching)
    assert rm.engine.stats["groups"] == 1 and rm.engine.stats["images_encoded"] == 5
    video_at = [k for k, t in enumerate(items[0].input_ids) if t == rm.family.video_token_id]
    assert rm.engine.stats["prefix_tokens"] > video_at[items[0].media[1].n_tokens - 1]  # the whole reference
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)
    family = DropsPrefixDeepstack(rm.model.config, rm.tokenizer, _processor(rm), rm.family.video_settings)
    buggy = RewardModel(rm.model, rm.tokenizer, family, rm.answers)
    assert (run(buggy, items, batching=batching) - plain).abs().max() > 1e-3


def test_moe_scores_equal_the_plain_transformers_forward(gen):
    """qwen3_vl_moe runs the generic tests only here (it shares Qwen3VLFamily with qwen3_vl): the engine's
    pairwise log P(yes) equals transformers' own forward on ``build_inputs`` (fp32: 1e-5 in log P)."""
    rm = load_rm("qwen3_vl_moe")
    seed = seed_of(gen)
    first = random_images(3, sizes=((64, 64), (96, 64), (64, 96)), seed=seed)
    second = random_images(3, sizes=((96, 64), (64, 64), (64, 128)), seed=seed + 1)
    ours = rm.compare(first, second, PROMPTS).double().log()
    for k in range(3):
        inputs = rm.build_inputs([PROMPTS[k]], [first[k]], [second[k]])
        with torch.no_grad():
            logp = rm.model(**inputs).logits[0, -1].double().log_softmax(-1)[rm.yes_token_id]
        torch.testing.assert_close(ours[k], logp, atol=1e-5, rtol=0)
