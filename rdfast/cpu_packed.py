"""oneDNN linears on CPU with pre-packed weights: the primitive under ``rdfast.cpu_speed``.

Each switched ``nn.Linear`` (``FastLinear``) multiplies through oneDNN with its weight packed into oneDNN's blocked
layout (``torch.ops.mkldnn``; private, listed in rdfast/private_apis.py). torch's default CPU GEMM is MKL, whose
generic path on AMD CPUs runs at about half oneDNN's rate. The oneDNN op has no autograd, so a forward that needs a
gradient goes through ``_PackedLinear``, whose backward multiplies by the original weight. The packed copy is
rebuilt when the weight changes in place (an optimizer step bumps ``weight._version``) or is replaced; an edit
through ``weight.data`` bypasses the version counter, so 64 sampled entries are also compared per forward
(``repack`` forces a rebuild). The packed copy costs as much memory as the weight itself; tensor subclasses (FSDP2's
DTensor shards) keep ``F.linear``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

_MKLDNN_OPS = ("_reorder_linear_weight", "_linear_pointwise")  # torch.ops.mkldnn names (private_apis.py)
_PACKABLE = (torch.float32, torch.bfloat16)
_SAMPLES = 64  # weight entries compared per forward to notice edits the version counter misses
_CACHE = "_rdfast_packed"  # the attribute prefix of every packed copy cached on a module


def _mkldnn_ops():
    """(reorder, linear) from torch.ops.mkldnn, or None where this torch build lacks them (plain F.linear then)."""
    try:
        return tuple(getattr(torch.ops.mkldnn, name) for name in _MKLDNN_OPS)
    except (AttributeError, RuntimeError):
        return None


def _packable(weight: torch.Tensor) -> bool:
    if type(weight) not in (torch.Tensor, nn.Parameter) or weight.device.type != "cpu" or weight.dtype not in _PACKABLE:
        return False
    return weight.dtype != torch.bfloat16 or bf16_packable()


@functools.cache
def bf16_packable() -> bool:
    """Whether this CPU has oneDNN bf16 kernels (AMX/AVX512-BF16; not on every AMD EPYC): else bf16 linears stay stock."""
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


def _packed_weight(owner, weight: torch.Tensor, reorder, slot: str = _CACHE, transform=None) -> torch.Tensor:
    """``weight`` (or ``transform(weight)``) packed for oneDNN, cached on ``owner`` under ``slot`` and rebuilt when
    the weight changed."""
    data = weight.detach()
    key = (data.data_ptr(), weight._version, data.dtype, data.shape)
    flat = data.reshape(-1)
    step = max(1, flat.numel() // _SAMPLES)
    cached = owner.__dict__.get(slot)
    # the sample catches in-place edits through .data (peft's default merge), which bypass the version counter
    if cached is None or cached[0] != key or not torch.equal(cached[1], flat[::step]):
        with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable outside inference mode
            cached = (key, flat[::step].clone(), reorder(data if transform is None else transform(data), None))
        owner.__dict__[slot] = cached
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
        return {k: v for k, v in self.__dict__.items() if not k.startswith(_CACHE)}


class FastLinear(_PackedCache, nn.Linear):
    """An ``nn.Linear`` whose CPU forward runs through oneDNN with a cached packed weight (see module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(self, x, self.weight, self.bias)


def repack(module: nn.Module) -> None:
    """Drop every cached packed weight under ``module`` (after editing weights through ``.data``)."""
    for m in module.modules():
        for owner in (m, m.__dict__.get("forward")):  # a fused MLP's forward (cpu_fused_mlp.py) caches its own
            for key in [k for k in getattr(owner, "__dict__", {}) if k.startswith(_CACHE)]:
                del owner.__dict__[key]


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
