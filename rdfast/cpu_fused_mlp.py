"""MLP activations fused into oneDNN's GEMM on CPU, for forwards that need no gradient.

Stock transformers MLPs compute ``fc2(act(fc1(x)))`` or ``down(act(gate(x)) * up(x))`` with the activation and the
gate product as separate passes over the block's widest tensor. On CPU those passes can cost more than the GEMMs
around them (Qwen2-VL's vision QuickGELU: a scale, a sigmoid and a product over [tokens, 4 x width]). oneDNN applies
an activation, or a product with another tensor, as a post-op while the GEMM's output is still in cache:

- two-layer MLPs (``fc1``/``fc2`` or ``linear_fc1``/``linear_fc2``) with SiLU, GELU (erf or tanh) or QuickGELU.
  QuickGELU is x sigmoid(1.702 x); oneDNN's swish post-op has no scale here, so fc1's weight and bias are packed
  times 1.702 (swish(1.702 y) = 1.702 QuickGELU(y)) and fc2's weight divided by 1.702.
- gated MLPs (``gate_proj``/``up_proj``/``down_proj``): act(gate(x)) as a post-op, then up(x) times it as a
  binary post-op.

The activation is recognised by its values on a probe, not by its class name, and each switched MLP is compared
with its stock forward on a random input as it is switched (left stock if they differ). A forward that needs a
gradient, a linear that is no longer a ``FastLinear`` (peft's LoRA wraps it) or another dtype takes the stock
forward. The switch is an instance attribute ``forward`` (``FusedMLPForward``); ``unfuse_mlps`` removes it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_packed import FastLinear, _mkldnn_ops, _packable, _packed_weight, _PackedCache, packed_linear

#: (linear attribute names, activation attribute names, gated)
LAYOUTS = ((("fc1", "fc2"), ("act", "act_fn", "activation_fn"), False),
           (("linear_fc1", "linear_fc2"), ("act_fn",), False),
           (("gate_proj", "up_proj", "down_proj"), ("act_fn",), True))
QUICK_GELU = 1.702


def _post_op(act) -> tuple[str, str, float] | None:
    """(oneDNN post-op, algorithm, input scale) computing ``act``, read off its values on a float64 probe."""
    x = torch.linspace(-8.0, 8.0, 257, dtype=torch.float64)
    try:
        with torch.no_grad():
            y = act(x)
    except Exception:  # an activation that takes no float64 tensor is not one of ours
        return None
    candidates = {("swish", "", 1.0): F.silu(x), ("swish", "", QUICK_GELU): x * torch.sigmoid(QUICK_GELU * x),
                  ("gelu", "none", 1.0): F.gelu(x), ("gelu", "tanh", 1.0): F.gelu(x, approximate="tanh")}
    for op, want in candidates.items():
        if isinstance(y, torch.Tensor) and y.shape == x.shape and torch.allclose(y, want, rtol=0, atol=1e-9):
            return op
    return None


class FusedMLPForward(_PackedCache):
    """The fused forward of one MLP module, set as its instance attribute ``forward``."""

    def __init__(self, module: nn.Module, names: tuple[str, ...], gated: bool, post_op: tuple[str, str, float]):
        self.module, self.names, self.gated = module, names, gated
        self.attr, self.algorithm, self.scale = post_op

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fused(x)
        return type(self.module).forward(self.module, x) if out is None else out

    def fused(self, x: torch.Tensor) -> torch.Tensor | None:
        """The fused result, or None where this call must take the stock forward."""
        ops = _mkldnn_ops()
        linears = [getattr(self.module, n, None) for n in self.names]
        if ops is None or any(type(m) is not FastLinear for m in linears):
            return None
        if any(m.weight.dtype != x.dtype or not _packable(m.weight) for m in linears) or x.device.type != "cpu":
            return None
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for m in linears
                                                               for p in m.parameters())):
            return None
        reorder, linear = ops
        if self.gated:
            gate, up, down = linears
            if not hasattr(linear, "binary"):
                return None
            a = linear(x, _packed_weight(gate, gate.weight, reorder), gate.bias, self.attr, [], self.algorithm)
            h = linear.binary(x, a, _packed_weight(up, up.weight, reorder), up.bias, "mul")
            return packed_linear(down, h, down.weight, down.bias)
        fc1, fc2 = linears
        if self.scale == 1.0:
            h = linear(x, _packed_weight(fc1, fc1.weight, reorder), fc1.bias, self.attr, [], self.algorithm)
            return packed_linear(fc2, h, fc2.weight, fc2.bias)
        s = self.scale  # scaled in float32, then rounded once to the weights' dtype

        def scaled(w, by):
            return (w.float() * by).to(w.dtype)

        w1 = _packed_weight(self, fc1.weight, reorder, "_rdfast_packed_fc1", lambda w: scaled(w, s))
        w2 = _packed_weight(self, fc2.weight, reorder, "_rdfast_packed_fc2", lambda w: scaled(w, 1.0 / s))
        bias1 = None if fc1.bias is None else scaled(fc1.bias.detach(), s)
        return linear(linear(x, w1, bias1, self.attr, [], self.algorithm), w2, fc2.bias, "none", [], "")


def _agrees(module: nn.Module, fused: FusedMLPForward) -> bool:
    """The fused forward equals the stock one on a random input (fixed seed), within the dtype's rounding."""
    first = getattr(module, fused.names[0])
    x = torch.randn(5, first.in_features, generator=torch.Generator().manual_seed(0)).to(first.weight.dtype)
    try:
        with torch.no_grad():
            got, want = fused.fused(x), type(module).forward(module, x)
    except (RuntimeError, ValueError, TypeError):  # a forward that is not ``fc2(act(fc1(x)))`` (a norm, a reshape)
        return False
    if got is None or not isinstance(want, torch.Tensor) or got.shape != want.shape:
        return False
    tol = 1e-4 if want.dtype == torch.float32 else 5e-2  # relative to the output's scale; a wrong formula is O(1)
    return bool((got.float() - want.float()).abs().max() <= tol * (want.float().abs().max() + 1e-6))


def _plan(module: nn.Module):
    if "forward" in module.__dict__:  # already switched, or wrapped by someone else (accelerate's hooks)
        return None
    for names, acts, gated in LAYOUTS:
        linears = [getattr(module, n, None) for n in names]
        act = next((getattr(module, a) for a in acts if callable(getattr(module, a, None))), None)
        if act is None or any(type(m) is not FastLinear for m in linears):
            continue
        op = _post_op(act)
        if op is not None and (op[2] == 1.0 or not gated):
            return FusedMLPForward(module, names, gated, op)
    return None


def fuse_mlp_activations(model: nn.Module) -> int:
    """Switch every recognised MLP under ``model`` (whose linears are ``FastLinear``s already) to the fused forward;
    returns how many were switched."""
    switched = 0
    for m in model.modules():
        fused = _plan(m)
        if fused is not None and _agrees(m, fused):
            m.forward = fused
            switched += 1
    return switched


def unfuse_mlps(model: nn.Module) -> None:
    """Back to the stock forwards (``rdfast.cpu_speed.restore``)."""
    for m in model.modules():
        if isinstance(m.__dict__.get("forward"), FusedMLPForward):
            del m.__dict__["forward"]
