"""Qwen3.5 (dense and MoE): Qwen3-VL's pixels and positions without deepstack, a hybrid language model, answers
after an empty thinking block.

MoE (``qwen3_5_moe``): the same vision tower, processor, template and hybrid layer pattern; only each decoder
layer's MLP differs (routed experts plus a gated shared expert), which no hook touches, so one class serves both.

Pixels and positions: transformers maps ``qwen3_5`` to the Qwen2-VL image processor (``Qwen2VLImageProcessorPil``,
patch 16, merge 2), and its ``get_rope_index`` places media tokens as Qwen3-VL's does, so both come from
``Qwen3VLFamily``. Its vision tower returns merged features only (no deepstack), so features, sequence inputs
and the language-model call are the plain ones of ``Qwen2VLFamily`` / ``Family``.

Hybrid layers: most decoder layers are Gated DeltaNet linear attention (a causal convolution and a recurrent
state per sequence), every few a full-attention layer. A shared prefix therefore hands on, per suffix, the KV
cache of the full-attention layers AND each linear layer's convolution window and recurrent state
(``expand_cache``). Suffixes are never packed into one row (``supports_varlen = False``): the recurrent state
would run from one packed sequence into the next (transformers' gated-delta torch fallback takes no sequence
boundaries), so the engine batches by length instead and says so once. The cache internals used here (each
linear layer's ``conv_states`` / ``recurrent_states``, ``Cache.update_conv_state`` / ``update_recurrent_state``;
rdfast/private_apis.py) are tested on transformers 5.24 (tests/test_qwen3_5.py) and 5.17
(scripts/check_hybrid_prefix.py); on another version the engine runs this family without shared prefixes
(``prefix_cache_refusal``) and says so once.

Where it answers: Qwen3.5's chat template opens a thinking block after the generation prompt unless
``enable_thinking=False``, which renders an empty, closed one (``<think>\\n\\n</think>\\n\\n``). rdfast renders
with ``enable_thinking=False``: the yes/no answer is read as the first token after the closed thinking block,
where the model gives its final answer without reasoning.
"""
from __future__ import annotations

import functools

import torch

from .base import Family
from .qwen2_vl import Qwen2VLFamily
from .qwen3_vl import Qwen3VLFamily

#: transformers versions (major.minor) the hybrid shared prefix was tested on (5.17: scripts/check_hybrid_prefix.py)
HYBRID_PREFIX_TESTED = ("5.17", "5.24", "5.25")


@functools.cache
def branched_linear_layer():
    """transformers' ``LinearAttentionLayer`` for a suffix batch: the new recurrent state replaces the one the
    suffix started from instead of being copied into it (``copy_``), so autograd keeps the starting state (the
    prefix's, which gradients must reach; in place, backward fails with "modified by an inplace operation")."""
    from transformers.cache_utils import LinearAttentionLayer  # heavy

    class BranchedLinearLayer(LinearAttentionLayer):
        def update_recurrent_state(self, recurrent_states, state_idx: int = 0, **kwargs):
            self.recurrent_states[state_idx] = recurrent_states
            self.is_recurrent_states_initialized[state_idx] = True
            return recurrent_states

    return BranchedLinearLayer


class Qwen3_5Family(Qwen3VLFamily):
    name = "qwen3_5"
    supports_varlen = False  # a recurrent state cannot be packed across sequences
    chat_template_kwargs = {"enable_thinking": False}  # answer after an empty, closed thinking block

    def __init__(self, config, tokenizer, image_processor, video_processor: dict | None = None):
        super().__init__(config, tokenizer, image_processor, video_processor)
        text = config.get_text_config()
        self.linear_layers = [k for k, kind in enumerate(text.layer_types) if kind == "linear_attention"]
        self.conv_kernel = text.linear_conv_kernel_dim

    def features(self, base_model, encoded, dtype, device) -> list[torch.Tensor]:
        return Qwen2VLFamily.features(self, base_model, encoded, dtype, device)  # no deepstack

    def sequence_inputs(self, embedding, input_ids, media, features, device):
        return Family.sequence_inputs(self, embedding, input_ids, media, features, device)

    def language_forward(self, language_model, embeds, positions, attention_mask, cache, extras,
                         **attention_kwargs) -> torch.Tensor:
        return Family.language_forward(self, language_model, embeds, positions, attention_mask, cache, extras,
                                       **attention_kwargs)

    def prefix_cache_refusal(self) -> str | None:
        import transformers  # heavy

        version = ".".join(transformers.__version__.split(".")[:2])
        if version not in HYBRID_PREFIX_TESTED:
            return (f"the hybrid shared prefix (linear-attention state) is tested on transformers "
                    f"{', '.join(HYBRID_PREFIX_TESTED)}, not {transformers.__version__}")
        return None

    def expand_cache(self, cache, batch_size: int, text_config):
        """Full-attention layers: the prefix keys and values, expanded (views; a suffix's update concatenates).
        Linear layers (``branched_linear_layer``): the prefix's convolution window copied into the new cache's
        own per-row tensor (transformers updates it in place), its recurrent state expanded (replaced, never
        written, by the suffix). The prefix cache itself is never written."""
        out = self.new_cache(text_config)
        for layer, entry in enumerate(cache.layers):
            if layer in self.linear_layers:
                out.layers[layer] = branched_linear_layer()()
                conv, state = entry.conv_states[0], entry.recurrent_states[0]  # 5.17 has no Cache getters
                out.update_conv_state(conv.expand(batch_size, *conv.shape[1:]), layer,
                                      conv_kernel_size=self.conv_kernel)
                out.update_recurrent_state(state.expand(batch_size, *state.shape[1:]), layer)
            else:
                out.update(entry.keys.expand(batch_size, -1, -1, -1), entry.values.expand(batch_size, -1, -1, -1),
                           layer)
        return out
