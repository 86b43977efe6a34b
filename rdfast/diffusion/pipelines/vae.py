"""VAE decoder patching: per-submodule activation checkpointing, switched on and off at call time.

The patched classes are matched by name (diffusers' ``ResnetBlock2D``, ``Upsample2D``, ``Attention``; listed in
``rdfast.private_apis``), so no diffusers import is needed here.
"""
from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

#: decoder submodules checkpointed one by one when a decode is checkpointed
FINE_TYPES = ("ResnetBlock2D", "Upsample2D", "Attention")


def checkpointed(fn, *args):
    """``fn(*args)`` under one non-reentrant activation checkpoint: only the inputs are kept for backward.

    Args:
        fn: a function of tensors (and plain values), returning a tensor or a tuple / list of tensors.
        *args: its positional arguments.

    Returns:
        what ``fn(*args)`` returns; backward recomputes ``fn``.
    """
    return checkpoint(fn, *args, use_reentrant=False)


def _fine_forward(orig, decoder, *args, **kwargs):
    if decoder._rdfast_fine_checkpointing and torch.is_grad_enabled():
        return checkpoint(orig, *args, use_reentrant=False, **kwargs)
    return orig(*args, **kwargs)


def set_fine_checkpointing(decoder: torch.nn.Module, enabled: bool) -> None:
    """Switch per-submodule activation checkpointing in a VAE decoder on or off.

    The first call wraps the ``forward`` of each resnet, attention and upsampler (an instance attribute: the
    class, the weights and the state dict are untouched); the flag then decides at call time, so the
    checkpointed decode's backward recomputation sees the same setting as its forward. Diffusers' own
    per-block checkpointing is turned off: nesting both would recompute every block twice.

    Args:
        decoder: a diffusers VAE decoder (``vae.decoder``), patched in place on first use.
        enabled: True checkpoints each patched submodule while gradients are enabled; False runs them plainly.
    """
    if not getattr(decoder, "_rdfast_fine_installed", False):
        for m in decoder.modules():
            if type(m).__name__ in FINE_TYPES:
                m.forward = functools.partial(_fine_forward, m.forward, decoder)
        decoder._rdfast_fine_installed = True
    decoder._rdfast_fine_checkpointing = bool(enabled)
    if getattr(decoder, "gradient_checkpointing", False):
        decoder.gradient_checkpointing = False
