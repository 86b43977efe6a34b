"""VAE decoder patching: per-submodule activation checkpointing, switched on and off at call time."""
from __future__ import annotations

import functools

import torch


def _checkpoint(fn, *args):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *args, use_reentrant=False)


#: decoder submodules checkpointed one by one when a decode is checkpointed
_FINE_TYPES = ("ResnetBlock2D", "Upsample2D", "Attention")


def _fine_forward(orig, decoder, *args, **kwargs):
    if decoder._rdfast_fine_checkpointing and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(orig, *args, use_reentrant=False, **kwargs)
    return orig(*args, **kwargs)


def _fine_checkpointing(decoder: torch.nn.Module, enabled: bool):
    """Switch per-submodule activation checkpointing in a VAE decoder on or off.

    The first call wraps the ``forward`` of each resnet, attention and upsampler (an instance attribute: the
    class, the weights and the state dict are untouched); the flag then decides at call time, so the
    checkpointed decode's backward recomputation sees the same setting as its forward. Diffusers' own
    per-block checkpointing is turned off: nesting both would recompute every block twice.
    """
    if not getattr(decoder, "_rdfast_fine_installed", False):
        for m in decoder.modules():
            if type(m).__name__ in _FINE_TYPES:
                m.forward = functools.partial(_fine_forward, m.forward, decoder)
        decoder._rdfast_fine_installed = True
    decoder._rdfast_fine_checkpointing = bool(enabled)
    if getattr(decoder, "gradient_checkpointing", False):
        decoder.gradient_checkpointing = False
