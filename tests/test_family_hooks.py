"""The engine's family hooks carry what a new family needs without touching the engine's core.

A test family on the tiny Qwen2-VL adds the two things today's newer backbones add: a per-layer input at
every position (as Qwen3-VL's deepstack features are) and a per-sequence state that runs along the sequence
and must be handed from a shared prefix to its suffixes (as Qwen3.5's linear-attention state is). Scores
through the engine's shared prefixes and batches must equal the same family run one item at a time with
nothing shared, and both must differ from the family without the hooks (so the hooks are really used).
"""
from dataclasses import replace

import pytest
import torch
from transformers import DynamicCache

from conftest import load_rm
from rdfast.engine import EngineOptions
from rdfast.families.qwen2_vl import Qwen2VLFamily
from rdfast.model import RewardModel
from rdfast.testing import random_images


class StateCache(DynamicCache):
    """A KV cache plus one running state [B, D] per decoder layer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.states = {}


class HookedFamily(Qwen2VLFamily):
    supports_varlen = False  # a running state cannot be packed across sequences

    def __init__(self, base: Qwen2VLFamily, n_layers: int, width: int, seed: int):
        self.__dict__.update(base.__dict__)
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(n_layers, width, width, generator=g) / width**0.5

    def sequence_inputs(self, embedding, input_ids, media, features, device):
        seq = super().sequence_inputs(embedding, input_ids, media, features, device)
        # one input per layer at every position, from the token's own embedding (media features included)
        extra = 0.05 * torch.tanh(torch.einsum("td,lde->tle", seq.embeds, self.mix.to(seq.embeds)))
        return replace(seq, extras={"layer_input": extra})

    def new_cache(self, text_config):
        return StateCache(config=text_config)

    def expand_cache(self, cache, batch_size, text_config):
        out = super().expand_cache(cache, batch_size, text_config)
        out.states = {k: v.expand(batch_size, -1) for k, v in cache.states.items()}
        return out

    def language_forward(self, language_model, embeds, positions, attention_mask, cache, extras, **kwargs):
        def hook(layer):
            def add(module, args, output):
                x = extras["layer_input"][:, :, layer].to(output.dtype)  # [B, T, D], zero at padding
                running = x.cumsum(dim=1)
                if layer in cache.states:
                    running = running + cache.states[layer][:, None]
                cache.states[layer] = running[:, -1]  # padding adds zeros: the state after the last real token
                return output + x + 0.1 * torch.tanh(running)
            return add

        handles = [m.register_forward_hook(hook(k)) for k, m in enumerate(language_model.layers)]
        try:
            return super().language_forward(language_model, embeds, positions, attention_mask, cache, extras, **kwargs)
        finally:
            for h in handles:
                h.remove()


def hooked_model(seed: int) -> RewardModel:
    plain = load_rm("qwen2_vl")
    text = plain.model.config.get_text_config()
    family = HookedFamily(plain.family, text.num_hidden_layers, text.hidden_size, seed)
    return RewardModel(plain.model, plain.tokenizer, family, plain.answers)


def logprobs(rm, items, **options):
    saved, rm.options = rm.options, EngineOptions(**options)  # the defaults, changed only as given
    try:
        with torch.inference_mode():
            return rm.item_logprobs(items)
    finally:
        rm.options = saved


@pytest.mark.parametrize("batching", ["length", "padded", "varlen"])
def test_per_layer_input_and_running_state_survive_prefix_sharing_and_batching(batching, gen):
    seed = int(torch.randint(0, 2**30, (1,), generator=gen))
    rm = hooked_model(seed)
    refs = random_images(2, sizes=((56, 56), (84, 56)), seed=seed)
    cands = random_images(4, sizes=((56, 56), (84, 56), (56, 84), (56, 56)), seed=seed + 1)
    items = rm.encode(["a fox"] * 4 + ["two cats on a mat"] * 2,
                      [[refs[0]] * 4 + [refs[1]] * 2, cands + cands[:2]])
    alone = torch.cat([logprobs(rm, [it], prefix_cache=False, batch_size=1) for it in items])
    rm.engine.stats.clear()
    shared = logprobs(rm, items, batching=batching, batch_size=3)
    assert rm.engine.stats["prefix_tokens"] > 0 and rm.engine.stats["groups"] >= 1  # prefixes were shared
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=0)  # fp32: 1e-5 in log P
    unhooked = logprobs(load_rm("qwen2_vl"), items)
    assert (shared - unhooked).abs().max() > 1e-3  # the hooks change the scores: they are really applied
