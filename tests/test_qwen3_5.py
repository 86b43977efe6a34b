"""Qwen3.5 (dense and MoE): where it answers, and the hybrid language model's state through shared prefixes and
batching.

The generic checks (scores pointwise and pairwise against the plain transformers forward on ``build_inputs``,
pixels against the HF Pil processor, batch/order/padding-side invariance, every engine switch against the
padded path, float64 finite-difference gradients) run for Qwen3.5 through the ``family`` fixture in
tests/test_model.py and tests/test_engine.py. Here: what is new with linear attention and the thinking block,
and the MoE model (same family class, so kept out of the generic fixture): scores against a float64 plain
forward, every engine switch, the hybrid prefix state and pixel gradients.
"""
import copy
import itertools
import warnings

import pytest
import torch
from test_qwen3_vl import reference_video, run, seed_of

from conftest import load_rm, skip_unless_prefix_shared
from rdfast import engine
from rdfast.errors import InputError
from rdfast.families import qwen3_5
from rdfast.families.qwen3_5 import Qwen3_5Family
from rdfast.model import RewardModel
from rdfast.testing import random_images

PROMPTS = ["a red circle", "two blue squares on a table"]


def plain(rm, items):
    return run(rm, items, feature_cache=False, prefix_cache=False, batching="padded")


def with_family(rm, family_class) -> RewardModel:
    from transformers import AutoImageProcessor

    family = family_class(rm.model.config, rm.tokenizer, AutoImageProcessor.from_pretrained(rm.model.name_or_path))
    return RewardModel(rm.model, rm.tokenizer, family, rm.answers)


