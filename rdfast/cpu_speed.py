"""Faster CPU forwards for a loaded model, in place and within fp32 rounding of the stock ones.

- ``fast_cpu_linears``: each plain ``nn.Linear`` multiplies through oneDNN with a weight pre-packed into
  oneDNN's blocked layout (``torch.ops.mkldnn``; private, listed in rdfast/private_apis.py). torch's default CPU
  GEMM is MKL, whose generic path on AMD CPUs runs at about half oneDNN's rate. The oneDNN op has no autograd, so a
  forward that needs a gradient goes through ``_PackedLinear``, whose backward multiplies by the original weight.
  The packed copy is rebuilt when the weight changes in place (an optimizer step bumps ``weight._version``) or is
  replaced; an edit through ``weight.data`` bypasses the version counter, so 64 sampled entries are also compared
  per forward (``repack`` forces a rebuild). The packed copy costs as much memory as the weight itself; tensor
  subclasses (FSDP2's DTensor shards) keep ``F.linear``.
- ``patch_convs_as_matmul``: a patch-embedding convolution whose kernel equals its stride (Qwen2/2.5/3-VL's and
  Qwen3.5's Conv3d, InternVL's Conv2d) is a matrix multiply on flattened patches (through oneDNN too); torch's CPU
  convolution computes it several times slower.
- ``speed_up_cpu``: both, as ``rdfast.loading`` applies them to every CPU model (float32 or bfloat16) unless
  ``RDFAST_CPU_FAST=0``; ``restore`` undoes them.

Modules are switched by changing their class to a subclass with another ``forward``: parameters, state dicts and
``isinstance`` checks (peft's LoRA wrapping) are unchanged.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

ENV_SWITCH = "RDFAST_CPU_FAST"
_MKLDNN_OPS = ("_reorder_linear_weight", "_linear_pointwise")  # torch.ops.mkldnn names (private_apis.py)
_PACKABLE = (torch.float32, torch.bfloat16)
_SAMPLES = 64  # weight entries compared per forward to notice edits the version counter misses


def _mkldnn_ops():
    """(reorder, linear) from torch.ops.mkldnn, or None where this torch build lacks them (plain F.linear then)."""
    try:
        return tuple(getattr(torch.ops.mkldnn, name) for name in _MKLDNN_OPS)
    except (AttributeError, RuntimeError):
        return None


def _packable(weight: torch.Tensor) -> bool:
    if type(weight) not in (torch.Tensor, nn.Parameter) or weight.device.type != "cpu" or weight.dtype not in _PACKABLE:
        return False
    return weight.dtype != torch.bfloat16 or _bf16_packable()


@functools.cache
def _bf16_packable() -> bool:
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return supported is not None and bool(supported())


class _PackedLinear(torch.autograd.Function):
    """oneDNN forward with the packed weight; backward as plain matmuls with the original weight."""

    @staticmethod
    def forward(ctx, x, weight, bias, packed, linear):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return linear(x, packed, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        flat = grad.reshape(-1, grad.shape[-1])
        grad_x = (grad @ weight) if need_x else None
        grad_w = (flat.t() @ x.reshape(-1, x.shape[-1])) if need_w else None
        grad_b = flat.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None


def _packed_weight(owner: nn.Module, weight: torch.Tensor, reorder) -> torch.Tensor:
    """``weight`` packed for oneDNN, cached on ``owner`` and rebuilt when the weight changed."""
    data = weight.detach()
    key = (data.data_ptr(), weight._version, data.dtype, data.shape)
    flat = data.reshape(-1)
    step = max(1, flat.numel() // _SAMPLES)
    cached = owner.__dict__.get("_rdfast_packed")
    # the sample catches in-place edits through .data (peft's default merge), which bypass the version counter
    if cached is None or cached[0] != key or not torch.equal(cached[1], flat[::step]):
        with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable outside inference mode
            cached = (key, flat[::step].clone(), reorder(data, None))
        owner.__dict__["_rdfast_packed"] = cached
    return cached[2]


def packed_linear(owner: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through oneDNN with ``weight`` packed once per change (cached on ``owner``);
    plain ``F.linear`` where the ops, the dtype or the device do not allow it."""
    ops = _mkldnn_ops()
    if ops is None or x.dtype != weight.dtype or not _packable(weight) or x.device != weight.device:
        return F.linear(x, weight, bias)
    reorder, linear = ops
    packed = _packed_weight(owner, weight, reorder)
    tracked = (weight, x) if bias is None else (weight, x, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tracked):
        return _PackedLinear.apply(x, weight, bias, packed, linear)
    return linear(x, packed, bias, "none", [], "")


class _PackedCache:
    """Copies and pickles (deepcopy, torch.save of a whole model) leave out the packed weight: oneDNN's opaque
    tensors have no storage to copy, and the copy repacks on its first forward."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_rdfast_packed", None)
        return state


class FastLinear(_PackedCache, nn.Linear):
    """An ``nn.Linear`` whose CPU forward runs through oneDNN with a cached packed weight (see module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(self, x, self.weight, self.bias)


def repack(module: nn.Module) -> None:
    """Drop every cached packed weight under ``module`` (after editing weights through ``.data``)."""
    for m in module.modules():
        m.__dict__.pop("_rdfast_packed", None)


def fast_cpu_linears(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> int:
    """Switch each plain ``nn.Linear`` under ``module`` (in place) to the oneDNN packed-weight forward.

    Args:
        module: any module (a whole transformers model, a vision tower, a single linear).
        skip: modules left as they are (rdfast skips the LM head, which its own head kernel reads).
    Returns:
        How many linears were switched: 0 where torch lacks the oneDNN ops, whose forward stays ``F.linear``.
    """
    if _mkldnn_ops() is None:
        return 0
    skipped = {id(m) for m in skip}
    switched = 0
    for m in module.modules():
        if type(m) is nn.Linear and id(m) not in skipped:
            m.__class__ = FastLinear
            switched += 1
    return switched


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
    """Undo ``fast_cpu_linears`` and ``patch_convs_as_matmul``: stock classes, packed weights dropped."""
    stock = {FastLinear: nn.Linear, PatchConv2d: nn.Conv2d, PatchConv3d: nn.Conv3d}
    for m in module.modules():
        if type(m) in stock:
            m.__class__ = stock[type(m)]
    repack(module)


def enabled() -> bool:
    """False when the environment says ``RDFAST_CPU_FAST=0`` (or ``false``/``no``/``off``)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def speed_up_cpu(model: nn.Module, skip: tuple[nn.Module, ...] = ()) -> int:
    """The CPU fast path for a loaded model (``rdfast.loading``): linears through oneDNN, patch convolutions as
    matrix multiplies. Nothing happens for a model off the CPU, one with a parameter outside float32/bfloat16, or
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
    return linears + patch_convs_as_matmul(model)


def free_memory_bytes() -> float:
    """Memory free now (physical pages), or infinity where the platform does not say."""
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float("inf")
