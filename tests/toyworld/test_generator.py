"""The toy generator: a FLUX pipeline over the world's words, sampled through rdfast.diffusion's wrapper."""
import os

import pytest
import torch

from rdfast import toyworld as tw
from rdfast.diffusion.pipelines import adapt
from rdfast.toyworld.generator import TEXT_TOKENS, build_pipeline, sample, vocabulary

SMALL = dict(vae_channels=(8, 16, 16), width=32, heads=2, double_layers=1, single_layers=1, text_width=16)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline(seed=int.from_bytes(os.urandom(2), "little"), **SMALL)


def test_one_token_per_word_and_short_sequences(pipe):
    for tok in (pipe.tokenizer, pipe.tokenizer_2):
        for p in tw.prompts("all"):
            ids = tok(p.text).input_ids
            words = tok.convert_ids_to_tokens(ids)
            assert [w for w in words if w in vocabulary()] == p.text.split()
            assert tok.unk_token_id not in ids and len(ids) <= TEXT_TOKENS
    wrapper = adapt(pipe)
    assert wrapper.max_sequence_length == TEXT_TOKENS  # the FLUX wrapper reads the tokenizer's length
    prompt_embeds, pooled = wrapper.encode(["one red circle", "two red circles"])
    assert prompt_embeds.shape == (2, TEXT_TOKENS, SMALL["text_width"]) and pooled.shape == (2, SMALL["text_width"])
    assert not torch.allclose(prompt_embeds[0], prompt_embeds[1])  # the count word reaches the embedding


def test_samples_depend_only_on_their_prompt_and_seed(pipe):
    seeds = [int.from_bytes(os.urandom(4), "little") for _ in range(3)]
    prompts = ["one red circle", "two blue squares", "three yellow triangles"]
    together = sample(pipe, prompts, seeds, steps=3)
    assert together.shape == (3, 3, 64, 64) and together.dtype == torch.float32
    assert 0 <= float(together.min()) and float(together.max()) <= 1
    alone = sample(pipe, prompts[1:2], seeds[1:2], steps=3)
    assert torch.allclose(together[1:2], alone, atol=1e-5)  # fp32: batch-independent
    again = sample(pipe, prompts[::-1], seeds[::-1], steps=3, batch=2)
    assert torch.allclose(together, again.flip(0), atol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-2)  # different seeds and prompts differ
    with pytest.raises(ValueError, match="prompts for"):
        sample(pipe, prompts, seeds[:2])


def test_built_modules_are_in_eval_mode(pipe):
    """Dropout off: a freshly built T5 encoder would otherwise drop features at random on every encode."""
    assert not any(m.training for name in ("text_encoder", "text_encoder_2", "vae", "transformer")
                   for m in getattr(pipe, name).modules())
    wrapper = adapt(pipe)
    assert torch.equal(wrapper.encode(["two blue squares"])[0], wrapper.encode(["two blue squares"])[0])


def test_unknown_setting_is_named():
    with pytest.raises(ValueError, match="widht"):
        build_pipeline(widht=3)