def test_answers_after_an_empty_closed_thinking_block(gen):
    """rdfast renders with enable_thinking=False (recorded in the family): every prompt ends with the empty,
    closed thinking block, and the yes/no tokens are single tokens right after it. User text cannot open one."""
    rm = load_rm("qwen3_5")
    assert rm.family.chat_template_kwargs == {"enable_thinking": False}
    items = rm.encode(PROMPTS, [random_images(2, sizes=((64, 64), (96, 64)), seed=seed_of(gen))])
    for item in items:
        assert rm.tokenizer.decode(item.input_ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    end = rm.tokenizer.decode(items[0].input_ids)
    for word, token in (("yes", rm.yes_token_id), ("no", rm.no_token_id)):
        assert rm.tokenizer(end + word, add_special_tokens=False)["input_ids"][-1] == token
    with pytest.raises(InputError, match="<think>"):
        rm.encode(["a cat <think> yes"], [random_images(1, seed=1)])


class DropsRecurrentState(Qwen3_5Family):
    """The bug the prefix test guards against: suffixes start from a zero recurrent state (conv window kept)."""

    def expand_cache(self, cache, batch_size, text_config):
        out = super().expand_cache(cache, batch_size, text_config)
        for layer in self.linear_layers:
            states = out.layers[layer].recurrent_states
            states[0] = torch.zeros_like(states[0])
        return out


class DropsConvWindow(Qwen3_5Family):
    """The other half: suffixes start with an empty convolution window (recurrent state kept)."""

    def expand_cache(self, cache, batch_size, text_config):
        out = super().expand_cache(cache, batch_size, text_config)
        for layer in self.linear_layers:
            out.layers[layer].conv_states[0].zero_()
        return out


@pytest.mark.parametrize("family,batching", [("qwen3_5", "length"), ("qwen3_5", "padded"), ("qwen3_5_moe", "length")])
def test_shared_prefix_hands_on_the_linear_attention_state(family, batching, gen):
    """Each reference image sits in a shared prefix (run once), the candidates in suffixes; the scores must equal
    the plain padded forward, which runs every sequence whole through the Gated DeltaNet layers.

    Failing with the bug: with the recurrent state or the convolution window of the linear layers dropped in
    ``expand_cache`` (the subclasses above; the same change made in ``Qwen3_5Family.expand_cache`` itself failed
    the equality too), log P moves by ~8e-2 (recurrent) and ~2e-2 (conv) against the 1e-5 allowed.
    """
    rm = load_rm(family)
    skip_unless_prefix_shared(rm)
    seed = seed_of(gen)
    refs = random_images(2, sizes=((64, 64), (96, 64)), seed=seed)
    cands = random_images(4, sizes=((64, 64), (96, 64), (64, 96), (128, 96)), seed=seed + 1)
    items = rm.encode([PROMPTS[0]] * 4 + [PROMPTS[1]] * 2, [[refs[0]] * 4 + [refs[1]] * 2, cands + cands[:2]])
    reference = plain(rm, items)
    rm.engine.stats.clear()
    shared = run(rm, items, batching=batching, batch_size=3)
    reference_end = [it.input_ids.index(rm.family.image_token_id) + it.media[0].n_tokens for it in (items[0], items[4])]
    assert rm.engine.stats["groups"] == 2 and rm.engine.stats["prefix_tokens"] >= sum(reference_end)
    torch.testing.assert_close(shared, reference, atol=1e-5, rtol=0)  # fp32: 1e-5 in log P
    for bug in (DropsRecurrentState, DropsConvWindow):
        assert (run(with_family(rm, bug), items, batching=batching, batch_size=3) - reference).abs().max() > 1e-3


def test_one_token_suffix_after_a_shared_prefix(gen):
    """The same item twice shares all but its last token: the suffix is one token, which transformers runs
    through its single-step paths (conv update in place, recurrent step); still equal to the plain path and the
    prefix's state is left intact for the next suffix batch (batch_size=1: two batches from one prefix)."""
    rm = load_rm("qwen3_5")
    skip_unless_prefix_shared(rm)
    image = random_images(1, sizes=((96, 64),), seed=seed_of(gen))
    items = rm.encode([PROMPTS[1]] * 2, [image * 2])
    rm.engine.stats.clear()
    shared = run(rm, items, batch_size=1)
    assert rm.engine.stats["groups"] == 1 and rm.engine.stats["suffix_tokens"] == 2
    torch.testing.assert_close(shared, plain(rm, items), atol=1e-5, rtol=0)


def test_varlen_runs_as_length_batching_with_one_notice(gen, monkeypatch):
    """Packed suffixes would let the recurrent state run from one sequence into the next (transformers' gated-delta
    torch fallback takes no boundaries): the engine batches by length instead, says so once, never installs the
    varlen attention, and the scores equal the padded path."""
    monkeypatch.setattr(engine, "_NOTICED", set())
    rm = load_rm("qwen3_5")
    seed = seed_of(gen)
    items = rm.encode(PROMPTS * 2, [random_images(4, sizes=((64, 64), (96, 64), (64, 96), (64, 64)), seed=seed)])
    implementation = rm.model.config.get_text_config()._attn_implementation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        packed = run(rm, items, batching="varlen")
        run(rm, items, batching="varlen")
    notices = [w for w in caught if "varlen" in str(w.message)]
    assert len(notices) == 1 and "runs as 'length'" in str(notices[0].message)
    assert rm.model.config.get_text_config()._attn_implementation == implementation
    torch.testing.assert_close(packed, plain(rm, items), atol=1e-5, rtol=0)


def test_untested_transformers_version_turns_the_shared_prefix_off_with_one_notice(gen, monkeypatch):
    monkeypatch.setattr(engine, "_NOTICED", set())
    monkeypatch.setattr(qwen3_5, "HYBRID_PREFIX_TESTED", ("0.0",))
    rm = load_rm("qwen3_5")
    image = random_images(1, sizes=((64, 64),), seed=seed_of(gen))
    items = rm.encode(PROMPTS[:1] * 3, [image * 3, random_images(3, seed=seed_of(gen))])
    rm.engine.stats.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = run(rm, items)
        run(rm, items)
    assert [str(w.message).count("prefix_cache runs off") for w in caught] == [1]
    assert rm.engine.stats["prefix_tokens"] == 0 and rm.engine.stats["groups"] == 0
    torch.testing.assert_close(scores, plain(rm, items), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_5_moe"])
def test_pixel_gradients_through_the_shared_prefix_equal_the_plain_forward(family, gen):
    """Gradients of the summed log P(yes) to tensor images, the reference image in the shared prefix (its state
    reaches the suffixes through the copied conv window and recurrent state), equal those of the plain
    transformers forward on ``build_inputs``.

    Failing with the bug: with suffix caches of transformers' own ``LinearAttentionLayer`` (the recurrent state
    copied in place over the one the suffix started from), backward raised "one of the variables needed for
    gradient computation has been modified by an inplace operation". For MoE this replaces the finite-difference
    check (top-k routing is piecewise constant, so difference quotients can straddle a switch)."""
    rm = load_rm(family)
    skip_unless_prefix_shared(rm)
    seed = seed_of(gen)
    ref = random_images(1, sizes=((64, 96),), seed=seed, kind="tensor")[0]
    cands = random_images(3, sizes=((64, 64), (96, 64), (70, 70)), seed=seed + 1, kind="tensor")

    def leaves():
        return [ref.clone().requires_grad_()], [c.clone().requires_grad_() for c in cands]

    (r1,), c1 = leaves()
    rm.engine.stats.clear()
    rm.compare(images1=[r1] * 3, images2=c1, prompts=[PROMPTS[0]] * 3).log().sum().backward()
    assert rm.engine.stats["groups"] == 1
    (r2,), c2 = leaves()
    inputs = rm.build_inputs(prompts=[PROMPTS[0]] * 3, images1=[r2] * 3, images2=c2)
    logits = rm.model(**inputs).logits[:, -1].log_softmax(-1)
    logits[:, rm.yes_token_id].sum().backward()
    for ours, reference in zip([r1, *c1], [r2, *c2]):
        assert ours.grad.abs().max() > 0
        torch.testing.assert_close(ours.grad, reference.grad, atol=1e-6, rtol=1e-4)


def test_shared_prefix_holding_a_video_hands_on_the_linear_attention_state(gen):
    """Image-to-video pairs against one reference: the conditioning image and the reference video (Qwen3-VL's
    timestamped blocks, from the same processor) sit in the shared prefix, the candidate videos in suffixes;
    equal to the plain path, and dropping the recurrent state moves the scores far off."""
    rm = load_rm("qwen3_5")
    skip_unless_prefix_shared(rm)
    cond = random_images(1, sizes=((64, 64),), seed=seed_of(gen))[0]
    clips = [torch.rand(n, 3, 64, 64, generator=gen) for n in (4, 3, 4, 5)]
    items = rm.encode(["a dog running"] * 3, [[clips[0]] * 3, clips[1:]], kind="video", condition=[cond] * 3,
                      fps=2.0)
    reference = plain(rm, items)
    rm.engine.stats.clear()
    shared = run(rm, items)
    video_at = [k for k, t in enumerate(items[0].input_ids) if t == rm.family.video_token_id]
    assert rm.engine.stats["groups"] == 1 and rm.engine.stats["prefix_tokens"] > video_at[items[0].media[1].n_tokens - 1]
    torch.testing.assert_close(shared, reference, atol=1e-5, rtol=0)
    assert (run(with_family(rm, DropsRecurrentState), items) - reference).abs().max() > 1e-3


@pytest.mark.parametrize("n_frames,fps", [(5, 3.0)])
def test_video_pixels_and_timestamps_equal_the_qwen3_vl_processor(n_frames, fps, gen):
    """transformers maps qwen3_5 to Qwen3-VL's video processor and processor (video_processing_auto.py,
    processing_auto.py), so a Qwen3.5 clip must match the same independent reference (tests/test_qwen3_vl.py)."""
    import json
    import os

    rm = load_rm("qwen3_5")
    with open(os.path.join(rm.model.name_or_path, "video_preprocessor_config.json")) as f:
        settings = json.load(f)
    frames = torch.rand(n_frames, 3, 64, 96, generator=gen)
    ours = rm.family.encode_video(frames, fps)
    patches, grid, expansion = reference_video(frames, fps, settings, (rm.family.vision_start, rm.family.video_token,
                                                                       rm.family.vision_end))
    torch.testing.assert_close(ours.pixels, patches, atol=1e-6, rtol=0)
    assert ours.meta == grid and ours.expansion == expansion


# ---- MoE --------------------------------------------------------------------------------------------------------
def test_moe_scores_equal_a_float64_plain_transformers_forward(gen):
    """Pairwise and pointwise log P(yes) of the engine (fp32, default switches: feature cache, shared prefix,
    length batching) equal a float64 copy of the model run by transformers on ``build_inputs``, its experts run
    by transformers' eager per-expert loop (torch's grouped GEMM, the fp32 default, has no float64): 1e-5 in log P."""
    rm = load_rm("qwen3_5_moe")
    reference = copy.deepcopy(rm.model).double()
    reference.set_experts_implementation("eager")
    seed = seed_of(gen)
    first = random_images(2, sizes=((64, 64), (96, 64)), seed=seed)
    second = random_images(2, sizes=((64, 96), (64, 64)), seed=seed + 1)
    for ours, inputs in ((rm.compare(first, second, PROMPTS), rm.build_inputs(PROMPTS, first, second)),
                         (rm.score(second, PROMPTS), rm.build_inputs(PROMPTS, second))):
        inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
        with torch.no_grad():
            logp = reference(**inputs).logits[:, -1].log_softmax(-1)[:, rm.yes_token_id]
        torch.testing.assert_close(ours.double().log(), logp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("feature_cache,prefix_cache,batching",
                         list(itertools.product([False, True], [False, True], ["length", "varlen"])))
def test_moe_every_engine_switch_equals_the_padded_path(feature_cache, prefix_cache, batching, gen):
    """Two references against several candidates (one repeated), one loner: groups of different sizes and
    suffixes of different lengths, batch size 2; varlen runs as length batching (the family refuses packing)."""
    rm = load_rm("qwen3_5_moe")
    seed = seed_of(gen)
    refs = random_images(2, sizes=((64, 64), (96, 64)), seed=seed)
    cands = random_images(3, sizes=((64, 64), (64, 96), (96, 96)), seed=seed + 1)
    items = rm.encode([PROMPTS[0]] * 3 + [PROMPTS[1]] * 2 + ["a green triangle"],
                      [[refs[0]] * 3 + [refs[1]] * 3, cands + [cands[2], cands[0], cands[1]]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # varlen's one-time notice
        ours = run(rm, items, feature_cache=feature_cache, prefix_cache=prefix_cache, batching=batching,
                   batch_size=2)
    torch.testing.assert_close(ours, plain(rm, items), atol=1e-5, rtol=0)
