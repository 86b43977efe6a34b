"""Faster CPU forwards for a loaded model, in place and within fp32 rounding of the stock ones.

- ``fast_cpu_linears`` (rdfast/cpu_packed.py): each plain ``nn.Linear`` multiplies through oneDNN with a weight
  pre-packed into oneDNN's blocked layout, with a backward for forwards that need gradients.
- ``fuse_mlp_activations`` (rdfast/cpu_fused_mlp.py): an MLP's activation (and a gated MLP's product) as oneDNN
  post-ops of its GEMMs, for forwards that need no gradient.
- ``patch_convs_as_matmul``: a patch-embedding convolution whose kernel equals its stride (Qwen2/2.5/3-VL's and
  Qwen3.5's Conv3d, InternVL's Conv2d) is a matrix multiply on flattened patches (through oneDNN too); torch's CPU
  convolution computes it several times slower.
- ``speed_up_cpu``: all three, as ``rdfast.loading`` applies them to every CPU model (float32 or bfloat16) unless
  ``RDFAST_CPU_FAST=0``; ``restore`` undoes them.

Linears and convolutions are switched by changing their class to a subclass with another ``forward``, MLPs by an
instance ``forward``: parameters, state dicts and ``isinstance`` checks (peft's LoRA wrapping) are unchanged.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .cpu_fused_mlp import fuse_mlp_activations, unfuse_mlps
from .cpu_packed import _PACKABLE, FastLinear, _PackedCache, fast_cpu_linears, packed_linear, repack

ENV_SWITCH = "RDFAST_CPU_FAST"


def _patches_as_matmul(conv, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for kernel == stride, no padding: cut x into patches, one GEMM, back to the conv's layout."""
    kernel = conv.kernel_size
    dims = len(kernel)
    spatial = x.shape[-dims:]
    if x.dim() != dims + 2 or any(s % k for s, k in zip(spatial, kernel)):
        return conv._conv_forward(x, conv.weight, conv.bias)
    counts = [s // k for s, k in zip(spatial, kernel)]
    split = [n for pair in zip(counts, kernel) for n in pair]
    # [N, C, n1, k1, n2, k2, ...] -> [N, n1, n2, ..., C, k1, k2, ...]: a pure view when every n is 1 (Qwen)
    patches = x.reshape(x.shape[0], x.shape[1], *split)
    order = [0, *range(2, 2 + 2 * dims, 2), 1, *range(3, 3 + 2 * dims, 2)]
    patches = patches.permute(order).reshape(-1, conv.weight[0].numel())
    out = packed_linear(conv, patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)
    out = out.reshape(x.shape[0], *counts, conv.out_channels)
    return out.permute(0, dims + 1, *range(1, dims + 1))


class PatchConv2d(_PackedCache, nn.Conv2d):
    """A patch-embedding ``nn.Conv2d`` (kernel == stride) computed as one matrix multiply."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _patches_as_matmul(self, x)


class PatchConv3d(_PackedCache, nn.Conv3d):
    """A patch-embedding ``nn.Conv3d`` (kernel == stride) computed as one matrix multiply."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _patches_as_matmul(self, x)


_PATCH_CLASSES = {nn.Conv2d: PatchConv2d, nn.Conv3d: PatchConv3d}


def _is_patch_conv(m: nn.Module) -> bool:
    if type(m) not in _PATCH_CLASSES:
        return False
    unpadded = m.padding == "valid" if isinstance(m.padding, str) else not any(m.padding)
    return (tuple(m.kernel_size) == tuple(m.stride) and unpadded and m.groups == 1 and m.padding_mode == "zeros"
            and all(d == 1 for d in m.dilation))


def patch_convs_as_matmul(module: nn.Module) -> int:
    """Switch each convolution under ``module`` whose kernel equals its stride (no padding, dilation or groups) to
    one matrix multiply on flattened patches; returns how many were switched."""
    switched = 0
    for m in module.modules():
        if _is_patch_conv(m):
            m.__class__ = _PATCH_CLASSES[type(m)]
            switched += 1
    return switched


def restore(module: nn.Module) -> None:
    """Undo ``speed_up_cpu``: stock classes and forwards, packed weights dropped."""
    unfuse_mlps(module)
    stock = {FastLinear: nn.Linear, PatchConv2d: nn.Conv2d, PatchConv3d: nn.Conv3d}
    for m in module.modules():
        if type(m) in stock:
            m.__class__ = stock[type(m)]
    repack(module)


def enabled() -> bool:
    """False when the environment says ``RDFAST_CPU_FAST=0`` (or ``false``/``no``/``off``)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def speed_up_cpu(model: nn.Module, skip: tuple[nn.Module, ...] = ()) -> int:
    """The CPU fast path for a loaded model (``rdfast.loading``): linears through oneDNN, MLP activations fused into
    them, patch convolutions as matrix multiplies. Nothing happens for a model off the CPU, one with a parameter outside float32/bfloat16, or
    when ``RDFAST_CPU_FAST=0``. The linears stay stock when their packed copies would take more than a quarter of
    the memory free now (a large model would otherwise run out of memory).

    Returns:
        How many modules were switched.
    """
    params = list(model.parameters())
    if not enabled() or not params or any(p.device.type != "cpu" or p.dtype not in _PACKABLE for p in params):
        return 0  # float64 reference runs and GPU models stay stock
    skipped = {id(m) for m in skip}
    packed_bytes = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                       if type(m) is nn.Linear and id(m) not in skipped)
    linears = fast_cpu_linears(model, skip) if packed_bytes <= free_memory_bytes() / 4 else 0
    return linears + fuse_mlp_activations(model) + patch_convs_as_matmul(model)


def free_memory_bytes() -> float:
    """Memory free now (physical pages), or infinity where the platform does not say."""
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float("inf")
