"""VLM families: everything that differs between VLM families lives here, one module per family.

A family turns loaded images into the family's pixel inputs (in torch, so gradients reach the pixels),
expands each image placeholder of the rendered prompt into the family's media tokens, computes positions,
and supplies the engine's hooks (``Family`` in base.py). The engine above is family-agnostic.
"""
from __future__ import annotations

from .base import EncodedMedia, Family, SequenceInputs
from .internvl import InternVLFamily
from .qwen2_vl import Qwen2VLFamily
from .qwen3_5 import Qwen3_5Family
from .qwen3_vl import Qwen3VLFamily

FAMILY_CLASSES = {
    "qwen2_vl": Qwen2VLFamily,
    "qwen2_5_vl": Qwen2VLFamily,
    "qwen3_vl": Qwen3VLFamily,
    "qwen3_vl_moe": Qwen3VLFamily,
    "qwen3_5": Qwen3_5Family,
    "qwen3_5_moe": Qwen3_5Family,
    "internvl": InternVLFamily,
}


def family_for(config, tokenizer, image_processor, video_processor: dict | None = None) -> Family:
    """The family of a transformers config (by ``config.model_type``).

    Args:
        config: the checkpoint's transformers config.
        tokenizer: its tokenizer.
        image_processor: its HF image processor (the PIL class without torchvision).
        video_processor: its video_preprocessor_config.json as a dict, or None.
    Returns:
        the family instance.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILY_CLASSES:
        raise ValueError(
            f"unsupported model type {model_type!r}; rdfast supports {sorted(FAMILY_CLASSES)} "
            "(Qwen2-VL, Qwen2.5-VL, Qwen3-VL (dense and MoE), Qwen3.5 (dense and MoE) and transformers-native InternVL checkpoints)"
        )
    return FAMILY_CLASSES[model_type](config, tokenizer, image_processor, video_processor)


__all__ = ["FAMILY_CLASSES", "EncodedMedia", "Family", "SequenceInputs", "family_for"]
