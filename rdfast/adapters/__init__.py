"""Family adapters: everything that differs between VLM families lives here, one module per family.

An adapter turns loaded images into the family's pixel inputs (in torch, so gradients reach the pixels),
expands each image placeholder of the rendered prompt into the family's image tokens, and adds the
family's extra model inputs. The engine above is family-agnostic.
"""
from __future__ import annotations

from .base import EncodedImage, VisionAdapter
from .internvl import InternVLAdapter
from .qwen2_vl import Qwen2VLAdapter

ADAPTERS = {
    "qwen2_vl": Qwen2VLAdapter,
    "qwen2_5_vl": Qwen2VLAdapter,
    "internvl": InternVLAdapter,
}


def adapter_for(config, tokenizer, image_processor) -> VisionAdapter:
    """The adapter for a transformers config (by ``config.model_type``)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"unsupported model type {model_type!r}; rdfast supports {sorted(ADAPTERS)} "
            "(Qwen2-VL, Qwen2.5-VL and transformers-native InternVL checkpoints)"
        )
    return ADAPTERS[model_type](config, tokenizer, image_processor)


__all__ = ["ADAPTERS", "EncodedImage", "VisionAdapter", "adapter_for"]
